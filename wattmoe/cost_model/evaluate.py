"""Held-out accuracy: the model's predictions against points it was not built from."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from wattmoe.cost_model.base import CostModelError, ProfilePoint
from wattmoe.cost_model.model import KernelCostModel, point_latency
from wattmoe.cost_model.work import op_work


@dataclass(frozen=True)
class EvalRow:
    """One held-out point, measured and predicted.

    `kind` is 'shape' when the shape was never profiled for this op/device/dtype, 'batch'
    when the shape was but this batch size was not, 'profiled' otherwise (a sanity check).
    `energy_model_j` is the per-device energy model alone (static power x predicted latency +
    energy per FLOP and per byte), without anchoring on profiled points.
    """

    op: str
    device: str
    dtype: str
    preset: str
    shape: str
    tokens: int
    kind: str
    method: str
    source: str
    measured_latency_s: float
    predicted_latency_s: float
    latency_rel_err: float
    measured_energy_j: float | None
    predicted_energy_j: float
    energy_rel_err: float | None
    energy_model_j: float | None
    energy_model_rel_err: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SkippedPoint:
    """A held-out point the model cannot predict (e.g. its op, device or dtype was not
    profiled); `reason` is the model's error message."""

    op: str
    device: str
    dtype: str
    preset: str
    shape: str
    tokens: int
    reason: str

    def describe(self) -> str:
        return f"{self.op} {self.device} {self.dtype} {self.preset} n={self.tokens}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rel(pred: float, meas: float) -> float:
    return (pred - meas) / meas


def evaluate(model: KernelCostModel, points: list[ProfilePoint]
             ) -> tuple[list[EvalRow], list[SkippedPoint]]:
    """Predicts every point with `model.get_cost` and records the relative errors.

    Measured latency is taken on the model's latency basis ('window' or 'median'). A point
    the model cannot predict (`get_cost` raises CostModelError, e.g. for an op, device or
    dtype the profile does not hold) is not an error: it is returned among the skipped ones,
    so that one set of measurements can be evaluated against profiles of fewer ops.

    Returns:
        The rows of the points predicted, and the points skipped, each in the given order.
    """
    rows = []
    skipped = []
    for p in points:
        try:
            c = model.get_cost(p.op, p.tokens, p.device, p.dtype, shape=p.shape)
        except CostModelError as exc:
            skipped.append(SkippedPoint(p.op, p.device, p.dtype, p.preset, p.shape.key,
                                        p.tokens, str(exc)))
            continue
        curves = model.shapes(p.op, p.device, p.dtype)
        profiled = next((cv for cv in curves if cv.shape == p.shape), None)
        if profiled is None:
            kind = "shape"
        else:
            kind = "profiled" if p.tokens in set(profiled.tokens.tolist()) else "batch"
        em = model.energy_models.get((p.device, p.dtype))
        em_j = None
        if em is not None:
            fl, by = op_work(p.op, p.tokens, p.shape, p.dtype)
            em_j = em.predict(c.latency_s, fl, by)
        e_meas = p.energy_j
        # a measured energy of 0 J (a counter that did not move in the window) has no
        # relative error, as the model reads no energy from it (was: ZeroDivisionError)
        compared = e_meas is not None and e_meas > 0
        rows.append(EvalRow(
            p.op, p.device, p.dtype, p.preset, p.shape.key, p.tokens, kind, c.method, c.source,
            point_latency(p, model.latency_basis), c.latency_s,
            _rel(c.latency_s, point_latency(p, model.latency_basis)), e_meas, c.energy_j,
            _rel(c.energy_j, e_meas) if compared else None,  # type: ignore[arg-type]
            em_j, _rel(em_j, e_meas) if compared and em_j is not None else None,  # type: ignore[arg-type]
        ))
    return rows, skipped


def _stats(errs: list[float]) -> dict[str, float]:
    a = sorted(abs(e) for e in errs if e is not None and math.isfinite(e))
    if not a:
        return {"n": 0}
    return {"n": len(a), "median_abs_pct": 100 * statistics.median(a),
            "p90_abs_pct": 100 * a[min(len(a) - 1, int(0.9 * len(a)))],
            "max_abs_pct": 100 * a[-1]}


def summarize(rows: list[EvalRow], split_latency_s: float | None = None
              ) -> dict[str, dict[str, Any]]:
    """Median / p90 / max absolute % error of latency and energy, per kind and overall.

    With `split_latency_s`, also for the points measured below and above that latency (on a
    GPU driven from Python, calls under ~0.25 ms are bound by the host's launch overhead).
    """
    out: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[EvalRow]] = {k: [r for r in rows if r.kind == k]
                                        for k in sorted({r.kind for r in rows})}
    groups["all"] = list(rows)
    if split_latency_s is not None:
        ms = f"{split_latency_s * 1e3:g} ms"
        groups[f"latency < {ms}"] = [r for r in rows if r.measured_latency_s < split_latency_s]
        groups[f"latency >= {ms}"] = [r for r in rows if r.measured_latency_s >= split_latency_s]
    for kind, sel in groups.items():
        out[kind] = {
            "latency": _stats([r.latency_rel_err for r in sel]),
            "energy": _stats([r.energy_rel_err for r in sel if r.energy_rel_err is not None]),
            "energy_model_only": _stats(
                [r.energy_model_rel_err for r in sel if r.energy_model_rel_err is not None]),
        }
    return out
