"""CPU energy measured by Intel/AMD RAPL through Linux powercap (`source = 'measured'`).

Reads `energy_uj` of every top-level package zone under /sys/class/powercap
(`intel-rapl:0`, `intel-rapl:1`, ...: one per socket; Linux uses the intel-rapl driver for
AMD Zen too). Sub-zones (core, uncore, dram) and the `intel-rapl-mmio` duplicate of the
package are not added, so nothing is counted twice. Device `cpu` is the sum of the packages.

Each zone's counter wraps at `max_energy_range_uj` (~262 kJ on many Intel parts, minutes at
full load). Wraparound is handled by remembering the last raw value: a read lower than the
last one adds one range. At least one read per wrap period is needed, which the monitor's
sampler gives; reads further apart than `max_energy_range_uj` at a plausible power are logged.

Since Linux 5.10 (CVE-2020-8694) `energy_uj` is readable by root only; unreadable counters
make this backend unavailable and the factory falls back to the utilization estimate.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wattmoe.telemetry.base import (
    BackendUnavailable,
    DeviceSample,
    Source,
    TransientTelemetryError,
    UnknownDeviceError,
)
from wattmoe.telemetry.cpu import CPU_DEVICE, DEFAULT_CPU_SLOWDOWN_C, CpuSensors, busy_and_total_s

logger = logging.getLogger(__name__)

POWERCAP_ROOT = "/sys/class/powercap"
_TOP_ZONE = re.compile(r"^intel-rapl:(\d+)$")
#: Highest CPU package power assumed when checking that reads are frequent enough to see
#: every wraparound.
_MAX_PLAUSIBLE_W = 1000.0


@dataclass
class _Zone:
    path: Path
    name: str
    max_range_uj: int
    last_raw_uj: int
    offset_uj: int = 0
    last_read_s: float = 0.0
    wraps: int = 0

    def read_uj(self) -> int:
        """Raw counter plus every wrap seen so far (monotonic)."""
        try:
            raw = int((self.path / "energy_uj").read_text().strip())
        except (OSError, ValueError) as exc:
            raise TransientTelemetryError(f"RAPL {self.path}/energy_uj: {exc}") from exc
        now = time.monotonic()
        gap = now - self.last_read_s
        if gap * _MAX_PLAUSIBLE_W * 1e6 > self.max_range_uj:
            logger.warning("RAPL %s read %.0f s after the last read: a wraparound may have been "
                           "missed", self.name, gap)
        if raw < self.last_raw_uj:
            self.offset_uj += self.max_range_uj
            self.wraps += 1
        self.last_raw_uj = raw
        self.last_read_s = now
        return self.offset_uj + raw


def find_package_zones(root: str | Path = POWERCAP_ROOT) -> list[_Zone]:
    """The readable package zones under `root`.

    Raises:
        BackendUnavailable: no powercap tree, no package zone, or counters not readable.
    """
    root = Path(root)
    if not root.is_dir():
        raise BackendUnavailable(f"RAPL unavailable: {root} does not exist")
    zones = []
    for d in sorted(root.iterdir(), key=lambda p: p.name):
        m = _TOP_ZONE.match(d.name)
        if not m:
            continue
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue
        try:
            raw = int((d / "energy_uj").read_text().strip())
            max_range = int((d / "max_energy_range_uj").read_text().strip())
        except PermissionError as exc:
            raise BackendUnavailable(
                f"RAPL unavailable: {d / 'energy_uj'} is not readable (root only since Linux "
                "5.10; run as root or `chmod a+r` it)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise BackendUnavailable(f"RAPL unavailable: {d}: {exc}") from exc
        zones.append(_Zone(d, name, max_range, raw, last_read_s=time.monotonic()))
    if not zones:
        raise BackendUnavailable(f"RAPL unavailable: no package zone (intel-rapl:N) under {root}")
    return zones


class RaplBackend:
    """CPU packages' energy from RAPL counters (measured), as device `cpu`.

    Args:
        root: the powercap tree (tests pass a fake one).
        counter_period_s: RAPL updates its counters about every millisecond.
    """

    name = "rapl"
    source: Source = "measured"

    def __init__(self, root: str | Path = POWERCAP_ROOT, *,
                 counter_period_s: float = 0.001) -> None:
        self._zones = find_package_zones(root)
        self.counter_period_s = float(counter_period_s)
        self._lock = threading.Lock()
        self._sample_point: tuple[float, float] | None = None
        self._cpu_times = None
        self._busy_total: tuple[float, float] | None = None
        self._sensors: CpuSensors | None = None
        try:
            import psutil

            self._cpu_times = psutil.cpu_times
            self._busy_total = busy_and_total_s(psutil.cpu_times())
            self._sensors = CpuSensors(psutil)
        except ImportError:
            pass
        self._limit_w = self._read_limit_w()

    def _read_limit_w(self) -> float | None:
        total = 0.0
        for z in self._zones:
            try:
                total += int((z.path / "constraint_0_power_limit_uw").read_text().strip()) / 1e6
            except (OSError, ValueError):
                return None
        return total or None

    @property
    def zones(self) -> list[str]:
        return [f"{z.path.name} ({z.name})" for z in self._zones]

    @property
    def wraps(self) -> int:
        """Wraparounds seen so far, over all zones."""
        return sum(z.wraps for z in self._zones)

    def devices(self) -> list[str]:
        return [CPU_DEVICE]

    def _check(self, device: str) -> None:
        if device != CPU_DEVICE:
            raise UnknownDeviceError(f"unknown CPU device {device!r}: the RAPL backend has 'cpu'")

    def energy_j(self, device: str = CPU_DEVICE) -> float:
        """Sum of the package counters in joules (arbitrary origin, wraparound removed)."""
        self._check(device)
        with self._lock:
            return sum(z.read_uj() for z in self._zones) / 1e6

    def _utilization(self) -> float | None:
        if self._cpu_times is None or self._busy_total is None:
            return None
        busy, total = busy_and_total_s(self._cpu_times())
        b0, t0 = self._busy_total
        self._busy_total = (busy, total)
        return min(max((busy - b0) / (total - t0), 0.0), 1.0) if total > t0 else None

    def sample(self, device: str = CPU_DEVICE) -> DeviceSample:
        t = time.monotonic()
        energy = self.energy_j(device)
        prev, self._sample_point = self._sample_point, (t, energy)
        power = (energy - prev[1]) / (t - prev[0]) if prev and t > prev[0] else None
        temp = self._sensors.read()[0] if self._sensors else None
        return DeviceSample(
            device=CPU_DEVICE, timestamp_s=t, energy_j=energy, power_w=power, temperature_c=temp,
            power_limit_w=self._limit_w, utilization=self._utilization(), source=self.source,
        )

    def slowdown_temperature_c(self, device: str = CPU_DEVICE) -> float | None:
        self._check(device)
        high = self._sensors.read()[1] if self._sensors else None
        return high or DEFAULT_CPU_SLOWDOWN_C

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"RaplBackend(zones={self.zones})"
