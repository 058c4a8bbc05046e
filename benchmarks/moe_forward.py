"""Benchmark: SimpleMoELayer forward on one device per expert backend, time per step.

Usage:
    python benchmarks/moe_forward.py [--device cpu] [--out results/cpu/moe_forward.json]

Times with torch.utils.benchmark (median and IQR over adaptive repetitions, after warm-up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils import benchmark as tb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import provenance, write_json

from wattmoe.moe import SimpleMoELayer, available_backends, get_preset

CASES = [("tiny", 1.0), ("olmoe-1b-7b", 0.25), ("qwen3-30b-a3b", 0.25), ("mixtral-8x7b", 1 / 16)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--tokens", default="64,512,2048")
    ap.add_argument("--backends", default="loop,grouped",
                    help="expert backends to time (see wattmoe.moe.available_backends)")
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--out", default="results/cpu/moe_forward.json")
    args = ap.parse_args()
    rows = []
    for preset, scale in CASES:
        cfg = get_preset(preset, scale)
        for dtype in args.dtypes.split(","):
            layer = SimpleMoELayer(cfg, dtype=dtype, device=args.device, seed=0).eval()
            usable = available_backends(args.device, dtype)
            for n in map(int, args.tokens.split(",")):
                dt = layer.router.gate.weight.dtype
                x = torch.randn(n, cfg.hidden_size, device=args.device).to(dt)
                for backend in args.backends.split(","):
                    if backend not in usable:
                        continue
                    layer.set_backend(backend)
                    t = tb.Timer("with torch.inference_mode(): layer(x)",
                                 globals={"layer": layer, "x": x, "torch": torch},
                                 num_threads=torch.get_num_threads())
                    m = t.blocked_autorange(min_run_time=args.min_run_time)
                    rows.append({
                        "preset": cfg.name, "hidden": cfg.hidden_size,
                        "inner": cfg.expert_inner_size, "experts": cfg.num_experts,
                        "top_k": cfg.top_k, "dtype": dtype, "tokens": n, "backend": backend,
                        "median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times),
                        "tokens_per_s": n / m.median,
                    })
                    print(f"{cfg.name:22s} {dtype:5s} {n:6d} tok {backend:8s} "
                          f"{m.median * 1e3:9.3f} ms  (IQR {m.iqr * 1e3:.3f})  "
                          f"{n / m.median:12,.0f} tok/s", flush=True)
    write_json(args.out, {**provenance(), "threads": torch.get_num_threads(),
                          "device": args.device, "rows": rows})
    print("wrote", args.out)


if __name__ == "__main__":
    main()
