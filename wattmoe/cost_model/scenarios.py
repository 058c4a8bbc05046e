"""Profiling scenarios: one op of one shape, dtype, device and batch size, built in isolation.

`build_sweep(SweepConfig)` lists the scenarios; `build_runner(scenario)` allocates the weights
and inputs and returns a zero-argument callable that runs the op once (no synchronization: the
profiler synchronizes). Every op that an expert launches has a scenario (see `BASE_OPS`), plus
one `moe_layer:<backend>` op per expert backend available on the device, and the same with
packed int4 experts (`moe_layer_int4:<backend>`: every backend accepts them; `loop` runs each
`QuantizedExpert`, `grouped` dequantizes the stacked experts on every call, `fused`
dequantizes inside its GEMM).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from wattmoe.cost_model.base import (
    BASE_OPS,
    COPY_OPS,
    LAYER_OP_FAMILIES,
    CostModelError,
    OpShape,
    check_op,
    check_tokens,
    layer_op,
    layer_op_name,
)
from wattmoe.cost_model.work import int4_weight_bytes, op_work
from wattmoe.errors import ConfigError
from wattmoe.moe import (
    AdaptiveRouter,
    Expert,
    MoEConfig,
    QuantizedExpert,
    SimpleMoELayer,
    int4_group_size,
    resolve_dtype,
    resolve_shape,
)
from wattmoe.moe.backends import EXPERT_BACKENDS

DEFAULT_TOKENS: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096, 8192)


def log_tokens(lo: int = 1, hi: int = 8192, factor: float = 4.0) -> tuple[int, ...]:
    """Log-spaced batch sizes lo, lo*factor, ... and always hi itself."""
    if lo < 1 or hi < lo or factor <= 1:
        raise CostModelError(f"need 1 <= lo <= hi and factor > 1, got {lo}, {hi}, {factor}")
    out, v = [], float(lo)
    while v < hi:
        out.append(round(v))
        v *= factor
    out.append(hi)
    return tuple(sorted(set(out)))


@dataclass(frozen=True)
class Scenario:
    """One isolated profiling case."""

    op: str
    config: MoEConfig
    dtype: str
    device: str
    tokens: int

    @property
    def shape(self) -> OpShape:
        return OpShape.from_config(self.config).for_op(self.op)

    @property
    def preset(self) -> str:
        return self.config.name

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        """Identity used to resume sweeps: (op, device, dtype, shape key, tokens)."""
        return (self.op, self.device, self.dtype, self.shape.key, self.tokens)

    def work(self) -> tuple[float, float]:
        return op_work(self.op, self.tokens, self.shape, self.dtype)

    def memory_bytes(self) -> float:
        """Rough peak memory: weights held plus activations (for skipping what won't fit).

        An int4 layer holds its packed experts and, at its peak, a compute-dtype copy of
        them: the dense layer it is quantized from while it is built, and the stack that
        `grouped` dequantizes on every call.
        """
        s, b = self.shape, (4 if self.dtype == "fp32" else 2)
        weights = s.matrices * s.hidden * s.inner * b
        layer = layer_op(self.op)
        if layer is not None:
            weights *= s.num_experts
            if layer[1]:
                weights += weights / b * int4_weight_bytes(s.hidden, s.inner,
                                                           s.int4_group)
            act = self.tokens * s.top_k * (s.hidden * 4 + s.inner * 3) * b
        else:
            act = self.tokens * (s.hidden * 2 + s.inner * 3) * b
        if self.op == "expert_int4":
            weights *= 3  # packed + dequantized copies
        return float(weights + act)

    def describe(self) -> str:
        return f"{self.op} {self.preset} {self.dtype} {self.device} n={self.tokens}"


def moe_backends(device: str, dtype: str) -> list[str]:
    """Expert backends registered and usable on `device` for `dtype`."""
    from wattmoe.moe import backends as be

    avail = getattr(be, "available_backends", None)
    if avail is not None:
        return list(avail(device, resolve_dtype(dtype)))
    return sorted(be.EXPERT_BACKENDS)


@dataclass(frozen=True)
class SweepConfig:
    """What to profile.

    Attributes:
        shapes: preset specs ('tiny', 'olmoe-1b-7b@0.25') or shape keys.
        dtypes: 'fp32', 'bf16', 'fp16'.
        devices: 'cpu', 'cuda:N'.
        ops: base ops and/or 'moe_layer' / 'moe_layer_int4' (each expands to one op per
            backend available on the device) or 'moe_layer:<backend>' /
            'moe_layer_int4:<backend>'.
        tokens: batch sizes.
        max_memory_bytes: scenarios estimated larger than this are skipped.
    """

    shapes: tuple[str, ...] = ("tiny", "olmoe-1b-7b@0.25")
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    devices: tuple[str, ...] = ("cpu",)
    ops: tuple[str, ...] = (*BASE_OPS, "moe_layer")
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    max_memory_bytes: float = 8e9

    def __post_init__(self) -> None:
        if not (self.shapes and self.dtypes and self.devices and self.ops and self.tokens):
            raise CostModelError("a sweep needs at least one shape, dtype, device, op and size")
        for t in self.tokens:
            if check_tokens(t) == 0:
                raise CostModelError("sweep batch sizes must be >= 1 token")
        for d in self.dtypes:
            resolve_dtype(d)
        for spec in self.shapes:  # here, so that a bad one fails before a sweep (or its bar)
            resolve_shape(spec)
        for op in self.ops:
            if op not in LAYER_OP_FAMILIES:
                check_op(op)
            layer = layer_op(op)
            if layer is not None and layer[0] not in EXPERT_BACKENDS:
                raise CostModelError(
                    f"unknown expert backend {layer[0]!r} in op {op!r} (known: "
                    f"{', '.join(sorted(EXPERT_BACKENDS))})")
        for dev in self.devices:
            if dev != "cpu" and not (dev.startswith("cuda:") and dev[5:].isdigit()):
                raise CostModelError(f"unknown device {dev!r}; use 'cpu' or 'cuda:N'")
        if not (isinstance(self.max_memory_bytes, int | float)
                and math.isfinite(self.max_memory_bytes) and self.max_memory_bytes > 0):
            raise CostModelError(f"max_memory_bytes must be a finite number > 0, got "
                                 f"{self.max_memory_bytes!r}")


def check_devices_present(devices: tuple[str, ...]) -> None:
    """Raises CostModelError for a 'cuda:N' this process cannot use (no CUDA, or N too big)."""
    for dev in devices:
        if not dev.startswith("cuda:"):
            continue
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(dev[5:]) >= n:
            raise CostModelError(
                f"device {dev!r} is not available here: torch sees {n} CUDA device(s)"
                + ("" if n else " (no CUDA: a CPU-only torch build or no GPU)"))


_MEMORY_SKIP = "skipped "  # how a note of a scenario left out for --max-memory-gb begins


def is_memory_skip(note: str) -> bool:
    """Whether a note of `build_sweep` is a scenario left out for the memory limit (one per
    scenario; the others are whole ops skipped on a device)."""
    return note.startswith(_MEMORY_SKIP)


def build_sweep(cfg: SweepConfig) -> tuple[list[Scenario], list[str]]:
    """Expands a sweep into scenarios; returns (scenarios, notes on what was skipped).

    Raises:
        ConfigError: an unknown preset, an unreadable shape key or scale (`resolve_shape`).
        CostModelError: a CUDA device this process cannot use.
    """
    check_devices_present(cfg.devices)
    configs = [resolve_shape(s) for s in cfg.shapes]
    out: list[Scenario] = []
    notes: list[str] = []
    seen: set[tuple[str, str, str, str, int]] = set()
    # op-major order: the order of `cfg.ops` is the priority when a sweep has a deadline
    for op_spec in cfg.ops:
        for dev in cfg.devices:
            for dtype in cfg.dtypes:
                if op_spec in LAYER_OP_FAMILIES:
                    int4 = LAYER_OP_FAMILIES[op_spec]
                    ops = [layer_op_name(b, int4) for b in moe_backends(dev, dtype)]
                elif op_spec in COPY_OPS and not dev.startswith("cuda"):
                    notes.append(f"{op_spec} skipped on {dev}: host<->device copies need a GPU")
                    continue
                else:
                    ops = [op_spec]
                for op in ops:
                    for mc in configs:
                        for n in cfg.tokens:
                            sc = Scenario(op, mc, dtype, dev, int(n))
                            if sc.key in seen:
                                continue
                            seen.add(sc.key)
                            if sc.memory_bytes() > cfg.max_memory_bytes:
                                notes.append(
                                    f"{_MEMORY_SKIP}{sc.describe()}: "
                                    f"~{sc.memory_bytes() / 1e9:.3g} GB"
                                    f" > {cfg.max_memory_bytes / 1e9:.3g} GB allowed")
                                continue
                            out.append(sc)
    return out, notes


def _int4_group(shape: OpShape) -> int:
    """The int4 group size of `shape`: its `int4_group`, else the default (`int4_group_size`),
    as a CostModelError if none fits. The point records it (`ProfilePoint.to_dict`)."""
    if shape.int4_group is not None:
        return shape.int4_group
    try:
        return int4_group_size(shape.hidden, shape.inner)
    except ConfigError as exc:
        raise CostModelError(str(exc)) from None


def build_runner(sc: Scenario, seed: int = 0) -> Callable[[], Any]:
    """Allocates the scenario's weights and inputs; returns a callable running the op once.

    Raises:
        CostModelError: the op cannot run on this device (e.g. copies without a GPU).
    """
    dev = torch.device(sc.device)
    dt = resolve_dtype(sc.dtype)
    s = sc.shape
    n = sc.tokens
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, dtype=torch.float32).to(device=dev, dtype=dt)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        op = sc.op
        if op in ("up_gate_proj", "down_proj", "expert", "expert_int4"):
            expert = Expert(s.hidden, s.inner, s.form, dt, dev).eval()
        if op == "up_gate_proj":
            x = rand(n, s.hidden)
            if expert.gate_proj is not None:
                g, u = expert.gate_proj, expert.up_proj
                return lambda: (g(x), u(x))
            return lambda: expert.up_proj(x)
        if op == "activation":
            u = rand(n, s.inner)
            if s.form == "swiglu":
                g = rand(n, s.inner)
                return lambda: F.silu(g) * u
            return lambda: F.relu(u)
        if op == "down_proj":
            a = rand(n, s.inner)
            return lambda: expert.down_proj(a)
        if op == "expert":
            x = rand(n, s.hidden)
            return lambda: expert(x)
        if op == "expert_int4":
            q = QuantizedExpert(expert, group_size=_int4_group(s)).to(dev).eval()
            del expert
            x = rand(n, s.hidden)
            return lambda: q(x)
        if op == "router_gate":
            mc = sc.config
            router = AdaptiveRouter(s.hidden, mc.num_experts, mc.top_k, score_func=mc.score_func,
                                    normalize_topk=mc.normalize_topk, dtype=dt, device=dev)
            x = rand(n, s.hidden)
            return lambda: router(x)
        if op in COPY_OPS:
            if dev.type != "cuda":
                raise CostModelError(f"{op} needs a cuda device, got {sc.device!r}")
            if op == "h2d_copy":
                host = torch.randn(n, s.hidden, generator=gen).to(dt)
                return lambda: host.to(dev)
            on_dev = rand(n, s.hidden)
            return lambda: on_dev.to("cpu")
        lay = layer_op(op)
        if lay is not None:
            backend, int4 = lay
            layer = SimpleMoELayer(sc.config, dtype=dt, device=dev, backend=backend, seed=seed)
            if int4:
                layer.quantize(_int4_group(s))
            layer.eval()
            x = rand(n, s.hidden)
            return lambda: layer(x)
    raise CostModelError(f"no scenario builder for op {sc.op!r}")

