from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from wattmoe.telemetry.base import DeviceMeasurement, DeviceSample, Measurement


@dataclass
class FakeBackend:
    """A telemetry backend whose device draws a constant power and has a fixed temperature."""

    power_w: float = 50.0
    temperature_c: float = 40.0
    name: str = "fake"
    source: str = "estimated"
    counter_period_s: float = 0.01

    def devices(self) -> list[str]:
        return ["cpu"]

    def sample(self, device: str) -> DeviceSample:
        return DeviceSample(device, time.monotonic(), None, self.power_w, self.temperature_c,
                            source=self.source)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


@dataclass
class FakeMonitor:
    """Duck-types GpuSystemMonitor: windows whose energy is power x duration."""

    backend: FakeBackend = field(default_factory=FakeBackend)
    open_windows: dict[str, float] = field(default_factory=dict)
    measurable: bool = True

    def begin_window(self, name: str) -> None:
        self.open_windows[name] = time.monotonic()

    def end_window(self, name: str) -> Measurement:
        t0 = self.open_windows.pop(name)
        dur = time.monotonic() - t0
        p = self.backend.power_w
        dm = DeviceMeasurement(
            "cpu", p * dur if self.measurable else None, p, p * 1.1, self.backend.temperature_c,
            self.backend.temperature_c, (), self.backend.source,  # type: ignore[arg-type]
            measurable=self.measurable, note="" if self.measurable else "too short",
        )
        return Measurement(name, t0, dur, {"cpu": dm})

    def counter_period_s(self, device: str) -> float:
        return self.backend.counter_period_s

    def backend_for(self, device: str) -> FakeBackend:
        return self.backend


@pytest.fixture
def fake_monitor() -> FakeMonitor:
    return FakeMonitor()
