"""`benchmarks/recompute_profile_work.py` rewrites stored work features with today's formulas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.scripts import load_script
from wattmoe.cost_model.base import OpShape
from wattmoe.cost_model.work import op_work
from wattmoe.provenance import write_json_atomic

SCRIPT = "benchmarks/recompute_profile_work.py"
SHAPE = {"hidden": 64, "inner": 128, "form": "swiglu", "num_experts": 8, "top_k": 2}


def _point(op: str, tokens: int, flops: float, byts: float) -> dict[str, Any]:
    return {"op": op, "device": "cpu", "dtype": "bf16", "shape": dict(SHAPE), "tokens": tokens,
            "preset": "tiny", "latency_s": 1e-3, "latency_p10_s": 1e-3, "latency_p90_s": 1e-3,
            "latency_iqr_s": 0.0, "reps": 3, "energy_j": 0.5, "source": "estimated",
            "flops": flops, "bytes_moved": byts}


def _profile(*points: dict[str, Any]) -> dict[str, Any]:
    """A profile `wattmoe cost` loads (format, schema version, provenance, devices)."""
    from wattmoe.cost_model.base import FORMAT, SCHEMA_VERSION

    return {"format": FORMAT, "schema_version": SCHEMA_VERSION,
            "provenance": {"machine": {}, "commit": "abc", "command": "wattmoe profile"},
            "devices": {"cpu": {"device": "cpu", "name": "cpu", "source": "estimated",
                                "counter_period_s": None, "min_window_s": 0.1}},
            "points": list(points)}


def test_recompute_rewrites_only_the_named_ops(tmp_path: Path, capsys) -> None:
    mod = load_script(SCRIPT)
    stale = _point("moe_layer_int4:grouped", 4, 1.0, 2.0)
    other = _point("moe_layer:loop", 4, 1.0, 2.0)
    recorded = _point("moe_layer_int4:loop", 4, 1.0, 2.0)
    recorded["shape"]["int4_group"] = 32  # as the profiler writes int4 points since session 17
    p = tmp_path / "profile.json"
    write_json_atomic(p, _profile(stale, other, recorded))
    assert mod.main(["--profile", str(p), "--ops", "moe_layer_int4:", "--what", "fix"]) == 0
    out = json.loads(p.read_text())
    # a point that records no group was measured with the default of then, the largest power
    # of two <= 128 dividing both widths (64 for tiny; today's default is 32): its work is
    # recomputed with its own group, not today's
    want = op_work("moe_layer_int4:grouped", 4, OpShape(**SHAPE, int4_group=64), "bf16")
    assert want != op_work("moe_layer_int4:grouped", 4, OpShape(**SHAPE), "bf16")
    assert (out["points"][0]["flops"], out["points"][0]["bytes_moved"]) == want
    assert (out["points"][2]["flops"], out["points"][2]["bytes_moved"]) == op_work(
        "moe_layer_int4:loop", 4, OpShape(**SHAPE), "bf16")  # 32, the default
    assert out["points"][1] == other  # not named: left as stored
    assert out["points"][0]["energy_j"] == 0.5  # measurements untouched
    assert out["points"][0]["shape"] == SHAPE  # the stored shape too
    ref = out["provenance"]["refreshes"][-1]
    assert ref["what"] == "fix" and ref["points_changed"] == 2 and "commit" in ref
    assert "2 points rewritten" in capsys.readouterr().out
    from wattmoe.cost_model.database import load_profile

    assert load_profile(p).points[0].bytes_moved == want[1]  # still a profile


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(provenance=[]), "provenance"),
    (lambda d: d["provenance"].update(refreshes="x"), "refreshes is not a list"),
    (lambda d: d.pop("format"), "not a wattmoe profile"),
    # refused by the profile loader itself now (parse_profile), before any work formula
    (lambda d: d["points"][0].update(tokens=-4), "point 0: tokens must be >= 1, got -4"),
    (lambda d: d["points"][0].update(tokens="4"), "tokens"),
    (lambda d: d["points"][0].update(dtype="int8"), "point 0 (moe_layer_int4:loop): unknown dtype"),
    (lambda d: d["points"][0]["shape"].update(hidden=0), "hidden"),
])
def test_recompute_bad_profile_is_one_error(tmp_path: Path, capsys, change, message) -> None:
    mod = load_script(SCRIPT)
    raw = _profile(_point("moe_layer_int4:loop", 4, 1.0, 2.0))
    change(raw)
    p = tmp_path / "profile.json"
    p.write_text(json.dumps(raw))
    before = p.read_text()
    assert mod.main(["--profile", str(p), "--ops", "moe_layer_int4:", "--what", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recompute_profile_work: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert p.read_text() == before  # nothing written


def test_recompute_bad_input_is_one_error(tmp_path: Path, capsys) -> None:
    mod = load_script(SCRIPT)
    p = tmp_path / "profile.json"
    write_json_atomic(p, _profile(_point("moe_layer:loop", 4, 1.0, 2.0)))
    assert mod.main(["--profile", str(p), "--ops", "expert_int4", "--what", "x"]) == 2
    assert "no points of expert_int4" in capsys.readouterr().err
    assert mod.main(["--profile", str(p), "--ops", ",", "--what", "x"]) == 2
    assert "--ops names no op prefix" in capsys.readouterr().err
    p.write_text("{not json")
    assert mod.main(["--profile", str(p), "--ops", "expert", "--what", "x"]) == 2
    assert capsys.readouterr().err.startswith("recompute_profile_work: ")
    assert mod.main(["--profile", str(tmp_path / "missing.json"), "--ops", "x",
                     "--what", "x"]) == 2
    assert "cannot read the profile" in capsys.readouterr().err
