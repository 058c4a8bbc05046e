"""KernelCostModel on synthetic profiles whose answers are known."""

from __future__ import annotations

import math

import pytest

from tests.cost_model.conftest import (
    E_BYTE,
    E_FLOP,
    P_STATIC,
    RATE,
    SHAPE_A,
    SHAPE_B,
    T0,
    TOKENS,
    synthetic_db,
    synthetic_point,
    true_cost,
)
from wattmoe.cost_model import CostModelError, KernelCostModel, OpShape
from wattmoe.moe import get_preset


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def powerlaw_db(p: float = 0.5, c: float = 1e-4):
    """latency = c * n^p and energy = 200 W * latency: log-log interpolation is exact."""
    pts = []
    for n in TOKENS:
        t = c * n**p
        pts.append(synthetic_point("expert", n, SHAPE_A, latency_s=t, energy_j=200.0 * t))
    return synthetic_db(pts)


def test_profiled_point_is_returned_exactly(linear_db) -> None:
    m = KernelCostModel(linear_db)
    c = m.get_cost("expert", 64, "cuda:0", "bf16", shape=SHAPE_A)
    t, e = true_cost("expert", 64, SHAPE_A, "bf16")
    assert c.method == "profiled"
    assert c.latency_s == pytest.approx(t, rel=1e-12)
    assert c.energy_j == pytest.approx(e, rel=1e-12)
    assert c.avg_power_w == pytest.approx(e / t)
    assert (c.source, c.profile_source) == ("measured", "measured")


@pytest.mark.parametrize("n", [2, 3, 10, 32, 100, 500, 1000])
def test_interpolation_is_exact_for_a_power_law(n: int) -> None:
    m = KernelCostModel(powerlaw_db(p=0.5))
    c = m.get_cost("expert", n, "cuda:0", "bf16")
    assert c.method == "interpolated"
    assert c.latency_s == pytest.approx(1e-4 * n**0.5, rel=1e-9)
    assert c.energy_j == pytest.approx(200.0 * 1e-4 * n**0.5, rel=1e-9)
    assert c.avg_power_w == pytest.approx(200.0, rel=1e-9)


def test_interpolation_is_log_linear_between_neighbours(linear_db) -> None:
    m = KernelCostModel(linear_db)
    lo, hi = (true_cost("expert", n, SHAPE_B, "fp32")[0] for n in (256, 1024))
    c = m.get_cost("expert", 512, "cuda:0", "fp32", shape=SHAPE_B)
    w = (math.log(512) - math.log(256)) / (math.log(1024) - math.log(256))
    assert c.latency_s == pytest.approx(math.exp((1 - w) * math.log(lo) + w * math.log(hi)))


def test_fitted_models_recover_the_true_device(linear_db) -> None:
    m = KernelCostModel(linear_db)
    lat = m.latency_models[("cuda:0", "bf16", "expert")]
    assert lat.t0_s == pytest.approx(T0, rel=1e-6)
    assert lat.flops_per_s == pytest.approx(RATE, rel=1e-6)
    assert lat.error.max_abs_rel < 1e-9
    en = m.energy_models[("cuda:0", "bf16")]
    assert en.static_power_w == pytest.approx(P_STATIC, rel=1e-6)
    assert en.j_per_flop == pytest.approx(E_FLOP, rel=1e-6)
    assert en.j_per_byte == pytest.approx(E_BYTE, rel=1e-6)
    assert en.idle_power_w == 80.0


@pytest.mark.parametrize("n", [2048, 8192, 65536])
def test_extrapolation_beyond_profiled_sizes_follows_the_fitted_model(linear_db, n: int) -> None:
    m = KernelCostModel(linear_db)
    c = m.get_cost("expert", n, "cuda:0", "bf16", shape=SHAPE_A)
    t, e = true_cost("expert", n, SHAPE_A, "bf16")
    assert c.method == "extrapolated"
    assert rel(c.latency_s, t) < 1e-6
    assert rel(c.energy_j, e) < 1e-6


@pytest.mark.parametrize("shape", [OpShape(1024, 1536), OpShape(1024, 256), OpShape(2048, 8192),
                                   OpShape(512, 3000)])
@pytest.mark.parametrize("n", [1, 50, 1024, 4096])
def test_unprofiled_shapes_are_predicted_by_the_shape_model(linear_db, shape, n) -> None:
    m = KernelCostModel(linear_db)
    c = m.get_cost("expert", n, "cuda:0", "bf16", shape=shape)
    t, e = true_cost("expert", n, shape, "bf16")
    assert c.method == "shape-model"
    # exact at profiled and extrapolated batch sizes, and at 50 tokens, between them, where the
    # predicted curve is interpolated along the shape's own model (it used to be 1-3% off)
    assert rel(c.latency_s, t) < 1e-6
    assert rel(c.energy_j, e) < 1e-6


def test_shape_given_as_preset_or_config(linear_db) -> None:
    m = KernelCostModel(linear_db)
    cfg = get_preset("olmoe-1b-7b")  # H=2048, F=1024
    a = m.get_cost("expert", 64, "cuda:0", "bf16", shape="olmoe-1b-7b")
    b = m.get_cost("expert", 64, "cuda:0", "bf16", shape=cfg)
    c = m.get_cost("expert", 64, "cuda:0", "bf16", shape="h2048_f1024_swiglu")
    assert a == b == c
    assert rel(a.latency_s, true_cost("expert", 64, OpShape(2048, 1024), "bf16")[0]) < 1e-6


def test_zero_tokens_cost_nothing(linear_db) -> None:
    c = KernelCostModel(linear_db).get_cost("expert", 0, "cuda:0", "bf16", shape=SHAPE_A)
    assert (c.latency_s, c.energy_j, c.method) == (0.0, 0.0, "empty")


def test_placement_protocol(linear_db) -> None:
    m = KernelCostModel(linear_db)
    lat, en = m.expert_cost("cuda:0", 64, 1024, 512, "swiglu", "bf16")
    assert (lat, en) == pytest.approx(true_cost("expert", 64, SHAPE_A, "bf16"))
    assert m.expert_cost("cuda:0", 0, 1024, 512, "swiglu", "bf16") == (0.0, 0.0)
    assert m.idle_power_w("cuda:0") == 80.0


def test_int4_dtype_uses_the_int4_op() -> None:
    pts = [synthetic_point("expert_int4", n, SHAPE_A) for n in TOKENS]
    m = KernelCostModel(synthetic_db(pts))
    lat, en = m.expert_cost("cuda:0", 16, 1024, 512, "swiglu", "int4")
    assert (lat, en) == pytest.approx(true_cost("expert_int4", 16, SHAPE_A, "bf16"))


def test_fit_report_leave_one_out_is_exact_for_a_power_law() -> None:
    rep = KernelCostModel(powerlaw_db()).fit_report()
    loo = rep.interpolation_loo_latency["cuda:0"]
    assert loo.n == len(TOKENS) - 2
    assert loo.max_abs_rel < 1e-9
    assert rep.interpolation_loo_energy["cuda:0"].max_abs_rel < 1e-9
    assert set(rep.to_dict()) == {"latency", "energy", "interpolation_loo_latency",
                                  "interpolation_loo_energy"}


def test_unmeasurable_energy_falls_back_to_the_energy_model(linear_db) -> None:
    # two shapes keep their energy (one shape alone cannot separate the three coefficients)
    pts = list(linear_db.points) + [synthetic_point("expert", n, OpShape(2048, 1024))
                                    for n in TOKENS]
    for p in pts:  # no window of this curve was measurable
        if (p.shape, p.dtype) == (SHAPE_A, "bf16"):
            p.energy_j = None
    m = KernelCostModel(synthetic_db(pts))
    for n in (64, 5000):  # profiled and extrapolated latencies are exact here
        c = m.get_cost("expert", n, "cuda:0", "bf16", shape=SHAPE_A)
        assert rel(c.energy_j, true_cost("expert", n, SHAPE_A, "bf16")[1]) < 1e-6


def test_one_unmeasurable_point_is_interpolated_from_its_neighbours() -> None:
    db = powerlaw_db()
    next(p for p in db.points if p.tokens == 64).energy_j = None
    c = KernelCostModel(db).get_cost("expert", 64, "cuda:0", "bf16")
    assert c.energy_j == pytest.approx(200.0 * 1e-4 * 64**0.5, rel=1e-9)


# --- bad input: one clear error each --------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"op": "nope"}, "unknown op 'nope'"),
        ({"device": "cuda:7"}, "unknown device 'cuda:7'"),
        ({"dtype": "fp16"}, "dtype 'fp16' was not profiled on cuda:0"),
        ({"op": "router_gate"}, "op 'router_gate' was not profiled on cuda:0"),
        ({"tokens": -1}, "batch size must be >= 0 tokens, got -1"),
        ({"tokens": 2.5}, "batch size must be an integer, got 2.5"),
        ({"tokens": "many"}, "batch size must be an integer, got 'many'"),
        ({"shape": None}, "swiglu_e1_k1): choose one (shape=; `wattmoe cost --shape`)"),
        ({"shape": "not-a-preset"}, "unknown preset 'not-a-preset'"),
    ],
)
def test_bad_queries_raise_one_clear_error(linear_db, kwargs, message) -> None:
    q = {"op": "expert", "tokens": 16, "device": "cuda:0", "dtype": "bf16", "shape": SHAPE_A}
    q.update(kwargs)
    with pytest.raises(CostModelError) as exc:
        KernelCostModel(linear_db).get_cost(q["op"], q["tokens"], q["device"], q["dtype"],
                                            shape=q["shape"])
    assert message in str(exc.value)


def test_unknown_device_for_idle_power(linear_db) -> None:
    with pytest.raises(CostModelError, match="unknown device 'tpu:0'"):
        KernelCostModel(linear_db).idle_power_w("tpu:0")


def test_latency_basis(linear_db) -> None:
    # the window's time per call, on every point of the curve (on the 64-token point alone it
    # would fall below the 16-token point's, and the answer be made monotone)
    for p in linear_db.points:
        if (p.shape, p.dtype) == (SHAPE_A, "bf16"):
            p.window_mean_latency_s = p.latency_s * 0.8
    window = KernelCostModel(linear_db).get_cost("expert", 64, "cuda:0", "bf16", shape=SHAPE_A)
    median = KernelCostModel(linear_db, latency="median").get_cost("expert", 64, "cuda:0", "bf16",
                                                                    shape=SHAPE_A)
    assert window.latency_s == pytest.approx(0.8 * median.latency_s)
    assert window.energy_j == median.energy_j
    assert window.method == median.method == "profiled"
    with pytest.raises(CostModelError, match="latency basis"):
        KernelCostModel(linear_db, latency="mean")


def test_a_profiled_size_without_measured_energy_is_not_called_profiled() -> None:
    import dataclasses

    pts = [synthetic_point("expert", n, SHAPE_A) for n in (1, 4, 16, 64, 256)]
    pts[2] = dataclasses.replace(pts[2], energy_j=None, measurable=False)
    model = KernelCostModel(synthetic_db(pts))
    c = model.get_cost("expert", 16, pts[0].device, pts[0].dtype, shape=SHAPE_A)
    assert c.method == "interpolated"  # the energy comes from the neighbours, not a window
    assert model.get_cost("expert", 64, pts[0].device, pts[0].dtype,
                          shape=SHAPE_A).method == "profiled"


def test_a_curve_of_mixed_sources_never_says_measured_for_an_estimate() -> None:
    # a CPU sweep measured with RAPL, then resumed where RAPL could not be read: the points
    # of the second run are the utilization estimate (was: the curve took its first point's
    # source, and the estimated point at 16 tokens was answered as 'measured', profiled)
    pts = [synthetic_point("expert", n, SHAPE_A, device="cpu") for n in (1, 4, 16, 64, 256)]
    for p in pts[2:]:
        p.source = "estimated"
    m = KernelCostModel(synthetic_db(pts))
    c = m.get_cost("expert", 16, "cpu", "bf16")
    assert (c.source, c.profile_source, c.method) == ("estimated", "estimated", "profiled")
    assert m.get_cost("expert", 100, "cpu", "bf16").profile_source == "estimated"
    assert m.energy_models[("cpu", "bf16")].source == "estimated"
    # one source throughout: kept as it is
    same = KernelCostModel(synthetic_db([synthetic_point("expert", n, SHAPE_A, device="cpu")
                                         for n in (1, 4, 16)]))
    assert same.get_cost("expert", 4, "cpu", "bf16").source == "measured"
