"""NVML backend: measured GPU energy, power, temperature and clock-event reasons.

Energy comes from NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since
the driver was loaded), which updates about every 100 ms on Hopper (shared/gpu/README.md).
Power comes from the `NVML_FI_DEV_POWER_INSTANT` and `_AVERAGE` field values when the driver
has them (one `nvmlDeviceGetFieldValues` call), else from `nvmlDeviceGetPowerUsage`.

Devices are named `cuda:N` as CUDA (torch, Ray actors) numbers them, matched to NVML devices
by UUID: NVML ignores `CUDA_VISIBLE_DEVICES`, so NVML index N is not in general CUDA device N.
A device can also be named by its UUID (`GPU-...`). MIG instances are not supported (NVML's
energy counter belongs to the whole GPU).

Every `pynvml.NVMLError` is translated into the telemetry error hierarchy in one place,
`nvml_errors`; nothing outside this module sees a pynvml exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from wattmoe.telemetry.base import (
    BackendUnavailable,
    DeviceSample,
    NotSupportedError,
    Source,
    TelemetryError,
    TransientTelemetryError,
    UnknownDeviceError,
)

logger = logging.getLogger(__name__)

#: Update period of NVML's energy counter and power readings, as seen on an H200
#: (shared/gpu/README.md: ~10 updates a second).
NVML_COUNTER_PERIOD_S = 0.1

#: Clock-event ("throttle") reason bits and their names. Values equal pynvml's
#: `nvmlClocksEventReason*` (0x1-0x100) and `nvmlClocksThrottleReason*` (0x200, 0x400, older
#: drivers only) constants; tests/telemetry/test_nvml.py checks them against pynvml.
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
#: Reasons that mean "too hot" and "at the power limit" (used by pressure signals).
THERMAL_REASONS = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown"})
POWER_REASONS = frozenset({"sw_power_cap", "hw_power_brake_slowdown"})


def decode_clock_event_reasons(mask: int) -> tuple[str, ...]:
    """Names of the bits set in a clock-event reason mask, lowest bit first.

    Bits without a known name come back as `unknown_0x...` rather than being dropped.
    """
    mask = int(mask)
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = 0
    for bit, _ in CLOCK_EVENT_REASONS:
        known |= bit
    rest = mask & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return tuple(names)


# --- the pynvml boundary ----------------------------------------------------------------------


def import_pynvml() -> ModuleType:
    """Imports NVIDIA's official bindings (`nvidia-ml-py`); BackendUnavailable when absent."""
    try:
        import pynvml
    except ImportError as exc:
        raise BackendUnavailable(
            "NVML unavailable: the Python bindings are not installed (pip install nvidia-ml-py)"
        ) from exc
    if not hasattr(pynvml, "nvmlDeviceGetFieldValues"):
        raise BackendUnavailable(
            f"NVML unavailable: {getattr(pynvml, '__file__', 'pynvml')} is not NVIDIA's "
            "nvidia-ml-py (uninstall the unofficial 'pynvml' package)"
        )
    return pynvml


_ERROR_CLASSES: tuple[tuple[type[TelemetryError], tuple[str, ...]], ...] = (
    (BackendUnavailable, ("UNINITIALIZED", "DRIVER_NOT_LOADED", "LIBRARY_NOT_FOUND",
                          "NO_PERMISSION", "LIB_RM_VERSION_MISMATCH", "OPERATING_SYSTEM")),
    (NotSupportedError, ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND")),
    (UnknownDeviceError, ("NOT_FOUND", "GPU_NOT_FOUND")),
    (TransientTelemetryError, ("TIMEOUT", "IRQ_ISSUE", "UNKNOWN", "NO_DATA", "NOT_READY",
                               "IN_USE", "INSUFFICIENT_RESOURCES", "MEMORY")),
)


def translate_nvml_error(exc: BaseException, what: str) -> TelemetryError:
    """Maps a `pynvml.NVMLError` (by its code) to the telemetry error hierarchy.

    GPU_IS_LOST, RESET_REQUIRED, CORRUPTED_INFOROM and codes not listed become a plain
    `TelemetryError`; the message keeps NVML's own text and the code.
    """
    pynvml = sys.modules.get("pynvml")
    code = getattr(exc, "value", None)
    cls: type[TelemetryError] = TelemetryError
    if pynvml is not None and code is not None:
        for candidate, names in _ERROR_CLASSES:
            if any(getattr(pynvml, f"NVML_ERROR_{n}", object()) == code for n in names):
                cls = candidate
                break
    return cls(f"{what}: {exc} (NVML error {code})")


@contextlib.contextmanager
def nvml_errors(what: str) -> Iterator[None]:
    """Context manager (and decorator) translating NVML errors raised inside it.

    Args:
        what: what was being done, for the message ('cuda:0: reading energy').
    """
    pynvml = sys.modules.get("pynvml")
    nvml_error: type[BaseException] = getattr(pynvml, "NVMLError", ()) if pynvml else ()  # type: ignore[assignment]
    try:
        yield
    except nvml_error as exc:  # type: ignore[misc]
        raise translate_nvml_error(exc, what) from exc


def _field_value(fv: Any) -> float:
    """The numeric value of one `c_nvmlFieldValue_t`, read by its value type."""
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
              6: "usVal"}.get(int(fv.valueType), "uiVal")
    return float(getattr(fv.value, member))


# --- CUDA <-> NVML device matching ------------------------------------------------------------


def normalize_uuid(uuid: object) -> str:
    """'GPU-4B1C...' / b'GPU-4b1c...' / torch's '4b1c...' -> '4b1c...' (lowercase, no prefix)."""
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def _torch_cuda_uuids() -> list[str] | None:
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return [normalize_uuid(torch.cuda.get_device_properties(i).uuid)
                for i in range(torch.cuda.device_count())]
    except (RuntimeError, AttributeError) as exc:
        logger.debug("torch could not list CUDA device UUIDs: %s", exc)
        return None


def cuda_visible_uuids(nvml_uuids: Sequence[str]) -> list[str]:
    """UUIDs (normalized) of the GPUs CUDA numbers 0, 1, ... in this process.

    Args:
        nvml_uuids: normalized UUIDs in NVML index order (PCI bus order).

    Uses torch's answer when torch is already imported; otherwise reads CUDA_VISIBLE_DEVICES
    (UUIDs, or indices when CUDA_DEVICE_ORDER=PCI_BUS_ID or there is one GPU) and imports
    torch only when that is ambiguous (indices or no variable, several GPUs, fastest-first
    order). Without torch it assumes PCI order and warns.
    """
    if "torch" in sys.modules and (found := _torch_cuda_uuids()):
        return found
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    pci_order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") == "PCI_BUS_ID"
    entries = [] if env is None else [e.strip() for e in env.split(",")]
    uses_uuids = bool(entries) and all(e.lower().startswith(("gpu-", "mig-")) for e in entries)
    if env is not None and (uses_uuids or env.strip() == ""):
        return _parse_visible(entries, nvml_uuids)
    if len(nvml_uuids) <= 1 or pci_order:
        return _parse_visible(entries, nvml_uuids) if env is not None else list(nvml_uuids)
    found = _torch_cuda_uuids()
    if found is not None:
        return found
    logger.warning(
        "cannot ask CUDA for device UUIDs (no torch); assuming CUDA numbers GPUs in PCI bus "
        "order. Set CUDA_DEVICE_ORDER=PCI_BUS_ID or list UUIDs in CUDA_VISIBLE_DEVICES to be sure."
    )
    return _parse_visible(entries, nvml_uuids) if env is not None else list(nvml_uuids)


def _parse_visible(entries: Sequence[str], nvml_uuids: Sequence[str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES semantics: indices or UUID prefixes; parsing stops at the first
    invalid entry (as CUDA does)."""
    out: list[str] = []
    for entry in entries:
        if not entry:
            break
        if entry.isdigit():
            i = int(entry)
            if i >= len(nvml_uuids):
                break
            out.append(nvml_uuids[i])
            continue
        if entry.lower().startswith("mig-"):
            logger.warning("MIG device %s: not supported by telemetry (skipped)", entry)
            break
        prefix = normalize_uuid(entry)
        matches = [u for u in nvml_uuids if u.startswith(prefix)]
        if len(matches) != 1:
            break
        out.append(matches[0])
    return out


# --- the backend ------------------------------------------------------------------------------

_ENERGY = "energy"
_POWER = "power"
_FIELDS = "fields"
_TEMPERATURE = "temperature"
_UTILIZATION = "utilization"
_REASONS = "reasons"
_LIMIT = "limit"


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str  # normalized
    model: str
    unsupported: set[str] = field(default_factory=set)
    unsupported_fields: set[int] = field(default_factory=set)
    limit_w: float | None = None
    limit_read_s: float = float("-inf")
    slowdown_c: float | None = None
    slowdown_read: bool = False
    slow_read_s: float = float("-inf")
    slow: tuple[float | None, float | None, tuple[str, ...]] = (None, None, ())
    energy_read_s: float = float("-inf")


class NvmlBackend:
    """NVIDIA GPUs through NVML (`source = 'measured'`).

    Args:
        cuda_uuids: UUIDs of the GPUs CUDA numbers 0, 1, ... (tests, or callers that know);
            None asks `cuda_visible_uuids`.
        counter_period_s: update period of the energy counter.
        read_utilization: also read `nvmlDeviceGetUtilizationRates`.
        limit_refresh_s: how often the enforced power limit is re-read (it rarely changes).
        slow_period_s: temperature, utilization and clock-event reasons are read at most this
            often (samples in between repeat the last values); instant and average power and
            memory temperature are read in every sample. 0 = read everything every sample.
        energy_period_s: the energy counter is read into samples at most this often (samples in
            between have `energy_j=None`). Window energies never depend on it: `energy_j()`
            reads the counter directly at each window's edges. On the H200 machine one counter
            read costs ~3.5 ms of CPU while every other NVML read costs ~2-9 us
            (results/h200/telemetry/sampler_overhead), so reading it at 10 Hz alone costs 3.5%
            of a core; at the default 1 Hz the sampler stays under 1%. 0 = every sample.

    Raises:
        BackendUnavailable: no bindings, no driver, no permission, or no GPU.
    """

    name = "nvml"
    source: Source = "measured"

    def __init__(
        self,
        cuda_uuids: Sequence[str] | None = None,
        *,
        counter_period_s: float = NVML_COUNTER_PERIOD_S,
        read_utilization: bool = True,
        limit_refresh_s: float = 5.0,
        slow_period_s: float = 1.0,
        energy_period_s: float = 1.0,
    ) -> None:
        self.counter_period_s = float(counter_period_s)
        self.slow_period_s = float(slow_period_s)
        self.energy_period_s = float(energy_period_s)
        self._read_utilization = read_utilization
        self._limit_refresh_s = limit_refresh_s
        self._nv = import_pynvml()
        self._closed = True
        self._lock = threading.Lock()
        try:
            with nvml_errors("NVML unavailable: nvmlInit"):
                self._nv.nvmlInit()
        except TelemetryError as exc:
            raise BackendUnavailable(str(exc)) from exc
        self._closed = False
        try:
            self._gpus = self._enumerate()
            if not self._gpus:
                raise BackendUnavailable("NVML unavailable: the driver reports no GPU")
            nvml_uuids = [g.uuid for g in self._gpus]
            visible = (cuda_visible_uuids(nvml_uuids) if cuda_uuids is None
                       else [normalize_uuid(u) for u in cuda_uuids])
            by_uuid = {g.uuid: g for g in self._gpus}
            self._by_name: dict[str, _Gpu] = {}
            for k, uuid in enumerate(visible):
                if uuid not in by_uuid:
                    logger.warning("cuda:%d (UUID %s) is not an NVML device; skipped", k, uuid)
                    continue
                self._by_name[f"cuda:{k}"] = by_uuid[uuid]
        except BaseException:
            self.close()
            raise

    def _enumerate(self) -> list[_Gpu]:
        nv = self._nv
        gpus = []
        with nvml_errors("NVML: listing devices"):
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = normalize_uuid(nv.nvmlDeviceGetUUID(handle))
                model = nv.nvmlDeviceGetName(handle)
                model = model.decode() if isinstance(model, bytes) else str(model)
                gpus.append(_Gpu(index=i, handle=handle, uuid=uuid, model=model))
        return gpus

    # --- naming -----------------------------------------------------------------------------

    def devices(self) -> list[str]:
        """`cuda:N` for every GPU visible to CUDA in this process."""
        return list(self._by_name)

    def _gpu(self, device: str) -> _Gpu:
        if self._closed:
            raise TelemetryError(f"{device}: the NVML backend is closed")
        name = "cuda:0" if device == "cuda" else device
        if name in self._by_name:
            return self._by_name[name]
        if name.lower().startswith("gpu-"):
            wanted = normalize_uuid(name)
            for g in self._gpus:
                if g.uuid == wanted:
                    return g
        visible = ", ".join(self._by_name) or "none"
        raise UnknownDeviceError(
            f"unknown GPU {device!r}: NVML sees {len(self._gpus)} GPU(s), visible to CUDA here "
            f"as {visible} (names: cuda:N or GPU-<uuid>)"
        )

    def resolve(self, device: str) -> str:
        """The canonical name of `device` (`cuda:N` when CUDA sees it, else the UUID name)."""
        g = self._gpu(device)
        for name, other in self._by_name.items():
            if other is g:
                return name
        return f"GPU-{g.uuid}"

    def uuid(self, device: str) -> str:
        """NVML's UUID of the device, 'GPU-...'."""
        return f"GPU-{self._gpu(device).uuid}"

    def describe(self, device: str) -> str:
        g = self._gpu(device)
        return f"{g.model} (NVML index {g.index}, GPU-{g.uuid})"

    # --- readings ---------------------------------------------------------------------------

    def _optional(self, g: _Gpu, device: str, what: str, fn: Any, *args: Any) -> Any:
        """Calls an NVML reading; None (remembered) when the device does not support it."""
        if what in g.unsupported:
            return None
        try:
            with nvml_errors(f"{device}: reading {what}"):
                return fn(*args)
        except NotSupportedError:
            g.unsupported.add(what)
            logger.info("%s: NVML has no %s reading on this device", device, what)
            return None

    def energy_j(self, device: str) -> float | None:
        """The total-energy counter in joules (None on GPUs older than Volta)."""
        g = self._gpu(device)
        mj = self._optional(g, device, _ENERGY, self._nv.nvmlDeviceGetTotalEnergyConsumption,
                            g.handle)
        return None if mj is None else mj / 1000.0

    def _power_fields(self, g: _Gpu, device: str) -> dict[int, float]:
        nv = self._nv
        wanted = [f for f in (nv.NVML_FI_DEV_POWER_INSTANT, nv.NVML_FI_DEV_POWER_AVERAGE,
                              nv.NVML_FI_DEV_MEMORY_TEMP) if f not in g.unsupported_fields]
        if not wanted or _FIELDS in g.unsupported:
            return {}
        values = self._optional(g, device, _FIELDS, nv.nvmlDeviceGetFieldValues, g.handle,
                                wanted)
        if values is None:
            return {}
        out: dict[int, float] = {}
        for fid, fv in zip(wanted, values):
            ret = int(fv.nvmlReturn)
            if ret == nv.NVML_SUCCESS:
                out[fid] = _field_value(fv)
            elif ret in (nv.NVML_ERROR_NOT_SUPPORTED, getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND",
                                                              -1)):
                g.unsupported_fields.add(fid)
                logger.info("%s: NVML field %d not supported; not read again", device, fid)
            else:
                # A field that failed this time: the whole reading is unreliable; the sampler
                # marks the sample missing.
                with nvml_errors(f"{device}: reading field {fid}"):
                    raise nv.NVMLError(ret)
        return out

    def _power_limit_w(self, g: _Gpu, device: str) -> float | None:
        now = time.monotonic()
        if now - g.limit_read_s >= self._limit_refresh_s:
            mw = self._optional(g, device, _LIMIT, self._nv.nvmlDeviceGetEnforcedPowerLimit,
                                g.handle)
            g.limit_w = None if mw is None else mw / 1000.0
            g.limit_read_s = now
        return g.limit_w

    def clock_event_reasons(self, device: str) -> tuple[str, ...]:
        """Decoded names of the active clock-event reasons (throttling, idle ...)."""
        g = self._gpu(device)
        nv = self._nv
        fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is not None and "event_reasons_api" not in g.unsupported:
            try:
                with nvml_errors(f"{device}: reading clock-event reasons"):
                    return decode_clock_event_reasons(fn(g.handle))
            except NotSupportedError:
                g.unsupported.add("event_reasons_api")  # old driver: try the older name
        old = getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        mask = None if old is None else self._optional(g, device, _REASONS, old, g.handle)
        return () if mask is None else decode_clock_event_reasons(mask)

    def _slow_readings(self, g: _Gpu, device: str, now: float
                       ) -> tuple[float | None, float | None, tuple[str, ...]]:
        """(temperature, utilization, reasons), re-read at most every `slow_period_s`."""
        if now - g.slow_read_s < self.slow_period_s:
            return g.slow
        nv = self._nv
        temp = self._optional(g, device, _TEMPERATURE, nv.nvmlDeviceGetTemperature, g.handle,
                              nv.NVML_TEMPERATURE_GPU)
        util = None
        if self._read_utilization:
            rates = self._optional(g, device, _UTILIZATION, nv.nvmlDeviceGetUtilizationRates,
                                   g.handle)
            util = None if rates is None else float(rates.gpu) / 100.0
        g.slow = (None if temp is None else float(temp), util, self.clock_event_reasons(device))
        g.slow_read_s = now
        return g.slow

    def sample(self, device: str) -> DeviceSample:
        """One reading of the device: power fields every time (one cheap NVML call), the
        energy counter every `energy_period_s`, the slow quantities every `slow_period_s`."""
        g = self._gpu(device)
        nv = self._nv
        t = time.monotonic()
        energy = None
        if t - g.energy_read_s >= self.energy_period_s:
            energy = self.energy_j(device)  # raises on a transient error: the sample is missing
            g.energy_read_s = t
        fields = self._power_fields(g, device)
        mw = fields.get(nv.NVML_FI_DEV_POWER_INSTANT)
        if mw is None:
            mw = self._optional(g, device, _POWER, nv.nvmlDeviceGetPowerUsage, g.handle)
        avg_mw = fields.get(nv.NVML_FI_DEV_POWER_AVERAGE)
        temp, util, reasons = self._slow_readings(g, device, t)
        return DeviceSample(
            device=device,
            timestamp_s=t,
            energy_j=energy,
            power_w=None if mw is None else mw / 1000.0,
            temperature_c=temp,
            memory_temperature_c=fields.get(nv.NVML_FI_DEV_MEMORY_TEMP),
            power_limit_w=self._power_limit_w(g, device),
            utilization=util,
            clock_event_reasons=reasons,
            source=self.source,
            power_average_w=None if avg_mw is None else avg_mw / 1000.0,
        )

    def slowdown_temperature_c(self, device: str) -> float | None:
        """NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: where the driver starts to slow clocks."""
        g = self._gpu(device)
        if not g.slowdown_read:
            c = self._optional(g, device, "slowdown threshold",
                               self._nv.nvmlDeviceGetTemperatureThreshold, g.handle,
                               self._nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
            g.slowdown_c = None if c is None else float(c)
            g.slowdown_read = True
        return g.slowdown_c

    def close(self) -> None:
        """Shuts NVML down (once; NVML counts its inits)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            with nvml_errors("NVML: nvmlShutdown"):
                self._nv.nvmlShutdown()
        except TelemetryError as exc:
            logger.debug("%s", exc)

    def __repr__(self) -> str:
        return f"NvmlBackend(devices={self.devices() if not self._closed else 'closed'})"
