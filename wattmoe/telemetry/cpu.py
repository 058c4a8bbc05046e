"""CPU power estimated from utilization (`source = 'estimated'`), for CPUs without RAPL.

Neither the development machines, CI nor the GPU machine expose /sys/class/powercap, so the
CPU's energy there is a model, never a measurement:

    power_w = num_cpus * (idle_w_per_cpu + (max_w_per_cpu - idle_w_per_cpu) * utilization)

integrated over time into an energy counter. `utilization` is the busy fraction of all logical
CPUs between two reads, from `psutil.cpu_times()` (user + system + irq ..., not idle, iowait or
steal). The counter advances on every read, so a window's energy is the model's integral over
exactly that window.

Default coefficients are the Cloud Carbon Footprint methodology's averages for AWS vCPUs
(0.74 W idle, 3.5 W at 100 %, per logical CPU); they are a fleet average, not this machine.
Give your CPU's figures with `CpuPowerModel(...)` or `CpuPowerModel.per_socket(...)`, e.g.
a 2-socket server of 350 W TDP and ~100 W idle per package:
`CpuPowerModel.per_socket(idle_w=100, max_w=350, sockets=2)`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from wattmoe.errors import ConfigError
from wattmoe.telemetry.base import (
    BackendUnavailable,
    DeviceSample,
    Source,
    UnknownDeviceError,
)

logger = logging.getLogger(__name__)

CPU_DEVICE = "cpu"
#: Fallback CPU slowdown temperature when no sensor says (typical Intel/AMD Tjmax - 10 C).
DEFAULT_CPU_SLOWDOWN_C = 90.0


def import_psutil() -> ModuleType:
    try:
        import psutil
    except ImportError as exc:
        raise BackendUnavailable("psutil is not installed (pip install psutil)") from exc
    return psutil


@dataclass(frozen=True)
class CpuPowerModel:
    """Linear utilization model of the CPUs' power.

    Attributes:
        idle_w_per_cpu: power of one logical CPU when idle.
        max_w_per_cpu: power of one logical CPU when 100 % busy.
        num_cpus: logical CPUs the model covers; None = all of this machine's
            (psutil.cpu_count(), the CPUs that `cpu_times()` reports on).
    """

    idle_w_per_cpu: float = 0.74
    max_w_per_cpu: float = 3.5
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("idle_w_per_cpu", "max_w_per_cpu"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"CpuPowerModel.{name} must be a finite number >= 0, got {v!r}")
        if self.max_w_per_cpu < self.idle_w_per_cpu:
            raise ConfigError(
                f"CpuPowerModel.max_w_per_cpu ({self.max_w_per_cpu}) is below idle_w_per_cpu "
                f"({self.idle_w_per_cpu})"
            )
        if self.num_cpus is not None and (not isinstance(self.num_cpus, int) or self.num_cpus < 1):
            raise ConfigError(f"CpuPowerModel.num_cpus must be an int >= 1, got {self.num_cpus!r}")

    @classmethod
    def per_socket(cls, idle_w: float, max_w: float, sockets: int = 1,
                   num_cpus: int | None = None) -> CpuPowerModel:
        """A model from package figures: `idle_w` and `max_w` (e.g. TDP) of one socket."""
        if not isinstance(sockets, int) or sockets < 1:
            raise ConfigError(f"sockets must be an int >= 1, got {sockets!r}")
        n = num_cpus or _cpu_count()
        return cls(idle_w * sockets / n, max_w * sockets / n, n)

    def cpus(self) -> int:
        return self.num_cpus or _cpu_count()

    @property
    def idle_w(self) -> float:
        return self.cpus() * self.idle_w_per_cpu

    @property
    def max_w(self) -> float:
        return self.cpus() * self.max_w_per_cpu

    def power_w(self, utilization: float) -> float:
        """Modelled power at a busy fraction in [0, 1] (clipped)."""
        u = min(max(float(utilization), 0.0), 1.0)
        return self.idle_w + (self.max_w - self.idle_w) * u


def _cpu_count() -> int:
    try:
        return import_psutil().cpu_count() or 1
    except BackendUnavailable:
        import os

        return os.cpu_count() or 1


def busy_and_total_s(times: Any) -> tuple[float, float]:
    """(busy, total) CPU seconds from a psutil `cpu_times()` result (summed over CPUs).

    guest time is already inside user time on Linux; idle, iowait and steal are not busy.
    """
    d = times._asdict()
    total = sum(v for k, v in d.items() if k not in ("guest", "guest_nice"))
    not_busy = d.get("idle", 0.0) + d.get("iowait", 0.0) + d.get("steal", 0.0)
    return total - not_busy, total


class CpuSensors:
    """Best-effort CPU package temperature (psutil.sensors_temperatures), read at most once a
    second; None where the machine has no sensor (VMs, containers)."""

    _KEYS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "acpitz")

    def __init__(self, psutil: ModuleType, min_period_s: float = 1.0) -> None:
        self._psutil = psutil
        self._min_period_s = min_period_s
        self._last_s = float("-inf")
        self._temp: float | None = None
        self._high: float | None = None
        self._available = hasattr(psutil, "sensors_temperatures")

    def read(self) -> tuple[float | None, float | None]:
        """(temperature_c, slowdown_c) of the hottest CPU package sensor."""
        if not self._available:
            return None, None
        now = time.monotonic()
        if now - self._last_s < self._min_period_s:
            return self._temp, self._high
        self._last_s = now
        try:
            groups = self._psutil.sensors_temperatures()
        except (OSError, RuntimeError, AttributeError):
            self._available = False
            return None, None
        for key in self._KEYS:
            entries = groups.get(key) or []
            pkg = [e for e in entries if e.label.lower().startswith(("package", "tctl", "tdie"))]
            pick = pkg or entries
            if pick:
                hottest = max(pick, key=lambda e: e.current)
                self._temp = float(hottest.current)
                self._high = float(hottest.high or hottest.critical or 0) or None
                return self._temp, self._high
        if not groups:
            self._available = False
        return None, None


class CpuBackend:
    """All CPUs of this machine as one device, `cpu`, power estimated from utilization.

    Args:
        model: the power model (defaults documented in the module docstring).
        counter_period_s: the shortest window worth measuring. /proc/stat counts in 10 ms
            ticks per CPU, so below ~0.1 s the utilization is dominated by tick rounding.
        clock: monotonic time source (tests inject one).
        cpu_times: a `psutil.cpu_times`-like callable (tests inject one).
    """

    name = "cpu-estimate"
    source: Source = "estimated"

    def __init__(
        self,
        model: CpuPowerModel | None = None,
        *,
        counter_period_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        cpu_times: Callable[[], Any] | None = None,
    ) -> None:
        psutil = import_psutil()
        self.model = model or CpuPowerModel()
        self.counter_period_s = float(counter_period_s)
        self._clock = clock
        self._cpu_times = cpu_times or psutil.cpu_times
        self._sensors = CpuSensors(psutil)
        self._lock = threading.Lock()
        self._busy, self._total = busy_and_total_s(self._cpu_times())
        self._t = clock()
        self._energy_j = 0.0
        self._util = 0.0
        self._sample_point: tuple[float, float] | None = None  # (t, energy) at the last sample

    def devices(self) -> list[str]:
        return [CPU_DEVICE]

    def _check(self, device: str) -> None:
        if device != CPU_DEVICE:
            raise UnknownDeviceError(f"unknown CPU device {device!r}: the CPU backend has 'cpu'")

    def _advance(self) -> tuple[float, float, float]:
        """Integrates the model up to now; returns (t, energy_j, utilization since last read)."""
        with self._lock:
            now = self._clock()
            busy, total = busy_and_total_s(self._cpu_times())
            d_total = total - self._total
            if d_total > 0:
                self._util = min(max((busy - self._busy) / d_total, 0.0), 1.0)
            dt = now - self._t
            if dt > 0:
                self._energy_j += self.model.power_w(self._util) * dt
            self._busy, self._total, self._t = busy, total, now
            return now, self._energy_j, self._util

    def energy_j(self, device: str = CPU_DEVICE) -> float:
        """The estimated energy counter (J since the backend was made)."""
        self._check(device)
        return self._advance()[1]

    def sample(self, device: str = CPU_DEVICE) -> DeviceSample:
        self._check(device)
        t, energy, util = self._advance()
        prev = self._sample_point
        self._sample_point = (t, energy)
        if prev is not None and t - prev[0] > 0:
            power = (energy - prev[1]) / (t - prev[0])
        else:
            power = self.model.power_w(util)
        temp, _ = self._sensors.read()
        return DeviceSample(
            device=CPU_DEVICE, timestamp_s=t, energy_j=energy, power_w=power,
            temperature_c=temp, power_limit_w=self.model.max_w, utilization=util,
            source=self.source,
        )

    def slowdown_temperature_c(self, device: str = CPU_DEVICE) -> float | None:
        self._check(device)
        return self._sensors.read()[1] or DEFAULT_CPU_SLOWDOWN_C

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        m = self.model
        return (f"CpuBackend({m.cpus()} CPUs, {m.idle_w:.1f}-{m.max_w:.1f} W, estimated)")



