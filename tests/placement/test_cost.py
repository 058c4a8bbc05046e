from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.placement.conftest import SHAPE, LinearCost, two_device_cluster
from wattmoe.placement import (
    AliasedCostProvider,
    AnalyticCostProvider,
    ChainCostProvider,
    ExpertCostProvider,
    ExpertShape,
    InfeasibleError,
    PlacementError,
    RooflineDevice,
    build_cost_graph,
    cluster_from_dict,
    load_cluster,
    profile_cost_provider,
    sample_curve,
)
from wattmoe.placement.base import MatrixCopy
from wattmoe.placement.curves import isotonic


def test_providers_satisfy_the_protocol(linear_cost: LinearCost) -> None:
    assert isinstance(AnalyticCostProvider(), ExpertCostProvider)
    assert isinstance(linear_cost, ExpertCostProvider)


def test_analytic_roofline_by_hand() -> None:
    p = AnalyticCostProvider()
    # H200, one token of a 2048 x 1024 SwiGLU expert in bf16: memory-bound on the weights.
    flops = 2 * 3 * 2048 * 1024
    moved = 3 * 2048 * 1024 * 2 + (2 * 2048 + 4 * 1024) * 2
    t, e = p.expert_cost("nvidia-h200", 1, 2048, 1024, "swiglu", "bf16")
    assert t == pytest.approx(8e-6 + moved / 4.3e12)
    assert e == pytest.approx(100.0 * t + flops * 0.65e-12 + moved * 60e-12)
    # many tokens: compute-bound
    t, _ = p.expert_cost("nvidia-h200", 65536, 2048, 1024, "swiglu", "bf16")
    assert t == pytest.approx(8e-6 + 65536 * flops / 7.9e14, rel=1e-9)
    assert p.expert_cost("cpu-16core", 0, 2048, 1024, "swiglu", "bf16") == (0.0, 0.0)
    with pytest.raises(PlacementError, match="no device 'tpu'"):
        p.expert_cost("tpu", 1, 2048, 1024, "swiglu", "bf16")


def test_power_cap_stretches_time() -> None:
    dev = RooflineDevice("hot", peak_flops=1e15, memory_bandwidth_bytes_per_s=1e13,
                         idle_power_w=50, max_power_w=60, energy_j_per_flop=1e-11,
                         energy_j_per_byte=0.0, overhead_s=0.0)
    p = AnalyticCostProvider({"hot": dev})
    t, e = p.expert_cost("hot", 1000, 256, 256, "relu", "bf16")
    dynamic = 2 * 1000 * 2 * 256 * 256 * 1e-11
    assert t == pytest.approx(dynamic / 10.0)  # 10 W of headroom
    assert (e - 50 * t) / t == pytest.approx(10.0)


def test_curve_interpolation(linear_cost: LinearCost) -> None:
    c = sample_curve(linear_cost, "slow", SHAPE, max_tokens=100)
    t, d = c(np.array([0.0, 0.5, 1.0, 2.5, 100.0, 300.0]))
    np.testing.assert_allclose(t, [0, 0.5 * 1.1e-3, 1.1e-3, 1e-3 + 2.5e-4, 1e-3 + 1e-2,
                                   1e-3 + 3e-2])
    np.testing.assert_allclose(d, [0, 1e-3, 2e-3, 5e-3, 0.2, 0.6])
    assert c.idle_power_w == 5.0


def test_power_budget_on_curves(linear_cost: LinearCost) -> None:
    c = sample_curve(linear_cost, "slow", SHAPE, max_tokens=100, power_budget_w=6.0)
    t, _ = c(np.array([100.0]))
    assert t[0] == pytest.approx(0.2 / 1.0)  # 0.2 J of dynamic energy at 1 W of headroom
    with pytest.raises(InfeasibleError, match="at or below its idle power 5 W"):
        sample_curve(linear_cost, "slow", SHAPE, max_tokens=10, power_budget_w=4.0)


def test_a_budget_below_idle_names_the_clusters_device(linear_cost: LinearCost) -> None:
    # the curve is per cost device: the message named 'slow', not which device of the spec
    spec = {"name": "three", "devices": [
        {"name": "gpu0", "kind": "gpu", "cost_device": "fast", "memory_bytes": 1e12},
        {"name": "cpu0", "kind": "cpu", "cost_device": "slow", "memory_bytes": 1e12},
        {"name": "cpu1", "kind": "cpu", "cost_device": "slow", "memory_bytes": 1e12,
         "power_budget_w": 4.0}],
        "links": [{"a": "gpu0", "b": n, "bandwidth_bytes_per_s": 1e30, "energy_j_per_byte": 0.0,
                   "latency_s": 0.0} for n in ("cpu0", "cpu1")]}
    with pytest.raises(InfeasibleError, match=r"^device 'cpu1': power budget 4 W of a slow "
                       "device is at or below its idle power 5 W"):
        build_cost_graph(cluster_from_dict(spec), linear_cost, SHAPE, 10)


def test_isotonic_fit() -> None:
    np.testing.assert_allclose(isotonic(np.array([1.0, 3.0, 2.0, 4.0])), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(isotonic(np.array([0.0, 5.0, 1.0, 1.0, 6.0])),
                               [0, 7 / 3, 7 / 3, 7 / 3, 6])


def test_bad_provider_output_is_rejected() -> None:
    class Broken(LinearCost):
        def expert_cost(self, *a, **k):
            return float("nan"), 1.0

    with pytest.raises(PlacementError, match="must be finite"):
        sample_curve(Broken({"x": (1, 1, 1, 1)}), "x", SHAPE, max_tokens=4)


def test_chain_and_alias(linear_cost: LinearCost) -> None:
    aliased = AliasedCostProvider(linear_cost, {"nvidia-h200": "fast"}, label="profile p.json")
    chain = ChainCostProvider([aliased, AnalyticCostProvider()])
    assert chain.idle_power_w("nvidia-h200") == 10.0
    assert chain.expert_cost("nvidia-h200", 2, 1, 1, "swiglu", "bf16") == \
        linear_cost.expert_cost("fast", 2, 1, 1, "swiglu", "bf16")
    assert chain.idle_power_w("cpu-16core") == 45.0  # the analytic fallback
    assert chain.describe("nvidia-h200") == "profile p.json: fast as nvidia-h200"
    assert chain.describe("cpu-16core").startswith("analytic roofline (estimate")
    with pytest.raises(PlacementError, match="no cost provider knows device 'tpu'"):
        chain.idle_power_w("tpu")


def test_profile_provider_names_devices_by_hardware(linear_cost: LinearCost) -> None:
    class Info:
        name = "NVIDIA H200"

    class FakeProfile(LinearCost):
        db = type("Db", (), {"devices": {"fast": Info()}})()

        def devices(self) -> list[str]:
            return ["fast"]

    chain = profile_cost_provider(FakeProfile(linear_cost.table), label="p")
    assert chain.idle_power_w("nvidia-h200") == 10.0
    assert chain.idle_power_w("cpu-16core") == 45.0


def test_fused_int4_copy_by_hand() -> None:
    # OLMoE (H 2048, F 1024, groups of 128): the fused kernels' copy is the codes again as
    # fragment words and the scales again as pair words, for each of the three matrices
    olmoe = ExpertShape(2048, 1024, "swiglu", "int4")
    codes, scales = 3 * 2048 * 1024 // 2, 3 * 2048 * (1024 // 128) * 2
    assert olmoe.weight_bytes == codes + scales == 3_244_032
    assert olmoe.fused_copy_bytes == codes + scales
    # Qwen1.5-MoE: groups of 64 since session 17, whose halves of the down rows (K = F =
    # 1408: 704 columns) are whole: words and pairs for all three matrices, the copy equal
    # to the weights (with 128, 5.5 groups per half, the down rows had no pairs: 4_415_488
    # bytes of copy against 4_460_544 of weights)
    qwen = ExpertShape(2048, 1408, "swiglu", "int4")
    codes, scales = 3 * 2048 * 1408 // 2, 2 * 1408 * (2048 // 64) * 2 + 2048 * (1408 // 64) * 2
    assert qwen.weight_bytes == codes + scales == 4_595_712
    assert qwen.fused_copy_bytes == codes + scales
    # relu: two matrices (groups of 32: up rows K = 64, halves of 32 columns, whole groups)
    assert ExpertShape(64, 128, "relu", "int4").fused_copy_bytes == (
        128 * 64 // 2 + 128 * (64 // 32) * 2 + 64 * 128 // 2 + 64 * (128 // 32) * 2)
    # gate and up rows of 24 packed bytes (K = 48) are read as stored; so is down (K = 128):
    # its groups of 16 columns cap the K step at 16 packed bytes, half a fragment block
    assert ExpertShape(48, 128, "swiglu", "int4").fused_copy_bytes == 0
    # groups of 32 (H = 96): gate and up (K = 96, 48 packed bytes) are read as stored; down
    # (K = 128, 64 packed bytes) gets words and pairs
    assert ExpertShape(96, 128, "swiglu", "int4").fused_copy_bytes == (
        96 * 128 // 2 + 96 * (128 // 32) * 2)
    assert ExpertShape(2048, 1024, "swiglu", "bf16").fused_copy_bytes == 0


def test_fused_and_tiles_copies_are_sums_over_one_per_matrix_table() -> None:
    # by hand: OLMoE (groups of 128), every matrix copied and read in tile order, so codes
    # in tile order leave a copy of the scales only; (64, 96): gate/up copied (K = 64) but
    # its up rows at F = 96 fit no tile, down read as stored (K = 96: 48 packed bytes)
    olmoe = ExpertShape(2048, 1024, "swiglu", "int4")
    assert olmoe.fused_copy_matrices() == (
        MatrixCopy(2 * 1024, 2048, 2 * 1024 * 2048 // 2, 2 * 1024 * (2048 // 128) * 2, (128, 16)),
        MatrixCopy(2048, 1024, 2048 * 1024 // 2, 2048 * (1024 // 128) * 2, (128, 16)))
    assert olmoe.tiles_copy_bytes() == 2 * 1024 * 16 * 2 + 2048 * 8 * 2
    odd = ExpertShape(64, 96, "swiglu", "int4")
    assert odd.fused_copy_matrices() == (MatrixCopy(192, 64, 192 * 32, 192 * 2 * 2, None),
                                         MatrixCopy(64, 96, 0, 0, None))
    assert odd.fused_copy_bytes == odd.tiles_copy_bytes() == 192 * 32 + 192 * 2 * 2
    assert ExpertShape(2048, 1024, "swiglu", "bf16").fused_copy_matrices() == ()
    # over many shapes: both figures are the table's sums, and they differ by exactly the
    # codes of the matrices the kernels read in tile order
    for hidden in range(32, 1025, 96):
        for inner in (64, 96, 128, 160, 704, 1024, 1408):
            for form in ("swiglu", "relu"):
                for dtype in ("int4", "bf16"):
                    shape = ExpertShape(hidden, inner, form, dtype)
                    table = shape.fused_copy_matrices()
                    assert len(table) == (2 if dtype == "int4" else 0)
                    fused, tiles = shape.fused_copy_bytes, shape.tiles_copy_bytes()
                    assert fused == sum(m.codes_bytes + m.scales_bytes for m in table)
                    assert tiles == sum(m.scales_bytes + m.codes_bytes * (m.tiles is None)
                                        for m in table)
                    assert fused - tiles == sum(m.codes_bytes for m in table if m.tiles)
                    assert all(m.codes_bytes == m.rows * m.k // 2 for m in table if m.tiles)
                    assert shape.replica_bytes("gpu", "fused", "tiles") == (
                        shape.weight_bytes + tiles)


def test_replica_bytes_count_the_copy_only_for_int4_on_a_fused_gpu() -> None:
    int4, bf16 = ExpertShape(2048, 1024, dtype="int4"), ExpertShape(2048, 1024)
    w = int4.weight_bytes
    assert int4.replica_bytes("gpu", "fused") == int4.replica_bytes("gpu", "fused_graph") == 2 * w
    assert int4.replica_bytes("cpu", "fused") == w
    assert [int4.replica_bytes("gpu", b) for b in (None, "loop", "grouped")] == [w] * 3
    assert bf16.replica_bytes("gpu", "fused") == bf16.weight_bytes


def test_replica_bytes_of_auto_on_a_gpu_count_the_fused_copy() -> None:
    # was: the weights alone (auto "may pick another backend"); on a GPU auto's calibration
    # runs fused on the stack, whose copy stays in its kernel cache, and its steps of <= 512
    # tokens run the fused kernels (every moe_layer_int4:auto point of the H200 profile did):
    # `place --dtype int4 --backend auto` counts the copy as `fused` does
    int4, bf16 = ExpertShape(2048, 1024, dtype="int4"), ExpertShape(2048, 1024)
    assert int4.replica_bytes("gpu", "auto") == int4.replica_bytes("gpu", "fused") == (
        2 * int4.weight_bytes)
    assert int4.replica_bytes("gpu", "auto", "tiles") == int4.replica_bytes("gpu", "fused",
                                                                            "tiles")
    assert int4.replica_bytes("cpu", "auto") == int4.weight_bytes
    assert bf16.replica_bytes("gpu", "auto") == bf16.weight_bytes
    g = build_cost_graph(_int4_pair(5), AnalyticCostProvider(), int4, 100, backend="auto")
    assert list(g.slots) == [2, 5]


def _int4_pair(slots: int):
    """h200-cpu with room for `slots` int4 OLMoE experts by their weights on each device."""
    spec = load_cluster("h200-cpu").to_dict()
    for d in spec["devices"]:
        d["memory_bytes"] = slots * ExpertShape(2048, 1024, dtype="int4").weight_bytes
    return cluster_from_dict(spec)


def test_slots_on_a_fused_gpu_leave_room_for_the_int4_copy() -> None:
    # was: 5 slots on the GPU whatever the backend; the fused kernels' copy doubles an int4
    # replica there, so 2 fit (the CPU, which runs no fused kernels, keeps 5)
    int4 = ExpertShape(2048, 1024, dtype="int4")
    cluster = _int4_pair(5)
    plain = build_cost_graph(cluster, AnalyticCostProvider(), int4, 100)
    assert list(plain.slots) == [5, 5] and plain.backend is None
    assert list(plain.replica_bytes) == [int4.weight_bytes] * 2
    fused = build_cost_graph(cluster, AnalyticCostProvider(), int4, 100, backend="fused")
    assert list(fused.slots) == [2, 5]
    assert list(fused.replica_bytes) == [2 * int4.weight_bytes, int4.weight_bytes]
    assert fused.graph.nodes["gpu0"]["replica_bytes"] == 2 * int4.weight_bytes
    # bf16 through the fused kernels: the weights themselves, no copy
    bf16 = ExpertShape(2048, 1024)
    spec = cluster.to_dict()
    for d in spec["devices"]:
        d["memory_bytes"] = 5 * bf16.weight_bytes
    g = build_cost_graph(cluster_from_dict(spec), AnalyticCostProvider(), bf16, 100,
                         backend="fused")
    assert list(g.slots) == [5, 5]


def test_graph_takes_the_backend_the_provider_prices() -> None:
    # profile_cost_provider(..., backend=...) records it on the chain: the memory follows the
    # backend that prices the costs without saying it twice
    int4 = ExpertShape(2048, 1024, dtype="int4")
    chain = ChainCostProvider([AnalyticCostProvider()], backend="fused")
    g = build_cost_graph(_int4_pair(5), chain, int4, 100)
    assert g.backend == "fused" and list(g.slots) == [2, 5]
    assert build_cost_graph(_int4_pair(5), chain, int4, 100, backend="fused").backend == "fused"
    with pytest.raises(PlacementError, match="backend 'grouped' for the memory of a replica, "
                                             "but the cost provider prices backend 'fused'"):
        build_cost_graph(_int4_pair(5), chain, int4, 100, backend="grouped")


def test_graph_transfer_costs_by_hand() -> None:
    shape = ExpertShape(2048, 1024)
    g = build_cost_graph(load_cluster("h200-cpu"), AnalyticCostProvider(), shape, 1000)
    assert g.device_names == ("gpu0", "cpu0")
    per_token = 2 * 2048 * 2  # there and back, bf16
    np.testing.assert_allclose(g.transfer_energy_j_per_token, [0, per_token * 6e-11])
    np.testing.assert_allclose(g.transfer_time_s_per_token, [0, per_token / 5.5e10])
    np.testing.assert_allclose(g.message_latency_s, [0, 2e-5])
    assert list(g.always_on) == [True, True]
    assert g.slots[0] == int(1.3e11) // shape.weight_bytes
    assert g.graph.nodes["cpu0"]["kind"] == "cpu"
    assert g.graph.edges["gpu0", "cpu0"]["bandwidth_bytes_per_s"] == 5.5e10
    t, e = g.replica_cost(np.array([10.0]))
    kt, ke = AnalyticCostProvider().expert_cost("cpu-16core", 10, 2048, 1024, "swiglu", "bf16")
    assert t[0, 1] == pytest.approx(kt + 10 * per_token / 5.5e10)
    assert e[0, 1] == pytest.approx(ke - 45.0 * kt + 10 * per_token * 6e-11)


def test_multi_hop_paths_take_the_narrowest_link() -> None:
    g = build_cost_graph(load_cluster("8xh200-2node"), AnalyticCostProvider(),
                         ExpertShape(2048, 1024), 100)
    # gpu0's tokens come from 8 homes: itself (free), 3 over NVLink, 4 over the network.
    per_token = 2 * 2048 * 2
    nv = 2 * 8e-12
    ib = 2 * 8e-12 + 1.5e-10
    assert g.transfer_energy_j_per_token[0] == pytest.approx(per_token * (3 * nv + 4 * ib) / 8)
    assert g.message_latency_s[0] == pytest.approx(2 * (3e-6 + 1e-5 + 3e-6))
    bw = per_token * (3 / 4.5e11 + 4 / 4e11) / 8
    assert g.transfer_time_s_per_token[0] == pytest.approx(bw)


def test_power_budget_below_idle_is_infeasible(linear_cost: LinearCost) -> None:
    spec = two_device_cluster().to_dict()
    spec["devices"][1]["power_budget_w"] = 3.0
    with pytest.raises(InfeasibleError, match="power budget 3 W"):
        build_cost_graph(cluster_from_dict(spec), linear_cost, SHAPE, 10)


def _layer_profile():
    """A KernelCostModel with fused layer steps (and their router) of a 64 x 128, 8-expert
    top-2 layer on 'cuda:0', an 'NVIDIA H200', and the expert op on it and on 'cpu'."""
    from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
    from wattmoe.cost_model import KernelCostModel, OpShape

    layer = OpShape(64, 128, "swiglu", 8, 2)
    pts = [synthetic_point(op, n, s) for n in TOKENS for op, s in (
        ("moe_layer:fused", layer), ("router_gate", layer.for_op("router_gate")))]
    pts += [synthetic_point("expert", n, OpShape(64, 128), device=d) for n in TOKENS
            for d in ("cuda:0", "cpu")]
    db = synthetic_db(pts)
    db.devices["cuda:0"].name = "NVIDIA H200"
    return KernelCostModel(db)


def test_profile_provider_with_a_backend_prices_layer_steps() -> None:
    model = _layer_profile()
    view = model.backend_view("fused")
    assert isinstance(view, ExpertCostProvider)
    chain = profile_cost_provider(model, label="p (fused)", backend="fused")
    assert chain.expert_cost("nvidia-h200", 16, 64, 128, "swiglu", "bf16") == \
        view.expert_cost("cuda:0", 16, 64, 128, "swiglu", "bf16")
    assert chain.expert_cost("nvidia-h200", 16, 64, 128, "swiglu", "bf16") != \
        model.expert_cost("cuda:0", 16, 64, 128, "swiglu", "bf16")
    assert chain.describe("nvidia-h200") == "p (fused): cuda:0 as nvidia-h200"
    # 'cpu' has no fused steps: the analytic fallback answers for every other device
    assert chain.describe("cpu-16core").startswith("analytic roofline")
    with pytest.raises(PlacementError, match="no cost provider knows device 'fake-cpu'"):
        chain.idle_power_w("fake-cpu")
    curve = sample_curve(chain, "nvidia-h200", ExpertShape(64, 128), max_tokens=100)
    assert curve.idle_power_w == 80.0 and np.all(np.diff(curve.latency_s) >= 0)


def test_profile_provider_with_an_unprofiled_backend_fails() -> None:
    from wattmoe.cost_model import CostModelError

    with pytest.raises(CostModelError, match="backend 'grouped' was not profiled"):
        profile_cost_provider(_layer_profile(), backend="grouped")


@pytest.mark.parametrize("as_path", [str, Path])
def test_profile_provider_given_a_path_says_to_load_it(as_path: type) -> None:
    # was: AttributeError: 'str' object has no attribute 'devices' (placement reads no files)
    path = as_path("data/profiles/h200.json")
    with pytest.raises(PlacementError, match=r"profile_cost_provider takes a loaded profile, "
                       r"got the path 'data/profiles/h200.json'; load it first: "
                       r"KernelCostModel.load\('data/profiles/h200.json'\) "
                       r"\(wattmoe.cost_model\)"):
        profile_cost_provider(path)


@pytest.mark.parametrize("model", [None, 3, {"devices": []}])
def test_profile_provider_given_something_else_names_it(model: object) -> None:
    with pytest.raises(PlacementError, match=r"profile_cost_provider: model must be a cost "
                       r"model with devices\(\), expert_cost\(\) and idle_power_w\(\) .*got "
                       f"{type(model).__name__}"):
        profile_cost_provider(model)


def test_profile_provider_checks_fallback_and_backend_view(linear_cost: LinearCost) -> None:
    class Profile(LinearCost):
        def devices(self) -> list[str]:
            return ["fast"]

    with pytest.raises(PlacementError, match=r"fallback must be a cost provider with "
                       r"expert_cost\(\) and idle_power_w\(\), got str"):
        profile_cost_provider(Profile(linear_cost.table), fallback="analytic")
    # was: AttributeError: 'Profile' object has no attribute 'backend_view'
    with pytest.raises(PlacementError, match=r"backend 'fused' needs a profile with "
                       r"backend_view\(\) \(a KernelCostModel\), got Profile"):
        profile_cost_provider(Profile(linear_cost.table), backend="fused")


@pytest.mark.parametrize(("hidden", "inner", "form"), [
    (2048, 1024, "swiglu"),   # OLMoE: groups of 128
    (2880, 2880, "swiglu"),   # groups of 64
    (96, 200, "relu"),        # groups of 8: the scales are a third of the bytes
])
def test_int4_expert_memory_counts_its_scales(hidden: int, inner: int, form: str) -> None:
    # was: half a byte per weight, the codes alone; the fp16 scale per group (3% of the codes
    # at groups of 128, 50% at 8) was left out, so a GPU the placement filled to its last slot
    # could not hold the experts it was given
    from wattmoe.moe import Expert, int4_group_size, quantize_expert

    stored = quantize_expert(Expert(hidden, inner, form),
                             int4_group_size(hidden, inner)).weight_bytes()
    assert ExpertShape(hidden, inner, form, "int4").weight_bytes == stored
