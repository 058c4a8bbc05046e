"""The telemetry CSV: what `GpuSystemMonitor(csv_path=...)` and `wattmoe monitor --csv` write
and what `ReplayBackend` reads. One row per device per sampler tick, flushed per row.

| column | unit | meaning |
| --- | --- | --- |
| `time_s` | s | `time.monotonic()` at the reading (a replay keeps the recorded time) |
| `unix_time_s` | s | wall-clock time at the reading, for joining with other logs |
| `device` | | `cuda:0`, `cpu`, `sim:0` ... |
| `backend` | | backend that read it: `nvml`, `rapl`, `cpu-estimate`, `simulated`, `replay` |
| `source` | | `measured`, `estimated`, `simulated` or `replayed` |
| `missing` | 0/1 | 1 when the reading failed (all values empty) |
| `energy_j` | J | cumulative energy counter, arbitrary origin |
| `power_w` | W | instant power (NVML_FI_DEV_POWER_INSTANT where available) |
| `power_average_w` | W | driver-averaged power (NVML_FI_DEV_POWER_AVERAGE), if any |
| `temperature_c` | C | core temperature |
| `memory_temperature_c` | C | memory (HBM) temperature |
| `power_limit_w` | W | enforced power limit |
| `utilization` | 0..1 | busy fraction |
| `clock_event_reasons` | | active clock-event reasons joined by `|` |

Empty cells are unknown values. Columns beyond these are ignored on reading; only `time_s`
and `device` are required.
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from pathlib import Path
from typing import IO

from wattmoe.errors import os_error_as
from wattmoe.telemetry.base import SOURCES, BackendUnavailable, DeviceSample

COLUMNS: tuple[str, ...] = (
    "time_s", "unix_time_s", "device", "backend", "source", "missing", "energy_j", "power_w",
    "power_average_w", "temperature_c", "memory_temperature_c", "power_limit_w", "utilization",
    "clock_event_reasons",
)
REQUIRED: tuple[str, ...] = ("time_s", "device")
_FLOATS = ("energy_j", "power_w", "power_average_w", "temperature_c", "memory_temperature_c",
           "power_limit_w", "utilization")


def _fmt(v: float | None, digits: int = 6) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}".rstrip("0").rstrip(".") if math.isfinite(v) else ""


def sample_to_row(sample: DeviceSample, backend: str = "", unix_time_s: float | None = None
                  ) -> dict[str, str]:
    """One CSV row (strings) for a sample."""
    if unix_time_s is None:
        unix_time_s = time.time() - (time.monotonic() - sample.timestamp_s)
    return {
        "time_s": f"{sample.timestamp_s:.6f}",
        "unix_time_s": f"{unix_time_s:.6f}",
        "device": sample.device,
        "backend": backend,
        "source": sample.source,
        "missing": "1" if sample.missing else "0",
        "energy_j": _fmt(sample.energy_j),
        "power_w": _fmt(sample.power_w, 3),
        "power_average_w": _fmt(sample.power_average_w, 3),
        "temperature_c": _fmt(sample.temperature_c, 2),
        "memory_temperature_c": _fmt(sample.memory_temperature_c, 2),
        "power_limit_w": _fmt(sample.power_limit_w, 3),
        "utilization": _fmt(sample.utilization, 4),
        "clock_event_reasons": "|".join(sample.clock_event_reasons),
    }


class SampleCsvWriter:
    """Appends samples to a telemetry CSV, one flushed row each (thread-safe).

    The header is written when the file is new or empty; an existing file with another
    header is refused rather than mixed.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with os_error_as(BackendUnavailable, f"cannot write telemetry CSV {str(self.path)!r}",
                         also=(UnicodeDecodeError, csv.Error)):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            if not fresh:
                with self.path.open(newline="") as f:
                    header = next(csv.reader(f), [])
                if tuple(header) != COLUMNS:
                    raise BackendUnavailable(
                        f"{self.path} exists with other columns; refusing to append telemetry "
                        "rows to it (choose another --csv path)")
            self._file: IO[str] = self.path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._lock = threading.Lock()
        self.rows = 0
        if fresh:
            self._writer.writeheader()
            self._file.flush()

    def write(self, sample: DeviceSample, backend: str = "") -> None:
        row = sample_to_row(sample, backend)
        with self._lock:
            if self._file.closed:
                return
            self._writer.writerow(row)
            self._file.flush()
            self.rows += 1

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def _float(raw: str, path: Path, line: int, col: str) -> float | None:
    raw = raw.strip()
    if raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise BackendUnavailable(
            f"telemetry CSV {path}, line {line}, column {col!r}: {raw!r} is not a number"
        ) from None
    if math.isnan(v):
        return None
    if math.isinf(v):  # was: accepted; a time_s of inf made the recording infinitely long
        raise BackendUnavailable(
            f"telemetry CSV {path}, line {line}, column {col!r}: {raw!r} is not a finite number")
    return v


def read_samples_csv(path: str | Path) -> dict[str, list[DeviceSample]]:
    """Reads a telemetry CSV into samples per device, each list sorted by time.

    Raises:
        BackendUnavailable: unreadable file, missing required columns, a malformed value
            (the message names the line and column), or no rows.
    """
    path = Path(path)
    try:
        # utf-8-sig: a CSV saved by a spreadsheet starts with a byte-order mark, which was
        # read as part of the first column's name ("lacks column(s) time_s")
        with path.open(newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise BackendUnavailable(f"cannot read telemetry CSV {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames:  # 'time_s, device, energy_j' names the columns too
        reader.fieldnames = [h.strip() for h in reader.fieldnames]
    header = reader.fieldnames or []
    lacking = [c for c in REQUIRED if c not in header]
    if lacking:
        raise BackendUnavailable(
            f"telemetry CSV {path} lacks column(s) {', '.join(lacking)}; expected the columns "
            f"{', '.join(COLUMNS)} (header read: {', '.join(header) or 'none'})")
    out: dict[str, list[DeviceSample]] = {}
    for i, row in enumerate(reader, start=2):
        if None in row:  # more cells than header fields
            raise BackendUnavailable(
                f"telemetry CSV {path}, line {i}: {len(header) + len(row[None])} cells for "  # type: ignore[index]
                f"{len(header)} columns")
        device = (row.get("device") or "").strip()
        if not device:
            raise BackendUnavailable(f"telemetry CSV {path}, line {i}: empty 'device'")
        t = _float(row.get("time_s") or "", path, i, "time_s")
        if t is None:
            raw = (row.get("time_s") or "").strip()
            raise BackendUnavailable(f"telemetry CSV {path}, line {i}: "
                                     + (f"'time_s' is {raw!r}, not a time" if raw
                                        else "empty 'time_s'"))
        source = (row.get("source") or "measured").strip() or "measured"
        if source not in SOURCES:
            raise BackendUnavailable(
                f"telemetry CSV {path}, line {i}, column 'source': {source!r} is not one of "
                f"{', '.join(SOURCES)}")
        vals = {c: _float(row.get(c) or "", path, i, c) for c in _FLOATS}
        reasons = tuple(r for r in (row.get("clock_event_reasons") or "").split("|") if r)
        out.setdefault(device, []).append(DeviceSample(
            device=device, timestamp_s=t, clock_event_reasons=reasons, source=source,  # type: ignore[arg-type]
            missing=(row.get("missing") or "0").strip() in ("1", "true", "True"), **vals,
        ))
    if not out:
        raise BackendUnavailable(f"telemetry CSV {path} has a header but no samples")
    for samples in out.values():
        samples.sort(key=lambda s: s.timestamp_s)
    return out
