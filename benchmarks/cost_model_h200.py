"""The H200 cost-model profile and its held-out accuracy measurements, in one process.

Run on the GPU machine (one telemetry monitor, one CUDA context, one time budget):

    PYTHONPATH=$PWD python3 benchmarks/cost_model_h200.py --out-dir $OUT --budget 370

Stages, in priority order (each appends to a JSONL as it goes and finishes with an atomic
JSON; a stage that would overrun the budget stops starting scenarios):

1. `profile/expert`: the whole expert at tiny, OLMoE-1B-7B (full width) and Mixtral-8x7B at
   half width, bf16 and fp32, batch sizes 1, 4, 16, ..., 4096, 8192 -> h200.json
2. `heldout`: measurements the model is NOT built from: the expert at batch sizes
   2, 8, 32, ..., 2048, 6144 for OLMoE and Mixtral@0.5, and a shape never profiled
   (Qwen1.5-MoE-A2.7B, H=2048, F=1408) -> heldout.json
3. `profile/moe_layer`: one SimpleMoELayer step per expert backend available (bf16) -> h200.json
4. `profile/kernels`: the expert's kernels (int4 path, up/gate, down, activation, router,
   host<->device copies) until the budget ends -> h200.json
5. ncu hardware counters for the two largest expert scenarios, when time is left.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from wattmoe.cost_model.profiler import ProfilerConfig
from wattmoe.cost_model.runner import run_profile
from wattmoe.cost_model.scenarios import DEFAULT_TOKENS, SweepConfig

SHAPES = ("tiny", "olmoe-1b-7b", "mixtral-8x7b@0.5")
HELDOUT_TOKENS = (2, 8, 32, 128, 512, 2048, 6144)
HELDOUT_SHAPE = "qwen1.5-moe-a2.7b"
KERNEL_OPS = ("expert_int4", "up_gate_proj", "down_proj", "activation", "router_gate",
              "d2h_copy", "h2d_copy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.environ.get("OUT", "results/h200/cost_model/raw"))
    ap.add_argument("--budget", type=float, default=370.0, help="seconds for all stages")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--cooldown-max", type=float, default=1.5)
    ap.add_argument("--ncu", type=int, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="a dry run of the script at small widths (e.g. on a CPU)")
    args = ap.parse_args()
    global SHAPES, HELDOUT_TOKENS, HELDOUT_SHAPE
    tokens, shape_tokens = DEFAULT_TOKENS, (1, 16, 128, 1024, 4096, 8192)
    sub_tokens = (1, 64, 1024, 8192)
    if args.smoke:
        SHAPES = ("tiny", "olmoe-1b-7b@0.125", "mixtral-8x7b@0.03125")
        HELDOUT_SHAPE, HELDOUT_TOKENS = "qwen1.5-moe-a2.7b@0.125", (2, 8, 32)
        tokens, shape_tokens, sub_tokens = (1, 4, 16, 64), (1, 16), (1, 64)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    t0 = time.monotonic()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = shlex.join(["python3", "benchmarks/cost_model_h200.py", *sys.argv[1:]])
    pcfg_kw = dict(reps=30, min_reps=5, latency_budget_s=0.2, cooldown_max_s=args.cooldown_max,
                   cooldown_tolerance_c=5.0, profiler_reps=2)

    from wattmoe.telemetry import GpuSystemMonitor

    mon = GpuSystemMonitor(devices=[args.device], interval_s=0.05).start()
    dev = (args.device,)

    def left() -> float:
        return args.budget - (time.monotonic() - t0)

    def progress(sc, p, msg):
        if p is not None:
            e = "-" if p.energy_j is None else f"{p.energy_j * 1e3:.3f} mJ"
            msg = (f"{p.latency_s * 1e3:.4f} ms {e} {p.avg_power_w or 0:.0f} W "
                   f"T {p.start_temperature_c}->{p.end_temperature_c} C cool {p.cooldown_s:.1f}s")
        print(f"[{time.monotonic() - t0:6.1f}s] {sc.describe()}: {msg}", flush=True)

    def stage(name: str, sweep: SweepConfig, path: Path, resume: bool, reserve_s: float) -> None:
        budget = left() - reserve_s
        if budget <= 5:
            print(f"stage {name}: skipped, {left():.0f} s left", flush=True)
            return
        pcfg = ProfilerConfig(deadline_s=budget, **pcfg_kw)
        _db, res = run_profile(sweep, pcfg, mon, path, resume=resume,
                               command=f"{cmd}  # stage {name}", progress=progress)
        print(f"stage {name}: {len(res.points)} points in {path.name}, {len(res.errors)} "
              f"errors, {len(res.skipped)} not run, {res.wall_s:.0f} s", flush=True)

    try:
        stage("profile/expert", SweepConfig(SHAPES, ("bf16", "fp32"), dev, ("expert",),
                                            tokens, 60e9), out / "h200.json", False, 150)
        stage("heldout/batch", SweepConfig(SHAPES[1:], ("bf16", "fp32"), dev, ("expert",),
                                           HELDOUT_TOKENS, 60e9), out / "heldout.json", False, 110)
        stage("heldout/shape", SweepConfig((HELDOUT_SHAPE,), ("bf16", "fp32"), dev, ("expert",),
                                           shape_tokens, 60e9),
              out / "heldout.json", True, 95)
        stage("profile/moe_layer", SweepConfig(SHAPES, ("bf16",), dev, ("moe_layer",),
                                               sub_tokens, 60e9),
              out / "h200.json", True, 75)
        stage("profile/kernels", SweepConfig(SHAPES[1:], ("bf16", "fp32"), dev, KERNEL_OPS,
                                             sub_tokens, 60e9),
              out / "h200.json", True, 45 if args.ncu else 5)
    finally:
        mon.stop()
    if args.ncu and left() > 30:
        from wattmoe.cost_model.ncu import collect_ncu, ncu_path

        results = []
        if ncu_path():
            for shape, dtype, n in (("mixtral-8x7b@0.5", "bf16", 8192),
                                    ("olmoe-1b-7b", "bf16", 64))[: args.ncu]:
                spec = {"op": "expert", "shape": shape, "dtype": dtype, "device": args.device,
                        "tokens": n}
                try:
                    results.append({**spec, "counters": collect_ncu(spec, timeout_s=60)})
                except Exception as exc:  # counters are optional evidence
                    results.append({**spec, "error": str(exc)[:300]})
                print("ncu", results[-1], flush=True)
        else:
            results.append({"error": "ncu not on PATH"})
        (out / "ncu.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"done in {time.monotonic() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
