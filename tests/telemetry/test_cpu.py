from __future__ import annotations

from collections import namedtuple

import pytest

from wattmoe.errors import ConfigError
from wattmoe.telemetry import CpuBackend, CpuPowerModel, GpuSystemMonitor

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


class FakeCpu:
    """Cumulative cpu_times and a clock advanced by hand."""

    def __init__(self) -> None:
        self.t = 100.0
        self.busy = 0.0
        self.idle = 0.0

    def run(self, seconds: float, utilization: float, cpus: int) -> None:
        self.t += seconds
        self.busy += seconds * cpus * utilization
        self.idle += seconds * cpus * (1 - utilization)

    def times(self) -> Times:
        # guest is inside user on Linux and must not be counted twice; steal is not busy
        return Times(self.busy * 0.75, 0.0, self.busy * 0.25, self.idle, 0.0, 0.0, 0.0, 0.0,
                     self.busy * 0.5, 0.0)


def test_power_model() -> None:
    m = CpuPowerModel(idle_w_per_cpu=1.0, max_w_per_cpu=3.0, num_cpus=4)
    assert (m.idle_w, m.max_w) == (4.0, 12.0)
    assert m.power_w(0.5) == pytest.approx(8.0)
    assert m.power_w(2.0) == pytest.approx(12.0)  # clipped
    s = CpuPowerModel.per_socket(idle_w=100, max_w=350, sockets=2, num_cpus=100)
    assert (s.idle_w, s.max_w) == pytest.approx((200.0, 700.0))
    d = CpuPowerModel()
    assert (d.idle_w_per_cpu, d.max_w_per_cpu) == (0.74, 3.5)


@pytest.mark.parametrize("kw", [{"idle_w_per_cpu": -1}, {"max_w_per_cpu": 0.1},
                                {"num_cpus": 0}, {"idle_w_per_cpu": float("nan")}])
def test_bad_model_is_a_config_error(kw: dict) -> None:
    with pytest.raises(ConfigError, match="CpuPowerModel"):
        CpuPowerModel(**kw)


def test_estimate_integrates_utilization() -> None:
    fake = FakeCpu()
    b = CpuBackend(CpuPowerModel(1.0, 3.0, num_cpus=2), clock=lambda: fake.t,
                   cpu_times=fake.times)
    e0 = b.energy_j()
    fake.run(1.0, 0.5, cpus=2)   # 2 * (1 + 2 * 0.5) = 4 W for 1 s
    e1 = b.energy_j()
    fake.run(2.0, 1.0, cpus=2)   # 6 W for 2 s
    s = b.sample()
    assert e1 - e0 == pytest.approx(4.0)
    assert s.energy_j - e1 == pytest.approx(12.0)
    assert s.utilization == pytest.approx(1.0)
    assert s.source == "estimated" and s.power_limit_w == pytest.approx(6.0)


def test_cpu_window_is_labeled_estimated() -> None:
    mon = GpuSystemMonitor(["cpu"])
    try:
        assert mon.backend_for("cpu").source == "estimated"
        mon.start()
        with mon.window("w") as w:
            sum(i * i for i in range(200_000))
        d = w.measurement.devices["cpu"]  # type: ignore[union-attr]
        assert d.source == "estimated"
        assert w.measurement.sources == {"estimated"}  # type: ignore[union-attr]
    finally:
        mon.close()
