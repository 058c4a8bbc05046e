"""Shapes of real MoE models, from their published configs.

Only the MoE part is described: hidden size, routed-expert inner size, experts, top-k, MoE
layers, expert form, attention heads, shared experts and the router's score function. A preset
instantiates a layer with random weights at any scale factor (`get_preset(name).scaled(s)`).
"""

from __future__ import annotations

import difflib

from wattmoe.errors import ConfigError
from wattmoe.moe.base import MoEConfig

PRESETS: dict[str, MoEConfig] = {
    p.name: p
    for p in (
        MoEConfig(
            name="tiny", hidden_size=64, expert_inner_size=128, num_experts=8, top_k=2,
            num_layers=2, num_heads=4, source="test shape",
        ),
        MoEConfig(
            name="mixtral-8x7b", hidden_size=4096, expert_inner_size=14336, num_experts=8,
            top_k=2, num_layers=32, num_heads=32, num_kv_heads=8,
            source="mistralai/Mixtral-8x7B-v0.1 config.json",
        ),
        MoEConfig(
            name="mixtral-8x22b", hidden_size=6144, expert_inner_size=16384, num_experts=8,
            top_k=2, num_layers=56, num_heads=48, num_kv_heads=8,
            source="mistralai/Mixtral-8x22B-v0.1 config.json",
        ),
        MoEConfig(
            name="deepseek-v3", hidden_size=7168, expert_inner_size=2048, num_experts=256,
            top_k=8, num_layers=58, num_heads=128, num_shared_experts=1,
            score_func="sigmoid", normalize_topk=True,
            source="deepseek-ai/DeepSeek-V3 config.json (61 layers, first 3 dense)",
        ),
        MoEConfig(
            name="qwen3-30b-a3b", hidden_size=2048, expert_inner_size=768, num_experts=128,
            top_k=8, num_layers=48, num_heads=32, num_kv_heads=4, normalize_topk=True,
            source="Qwen/Qwen3-30B-A3B config.json",
        ),
        MoEConfig(
            name="qwen1.5-moe-a2.7b", hidden_size=2048, expert_inner_size=1408, num_experts=60,
            top_k=4, num_layers=24, num_heads=16, num_shared_experts=4, shared_inner_size=5632,
            normalize_topk=False, source="Qwen/Qwen1.5-MoE-A2.7B config.json",
        ),
        MoEConfig(
            name="olmoe-1b-7b", hidden_size=2048, expert_inner_size=1024, num_experts=64,
            top_k=8, num_layers=16, num_heads=16, normalize_topk=False,
            source="allenai/OLMoE-1B-7B-0924 config.json",
        ),
        MoEConfig(
            name="switch-base-8", hidden_size=768, expert_inner_size=3072, num_experts=8,
            top_k=1, num_layers=6, num_heads=12, expert_form="relu", normalize_topk=False,
            capacity_factor=1.25, source="google/switch-base-8 (6 sparse layers of 12)",
        ),
    )
}


def get_preset(name: str, scale: float = 1.0) -> MoEConfig:
    """The preset called `name`, optionally scaled ('olmoe-1b-7b', 0.25).

    Raises:
        ConfigError: `name` is not a string, or no preset has that name (the message suggests
            the closest); either way it lists the known presets.
    """
    if not isinstance(name, str):
        raise ConfigError(f"preset name must be a string, got {name!r} "
                          f"({type(name).__name__}) (known: {', '.join(PRESETS)})")
    key = name.lower()
    if key not in PRESETS:
        close = difflib.get_close_matches(key, PRESETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})"
        )
    return PRESETS[key].scaled(scale)
