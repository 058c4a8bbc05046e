"""Per-device cost curves: an expert's time and dynamic energy as functions of its tokens.

A cost provider is asked once per (device, shape) on a log-spaced grid of token counts; the
solvers then interpolate with numpy, because expected loads are fractional and a solver asks
millions of times. Below one token the cost is linear from zero (an expert that receives x < 1
tokens per batch in expectation runs in about a fraction x of the batches); above the grid it
extends the last segment. A power budget is applied the way a power cap acts: a kernel whose
power while running would exceed the budget is stretched until it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wattmoe.placement.base import ExpertCostProvider, ExpertShape, InfeasibleError, PlacementError
from wattmoe.units import fmt_power


@dataclass(frozen=True, eq=False)
class CostCurve:
    """Sampled cost of one expert shape on one cost-model device.

    Attributes:
        device: the cost-model device.
        tokens: [n] grid of token counts, starting at 0, increasing.
        latency_s: [n] time of one expert call at each grid point.
        dynamic_energy_j: [n] energy above idle (energy_j - idle_power_w * latency_s).
        idle_power_w: the device's idle power.
        power_budget_w: the cap applied while sampling, or None.
    """

    device: str
    tokens: np.ndarray
    latency_s: np.ndarray
    dynamic_energy_j: np.ndarray
    idle_power_w: float
    power_budget_w: float | None = None

    def __call__(self, tokens: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(latency_s, dynamic_energy_j) at fractional token counts (any shape)."""
        x = np.asarray(tokens, dtype=np.float64)
        lat = np.interp(x, self.tokens, self.latency_s)
        dyn = np.interp(x, self.tokens, self.dynamic_energy_j)
        top = self.tokens[-1]
        over = x > top
        if np.any(over):
            dx = self.tokens[-1] - self.tokens[-2]
            slope_t = (self.latency_s[-1] - self.latency_s[-2]) / dx
            slope_e = (self.dynamic_energy_j[-1] - self.dynamic_energy_j[-2]) / dx
            lat = np.where(over, self.latency_s[-1] + (x - top) * slope_t, lat)
            dyn = np.where(over, self.dynamic_energy_j[-1] + (x - top) * slope_e, dyn)
        return lat, dyn


def token_grid(max_tokens: float, points: int = 48) -> np.ndarray:
    """0 followed by about `points` log-spaced integers from 1 to >= max_tokens."""
    top = max(2, math.ceil(max_tokens))
    grid = np.unique(np.round(np.geomspace(1, top, points)).astype(np.int64))
    return np.concatenate([[0], grid])


def sample_curve(provider: ExpertCostProvider, device: str, shape: ExpertShape,
                 max_tokens: float, *, power_budget_w: float | None = None,
                 points: int = 48) -> CostCurve:
    """Asks `provider` for the expert's cost on `device` at every point of `token_grid`.

    Raises:
        PlacementError: the provider returned a negative or non-finite cost.
        InfeasibleError: the power budget is at or below the device's idle power.
    """
    grid = token_grid(max_tokens, points)
    idle = float(provider.idle_power_w(device))
    if not (math.isfinite(idle) and idle >= 0):
        raise PlacementError(f"cost provider returned idle power {idle!r} W for {device!r}")
    lat = np.zeros(len(grid))
    energy = np.zeros(len(grid))
    for i, n in enumerate(grid[1:], start=1):
        t, e = provider.expert_cost(device, int(n), shape.hidden, shape.inner, shape.form,
                                    shape.dtype)
        if not (math.isfinite(t) and math.isfinite(e) and t >= 0 and e >= 0):
            raise PlacementError(f"cost provider returned latency {t!r} s, energy {e!r} J for "
                                 f"{n} tokens on {device!r}: costs must be finite and >= 0")
        lat[i], energy[i] = t, e
    dyn = np.maximum(energy - idle * lat, 0.0)
    if power_budget_w is not None:
        headroom = power_budget_w - idle
        if headroom <= 0:
            raise InfeasibleError(
                f"power budget {fmt_power(power_budget_w, ',g')} of a {device} device is at or "
                f"below its idle power {fmt_power(idle, ',g')}: it cannot run anything within "
                "the budget"
            )
        lat = np.maximum(lat, dyn / headroom)
    # More tokens never cost less; measured profiles are noisy, so fit the closest
    # non-decreasing curve instead of trusting every sample.
    return CostCurve(device, grid.astype(np.float64), isotonic(lat), isotonic(dyn), idle,
                     power_budget_w)


def isotonic(values: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in least squares (pool adjacent
    violators): an outlier is averaged with its neighbours instead of lifting all that
    follows it."""
    means: list[float] = []
    counts: list[int] = []
    for v in np.asarray(values, dtype=np.float64):
        means.append(float(v))
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, c2 = means.pop(), counts.pop()
            m1, c1 = means.pop(), counts.pop()
            means.append((m1 * c1 + m2 * c2) / (c1 + c2))
            counts.append(c1 + c2)
    return np.repeat(means, counts)
