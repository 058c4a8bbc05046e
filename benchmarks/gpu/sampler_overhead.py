"""Sampler overhead of GpuSystemMonitor on a GPU (issue 3, target < 1% of a core at 10 Hz).

Also checks that the NVML energy field value (NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, read in the
sampler's single field-values call) is the same counter as nvmlDeviceGetTotalEnergyConsumption
(read at window edges).

Usage (GPU machine): python3 benchmarks/gpu/sampler_overhead.py --out DIR [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _meta import provenance, write_json

from wattmoe.telemetry import GpuSystemMonitor


def count_calls(backend) -> dict[str, int]:
    """Wraps the pynvml functions the backend calls and counts them."""
    nv = backend._nv
    counts: dict[str, int] = {}
    for name in dir(nv):
        if not name.startswith("nvmlDevice"):
            continue
        fn = getattr(nv, name)
        if not callable(fn):
            continue

        def wrapped(*a, _fn=fn, _name=name, **k):
            counts[_name] = counts.get(_name, 0) + 1
            return _fn(*a, **k)

        setattr(nv, name, wrapped)
    return counts


def phase(mon: GpuSystemMonitor, seconds: float, load: bool) -> dict[str, float]:
    import torch

    stop = threading.Event()

    def gemms() -> None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        while not stop.is_set():
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()

    worker = threading.Thread(target=gemms, daemon=True) if load else None
    mon.start()
    if worker:
        worker.start()
    s0 = mon.sampler_stats()
    time.sleep(seconds)
    s1 = mon.sampler_stats()
    mon.stop()
    stop.set()
    if worker:
        worker.join()
    cpu = s1.cpu_s - s0.cpu_s
    wall = s1.wall_s - s0.wall_s
    return {"load": load, "wall_s": wall, "cpu_s": cpu, "cpu_fraction": cpu / wall,
            "ticks": s1.ticks - s0.ticks, "missing": s1.missing - s0.missing,
            "overruns": s1.overruns - s0.overruns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    import torch

    torch.ones(1, device="cuda")  # CUDA context first, as in a real run
    mon = GpuSystemMonitor(devices=["cuda:0"], interval_s=0.1)
    backend = mon.backend_for("cuda:0")
    nv = backend._nv
    handle = backend._gpu("cuda:0").handle
    # field value vs direct counter, read back to back
    pairs = []
    for _ in range(50):
        fv = nv.nvmlDeviceGetFieldValues(handle, [nv.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION])[0]
        direct = nv.nvmlDeviceGetTotalEnergyConsumption(handle)
        pairs.append((int(fv.nvmlReturn), int(fv.value.ullVal), int(direct)))
        time.sleep(0.01)
    ok = [p for p in pairs if p[0] == nv.NVML_SUCCESS]
    diffs_mj = [d - f for _, f, d in ok]
    # thread CPU time of each NVML call the sampler can make, 200 calls each
    per_call_ms = {}
    probes = {
        "nvmlDeviceGetTotalEnergyConsumption":
            lambda: nv.nvmlDeviceGetTotalEnergyConsumption(handle),
        "nvmlDeviceGetPowerUsage": lambda: nv.nvmlDeviceGetPowerUsage(handle),
        "fields[power_instant,power_average,mem_temp]": lambda: nv.nvmlDeviceGetFieldValues(
            handle, [nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_FI_DEV_POWER_AVERAGE,
                     nv.NVML_FI_DEV_MEMORY_TEMP]),
        "fields[total_energy]": lambda: nv.nvmlDeviceGetFieldValues(
            handle, [nv.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]),
        "nvmlDeviceGetTemperature": lambda: nv.nvmlDeviceGetTemperature(
            handle, nv.NVML_TEMPERATURE_GPU),
        "sample(cuda:0)": lambda: backend.sample("cuda:0"),
    }
    for name, fn in probes.items():
        fn()
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(200):
            fn()
        per_call_ms[name] = {"cpu_ms": (time.thread_time() - c0) / 200 * 1e3,
                             "wall_ms": (time.perf_counter() - w0) / 200 * 1e3}
    counts = count_calls(backend)
    idle = phase(mon, args.seconds, load=False)
    calls_idle = dict(counts)
    loaded = phase(mon, args.seconds, load=True)
    calls_total = dict(counts)
    ticks = idle["ticks"] + loaded["ticks"]
    summary = {
        **provenance(),
        "interval_s": 0.1,
        "energy_field": {"reads": len(pairs), "supported": len(ok),
                         "direct_minus_field_mj": {"min": min(diffs_mj, default=None),
                                                   "max": max(diffs_mj, default=None)}},
        "phases": [idle, loaded],
        "nvml_calls": calls_total,
        "nvml_calls_idle_phase": calls_idle,
        "nvml_calls_per_sample": sum(calls_total.values()) / max(ticks, 1),
        "per_call_ms": per_call_ms,
        "target_cpu_fraction": 0.01,
    }
    write_json(Path(args.out) / "sampler_overhead.json", summary)
    print(json.dumps({k: summary[k] for k in ("energy_field", "phases", "nvml_calls_per_sample",
                                              "nvml_calls", "per_call_ms")}, indent=1))
    for p in (idle, loaded):
        print(f"{'loaded' if p['load'] else 'idle':6s}: sampler CPU {p['cpu_fraction']:.2%} of a "
              f"core over {p['wall_s']:.1f} s, {p['ticks']} ticks, {p['missing']} missing")


if __name__ == "__main__":
    main()
