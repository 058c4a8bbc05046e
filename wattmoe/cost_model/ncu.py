"""Optional hardware counters from Nsight Compute (`ncu`) for a subset of scenarios.

`collect_ncu(scenario)` runs the scenario in a child process under
``ncu --clock-control none`` (the card's clocks are left alone) with profiling limited to one
call between ``cudaProfilerStart``/``Stop``, and returns per-scenario totals: DRAM bytes,
time-weighted SM throughput and achieved occupancy, kernels and GPU time. ncu replays each
kernel several times, so these counters are never mixed with the energy windows.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import CostModelError

log = logging.getLogger(__name__)

NCU_METRICS: dict[str, str] = {
    "dram__bytes.sum": "dram_bytes",
    "sm__throughput.avg.pct_of_peak_sustained_elapsed": "sm_throughput_pct",
    "sm__warps_active.avg.pct_of_peak_sustained_active": "achieved_occupancy_pct",
    "gpu__time_duration.sum": "gpu_time_s",
}
_UNIT = {"byte": 1.0, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "b": 1.0, "kb": 1e3,
         "mb": 1e6, "gb": 1e9, "nsecond": 1e-9, "usecond": 1e-6, "msecond": 1e-3,
         "second": 1.0, "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "%": 1.0}
#: Base units ncu uses when a unit row is missing or unknown (`--print-units base`).
_BASE_UNIT = {"gpu_time_s": 1e-9}


def ncu_path() -> str | None:
    """The `ncu` executable on PATH, or None."""
    return shutil.which("ncu")


def _number(text: str) -> float | None:
    t = text.strip().replace(",", "")
    try:
        return float(t)
    except ValueError:
        return None


def parse_ncu_csv(text: str) -> list[dict[str, float | str]]:
    """Rows of `ncu --csv --page raw` output: kernel name plus the metrics in `NCU_METRICS`
    (converted to bytes, seconds and percent)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if '"Kernel Name"' in ln), None)
    if start is None:
        raise CostModelError("ncu output has no CSV table (no 'Kernel Name' header)")
    reader = csv.reader(io.StringIO("\n".join(lines[start:])))
    header = next(reader)
    units: list[str] | None = None
    out: list[dict[str, float | str]] = []
    for row in reader:
        if len(row) != len(header):
            continue
        rec = dict(zip(header, row))
        if units is None and not rec.get("ID", "x").strip():
            units = row  # the unit row under the header
            continue
        item: dict[str, float | str] = {"kernel": rec.get("Kernel Name", "")}
        for metric, key in NCU_METRICS.items():
            if metric in rec:
                v = _number(rec[metric])
                if v is None:
                    continue
                unit = units[header.index(metric)].strip().lower() if units else ""
                item[key] = v * _UNIT.get(unit, _BASE_UNIT.get(key, 1.0))
        out.append(item)
    return out


def aggregate_ncu(rows: list[dict[str, float | str]]) -> dict[str, float]:
    """Per-scenario totals: DRAM bytes and GPU time summed; percentages time-weighted."""
    if not rows:
        return {}
    total_t = sum(float(r.get("gpu_time_s", 0.0)) for r in rows)
    agg: dict[str, float] = {"kernels": float(len(rows)), "gpu_time_s": total_t,
                             "dram_bytes": sum(float(r.get("dram_bytes", 0.0)) for r in rows)}
    for key in ("sm_throughput_pct", "achieved_occupancy_pct"):
        vals = [(float(r[key]), float(r.get("gpu_time_s", 0.0))) for r in rows if key in r]
        if vals:
            w = sum(t for _, t in vals)
            if w > 0:
                agg[key] = sum(v * t for v, t in vals) / w
            else:
                agg[key] = sum(v for v, _ in vals) / len(vals)
    return agg


def collect_ncu(spec: dict[str, Any], timeout_s: float = 180.0) -> dict[str, float]:
    """Runs one scenario under ncu and returns `aggregate_ncu` of its kernels.

    Args:
        spec: {"op", "shape" (preset spec or shape key), "dtype", "device", "tokens"}.

    Raises:
        CostModelError: no ncu, or ncu failed (its last output lines are in the message).
    """
    exe = ncu_path()
    if exe is None:
        raise CostModelError("ncu is not on PATH; hardware counters need Nsight Compute")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [exe, "--clock-control", "none", "--profile-from-start", "off",
               "--target-processes", "all", "--metrics", ",".join(NCU_METRICS),
               "--csv", "--page", "raw", "--print-units", "base",
               sys.executable, "-m", "wattmoe.cost_model.ncu_target", str(spec_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise CostModelError(f"ncu timed out after {timeout_s:.0f} s on {spec}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise CostModelError(f"ncu failed (exit {proc.returncode}): {' | '.join(tail)}")
    return aggregate_ncu(parse_ncu_csv(proc.stdout))
