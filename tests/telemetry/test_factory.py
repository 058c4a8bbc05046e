from __future__ import annotations

import logging

import pynvml
import pytest

from tests.telemetry.conftest import UUID1, FakeNvml, make_powercap
from wattmoe.telemetry import (
    CpuBackend,
    GpuSystemMonitor,
    NvmlBackend,
    RaplBackend,
    SimulatedBackend,
    make_backends,
)
from wattmoe.telemetry.base import BackendUnavailable, UnknownDeviceError


@pytest.fixture(autouse=True)
def _no_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # this machine, CI and the GPU machine have no powercap tree; make sure of it
    monkeypatch.setattr("wattmoe.telemetry.factory.POWERCAP_ROOT", str(tmp_path / "none"))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


def test_every_device_found(fake_nvml: FakeNvml, tmp_path) -> None:
    backends = make_backends(powercap_root=tmp_path / "none")
    assert list(backends) == ["cuda:0", "cuda:1", "cpu"]
    assert isinstance(backends["cuda:0"], NvmlBackend)
    assert backends["cuda:0"] is backends["cuda:1"]  # one NVML backend for all GPUs
    assert isinstance(backends["cpu"], CpuBackend) and backends["cpu"].source == "estimated"


def test_uuid_names_resolve_to_cuda_names(fake_nvml: FakeNvml, tmp_path) -> None:
    backends = make_backends([UUID1, "cpu"], powercap_root=tmp_path / "none")
    assert list(backends) == ["cuda:1", "cpu"]


def test_nvml_absent_falls_back_with_one_clear_message(
        fake_nvml: FakeNvml, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    fake_nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    caplog.set_level(logging.INFO, logger="wattmoe.telemetry")
    backends = make_backends(["cuda:0", "cpu"], powercap_root=tmp_path / "none")
    assert isinstance(backends["cuda:0"], SimulatedBackend)
    assert backends["cuda:0"].sample("cuda:0").source == "simulated"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cuda:0" in warnings[0] and "NVML Shared Library Not Found" in warnings[0]
    assert "simulated" in warnings[0]
    # discovery without NVML: no GPU, just the CPU, and no warning
    caplog.clear()
    assert list(make_backends(powercap_root=tmp_path / "none")) == ["cpu"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_nvml_absent_can_refuse_instead_of_simulating(fake_nvml: FakeNvml, tmp_path) -> None:
    fake_nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with pytest.raises(BackendUnavailable, match=r"cuda:0.*Driver Not Loaded"):
        make_backends(["cuda:0"], gpu_fallback_model=None)


def test_monitor_falls_back_rather_than_crashing(fake_nvml: FakeNvml) -> None:
    fake_nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    mon = GpuSystemMonitor(["cuda:0", "cpu"])
    assert mon.backend_for("cuda:0").source == "simulated"
    assert mon.backend_for("cpu").source == "estimated"
    mon.close()


def test_rapl_preferred_when_readable(tmp_path) -> None:
    root = make_powercap(tmp_path / "powercap", {"intel-rapl:0": ("package-0", 10, 2**32)})
    backends = make_backends(["cpu"], powercap_root=root)
    assert isinstance(backends["cpu"], RaplBackend) and backends["cpu"].source == "measured"


@pytest.mark.parametrize("name", ["tpu:0", "cuda:x", "gpu0", "", "CPU0"])
def test_unknown_device_names(name: str) -> None:
    with pytest.raises(UnknownDeviceError, match="unknown device"):
        make_backends([name])


def test_unknown_gpu_index_is_an_error_not_a_fallback(fake_nvml: FakeNvml) -> None:
    with pytest.raises(UnknownDeviceError, match=r"unknown GPU 'cuda:5'.*cuda:0, cuda:1"):
        make_backends(["cuda:5"])
    assert fake_nvml.shutdowns == fake_nvml.inits  # nothing left initialized


def test_sim_devices(tmp_path) -> None:
    backends = make_backends(["sim:0", "sim:1"])
    assert set(backends) == {"sim:0", "sim:1"}
    assert all(b.source == "simulated" for b in backends.values())
