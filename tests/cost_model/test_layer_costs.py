"""LayerBackendCosts: one expert's share of measured layer steps, on synthetic profiles."""

from __future__ import annotations

import pytest

from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
from wattmoe.cost_model import CostModelError, KernelCostModel, LayerBackendCosts, OpShape

LAYER = OpShape(64, 128, "swiglu", num_experts=8, top_k=2)
LAYER_K3 = OpShape(64, 128, "swiglu", num_experts=8, top_k=3)
POWER_W = 200.0


def layer_s(t: float) -> float:
    return 1e-4 + 1e-6 * t


def router_s(t: float) -> float:
    return 2e-5 + 1e-8 * t


def points(op: str, shape: OpShape, latency, dtype: str = "bf16", device: str = "cuda:0"):
    """A curve whose latency is `latency(tokens)` and energy 200 W x latency."""
    return [synthetic_point(op, n, shape, dtype, device, latency_s=latency(n),
                            energy_j=POWER_W * latency(n)) for n in TOKENS]


def model(*curves: list) -> KernelCostModel:
    return KernelCostModel(synthetic_db([p for c in curves for p in c]))


@pytest.fixture
def fused() -> LayerBackendCosts:
    return model(points("moe_layer:fused", LAYER, layer_s),
                 points("router_gate", LAYER.for_op("router_gate"), router_s)).backend_view("fused")


def test_a_profiled_step_over_the_experts(fused: LayerBackendCosts) -> None:
    # 16 rows for each of 8 experts at top-2: a step of 16 * 8 / 2 = 64 tokens (profiled); the
    # step's own routing stays in it (a standalone router_gate curve is not subtracted)
    c = fused.amortized_cost("cuda:0", 16, 64, 128, "swiglu", "bf16")
    want = layer_s(64) / 8
    assert c.latency_s == pytest.approx(want, rel=1e-9)
    assert c.energy_j == pytest.approx(POWER_W * want, rel=1e-9)  # idle power included
    # one expert's share of a measured step is a model's split: an estimate
    assert (c.source, c.profile_source, c.method) == ("estimated", "measured", "layer-amortized")
    assert fused.expert_cost("cuda:0", 16, 64, 128, "swiglu", "bf16") == (c.latency_s, c.energy_j)
    assert fused.expert_cost("cuda:0", 0, 64, 128, "swiglu", "bf16") == (0.0, 0.0)
    assert fused.idle_power_w("cuda:0") == 80.0
    assert fused.devices() == ["cuda:0"]
    assert "backend fused" in fused.describe("cuda:0")
    assert "amortized per expert: estimate" in fused.describe("cuda:0")


def test_a_fractional_step_is_rounded_up_and_scaled_back() -> None:
    m = model(points("moe_layer:fused", LAYER_K3, layer_s),
              points("router_gate", LAYER_K3.for_op("router_gate"), router_s))
    # 4 rows per expert at top-3 of 8: 32 / 3 = 10.67 tokens, run as 11 and scaled by 10.67 / 11
    lat, en = m.backend_view("fused").expert_cost("cuda:0", 4, 64, 128, "swiglu", "bf16")
    step = m.get_cost("moe_layer:fused", 11, "cuda:0", "bf16", shape=LAYER_K3)
    router = m.get_cost("router_gate", 11, "cuda:0", "bf16", shape=LAYER_K3.for_op("router_gate"))
    assert step.method == "interpolated"
    scale = (32 / 3) / 11 / 8
    assert lat == pytest.approx(step.latency_s * scale, rel=1e-12)
    assert en == pytest.approx(step.energy_j * scale, rel=1e-12)
    assert router.latency_s > 0  # profiled, and still not subtracted


def test_int4_uses_the_int4_layer_steps_in_bf16() -> None:
    m = model(points("moe_layer:fused", LAYER, layer_s),
              points("moe_layer_int4:fused", LAYER, lambda t: 0.5 * layer_s(t)),
              points("moe_layer_int4:fused", LAYER, lambda t: 3 * layer_s(t), dtype="fp32"))
    lat, _ = m.backend_view("fused").expert_cost("cuda:0", 16, 64, 128, "swiglu", "int4")
    assert lat == pytest.approx(0.5 * layer_s(64) / 8, rel=1e-9)


def test_the_layer_shape_whose_rows_cover_the_query() -> None:
    m = model(points("moe_layer:fused", LAYER, layer_s),
              points("moe_layer:fused", LAYER_K3, lambda t: 2 * layer_s(t)))
    view = m.backend_view("fused")
    # rows per expert profiled: k2 0.25-256, k3 0.375-384; both cover 16, the first key wins
    lat, _ = view.expert_cost("cuda:0", 16, 64, 128, "swiglu", "bf16")
    assert lat == pytest.approx(layer_s(64) / 8, rel=1e-9)
    # only k3 covers 300 rows: a step of 300 * 8 / 3 = 800 tokens
    lat, _ = view.expert_cost("cuda:0", 300, 64, 128, "swiglu", "bf16")
    step = m.get_cost("moe_layer:fused", 800, "cuda:0", "bf16", shape=LAYER_K3)
    assert lat == pytest.approx(step.latency_s / 8, rel=1e-12)
    # beyond both: the nearest range in log rows (k3's top, 384, is nearer to 1000 than 256)
    lat, _ = view.expert_cost("cuda:0", 999, 64, 128, "swiglu", "bf16")
    step = m.get_cost("moe_layer:fused", 2664, "cuda:0", "bf16", shape=LAYER_K3)
    assert lat == pytest.approx(step.latency_s / 8, rel=1e-12)


def test_devices_are_those_with_the_backend() -> None:
    m = model(points("moe_layer:fused", LAYER, layer_s),
              points("moe_layer:loop", LAYER, layer_s, device="cuda:1"))
    assert m.backend_view("fused").devices() == ["cuda:0"]
    assert m.backend_view("loop").devices() == ["cuda:1"]


@pytest.mark.parametrize(("query", "message"), [
    ({"hidden": 1024}, "moe_layer:fused on cuda:0 (bf16) was not profiled at hidden=1024, "
                       "inner=128, form=swiglu (profiled layer shapes: h64_f128_swiglu_e8_k2)"),
    ({"form": "relu"}, "was not profiled at hidden=64, inner=128, form=relu"),
    ({"dtype": "fp32"}, "moe_layer:fused was not profiled on cuda:0 in 'fp32' (profiled in: bf16)"),
    ({"dtype": "int4"}, "backend 'fused' with int4 experts was not profiled on cuda:0"),
    ({"device": "cuda:3"}, "unknown device 'cuda:3': not in this profile (profiled: cuda:0)"),
    ({"tokens": -1}, "batch size must be >= 0 tokens"),
])
def test_what_was_not_profiled_is_one_clear_error(fused: LayerBackendCosts, query: dict,
                                                   message: str) -> None:
    q = {"device": "cuda:0", "tokens": 16, "hidden": 64, "inner": 128, "form": "swiglu",
         "dtype": "bf16", **query}
    with pytest.raises(CostModelError) as exc:
        fused.expert_cost(q["device"], q["tokens"], q["hidden"], q["inner"], q["form"],
                          q["dtype"])
    assert message in str(exc.value)


def test_an_unknown_backend_names_the_profiled_ones() -> None:
    m = model(points("moe_layer:fused", LAYER, layer_s), points("moe_layer:loop", LAYER, layer_s))
    with pytest.raises(CostModelError, match=r"backend 'grouped' was not profiled: no "
                       r"moe_layer:grouped or moe_layer_int4:grouped points in this profile "
                       r"\(profiled backends: fused, loop\)"):
        m.backend_view("grouped")
    no_layers = KernelCostModel(synthetic_db([synthetic_point("expert", n, OpShape(64, 128))
                                              for n in TOKENS]))
    with pytest.raises(CostModelError, match="profiled backends: none"):
        no_layers.backend_view("fused")
