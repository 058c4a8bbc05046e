from __future__ import annotations

import logging
import time

import pynvml
import pytest

from tests.telemetry.conftest import UUID0, UUID1, FakeNvml
from wattmoe.telemetry import GpuSystemMonitor, NvmlBackend
from wattmoe.telemetry.base import (
    BackendUnavailable,
    NotSupportedError,
    TelemetryError,
    TransientTelemetryError,
    UnknownDeviceError,
)
from wattmoe.telemetry.nvml import (
    CLOCK_EVENT_REASONS,
    cuda_visible_uuids,
    decode_clock_event_reasons,
    normalize_uuid,
    nvml_errors,
)

# --- clock-event reasons -------------------------------------------------------------------


def test_reason_bits_match_pynvml_constants() -> None:
    expected = {
        "gpu_idle": "GpuIdle", "applications_clocks_setting": "ApplicationsClocksSetting",
        "sw_power_cap": "SwPowerCap", "hw_slowdown": "HwSlowdown", "sync_boost": "SyncBoost",
        "sw_thermal_slowdown": "SwThermalSlowdown", "hw_thermal_slowdown": "HwThermalSlowdown",
        "hw_power_brake_slowdown": "HwPowerBrakeSlowdown",
        "display_clock_setting": "DisplayClockSetting",
    }
    table = dict((name, bit) for bit, name in CLOCK_EVENT_REASONS)
    for ours, theirs in expected.items():
        assert table[ours] == getattr(pynvml, f"nvmlClocksEventReason{theirs}")
        assert table[ours] == getattr(pynvml, f"nvmlClocksThrottleReason{theirs}")
    assert table["board_limit"] == pynvml.nvmlClocksThrottleReasonBoardLimit
    assert table["reliability"] == pynvml.nvmlClocksThrottleReasonReliability


def test_decode_clock_event_reasons() -> None:
    assert decode_clock_event_reasons(0) == ()
    assert decode_clock_event_reasons(0x4) == ("sw_power_cap",)
    assert decode_clock_event_reasons(0x1 | 0x20 | 0x40) == (
        "gpu_idle", "sw_thermal_slowdown", "hw_thermal_slowdown")
    # unknown bits are kept, by value
    assert decode_clock_event_reasons(0x4 | 0x10000) == ("sw_power_cap", "unknown_0x10000")


# --- error translation ---------------------------------------------------------------------


@pytest.mark.parametrize(("code", "cls"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, BackendUnavailable),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, BackendUnavailable),
    (pynvml.NVML_ERROR_NO_PERMISSION, BackendUnavailable),
    (pynvml.NVML_ERROR_NOT_SUPPORTED, NotSupportedError),
    (pynvml.NVML_ERROR_NOT_FOUND, UnknownDeviceError),
    (pynvml.NVML_ERROR_TIMEOUT, TransientTelemetryError),
    (pynvml.NVML_ERROR_UNKNOWN, TransientTelemetryError),
    (pynvml.NVML_ERROR_GPU_IS_LOST, TelemetryError),
])
def test_nvml_errors_are_translated_in_one_place(code: int, cls: type) -> None:
    with pytest.raises(cls) as info, nvml_errors("cuda:0: reading energy"):
        raise pynvml.NVMLError(code)
    assert type(info.value) is cls
    assert str(info.value).startswith("cuda:0: reading energy: ")
    assert f"NVML error {code}" in str(info.value)
    assert isinstance(info.value.__cause__, pynvml.NVMLError)


# --- device matching -----------------------------------------------------------------------


def test_uuid_normalization() -> None:
    assert normalize_uuid("GPU-AbC-1") == "abc-1"
    assert normalize_uuid(b"GPU-abc-1") == "abc-1"
    assert normalize_uuid("abc-1") == "abc-1"  # torch's form has no prefix


def test_cuda_visible_devices_are_matched_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = [normalize_uuid(UUID0), normalize_uuid(UUID1)]
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # no torch to ask
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", UUID1)
    assert cuda_visible_uuids(nvml) == [nvml[1]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa")  # unique prefix, as CUDA allows
    assert cuda_visible_uuids(nvml) == [nvml[1]]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert cuda_visible_uuids(nvml) == [nvml[1], nvml[0]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,7,0")  # CUDA stops at the first bad entry
    assert cuda_visible_uuids(nvml) == [nvml[1]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cuda_visible_uuids(nvml) == []


def test_backend_names_devices_as_cuda_sees_them(fake_nvml: FakeNvml) -> None:
    # CUDA_VISIBLE_DEVICES=1 in a Ray actor: cuda:0 is NVML's device 1
    b = NvmlBackend(cuda_uuids=[UUID1.removeprefix("GPU-")])
    try:
        assert b.devices() == ["cuda:0"]
        assert b.uuid("cuda:0") == UUID1
        assert b.energy_j("cuda:0") == pytest.approx(5000.0)
        assert b.resolve(UUID1) == "cuda:0"
        assert b.resolve("cuda") == "cuda:0"
        with pytest.raises(UnknownDeviceError, match=r"unknown GPU 'cuda:1'.*cuda:0"):
            b.sample("cuda:1")
    finally:
        b.close()
    assert fake_nvml.inits == fake_nvml.shutdowns == 1
    b.close()  # idempotent
    assert fake_nvml.shutdowns == 1


# --- readings ------------------------------------------------------------------------------


def test_sample_reads_every_quantity(fake_nvml: FakeNvml) -> None:
    g = fake_nvml.gpus[0]
    g.power_mw, g.average_mw, g.utilization_pct, g.reasons = 650_500, 640_000, 97, 0x4
    b = NvmlBackend(cuda_uuids=[UUID0, UUID1])
    s = b.sample("cuda:0")
    assert s.source == "measured" and not s.missing
    assert s.energy_j == pytest.approx(1000.0)
    assert s.power_w == pytest.approx(650.5)  # instant field value
    assert s.power_average_w == pytest.approx(640.0)
    assert s.temperature_c == 40 and s.memory_temperature_c == 38
    assert s.power_limit_w == pytest.approx(700.0)
    assert s.utilization == pytest.approx(0.97)
    assert s.clock_event_reasons == ("sw_power_cap",)
    assert b.slowdown_temperature_c("cuda:0") == 87
    # one field-values call covers instant and average power and memory temperature
    (call,) = fake_nvml.mocks["nvmlDeviceGetFieldValues"].call_args_list
    assert call.args[1] == [pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_POWER_AVERAGE,
                            pynvml.NVML_FI_DEV_MEMORY_TEMP]
    fake_nvml.mocks["nvmlDeviceGetPowerUsage"].assert_not_called()
    b.close()


def test_unsupported_fields_fall_back_and_are_not_asked_again(fake_nvml: FakeNvml) -> None:
    g = fake_nvml.gpus[0]
    g.unsupported_fields = {pynvml.NVML_FI_DEV_POWER_INSTANT, pynvml.NVML_FI_DEV_MEMORY_TEMP}
    b = NvmlBackend(cuda_uuids=[UUID0])
    s1 = b.sample("cuda:0")
    s2 = b.sample("cuda:0")
    assert s1.power_w == s2.power_w == pytest.approx(120.0)  # nvmlDeviceGetPowerUsage
    assert s1.memory_temperature_c is None
    assert fake_nvml.mocks["nvmlDeviceGetFieldValues"].call_args_list[-1].args[1] == [
        pynvml.NVML_FI_DEV_POWER_AVERAGE]
    b.close()


def test_slow_quantities_are_read_at_most_once_per_slow_period(fake_nvml: FakeNvml) -> None:
    b = NvmlBackend(cuda_uuids=[UUID0], slow_period_s=60.0, energy_period_s=0.0)
    g = fake_nvml.gpus[0]
    s1 = b.sample("cuda:0")
    g.temperature_c, g.reasons, g.power_mw, g.energy_mj = 70, 0x4, 690_000, g.energy_mj + 5
    s2 = b.sample("cuda:0")
    # energy and power every sample (2 NVML calls); temperature/reasons/utilization cached
    assert s2.power_w == pytest.approx(690.0) and s2.energy_j == pytest.approx(1000.005)
    assert s2.temperature_c == s1.temperature_c == 40
    assert s2.clock_event_reasons == ("gpu_idle",)
    for name in ("nvmlDeviceGetTemperature", "nvmlDeviceGetUtilizationRates",
                 "nvmlDeviceGetCurrentClocksEventReasons"):
        assert fake_nvml.mocks[name].call_count == 1
    assert fake_nvml.mocks["nvmlDeviceGetTotalEnergyConsumption"].call_count == 2
    assert fake_nvml.mocks["nvmlDeviceGetFieldValues"].call_count == 2
    b.close()


def test_energy_counter_is_read_into_samples_once_per_energy_period(
        fake_nvml: FakeNvml) -> None:
    b = NvmlBackend(cuda_uuids=[UUID0], energy_period_s=60.0)
    g = fake_nvml.gpus[0]
    reads = fake_nvml.mocks["nvmlDeviceGetTotalEnergyConsumption"]
    s1 = b.sample("cuda:0")
    g.energy_mj += 7_000
    s2 = b.sample("cuda:0")
    assert s1.energy_j == pytest.approx(1000.0)
    assert s2.energy_j is None and s2.power_w == pytest.approx(120.0) and not s2.missing
    assert reads.call_count == 1
    # window edges read the counter directly, whatever the sampling period
    assert b.energy_j("cuda:0") == pytest.approx(1007.0)
    b.close()


def test_not_supported_reading_is_none_not_an_error(fake_nvml: FakeNvml) -> None:
    fake_nvml.gpus[0].fail["nvmlDeviceGetTemperature"] = [pynvml.NVML_ERROR_NOT_SUPPORTED]
    b = NvmlBackend(cuda_uuids=[UUID0], slow_period_s=0.0)
    assert b.sample("cuda:0").temperature_c is None
    assert b.sample("cuda:0").temperature_c is None  # remembered: not called again
    assert fake_nvml.mocks["nvmlDeviceGetTemperature"].call_count == 1
    b.close()


def test_nvml_absent_is_backend_unavailable(fake_nvml: FakeNvml) -> None:
    fake_nvml.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    with pytest.raises(BackendUnavailable, match=r"NVML unavailable.*Library Not Found"):
        NvmlBackend()


def test_bindings_absent_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    with pytest.raises(BackendUnavailable, match="nvidia-ml-py"):
        NvmlBackend()


# --- windows on NVML -----------------------------------------------------------------------


def _monitor(fake: FakeNvml, period: float = 0.0, **kw) -> GpuSystemMonitor:
    b = NvmlBackend(cuda_uuids=[UUID0, UUID1], counter_period_s=period, slow_period_s=0.0,
                    energy_period_s=0.0)
    return GpuSystemMonitor(backends={d: b for d in b.devices()}, **kw)


def test_window_energy_is_the_counter_delta_read_at_the_edges(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml)
    energy_reads = fake_nvml.mocks["nvmlDeviceGetTotalEnergyConsumption"]
    mon.begin_window("w")
    assert energy_reads.call_count >= 2  # read directly, no sampler running
    fake_nvml.gpus[0].energy_mj += 12_345
    fake_nvml.gpus[1].energy_mj += 500
    # long enough that the edges' own reading times (~1 ms apart on a loaded 2-core machine)
    # are small next to it: with 10 ms the mean power below missed by 8% in one CI run
    time.sleep(0.1)
    m = mon.end_window("w")
    d0, d1 = m.devices["cuda:0"], m.devices["cuda:1"]
    assert d0.energy_j == pytest.approx(12.345) and d1.energy_j == pytest.approx(0.5)
    assert m.total_energy_j == pytest.approx(12.845)
    assert d0.mean_power_w == pytest.approx(12.345 / m.duration_s, rel=0.05)
    assert d0.source == "measured" and m.measurable
    assert d0.start_temperature_c == 40 and d0.end_temperature_c == 40
    assert "sampler not running" in d0.note


def test_overlapping_windows(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml)
    g = fake_nvml.gpus[0]
    mon.begin_window("outer")
    g.energy_mj += 1000
    mon.begin_window("inner")
    g.energy_mj += 2000
    with mon.window("nested") as w:
        g.energy_mj += 4000
    g.energy_mj += 8000
    inner = mon.end_window("inner")
    g.energy_mj += 16000
    outer = mon.end_window("outer")
    assert w.measurement is not None
    assert w.measurement.devices["cuda:0"].energy_j == pytest.approx(4.0)
    assert inner.devices["cuda:0"].energy_j == pytest.approx(14.0)
    assert outer.devices["cuda:0"].energy_j == pytest.approx(31.0)
    assert mon.open_windows == []


def test_short_window_is_not_measurable_never_zero_joules(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml, period=0.1)
    with mon.window("burst") as w:
        pass  # the counter did not tick: a naive delta would say 0 J
    m = w.measurement
    assert m is not None and not m.measurable
    d = m.devices["cuda:0"]
    assert d.energy_j is None and not d.measurable
    assert "shorter than the 100 ms counter update period" in d.note
    assert m.total_energy_j is None


def test_transient_errors_mark_samples_missing_and_log_once(
        fake_nvml: FakeNvml, caplog: pytest.LogCaptureFixture) -> None:
    mon = _monitor(fake_nvml)
    g = fake_nvml.gpus[0]
    timeout = pynvml.NVML_ERROR_TIMEOUT
    g.fail["nvmlDeviceGetTotalEnergyConsumption"] = [timeout]
    mon.begin_window("w")  # the begin edge of cuda:0 has no energy
    g.fail["nvmlDeviceGetTotalEnergyConsumption"] = [timeout, timeout]
    caplog.set_level(logging.DEBUG, logger="wattmoe.telemetry.monitor")
    r1, r2, r3 = mon.sample_once(), mon.sample_once(), mon.sample_once()
    assert r1["cuda:0"].missing and r2["cuda:0"].missing and not r3["cuda:0"].missing
    assert r1["cuda:0"].energy_j is None and r1["cuda:0"].source == "measured"
    assert not any(r["cuda:1"].missing for r in (r1, r2, r3))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "logged once, not per failure"
    assert "cuda:0" in warnings[0].getMessage() and "Timeout" in warnings[0].getMessage()
    assert any("back after 2 missing" in r.getMessage() for r in caplog.records)
    latest = mon.latest("cuda:0")
    assert latest is not None and not latest.missing
    assert [s.missing for s in mon.history("cuda:0")] == [True, True, False]
    d = mon.end_window("w").devices["cuda:0"]
    # no counter delta: the energy falls back to the one good polled power sample, and says so
    assert "begin: energy read failed" in d.note and "polled power" in d.note
    assert d.mean_power_w == pytest.approx(120.0) and d.energy_j is not None and d.energy_j > 0
    assert "2 of 3 samples missing" in d.note


def test_sampler_thread_survives_transient_errors(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml, interval_s=0.005)
    fake_nvml.gpus[1].fail["nvmlDeviceGetCurrentClocksEventReasons"] = [
        pynvml.NVML_ERROR_UNKNOWN] * 5
    with mon:
        deadline = time.monotonic() + 5
        while mon.sampler_stats().ticks < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mon.running
    stats = mon.sampler_stats()
    assert stats.missing == 5
    assert stats.ticks >= 10 and stats.samples >= 2 * 10
    assert not mon.running


def test_window_collects_peak_power_and_reasons_from_the_sampler(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml)
    g = fake_nvml.gpus[0]
    mon.begin_window("w")
    for mw, reasons in ((300_000, 0x0), (699_000, 0x4), (500_000, 0x0)):
        g.power_mw, g.reasons = mw, reasons
        g.energy_mj += 50_000
        mon.sample_once()
    g.reasons = 0x0
    m = mon.end_window("w")
    d = m.devices["cuda:0"]
    assert d.peak_power_w == pytest.approx(699.0)
    assert "sw_power_cap" in d.clock_event_reasons
    assert d.energy_j == pytest.approx(150.0)


def test_pressure_from_nvml(fake_nvml: FakeNvml) -> None:
    mon = _monitor(fake_nvml)
    g = fake_nvml.gpus[0]
    g.temperature_c, g.power_mw, g.reasons = 58, 350_000, 0
    mon.sample_once()
    p = mon.pressure("cuda:0")
    assert p.thermal == pytest.approx((58 - 30) / (87 - 30))
    assert p.power == pytest.approx(0.5)
    assert mon.pressure("cuda:0", power_budget_w=500).power == pytest.approx(0.7)
    g.reasons = 0x4 | 0x20  # power-capped and thermally slowed
    mon.sample_once()
    assert mon.pressure("cuda:0") == type(p)(thermal=1.0, power=1.0)
