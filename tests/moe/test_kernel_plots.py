"""`benchmarks/gpu/plot_kernels.py` draws from the committed H200 results (no GPU needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "h200" / "kernels"


def _plot_module():
    spec = importlib.util.spec_from_file_location(
        "plot_kernels", ROOT / "benchmarks" / "gpu" / "plot_kernels.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plots_from_committed_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    mod = _plot_module()
    bench = RESULTS / "run18_final" / "k" / "kernels_bench.json"
    stream = RESULTS / "run15_retune" / "s" / "stream_sm_power.json"
    assert mod.main(["--bench", str(bench), "--stream", str(stream), "--out", str(tmp_path)]) == 0
    for name in ("energy_per_token.png", "stream_sm_power.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_plot_needs_an_input(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit):
        _plot_module().main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        _plot_module().main(["--bench", str(tmp_path / "none.json"), "--out", str(tmp_path)])
