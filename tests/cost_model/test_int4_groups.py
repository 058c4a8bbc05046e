"""The int4 group size in shapes, stored points and cost queries.

Since session 17 the default group is the pair group where one exists (`tiny`: 32, was 64;
Qwen1.5-MoE: 64, was 128). A point measured with another group keeps it (`OpShape.int4_group`,
'..._g64' in its key), so that a query for the default group predicts from it instead of
reading it as its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point, true_cost
from tests.scripts import load_script
from wattmoe.cost_model import CostModelError, KernelCostModel, OpShape
from wattmoe.cost_model.base import ProfilePoint, key_names_group, stored_shape

PROFILES = Path(__file__).resolve().parents[2] / "data" / "profiles"
TINY_OLD = OpShape(64, 128, int4_group=64)  # tiny's expert as quantized before session 17


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_a_shape_names_its_group_only_where_it_is_not_the_default() -> None:
    assert OpShape(64, 128, int4_group=32) == OpShape(64, 128)  # 32: tiny's default
    assert OpShape(64, 128).key == "h64_f128_swiglu_e1_k1"
    assert TINY_OLD.key == "h64_f128_swiglu_e1_k1_g64" and OpShape(64, 128) != TINY_OLD
    assert OpShape.from_key(TINY_OLD.key) == TINY_OLD
    assert OpShape.from_key("h64_f128_swiglu_g32") == OpShape(64, 128)
    assert key_names_group(TINY_OLD.key) and not key_names_group("h64_f128_swiglu_e1_k1")
    # the group names a shape key as `resolve_shape` tells one ('h' and '_f'): not 'h64_g64'
    assert not key_names_group("h64_g64") and not key_names_group(64)
    # only int4 ops depend on the group
    assert TINY_OLD.for_op("expert_int4") == TINY_OLD
    assert TINY_OLD.for_op("expert") == OpShape(64, 128)
    layer = OpShape(64, 128, "swiglu", 8, 2, int4_group=64)
    assert layer.for_op("moe_layer_int4:fused") == layer
    assert layer.for_op("moe_layer:fused") == OpShape(64, 128, "swiglu", 8, 2)
    assert layer.for_op("router_gate") == OpShape(64, 128, "swiglu", 8, 1)
    for bad in (48, 3, 0, 256, True):
        with pytest.raises(CostModelError, match="int4_group must be an even number dividing"):
            OpShape(64, 128, int4_group=bad)


def test_points_record_their_group_and_older_points_keep_the_old_default() -> None:
    p = synthetic_point("expert_int4", 4, OpShape(64, 128), device="cpu")
    d = p.to_dict()
    assert d["shape"]["int4_group"] == 32  # recorded even where it is the default
    assert ProfilePoint.from_dict(d).shape == OpShape(64, 128)
    assert "int4_group" not in synthetic_point("expert", 4, OpShape(64, 128)).to_dict()["shape"]
    # a point written before session 17 records no group: it was measured with the largest
    # power of two <= 128 dividing both widths (64 for tiny), and is read so
    del d["shape"]["int4_group"]
    assert ProfilePoint.from_dict(d).shape == TINY_OLD
    assert stored_shape("moe_layer_int4:fused", {"hidden": 2048, "inner": 1408}
                        ) == OpShape(2048, 1408, int4_group=128)  # Qwen1.5-MoE: 64 now
    assert stored_shape("moe_layer_int4:fused", {"hidden": 2048, "inner": 1024}
                        ) == OpShape(2048, 1024)  # OLMoE: 128 then and now
    assert stored_shape("expert", {"hidden": 64, "inner": 128}) == OpShape(64, 128)


def test_a_curve_of_another_group_answers_the_default_only_by_prediction() -> None:
    # was: 'tiny' (groups of 32 now) answered 'profiled' from points measured with 64
    pts = [synthetic_point("expert_int4", n, s, preset=name) for n in TOKENS
           for s, name in ((TINY_OLD, "tiny"), (OpShape(1024, 512), "big"))]
    m = KernelCostModel(synthetic_db(pts))
    old = m.get_cost("expert_int4", 16, "cuda:0", "bf16", shape=TINY_OLD)
    assert old.method == "profiled" and old.source == "measured"
    assert m.get_cost("expert_int4", 16, "cuda:0", "bf16", shape=TINY_OLD.key) == old
    for shape in ("tiny", "h64_f128_swiglu", OpShape(64, 128)):
        new = m.get_cost("expert_int4", 16, "cuda:0", "bf16", shape=shape)
        assert (new.method, new.source) == ("shape-model", "estimated"), shape
        # the fitted models of this exactly linear device carry the group's extra scales
        t, e = true_cost("expert_int4", 16, OpShape(64, 128), "bf16")
        assert rel(new.latency_s, t) < 1e-6 and rel(new.energy_j, e) < 1e-6
        assert new.latency_s > old.latency_s
    lat, _ = m.expert_cost("cuda:0", 16, 64, 128, "swiglu", "int4")
    assert lat == pytest.approx(m.get_cost("expert_int4", 16, "cuda:0", "bf16",
                                           shape=OpShape(64, 128)).latency_s)


def test_layer_steps_of_another_group_are_predicted_for_the_default() -> None:
    layer_old = OpShape(64, 128, "swiglu", 8, 2, int4_group=64)
    pts = [synthetic_point("moe_layer_int4:fused", n, s) for n in TOKENS
           for s in (layer_old, OpShape(1024, 512, "swiglu", 8, 2))]
    m = KernelCostModel(synthetic_db(pts))
    c = m.backend_view("fused").amortized_cost("cuda:0", 16, 64, 128, "swiglu", "int4")
    # 16 rows for each of 8 experts at top-2: a 64-token step with groups of 32, one eighth
    t, e = true_cost("moe_layer_int4:fused", 64, OpShape(64, 128, "swiglu", 8, 2), "bf16")
    assert rel(c.latency_s, t / 8) < 1e-6 and rel(c.energy_j, e / 8) < 1e-6
    t_old, _ = true_cost("moe_layer_int4:fused", 64, layer_old, "bf16")
    assert t_old < t


def test_committed_profiles_measured_tiny_with_groups_of_64() -> None:
    # data/profiles/*.json predate the session-17 default: their tiny int4 points (and the
    # CPU profile's Mixtral@0.0625, 128 then, 64 now) were measured with the old groups; the
    # H200's tiny int4 layer points were measured again with the default in session 18 (run
    # 123), beside the old ones
    cpu = KernelCostModel.load(PROFILES / "cpu.json")
    assert sorted(k[3] for k in cpu.curves if k[0] == "expert_int4" and k[2] == "bf16") == [
        "h256_f896_swiglu_e1_k1_g128", "h512_f256_swiglu_e1_k1", "h64_f128_swiglu_e1_k1_g64"]
    assert cpu.get_cost("expert_int4", 256, "cpu", "bf16", shape="tiny").method == "shape-model"
    assert cpu.get_cost("expert_int4", 256, "cpu", "bf16",
                        shape="h64_f128_swiglu_e1_k1_g64").method.startswith("profiled")
    assert cpu.get_cost("expert_int4", 256, "cpu", "bf16",
                        shape="olmoe-1b-7b@0.25").method.startswith("profiled")
    h200 = KernelCostModel.load(PROFILES / "h200.json")
    for op in ("moe_layer_int4:fused", "moe_layer_int4:grouped"):
        for shape in ("tiny", "h64_f128_swiglu_e8_k2_g64", "olmoe-1b-7b"):
            assert h200.get_cost(op, 64, "cuda:0", "bf16", shape=shape).method.startswith(
                "profiled"), (op, shape)
        # the two groups are two measurements, not one answer for both
        assert (h200.get_cost(op, 64, "cuda:0", "bf16", shape="tiny").energy_j
                != h200.get_cost(op, 64, "cuda:0", "bf16",
                                 shape="h64_f128_swiglu_e8_k2_g64").energy_j)


def test_merge_replaces_a_point_of_the_same_group_only(tmp_path: Path) -> None:
    mod = load_script("benchmarks/merge_profile_refresh.py")

    def point(hidden: int, inner: int, latency: float, group: int | None = None) -> dict:
        shape = {"hidden": hidden, "inner": inner, "form": "swiglu", "num_experts": 8,
                 "top_k": 2}
        if group is not None:
            shape["int4_group"] = group
        return {"op": "moe_layer_int4:fused", "preset": "p", "tokens": 1, "shape": shape,
                "latency_s": latency}

    # OLMoE-like widths: 128 then and now, so the refresh (recording 128) replaces the point;
    # tiny: 64 then, 32 now, so the refresh (32) is another scenario
    profile = {"points": [point(2048, 1024, 1.0), point(64, 128, 2.0)],
               "provenance": {"machine": {"gpu": "x"}}}
    refresh = {"points": [point(2048, 1024, 0.5, 128), point(64, 128, 0.25, 32)],
               "provenance": {"machine": {"gpu": "x"}, "commit": "abc", "command": "c"}}
    assert mod.merge(profile, refresh, ["moe_layer_int4:"], what="w", note="n") == (1, 1)
    assert sorted(p["latency_s"] for p in profile["points"]) == [0.25, 0.5, 2.0]
    json.dumps(profile)  # still plain JSON


def test_cost_list_names_the_group_of_a_curve_that_is_not_the_default(capsys) -> None:
    from wattmoe.cli import main

    assert main(["cost", "--profile", str(PROFILES / "cpu.json"), "--list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny (int4 groups of 64)" in out and "olmoe-1b-7b@0.25 (int4" not in out
