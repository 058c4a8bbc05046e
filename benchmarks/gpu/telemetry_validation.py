"""Validates wattmoe.telemetry on a real NVIDIA GPU (issue 3).

Usage (GPU machine; needs only torch and nvidia-ml-py):
    PYTHONPATH=$PWD python benchmarks/gpu/telemetry_validation.py --out $OUT
    python benchmarks/gpu/telemetry_validation.py --simulate --quick --out /tmp/tv   # dry run

Measures, with the library's own `NvmlBackend` and `GpuSystemMonitor` (sampling at 10 Hz the
whole time and streaming every sample to samples.csv):
  (a) idle power (before CUDA is initialized, and after the load) and loaded power (a paced
      bf16 GEMM workload, and an unpaced GEMM loop at the power cap);
  (b) the energy rate of one fixed workload (bf16 GEMMs issued in 10 ms slots at a fixed duty
      cycle) over windows of 0.1, 0.2, 0.5, 1, 2, 5 s, repeated, against a 30 s reference rate
      (two 15 s windows, before and after the short ones, so that slow drift cancels); each
      length is also run half a counter period longer, because a window that is a whole number
      of counter periods long hides the counter's quantization;
  (c) counter energy against integrated polled power (instant and averaged field values, 10 Hz)
      over the same windows;
  (d) the sampler thread's CPU time per second at 10 Hz (time.thread_time in the thread).
It also polls the energy counter in a tight loop for 2 s to find its real update period.

Writes to --out: samples.csv (raw samples), windows.csv (one row per window), ticks.csv
(counter polls), summary.json (everything, with `shortest_accurate_window_s`).
Exits with status 2 and one line when there is no NVML or no CUDA device.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _meta import provenance, write_json

from wattmoe.telemetry import (
    GpuSystemMonitor,
    Measurement,
    NvmlBackend,
    SimPowerModel,
    SimulatedBackend,
    TelemetryError,
    ThermalModel,
)

WINDOWS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
TARGET_ERROR = 0.02
SLOT_S = 0.01
DUTY = 0.55
DEVICE = "cuda:0"


class Workload:
    """bf16 GEMMs issued in fixed slots: `k` GEMMs, synchronize, sleep to the slot's end."""

    def __init__(self, simulate: SimulatedBackend | None, n: int = 8192) -> None:
        self.sim = simulate
        self.k = 1
        self.gemm_s = 0.0
        if simulate is None:
            import torch

            self.torch = torch
            self.a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            self.b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
            self.c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)

    def _gemms(self, k: int) -> None:
        if self.sim is None:
            for _ in range(k):
                self.torch.matmul(self.a, self.b, out=self.c)

    def sync(self) -> None:
        if self.sim is None:
            self.torch.cuda.synchronize()

    def calibrate(self) -> None:
        """Times one GEMM and picks `k` so a slot is ~DUTY busy."""
        if self.sim is not None:
            self.gemm_s, self.k = SLOT_S * DUTY, 1
            return
        for _ in range(20):
            self._gemms(1)
        self.sync()
        times = []
        for _ in range(30):
            t = time.perf_counter()
            self._gemms(1)
            self.sync()
            times.append(time.perf_counter() - t)
        self.gemm_s = statistics.median(times)
        self.k = max(1, round(DUTY * SLOT_S / self.gemm_s))

    def paced(self, seconds: float, start: float | None = None) -> tuple[int, float]:
        """Runs whole slots for `seconds` from `start` (a slot boundary); returns (slots, end)."""
        slots = max(1, round(seconds / SLOT_S))
        t = time.monotonic() if start is None else start
        if self.sim is not None:
            self.sim.set_utilization(DEVICE, DUTY)
        for _ in range(slots):
            self._gemms(self.k)
            self.sync()
            t += SLOT_S
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if self.sim is not None:
            self.sim.set_utilization(DEVICE, 0.0)
        return slots, t

    def full(self, seconds: float) -> int:
        """Unpaced GEMMs for `seconds` (the power cap); returns GEMMs run."""
        if self.sim is not None:
            self.sim.set_utilization(DEVICE, 1.0)
            time.sleep(seconds)
            self.sim.set_utilization(DEVICE, 0.0)
            return 0
        end, count = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            self._gemms(16)
            self.sync()
            count += 16
        return count


def integrate(samples: list, t0: float, t1: float, attr: str) -> float | None:
    """Integral of a sampled quantity over [t0, t1], linear between samples (J for W)."""
    pts = [(s.timestamp_s, getattr(s, attr)) for s in samples
           if not s.missing and getattr(s, attr) is not None]
    if len(pts) < 2 or t1 <= t0:
        return None

    def at(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        if t >= pts[-1][0]:
            return pts[-1][1]
        lo, hi = 0, len(pts) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if pts[mid][0] <= t else (lo, mid)
        (ta, va), (tb, vb) = pts[lo], pts[hi]
        return va + (vb - va) * (t - ta) / (tb - ta)

    xs = [t0, *[t for t, _ in pts if t0 < t < t1], t1]
    ys = [at(x) for x in xs]
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


def poll_ticks(backend, seconds: float) -> dict:
    """Tight-polls the energy counter in a thread; returns polls and update statistics."""
    polls: list[tuple[float, float]] = []
    cpu = {}

    def run() -> None:
        c0, end = time.thread_time(), time.monotonic() + seconds
        while time.monotonic() < end:
            polls.append((time.monotonic(), backend.energy_j(DEVICE)))
        cpu["s"] = time.thread_time() - c0

    th = threading.Thread(target=run)
    th.start()
    return {"thread": th, "polls": polls, "cpu": cpu, "seconds": seconds}


def tick_stats(p: dict) -> dict:
    polls = p["polls"]
    changes = [polls[i][0] for i in range(1, len(polls)) if polls[i][1] != polls[i - 1][1]]
    gaps = [b - a for a, b in itertools.pairwise(changes)]
    return {
        "polls": len(polls),
        "calls_per_s": len(polls) / p["seconds"],
        "call_wall_ms": 1e3 * p["seconds"] / max(len(polls), 1),
        "call_cpu_ms": 1e3 * p["cpu"].get("s", 0.0) / max(len(polls), 1),
        "updates": len(changes),
        "update_period_median_s": statistics.median(gaps) if gaps else None,
        "update_period_p10_s": _q(gaps, 0.1),
        "update_period_p90_s": _q(gaps, 0.9),
    }


def _q(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--simulate", action="store_true",
                    help="dry run on a simulated GPU (no NVML, no CUDA): checks the script only")
    ap.add_argument("--quick", action="store_true", help="short phases, one repeat (dry runs)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phase_scale = 0.2 if args.quick else 1.0

    if args.simulate:
        sim = SimulatedBackend({DEVICE: SimPowerModel(80, 640, 700, ThermalModel())})
        backend = sim
        gpu_info = {"simulated": True}
    else:
        sim = None
        try:
            backend = NvmlBackend()
        except TelemetryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if DEVICE not in backend.devices():
            print(f"error: no {DEVICE}: NVML sees GPUs but CUDA shows none here", file=sys.stderr)
            return 2
        gpu_info = {"gpu": backend.describe(DEVICE), "uuid": backend.uuid(DEVICE),
                    "slowdown_c": backend.slowdown_temperature_c(DEVICE)}
        try:
            import pynvml

            gpu_info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            gpu_info["nvml_bindings"] = getattr(pynvml, "__version__", "")
        except Exception as exc:  # informational only
            gpu_info["driver_error"] = str(exc)

    mon = GpuSystemMonitor(interval_s=0.1, csv_path=out / "samples.csv", buffer_size=20000,
                           backends={DEVICE: backend})
    period = mon.counter_period_s(DEVICE)
    rows: list[dict] = []
    phases: dict[str, dict] = {}
    t_run0 = time.monotonic()

    def record(phase: str, nominal: float | None, m: Measurement, slots: int = 0) -> dict:
        d = m.devices[DEVICE]
        hist = mon.history(DEVICE)
        t0, t1 = m.start_s, m.start_s + m.duration_s
        row = {
            "phase": phase, "nominal_s": nominal, "start_s": round(t0 - t_run0, 4),
            "duration_s": m.duration_s, "slots": slots, "measurable": d.measurable,
            "energy_j": d.energy_j, "rate_w": d.mean_power_w, "peak_w": d.peak_power_w,
            "poll_instant_j": integrate(hist, t0, t1, "power_w"),
            "poll_average_j": integrate(hist, t0, t1, "power_average_w"),
            "temp_start_c": d.start_temperature_c, "temp_end_c": d.end_temperature_c,
            "reasons": "|".join(d.clock_event_reasons), "note": d.note,
        }
        rows.append(row)
        return row

    with mon:
        # (a) idle before CUDA is initialized
        time.sleep(1.0)
        with mon.window("idle_cold") as w:
            time.sleep(5.0 * phase_scale)
        phases["idle_cold"] = record("idle_cold", None, w.measurement)
        print(f"idle (no CUDA context): {phases['idle_cold']['rate_w']:.1f} W", flush=True)

        work = Workload(sim)
        work.calibrate()
        print(f"GEMM {work.gemm_s * 1e3:.2f} ms; {work.k} per {SLOT_S * 1e3:.0f} ms slot",
              flush=True)

        # (a) loaded at the power cap, with the counter's update period polled meanwhile
        ticks = poll_ticks(backend, 2.0)
        with mon.window("full_load") as w:
            gemms = work.full(6.0 * phase_scale)
        ticks["thread"].join()
        pressure_full = mon.pressure(DEVICE)
        phases["full_load"] = record("full_load", None, w.measurement)
        phases["full_load"]["gemms"] = gemms
        tstats = tick_stats(ticks)
        print(f"full load: {phases['full_load']['rate_w']:.1f} W, reasons "
              f"{phases['full_load']['reasons']}; counter update period "
              f"{tstats['update_period_median_s']}", flush=True)

        # (b) paced workload: warm up to a steady temperature, reference part 1
        _, t = work.paced(8.0 * phase_scale)
        mon.begin_window("ref1")
        slots1, t = work.paced(15.0 * phase_scale, t)
        ref1 = record("reference_1", 15.0 * phase_scale, mon.end_window("ref1"), slots1)

        repeats = {w: (1 if args.quick else (5 if w <= 1.0 else 3)) for w in WINDOWS_S}
        plan = []
        for r in range(max(repeats.values())):
            for w in WINDOWS_S:
                if r < repeats[w]:
                    plan += [("window", w, w), ("window_offset", w, w + period / 2)]
        for phase, nominal, length in plan:
            mon.begin_window("w")
            slots, t = work.paced(length, t)
            record(phase, nominal, mon.end_window("w"), slots)

        mon.begin_window("ref2")
        slots2, t = work.paced(15.0 * phase_scale, t)
        ref2 = record("reference_2", 15.0 * phase_scale, mon.end_window("ref2"), slots2)

        # (a) idle after the load, and (d) the sampler's overhead while idle
        s0 = mon.sampler_stats()
        with mon.window("idle_after") as w:
            time.sleep(5.0 * phase_scale)
        s1 = mon.sampler_stats()
        phases["idle_after"] = record("idle_after", None, w.measurement)
    stats = mon.sampler_stats()
    mon.close()
    if sim is None:
        backend.close()

    # --- analysis ---------------------------------------------------------------------------
    ref_energy = ref1["energy_j"] + ref2["energy_j"]
    ref_time = ref1["duration_s"] + ref2["duration_s"]
    ref_w = ref_energy / ref_time
    ref_per_slot = ref_energy / (ref1["slots"] + ref2["slots"])
    for row in rows:
        if row["phase"].startswith("window") and row["energy_j"] is not None:
            row["rate_error"] = row["rate_w"] / ref_w - 1
            row["energy_per_slot_error"] = row["energy_j"] / row["slots"] / ref_per_slot - 1
        if row["energy_j"] and row["poll_instant_j"] is not None:
            row["poll_instant_vs_counter"] = row["poll_instant_j"] / row["energy_j"] - 1
        if row["energy_j"] and row["poll_average_j"] is not None:
            row["poll_average_vs_counter"] = row["poll_average_j"] / row["energy_j"] - 1

    table = []
    for w in WINDOWS_S:
        entry: dict[str, object] = {"window_s": w}
        for phase in ("window", "window_offset"):
            sel = [r for r in rows if r["phase"] == phase and r["nominal_s"] == w]
            errs = [abs(r["rate_error"]) for r in sel if "rate_error" in r]
            inst = [abs(r["poll_instant_vs_counter"]) for r in sel
                    if "poll_instant_vs_counter" in r]
            avg = [abs(r["poll_average_vs_counter"]) for r in sel
                   if "poll_average_vs_counter" in r]
            key = "" if phase == "window" else "offset_"
            entry[f"{key}n"] = len(sel)
            entry[f"{key}measurable"] = sum(bool(r["measurable"]) for r in sel)
            complete = bool(errs) and len(errs) == len(sel)  # a not-measurable repeat fails
            entry[f"{key}max_abs_rate_error"] = max(errs) if complete else None
            entry[f"{key}mean_abs_rate_error"] = statistics.mean(errs) if errs else None
            entry[f"{key}max_abs_poll_instant_vs_counter"] = max(inst) if inst else None
            entry[f"{key}max_abs_poll_average_vs_counter"] = max(avg) if avg else None
        ok = all(entry[k] is not None and entry[k] <= TARGET_ERROR  # type: ignore[operator]
                 for k in ("max_abs_rate_error", "offset_max_abs_rate_error"))
        entry["within_target"] = ok
        table.append(entry)
    shortest = None
    for entry in reversed(table):
        if not entry["within_target"]:
            break
        shortest = entry["window_s"]

    idle_cpu = (s1.cpu_s - s0.cpu_s) / (s1.wall_s - s0.wall_s) if s1.wall_s > s0.wall_s else None
    prov = provenance()
    if str(prov["commit"]).startswith("unknown") and os.environ.get("WATTMOE_COMMIT"):
        prov["commit"] = os.environ["WATTMOE_COMMIT"]  # the device machine has no .git
    summary = {
        **prov,
        "simulated": bool(args.simulate),
        "quick": bool(args.quick),
        "gpu_info": gpu_info,
        "counter_period_s_assumed": period,
        "counter_updates": tstats,
        "workload": {"gemm": "bf16 8192x8192x8192 torch.matmul", "gemm_ms": work.gemm_s * 1e3,
                     "gemms_per_slot": work.k, "slot_s": SLOT_S, "target_duty": DUTY},
        "power_w": {
            "idle_no_cuda_context": phases["idle_cold"]["rate_w"],
            "idle_after_load": phases["idle_after"]["rate_w"],
            "paced_workload_reference": ref_w,
            "full_gemm_loop": phases["full_load"]["rate_w"],
            "full_gemm_loop_peak": phases["full_load"]["peak_w"],
            "full_gemm_loop_reasons": phases["full_load"]["reasons"],
        },
        "pressure_after_full_load": {"thermal": pressure_full.thermal,
                                     "power": pressure_full.power},
        "reference": {"energy_j": ref_energy, "duration_s": ref_time, "rate_w": ref_w,
                      "drift": ref2["rate_w"] / ref1["rate_w"] - 1,
                      "rate_1_w": ref1["rate_w"], "rate_2_w": ref2["rate_w"]},
        "target_error": TARGET_ERROR,
        "window_table": table,
        "shortest_accurate_window_s": shortest,
        "shortest_accurate_window_rule": (
            "smallest nominal window such that it and every longer one had |rate error| <= "
            "2% in every repeat, both at the nominal length and half a counter period longer"),
        "counter_vs_polled": {
            "reference_poll_instant_vs_counter": (ref1["poll_instant_j"] + ref2["poll_instant_j"])
            / ref_energy - 1,
            "reference_poll_average_vs_counter": (ref1["poll_average_j"] + ref2["poll_average_j"])
            / ref_energy - 1,
            "full_load_poll_instant_vs_counter": phases["full_load"].get("poll_instant_vs_counter"),
            "idle_after_poll_instant_vs_counter": phases["idle_after"].get(
                "poll_instant_vs_counter"),
        },
        "sampler": {
            "interval_s": 0.1, "ticks": stats.ticks, "samples": stats.samples,
            "missing": stats.missing, "overruns": stats.overruns,
            "cpu_s": stats.cpu_s, "wall_s": stats.wall_s,
            "cpu_fraction_whole_run": stats.cpu_fraction,
            "cpu_fraction_idle_phase": idle_cpu,
            "cpu_ms_per_sample": 1e3 * stats.cpu_s / max(stats.samples, 1),
            "target_cpu_fraction": 0.01,
        },
    }
    with (out / "windows.csv").open("w", newline="") as f:
        cols = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k)
                      if k in rows[0] else 100 + len(k))
        wr = csv.DictWriter(f, fieldnames=cols)
        wr.writeheader()
        wr.writerows(rows)
    with (out / "ticks.csv").open("w", newline="") as f:
        wr2 = csv.writer(f)
        wr2.writerow(["time_s", "energy_j"])
        polls = ticks["polls"]
        if len(polls) > 50_000:  # a simulated counter changes on every poll: keep a sample
            polls = polls[:50_000]
        wr2.writerows(polls)
    write_json(out / "summary.json", summary)  # NaN/inf -> null

    drift = summary["reference"]["drift"]  # type: ignore[index]
    print(f"reference: {ref_w:.1f} W over {ref_time:.1f} s (drift {drift:+.2%})")
    print(f"{'window':>7} {'max|err|':>9} {'+T/2 max|err|':>14} {'poll inst':>10} ok")
    for e in table:
        print(f"{e['window_s']:7.1f} {_pct(e['max_abs_rate_error']):>9} "
              f"{_pct(e['offset_max_abs_rate_error']):>14} "
              f"{_pct(e['max_abs_poll_instant_vs_counter']):>10} {e['within_target']}")
    print(f"shortest accurate window: {shortest} s")
    per_sample_ms = 1e3 * stats.cpu_s / max(stats.samples, 1)
    print(f"sampler CPU: {stats.cpu_fraction:.3%} of a core ({per_sample_ms:.2f} ms/sample), "
          f"missing {stats.missing}")
    return 0


def _pct(v: object) -> str:
    return "-" if v is None else f"{v:.2%}"  # type: ignore[str-format]


if __name__ == "__main__":
    sys.exit(main())
