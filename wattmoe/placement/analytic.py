"""A roofline cost provider: the fallback when no measured profile covers a device.

Every figure here is an **estimate** (datasheet numbers and typical measured fractions of
them), never a measurement: predictions built on it carry source 'estimated'. Prefer a
profiled `wattmoe.cost_model.KernelCostModel` where one exists (`ChainCostProvider` uses a
profile for the devices it covers and this model for the rest).

Model of one expert over n tokens (m = 3 matrices for SwiGLU, 2 for ReLU):

- FLOPs  = 2 n m H F
- bytes  = weights (m H F x weight dtype) + activations n (2H + 2(m-1)F) x activation dtype
- time   = overhead + max(FLOPs / peak_flops, bytes / bandwidth)
- energy = idle_power x time + FLOPs x energy_per_flop + bytes x energy_per_byte
- power cap: if (energy - idle x time) / time exceeds max_power - idle, time stretches until
  it does not (what a power limit does to clocks).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wattmoe.errors import WattmoeError
from wattmoe.placement.base import DTYPE_BYTES, EXPERT_FORMS, PlacementError


@dataclass(frozen=True)
class RooflineDevice:
    """Roofline and power figures of one device (all estimates; see `source`).

    Attributes:
        name: cost-model device name ('nvidia-h200').
        peak_flops: achievable dense bf16/fp16 FLOP/s.
        memory_bandwidth_bytes_per_s: achievable memory bandwidth.
        idle_power_w: power when powered but idle.
        max_power_w: power limit (TDP / board power).
        energy_j_per_flop: dynamic energy of one FLOP.
        energy_j_per_byte: dynamic energy of one byte moved to or from memory.
        overhead_s: fixed time per expert call (kernel launches / thread-pool dispatch).
        fp32_flops_ratio: fp32 peak as a fraction of the bf16 peak.
        source: where the figures come from.
    """

    name: str
    peak_flops: float
    memory_bandwidth_bytes_per_s: float
    idle_power_w: float
    max_power_w: float
    energy_j_per_flop: float
    energy_j_per_byte: float
    overhead_s: float
    fp32_flops_ratio: float = 0.5
    source: str = "estimate"


ROOFLINE_DEVICES: dict[str, RooflineDevice] = {
    d.name: d
    for d in (
        RooflineDevice(
            name="nvidia-h200", peak_flops=7.9e14, memory_bandwidth_bytes_per_s=4.3e12,
            idle_power_w=100.0, max_power_w=700.0, energy_j_per_flop=0.65e-12,
            energy_j_per_byte=60e-12, overhead_s=8e-6, fp32_flops_ratio=0.07,
            source="estimate: ~790 TFLOP/s bf16 dense GEMM and ~4.3 TB/s achievable of 989 "
                   "TFLOP/s / 4.8 TB/s spec; idle 80-124 W observed range; 700 W cap",
        ),
        RooflineDevice(
            name="cpu-16core", peak_flops=1.2e12, memory_bandwidth_bytes_per_s=1.5e11,
            idle_power_w=45.0, max_power_w=200.0, energy_j_per_flop=60e-12,
            energy_j_per_byte=300e-12, overhead_s=20e-6, fp32_flops_ratio=0.5,
            source="estimate: 16-core server CPU with AVX-512 BF16, ~1.2 TFLOP/s effective, "
                   "~150 GB/s of a 4-6 channel DDR5 system, 45 W idle, 200 W TDP",
        ),
        RooflineDevice(
            name="laptop-gpu", peak_flops=3.5e13, memory_bandwidth_bytes_per_s=2.2e11,
            idle_power_w=8.0, max_power_w=100.0, energy_j_per_flop=1.5e-12,
            energy_j_per_byte=150e-12, overhead_s=8e-6, fp32_flops_ratio=0.25,
            source="estimate: RTX 4070 Laptop-class GPU, ~35 TFLOP/s fp16 tensor effective, "
                   "~220 GB/s of 256 GB/s GDDR6, 8 W idle, 100 W board power",
        ),
        RooflineDevice(
            name="laptop-cpu-8core", peak_flops=4e11, memory_bandwidth_bytes_per_s=6e10,
            idle_power_w=4.0, max_power_w=45.0, energy_j_per_flop=60e-12,
            energy_j_per_byte=250e-12, overhead_s=15e-6, fp32_flops_ratio=1.0,
            source="estimate: 8-core laptop CPU (AVX2, fp32 math), ~0.4 TFLOP/s, ~60 GB/s "
                   "dual-channel DDR5, 4 W idle, 45 W package power",
        ),
    )
}


class AnalyticCostProvider:
    """`ExpertCostProvider` from the roofline above (estimates).

    Args:
        devices: the devices it knows (default: `ROOFLINE_DEVICES`).
    """

    source = "estimated"

    def __init__(self, devices: Mapping[str, RooflineDevice] | None = None) -> None:
        self._devices = dict(ROOFLINE_DEVICES if devices is None else devices)

    def devices(self) -> list[str]:
        return sorted(self._devices)

    def describe(self, device: str) -> str:
        return f"analytic roofline ({self._get(device).source})"

    def _get(self, device: str) -> RooflineDevice:
        try:
            return self._devices[device]
        except KeyError:
            raise PlacementError(
                f"analytic cost model has no device {device!r} "
                f"(known: {', '.join(sorted(self._devices))})"
            ) from None

    def idle_power_w(self, device: str) -> float:
        return self._get(device).idle_power_w

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        """(latency_s, energy_j) of one expert call; (0, 0) for 0 tokens (nothing runs)."""
        dev = self._get(device)
        if form not in EXPERT_FORMS:
            raise PlacementError(f"expert form must be one of {EXPERT_FORMS}, got {form!r}")
        if dtype not in DTYPE_BYTES:
            raise PlacementError(f"dtype must be one of {tuple(DTYPE_BYTES)}, got {dtype!r}")
        if tokens <= 0:
            return 0.0, 0.0
        m = 3 if form == "swiglu" else 2
        flops = 2.0 * tokens * m * hidden * inner
        act_bytes = max(DTYPE_BYTES[dtype], 2.0)
        moved = m * hidden * inner * DTYPE_BYTES[dtype] \
            + tokens * (2 * hidden + 2 * (m - 1) * inner) * act_bytes
        peak = dev.peak_flops * (dev.fp32_flops_ratio if dtype == "fp32" else 1.0)
        latency_s = dev.overhead_s + max(flops / peak, moved / dev.memory_bandwidth_bytes_per_s)
        dynamic_j = flops * dev.energy_j_per_flop + moved * dev.energy_j_per_byte
        headroom_w = dev.max_power_w - dev.idle_power_w
        latency_s = max(latency_s, dynamic_j / headroom_w)
        return latency_s, dev.idle_power_w * latency_s + dynamic_j


class ChainCostProvider:
    """Asks each provider in turn: the first that knows a device answers for it.

    Use it to combine a measured profile (which covers the devices that were profiled) with
    `AnalyticCostProvider` for the rest.

    Args:
        providers: asked in this order.
        backend: the expert backend whose layer steps the first provider prices (None: not a
            backend's); `build_cost_graph` reads it for the memory of a replica.
    """

    def __init__(self, providers: Sequence[object], backend: str | None = None) -> None:
        if not providers:
            raise PlacementError("ChainCostProvider needs at least one provider")
        self.providers = list(providers)
        self.backend = backend
        self._choice: dict[str, object] = {}

    def provider_for(self, device: str) -> object:
        if device in self._choice:
            return self._choice[device]
        for p in self.providers:
            if _knows(p, device):
                self._choice[device] = p
                return p
        raise PlacementError(f"no cost provider knows device {device!r} "
                             f"(tried: {', '.join(type(p).__name__ for p in self.providers)})")

    def describe(self, device: str) -> str:
        return describe_provider(self.provider_for(device), device)

    def idle_power_w(self, device: str) -> float:
        return float(self.provider_for(device).idle_power_w(device))  # type: ignore[attr-defined]

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        p = self.provider_for(device)
        return p.expert_cost(device, tokens, hidden, inner, form, dtype)  # type: ignore[attr-defined]


class AliasedCostProvider:
    """Answers for cost-device names ('nvidia-h200') from a provider that knows the devices
    by other names ('cuda:0' in a profile).

    Args:
        provider: the provider to ask.
        aliases: cost-device name -> the provider's device name.
    """

    def __init__(self, provider: object, aliases: Mapping[str, str], label: str = "") -> None:
        self.provider = provider
        self.aliases = dict(aliases)
        self.label = label

    def devices(self) -> list[str]:
        return sorted(self.aliases)

    def _name(self, device: str) -> str:
        try:
            return self.aliases[device]
        except KeyError:
            raise PlacementError(f"no alias for cost device {device!r} "
                                 f"(aliases: {', '.join(sorted(self.aliases))})") from None

    def describe(self, device: str) -> str:
        what = self.label or describe_provider(self.provider, self._name(device))
        return f"{what}: {self._name(device)} as {device}"

    def idle_power_w(self, device: str) -> float:
        return float(self.provider.idle_power_w(self._name(device)))  # type: ignore[attr-defined]

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        return self.provider.expert_cost(  # type: ignore[attr-defined]
            self._name(device), tokens, hidden, inner, form, dtype)


def profile_cost_provider(model: object, label: str = "", fallback: object | None = None,
                          backend: str | None = None) -> ChainCostProvider:
    """A measured profile (a `wattmoe.cost_model.KernelCostModel`) for the devices it covers,
    named by their hardware ('NVIDIA H200' answers for cost device 'nvidia-h200'), and the
    analytic roofline (estimates) for every other device.

    Args:
        model: the loaded profile (`KernelCostModel.load(path)`), not its path: placement
            reads no files, so a path is refused with a message saying to load it first.
        label: how `describe` names the profile's figures.
        fallback: the provider for the other devices (default: `AnalyticCostProvider`).
        backend: an expert backend ('fused', 'grouped', ...): price an expert as its share
            of the profiled layer steps of that backend (`model.backend_view(backend)`)
            instead of one expert called alone; devices of the profile without steps of
            that backend are left to `fallback`. Recorded as the chain's `backend`, from
            which the placement counts a replica's memory (int4 on a GPU with a fused
            backend: the kernels' copy too, `ExpertShape.replica_bytes`).

    Raises:
        PlacementError: `model` is a path (str or os.PathLike) or not a cost model (no
            `devices()`, `expert_cost()`, `idle_power_w()`; with `backend`, no
            `backend_view()`), or `fallback` is not a cost provider.
        CostModelError (a `ConfigError`): `backend` was not profiled.
    """
    _check_profile(model, backend)
    if fallback is not None and not _has_methods(fallback, "expert_cost", "idle_power_w"):
        raise PlacementError(f"profile_cost_provider: fallback must be a cost provider with "
                             f"expert_cost() and idle_power_w(), got "
                             f"{type(fallback).__name__}")
    provider = model if backend is None else model.backend_view(backend)  # type: ignore[attr-defined]
    aliases: dict[str, str] = {}
    infos = getattr(getattr(model, "db", None), "devices", {}) or {}
    for dev in provider.devices():  # type: ignore[attr-defined]
        info = infos.get(dev)
        hardware = (info.get("name") if isinstance(info, Mapping) else getattr(info, "name", None)
                    ) or dev
        aliases[device_slug(str(hardware))] = dev
    return ChainCostProvider([AliasedCostProvider(provider, aliases, label),
                              fallback or AnalyticCostProvider()], backend=backend)


def _has_methods(obj: object, *names: str) -> bool:
    return all(callable(getattr(obj, n, None)) for n in names)


def _check_profile(model: object, backend: str | None) -> None:
    """Raises PlacementError unless `model` is a loaded profile `profile_cost_provider` can
    use; for a path, the message says how to load it."""
    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        raise PlacementError(f"profile_cost_provider takes a loaded profile, got the path "
                             f"{path!r}; load it first: KernelCostModel.load({path!r}) "
                             "(wattmoe.cost_model)")
    if not _has_methods(model, "devices", "expert_cost", "idle_power_w"):
        raise PlacementError("profile_cost_provider: model must be a cost model with "
                             "devices(), expert_cost() and idle_power_w() (a KernelCostModel), "
                             f"got {type(model).__name__}")
    if backend is not None and not _has_methods(model, "backend_view"):
        raise PlacementError(f"profile_cost_provider: backend {backend!r} needs a profile with "
                             f"backend_view() (a KernelCostModel), got {type(model).__name__}")


def device_slug(name: str) -> str:
    """A cost-device name from a hardware name: 'NVIDIA H200' -> 'nvidia-h200'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _knows(provider: object, device: str) -> bool:
    devices = getattr(provider, "devices", None)
    if callable(devices):
        try:
            return device in devices()
        except (WattmoeError, KeyError, ValueError, TypeError):
            return False
    try:
        provider.idle_power_w(device)  # type: ignore[attr-defined]
        return True
    except (WattmoeError, KeyError, ValueError):
        return False


def describe_provider(provider: object, device: str) -> str:
    """A one-line description of where `provider`'s figures for `device` come from."""
    describe = getattr(provider, "describe", None)
    if callable(describe):
        try:
            return str(describe(device))
        except (WattmoeError, KeyError, ValueError, TypeError):
            pass
    return type(provider).__name__
