"""An int4 stack dequantized whole or a few experts at a time (`stacked._dequant_stack`, which
the `grouped` int4 steps and `auto`'s calibration of them run): the peak memory and the time
of `ExpertStack.dense` and of a `grouped` layer step, both ways in one process, alternating.

For each shape: one int4 layer (bf16 router, experts quantized on the GPU, codes row-major),
then `rounds` rounds of: whole (`DEQUANT_PIECE_WEIGHTS` above the stack) and pieces (the
default), each timed `--repeats` times with CUDA events after a warm-up, the caching
allocator's peak above the memory before the call. Writes one JSON after each shape.

    python3 benchmarks/gpu/dequant_pieces_probe.py --out /tmp/pieces.json \
        --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import stacked  # noqa: E402
from wattmoe.moe.layer import SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.stacked import stacked_experts  # noqa: E402

PIECES = stacked.DEQUANT_PIECE_WEIGHTS
WHOLE = 1 << 62


def timed(fn, repeats: int, dev: torch.device) -> tuple[float, int]:
    """(median ms of `repeats` calls after one warm-up, peak bytes above the start)."""
    fn()
    torch.cuda.synchronize(dev)
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize(dev)
        times.append(a.elapsed_time(b))
    return statistics.median(times), torch.cuda.max_memory_allocated(dev) - base


def probe(spec: str, cfg: object, args: argparse.Namespace, dev: torch.device
          ) -> dict[str, object]:
    torch.manual_seed(0)
    layer = SimpleMoELayer(cfg, dtype="bf16", device=dev, backend="grouped").eval()
    layer.quantize().set_int4_layout("rows")
    st = stacked_experts(layer.experts)
    x = torch.randn(args.tokens, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
    rounds: list[dict[str, object]] = []
    # bf16 weights: two per packed byte, two bytes each
    rec = {"shape": spec, "weight_bytes": st.weight_bytes(), "tokens": args.tokens,
           "dense_bytes": 4 * sum(t.numel() for t in (st.q13, st.q2)), "rounds": rounds}
    with torch.inference_mode():
        for r in range(args.rounds):
            for how, piece in (("whole", WHOLE), ("pieces", PIECES)):
                stacked.DEQUANT_PIECE_WEIGHTS = piece
                dense_ms, dense_peak = timed(lambda: st.dense(torch.bfloat16), args.repeats,
                                             dev)
                step_ms, step_peak = timed(lambda: layer(x), args.repeats, dev)
                rounds.append({"round": r, "how": how, "dense_ms": dense_ms,
                               "dense_peak_bytes": dense_peak, "step_ms": step_ms,
                               "step_peak_bytes": step_peak})
                print(f"{spec:14s} {how:6s} dense {dense_ms:8.2f} ms peak "
                      f"{dense_peak / 1e9:6.2f} GB; grouped step {step_ms:8.2f} ms peak "
                      f"{step_peak / 1e9:6.2f} GB", flush=True)
    stacked.DEQUANT_PIECE_WEIGHTS = PIECES
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.repeats < 1 or args.rounds < 1:
        ap.error("--tokens, --repeats and --rounds: >= 1")
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    try:
        shapes = [(spec, resolve_shape(spec)) for spec in args.shapes.split(",")]
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for spec, cfg in shapes:
        rows.append(probe(spec, cfg, args, dev))
        write_json(args.out, {**provenance(), "args": vars(args), "rows": rows})
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
