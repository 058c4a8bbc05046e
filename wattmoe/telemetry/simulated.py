"""Simulated devices driven by a power model (`source = 'simulated'`).

For machines with nothing to measure, and for tests: each device draws

    power_w = min(idle_w + dynamic_w * utilization, power_limit_w)

and, when it has a `ThermalModel`, heats like one thermal resistance and capacitance:

    dT/dt = (ambient_c + resistance_c_per_w * power_w - T) / time_constant_s

integrated exactly between reads (utilization is piecewise constant between them). Energy is
the exact integral of power, so a window's energy is exact too.

Utilization is set with `set_utilization(device, u)` or given as a function of
(device, time_s) evaluated at each read.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from wattmoe.checks import is_finite_real
from wattmoe.errors import ConfigError
from wattmoe.telemetry.base import DeviceSample, Source, UnknownDeviceError
from wattmoe.telemetry.nvml import NVML_COUNTER_PERIOD_S


@dataclass(frozen=True)
class ThermalModel:
    """First-order thermal model of one device.

    Attributes:
        ambient_c: temperature the device settles to at zero power.
        resistance_c_per_w: steady-state temperature rise per watt.
        time_constant_s: time to cover 63 % of a step in temperature.
        slowdown_c: temperature at which the device slows its clocks.
        initial_c: starting temperature; None = steady state at idle power.
    """

    ambient_c: float = 32.0
    resistance_c_per_w: float = 0.055
    time_constant_s: float = 6.0
    slowdown_c: float = 87.0
    initial_c: float | None = None

    def __post_init__(self) -> None:
        for name in ("ambient_c", "resistance_c_per_w", "time_constant_s", "slowdown_c"):
            if not is_finite_real(getattr(self, name)):
                raise ConfigError(f"ThermalModel.{name} must be a finite number, got "
                                  f"{getattr(self, name)!r}")
        if self.initial_c is not None and not is_finite_real(self.initial_c):
            raise ConfigError(f"ThermalModel.initial_c must be a finite number or None, got "
                              f"{self.initial_c!r}")
        if self.time_constant_s <= 0:
            raise ConfigError(
                f"ThermalModel.time_constant_s must be > 0, got {self.time_constant_s}")
        if self.resistance_c_per_w < 0:
            raise ConfigError(
                f"ThermalModel.resistance_c_per_w must be >= 0, got {self.resistance_c_per_w}")


@dataclass(frozen=True)
class SimPowerModel:
    """Power of one simulated device: idle + dynamic * utilization, capped at the limit.

    Attributes:
        idle_w: power at zero utilization.
        dynamic_w: extra power at full utilization.
        power_limit_w: cap on power (None = idle + dynamic).
        thermal: optional thermal model (None = no temperature).
    """

    idle_w: float
    dynamic_w: float
    power_limit_w: float | None = None
    thermal: ThermalModel | None = None

    def __post_init__(self) -> None:
        if not (is_finite_real(self.idle_w) and is_finite_real(self.dynamic_w)) \
                or self.idle_w < 0 or self.dynamic_w < 0:
            raise ConfigError(
                f"SimPowerModel: idle_w and dynamic_w must be >= 0, got {self.idle_w}, "
                f"{self.dynamic_w}")
        if self.power_limit_w is not None and not (is_finite_real(self.power_limit_w)
                                                   and self.power_limit_w > 0):
            raise ConfigError(f"SimPowerModel.power_limit_w must be > 0, got {self.power_limit_w}")

    @property
    def limit_w(self) -> float:
        if self.power_limit_w is not None:
            return self.power_limit_w
        return self.idle_w + self.dynamic_w

    def uncapped_w(self, utilization: float) -> float:
        return self.idle_w + self.dynamic_w * min(max(utilization, 0.0), 1.0)

    def power_w(self, utilization: float) -> float:
        return min(self.uncapped_w(utilization), self.limit_w)


#: Roughly an H200 (shared/gpu/README.md): 80 W idle, 700 W software cap, 38 -> 58 C in 5 s
#: of GEMMs at ~670 W.
H200_LIKE = SimPowerModel(idle_w=80.0, dynamic_w=640.0, power_limit_w=700.0,
                          thermal=ThermalModel())
#: A generic 2-socket server CPU package pair.
CPU_LIKE = SimPowerModel(idle_w=100.0, dynamic_w=400.0, power_limit_w=500.0,
                         thermal=ThermalModel(ambient_c=35.0, resistance_c_per_w=0.09,
                                              time_constant_s=20.0, slowdown_c=90.0))

UtilizationFn = Callable[[str, float], float]


@dataclass
class _State:
    model: SimPowerModel
    t: float
    utilization: float
    energy_j: float
    temperature_c: float | None


class SimulatedBackend:
    """Devices whose power follows a `SimPowerModel` (labeled simulated).

    Args:
        models: device name -> model; None = one H200-like GPU named 'sim:0'.
        utilization: optional function (device, time_s) -> utilization in [0, 1], read at
            every read of the device; without it, `set_utilization` sets it (initially 0).
        counter_period_s: the period windows must exceed to count as measurable. Defaults to
            NVML's, so that code behaves the same in simulation as on a real GPU.
        clock: time source (tests inject a fake one).
    """

    name = "simulated"
    source: Source = "simulated"

    def __init__(
        self,
        models: Mapping[str, SimPowerModel] | None = None,
        *,
        utilization: UtilizationFn | None = None,
        counter_period_s: float = NVML_COUNTER_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        models = dict(models) if models is not None else {"sim:0": H200_LIKE}
        if not models:
            raise ConfigError("SimulatedBackend needs at least one device model")
        self.counter_period_s = float(counter_period_s)
        self._clock = clock
        self._fn = utilization
        self._lock = threading.Lock()
        now = clock()
        self._states = {}
        for dev, m in models.items():
            temp = None
            if m.thermal is not None:
                temp = (m.thermal.initial_c if m.thermal.initial_c is not None
                        else m.thermal.ambient_c + m.thermal.resistance_c_per_w * m.power_w(0.0))
            u0 = self._fn(dev, now) if self._fn else 0.0
            self._states[dev] = _State(m, now, u0, 0.0, temp)

    def devices(self) -> list[str]:
        return list(self._states)

    def _state(self, device: str) -> _State:
        try:
            return self._states[device]
        except KeyError:
            raise UnknownDeviceError(
                f"unknown simulated device {device!r}; simulated: {', '.join(self._states)}"
            ) from None

    def _advance(self, st: _State, device: str) -> None:
        now = self._clock()
        dt = now - st.t
        if dt > 0:
            p = st.model.power_w(st.utilization)
            st.energy_j += p * dt
            th = st.model.thermal
            if th is not None and st.temperature_c is not None:
                steady = th.ambient_c + th.resistance_c_per_w * p
                st.temperature_c = steady + (st.temperature_c - steady) * math.exp(
                    -dt / th.time_constant_s)
            st.t = now
        if self._fn is not None:
            st.utilization = min(max(float(self._fn(device, now)), 0.0), 1.0)

    def set_utilization(self, device: str, utilization: float) -> None:
        """From now on the device runs at `utilization` (clipped to [0, 1]).

        Raises:
            ConfigError: utilization is NaN (it cannot be clipped; every reading would be NaN).
        """
        if math.isnan(float(utilization)):
            raise ConfigError(f"utilization of {device!r} must be a number in [0, 1], got NaN")
        with self._lock:
            st = self._state(device)
            self._advance(st, device)
            st.utilization = min(max(float(utilization), 0.0), 1.0)

    def energy_j(self, device: str) -> float:
        with self._lock:
            st = self._state(device)
            self._advance(st, device)
            return st.energy_j

    def sample(self, device: str) -> DeviceSample:
        with self._lock:
            st = self._state(device)
            self._advance(st, device)
            m, u = st.model, st.utilization
            reasons = []
            if u == 0.0:
                reasons.append("gpu_idle")
            if m.uncapped_w(u) > m.limit_w:
                reasons.append("sw_power_cap")
            hot = m.thermal is not None and st.temperature_c is not None
            if hot and st.temperature_c >= m.thermal.slowdown_c:  # type: ignore[operator,union-attr]
                reasons.append("sw_thermal_slowdown")
            return DeviceSample(
                device=device, timestamp_s=st.t, energy_j=st.energy_j, power_w=m.power_w(u),
                temperature_c=st.temperature_c, power_limit_w=m.limit_w, utilization=u,
                clock_event_reasons=tuple(reasons), source=self.source,
                power_average_w=m.power_w(u),
            )

    def slowdown_temperature_c(self, device: str) -> float | None:
        th = self._state(device).model.thermal
        return th.slowdown_c if th else None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"SimulatedBackend(devices={self.devices()})"
