"""The telemetry contract: one backend protocol, sample and measurement records, errors.

Every number carries its `source`:
- ``measured``: read from a hardware counter (NVML energy counter, RAPL);
- ``estimated``: computed from a model of a device that has no counter (CPU utilization model);
- ``simulated``: produced by a power model driven by a simulation;
- ``replayed``: read back from a recorded telemetry CSV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from wattmoe.errors import DeviceError, MeasurementError

Source = Literal["measured", "estimated", "simulated", "replayed"]
SOURCES: tuple[str, ...] = ("measured", "estimated", "simulated", "replayed")


class TelemetryError(DeviceError):
    """A telemetry backend failed or a device is unknown to it."""


class BackendUnavailable(TelemetryError):
    """The backend cannot run on this machine (no driver, no permission, no file)."""


class UnknownDeviceError(TelemetryError):
    """A device name is malformed, or no backend has a device of that name."""


class NotSupportedError(TelemetryError):
    """The device has no such reading (e.g. memory temperature on a GPU without the sensor)."""


class TransientTelemetryError(TelemetryError):
    """One reading failed but the next may succeed (driver timeout, busy, unknown error).

    The sampler marks the sample missing and carries on."""


class NotMeasurableError(MeasurementError):
    """A window is shorter than the counter can resolve."""


@dataclass(frozen=True)
class DeviceSample:
    """One reading of one device.

    Attributes:
        device: the backend's device name ('cuda:0', 'cpu', 'gpu-<uuid>' ...).
        timestamp_s: time.monotonic() at the reading (replay: the recorded time).
        energy_j: cumulative energy counter in joules since an arbitrary origin, or None.
        power_w: current (instant or short-average) power, or None.
        temperature_c: core temperature, or None.
        memory_temperature_c: memory (HBM) temperature, or None.
        power_limit_w: enforced power limit, or None.
        utilization: busy fraction in [0, 1], or None.
        clock_event_reasons: decoded names of active clock-event (throttle) reasons.
        source: where the numbers came from.
        missing: True when the reading failed (every value None); the sampler keeps such
            samples so that gaps stay visible.
        power_average_w: the driver's averaged power (NVML_FI_DEV_POWER_AVERAGE), or None;
            `power_w` holds the instant value where the device has one.
    """

    device: str
    timestamp_s: float
    energy_j: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    power_limit_w: float | None = None
    utilization: float | None = None
    clock_event_reasons: tuple[str, ...] = ()
    source: Source = "measured"
    missing: bool = False
    power_average_w: float | None = None


@dataclass(frozen=True)
class Pressure:
    """Load signals for routers, each in [0, 1] (0 = no pressure, 1 = at the limit).

    Attributes:
        thermal: temperature between a floor and the slowdown threshold (1 while a thermal
            clock-event reason is active).
        power: power against the enforced limit or a user budget (1 while power-capped).
    """

    thermal: float
    power: float


@runtime_checkable
class TelemetryBackend(Protocol):
    """What every backend provides, per device.

    `counter_period_s` is how often the energy counter updates (NVML ~0.1 s); windows
    shorter than it are not measurable.
    """

    name: str
    source: Source
    counter_period_s: float

    def devices(self) -> list[str]: ...

    def sample(self, device: str) -> DeviceSample: ...

    def close(self) -> None: ...


# Optional backend methods (every backend of this package has them; the monitor uses them
# when present and falls back to `sample()` otherwise):
#   energy_j(device) -> float | None          one cheap read of the energy counter (J)
#   slowdown_temperature_c(device) -> float | None   temperature at which clocks slow down
# and, on a replay only, its recorded time and rows (windows measure the recording's own rows):
#   recorded_position_s() -> float | None; recorded_samples(device, start_s, end_s)


@dataclass(frozen=True)
class DeviceMeasurement:
    """What one device did during a window.

    Attributes:
        energy_j: energy over the window (counter delta, or integrated power), or None.
        mean_power_w: energy_j / duration, or the mean of samples when no counter.
        peak_power_w: highest sampled power in the window, or None.
        start_temperature_c / end_temperature_c: temperatures at the window's edges.
        clock_event_reasons: every throttle reason seen during the window.
        source: where the numbers came from.
        measurable: False when the window was shorter than the counter period (energy None).
        note: why a number is missing or degraded.
    """

    device: str
    energy_j: float | None
    mean_power_w: float | None
    peak_power_w: float | None
    start_temperature_c: float | None
    end_temperature_c: float | None
    clock_event_reasons: tuple[str, ...]
    source: Source
    measurable: bool = True
    note: str = ""


@dataclass(frozen=True)
class Measurement:
    """Result of a named window (`begin_window(name)` ... `end_window(name)`)."""

    name: str
    start_s: float
    duration_s: float
    devices: dict[str, DeviceMeasurement] = field(default_factory=dict)

    @property
    def measurable(self) -> bool:
        return all(d.measurable for d in self.devices.values())

    @property
    def total_energy_j(self) -> float | None:
        """Sum over devices; None if any device's energy is unknown."""
        vals = [d.energy_j for d in self.devices.values()]
        if not vals or any(v is None for v in vals):
            return None
        return float(sum(vals))  # type: ignore[arg-type]

    @property
    def sources(self) -> set[str]:
        return {d.source for d in self.devices.values()}
