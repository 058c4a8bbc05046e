"""`KernelCostModel`: what an op costs on a device, answered from a measured profile.

A query `get_cost(op, tokens, device, dtype, shape)` is answered, in order, by:

1. the profiled point itself ('profiled'; 'profiled (monotone)' where it was moved, below);
2. interpolation between the two profiled batch sizes around `tokens`, linear in
   (log tokens, log latency) and (log tokens, log energy) ('interpolated');
3. beyond the profiled sizes, the nearest profiled point scaled by the fitted per-device
   models' ratio model(tokens) / model(edge) ('extrapolated');
4. for a shape that was never profiled, a curve predicted at the profiled batch sizes of the
   profiled shapes of the same op nearest in work per token (one on each side where
   possible): each scaled by the fitted models' ratio model(query shape) / model(profiled
   shape) and interpolated in log work, then made non-decreasing in tokens; between its
   batch sizes it moves as the query shape's model does, beyond them it is extrapolated as
   in 3 ('shape-model'; `KernelCostModel._shape_curve`).

Monotone in tokens: a call on more tokens does the same work and more, so latency and
energy per call never fall as tokens grow (up to rounding), for profiled shapes and unprofiled
ones alike. A profiled curve's measurements fall in places (host-bound points, measured with up
to 2x of noise between leases, see results/h200/cost_model/README.md): its answers are read
from its points made non-decreasing in tokens (`monotone`: isotonic regression in log space,
`fit.monotone_log`; a run that falls is pooled to its geometric mean, points in order are kept
bit for bit). The measurements themselves are not altered (the profile, `ProfilePoint`,
`Curve.latency_s` / `energy_j`); an answer that rests on a moved point says so in its method:
'profiled (monotone)', 'interpolated (monotone)', 'extrapolated (monotone)'. Between the points
and beyond the last one (the fitted models are non-decreasing in tokens) the answers rise.

The fitted models are `LatencyModel` per (device, dtype, op) and `EnergyModel` per (device,
dtype): idle/static power plus energy per FLOP and per byte, fitted by least squares.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from wattmoe.cost_model.base import (
    CostModelError,
    KernelCost,
    OpShape,
    ProfilePoint,
    check_op,
    check_tokens,
    int4_compute_dtype,
    key_names_group,
    weakest_source,
)
from wattmoe.cost_model.database import ProfileDatabase, load_profile
from wattmoe.cost_model.fit import (
    EnergyModel,
    FitError,
    LatencyModel,
    fit_energy,
    fit_latency,
    latency_features,
    monotone_log,
)
from wattmoe.cost_model.layer_costs import LayerBackendCosts
from wattmoe.cost_model.work import op_work
from wattmoe.errors import ConfigError

CurveKey = tuple[str, str, str, str]  # op, device, dtype, shape key
LATENCY_BASES: tuple[str, ...] = ("window", "median")


def point_latency(p: ProfilePoint, basis: str = "window") -> float:
    """A point's latency on `basis`.

    'window': the energy window's wall time over its calls (thousands of back-to-back calls
    over >= 1 s), the time the device is occupied per call, consistent with the energy per
    call (energy = mean power x this time). 'median': the median of the calls timed one by
    one (CUDA events / perf_counter). Points without a window mean fall back to the median.
    """
    if basis == "window" and p.window_mean_latency_s:
        return float(p.window_mean_latency_s)
    return float(p.latency_s)


@dataclass
class Curve:
    """One (op, device, dtype, shape) measured over batch sizes, sorted by tokens.

    `latency_s`, `energy_j` and `avg_power_w` hold the measurements (or, for a predicted
    curve, the predicted points). The answers are read from `fit_latency_s`, `fit_energy_j`
    and `fit_avg_power_w`: the same, made non-decreasing in tokens (`monotone`); `adjusted`
    marks the points whose latency or energy that moved. Left out, they are computed.
    """

    op: str
    device: str
    dtype: str
    shape: OpShape
    presets: set[str]
    tokens: np.ndarray
    latency_s: np.ndarray
    energy_j: np.ndarray  # NaN where the window was not measurable
    avg_power_w: np.ndarray  # the window's mean power; NaN where unknown
    peak_power_w: np.ndarray  # NaN where unknown
    source: str
    fit_latency_s: np.ndarray = field(default=None)  # type: ignore[assignment]
    fit_energy_j: np.ndarray = field(default=None)  # type: ignore[assignment]
    fit_avg_power_w: np.ndarray = field(default=None)  # type: ignore[assignment]
    adjusted: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.fit_latency_s is None:
            self.fit_latency_s, self.fit_energy_j, self.fit_avg_power_w, self.adjusted = (
                monotone(self.latency_s, self.energy_j, self.avg_power_w))

    @classmethod
    def of(cls, pts: list[ProfilePoint], basis: str = "window") -> Curve:
        pts = sorted(pts, key=lambda p: p.tokens)
        p0 = pts[0]
        nan = float("nan")
        return cls(
            p0.op, p0.device, p0.dtype, p0.shape, {p.preset for p in pts},
            np.array([p.tokens for p in pts], float),
            np.array([point_latency(p, basis) for p in pts], float),
            np.array([p.energy_j if p.energy_j is not None else nan for p in pts], float),
            np.array([p.avg_power_w if p.avg_power_w is not None else nan for p in pts], float),
            np.array([p.peak_power_w if p.peak_power_w is not None else nan for p in pts], float),
            weakest_source([p.source for p in pts]),
        )

    @property
    def has_energy(self) -> bool:
        return bool(np.any(np.isfinite(self.energy_j)))


def monotone(latency_s: np.ndarray, energy_j: np.ndarray, avg_power_w: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(latency, energy, window power, adjusted) of a curve's points made non-decreasing in
    tokens: latency and energy per call each by `fit.monotone_log` (a run that falls is pooled
    to its geometric mean; points in order are returned bit for bit). A moved point keeps its
    window power over energy/latency (1 on the window basis), so power = energy / latency
    holds as measured; `adjusted` is True where latency or energy moved."""
    lat, en = monotone_log(latency_s), monotone_log(energy_j)
    adjusted = _moved(lat, latency_s) | _moved(en, energy_j)
    avg = np.array(avg_power_w, dtype=float)
    if np.any(adjusted):
        with np.errstate(invalid="ignore", divide="ignore"):
            r_en = np.where(np.isfinite(energy_j), en / energy_j, 1.0)
            moved = avg_power_w * r_en / (lat / latency_s)
        avg = np.where(adjusted, moved, avg)
    return lat, en, avg, adjusted


def _moved(fitted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Where `monotone_log` moved a value (NaN ones it leaves out and keeps are never moved)."""
    return (fitted != measured) & np.isfinite(measured)


def _read_from(x: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Indices of the points `_loglog(x, xs, ys)` reads y from: the one at x, or the two
    around it, among the points with a finite y > 0 (NaN ones are passed over, so these
    need not be x's neighbours); the nearest one where x is beyond them."""
    ok = np.flatnonzero(np.isfinite(ys) & (ys > 0))
    j = int(np.searchsorted(xs[ok], x))
    if j < len(ok) and xs[ok[j]] == x:
        return ok[j:j + 1]
    return ok[max(j - 1, 0):j + 1]


def _rests_on_moved(c: Curve, x: float) -> bool:
    """Whether a cost read from `c`'s non-decreasing points at `x` tokens (its latency and its
    energy, each by `_loglog`) rests on a point whose value `monotone` moved. The energy is
    checked on the points it is read from, which skip the points without a measured energy:
    one moved beyond such a gap counts."""
    lat = _read_from(x, c.tokens, c.fit_latency_s)
    en = _read_from(x, c.tokens, c.fit_energy_j)
    return bool(_moved(c.fit_latency_s, c.latency_s)[lat].any()
                or _moved(c.fit_energy_j, c.energy_j)[en].any())


def monotone_method(method: str, moved: bool) -> str:
    """`method`, marked ' (monotone)' where the answer rests on a point that `monotone`
    moved."""
    return f"{method} (monotone)" if moved else method


def _loglog(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Interpolates y(x) linearly in (log x, log y) inside [xs[0], xs[-1]]."""
    ok = np.isfinite(ys) & (ys > 0)
    xs, ys = xs[ok], ys[ok]
    if len(xs) == 0:
        return float("nan")
    if len(xs) == 1:
        return float(ys[0])
    return float(np.exp(np.interp(math.log(x), np.log(xs), np.log(ys))))


def _loglin(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Interpolates y(x) linearly in (log x, y); NaN when any y is unknown."""
    if not np.all(np.isfinite(ys)):
        return float("nan")
    return float(np.interp(math.log(x), np.log(xs), ys))


def _along(ks: tuple[float, float, float], model: list[float | None], y0: float,
           y1: float) -> float:
    """y at batch size ks[1], between (ks[0], y0) and (ks[2], y1): linear in (log model,
    log y), where `model` holds the fitted model's values at the three sizes; linear in
    (log tokens, log y) where the model is missing or flat (changes by < 1e-6) between them.
    Non-decreasing in ks[1] where y1 >= y0 and the model is non-decreasing."""
    if not (y0 > 0 and y1 > 0):
        return float("nan")
    m0, m, m1 = model
    if m0 is not None and m is not None and m1 is not None and m0 > 0 and m1 > m0 * (1 + 1e-6):
        t = (math.log(m) - math.log(m0)) / (math.log(m1) - math.log(m0))
    else:
        t = (math.log(ks[1]) - math.log(ks[0])) / (math.log(ks[2]) - math.log(ks[0]))
    t = min(max(t, 0.0), 1.0)
    return math.exp((1 - t) * math.log(y0) + t * math.log(y1))


@dataclass
class FitReport:
    """How well the fitted models and the interpolation reproduce the profile."""

    latency: dict[str, FitError] = field(default_factory=dict)  # "device/dtype/op"
    energy: dict[str, FitError] = field(default_factory=dict)  # "device/dtype"
    interpolation_loo_latency: dict[str, FitError] = field(default_factory=dict)  # "device"
    interpolation_loo_energy: dict[str, FitError] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: {k: v.to_dict() for k, v in getattr(self, name).items()}
                for name in ("latency", "energy", "interpolation_loo_latency",
                             "interpolation_loo_energy")}


class KernelCostModel:
    """Latency and energy of ops on devices, from a profile database.

    Satisfies the placement package's cost protocol (`expert_cost`, `idle_power_w`); so does
    `backend_view(backend)`, from the layer steps of one expert backend.

    Args:
        db: a loaded `ProfileDatabase` (see `KernelCostModel.load`).
        latency: 'window' (default: time per call in the energy window, consistent with the
            energy; see `point_latency`) or 'median' (median of single timed calls).
    """

    def __init__(self, db: ProfileDatabase, latency: str = "window") -> None:
        if latency not in LATENCY_BASES:
            raise CostModelError(f"latency basis must be one of {LATENCY_BASES}, got {latency!r}")
        self.latency_basis = latency
        self.db = db
        groups: dict[CurveKey, list[ProfilePoint]] = defaultdict(list)
        for p in db.points:
            groups[(p.op, p.device, p.dtype, p.shape.key)].append(p)
        self.curves: dict[CurveKey, Curve] = {k: Curve.of(v, latency)
                                               for k, v in groups.items()}
        self.latency_models: dict[tuple[str, str, str], LatencyModel] = {}
        self.energy_models: dict[tuple[str, str], EnergyModel] = {}
        # predicted curves of unprofiled shapes, by (op, device, dtype, shape)
        self._shape_curves: dict[tuple[str, str, str, OpShape], Curve] = {}
        self._fit()

    @classmethod
    def load(cls, path: str | Path, latency: str = "window") -> KernelCostModel:
        """Loads a profile JSON (raises ProfileFormatError for a corrupt/wrong-version file)."""
        return cls(load_profile(path), latency)

    # --- fitting ------------------------------------------------------------------------

    def _fit(self) -> None:
        by_lat: dict[tuple[str, str, str], list[ProfilePoint]] = defaultdict(list)
        by_en: dict[tuple[str, str], list[ProfilePoint]] = defaultdict(list)
        for p in self.db.points:
            by_lat[(p.device, p.dtype, p.op)].append(p)
            if p.energy_j is not None and p.energy_j > 0:
                by_en[(p.device, p.dtype)].append(p)
        for key, pts in by_lat.items():
            if len(pts) >= 2:
                self.latency_models[key] = fit_latency(
                    [latency_features(p.op, p.tokens, p.shape, p.dtype) for p in pts],
                    [point_latency(p, self.latency_basis) for p in pts],
                )
        for (dev, dt), pts in by_en.items():
            if len(pts) >= 3:
                info = self.db.devices.get(dev)
                self.energy_models[(dev, dt)] = fit_energy(
                    [point_latency(p, self.latency_basis) for p in pts],
                    [p.flops for p in pts],
                    [p.bytes_moved for p in pts], [p.energy_j for p in pts],  # type: ignore[misc]
                    idle_power_w=info.idle_power_w if info else None,
                    source=weakest_source([p.source for p in pts]),
                )

    # --- catalogue ----------------------------------------------------------------------

    def devices(self) -> list[str]:
        return sorted({k[1] for k in self.curves})

    def ops(self, device: str | None = None) -> list[str]:
        return sorted({k[0] for k in self.curves if device is None or k[1] == device})

    def dtypes(self, device: str, op: str | None = None) -> list[str]:
        """The dtypes profiled on `device` (with `op`: of that op)."""
        return sorted({k[2] for k in self.curves if k[1] == device and op in (None, k[0])})

    def shapes(self, op: str, device: str, dtype: str) -> list[Curve]:
        return [c for k, c in self.curves.items() if k[:3] == (op, device, dtype)]

    def _check(self, op: str, device: str, dtype: str) -> list[Curve]:
        check_op(op)
        devices = self.devices()
        if device not in devices:
            raise CostModelError(
                f"unknown device {device!r}: not in this profile (profiled: {', '.join(devices)})"
            )
        if op not in self.ops(device):
            raise CostModelError(
                f"op {op!r} was not profiled on {device} (profiled: {', '.join(self.ops(device))})"
            )
        if dtype not in self.dtypes(device):
            raise CostModelError(
                f"dtype {dtype!r} was not profiled on {device} "
                f"(profiled: {', '.join(self.dtypes(device))})"
            )
        curves = self.shapes(op, device, dtype)
        if not curves:
            raise CostModelError(f"op {op!r} was not profiled on {device} in {dtype} "
                                 f"(profiled in: {', '.join(self.dtypes(device, op))})")
        return curves

    def _resolve_shape(self, op: str, shape: Any, curves: list[Curve]) -> OpShape:
        if shape is None:
            if len(curves) == 1:
                return curves[0].shape
            names = ", ".join(sorted(p for c in curves for p in c.presets))
            raise CostModelError(f"op {op!r} was profiled at several shapes ({names}): choose "
                                 "one (shape=; `wattmoe cost --shape`)")
        if isinstance(shape, OpShape):
            return shape.for_op(op)
        if isinstance(shape, str):
            for c in curves:
                if shape == c.shape.key:
                    return c.shape
                if shape in c.presets:
                    # a preset names its widths, not a group: the default one, which a curve
                    # measured with another group ('..._g64') answers only by prediction
                    return replace(c.shape, int4_group=None).for_op(op)
            if key_names_group(shape):
                return OpShape.from_key(shape).for_op(op)
            from wattmoe.moe import resolve_shape

            try:
                return OpShape.from_config(resolve_shape(shape)).for_op(op)
            except CostModelError:
                raise
            except ConfigError as exc:
                raise CostModelError(f"unknown shape: {exc}") from None
        if hasattr(shape, "hidden_size"):
            return OpShape.from_config(shape).for_op(op)
        raise CostModelError(f"shape must be an OpShape, a MoEConfig or a name, got {shape!r}")

    # --- models -------------------------------------------------------------------------

    def _model_latency(self, op: str, device: str, dtype: str, tokens: float,
                       shape: OpShape) -> float | None:
        m = self.latency_models.get((device, dtype, op))
        if m is None:
            return None
        return max(m.predict(latency_features(op, tokens, shape, dtype)), 1e-12)

    def _model_energy(self, op: str, device: str, dtype: str, tokens: float, shape: OpShape,
                      latency_s: float) -> float | None:
        m = self.energy_models.get((device, dtype))
        if m is None:
            return None
        flops, byts = op_work(op, int(tokens), shape, dtype)
        return max(m.predict(latency_s, flops, byts), 1e-15)

    def _ratio(self, c: Curve, tokens: float, anchor_tokens: float, anchor_shape: OpShape,
               shape: OpShape) -> tuple[float, float | None]:
        """model(shape, tokens) / model(anchor_shape, anchor_tokens) for latency and energy."""
        lq = self._model_latency(c.op, c.device, c.dtype, tokens, shape)
        la = self._model_latency(c.op, c.device, c.dtype, anchor_tokens, anchor_shape)
        if lq is None or la is None:
            # too few points for a model: continue the last measured power law
            lat_r = self._powerlaw_ratio(c.tokens, c.fit_latency_s, tokens, anchor_tokens)
            en_r = self._powerlaw_ratio(c.tokens, c.fit_energy_j, tokens, anchor_tokens)
            if shape != anchor_shape:
                raise CostModelError(
                    f"cannot predict {c.op} at an unprofiled shape on {c.device}/{c.dtype}: "
                    "too few profiled points to fit a model"
                )
            return lat_r, en_r
        eq = self._model_energy(c.op, c.device, c.dtype, tokens, shape, lq)
        ea = self._model_energy(c.op, c.device, c.dtype, anchor_tokens, anchor_shape, la)
        en_r = None if eq is None or ea is None else eq / ea
        return lq / la, en_r

    @staticmethod
    def _powerlaw_ratio(xs: np.ndarray, ys: np.ndarray, x: float, x0: float) -> float:
        ok = np.isfinite(ys) & (ys > 0)
        xs, ys = xs[ok], ys[ok]
        if len(xs) < 2:
            return 1.0 if len(xs) == 0 else max(x / x0, 1.0) if x > x0 else 1.0
        i = (0, 1) if x < x0 else (-2, -1)
        slope = math.log(ys[i[1]] / ys[i[0]]) / math.log(xs[i[1]] / xs[i[0]])
        return (x / x0) ** max(slope, 0.0)

    # --- queries ------------------------------------------------------------------------

    def _curve_cost(self, c: Curve, tokens: int, override: str | None = None) -> KernelCost:
        """`c` at `tokens`: a point of it, interpolated between, or extrapolated beyond its
        batch sizes, read from its non-decreasing points (`Curve.fit_latency_s`, ...); where
        the answer rests on a point they moved, its method says ' (monotone)'. `override`
        replaces the answer's method (a predicted curve's points are not 'profiled')."""
        lo, hi = float(c.tokens[0]), float(c.tokens[-1])
        n = float(tokens)
        if lo <= n <= hi:
            lat = _loglog(n, c.tokens, c.fit_latency_s)
            en = _loglog(n, c.tokens, c.fit_energy_j)
            peak = _loglin(n, c.tokens, c.peak_power_w)
            avg = _loglin(n, c.tokens, c.fit_avg_power_w)
            method = "profiled" if n in c.tokens else "interpolated"
            if method == "profiled" and not np.all(np.isfinite(c.energy_j[c.tokens == n])):
                # the point's energy window was not measurable: its energy is interpolated
                # between its neighbours (or predicted below), not looked up
                method = "interpolated"
            moved = _rests_on_moved(c, n)
            beyond = self._energy_beyond(c, n, lat)
            if beyond is not None:  # past the measured energies: scaled, not held flat
                en, method = beyond, "extrapolated"
            if not math.isfinite(en):
                en_m = self._model_energy(c.op, c.device, c.dtype, n, c.shape, lat)
                en = float("nan") if en_m is None else en_m
        else:
            edge = hi if n > hi else lo
            i = -1 if n > hi else 0
            lat_r, en_r = self._ratio(c, n, edge, c.shape, c.shape)
            lat = float(c.fit_latency_s[i]) * lat_r
            en_edge = _loglog(edge, c.tokens, c.fit_energy_j)
            en = en_edge * en_r if en_r is not None and math.isfinite(en_edge) else float("nan")
            avg = float("nan")
            beyond = self._energy_beyond(c, n, lat)
            if beyond is not None:  # the edge point's energy was not measured
                en = beyond
            elif not math.isfinite(en):
                en_m = self._model_energy(c.op, c.device, c.dtype, n, c.shape, lat)
                en = float("nan") if en_m is None else en_m
            elif en_r is not None:
                avg = float(c.fit_avg_power_w[i]) * en_r / lat_r
            peak = float(c.peak_power_w[i])
            method = "extrapolated"
            moved = _rests_on_moved(c, edge)  # the edge point's latency, its energy as read
        method = monotone_method(method, moved)
        return self._finish(c, lat, en, peak, method if override is None else override, avg)

    def _energy_beyond(self, c: Curve, n: float, lat: float) -> float | None:
        """Energy at n tokens where n lies beyond the batch sizes whose energy was measured
        (the curve's first or last points had no measurable window), else None: the nearest
        measured point's energy scaled as the energy model scales it (`_ratio`), or, without
        a model, at that point's power for `lat` (energy = power x time). Read by `_loglog`,
        it would be that point's energy held flat, too low above it (2x at 4x the tokens)."""
        ok = np.isfinite(c.fit_energy_j) & (c.fit_energy_j > 0)
        if not ok.any() or c.tokens[ok][0] <= n <= c.tokens[ok][-1]:
            return None
        if (n > c.tokens[-1] and ok[-1]) or (n < c.tokens[0] and ok[0]):
            return None  # beyond the curve from its measured edge: `_curve_cost` scales it
        j = np.flatnonzero(ok)[-1 if n > c.tokens[ok][-1] else 0]
        anchor = float(c.tokens[j])
        en_r = self._ratio(c, n, anchor, c.shape, c.shape)[1]
        if en_r is None or not math.isfinite(en_r):
            en_r = lat / float(c.fit_latency_s[j])
        return float(c.fit_energy_j[j]) * en_r

    def _finish(self, c: Curve, lat: float, en: float, peak: float, method: str,
                avg: float = float("nan")) -> KernelCost:
        """Average power is the measured window's (energy per call comes from the window's
        mean call time, latency is the median call: their ratio is not the power)."""
        if not math.isfinite(en):
            raise CostModelError(f"no energy was measured for {c.op} on {c.device}/{c.dtype}")
        if not math.isfinite(avg):
            avg = en / lat if lat > 0 else 0.0
        info = self.db.devices.get(c.device)
        limit = info.power_limit_w if info is not None else None
        if method != "profiled" and limit and avg > limit:
            avg = float(limit)  # a prediction never averages above the enforced power limit
        if not math.isfinite(peak) or peak < avg:
            peak = avg
        return KernelCost.answer(lat, en, avg, peak, c.source, method)

    def _shape_cost(self, op: str, tokens: int, curves: list[Curve], shape: OpShape) -> KernelCost:
        """A shape never profiled: its predicted curve (`_shape_curve`) at `tokens`.

        At a batch size of the curve, its point; beyond them, extrapolated by the model of
        `shape` as a measured curve is (`_curve_cost`); between two of them, interpolated
        linearly in log cost against the log of the shape's fitted model, so the answer moves
        from one point to the next as the model does (flat while the model is, e.g. bound by
        launch overhead) and, both being non-decreasing, never falls.
        """
        c = self._shape_curve(op, curves, shape)
        n = float(tokens)
        i = int(np.searchsorted(c.tokens, n))
        if i == 0 or i == len(c.tokens) or c.tokens[i] == n:
            return self._curve_cost(c, tokens, "shape-model")
        ks = (float(c.tokens[i - 1]), n, float(c.tokens[i]))
        lat_m = [self._model_latency(op, c.device, c.dtype, k, shape) for k in ks]
        lat = _along(ks, lat_m, c.fit_latency_s[i - 1], c.fit_latency_s[i])
        en_m = [None if lm is None else self._model_energy(op, c.device, c.dtype, k, shape, lm)
                for k, lm in zip(ks, lat_m)]
        en = _along(ks, en_m, c.fit_energy_j[i - 1], c.fit_energy_j[i])
        if not math.isfinite(en):  # no energy model: answered (or refused) as a curve is
            return self._curve_cost(c, tokens, "shape-model")
        # the points' window power over energy/latency (1 on the window latency basis)
        with np.errstate(invalid="ignore", divide="ignore"):
            factor = _loglin(n, c.tokens, c.fit_avg_power_w * c.fit_latency_s / c.fit_energy_j)
        return self._finish(c, lat, en, _loglin(n, c.tokens, c.peak_power_w), "shape-model",
                            en / lat * factor)

    def _shape_curve(self, op: str, curves: list[Curve], shape: OpShape) -> Curve:
        """The curve of an unprofiled `shape`, predicted at the anchors' profiled batch sizes.

        The anchors are the profiled shapes of the op nearest in work per token (one each side
        where possible). At each batch size they profiled, each anchor's cost (as `get_cost`
        answers it: from its non-decreasing points) is scaled by the fitted models' ratio
        model(shape) / model(anchor), and the two are interpolated in log work. The predicted
        latencies and energies per call are then made non-decreasing in tokens as a profiled
        curve's are (`Curve`, `monotone`: a run that falls is pooled to its geometric mean;
        points in order are kept as predicted): the ratio of two shapes' models need not grow
        with tokens, and a step of more tokens does the same work and more, so its cost
        cannot fall. `_shape_cost` reads the curve so that every answer is non-decreasing in
        tokens.
        """
        key = (op, curves[0].device, curves[0].dtype, shape)
        cached = self._shape_curves.get(key)
        if cached is not None:
            return cached

        def work(s: OpShape) -> float:
            f, b = op_work(op, 1, s, curves[0].dtype)
            return f if f > 0 else b

        wq = work(shape)
        same_form = [c for c in curves if c.shape.form == shape.form] or curves
        ranked = sorted(same_form, key=lambda c: work(c.shape))
        below = [c for c in ranked if work(c.shape) <= wq]
        above = [c for c in ranked if work(c.shape) > wq]
        anchors = ([below[-1]] if below else []) + ([above[0]] if above else [])
        w = 0.0
        if len(anchors) == 2:
            la, lb = (math.log(work(c.shape)) for c in anchors)
            w = 0.0 if lb == la else (math.log(wq) - la) / (lb - la)
        knots = np.unique(np.concatenate([c.tokens for c in anchors]))
        rows = np.array([self._shape_point(anchors, int(n), shape, w) for n in knots])
        lat, en, peak, avg = (rows[:, i] for i in range(4))
        # made non-decreasing as a profiled curve is (`Curve`, `monotone`): a pooled point
        # keeps its predicted window power, moved with its energy and time
        curve = Curve(op, anchors[0].device, anchors[0].dtype, shape, set(), knots.astype(float),
                      lat, en, avg, peak, anchors[0].source)
        self._shape_curves[key] = curve
        return curve

    def _shape_point(self, anchors: list[Curve], tokens: int, shape: OpShape,
                     w: float) -> tuple[float, float, float, float]:
        """(latency, energy, peak power, window power) of `shape` at `tokens` from the anchors
        (see `_shape_curve`), before they are made monotone."""
        preds = []
        for c in anchors:
            base = self._curve_cost(c, tokens)
            lat_r, en_r = self._ratio(c, tokens, tokens, c.shape, shape)
            en = base.energy_j * en_r if en_r is not None else float("nan")
            avg = base.avg_power_w * en_r / lat_r if en_r is not None else float("nan")
            preds.append((base.latency_s * lat_r, en, base.peak_power_w, avg))
        if len(preds) == 2:
            def geo(i: int) -> float:
                a, b = preds[0][i], preds[1][i]
                if not (a > 0 and b > 0):
                    return float("nan")
                return math.exp((1 - w) * math.log(a) + w * math.log(b))

            lat, en, avg = geo(0), geo(1), geo(3)
            peak = max(preds[0][2], preds[1][2])
        else:
            lat, en, peak, avg = preds[0]
        if not math.isfinite(en):
            c = anchors[0]
            en_m = self._model_energy(c.op, c.device, c.dtype, tokens, shape, lat)
            en = float("nan") if en_m is None else en_m
        return lat, en, peak, avg

    def get_cost(
        self, op: str, tokens: int, device: str, dtype: str, shape: Any = None
    ) -> KernelCost:
        """Latency, energy and power of one call of `op` on `tokens` tokens.

        Args:
            op: a scenario op ('expert', 'up_gate_proj', 'moe_layer:loop', ...).
            tokens: batch size (>= 0; 0 costs nothing).
            device: a profiled device ('cpu', 'cuda:0').
            dtype: a profiled dtype ('fp32', 'bf16').
            shape: an `OpShape`, a `MoEConfig`, a preset spec ('olmoe-1b-7b@0.25') or a shape
                key; may be omitted when the op was profiled at one shape only.

        Raises:
            CostModelError: unknown op, device or dtype; negative or non-integer batch size;
                a shape that cannot be predicted.
        """
        tokens = check_tokens(tokens)
        curves = self._check(op, device, dtype)
        s = self._resolve_shape(op, shape, curves)
        if tokens == 0:
            return KernelCost.answer(0.0, 0.0, 0.0, 0.0, curves[0].source, "empty")
        for c in curves:
            if c.shape == s:
                return self._curve_cost(c, tokens)
        return self._shape_cost(op, tokens, curves, s)

    # --- the placement protocol ---------------------------------------------------------

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        """(latency_s, energy_j incl. idle power during it) of one whole expert.

        `dtype` 'int4' answers with the int4 path (`expert_int4`) in the compute dtype that
        was profiled (bf16 preferred).
        """
        op = "expert"
        if dtype == "int4":
            op = "expert_int4"
            dtype = int4_compute_dtype(self.dtypes(device) if device in self.devices() else [])
        c = self.get_cost(op, tokens, device, dtype, shape=OpShape(hidden, inner, form))
        return c.latency_s, c.energy_j

    def backend_view(self, backend: str) -> LayerBackendCosts:
        """The placement's cost provider for one expert backend: one expert's share of the
        profiled `moe_layer:<backend>` steps (`moe_layer_int4:<backend>` for dtype 'int4'),
        instead of one expert called on its own (`expert_cost`). See `LayerBackendCosts`.

        Raises:
            CostModelError: the profile holds no layer step of `backend`.
        """
        return LayerBackendCosts(self, backend)

    def idle_power_w(self, device: str) -> float:
        """Power the device draws while idle (measured before the sweep), in watts."""
        if device not in self.db.devices:
            raise CostModelError(
                f"unknown device {device!r}: not in this profile "
                f"(profiled: {', '.join(sorted(self.db.devices))})"
            )
        info = self.db.devices[device]
        if info.idle_power_w is not None:
            return float(info.idle_power_w)
        models = [m for (d, _), m in self.energy_models.items() if d == device]
        if models:
            return float(min(m.static_power_w for m in models))
        raise CostModelError(f"no idle power was measured for {device}")

    # --- report -------------------------------------------------------------------------

    def fit_report(self) -> FitReport:
        """Fit errors of the models, and leave-one-out errors of the interpolation: each
        interior measured point against the answer from the curve's other points, made
        non-decreasing as `get_cost` makes them (`monotone`)."""
        rep = FitReport()
        for (dev, dt, op), m in sorted(self.latency_models.items()):
            rep.latency[f"{dev}/{dt}/{op}"] = m.error
        for (dev, dt), m in sorted(self.energy_models.items()):
            rep.energy[f"{dev}/{dt}"] = m.error
        loo: dict[str, tuple[list[float], list[float], list[float], list[float]]] = defaultdict(
            lambda: ([], [], [], []))
        for c in self.curves.values():
            for i in range(1, len(c.tokens) - 1):
                keep = np.arange(len(c.tokens)) != i
                n = float(c.tokens[i])
                acc = loo[c.device]
                acc[0].append(_loglog(n, c.tokens[keep], monotone_log(c.latency_s[keep])))
                acc[1].append(float(c.latency_s[i]))
                if math.isfinite(c.energy_j[i]):
                    e = _loglog(n, c.tokens[keep], monotone_log(c.energy_j[keep]))
                    if math.isfinite(e):
                        acc[2].append(e)
                        acc[3].append(float(c.energy_j[i]))
        for dev, (pl, ml, pe, me) in sorted(loo.items()):
            rep.interpolation_loo_latency[dev] = FitError.of(np.array(pl), np.array(ml))
            rep.interpolation_loo_energy[dev] = FitError.of(np.array(pe), np.array(me))
        return rep

