"""Benchmark: the host (Python) time of one `fused_forward` call, kernels replaced by no-ops.

Eager fused steps of 64-512 tokens are host-bound on the GPU machine, so the Python that runs
around the Triton launches is part of their energy. This times `fused_forward` on CPU tensors
with the Triton kernels swapped for no-op launchers (so only wattmoe's own Python and torch's
allocations are timed, not Triton's launcher nor any GPU work), and the cost of building one
TMA descriptor (`TensorDescriptor.from_tensor`). Measured, wall clock, best of --repeats.

    python benchmarks/fused_host_overhead.py --out results/cpu/fused_host_overhead.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import provenance, write_json

from wattmoe.errors import ConfigError
from wattmoe.moe import SimpleMoELayer, build_dispatch, resolve_shape
from wattmoe.moe import fused_triton as ft
from wattmoe.moe.quant import int4_group_size
from wattmoe.moe.stacked import stacked_experts


class _NoLaunch:
    def __getitem__(self, grid: object):
        return lambda *args, **kwargs: None


def best_us(fn, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-1b-7b@0.25")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--configs", default="m64,w64t64dr16,w64t64r16")
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--int4", action="store_true",
                    help="int4 experts (the default group, int4_group_size: 128 on the "
                         "default shape) and int4 --configs")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.calls < 1 or args.repeats < 1:
        ap.error("--tokens, --calls and --repeats must be >= 1")
    try:
        cfg = resolve_shape(args.shape)
    except ConfigError as exc:
        ap.error(f"--shape: {exc}")
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if ft.resolve_config(n, args.int4) is None]
    if unknown:
        ap.error(f"--configs: unknown {', '.join(unknown)}")

    # no Triton launches: what is left is wattmoe's Python and torch's allocations
    no_launch = {"_kernel": lambda *a, **k: _NoLaunch(),
                 "_combine_kernel": lambda *a, **k: _NoLaunch(),
                 "triton_available": lambda: True, "interpreting": lambda: True}
    with mock.patch.multiple(ft, **no_launch):
        rows = _measure(args, cfg, names)
    if args.out:
        write_json(args.out, {**provenance(), "args": vars(args), "rows": rows,
                              "source": "measured (wall clock, host only, kernels no-op)"})
    return 0


def _measure(args: argparse.Namespace, cfg, names: list[str]) -> list[dict[str, object]]:
    torch.manual_seed(0)
    layer = SimpleMoELayer(cfg, dtype="bf16").eval()
    if args.int4:
        layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    st = stacked_experts(layer.experts)
    idx = torch.rand(args.tokens, cfg.num_experts).topk(cfg.top_k, -1).indices
    w = torch.rand(args.tokens, cfg.top_k)
    d = build_dispatch(idx, w / w.sum(-1, keepdim=True), cfg.num_experts, with_rowof=True)
    x = torch.randn(args.tokens, cfg.hidden_size).bfloat16()
    rows = []
    for cname in names:
        for _ in range(50):
            ft.fused_forward(st, x, d, cname)
        us = best_us(lambda c=cname: ft.fused_forward(st, x, d, c), args.calls, args.repeats)
        rows.append({"what": f"fused_forward {cname}", "us_per_call": us})
        print(f"fused_forward {cname:14s} {us:7.1f} us per call (kernels no-op)", flush=True)
    cls = ft._descriptor_class()
    if cls is not None and not args.int4:
        assert st.w13 is not None
        w2d = st.w13.view(-1, st.w13.shape[2])
        us = best_us(lambda: cls.from_tensor(w2d, [64, 64]), args.calls, args.repeats)
        rows.append({"what": "TensorDescriptor.from_tensor", "us_per_call": us})
        print(f"TensorDescriptor.from_tensor   {us:7.1f} us per call", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
