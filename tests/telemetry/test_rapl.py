from __future__ import annotations

from pathlib import Path

import pytest

from tests.telemetry.conftest import make_powercap, set_energy_uj
from wattmoe.telemetry import GpuSystemMonitor, RaplBackend
from wattmoe.telemetry.base import BackendUnavailable

MAX = 262_143_328_850  # a real max_energy_range_uj


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    root = make_powercap(tmp_path / "powercap", {
        "intel-rapl:0": ("package-0", MAX - 1_000_000, MAX),
        "intel-rapl:1": ("package-1", 5_000_000, MAX),
        "intel-rapl:0:0": ("core", 7, MAX),      # sub-zone: not added
        "intel-rapl:0:1": ("dram", 7, MAX),
        "intel-rapl-mmio:0": ("package-0", 7, MAX),  # duplicate of package-0: not added
    })
    return root


def test_only_package_zones_are_summed(powercap: Path) -> None:
    b = RaplBackend(powercap)
    assert b.zones == ["intel-rapl:0 (package-0)", "intel-rapl:1 (package-1)"]
    assert b.devices() == ["cpu"]
    assert b.energy_j() == pytest.approx((MAX - 1_000_000 + 5_000_000) / 1e6)


def test_wraparound(powercap: Path) -> None:
    b = RaplBackend(powercap)
    e0 = b.energy_j()
    set_energy_uj(powercap, "intel-rapl:0", 2_000_000)  # wrapped: +3 J on package 0
    set_energy_uj(powercap, "intel-rapl:1", 6_000_000)  # +1 J on package 1
    e1 = b.energy_j()
    assert e1 - e0 == pytest.approx(4.0)
    assert b.wraps == 1
    set_energy_uj(powercap, "intel-rapl:0", 4_000_000)
    assert b.energy_j() - e1 == pytest.approx(2.0)
    assert b.wraps == 1


def test_window_across_a_wrap(powercap: Path) -> None:
    b = RaplBackend(powercap, counter_period_s=0.0)
    mon = GpuSystemMonitor(backends={"cpu": b})
    mon.begin_window("w")
    set_energy_uj(powercap, "intel-rapl:0", 500_000)  # +1.5 J through the wrap
    d = mon.end_window("w").devices["cpu"]
    assert d.energy_j == pytest.approx(1.5) and d.source == "measured"


def test_sample_power_from_counter_deltas(powercap: Path) -> None:
    b = RaplBackend(powercap)
    s0 = b.sample()
    assert s0.power_w is None and s0.source == "measured"
    set_energy_uj(powercap, "intel-rapl:1", 5_000_000 + 50_000_000)
    s1 = b.sample()
    assert s1.power_w == pytest.approx(50.0 / (s1.timestamp_s - s0.timestamp_s))


def test_unavailable_cases(tmp_path: Path, powercap: Path, monkeypatch: pytest.MonkeyPatch
                           ) -> None:
    with pytest.raises(BackendUnavailable, match="does not exist"):
        RaplBackend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendUnavailable, match="no package zone"):
        RaplBackend(tmp_path / "empty")
    real_read = Path.read_text

    def deny(self: Path, *a, **kw) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(BackendUnavailable, match=r"not readable.*root"):
        RaplBackend(powercap)
