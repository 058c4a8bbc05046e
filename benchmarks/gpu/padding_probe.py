"""Do padded token tiles bound the fused kernels at 512 tokens per step?

With near-uniform routing at 512 tokens (OLMoE: 64 experts, top-8) an expert gets 64 +- 8
assignments, so 64-token tiles need a second, mostly empty tile for about half the experts
(reading that expert's weights again), and 128-token tiles do MMA work on ~50% padding. This
times each launch (CUPTI, median) of a few configurations on three routings of the same
number of assignments:

- random: top-k of uniform random scores (what a trained router gives on average);
- balanced: exactly tokens * k / E assignments per expert (no second tile at 64 per expert);
- balanced at 56 and 72 per expert (448 and 576 tokens): just under and just over one 64-tile.

If balanced routing at 64 per expert runs the 64-token configurations much faster than random
routing, tiles sized to each expert's count (no second tile) are worth building; if not, the
launches are bound elsewhere (weight streaming, latency). Time, not energy: CUDA events/CUPTI.

    PYTHONPATH=$PWD python3 benchmarks/gpu/padding_probe.py --out $OUT/padding.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import bench_ms, bf16_and_int4_stacks, launch_times, routing  # noqa: E402

from wattmoe.moe import build_dispatch, get_preset  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.dispatch import Dispatch  # noqa: E402

BF16 = "w64t64,w64t64d,w64t128,w64t128d,m64,m64d,m64n64,w64t64r16,w64t64dr16,w64t64dr32"
INT4 = ("w64t64k32,w64t64k32d,w64t128k32,w64t128k32d,w64t64,w64t128,w64t64k32r16,"
        "w64t64k32dr16,w64t64k32dr32")


def balanced_idx(tokens: int, num_experts: int, top_k: int, dev: torch.device) -> torch.Tensor:
    """Token t takes experts (t*k + j) mod E, j < k: distinct per token; every expert gets
    tokens*k/E assignments when E divides tokens*k."""
    t = torch.arange(tokens, device=dev)[:, None] * top_k + torch.arange(top_k, device=dev)
    return (t % num_experts).contiguous()


def dispatch(kind: str, tokens: int, num_experts: int, top_k: int, dev: torch.device,
             gen: torch.Generator) -> Dispatch:
    if kind == "random":
        return routing("uniform", tokens, num_experts, top_k, dev, gen)
    w = torch.rand(tokens, top_k, generator=gen, device=dev) + 0.05
    return build_dispatch(balanced_idx(tokens, num_experts, top_k, dev),
                          w / w.sum(1, keepdim=True), num_experts, with_rowof=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-1b-7b")
    ap.add_argument("--cases", default="random:512,balanced:512,balanced:448,balanced:576",
                    help="routing:tokens, comma-separated")
    ap.add_argument("--bf16", default=BF16, help="bf16 candidates")
    ap.add_argument("--int4", default=INT4, help="int4 candidates")
    ap.add_argument("--out", default="padding.json")
    ap.add_argument("--device", default="cuda", help="cpu: smoke test (TRITON_INTERPRET=1)")
    ap.add_argument("--scale", type=float, default=1.0, help="width scale of the shape")
    args = ap.parse_args(argv)
    cases = [_case(ap, c) for c in args.cases.split(",") if c]
    names = {"bf16": [n for n in args.bf16.split(",") if n],
             "int4": [n for n in args.int4.split(",") if n]}
    for wname, table in (("bf16", ft.CANDIDATES), ("int4", ft.INT4_CANDIDATES)):
        unknown = [n for n in names[wname] if ft.resolve_config(n, wname == "int4") is None]
        if unknown:
            ap.error(f"--{wname}: unknown candidates {', '.join(unknown)} "
                     f"(known: {', '.join(table)})")
    dev = torch.device(args.device)
    cfg = get_preset(args.shape, args.scale)
    st, qst = bf16_and_int4_stacks(cfg, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    stacks = {"bf16": st, "int4": qst}
    rows: list[dict[str, object]] = []
    payload = {**provenance(), "args": vars(args), "rows": rows,
               "source": "measured (CUDA events / CUPTI), time only"}
    for kind, tokens in cases:
        d = dispatch(kind, tokens, cfg.num_experts, cfg.top_k, dev, gen)
        counts = d.counts.tolist()
        x = torch.randn(tokens, cfg.hidden_size, device=dev).bfloat16()
        print(f"== {kind} {tokens} tokens: per-expert assignments min {min(counts)}, "
              f"max {max(counts)}, over 64: {sum(c > 64 for c in counts)} experts", flush=True)
        for wname, st in stacks.items():
            for name in names[wname]:
                fn = functools.partial(ft.fused_forward, st, x, d, name)
                with torch.inference_mode():
                    ms = bench_ms(fn)
                    parts = launch_times(fn)
                rows.append({"routing": kind, "tokens": tokens, "weights": wname,
                             "config": name, "ms": ms, "counts_min": min(counts),
                             "counts_max": max(counts),
                             "gate_up_ms": parts[0] if parts else None,
                             "down_ms": parts[1] if parts else None})
                split = (f"gate/up {parts[0] * 1e3:6.1f}  down {parts[1] * 1e3:6.1f}"
                         if parts else "")
                print(f"   {wname} {name:14s} {ms * 1e3:7.1f} us   {split}", flush=True)
                write_json(Path(args.out), payload)  # after every row: an interrupted run keeps it
    return 0


def _case(ap: argparse.ArgumentParser, text: str) -> tuple[str, int]:
    kind, _, tokens = text.partition(":")
    if kind not in ("random", "balanced") or not tokens.isdigit() or int(tokens) < 1:
        ap.error(f"--cases: {text!r} is not random:N or balanced:N (N tokens >= 1)")
    return kind, int(tokens)


if __name__ == "__main__":
    sys.exit(main())
