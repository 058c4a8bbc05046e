"""The cost-model contract: ops, shapes, measured points, query results and errors.

A *profile* is a list of `ProfilePoint`s, one per isolated scenario (op, shape, dtype, device,
tokens), each with its latency (median and spread over many repetitions), its energy per call
(from a telemetry window repeated until it spans the shortest accurate window), power,
temperature and the kernels it launched. `KernelCostModel` answers queries from a profile.

Every energy figure carries its `source` (DESIGN.md): 'measured' (a hardware counter),
'estimated' (a model of a device that has no counter, e.g. a CPU without RAPL), 'simulated'
or 'replayed'. Predictions keep the source of the points they come from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from wattmoe.errors import ConfigError
from wattmoe.int4_layout import default_group, divisor_group
from wattmoe.shape_keys import is_shape_key, parse_shape_key

SCHEMA_VERSION = 1
FORMAT = "wattmoe.cost_model.profile"

#: Scenario ops: the kernels one expert launches, the router, the activation copies of a CPU
#: expert, and a whole MoE layer step per expert backend ('moe_layer:<backend>', and with int4
#: experts 'moe_layer_int4:<backend>'; see `layer_op`).
BASE_OPS: tuple[str, ...] = (
    "up_gate_proj",  # x @ W_gate^T and x @ W_up^T (one matmul for a 'relu' expert)
    "activation",  # silu(g) * u  (relu(u) for a 'relu' expert)
    "down_proj",  # a @ W_down^T
    "expert",  # the whole expert: up/gate, activation, down
    "expert_int4",  # QuantizedExpert: unpack + dequantize the int4 weights, then the expert
    "router_gate",  # gate logits, softmax, top-k
    "h2d_copy",  # activations host -> device (an expert placed on the CPU returns its output)
    "d2h_copy",  # activations device -> host (tokens sent to an expert on the CPU)
)
MOE_LAYER_PREFIX = "moe_layer:"
#: A MoE layer step whose experts are packed int4 (`SimpleMoELayer.quantize`), per backend.
MOE_LAYER_INT4_PREFIX = "moe_layer_int4:"
#: Sweep op specs that expand to one layer op per expert backend available on the device,
#: and whether their experts are int4.
LAYER_OP_FAMILIES: dict[str, bool] = {"moe_layer": False, "moe_layer_int4": True}
COPY_OPS: tuple[str, ...] = ("h2d_copy", "d2h_copy")


def layer_op(op: str) -> tuple[str, bool] | None:
    """(backend, int4) of a MoE-layer op, None for any other op.

    'moe_layer:fused' -> ('fused', False); 'moe_layer_int4:loop' -> ('loop', True). The one
    place that reads layer-op names, so that the work formulas, the fitted features, the
    scenarios and the shapes treat both families alike.
    """
    for prefix, int4 in ((MOE_LAYER_PREFIX, False), (MOE_LAYER_INT4_PREFIX, True)):
        if op.startswith(prefix) and len(op) > len(prefix):
            return op[len(prefix):], int4
    return None


def is_int4_op(op: str) -> bool:
    """Whether `op` runs packed int4 experts (`expert_int4`, `moe_layer_int4:<backend>`): the
    ops whose cost depends on the int4 group size (`OpShape.int4_group`)."""
    lay = layer_op(op)
    return op == "expert_int4" or (lay is not None and lay[1])


def int4_compute_dtype(profiled: Sequence[str]) -> str:
    """The compute dtype an int4 cost answers in, of the dtypes `profiled` for its op or
    device: bf16 where profiled (or where nothing is), else the first profiled one."""
    return "bf16" if "bf16" in profiled or not profiled else sorted(profiled)[0]


def layer_op_name(backend: str, int4: bool = False) -> str:
    """The op of one MoE layer step with `backend` ('moe_layer:<backend>' or, with int4
    experts, 'moe_layer_int4:<backend>'); the inverse of `layer_op`."""
    return (MOE_LAYER_INT4_PREFIX if int4 else MOE_LAYER_PREFIX) + backend


#: Sources from the most to the least direct: a figure read from points of several sources
#: carries the last of theirs (`weakest_source`).
_SOURCE_ORDER: tuple[str, ...] = ("measured", "replayed", "estimated", "simulated")


def weakest_source(sources: Sequence[str]) -> str:
    """The source of a figure made from points of `sources`: theirs where they agree, else
    the least direct of them (measured < replayed < estimated < simulated), so that a curve
    holding one estimated point (a sweep resumed where RAPL could not be read) never says
    'measured' for it."""
    unique = list(dict.fromkeys(sources))
    if len(unique) <= 1:
        return unique[0] if unique else "measured"
    rank = {s: i for i, s in enumerate(_SOURCE_ORDER)}
    return max(unique, key=lambda s: rank.get(s, len(rank)))


class CostModelError(ConfigError):
    """A cost-model query or profile is invalid (unknown op/device/dtype, bad batch size)."""


class ProfileFormatError(CostModelError):
    """A profile file is missing, corrupt, or of another schema version."""


def check_op(op: str) -> str:
    """Returns `op` if it names a scenario op, else raises CostModelError."""
    if op in BASE_OPS or layer_op(op) is not None:
        return op
    raise CostModelError(
        f"unknown op {op!r} (known: {', '.join(BASE_OPS)}, {MOE_LAYER_PREFIX}<backend>, "
        f"{MOE_LAYER_INT4_PREFIX}<backend>)"
    )


def check_tokens(tokens: object) -> int:
    """Validates a batch size (tokens): an integer >= 0."""
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        try:
            as_int = int(tokens)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise CostModelError(f"batch size must be an integer, got {tokens!r}") from None
        if as_int != tokens:
            raise CostModelError(f"batch size must be an integer, got {tokens!r}")
        tokens = as_int
    if tokens < 0:
        raise CostModelError(f"batch size must be >= 0 tokens, got {tokens}")
    return tokens


#: the int4 group part of `OpShape.key`: '_g64'
_GROUP_SUFFIX = re.compile(r"_g(\d+)$")


@dataclass(frozen=True)
class OpShape:
    """The sizes an op depends on.

    Attributes:
        hidden: model width H.
        inner: expert inner width F.
        form: 'swiglu' (gate, up, down) or 'relu' (up, down).
        num_experts: routed experts E (router gate and layer ops only; 1 otherwise).
        top_k: experts per token (layer ops, `layer_op`, only; 1 otherwise).
        int4_group: the int4 group size of an int4 op's experts (`is_int4_op`) where it is
            not the shape's default (`wattmoe.int4_layout.default_group`); None: the default
            (a group equal to the default is stored as None, so that one shape has one key).
            A profile point measured with another group (one measured before the default
            changed, `stored_shape`) keeps its group here, and its key says so ('_g64'): a
            query for the default group does not read it as its own, it predicts from it.
    """

    hidden: int
    inner: int
    form: str = "swiglu"
    num_experts: int = 1
    top_k: int = 1
    int4_group: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden", "inner", "num_experts", "top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise CostModelError(f"shape field {name} must be a positive integer, got {v!r}")
        if self.form not in ("swiglu", "relu"):
            raise CostModelError(f"shape form must be 'swiglu' or 'relu', got {self.form!r}")
        if self.top_k > self.num_experts:
            raise CostModelError(f"shape top_k={self.top_k} > num_experts={self.num_experts}")
        g = self.int4_group
        if g is not None:
            if (isinstance(g, bool) or not isinstance(g, int) or g <= 0 or g % 2
                    or self.hidden % g or self.inner % g):
                raise CostModelError(
                    f"shape int4_group must be an even number dividing both widths "
                    f"{self.hidden} and {self.inner}, got {g!r}")
            if g == default_group(self.hidden, self.inner):
                object.__setattr__(self, "int4_group", None)

    @property
    def key(self) -> str:
        """A stable name: 'h2048_f1024_swiglu_e64_k8'; '..._g64' with a group that is not the
        default (`int4_group`)."""
        key = f"h{self.hidden}_f{self.inner}_{self.form}_e{self.num_experts}_k{self.top_k}"
        return key if self.int4_group is None else f"{key}_g{self.int4_group}"

    @property
    def matrices(self) -> int:
        """Weight matrices of one expert (3 for SwiGLU, 2 for Linear-ReLU-Linear)."""
        return 3 if self.form == "swiglu" else 2

    def for_op(self, op: str) -> OpShape:
        """The part of the shape that `op` depends on (experts/top-k only where they matter,
        the int4 group only for int4 ops)."""
        s = self if is_int4_op(op) or self.int4_group is None else replace(self, int4_group=None)
        if layer_op(op) is not None:
            return s
        if op == "router_gate":
            return OpShape(s.hidden, s.inner, s.form, s.num_experts, 1)
        return OpShape(s.hidden, s.inner, s.form, 1, 1, s.int4_group)

    @classmethod
    def from_config(cls, cfg: Any) -> OpShape:
        """From a `wattmoe.moe.MoEConfig` (int4 experts: the default group)."""
        return cls(cfg.hidden_size, cfg.expert_inner_size, cfg.expert_form, cfg.num_experts,
                   cfg.top_k)

    @classmethod
    def from_key(cls, key: str) -> OpShape:
        """Parses `OpShape.key` ('h2048_f1024_swiglu_e64_k8'; '_e.._k..' optional; '_g<G>'
        optional, last).

        The key must be exactly of that form: a part it cannot read ('k3@0.5', 'kk3', a
        repeated or trailing part) is an error, not skipped (it used to leave top-k at 1).
        """
        group = _GROUP_SUFFIX.search(key) if isinstance(key, str) else None
        parts = parse_shape_key(key[:group.start()] if group else key)
        if parts is None:
            raise CostModelError(
                f"cannot read shape {key!r}; expected like 'h2048_f1024_swiglu_e64_k8' "
                "(int4 groups other than the default: '..._g64')"
            )
        # a key of the right form with invalid values (k > e, h0) gets the shape's own error,
        # not "cannot read"
        return cls(*parts, int4_group=int(group[1]) if group else None)

    def to_dict(self) -> dict[str, Any]:
        """The fields; `int4_group` only where it is not the default (see
        `ProfilePoint.to_dict`, which records every int4 point's group)."""
        d = asdict(self)
        if self.int4_group is None:
            del d["int4_group"]
        return d


def key_names_group(spec: object) -> bool:
    """Whether `spec` is a shape key that names an int4 group ('h64_f128_swiglu_e8_k2_g64',
    `OpShape.key`), which `OpShape.from_key` reads and a preset or `resolve_shape` does not:
    a shape key (`is_shape_key`, as `resolve_shape` tells one) ending in '_g<G>'."""
    return is_shape_key(spec) and bool(_GROUP_SUFFIX.search(spec))


def stored_shape(op: str, shape: dict[str, Any]) -> OpShape:
    """The `OpShape` of a stored point of `op` (a profile's or a sweep log's `shape` object).

    A point of an int4 op records the group it was quantized with (`ProfilePoint.to_dict`).
    One that records none was measured before session 17, when the default was the largest
    power of two <= 128 dividing both widths (`wattmoe.int4_layout.divisor_group`); it keeps
    that group, so that a profile measured with groups of 64 is not read as one measured
    with today's default of 32 (`tiny`; Qwen1.5-MoE: 128 then, 64 now).

    Raises:
        TypeError, KeyError: an unknown or missing field; CostModelError: an invalid value.
    """
    d = dict(shape)
    if not is_int4_op(op):
        d.pop("int4_group", None)  # no other op depends on it (`OpShape.for_op`)
    elif "int4_group" not in d:
        d["int4_group"] = divisor_group(int(d["hidden"]), int(d["inner"]))
    return OpShape(**d)


@dataclass(frozen=True)
class KernelCost:
    """What one call of an op costs on one device.

    Attributes:
        latency_s: wall time of one call (median of many repetitions, or predicted).
        energy_j: energy of the device during one call, idle/static power included.
        avg_power_w: energy_j / latency_s.
        peak_power_w: highest power sampled while the op ran back to back.
        source: where this figure comes from ('measured' | 'estimated' | ...): the
            profile's source for a profiled point as measured (method 'profiled'), and
            'estimated' for every answer derived from a measured profile (interpolated,
            extrapolated, a shape model, a point moved to keep the curve monotone, a layer
            step's share, an empty call): an estimate is never labelled a measurement
            (`KernelCost.answer`).
        method: 'profiled' (a measured point), 'interpolated' (between profiled batch
            sizes), 'extrapolated' (beyond them, by the fitted per-device model), or
            'shape-model' (a shape never profiled, by the fitted models anchored on the
            nearest profiled shapes; non-decreasing in tokens). Answers are non-decreasing
            in tokens: a profiled curve whose measurements fall is answered from its points
            made monotone, and the answers that rest on a moved point are marked
            'profiled (monotone)', 'interpolated (monotone)' or 'extrapolated (monotone)';
            'layer-amortized' (one expert's share of a layer step), 'empty' (no tokens).
        profile_source: where the profile's energy data came from (its devices' source:
            'measured' by a hardware counter, 'estimated' by a model of a device without
            one, ...); 'estimated' with profile_source 'measured' is an estimate made from
            measurements.
    """

    latency_s: float
    energy_j: float
    avg_power_w: float
    peak_power_w: float
    source: str
    method: str = "profiled"
    profile_source: str = ""  # left out: `source`

    def __post_init__(self) -> None:
        if not self.profile_source:
            object.__setattr__(self, "profile_source", self.source)

    @classmethod
    def answer(cls, latency_s: float, energy_j: float, avg_power_w: float,
               peak_power_w: float, profile_source: str, method: str) -> KernelCost:
        """An answer read, by `method`, from a profile whose energy is `profile_source`. Its
        `source` is `profile_source` for a profiled point as measured ('profiled') or for a
        profile that was not measured (an estimate stays one), else 'estimated'."""
        measured = method == "profiled" or profile_source != "measured"
        return cls(latency_s, energy_j, avg_power_w, peak_power_w,
                   profile_source if measured else "estimated", method, profile_source)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class KernelTime:
    """One kernel (or, on a CPU, one aten op) seen by torch.profiler in a scenario."""

    name: str
    calls_per_op: float
    device_time_s: float  # per op call (summed over this kernel's launches in the call)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProfilePoint:
    """One measured scenario.

    Latency: per-call times over `reps` repetitions (CUDA events on a GPU, perf_counter on a
    CPU), after `warmup` calls. Energy: one telemetry window in which the op ran `window_calls`
    times back to back until the window spanned >= the shortest accurate window;
    `energy_j` is the window's energy divided by `window_calls`.
    """

    op: str
    device: str
    dtype: str
    shape: OpShape
    tokens: int
    preset: str
    latency_s: float
    latency_p10_s: float
    latency_p90_s: float
    latency_iqr_s: float
    reps: int
    energy_j: float | None
    source: str
    window_s: float | None = None
    window_calls: int = 0
    window_mean_latency_s: float | None = None  # window wall time / window_calls
    edges_aligned: bool = False  # window opened and closed right after counter updates
    avg_power_w: float | None = None
    peak_power_w: float | None = None
    start_temperature_c: float | None = None
    end_temperature_c: float | None = None
    clock_event_reasons: list[str] = field(default_factory=list)
    flops: float = 0.0
    bytes_moved: float = 0.0
    kernels: list[KernelTime] = field(default_factory=list)
    hw_counters: dict[str, float] = field(default_factory=dict)
    cooldown_s: float = 0.0
    measurable: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """As stored; a point of an int4 op records its group (`int4_group`), the default
        one too, so that the profile still says it after the default changes."""
        d = asdict(self)
        d["shape"] = self.shape.to_dict()
        if is_int4_op(self.op):
            d["shape"]["int4_group"] = self.shape.int4_group or default_group(
                self.shape.hidden, self.shape.inner)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfilePoint:
        """From `to_dict`'s form (its shape read by `stored_shape`)."""
        d = dict(d)
        d["shape"] = stored_shape(d["op"], d["shape"])
        d["kernels"] = [KernelTime(**k) for k in d.get("kernels", [])]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class DeviceInfo:
    """What the sweep recorded about a device before it started."""

    device: str
    name: str
    source: str
    counter_period_s: float | None
    min_window_s: float
    idle_power_w: float | None = None
    idle_temperature_c: float | None = None
    power_limit_w: float | None = None
