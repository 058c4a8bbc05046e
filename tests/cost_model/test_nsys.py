"""The Nsight Systems importer on a small SQLite file built to the documented export schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wattmoe.cost_model import ProfileFormatError, import_nsys_sqlite

GEMM = "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>"
SILU = "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>"


def build_export(path: Path, with_metrics: bool = True) -> Path:
    """Tables and columns as in the nsys SQLite export schema reference."""
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE CUPTI_ACTIVITY_KIND_KERNEL (
            start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER NOT NULL,
            contextId INTEGER NOT NULL, streamId INTEGER NOT NULL,
            correlationId INTEGER, globalPid INTEGER, demangledName INTEGER NOT NULL,
            shortName INTEGER NOT NULL, mangledName INTEGER, launchType INTEGER,
            cacheConfig INTEGER, registersPerThread INTEGER NOT NULL,
            gridX INTEGER NOT NULL, gridY INTEGER NOT NULL, gridZ INTEGER NOT NULL,
            blockX INTEGER NOT NULL, blockY INTEGER NOT NULL, blockZ INTEGER NOT NULL,
            staticSharedMemory INTEGER NOT NULL, dynamicSharedMemory INTEGER NOT NULL,
            localMemoryPerThread INTEGER NOT NULL, localMemoryTotal INTEGER NOT NULL,
            gridId INTEGER NOT NULL, sharedMemoryExecuted INTEGER,
            graphNodeId INTEGER, sharedMemoryLimitConfig INTEGER);
    """)
    con.executemany("INSERT INTO StringIds VALUES (?, ?)",
                    [(1, GEMM), (2, "Kernel2"), (3, SILU), (4, "vectorized_elementwise_kernel")])
    rows = [  # (start, end, device, stream, correlation, demangled, short)
        (1_000, 11_000, 0, 7, 1, 1, 2),
        (12_000, 14_000, 0, 7, 2, 3, 4),
        (20_000, 40_000, 0, 7, 3, 1, 2),
        (50_000, 52_000, 1, 9, 4, 3, 4),
    ]
    con.executemany(
        "INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL (start, end, deviceId, contextId, streamId, "
        "correlationId, globalPid, demangledName, shortName, registersPerThread, gridX, gridY, "
        "gridZ, blockX, blockY, blockZ, staticSharedMemory, dynamicSharedMemory, "
        "localMemoryPerThread, localMemoryTotal, gridId) "
        "VALUES (?, ?, ?, 1, ?, ?, 100, ?, ?, 64, 1, 1, 1, 128, 1, 1, 0, 0, 0, 0, 0)",
        rows)
    if with_metrics:
        con.executescript("""
            CREATE TABLE TARGET_INFO_GPU_METRICS (typeId INTEGER NOT NULL, sourceId INTEGER
                NOT NULL, typeName TEXT NOT NULL, metricId INTEGER NOT NULL,
                metricName TEXT NOT NULL);
            CREATE TABLE GPU_METRICS (timestamp INTEGER NOT NULL, typeId INTEGER NOT NULL,
                metricId INTEGER NOT NULL, value INTEGER NOT NULL);
        """)
        for gpu in (0, 1):
            type_id = 0x10000 | gpu  # the GPU is the low byte of typeId
            con.executemany("INSERT INTO TARGET_INFO_GPU_METRICS VALUES (?, 0, 'GH100', ?, ?)",
                            [(type_id, 3, "SMs Active [Throughput %]"),
                             (type_id, 7, "DRAM Read Bandwidth [Throughput %]")])
        samples = [(t, 0x10000, 3, v) for t, v in
                   ((5_000, 80), (10_000, 90), (13_000, 10), (25_000, 70), (30_000, 90),
                    (45_000, 0))]
        samples += [(t, 0x10000, 7, v) for t, v in ((5_000, 40), (13_000, 60), (30_000, 20))]
        samples += [(51_000, 0x10001, 3, 55)]
        con.executemany("INSERT INTO GPU_METRICS VALUES (?, ?, ?, ?)", samples)
    con.commit()
    con.close()
    return path


def test_kernels_and_summary(tmp_path: Path) -> None:
    rep = import_nsys_sqlite(build_export(tmp_path / "r.sqlite"))
    assert [k.name for k in rep.kernels] == [GEMM, SILU, GEMM, SILU]
    assert rep.kernels[0].short_name == "Kernel2"
    assert rep.kernels[3].device_id == 1 and rep.kernels[3].stream_id == 9
    summary = {r["name"]: r for r in rep.kernel_summary()}
    assert summary[GEMM]["calls"] == 2
    assert summary[GEMM]["total_s"] == pytest.approx(30e-6)
    assert summary[GEMM]["mean_s"] == pytest.approx(15e-6)
    assert summary[SILU]["min_s"] == pytest.approx(2e-6)
    assert rep.kernel_summary()[0]["name"] == GEMM  # longest total first


def test_gpu_metrics_joined_by_name_and_gpu(tmp_path: Path) -> None:
    rep = import_nsys_sqlite(build_export(tmp_path / "r.sqlite"))
    assert set(rep.metrics) == {"SMs Active [Throughput %]", "DRAM Read Bandwidth [Throughput %]"}
    assert rep.metrics["SMs Active [Throughput %]"][1] == [(51_000, 55.0)]
    means = rep.metric_means_during_kernels()
    # GEMM ran over [1000, 11000] and [20000, 40000] on GPU 0: SM samples 80, 90, 70, 90
    assert means[GEMM]["SMs Active [Throughput %]"] == pytest.approx(82.5)
    assert means[GEMM]["DRAM Read Bandwidth [Throughput %]"] == pytest.approx(30.0)
    # SILU: [12000, 14000] on GPU 0 (sample 10) and [50000, 52000] on GPU 1 (sample 55)
    assert means[SILU]["SMs Active [Throughput %]"] == pytest.approx(32.5)


def test_export_without_gpu_metrics(tmp_path: Path) -> None:
    rep = import_nsys_sqlite(build_export(tmp_path / "r.sqlite", with_metrics=False))
    assert len(rep.kernels) == 4
    assert rep.metrics == {}
    assert rep.metric_means_during_kernels() == {}


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileFormatError, match="does not exist"):
        import_nsys_sqlite(tmp_path / "absent.sqlite")
    # was: a folder was "does not exist" too
    with pytest.raises(ProfileFormatError, match="is a folder, not an nsys export"):
        import_nsys_sqlite(tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ProfileFormatError, match="not an SQLite file"):
        import_nsys_sqlite(junk)
    empty = tmp_path / "empty.sqlite"
    con = sqlite3.connect(empty)
    con.execute("CREATE TABLE StringIds (id INTEGER, value TEXT)")
    con.close()
    with pytest.raises(ProfileFormatError, match="no CUPTI_ACTIVITY_KIND_KERNEL"):
        import_nsys_sqlite(empty)
