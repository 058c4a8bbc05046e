"""GPU memory of an int4 MoE layer run by the fused kernels, its codes stored row-major or in
the kernels' tile order (`SimpleMoELayer.set_int4_layout`), or as the layer's default policy
('auto': tile order on sm_90 once a fused step runs) leaves them, as the CUDA caching allocator
counts it.

For each shape and layout: a fresh layer (bf16 router, int4 experts quantized on the GPU), the
memory allocated once it is built, then after fused steps at each step size (eager, so that
every kernel copy a step size needs is made), with the kernels' copies (`fused_triton.
copy_bytes`) and the peak. Each layer is freed before the next. Writes one JSON.

    python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/mem.json \
        --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 64,512,4096 \
        [--layouts rows,tiles,auto] [--backend fused|fused_graph|auto]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.backends import get_backend  # noqa: E402
from wattmoe.moe.base import MoEConfig  # noqa: E402
from wattmoe.moe.layer import INT4_LAYOUT_POLICIES, SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402
from wattmoe.moe.stacked import existing_stack  # noqa: E402


def measure(spec: str, cfg: MoEConfig, layout: str, tokens: list[int],
            dev: torch.device, backend: str = "fused") -> dict[str, object]:
    for name in ("fused_graph", "grouped_graph"):  # graphs of the layers measured before
        get_backend(name).clear()
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.manual_seed(0)
    layer = SimpleMoELayer(cfg, dtype="bf16", device=dev, backend=backend).eval()
    layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    layer.set_int4_layout(layout)
    torch.cuda.synchronize(dev)
    built = torch.cuda.memory_allocated(dev) - base
    torch.cuda.reset_peak_memory_stats(dev)
    steps = []
    with torch.inference_mode():
        for n in tokens:
            x = torch.randn(n, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
            t0 = time.perf_counter()
            layer(x)
            torch.cuda.synchronize(dev)
            st = existing_stack(layer.experts)
            copies = ft.copy_bytes(st.kernel_cache) if st is not None else {}
            torch.cuda.empty_cache()  # reserved then: live tensors and the graphs' pools
            steps.append({"tokens": n, "first_step_s": time.perf_counter() - t0,
                          "allocated_bytes": torch.cuda.memory_allocated(dev) - base,
                          # the caching allocator's after empty_cache: graph pools included
                          # (a graph kept for a backend `auto` did not choose holds the memory
                          # its step allocated)
                          "reserved_bytes": torch.cuda.memory_reserved(dev),
                          "graphs_held": {n: len(getattr(get_backend(n), "_graphs", ()))
                                          for n in ("fused_graph", "grouped_graph")},
                          "copy_bytes": copies})
            del x
    st = existing_stack(layer.experts)
    out = {"shape": spec, "layout": layout, "stored": layer.int4_layout, "backend": backend,
           "ran": dict(getattr(layer.expert_backend, "counts", {}) or {backend: len(tokens)}),
           "layouts": [st.layout13, st.layout2],
           "weight_bytes": st.weight_bytes(), "built_bytes": built, "steps": steps,
           "peak_bytes": torch.cuda.max_memory_allocated(dev) - base}
    del layer, st
    gc.collect()
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3")
    ap.add_argument("--tokens", default="64,512,4096")
    ap.add_argument("--layouts", default="rows,tiles",
                    help=f"of {', '.join(INT4_LAYOUT_POLICIES)} (auto: the layer's default)")
    ap.add_argument("--backend", default="fused", choices=("fused", "fused_graph", "auto"))
    ap.add_argument("--keep-loser-graphs", action="store_true",
                    help="(an experiment) `auto` keeps the graphs its calibration captured for "
                         "the backends it did not choose, as before session 18")
    args = ap.parse_args(argv)
    try:  # every input checked before the first layer is built
        tokens = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        ap.error(f"--tokens: comma-separated integers, got {args.tokens!r}")
    if not tokens or min(tokens) < 1:
        ap.error(f"--tokens: one or more sizes >= 1, got {args.tokens!r}")
    layouts = args.layouts.split(",")
    if not set(layouts) <= set(INT4_LAYOUT_POLICIES):
        ap.error(f"--layouts: of {', '.join(INT4_LAYOUT_POLICIES)}, got {args.layouts!r}")
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU (the caching allocator's counts)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    try:
        shapes = [(spec, resolve_shape(spec)) for spec in args.shapes.split(",")]
        ft.check_settings(dev)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.keep_loser_graphs:
        from wattmoe.moe.graphs import GraphedBackend

        GraphedBackend.drop = lambda self, keys: None  # type: ignore[method-assign]
    rows = []
    for spec, cfg in shapes:
        for layout in layouts:
            r = measure(spec, cfg, layout, tokens, dev, args.backend)
            last = r["steps"][-1]
            print(f"{spec:16s} {layout:5s} ({r['stored']}) codes+scales "
                  f"{r['weight_bytes'] / 1e9:6.2f} GB, "
                  f"after the steps {last['allocated_bytes'] / 1e9:6.2f} GB allocated "
                  f"(copies {sum(last['copy_bytes'].values()) / 1e9:.2f} GB: "
                  f"{last['copy_bytes']}), peak {r['peak_bytes'] / 1e9:.2f} GB, reserved "
                  f"{last['reserved_bytes'] / 1e9:.2f} GB, graphs {last['graphs_held']}",
                  flush=True)
            rows.append(r)
        write_json(args.out, {**provenance(), "args": vars(args), "rows": rows})  # each row
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
