"""Importer for Nsight Systems SQLite exports (`nsys export --type sqlite report.nsys-rep`).

Tables read, as documented in the Nsight Systems "SQLite Export Schema Reference" (all
times are integer nanoseconds from the start of the capture; tables are created lazily, so
any of them may be absent):

- ``StringIds(id INTEGER PRIMARY KEY, value TEXT)``: every string, referenced by id;
- ``CUPTI_ACTIVITY_KIND_KERNEL(start, end, deviceId, contextId, streamId, correlationId,
  globalPid, demangledName, shortName, [mangledName], gridX.., blockX.., registersPerThread,
  ...)``: one row per kernel execution; the name columns are `StringIds` ids;
- ``GPU_METRICS(timestamp, typeId, metricId, value)``: GPU metrics samples
  (``--gpu-metrics-devices``); the GPU is the low byte of ``typeId``;
- ``TARGET_INFO_GPU_METRICS(typeId, sourceId, typeName, metricId, metricName)``: what each
  ``metricId`` measures ('SMs Active [Throughput %]', 'DRAM Read Bandwidth [Throughput %]').
"""

from __future__ import annotations

import bisect
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import ProfileFormatError

KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"
METRICS_TABLE = "GPU_METRICS"
METRIC_INFO_TABLE = "TARGET_INFO_GPU_METRICS"


@dataclass(frozen=True)
class NsysKernel:
    """One kernel execution."""

    name: str
    short_name: str
    start_ns: int
    end_ns: int
    device_id: int
    stream_id: int
    correlation_id: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) * 1e-9


@dataclass
class NsysReport:
    """Kernels and GPU metric samples of one export.

    Attributes:
        kernels: kernel executions sorted by start.
        metrics: metric name -> GPU -> sorted [(timestamp_ns, value)].
    """

    path: str
    kernels: list[NsysKernel] = field(default_factory=list)
    metrics: dict[str, dict[int, list[tuple[int, float]]]] = field(default_factory=dict)

    def kernel_summary(self) -> list[dict[str, Any]]:
        """Per kernel name: calls, total/mean/min/max seconds; longest total first."""
        by: dict[str, list[float]] = defaultdict(list)
        for k in self.kernels:
            by[k.name].append(k.duration_s)
        rows = [
            {"name": n, "calls": len(d), "total_s": sum(d), "mean_s": sum(d) / len(d),
             "min_s": min(d), "max_s": max(d)}
            for n, d in by.items()
        ]
        return sorted(rows, key=lambda r: r["total_s"], reverse=True)

    def metric_means_during_kernels(self) -> dict[str, dict[str, float]]:
        """Per kernel name, the mean of each metric over samples taken while it ran.

        A sample belongs to a kernel when its timestamp lies in [start, end] on the same GPU.
        Kernels shorter than the sampling period may have no sample (then no entry).
        """
        sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for metric, per_gpu in self.metrics.items():
            for gpu, samples in per_gpu.items():
                times = [t for t, _ in samples]
                for k in self.kernels:
                    if k.device_id != gpu:
                        continue
                    lo = bisect.bisect_left(times, k.start_ns)
                    hi = bisect.bisect_right(times, k.end_ns)
                    sums[k.name][metric].extend(v for _, v in samples[lo:hi])
        return {
            name: {m: sum(v) / len(v) for m, v in per.items() if v} for name, per in sums.items()
        }


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def import_nsys_sqlite(path: str | Path) -> NsysReport:
    """Reads the kernel table and GPU metrics of an Nsight Systems SQLite export.

    Raises:
        ProfileFormatError: the file is missing, not SQLite, or has no kernel table.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an nsys export" if path.is_dir() else "does not exist"
        raise ProfileFormatError(f"nsys export {str(path)!r} {what}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        raise ProfileFormatError(f"{str(path)!r} is not an SQLite file ({exc})") from None
    try:
        if KERNEL_TABLE not in tables or "StringIds" not in tables:
            raise ProfileFormatError(
                f"{str(path)!r} has no {KERNEL_TABLE}/StringIds tables: not an nsys export, "
                "or the capture traced no CUDA kernels (use `nsys profile -t cuda`)"
            )
        strings = dict(con.execute("SELECT id, value FROM StringIds"))
        cols = _columns(con, KERNEL_TABLE)
        name_col = next((c for c in ("demangledName", "mangledName", "shortName") if c in cols),
                        None)
        if name_col is None or "start" not in cols or "end" not in cols:
            raise ProfileFormatError(f"{str(path)!r}: {KERNEL_TABLE} lacks start/end/name columns")
        short_col = "shortName" if "shortName" in cols else name_col
        opt = {c: (c if c in cols else "0") for c in ("deviceId", "streamId", "correlationId")}
        rows = con.execute(
            f'SELECT start, "end", {name_col}, {short_col}, {opt["deviceId"]}, '
            f'{opt["streamId"]}, {opt["correlationId"]} FROM {KERNEL_TABLE} ORDER BY start'
        )
        rep = NsysReport(str(path))
        for start, end, nid, sid, dev, stream, corr in rows:
            rep.kernels.append(NsysKernel(
                strings.get(nid, f"<string {nid}>"), strings.get(sid, f"<string {sid}>"),
                int(start), int(end), int(dev), int(stream), int(corr),
            ))
        if METRICS_TABLE in tables and METRIC_INFO_TABLE in tables:
            names = {
                (int(t), int(m)): str(n) for t, m, n in con.execute(
                    f"SELECT typeId, metricId, metricName FROM {METRIC_INFO_TABLE}")
            }
            by_id = {m: n for (_, m), n in names.items()}
            metrics: dict[str, dict[int, list[tuple[int, float]]]] = defaultdict(
                lambda: defaultdict(list))
            for ts, type_id, metric_id, value in con.execute(
                f"SELECT timestamp, typeId, metricId, value FROM {METRICS_TABLE} "
                "ORDER BY timestamp"
            ):
                name = names.get((int(type_id), int(metric_id)), by_id.get(int(metric_id)))
                if name is None:
                    name = f"metric {metric_id}"
                metrics[name][int(type_id) & 0xFF].append((int(ts), float(value)))
            rep.metrics = {k: dict(v) for k, v in metrics.items()}
        return rep
    except sqlite3.DatabaseError as exc:
        raise ProfileFormatError(f"{str(path)!r}: cannot read the nsys tables ({exc})") from None
    finally:
        con.close()
