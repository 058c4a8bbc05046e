"""Parsing Nsight Compute's raw CSV page."""

from __future__ import annotations

import pytest

from wattmoe.cost_model.ncu import aggregate_ncu, parse_ncu_csv
from wattmoe.errors import ConfigError

HEADER = ",".join(f'"{c}"' for c in (
    "ID", "Process ID", "Process Name", "Kernel Name", "dram__bytes.sum",
    "gpu__time_duration.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "sm__warps_active.avg.pct_of_peak_sustained_active"))
CSV = "==PROF== Connected to process 123\n" + HEADER + '''
"","","","","byte","ns","%","%"
"0","123","python3","sm90_xmma_gemm_bf16bf16","1,000,000","3000","80.0","20.0"
"1","123","python3","silu_kernel","500000","1000","40.0","60.0"
'''


def test_parse_and_aggregate() -> None:
    rows = parse_ncu_csv(CSV)
    assert [r["kernel"] for r in rows] == ["sm90_xmma_gemm_bf16bf16", "silu_kernel"]
    assert rows[0]["dram_bytes"] == 1e6 and rows[0]["gpu_time_s"] == pytest.approx(3e-6)
    agg = aggregate_ncu(rows)
    assert agg["kernels"] == 2 and agg["dram_bytes"] == 1.5e6
    assert agg["gpu_time_s"] == pytest.approx(4e-6)
    assert agg["sm_throughput_pct"] == pytest.approx(70.0)  # time-weighted
    assert agg["achieved_occupancy_pct"] == pytest.approx(30.0)


def test_not_a_table() -> None:
    with pytest.raises(ConfigError, match="no CSV table"):
        parse_ncu_csv("==ERROR== the profiler failed")
