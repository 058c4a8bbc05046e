# ruff: noqa  (a helper's measurement script, kept as it ran)
"""loop against grouped on a CPU: are default-layer outputs bit-identical whichever auto picks?"""
import torch, itertools
from wattmoe.moe import SimpleMoELayer, get_preset, resolve_shape_at
from wattmoe.moe.backends import get_backend
torch.manual_seed(0)
shapes = {"tiny": get_preset("tiny"), "tiny-relu": get_preset("tiny").replace(expert_form="relu", top_k=1, normalize_topk=False),
          "olmoe/16": get_preset("olmoe-1b-7b", 1/16), "ds/56": get_preset("deepseek-v3", 1/56).replace(num_experts=16, top_k=4),
          "olmoe/4": resolve_shape_at("olmoe-1b-7b", None, 0.25), "mixtral/16": get_preset("mixtral-8x7b", 1/16),
          "switch/8": get_preset("switch-base-8", 1/8)}
bad = []
n = 0
for (name, cfg), dt, q in itertools.product(shapes.items(), ["fp32", "bf16", "fp16"], [False, True]):
    layer = SimpleMoELayer(cfg, dtype=dt, seed=1, backend="loop").eval()
    if q:
        from wattmoe.moe.quant import int4_group_size
        layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    for t in (1, 3, 17, 64, 200, 512, 1500):
        if name in ("olmoe/4", "mixtral/16") and t > 512: continue
        x = torch.randn(t, cfg.hidden_size).to(layer.router.gate.weight.dtype)
        with torch.inference_mode():
            layer.set_backend("loop"); a = layer(x).hidden_states
            layer.set_backend("grouped"); b = layer(x).hidden_states
        n += 1
        if not torch.equal(a, b):
            bad.append((name, dt, q, t, (a.float()-b.float()).abs().max().item()))
print(n, "cases;", len(bad), "not bitwise equal")
for b in bad[:40]: print(b)
