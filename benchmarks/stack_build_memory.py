"""Bytes allocated on the CPU while a layer is quantized to int4 and while its first stack is
built (`stacked.stacked_experts`, which the first grouped/fused step calls), as the
profiler's allocation and free events count them: the CPU analogue of the CUDA caching
allocator's `max_memory_allocated` (run 118 measured 11.72 GB at DeepSeek-V3's first int4
build on the H200). For each shape and weights ('int4': a layer in `--dtype` quantized with
the default group; 'dense': the layer's own weights), one fresh layer: the peak of the
allocated bytes over each phase above what was allocated when it began, the bytes the phase
left allocated, and the stack's own bytes (`ExpertStack.weight_bytes`). Writes one JSON.

    python benchmarks/stack_build_memory.py --out /tmp/stack_mem.json \
        --shapes olmoe-1b-7b@0.25 --weights int4,dense --dtype bf16
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.moe.layer import SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.stacked import stacked_experts  # noqa: E402

#: bytes of the marker tensors that end each phase (odd sizes no layer allocates), + index
_MARK = 3_000_017


def _mark(i: int) -> None:
    """A phase boundary in the profile: a marker tensor of `_MARK + i` bytes, freed at once
    (a `record_function` range would date the frees inside it at its start)."""
    torch.empty(_MARK + i, dtype=torch.uint8)


def measure(spec: str, weights: str, dtype: str) -> dict[str, object]:
    """One fresh layer, profiled from its construction on (so that every free is of a block
    the profiler saw allocated): allocated bytes at the end of each phase and the peak within
    it, absolute (from the profiler's start), as the running sum of the CPU profiler's
    allocations (an op's own memory) and frees in time order."""
    gc.collect()
    torch.manual_seed(0)
    phases = ["construct"] + (["quantize"] if weights == "int4" else []) + ["first_build"]
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer = SimpleMoELayer(resolve_shape(spec), dtype=dtype, backend="grouped").eval()
        _mark(0)
        if weights == "int4":
            layer.quantize()
            gc.collect()
            _mark(1)
        stack_bytes = stacked_experts(layer.experts).weight_bytes()
        gc.collect()
        _mark(len(phases) - 1)
        del layer
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    row: dict[str, object] = {"shape": spec, "weights": weights, "dtype": dtype,
                              "stack_bytes": stack_bytes}
    now = peak = 0
    phase = 0
    for _, delta in events:
        if _MARK <= delta < _MARK + len(phases):  # a phase ends (its free is skipped too)
            row[f"{phases[phase]}_peak_bytes"] = peak
            row[f"{phases[phase]}_end_bytes"] = now
            phase += 1
            peak = now
            if phase == len(phases):
                break
        elif -delta < _MARK or -delta >= _MARK + len(phases):
            now += delta
            peak = max(peak, now)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b@0.25")
    ap.add_argument("--weights", default="int4,dense")
    ap.add_argument("--dtype", default="bf16")
    args = ap.parse_args(argv)
    rows = [measure(spec, w, args.dtype) for spec in args.shapes.split(",")
            for w in args.weights.split(",")]
    for r in rows:
        print(r)
    write_json(args.out, {**provenance(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
