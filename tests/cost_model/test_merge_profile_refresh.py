"""`benchmarks/merge_profile_refresh.py` replaces an op's points and keeps their provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script

SCRIPT = "benchmarks/merge_profile_refresh.py"


def _point(op: str, tokens: int, latency: float) -> dict[str, object]:
    return {"op": op, "preset": "tiny", "tokens": tokens, "latency_s": latency}


def _refresh(points: list[dict[str, object]]) -> dict[str, object]:
    return {"points": points, "sweep": {"runs": [{"ops": ["moe_layer:fused"]}]},
            "provenance": {"machine": {"gpu": "x"}, "commit": "abc", "command": "wattmoe profile"}}


def test_merge_replaces_only_the_refreshed_ops(tmp_path: Path) -> None:
    mod = load_script(SCRIPT)
    profile = {"points": [_point("expert", 1, 1.0), _point("moe_layer:fused", 1, 2.0),
                          _point("moe_layer:fused_graph", 1, 3.0)],
               "sweep": {"runs": [{}]}, "provenance": {"refreshes": [], "machine": {"gpu": "x"}}}
    refresh = _refresh([_point("moe_layer:fused", 1, 0.5), _point("moe_layer:fused_graph", 1, 0.25),
                        _point("expert", 1, 9.0)])
    p, r = tmp_path / "profile.json", tmp_path / "refresh.json"
    p.write_text(json.dumps(profile))
    r.write_text(json.dumps(refresh))
    assert mod.main(["--profile", str(p), "--refresh", str(r), "--ops", "moe_layer:fused",
                     "--what", "refresh 3", "--note", "why"]) == 0
    out = json.loads(p.read_text())
    lat = {pt["op"]: pt["latency_s"] for pt in out["points"]}
    # the refresh's expert point is not taken: only the named ops are replaced
    assert lat == {"expert": 1.0, "moe_layer:fused": 0.5, "moe_layer:fused_graph": 0.25}
    assert out["sweep"]["runs"][-1] == {"ops": ["moe_layer:fused"], "note": "why"}
    assert out["provenance"]["refreshes"] == [
        {"machine": {"gpu": "x"}, "commit": "abc", "command": "wattmoe profile",
         "what": "refresh 3"}]


def test_merge_keeps_scenarios_the_refresh_did_not_measure(tmp_path: Path) -> None:
    mod = load_script(SCRIPT)
    profile = {"points": [_point("moe_layer:fused", 1, 2.0), _point("moe_layer:fused", 64, 3.0),
                          {**_point("moe_layer:fused", 1, 4.0), "preset": "olmoe"}],
               "provenance": {"machine": {"gpu": "x"}}}
    refresh = _refresh([_point("moe_layer:fused", 1, 0.5), _point("moe_layer:fused", 8, 0.7)])
    replaced, added = mod.merge(profile, refresh, ["moe_layer:fused"], what="w", note="n")
    assert (replaced, added) == (1, 1)
    lat = sorted(p["latency_s"] for p in profile["points"])
    assert lat == [0.5, 0.7, 3.0, 4.0]


@pytest.mark.parametrize(("ours", "match"), [("NVIDIA H200", "on x, the profile on NVIDIA H200"),
                                             (None, "on x, the profile on no GPU")])
def test_merge_refuses_a_refresh_from_another_machine(ours: str | None, match: str) -> None:
    mod = load_script(SCRIPT)
    profile = {"points": [], "provenance": {"machine": {"gpu": ours}}}
    with pytest.raises(ValueError, match=match):
        mod.merge(profile, _refresh([_point("moe_layer:fused", 1, 0.5)]), ["moe_layer:fused"],
                  what="w", note="n")


def test_merge_refuses_a_refresh_with_a_scenario_twice() -> None:
    mod = load_script(SCRIPT)
    refresh = _refresh([_point("moe_layer:fused", 1, 0.5), _point("moe_layer:fused", 1, 0.6)])
    with pytest.raises(ValueError, match="more than one point of a scenario"):
        mod.merge({"points": [], "provenance": {"machine": {"gpu": "x"}}}, refresh,
                  ["moe_layer:fused"], what="w", note="n")


def test_merge_without_points_of_the_ops_changes_nothing(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    mod = load_script(SCRIPT)
    p, r = tmp_path / "profile.json", tmp_path / "refresh.json"
    original = json.dumps({"points": [_point("expert", 1, 1.0)]})
    p.write_text(original)
    r.write_text(json.dumps(_refresh([_point("expert", 1, 2.0)])))
    assert mod.main(["--profile", str(p), "--refresh", str(r), "--ops", "moe_layer:fused",
                     "--what", "w", "--note", "n"]) == 2
    assert "no points of moe_layer:fused" in capsys.readouterr().err
    assert p.read_text() == original
