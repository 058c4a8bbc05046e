"""benchmarks/gpu/floor_probe.py: the bounds it derives from measured energies (no GPU)."""

from __future__ import annotations

import json
import math

import pytest

from tests.scripts import load_script

FLOOR = "benchmarks/gpu/floor_probe.py"


def _rows(shape: str, mj: dict[str, float]) -> list[dict[str, object]]:
    return [{"shape": shape, "tokens": 512, "variant": v, "energy_mj": e} for v, e in mj.items()]


def _layer(shape: str, mj: dict[str, float], tokens: int = 512) -> list[dict[str, object]]:
    return [{"shape": shape, "tokens": tokens, "backend": b, "uj_per_token": e * 1e3 / tokens}
            for b, e in mj.items()]


def test_bounds_use_the_captured_steps_and_the_larger_floor() -> None:
    fp = load_script(FLOOR)
    rows = _rows("s", {
        "stream bf16 weight bytes": 120.0, "stream int4 weight bytes": 35.0,
        "bmm (cuBLAS), balanced, no routing": 150.0,
        "bmm (cuBLAS), weights from L2 (one expert)": 60.0,
        "fused bf16 experts, random routing": 160.0, "fused int4 experts, random routing": 130.0,
    })
    layer = _layer("s", {"grouped": 300.0, "grouped+step_graph": 280.0, "fused": 200.0,
                         "fused+step_graph": 180.0, "fused_int4+step_graph": 150.0})
    (b,) = fp.bounds(rows, layer)
    assert b["grouped_step"] == "grouped+step_graph"
    assert b["grouped_step_mj"] == pytest.approx(280.0)
    bf16, int4 = b["bf16"], b["int4"]
    assert bf16["fused_step"] == "fused+step_graph"
    assert bf16["rest_mj"] == pytest.approx(20.0)  # 180 step - 160 experts
    assert bf16["experts_floor_mj"] == pytest.approx(120.0)  # the stream, above the GEMMs
    assert bf16["ratio_ceiling"] == pytest.approx(280.0 / 140.0)
    assert bf16["ratio_now"] == pytest.approx(280.0 / 180.0)
    assert bf16["ratio_cublas_bmm"] == pytest.approx(280.0 / 170.0)
    assert int4["rest_mj"] == pytest.approx(20.0)
    assert int4["experts_floor_mj"] == pytest.approx(60.0)  # the GEMMs, above the int4 stream
    assert int4["ratio_ceiling"] == pytest.approx(280.0 / 80.0)
    assert int4["ratio_ceiling_no_rest"] == pytest.approx(280.0 / 60.0)


def test_bounds_fall_back_to_eager_steps_and_leave_missing_ones_nan() -> None:
    fp = load_script(FLOOR)
    rows = _rows("big", {"stream bf16 weight bytes": 1000.0,
                         "bmm (cuBLAS), weights from L2 (one expert)": 500.0,
                         "fused bf16 experts, random routing": 2000.0})
    layer = _layer("big", {"grouped": 5000.0, "fused": 2500.0})
    layer += _layer("other", {"grouped+step_graph": 1.0})  # another shape: ignored
    (b,) = fp.bounds(rows, layer)
    assert b["grouped_step"] == "grouped"
    assert b["bf16"]["fused_step"] == "fused"
    assert b["bf16"]["ratio_ceiling"] == pytest.approx(5000.0 / (1000.0 + 500.0))
    assert math.isnan(b["int4"]["ratio_ceiling"])  # no int4 step in this run


@pytest.mark.parametrize(("payload", "message"), [
    ({"rows": []}, "not a kernels_bench.py result"),
    ({"energy": 5}, "not a kernels_bench.py result"),
    ({"energy": [{"shape": "tiny", "tokens": 8, "backend": "grouped", "uj_per_token": "x"}]},
     "is not a number"),
    ({"energy": [{"shape": "other", "tokens": 8, "backend": "grouped", "uj_per_token": 1.0}]},
     "no layer step of these shapes"),
    (None, "cannot read it"),
])
def test_a_bad_layer_json_is_one_usage_error(payload, message: str, tmp_path, capsys) -> None:
    fp = load_script(FLOOR)
    bad = tmp_path / "k.json"
    if payload is not None:
        bad.write_text(json.dumps(payload))
    with pytest.raises(SystemExit) as exc:
        fp.main(["--device", "cpu", "--shapes", "tiny", "--tokens", "8", "--layer-json", str(bad),
                 "--out", str(tmp_path / "f.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "f.json").exists()


@pytest.mark.parametrize("flag, value", [("--tokens", "5x"), ("--tokens", "0"),
                                         ("--tokens", "3"),  # 3 x k=2 is no multiple of 8
                                         ("--window", "0"), ("--window", "inf"),
                                         ("--shapes", "nope"), ("--device", "foo")])
def test_bad_arguments_are_usage_errors(flag: str, value: str, tmp_path, capsys) -> None:
    fp = load_script(FLOOR)
    with pytest.raises(SystemExit) as exc:
        fp.main(["--device", "cpu", "--shapes", "tiny", flag, value,
                 "--out", str(tmp_path / "f.json")])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "f.json").exists()


def test_bounds_never_set_a_captured_step_against_an_eager_one() -> None:
    fp = load_script(FLOOR)
    rows = _rows("s", {"stream bf16 weight bytes": 120.0,
                       "bmm (cuBLAS), weights from L2 (one expert)": 60.0,
                       "fused bf16 experts, random routing": 160.0})
    # the grouped step captured, the fused one only eager: both eager
    layer = _layer("s", {"grouped+step_graph": 280.0, "grouped": 400.0, "fused": 200.0})
    (b,) = fp.bounds(rows, layer)
    assert (b["bf16"]["grouped_step"], b["bf16"]["fused_step"]) == ("grouped", "fused")
    assert b["bf16"]["ratio_now"] == pytest.approx(400.0 / 200.0)


@pytest.mark.parametrize("missing", ["stream bf16 weight bytes",
                                     "bmm (cuBLAS), weights from L2 (one expert)"])
def test_a_missing_floor_part_leaves_the_floor_nan(missing: str) -> None:
    fp = load_script(FLOOR)
    mj = {"stream bf16 weight bytes": 120.0, "bmm (cuBLAS), weights from L2 (one expert)": 60.0,
          "fused bf16 experts, random routing": 160.0}
    del mj[missing]
    (b,) = fp.bounds(_rows("s", mj), _layer("s", {"grouped+step_graph": 280.0,
                                                   "fused+step_graph": 180.0}))
    assert math.isnan(b["bf16"]["experts_floor_mj"])
    assert math.isnan(b["bf16"]["ratio_ceiling"])


def test_zero_joules_give_nan_ratios_not_a_crash() -> None:
    fp = load_script(FLOOR)  # e.g. rows of the CPU smoke test (0 J) against a GPU run's steps
    rows = _rows("s", {"stream bf16 weight bytes": 0.0,
                       "bmm (cuBLAS), weights from L2 (one expert)": 0.0,
                       "fused bf16 experts, random routing": 0.0})
    (b,) = fp.bounds(rows, _layer("s", {"grouped+step_graph": 280.0, "fused+step_graph": 180.0}))
    assert math.isnan(b["bf16"]["ratio_ceiling_no_rest"])
