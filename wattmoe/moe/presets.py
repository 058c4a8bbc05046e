"""Shapes of real MoE models, from their published configs, and of any other MoE model.

Only the MoE part is described: hidden size, routed-expert inner size, experts, top-k, MoE
layers, expert form, attention heads, shared experts and the router's score function. A preset
instantiates a layer with random weights at any scale factor (`get_preset(name).scaled(s)`).
A model that is not a preset is named by a shape key, 'h2880_f2880_swiglu_e32_k4'
(`resolve_shape`, which every command's shape option reads).
"""

from __future__ import annotations

import difflib
import math

from wattmoe.errors import ConfigError
from wattmoe.moe.base import MoEConfig
from wattmoe.shape_keys import SHAPE_KEY_FORM, is_shape_key, parse_shape_key

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


def resolve_shape_at(spec: str, scale: float | None, default: float = 1.0) -> MoEConfig:
    """`resolve_shape` for commands that also take a --scale: the scale is given once, as
    'SPEC@SCALE' or as `scale` (`default` where neither gives it).

    Raises:
        ConfigError: as `resolve_shape`, or both give a scale (they would multiply).
    """
    if isinstance(spec, str) and "@" in spec:
        if scale is not None:
            raise ConfigError(f"the shape {spec!r} has its own scale: give it once, as "
                              f"{spec.partition('@')[0]!r} with --scale {scale:g}, or as "
                              f"{spec!r} alone")
        return resolve_shape(spec)
    return resolve_shape(spec).scaled(default if scale is None else scale)


def resolve_shape(spec: str) -> MoEConfig:
    """A preset ('olmoe-1b-7b') or a shape key ('h2880_f2880_swiglu_e32_k4'), either with an
    optional '@SCALE' ('olmoe-1b-7b@0.25', 'h2880_f2880_swiglu_e32_k4@0.125'; `scaled`).

    A shape key gives the hidden width H, the expert inner width F, the expert form, the
    routed experts E and top-k k ('_e<E>_k<k>' may be left out: 1 and 1); the rest is the
    `MoEConfig` defaults (one MoE layer, softmax scores, no shared experts) with as many
    attention heads (at most 8) as divide H.

    Raises:
        ConfigError: an unknown preset, a key that is not exactly of the form
            h<H>_f<F>_<swiglu|relu>_e<E>_k<k>, invalid sizes (top-k above E, a zero width),
            or a bad scale.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"shape spec must be a string, got {spec!r} ({type(spec).__name__})")
    name, at, scale = spec.partition("@")
    factor = 1.0
    if at:
        try:
            factor = float(scale)
        except ValueError:
            raise ConfigError(f"bad scale in shape spec {spec!r}: the part after '@' must be "
                              "a number (NAME@SCALE, e.g. 'olmoe-1b-7b@0.25')") from None
    if not is_shape_key(name) and is_shape_key(name.lower()):
        name = name.lower()  # as preset names are read: 'H1024_F4096_ReLU_E16_K1' too
    if not is_shape_key(name):
        return get_preset(name, factor)
    parts = parse_shape_key(name)
    if parts is None:
        raise ConfigError(f"cannot read shape {name!r}; expected {SHAPE_KEY_FORM}, e.g. "
                          "'h2048_f1408_swiglu_e60_k4'")
    hidden, inner, form, experts, top_k = parts
    cfg = MoEConfig(name=name, hidden_size=hidden, expert_inner_size=inner,
                    num_experts=experts, top_k=top_k, expert_form=form,  # type: ignore[arg-type]
                    num_heads=math.gcd(hidden, 8) or 1, source="shape key")
    return cfg.scaled(factor) if at else cfg
