"""One profiling run end to end: sweep -> JSONL (incremental) -> versioned JSON (atomic)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import CostModelError
from wattmoe.cost_model.database import ProfileDatabase, provenance, save_profile
from wattmoe.cost_model.profiler import (
    EnergyMonitor,
    JsonlWriter,
    KernelProfiler,
    ProfilerConfig,
    SweepResult,
    read_jsonl,
)
from wattmoe.cost_model.scenarios import Scenario, SweepConfig, build_sweep, is_memory_skip
from wattmoe.errors import os_error_as

log = logging.getLogger(__name__)


def jsonl_path_for(out: str | Path) -> Path:
    """The incremental JSONL written beside a profile JSON."""
    return Path(out).with_suffix(".jsonl")


def run_profile(
    sweep: SweepConfig,
    config: ProfilerConfig,
    monitor: EnergyMonitor,
    out: str | Path,
    resume: bool = False,
    command: str | None = None,
    progress: Callable[[Scenario, Any, str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[ProfileDatabase, SweepResult]:
    """Runs `sweep`, appending every scenario to `<out>.jsonl`, then writes `out` atomically.

    With `resume`, the scenarios already in the JSONL are kept and not measured again, and
    the JSON gathers the points and the commands of every run that wrote to the JSONL.

    Returns:
        The database written to `out`, and this run's `SweepResult`.
    """
    scenarios, notes = build_sweep(sweep)
    for n in notes:
        log.info(n)
    if on_start:
        on_start(len(scenarios))
    jsonl = jsonl_path_for(out)
    if jsonl.exists() and not resume:
        # never delete what an earlier (maybe interrupted) sweep measured: keep it aside
        kept = jsonl.with_name(f"{jsonl.name}.{time.strftime('%Y%m%dT%H%M%S')}.bak")
        jsonl.replace(kept)
        log.warning("%s exists and --resume was not given: moved it to %s", jsonl, kept.name)
    prov = provenance(command)
    w = JsonlWriter(jsonl)
    w.write({"record": "run", "command": prov["command"], "commit": prov["commit"],
             "sweep": asdict(sweep), "profiler": asdict(config)})
    w.close()
    res = KernelProfiler(monitor, config).run_sweep(scenarios, jsonl, progress=progress,
                                                    resume=resume)
    logged = read_jsonl(jsonl)
    if not logged.points and not logged.errors:  # e.g. every scenario past the deadline
        # or over the memory limit: say which (was "0 not run" for those)
        too_big = [n for n in notes if is_memory_skip(n)]
        why = f": {too_big[0]}" + (f" and {len(too_big) - 1} more" if len(too_big) > 1
                                   else "") if too_big else ""
        raise CostModelError(
            f"no scenario was measured ({len(res.skipped) + len(too_big)} not run{why}); "
            f"{str(out)!r} was not written" + (" and is left as it was"
                                               if Path(out).exists() else ""))
    if len(logged.runs) > 1:
        prov["command"] = " ; ".join(r["command"] for r in logged.runs)
        prov["commits"] = sorted({r["commit"] for r in logged.runs})
    db = ProfileDatabase(
        points=logged.points, devices=logged.devices, provenance=prov,
        sweep={"runs": [r["sweep"] for r in logged.runs], "skipped_notes": notes},
        profiler=asdict(config), errors=logged.errors, skipped=res.skipped,
    )
    # the sweep's points are safe in the JSONL: say so, in one line, if the JSON cannot be written
    with os_error_as(CostModelError, f"cannot write profile {str(out)!r} (the measured "
                     f"scenarios are in {str(jsonl)!r}: rerun with --resume to write it)"):
        save_profile(db, out)
    return db, res
