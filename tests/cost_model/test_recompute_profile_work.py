"""`benchmarks/recompute_profile_work.py` rewrites stored work features with today's formulas."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script
from wattmoe.cost_model.base import OpShape
from wattmoe.cost_model.work import op_work

SCRIPT = "benchmarks/recompute_profile_work.py"
SHAPE = {"hidden": 64, "inner": 128, "num_experts": 8, "top_k": 2}


def _point(op: str, tokens: int, flops: float, byts: float) -> dict[str, object]:
    return {"op": op, "tokens": tokens, "shape": SHAPE, "dtype": "bf16", "flops": flops,
            "bytes_moved": byts, "latency_s": 1e-3, "energy_j": 0.5}


def test_recompute_rewrites_only_the_named_ops(tmp_path: Path, capsys) -> None:
    mod = load_script(SCRIPT)
    stale = _point("moe_layer_int4:grouped", 4, 1.0, 2.0)
    other = _point("moe_layer:loop", 4, 1.0, 2.0)
    p = tmp_path / "profile.json"
    p.write_text(json.dumps({"points": [stale, other], "provenance": {}}))
    assert mod.main(["--profile", str(p), "--ops", "moe_layer_int4:", "--what", "fix"]) == 0
    out = json.loads(p.read_text())
    want = op_work("moe_layer_int4:grouped", 4, OpShape(**SHAPE), "bf16")
    assert (out["points"][0]["flops"], out["points"][0]["bytes_moved"]) == want
    assert out["points"][1] == other  # not named: left as stored
    assert out["points"][0]["energy_j"] == 0.5  # measurements untouched
    ref = out["provenance"]["refreshes"][-1]
    assert ref["what"] == "fix" and ref["points_changed"] == 1 and "commit" in ref
    assert "1 points rewritten" in capsys.readouterr().out


def test_recompute_bad_input_is_one_error(tmp_path: Path, capsys) -> None:
    mod = load_script(SCRIPT)
    p = tmp_path / "profile.json"
    p.write_text(json.dumps({"points": [_point("moe_layer:loop", 4, 1.0, 2.0)]}))
    assert mod.main(["--profile", str(p), "--ops", "expert_int4", "--what", "x"]) == 2
    assert "no points of expert_int4" in capsys.readouterr().err
    p.write_text("{not json")
    assert mod.main(["--profile", str(p), "--ops", "expert", "--what", "x"]) == 2
    assert capsys.readouterr().err.startswith("recompute_profile_work: ")
    assert mod.main(["--profile", str(tmp_path / "missing.json"), "--ops", "x",
                     "--what", "x"]) == 2
    assert "cannot read the profile" in capsys.readouterr().err
