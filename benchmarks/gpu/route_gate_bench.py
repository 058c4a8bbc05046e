"""The router's gate GEMM inside `route_topk` against cuBLAS + cast: agreement and time.

For each gate shape (E experts x H hidden) and step size T, on one device: `fused_route` with
`fuse_gate=True` (the GEMM in the kernel, H split over programs when the token blocks are
few), with `fuse_gate=True` and no split (one program per 16 tokens), and with
`fuse_gate=False` (`F.linear` + float cast in torch, then the kernel). Each is captured in a
CUDA graph and replayed; time per replay from CUDA events (median of 5 batches of 200). Also
records how far the fused logits are from torch's (max |difference|, share of entries that
differ), how often each side differs from the products summed in fp64 and rounded once to x's
dtype, and on how many rows the top-k agree (near-ties reordered count as disagreement).

    PYTHONPATH=$PWD python3 benchmarks/gpu/route_gate_bench.py --out $OUT/route_gate.json

Times are measured; no energy here (the layer step's energy is in kernels_bench.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.moe import fused_route as fr  # noqa: E402
from wattmoe.moe.graphs import _warm_and_capture  # noqa: E402
from wattmoe.moe.router import AdaptiveRouter  # noqa: E402

# (experts, hidden, top_k): OLMoE, Qwen1.5-MoE-A2.7B (60), Qwen3-30B-A3B (128), DeepSeek-V3
DEFAULT_GATES = "64x2048x8,60x2048x4,128x2048x8,256x7168x8"


def graph_us(fn: Callable[[], object], batches: int = 5, reps: int = 200) -> float:
    """Median us per replay of fn captured in a CUDA graph (warmed up and captured as the
    layer's graphs are, `graphs._warm_and_capture`)."""
    g, _ = _warm_and_capture(fn, torch.device("cuda", torch.cuda.current_device()), None)
    for _ in range(20):
        g.replay()
    times = []
    for _ in range(batches):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        for _ in range(reps):
            g.replay()
        en.record()
        torch.cuda.synchronize()
        times.append(st.elapsed_time(en) * 1e3 / reps)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gates", default=DEFAULT_GATES, help="ExHxK,... (experts, hidden, top-k)")
    ap.add_argument("--tokens", default="1,64,512,4096")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--out", default="route_gate.json")
    args = ap.parse_args(argv)
    try:
        gates = [tuple(int(v) for v in g.split("x")) for g in args.gates.split(",") if g]
        tokens = [int(t) for t in args.tokens.split(",") if t]
        if any(len(g) != 3 or min(g) < 1 for g in gates) or not tokens or min(tokens) < 1:
            raise ValueError
    except ValueError:
        ap.error(f"--gates wants ExHxK,... and --tokens positive integers, got {args.gates!r}, "
                 f"{args.tokens!r}")
    bad = [f"{e}x{h}x{k}" for e, h, k in gates if k > e or e > fr._GATE_MAX_BLOCK_E]
    if bad:
        ap.error(f"--gates {', '.join(bad)}: top-k at most E, and E at most "
                 f"{fr._GATE_MAX_BLOCK_E} (what the fused gate takes)")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    dev = torch.device("cuda")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    payload: dict[str, object] = {**provenance(), "args": vars(args), "rows": []}
    torch.manual_seed(0)
    for experts, hidden, top_k in gates:
        router = AdaptiveRouter(hidden, experts, top_k, dtype=dtype, device=dev)
        router.requires_grad_(False)
        block_h = fr._gate_blocks(experts, hidden)[1]
        for t in tokens:
            x = torch.randn(t, hidden, device=dev).to(dtype)

            def route(fuse: bool, r: AdaptiveRouter = router, x: torch.Tensor = x) -> object:
                return fr.fused_route(r, x, fuse_gate=fuse)

            with torch.no_grad():
                fused, _ = fr.fused_route(router, x, fuse_gate=True)
                torch_, _ = fr.fused_route(router, x, fuse_gate=False)
                diff = (fused.logits - torch_.logits).abs()
                # exact products summed in fp64, rounded once to x's dtype: which side is off
                exact = (x.double() @ router.gate.weight.double().t()).to(dtype).float()
                row = {"experts": experts, "hidden": hidden, "top_k": top_k, "tokens": t,
                       "dtype": args.dtype,
                       "nsplit": fr._gate_split(t, hidden, block_h)[0],
                       "max_abs_logit_diff": float(diff.max()),
                       "share_logits_differ": float((diff > 0).float().mean()),
                       "share_fused_off_exact": float(
                           (fused.logits != exact).float().mean()),
                       "share_torch_off_exact": float(
                           (torch_.logits != exact).float().mean()),
                       "share_rows_same_topk": float(
                           (fused.topk_idx == torch_.topk_idx).all(1).float().mean()),
                       "fused_split_us": graph_us(lambda: route(True)),
                       "torch_gate_us": graph_us(lambda: route(False))}
                with mock.patch.object(fr, "_GATE_TARGET_PROGRAMS", 1):
                    row["fused_one_split_us"] = graph_us(lambda: route(True))
            payload["rows"].append(row)  # type: ignore[union-attr]
            print(f"E={experts:4d} H={hidden:5d} T={t:5d} nsplit={row['nsplit']:3d}: torch gate "
                  f"{row['torch_gate_us']:6.1f} us, fused {row['fused_one_split_us']:6.1f}, "
                  f"fused split {row['fused_split_us']:6.1f}; max |dlogit| "
                  f"{row['max_abs_logit_diff']:.2e}, same top-k rows "
                  f"{row['share_rows_same_topk']:.3f}; off the fp64-exact rounding: fused "
                  f"{row['share_fused_off_exact']:.3f}, torch {row['share_torch_off_exact']:.3f}",
                  flush=True)
            write_json(Path(args.out), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
