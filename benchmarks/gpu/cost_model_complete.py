"""Completes the committed H200 profile with the kernels its first run had no time for.

The first run (`benchmarks/cost_model_h200.py`, commit 3393e4f) measured the whole expert, the
MoE-layer backends, the int4 path and the projections, and listed the rest under `skipped`
(activation, router gate, host<->device copies). This resumes its JSONL with the same profiler
settings (1 s windows aligned to counter updates, the first 30 calls timed) and the same
shapes, so that the finished JSON holds every point of both runs.

    PYTHONPATH=$PWD python3 benchmarks/gpu/cost_model_complete.py \
        --jsonl results/h200/cost_model/raw/h200.jsonl --out $OUT/h200.json --budget 240
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from wattmoe.cost_model.profiler import ProfilerConfig
from wattmoe.cost_model.runner import jsonl_path_for, run_profile
from wattmoe.cost_model.scenarios import SweepConfig

SHAPES = ("olmoe-1b-7b", "mixtral-8x7b@0.5")
OPS = ("activation", "router_gate", "d2h_copy", "h2d_copy", "down_proj")
TOKENS = (1, 64, 1024, 8192)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jsonl", required=True, help="the first run's JSONL")
    ap.add_argument("--out", required=True, help="the completed profile JSON")
    ap.add_argument("--budget", type=float, default=240.0)
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.jsonl, jsonl_path_for(out))
    from wattmoe.telemetry import GpuSystemMonitor

    t0 = time.monotonic()
    mon = GpuSystemMonitor(devices=[args.device], interval_s=0.05).start()
    pcfg = ProfilerConfig(reps=30, min_reps=5, latency_budget_s=0.2, min_window_s=1.0,
                          cooldown_max_s=1.5, cooldown_tolerance_c=5.0, profiler_reps=2,
                          spread_timed_calls=False, idle_window=False,
                          deadline_s=args.budget)

    def progress(sc, p, msg):
        if p is not None:
            e = "-" if p.energy_j is None else f"{p.energy_j * 1e3:.3f} mJ"
            msg = f"{p.latency_s * 1e3:.4f} ms {e} {p.avg_power_w or 0:.0f} W"
        print(f"[{time.monotonic() - t0:6.1f}s] {sc.describe()}: {msg}", flush=True)

    try:
        cmd = shlex.join(["python3", "benchmarks/gpu/cost_model_complete.py", *sys.argv[1:]])
        db, res = run_profile(SweepConfig(SHAPES, ("bf16", "fp32"), (args.device,), OPS, TOKENS,
                                          60e9),
                              pcfg, mon, out, resume=True, command=cmd, progress=progress)
    finally:
        mon.stop()
    print(f"{len(res.points)} new points, {len(db.points)} in all, {len(res.errors)} errors, "
          f"{len(res.skipped)} not run, {res.wall_s:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
