"""Fakes at the driver boundary: pynvml functions patched with autospec, a fake powercap tree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import pynvml
import pytest

NVML_FUNCTIONS = (
    "nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetFieldValues", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature",
    "nvmlDeviceGetTemperatureThreshold", "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetCurrentClocksEventReasons",
)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H200"
    energy_mj: int = 1_000_000
    power_mw: int = 120_000
    average_mw: int = 118_000
    temperature_c: int = 40
    memory_temperature_c: int = 38
    limit_mw: int = 700_000
    slowdown_c: int = 87
    utilization_pct: int = 0
    reasons: int = 0x1  # gpu_idle
    unsupported_fields: set[int] = field(default_factory=set)
    #: function name -> NVML error codes the next calls on this GPU raise, one per call
    fail: dict[str, list[int]] = field(default_factory=dict)


class FakeNvml:
    """State behind the patched pynvml functions (errors to inject: `FakeGpu.fail`)."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.init_error: int | None = None
        self.inits = 0
        self.shutdowns = 0
        self.mocks: dict[str, mock.MagicMock] = {}

    def _check(self, name: str, gpu: FakeGpu) -> None:
        queue = gpu.fail.get(name)
        if queue:
            raise pynvml.NVMLError(queue.pop(0))

    # the driver surface, same signatures as pynvml's
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return handle.name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption", handle)
        return handle.energy_mj

    def nvmlDeviceGetFieldValues(self, handle: FakeGpu, fieldIds: list[int]):
        self._check("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        table = {
            pynvml.NVML_FI_DEV_POWER_INSTANT: handle.power_mw,
            pynvml.NVML_FI_DEV_POWER_AVERAGE: handle.average_mw,
            pynvml.NVML_FI_DEV_MEMORY_TEMP: handle.memory_temperature_c,
        }
        for v, fid in zip(values, fieldIds):
            v.fieldId = fid
            if fid in handle.unsupported_fields or fid not in table:
                v.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            v.nvmlReturn = pynvml.NVML_SUCCESS
            v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            v.value.uiVal = table[fid]
        return values

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetPowerUsage", handle)
        return handle.power_mw

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        self._check("nvmlDeviceGetTemperature", handle)
        return handle.temperature_c

    def nvmlDeviceGetTemperatureThreshold(self, handle: FakeGpu, threshold: int) -> int:
        assert threshold == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        return handle.slowdown_c

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return handle.limit_mw

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu):
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = handle.utilization_pct
        rates.memory = 0
        return rates

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return handle.reasons


UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
UUID1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@pytest.fixture
def fake_nvml() -> Iterator[FakeNvml]:
    """Two fake H200s behind every pynvml function the backend calls (autospec'd)."""
    fake = FakeNvml([FakeGpu(UUID0), FakeGpu(UUID1, energy_mj=5_000_000)])
    patchers = [mock.patch.object(pynvml, name, autospec=True, side_effect=getattr(fake, name))
                for name in NVML_FUNCTIONS]
    for p in patchers:
        fake.mocks[p.attribute] = p.start()
    try:
        yield fake
    finally:
        for p in patchers:
            p.stop()


def make_powercap(root: Path, zones: dict[str, tuple[str, int, int]]) -> Path:
    """A fake /sys/class/powercap: zone dir -> (name, energy_uj, max_energy_range_uj)."""
    for zone, (name, energy, max_range) in zones.items():
        d = root / zone
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_energy_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")
