"""Least-squares models fitted from profile points (pure functions over arrays).

- `LatencyModel` per (device, dtype, op): latency = t0 + flops / rate + bytes / bandwidth
  (+ a cost per expert invocation for MoE layers), all coefficients >= 0.
- `EnergyModel` per (device, dtype): energy = static_power * latency + energy_per_flop * flops
  + energy_per_byte * bytes, coefficients >= 0. `static_power_w` is the device's power while
  it runs work (idle power plus clocked-up overhead); the idle power measured before the sweep
  is kept beside it.

Both are fitted by non-negative least squares on *relative* residuals (each row divided by
its measurement), so a 10 µs op weighs as much as a 100 ms one.

`monotone_log` is the least-squares non-decreasing fit (isotonic regression) of a sequence in
log space: what a predicted cost per call becomes where it would fall as the batch grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import isotonic_regression, nnls

from wattmoe.cost_model.base import OpShape, layer_op
from wattmoe.cost_model.work import op_work


def monotone_log(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest to `values` in least squares on log values.

    Isotonic regression (scipy's pool-adjacent-violators) of log(values): a run that falls is
    pooled to its geometric mean, entries already in order are returned unchanged. Entries
    that are NaN or <= 0 are kept as they are and left out of the fit.

    Args:
        values: shape (n,), in the order of the variable the result must not fall along.

    Returns:
        shape (n,): the fitted values.
    """
    out = np.array(values, dtype=float)
    idx = np.flatnonzero(np.isfinite(out) & (out > 0))
    if len(idx) < 2:
        return out
    res = isotonic_regression(np.log(out[idx]), increasing=True)
    for lo, hi in zip(res.blocks[:-1], res.blocks[1:]):
        if hi - lo > 1:  # a pooled run; entries alone in their block stay bit for bit
            out[idx[lo:hi]] = np.exp(res.x[lo])
    return out


def latency_features(op: str, tokens: float, shape: OpShape, dtype: str) -> np.ndarray:
    """[1, flops, bytes, expert invocations] of one call (invocations: layer ops only)."""
    flops, byts = op_work(op, int(tokens), shape, dtype)
    calls = min(shape.num_experts, tokens * shape.top_k) if layer_op(op) is not None else 0
    return np.array([1.0, flops, byts, float(calls)])


@dataclass(frozen=True)
class FitError:
    """Relative error of a model over the points it was fitted on."""

    n: int
    median_abs_rel: float
    p90_abs_rel: float
    max_abs_rel: float

    @classmethod
    def of(cls, pred: np.ndarray, meas: np.ndarray) -> FitError:
        if len(meas) == 0:
            return cls(0, float("nan"), float("nan"), float("nan"))
        rel = np.abs(pred - meas) / np.maximum(np.abs(meas), 1e-30)
        return cls(len(meas), float(np.median(rel)), float(np.quantile(rel, 0.9)),
                   float(np.max(rel)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimizing sum(((x @ c) - y) / y)^2, columns rescaled."""
    w = 1.0 / np.maximum(np.abs(y), 1e-30)
    a = x * w[:, None]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones_like(y), maxiter=50 * a.shape[1])
    return coef / scale


#: Norm exponents tried when fitting how launch overhead and device work combine:
#: 1 = they add up (a CPU runs both in turn), large = they overlap (a GPU executes while the
#: host launches the next kernel, so a call takes about the longer of the two).
OVERLAP_EXPONENTS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class LatencyModel:
    """latency_s = (overhead^p + work^p)^(1/p), with
    overhead = t0_s + calls * s_per_call and work = flops * s_per_flop + bytes * s_per_byte.

    p = 1 adds the host's launch overhead to the device's work; a large p takes the larger
    of the two. `p` is chosen among `OVERLAP_EXPONENTS` by the fit.
    """

    t0_s: float
    s_per_flop: float
    s_per_byte: float
    s_per_call: float
    error: FitError
    p: float = 1.0

    def predict(self, features: np.ndarray) -> float:
        return float(_combine(np.array([self.t0_s, self.s_per_flop, self.s_per_byte,
                                        self.s_per_call]), np.atleast_2d(features), self.p)[0])

    @property
    def flops_per_s(self) -> float:
        return 1.0 / self.s_per_flop if self.s_per_flop > 0 else float("inf")

    @property
    def bytes_per_s(self) -> float:
        return 1.0 / self.s_per_byte if self.s_per_byte > 0 else float("inf")

    def to_dict(self) -> dict[str, object]:
        return {"t0_s": self.t0_s, "s_per_flop": self.s_per_flop, "s_per_byte": self.s_per_byte,
                "s_per_call": self.s_per_call, "p": self.p, "error": self.error.to_dict()}


def _combine(coef: np.ndarray, x: np.ndarray, p: float) -> np.ndarray:
    overhead = x[:, 0] * coef[0] + x[:, 3] * coef[3]
    work = x[:, 1] * coef[1] + x[:, 2] * coef[2]
    if p == 1.0:
        return overhead + work
    return (overhead**p + work**p) ** (1.0 / p)


def fit_latency(features: Sequence[np.ndarray], latency_s: Sequence[float]) -> LatencyModel:
    """Fits a `LatencyModel` to rows of `latency_features` and measured latencies.

    p = 1 is a linear non-negative least-squares problem; for each larger p the coefficients
    are refined from that start by bounded least squares on relative residuals. The p with
    the smallest sum of squared relative residuals wins.
    """
    x = np.vstack(features).astype(float)
    y = np.asarray(latency_s, dtype=float)
    coef = _nnls_relative(x, y)
    # an all-zero fit (degenerate data) falls back to the mean latency as t0
    if not np.any(coef > 0):
        coef = np.array([float(np.mean(y)), 0.0, 0.0, 0.0])
    best = (float(np.sum(((x @ coef) - y) ** 2 / y**2)), 1.0, coef)
    scale = np.where(coef > 0, coef, 1e-30)
    if len(y) >= 4:
        from scipy.optimize import least_squares

        for p in OVERLAP_EXPONENTS[1:]:
            def resid(z: np.ndarray, p: float = p) -> np.ndarray:
                return _combine(z * scale, x, p) / y - 1.0

            # start from the additive fit, with the work terms given room to grow
            z0 = np.where(coef > 0, 1.0, 0.0)
            try:
                r = least_squares(resid, z0, bounds=(0.0, np.inf), x_scale="jac", max_nfev=400)
            except ValueError:
                continue
            sse = float(np.sum(r.fun**2))
            if np.isfinite(sse) and sse < best[0]:
                best = (sse, p, r.x * scale)
    _, p, c = best
    err = FitError.of(_combine(c, x, p), y)
    return LatencyModel(float(c[0]), float(c[1]), float(c[2]), float(c[3]), err, p)


@dataclass(frozen=True)
class EnergyModel:
    """energy_j = static_power_w * latency_s + j_per_flop * flops + j_per_byte * bytes."""

    static_power_w: float
    j_per_flop: float
    j_per_byte: float
    error: FitError
    idle_power_w: float | None = None
    source: str = "measured"

    def predict(self, latency_s: float, flops: float, bytes_moved: float) -> float:
        return (self.static_power_w * latency_s + self.j_per_flop * flops
                + self.j_per_byte * bytes_moved)

    def to_dict(self) -> dict[str, object]:
        return {"static_power_w": self.static_power_w, "j_per_flop": self.j_per_flop,
                "pj_per_flop": self.j_per_flop * 1e12, "j_per_byte": self.j_per_byte,
                "pj_per_byte": self.j_per_byte * 1e12, "idle_power_w": self.idle_power_w,
                "source": self.source, "error": self.error.to_dict()}


def fit_energy(
    latency_s: Sequence[float],
    flops: Sequence[float],
    bytes_moved: Sequence[float],
    energy_j: Sequence[float],
    idle_power_w: float | None = None,
    source: str = "measured",
) -> EnergyModel:
    """Fits an `EnergyModel` by non-negative least squares on relative residuals."""
    x = np.column_stack([np.asarray(latency_s, float), np.asarray(flops, float),
                         np.asarray(bytes_moved, float)])
    y = np.asarray(energy_j, dtype=float)
    coef = _nnls_relative(x, y)
    err = FitError.of(x @ coef, y)
    return EnergyModel(float(coef[0]), float(coef[1]), float(coef[2]), err, idle_power_w, source)
