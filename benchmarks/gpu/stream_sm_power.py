"""Does streaming a weight-sized buffer from HBM need every SM, and what does each SM cost?

A memory-bound expert step (bf16 weights at 512 tokens per step) reads ~805 MB per step. This
script reads a buffer of that size with a Triton kernel on a fixed number of programs (one per
SM or fewer: a persistent grid), and measures for each grid the read rate (CUDA events) and the
energy per pass and mean power (NVML total-energy counter over a >= --window s window). If the
read rate holds with fewer SMs while power drops, a persistent expert kernel on part of the GPU
spends fewer joules per step at equal time (the card's clocks and limits are left as found).

Usage (GPU machine, project root): python3 benchmarks/gpu/stream_sm_power.py --out $OUT/s
Writes <out>/stream_sm_power.json (with provenance) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import Energy  # noqa: E402


@triton.jit
def _stream_sum(x_ptr, out_ptr, n_blocks, BLOCK: tl.constexpr):
    """Program p sums blocks p, p + P, p + 2P, ... of x (P = number of programs)."""
    pid = tl.program_id(0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    offs = tl.arange(0, BLOCK)
    for b in range(pid, n_blocks, tl.num_programs(0)):
        acc += tl.load(x_ptr + b * BLOCK + offs).to(tl.float32)  # n < 2**31 (checked)
    tl.store(out_ptr + pid, tl.sum(acc, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mbytes", type=int, default=805, help="buffer size (MB); OLMoE's experts")
    ap.add_argument("--window", type=float, default=1.5, help="seconds per energy window")
    ap.add_argument("--programs-per-sm", default="4,2,1,0.75,0.5,0.375,0.25",
                    help="grids to try, as programs per SM")
    ap.add_argument("--blocks", default="8192,32768",
                    help="bf16 elements per program per loop step (bytes in flight per SM)")
    ap.add_argument("--warps", type=int, default=8)
    args = ap.parse_args()

    try:
        blocks = [int(b) for b in args.blocks.split(",")]
        per_sm = [float(v) for v in args.programs_per_sm.split(",")]
    except ValueError as exc:
        ap.error(f"--blocks / --programs-per-sm: comma-separated numbers ({exc})")
    if any(b < 16 or b & (b - 1) for b in blocks) or any(f <= 0 for f in per_sm):
        ap.error("--blocks: powers of two >= 16; --programs-per-sm: positive")
    n = (args.mbytes * 10**6 // 2) // max(blocks) * max(blocks)
    if not 0 < n < 2**31:
        ap.error(f"--mbytes {args.mbytes}: from one block to 4294 MB (32-bit offsets)")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (NVML energy counter)")
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    x = torch.randn(n, device=dev, dtype=torch.bfloat16)
    nbytes = n * 2
    out = torch.empty(max(1, round(max(per_sm) * sms)), device=dev, dtype=torch.float32)
    nrg = Energy()
    rows = []

    def timed(fn, reps: int = 20) -> float:
        fn()
        torch.cuda.synchronize()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        for _ in range(reps):
            fn()
        ev[1].record()
        torch.cuda.synchronize()
        return ev[0].elapsed_time(ev[1]) / reps / 1e3

    def measure(label: str, programs: int | None, fn, **extra: object) -> None:
        t = timed(fn)
        w = nrg.window(fn, args.window)
        row = {"grid": label, "programs": programs, "pass_us": t * 1e6,
               "read_tb_s": nbytes / t / 1e12,
               "energy_mj_per_pass": w["energy_j"] / w["steps"] * 1e3,
               "power_w": w["energy_j"] / w["seconds"], "steps": w["steps"],
               "window_s": w["seconds"],
               "source": "measured (NVML total energy counter); time: CUDA events", **extra}
        rows.append(row)
        write_json(out_path, payload)  # after every row: an interrupted run keeps it
        print(f"{label:>26}  {row['pass_us']:8.1f} us  {row['read_tb_s']:5.2f} TB/s  "
              f"{row['energy_mj_per_pass']:7.2f} mJ/pass  {row['power_w']:6.1f} W", flush=True)

    idle = nrg.info()
    time.sleep(1.0)
    e0, t0 = nrg.mj(), time.perf_counter()
    time.sleep(2.0)
    idle_w = (nrg.mj() - e0) / 1e3 / (time.perf_counter() - t0)
    print(f"idle (memory allocated): {idle_w:.1f} W; {idle}", flush=True)
    out_path = Path(args.out) / "stream_sm_power.json"
    payload = {**provenance(), "args": vars(args), "sms": sms, "bytes": nbytes,
               "idle_w": idle_w, "gpu_at_start": idle, "rows": rows}
    copy_dst = [torch.empty_like(x)]
    measure("torch copy (read+write)", None, lambda: copy_dst[0].copy_(x))
    copy_dst.clear()
    for blk in blocks:
        for f in per_sm:
            p = max(1, round(f * sms))
            measure(f"{f:g}/SM ({p}) x {blk}", p,
                    lambda p=p, blk=blk: _stream_sum[(p,)](x, out, n // blk, BLOCK=blk,
                                                         num_warps=args.warps), block=blk)
    write_json(out_path, payload)


if __name__ == "__main__":
    main()
