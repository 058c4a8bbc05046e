"""`benchmarks/gpu/plot_kernels.py` draws from the committed H200 results (no GPU needed); a bad
input file is one usage error, a bug while drawing is not reported as one."""

from __future__ import annotations

import json
import math
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


def _bench(**fields: object) -> dict[str, object]:
    row = {"shape": "olmoe-1b-7b", "backend": "fused", "tokens": 64, "uj_per_token": 12.5}
    return {"commit": "abc1234", "machine": {"gpu_nvml": {"name": "H200"}},
            "energy": [row, {**row, "tokens": 512, "uj_per_token": 3.5}], **fields}


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "cannot read a kernels_bench.json"),
    ("[1, 2]", "not a kernels_bench.json (no JSON object)"),
    (json.dumps(_bench(energy=[])), "no energy rows to plot"),
    (json.dumps({k: v for k, v in _bench().items() if k != "commit"}), "KeyError('commit')"),
    (json.dumps(_bench(energy=[{"shape": "s", "backend": "b", "tokens": 1}])),
     "KeyError('uj_per_token')"),
    (json.dumps(_bench(energy=[{"shape": "s", "backend": "b", "tokens": "x",
                                "uj_per_token": 1.0}])), "ValueError"),
    (json.dumps(_bench(machine=[])), "AttributeError"),
])
def test_a_bad_bench_file_is_one_usage_error(
        tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    bench = tmp_path / "kernels_bench.json"
    bench.write_text(text)
    with pytest.raises(SystemExit) as exc:
        load_script(SCRIPT).main(["--bench", str(bench), "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {bench}: " in err and message in err and "Traceback" not in err


def test_a_bad_stream_file_is_one_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    stream = tmp_path / "stream_sm_power.json"
    stream.write_text(json.dumps({"rows": [{"programs": 4, "block": 8192}], "sms": 132,
                                  "idle_w": 120.0}))
    with pytest.raises(SystemExit):
        load_script(SCRIPT).main(["--stream", str(stream), "--out", str(tmp_path)])
    assert "not a stream_sm_power.json with rows to plot (KeyError('read_tb_s'))" in (
        capsys.readouterr().err)


def test_a_null_measurement_is_a_gap_not_an_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    payload = _bench()
    payload["energy"][1]["uj_per_token"] = None  # type: ignore[index]  # NaN, as written
    bench = tmp_path / "kernels_bench.json"
    bench.write_text(json.dumps(payload))
    mod = load_script(SCRIPT)
    first, second = (r.uj_per_token for r in mod.read_bench(bench).rows)
    assert first == 12.5 and math.isnan(second)
    assert mod.main(["--bench", str(bench), "--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("error", [KeyError, TypeError, ValueError])
def test_an_error_while_drawing_is_not_blamed_on_the_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[Exception]) -> None:
    # the errors a results file causes are raised while reading it; the same kinds raised
    # while drawing are bugs and must surface as themselves
    pytest.importorskip("matplotlib")
    bench = tmp_path / "kernels_bench.json"
    bench.write_text(json.dumps(_bench()))
    mod = load_script(SCRIPT)

    def broken(*args: object, **kwargs: object) -> None:
        raise error("a bug in the figure code")

    monkeypatch.setattr(mod.plt, "subplots", broken)
    with pytest.raises(error, match="a bug in the figure code"):
        mod.main(["--bench", str(bench), "--out", str(tmp_path)])


def test_floor_plot_from_committed_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    floor = RESULTS / "run57_final_table" / "k" / "floor.json"
    assert load_script(SCRIPT).main(["--floor", str(floor), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "floors.png").stat().st_size > 10_000


@pytest.mark.parametrize(("payload", "message"), [
    ({"rows": []}, "no rows to plot"),
    ({"rows": [{"shape": "s", "tokens": 512, "variant": "v"}]}, "KeyError('energy_mj')"),
    ({}, "KeyError('rows')"),
])
def test_a_bad_floor_file_is_one_usage_error(tmp_path: Path, payload: dict[str, object],
                                             message: str, capsys) -> None:
    pytest.importorskip("matplotlib")
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as exc:
        load_script(SCRIPT).main(["--floor", str(floor), "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("energies", [(None, 10.0), (10.0, None), (0.0, 0.0)])
def test_floor_plot_draws_null_and_zero_energies(tmp_path: Path, energies) -> None:
    pytest.importorskip("matplotlib")  # null: NaN written by write_json; 0 J: CPU smoke test
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"rows": [
        {"shape": "s", "tokens": 512, "variant": v, "energy_mj": e} for v, e in
        zip(("stream bf16 weight bytes", "grouped bf16 experts, random routing"), energies,
            strict=True)]}))
    assert load_script(SCRIPT).main(["--floor", str(floor), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "floors.png").is_file()
