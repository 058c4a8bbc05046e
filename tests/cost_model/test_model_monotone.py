"""A step of more tokens is never predicted to cost less: time and energy per call are
non-decreasing in tokens for shapes that were never profiled; profiled points stay as measured.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from tests.cost_model.conftest import (
    SHAPE_A,
    SHAPE_B,
    TOKENS,
    synthetic_db,
    synthetic_point,
    true_cost,
)
from wattmoe.cost_model import KernelCostModel, OpShape
from wattmoe.cost_model.base import layer_op
from wattmoe.cost_model.fit import monotone_log
from wattmoe.moe import resolve_shape

H200 = Path(__file__).resolve().parents[2] / "data" / "profiles" / "h200.json"
#: tokens per step: every count to 256, then spaced in log to past the profiled 8192
GRID = np.unique(np.concatenate([np.arange(1, 257),
                                 np.round(np.geomspace(256, 32768, 120)).astype(int)]))


def falls(values: list[float]) -> list[int]:
    """Indices i where values[i + 1] < values[i], beyond floating-point rounding (a point is
    looked up as exp(log y), its neighbour may be y times a model ratio of exactly 1)."""
    v = np.asarray(values)
    return np.flatnonzero(v[1:] < v[:-1] * (1 - 1e-12)).tolist()


def test_monotone_log_pools_only_what_falls() -> None:
    x = np.array([1.0, 4.0, 2.0, 8.0, float("nan"), 3.0, 16.0])
    got = monotone_log(x)
    # 4, 2 pool to their geometric mean; 8, 3 (the NaN left out) to theirs
    want = [1.0, math.sqrt(8), math.sqrt(8), math.sqrt(24), float("nan"), math.sqrt(24), 16.0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 1.0 and got[-1] == 16.0  # entries alone in their block: bit for bit
    ordered = np.array([0.445, 0.582, 0.6445, 4.70])
    assert monotone_log(ordered).tolist() == ordered.tolist()
    # 0 (no cost known) is left out of the fit and kept
    np.testing.assert_allclose(monotone_log(np.array([3.0, 0.0, 1.0])),
                               [math.sqrt(3), 0.0, math.sqrt(3)], rtol=1e-12)


# --- synthetic: an anchor with host-bound noise ----------------------------------------------


def noisy_db():
    """Two profiled expert shapes on the synthetic device; SHAPE_A's 4-token point measured 2x
    too slow and too costly, as host-bound points are (results/h200/cost_model/README.md)."""
    pts = []
    for s in (SHAPE_A, SHAPE_B):
        for n in TOKENS:
            p = synthetic_point("expert", n, s)
            if (s, n) == (SHAPE_A, 4):
                p = dataclasses.replace(p, latency_s=2 * p.latency_s, energy_j=2 * p.energy_j)
            pts.append(p)
    return synthetic_db(pts)


@pytest.mark.parametrize("shape", [OpShape(1024, 1536), OpShape(1024, 256), OpShape(1024, 768)])
def test_an_unprofiled_shape_does_not_copy_an_anchors_fall(shape: OpShape) -> None:
    m = KernelCostModel(noisy_db())
    costs = [m.get_cost("expert", int(n), "cuda:0", "bf16", shape=shape) for n in GRID]
    assert {c.method for c in costs} == {"shape-model"}
    assert {c.source for c in costs} == {"measured"}
    assert falls([c.latency_s for c in costs]) == []
    assert falls([c.energy_j for c in costs]) == []


def test_the_noisy_measurement_itself_is_kept() -> None:
    db = noisy_db()
    m = KernelCostModel(db)
    p = next(p for p in db.points if (p.shape, p.tokens) == (SHAPE_A, 4))
    c = m.get_cost("expert", 4, "cuda:0", "bf16", shape=SHAPE_A)
    assert c.method == "profiled"
    assert (c.latency_s, c.energy_j) == pytest.approx((p.latency_s, p.energy_j), rel=1e-12)


def test_a_prediction_already_in_order_is_unchanged(linear_db) -> None:
    """On a device that follows the model, the shape model is exact at the profiled batch
    sizes, between them (interpolated along the shape's model) and beyond them: nothing is
    pooled."""
    m = KernelCostModel(linear_db)
    shape = OpShape(1024, 1536)
    for n in (*TOKENS, 2, 50, 100, 500, 4096, 65536):
        c = m.get_cost("expert", n, "cuda:0", "bf16", shape=shape)
        t, e = true_cost("expert", n, shape, "bf16")
        assert c.latency_s == pytest.approx(t, rel=1e-6)
        assert c.energy_j == pytest.approx(e, rel=1e-6)


# --- the committed H200 profile ----------------------------------------------------------------


@pytest.fixture(scope="module")
def h200() -> KernelCostModel:
    return KernelCostModel.load(H200)


def _ops(m: KernelCostModel) -> list[str]:
    return [op for op in m.ops("cuda:0") if layer_op(op) is not None or op.startswith("expert")]


#: shapes the profile does not hold: a custom key, a preset, presets at a scale
UNPROFILED = ("h4096_f6400_swiglu_e16_k2", "mixtral-8x7b", "qwen1.5-moe-a2.7b",
              "olmoe-1b-7b@0.5")


@pytest.mark.parametrize("spec", UNPROFILED)
def test_h200_unprofiled_shapes_cost_more_per_step_with_more_tokens(h200, spec: str) -> None:
    shape = OpShape.from_config(resolve_shape(spec))
    bad = []
    for op in _ops(h200):  # every backend's layer step, bf16 and int4, and the lone expert
        costs = [h200.get_cost(op, int(n), "cuda:0", "bf16", shape=shape) for n in GRID]
        assert {c.method for c in costs} == {"shape-model"}, op
        assert {c.source for c in costs} == {"measured"}, op
        for what in ("latency_s", "energy_j"):
            if i := falls([getattr(c, what) for c in costs]):
                j = i[0]
                bad.append(f"{op} {what}: {GRID[j]} tokens {getattr(costs[j], what):.4g} > "
                           f"{GRID[j + 1]} tokens {getattr(costs[j + 1], what):.4g}")
    assert bad == []


def test_h200_fused_step_of_a_custom_shape(h200) -> None:
    """The case that was found: a fused step of 512 tokens predicted to take less time than
    one of 64 (0.520 against 0.582 ms), the anchor's host-bound 64-token point copied."""
    q = OpShape.from_key("h4096_f6400_swiglu_e16_k2")
    for op in ("moe_layer:fused", "moe_layer_int4:fused"):
        c64, c512 = (h200.get_cost(op, n, "cuda:0", "bf16", shape=q) for n in (64, 512))
        assert c512.latency_s >= c64.latency_s
        assert c512.energy_j >= c64.energy_j


@pytest.mark.parametrize(("op", "energy_rises"), [("moe_layer:fused", True),
                                                  ("moe_layer_int4:fused", True),
                                                  ("expert", False)])
def test_h200_a_profiled_shape_is_answered_as_measured(h200, op: str, energy_rises: bool) -> None:
    """OLMoE is profiled: its measured points come back as measured (a fall between them, as
    the expert's energy from 4 to 16 tokens, is kept: it was measured), and where its
    measurements rise (the fused steps' energy) so does every answer between and beyond them."""
    (curve,) = [c for c in h200.shapes(op, "cuda:0", "bf16") if "olmoe-1b-7b" in c.presets]
    for n, lat, en in zip(curve.tokens, curve.latency_s, curve.energy_j):
        c = h200.get_cost(op, int(n), "cuda:0", "bf16", shape="olmoe-1b-7b")
        assert c.method == "profiled"
        assert (c.latency_s, c.energy_j) == pytest.approx((lat, en), rel=1e-12)
    assert bool(np.all(np.diff(curve.energy_j) >= 0)) == energy_rises
    if energy_rises:
        energy = [h200.get_cost(op, int(n), "cuda:0", "bf16", shape=curve.shape).energy_j
                  for n in GRID]
        assert falls(energy) == []
