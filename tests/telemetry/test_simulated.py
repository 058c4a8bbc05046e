from __future__ import annotations

import math

import pytest

from wattmoe.errors import ConfigError
from wattmoe.telemetry import SimPowerModel, SimulatedBackend, ThermalModel
from wattmoe.telemetry.base import UnknownDeviceError


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_energy_is_the_exact_integral_of_the_power_model() -> None:
    clock = Clock()
    b = SimulatedBackend({"sim:0": SimPowerModel(idle_w=80, dynamic_w=620)}, clock=clock)
    clock.t = 2.0                     # idle 2 s: 160 J
    b.set_utilization("sim:0", 0.5)
    clock.t = 3.0                     # 390 W for 1 s
    b.set_utilization("sim:0", 1.0)
    clock.t = 3.5                     # 700 W for 0.5 s
    s = b.sample("sim:0")
    assert s.energy_j == pytest.approx(160 + 390 + 350)
    assert s.power_w == 700 and s.source == "simulated"
    assert s.clock_event_reasons == ()


def test_power_cap_and_reasons() -> None:
    clock = Clock()
    b = SimulatedBackend({"g": SimPowerModel(80, 800, power_limit_w=700)}, clock=clock)
    assert b.sample("g").clock_event_reasons == ("gpu_idle",)
    b.set_utilization("g", 1.0)
    s = b.sample("g")
    assert s.power_w == 700 and "sw_power_cap" in s.clock_event_reasons


def test_first_order_thermal_model() -> None:
    clock = Clock()
    th = ThermalModel(ambient_c=30, resistance_c_per_w=0.05, time_constant_s=10, slowdown_c=60)
    b = SimulatedBackend({"g": SimPowerModel(100, 600, thermal=th)}, clock=clock)
    assert b.sample("g").temperature_c == pytest.approx(35.0)  # steady state at idle
    b.set_utilization("g", 1.0)       # 700 W: steady 65 C
    clock.t = 10.0                    # one time constant: 63 % of the way
    assert b.sample("g").temperature_c == pytest.approx(65 - 30 * math.exp(-1))
    clock.t = 200.0
    s = b.sample("g")
    assert s.temperature_c == pytest.approx(65.0, abs=1e-3)
    assert "sw_thermal_slowdown" in s.clock_event_reasons
    assert b.slowdown_temperature_c("g") == 60


def test_utilization_function() -> None:
    clock = Clock()
    b = SimulatedBackend({"g": SimPowerModel(0, 100)}, clock=clock,
                         utilization=lambda dev, t: 1.0 if t >= 1.0 else 0.0)
    clock.t = 1.0
    assert b.energy_j("g") == 0.0     # utilization was 0 until the read at t=1
    clock.t = 3.0
    assert b.energy_j("g") == pytest.approx(200.0)


def test_bad_models_and_names() -> None:
    with pytest.raises(ConfigError):
        SimPowerModel(idle_w=-1, dynamic_w=1)
    with pytest.raises(ConfigError):
        ThermalModel(time_constant_s=0)
    nan = float("nan")
    # was: accepted, and every reading (power, energy, temperature) was NaN
    for bad in ({"idle_w": nan, "dynamic_w": 1}, {"idle_w": 1, "dynamic_w": float("inf")},
                {"idle_w": 1, "dynamic_w": 1, "power_limit_w": nan}):
        with pytest.raises(ConfigError, match="SimPowerModel"):
            SimPowerModel(**bad)
    for bad in ({"time_constant_s": nan}, {"resistance_c_per_w": nan}, {"ambient_c": nan}):
        with pytest.raises(ConfigError, match="ThermalModel"):
            ThermalModel(**bad)
    with pytest.raises(ConfigError, match="utilization"):
        SimulatedBackend().set_utilization("sim:0", nan)
    with pytest.raises(UnknownDeviceError, match="sim:0"):
        SimulatedBackend().sample("sim:9")
