"""`benchmarks/gpu/plot_kernels.py` draws from the committed H200 results (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/gpu/plot_kernels.py"
RESULTS = ROOT / "results" / "h200" / "kernels"


def test_plots_from_committed_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    mod = load_script(SCRIPT)
    bench = RESULTS / "run18_final" / "k" / "kernels_bench.json"
    stream = RESULTS / "run15_retune" / "s" / "stream_sm_power.json"
    assert mod.main(["--bench", str(bench), "--stream", str(stream), "--out", str(tmp_path)]) == 0
    for name in ("energy_per_token.png", "stream_sm_power.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_plot_needs_an_input(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--bench", str(tmp_path / "none.json"), "--out", str(tmp_path)])
