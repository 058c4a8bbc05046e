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


# --- synthetic profiles with known answers ----------------------------------------------------

from wattmoe.cost_model.base import DeviceInfo, OpShape, ProfilePoint  # noqa: E402
from wattmoe.cost_model.database import ProfileDatabase  # noqa: E402
from wattmoe.cost_model.work import op_work  # noqa: E402

#: The "true" device used by synthetic profiles: t = T0 + flops/RATE + bytes/BW,
#: E = P_STATIC * t + E_FLOP * flops + E_BYTE * bytes.
T0, RATE, BW = 20e-6, 100e12, 2e12
P_STATIC, E_FLOP, E_BYTE = 150.0, 0.5e-12, 20e-12
TOKENS = (1, 4, 16, 64, 256, 1024)


def true_cost(op: str, tokens: int, shape: OpShape, dtype: str) -> tuple[float, float]:
    flops, byts = op_work(op, tokens, shape, dtype)
    t = T0 + flops / RATE + byts / BW
    return t, P_STATIC * t + E_FLOP * flops + E_BYTE * byts


def synthetic_point(op: str, tokens: int, shape: OpShape, dtype: str = "bf16",
                    device: str = "cuda:0", latency_s: float | None = None,
                    energy_j: float | None = None, preset: str = "") -> ProfilePoint:
    t, e = true_cost(op, tokens, shape, dtype)
    t = t if latency_s is None else latency_s
    e = e if energy_j is None else energy_j
    flops, byts = op_work(op, tokens, shape, dtype)
    return ProfilePoint(
        op=op, device=device, dtype=dtype, shape=shape, tokens=tokens,
        preset=preset or shape.key, latency_s=t, latency_p10_s=t * 0.95,
        latency_p90_s=t * 1.05, latency_iqr_s=t * 0.05, reps=30, energy_j=e,
        source="measured", window_s=1.0, window_calls=max(1, int(1 / t)),
        avg_power_w=e / t, peak_power_w=e / t * 1.1, flops=flops, bytes_moved=byts,
    )


def synthetic_db(points: list[ProfilePoint], idle_power_w: float = 80.0) -> ProfileDatabase:
    devices = {d: DeviceInfo(d, f"fake {d}", "measured", 0.1, 1.0, idle_power_w, 30.0, 700.0)
               for d in {p.device for p in points}}
    return ProfileDatabase(points=points, devices=devices,
                           provenance={"machine": {"hostname": "test"}, "commit": "abc",
                                       "command": "pytest"})


SHAPE_A = OpShape(1024, 512)
SHAPE_B = OpShape(1024, 4096)


@pytest.fixture
def linear_db() -> ProfileDatabase:
    """Two expert shapes on a device that follows the linear model exactly."""
    pts = [synthetic_point("expert", n, s, dt) for s in (SHAPE_A, SHAPE_B)
           for n in TOKENS for dt in ("bf16", "fp32")]
    return synthetic_db(pts)
