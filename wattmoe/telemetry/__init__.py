"""Telemetry: measured GPU and CPU power, energy and temperature, with honest labels.

Backends (one protocol, `base.TelemetryBackend`), best first per device:

- `NvmlBackend` (measured): NVML energy counter, instant/average power, GPU and memory
  temperature, clock-event reasons, power limit; `cuda:N` matched to NVML by UUID.
- `RaplBackend` (measured): CPU package energy from /sys/class/powercap, with wraparound.
- `CpuBackend` (estimated): CPU power from utilization and a configurable `CpuPowerModel`.
- `SimulatedBackend` (simulated): a `SimPowerModel` with an optional first-order thermal model.
- `ReplayBackend` (replayed): plays back a CSV recorded by the monitor (csvlog.py).

`make_backends(devices)` picks one per device and logs its choice; `GpuSystemMonitor` samples
them in the background and measures named windows (`begin_window` / `end_window`).
"""

from __future__ import annotations

from wattmoe.telemetry.base import (
    SOURCES,
    BackendUnavailable,
    DeviceMeasurement,
    DeviceSample,
    Measurement,
    NotMeasurableError,
    NotSupportedError,
    Pressure,
    Source,
    TelemetryBackend,
    TelemetryError,
    TransientTelemetryError,
    UnknownDeviceError,
)
from wattmoe.telemetry.cpu import CpuBackend, CpuPowerModel
from wattmoe.telemetry.csvlog import COLUMNS as CSV_COLUMNS
from wattmoe.telemetry.csvlog import SampleCsvWriter, read_samples_csv
from wattmoe.telemetry.factory import device_kind, discover_devices, make_backends
from wattmoe.telemetry.monitor import GpuSystemMonitor, SamplerStats, WindowHandle
from wattmoe.telemetry.nvml import CLOCK_EVENT_REASONS, NvmlBackend, decode_clock_event_reasons
from wattmoe.telemetry.rapl import RaplBackend
from wattmoe.telemetry.replay import ReplayBackend
from wattmoe.telemetry.simulated import H200_LIKE, SimPowerModel, SimulatedBackend, ThermalModel

__all__ = [
    "CLOCK_EVENT_REASONS",
    "CSV_COLUMNS",
    "H200_LIKE",
    "SOURCES",
    "BackendUnavailable",
    "CpuBackend",
    "CpuPowerModel",
    "DeviceMeasurement",
    "DeviceSample",
    "GpuSystemMonitor",
    "Measurement",
    "NotMeasurableError",
    "NotSupportedError",
    "NvmlBackend",
    "Pressure",
    "RaplBackend",
    "ReplayBackend",
    "SampleCsvWriter",
    "SamplerStats",
    "SimPowerModel",
    "SimulatedBackend",
    "Source",
    "TelemetryBackend",
    "TelemetryError",
    "ThermalModel",
    "TransientTelemetryError",
    "UnknownDeviceError",
    "WindowHandle",
    "decode_clock_event_reasons",
    "device_kind",
    "discover_devices",
    "make_backends",
    "read_samples_csv",
]
