"""`make_backends`: the best available backend for each device, and a log line saying which.

| device name | backends tried, best first |
| --- | --- |
| `cuda`, `cuda:N`, `GPU-<uuid>` | NVML (measured) -> H200-like simulated GPU (with a warning) |
| `cpu` | RAPL (measured) -> utilization model (estimated) |
| `sim:N` | simulated |

A backend that cannot run here raises `BackendUnavailable`; the factory logs that reason once
and falls back to the next. A name that no backend knows (`tpu:0`, `cuda:7` on a one-GPU
machine) is a user error and raises `UnknownDeviceError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from wattmoe.telemetry.base import BackendUnavailable, TelemetryBackend, UnknownDeviceError
from wattmoe.telemetry.cpu import CPU_DEVICE, CpuBackend, CpuPowerModel
from wattmoe.telemetry.nvml import NvmlBackend
from wattmoe.telemetry.rapl import POWERCAP_ROOT, RaplBackend
from wattmoe.telemetry.simulated import H200_LIKE, SimPowerModel, SimulatedBackend

logger = logging.getLogger(__name__)

_GPU = re.compile(r"^(cuda(:\d+)?|gpu-[0-9a-f-]+)$", re.IGNORECASE)
_SIM = re.compile(r"^sim:\d+$")
NAME_HELP = "cuda:N, GPU-<uuid>, cpu or sim:N"


def device_kind(device: str) -> str:
    """'gpu', 'cpu' or 'sim' for a device name; UnknownDeviceError otherwise."""
    if not isinstance(device, str):
        raise UnknownDeviceError(f"device names are strings ({NAME_HELP}), got {device!r}")
    name = device.strip()
    if name == CPU_DEVICE:
        return "cpu"
    if _GPU.match(name):
        return "gpu"
    if _SIM.match(name):
        return "sim"
    raise UnknownDeviceError(f"unknown device {device!r}: expected {NAME_HELP}")


def _canonical(device: str) -> str:
    return "cuda:0" if device.strip() == "cuda" else device.strip()


class _Chooser:
    """Makes each backend at most once and remembers why one was unavailable."""

    def __init__(self, cpu_model: CpuPowerModel | None, powercap_root: str | Path) -> None:
        self.cpu_model = cpu_model
        self.powercap_root = powercap_root
        self._made: dict[str, TelemetryBackend] = {}
        self._why: dict[str, str] = {}

    def get(self, kind: str) -> TelemetryBackend | None:
        if kind in self._made:
            return self._made[kind]
        if kind in self._why:
            return None
        try:
            if kind == "nvml":
                backend: TelemetryBackend = NvmlBackend()
            elif kind == "rapl":
                backend = RaplBackend(self.powercap_root)
            elif kind == "cpu-estimate":
                backend = CpuBackend(self.cpu_model)
            else:  # pragma: no cover - programming error
                raise ValueError(kind)
        except BackendUnavailable as exc:
            self._why[kind] = str(exc)
            return None
        self._made[kind] = backend
        return backend

    def why(self, kind: str) -> str:
        return self._why.get(kind, "")

    def close_all(self) -> None:
        for backend in self._made.values():
            backend.close()


def discover_devices(powercap_root: str | Path = POWERCAP_ROOT) -> list[str]:
    """Every device found here: each GPU CUDA sees (by NVML, as cuda:N) plus 'cpu'."""
    return list(make_backends(None, powercap_root=powercap_root))


def make_backends(
    devices: Sequence[str] | None = None,
    *,
    cpu_model: CpuPowerModel | None = None,
    gpu_fallback_model: SimPowerModel | None = H200_LIKE,
    powercap_root: str | Path = POWERCAP_ROOT,
) -> dict[str, TelemetryBackend]:
    """The best available backend for each device.

    Args:
        devices: device names (see the module table); None = every GPU CUDA sees plus 'cpu'.
        cpu_model: power model of the CPU estimate (None = `CpuPowerModel()` defaults).
        gpu_fallback_model: model of the simulated GPU used when NVML is unavailable;
            None = raise instead of simulating.
        powercap_root: where RAPL's powercap tree is.

    Returns:
        device name -> backend; devices that share a backend share the instance.

    Raises:
        UnknownDeviceError: a name no backend knows.
        BackendUnavailable: nothing at all can serve a requested device.
    """
    chooser = _Chooser(cpu_model, powercap_root)
    try:
        return _make(chooser, devices, gpu_fallback_model)
    except BaseException:
        chooser.close_all()
        raise


def _make(chooser: _Chooser, devices: Sequence[str] | None,
          gpu_fallback_model: SimPowerModel | None) -> dict[str, TelemetryBackend]:
    if devices is None:
        nvml = chooser.get("nvml")
        if nvml is None:
            logger.info("telemetry: no GPU telemetry (%s)", chooser.why("nvml"))
        names = (nvml.devices() if nvml is not None else []) + [CPU_DEVICE]
        discovering = True
    else:
        names = [_canonical(d) for d in devices]
        for d in names:
            device_kind(d)
        if len(set(names)) != len(names):
            raise UnknownDeviceError(f"device listed twice in {list(devices)}")
        discovering = False

    chosen: dict[str, TelemetryBackend] = {}
    order: list[str] = []  # canonical names in the caller's order
    sim_gpus: list[str] = []
    sim_plain: list[str] = []
    for d in names:
        kind = device_kind(d)
        if kind == "gpu":
            nvml = chooser.get("nvml")
            if nvml is not None:
                canonical = nvml.resolve(d)  # type: ignore[attr-defined]  # raises for unknown GPUs
                chosen[canonical] = nvml
                order.append(canonical)
                logger.info("telemetry: %s -> nvml (measured): %s", canonical,
                            nvml.describe(canonical))  # type: ignore[attr-defined]
            elif gpu_fallback_model is not None:
                logger.warning("telemetry: %s: %s; falling back to a simulated GPU (numbers "
                               "labeled simulated)", d, chooser.why("nvml"))
                sim_gpus.append(d)
                order.append(d)
            else:
                raise BackendUnavailable(f"{d}: {chooser.why('nvml')}")
        elif kind == "cpu":
            backend = chooser.get("rapl")
            if backend is not None:
                logger.info("telemetry: cpu -> rapl (measured): %s",
                            ", ".join(backend.zones))  # type: ignore[attr-defined]
            else:
                logger.info("telemetry: cpu: %s", chooser.why("rapl"))
                backend = chooser.get("cpu-estimate")
                if backend is None:
                    msg = (f"cpu: no backend (RAPL: {chooser.why('rapl')}; estimate: "
                           f"{chooser.why('cpu-estimate')})")
                    if discovering:
                        logger.warning("telemetry: %s; cpu not monitored", msg)
                        continue
                    raise BackendUnavailable(msg)
                logger.info("telemetry: cpu -> cpu-estimate (estimated): %r", backend)
            chosen[CPU_DEVICE] = backend
            order.append(CPU_DEVICE)
        else:
            sim_plain.append(d)
            order.append(d)
    if sim_gpus or sim_plain:
        models = {d: gpu_fallback_model or H200_LIKE for d in sim_gpus + sim_plain}
        sim = SimulatedBackend(models)
        for d in sim_gpus + sim_plain:
            chosen[d] = sim
            if d in sim_plain:
                logger.info("telemetry: %s -> simulated", d)
    if len(set(order)) != len(order):
        raise UnknownDeviceError(f"two names for the same device in {names}")
    return {d: chosen[d] for d in order}
