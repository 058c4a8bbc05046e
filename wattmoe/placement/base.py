"""The placement contract: the cost interface, expert shape, objective, constraints, errors.

Placement decides, for every MoE layer, which devices host a replica of which expert. Its
inputs are a cluster (`spec.ClusterSpec`), the expected per-expert token counts
(`loads.ExpertLoads`), the expert shape (`ExpertShape`) and a cost provider that says what
one expert costs on one device (`ExpertCostProvider`, implemented by
`wattmoe.cost_model.KernelCostModel` from real profiles and by
`analytic.AnalyticCostProvider` from a roofline). Everything here is a pure function over
arrays and graphs; files are read only at the edge (`spec.load_cluster`, `loads.read_loads`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from wattmoe.cost_model.work import INT4_SCALE_BYTES, int4_group, int4_weight_bytes
from wattmoe.errors import ConfigError, WattmoeError
from wattmoe.int4_layout import FRAGMENT_BYTES, INT4_LAYOUTS, fused_layouts

EXPERT_FORMS: tuple[str, ...] = ("swiglu", "relu")
#: Bytes per element of the dtypes a placement can be asked about.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5}
#: Expert backends that run int4 experts on a GPU with the fused Triton kernels
#: (`wattmoe.moe.fused_triton`), which hold a copy of the weights in their own order besides the
#: packed codes and scales (`ExpertShape.fused_copy_bytes`). `auto` is among them: on a GPU its
#: calibration runs `fused` on the stack (the copy stays in the stack's kernel cache whichever
#: candidate wins), and its steps of at most 512 tokens run the fused kernels in whole-step
#: graphs (every `moe_layer_int4:auto` point of the H200 profile ran them, 1-8192 tokens).
FUSED_BACKENDS: frozenset[str] = frozenset({"auto", "fused", "fused_graph"})


class PlacementError(WattmoeError, ValueError):
    """A placement input is invalid (loads, cluster, objective, placement file)."""


class InfeasibleError(PlacementError):
    """No placement satisfies the constraints; the message says which one and by how much."""


def check_time_limit(time_limit_s: object) -> None:
    """Raises `PlacementError` unless `time_limit_s` is None or a finite number > 0."""
    if time_limit_s is None:
        return
    if (isinstance(time_limit_s, bool) or not isinstance(time_limit_s, (int, float))
            or not math.isfinite(time_limit_s) or time_limit_s <= 0):
        raise PlacementError(f"solver time_limit_s must be a finite number > 0 or None, got "
                             f"{time_limit_s!r}")


@runtime_checkable
class ExpertCostProvider(Protocol):
    """What placement needs to know about kernels: the cost of one expert on one device.

    `wattmoe.cost_model.KernelCostModel` satisfies it from measured profiles;
    `wattmoe.placement.analytic.AnalyticCostProvider` from a roofline (estimates).
    """

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        """(latency_s, energy_j) of one expert (form 'swiglu'|'relu', weights [hidden x inner])
        over `tokens` tokens on cost-model device `device`; energy includes the device's idle
        power during that time."""
        ...

    def idle_power_w(self, device: str) -> float: ...


@dataclass(frozen=True)
class MatrixCopy:
    """The fused int4 kernels' copy of one weight matrix of one replica
    (`ExpertShape.fused_copy_matrices`).

    Attributes:
        rows: R, the matrix's rows (gate and up stacked: 2F for 'swiglu'; down: H).
        k: K, its input columns (gate and up: H; down: F).
        codes_bytes: the copy of its packed codes as fragment words: R K / 2 bytes where a
            packed row is whole 32-byte blocks and the group at least one block, else 0 (the
            kernels read the half-split codes as stored).
        scales_bytes: the copy of its fp16 group scales as pair words: 2 R K / G bytes where
            the codes get words (`codes_bytes` > 0) and each half of a row is whole groups,
            else 0. Made whether the codes are copied or stored in tile order.
        tiles: `int4_layout.tile_layout` of the matrix, or None: where not None, codes stored
            in the kernels' tile order are read in place, without the `codes_bytes` copy.
    """

    rows: int
    k: int
    codes_bytes: int
    scales_bytes: int
    tiles: tuple[int, int] | None


@dataclass(frozen=True)
class ExpertShape:
    """The shape of one routed expert, the unit that placement moves around.

    Attributes:
        hidden: model width H (activations of one token are H values each way).
        inner: expert inner width F.
        form: 'swiglu' (gate, up, down: 3 H x F matrices) or 'relu' (2 matrices).
        dtype: weight and activation dtype ('bf16', 'fp16', 'fp32', 'fp8', 'int4').
    """

    hidden: int
    inner: int
    form: str = "swiglu"
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("hidden", "inner"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"expert shape field {name} must be a positive integer, "
                                  f"got {v!r}")
        if self.form not in EXPERT_FORMS:
            raise ConfigError(f"expert shape field form must be one of {EXPERT_FORMS}, "
                              f"got {self.form!r}")
        if self.dtype not in DTYPE_BYTES:
            raise ConfigError(f"expert shape field dtype must be one of {tuple(DTYPE_BYTES)}, "
                              f"got {self.dtype!r}")

    @property
    def params(self) -> int:
        """Weights of one expert."""
        return (3 if self.form == "swiglu" else 2) * self.hidden * self.inner

    @property
    def weight_bytes(self) -> int:
        """Memory one replica of the expert takes (weights only; int4: the packed codes and
        the fp16 scale of each group of the default size, `cost_model.work.int4_weight_bytes`)."""
        per_weight = (int4_weight_bytes(self.hidden, self.inner) if self.dtype == "int4"
                      else DTYPE_BYTES[self.dtype])
        return math.ceil(self.params * per_weight)

    @property
    def fused_copy_bytes(self) -> int:
        """Memory the fused int4 kernels hold for one replica on a GPU besides its weights
        (`wattmoe.moe.fused_triton.copy_bytes` of a stack, per expert); 0 unless int4.

        Per matrix of K input columns (gate and up: K = hidden; down: K = inner) and R rows:
        one copy of the packed codes as fragment words (int32 [R, K/8]: the codes' R K / 2
        bytes again) where a packed row is whole 32-byte blocks (`quant.fragment_words`),
        and with it one of the fp16 group scales as pair words (int32 [R, G/2]: the scales'
        2 R G bytes again) where each half of a row is whole groups (`quant.scale_pairs`); the
        tile-order copies (`quant.tile_rows`) are the same bytes in another order. Where both
        apply to every matrix the copy equals `weight_bytes` and a GPU holds twice the
        weights: every preset, since the default group is one whose halves are whole where
        such a group exists (`int4_layout.default_group`; before session 17 Qwen1.5-MoE's
        groups of 128 left its down rows' halves not whole, 0.99x, and `tiny`'s of 64 0.96x).
        Groups of fewer than 32 columns make K steps too short for fragment words: no copy.

        A lower bound: a stack whose kernel configs read K steps of two sizes (OLMoE's
        512-token entry on the H200) holds a tile-order copy of its codes for each, which the
        shape alone does not say (`docs/kernels.md`).
        """
        return sum(m.codes_bytes + m.scales_bytes for m in self.fused_copy_matrices())

    def tiles_copy_bytes(self) -> int:
        """`fused_copy_bytes` of a replica whose codes are stored in the fused kernels' tile
        order (`SimpleMoELayer.set_int4_layout('tiles')`): the kernels read the codes of each
        matrix that their tile-order entries read (`int4_layout.fused_layouts`) in place, and
        keep only the copy of its scales as pair words; the other matrices as in
        `fused_copy_bytes`. A lower bound, as that is: a launch of another K step (OLMoE's
        512-token down launch on the H200) keeps a copy of its codes (run 118: an OLMoE layer
        used at 64-4096 tokens held 0.30 GB, 0.60x its 0.50 GB with the codes row-major,
        where this counts 0.52x)."""
        return sum(m.scales_bytes + (0 if m.tiles is not None else m.codes_bytes)
                   for m in self.fused_copy_matrices())

    def fused_copy_matrices(self) -> tuple[MatrixCopy, ...]:
        """What `fused_copy_bytes` and `tiles_copy_bytes` count, per matrix: gate and up rows
        (stacked), then down rows; () unless int4."""
        if self.dtype != "int4":
            return ()
        group = int4_group(self.hidden, self.inner)
        rows13 = (2 if self.form == "swiglu" else 1) * self.inner
        tiles = fused_layouts(self.hidden, self.inner, self.form, group)
        table = []
        for rows, k, layout in zip((rows13, self.hidden), (self.hidden, self.inner), tiles,
                                   strict=True):
            codes = scales = 0
            # the kernels read the half-split codes as stored unless a K step (at most a
            # group of packed columns: `fused_triton._fit`) is whole 32-byte blocks
            if not ((k // 2) % FRAGMENT_BYTES or group < FRAGMENT_BYTES):
                codes = rows * k // 2
                if (k // 2) % group == 0:
                    scales = math.ceil(rows * (k // group) * INT4_SCALE_BYTES)
            table.append(MatrixCopy(rows, k, codes, scales, layout))
        return tuple(table)

    def replica_bytes(self, kind: str, backend: str | None = None,
                      int4_layout: str = "rows") -> int:
        """Memory one replica takes on a device of `kind` ('gpu' | 'cpu') whose experts run
        expert backend `backend` (None: not said, as with the analytic costs): its weights
        (`weight_bytes`), plus, for int4 experts on a GPU with a fused backend
        (`FUSED_BACKENDS`), the fused kernels' copy of them (`fused_copy_bytes`; with
        `int4_layout` 'tiles', codes stored in the kernels' tile order, `tiles_copy_bytes`).
        The one figure placement counts memory with: slots, infeasibility errors, a summary's
        memory.

        Raises:
            ConfigError: int4_layout is not 'rows' or 'tiles'.
        """
        if int4_layout not in INT4_LAYOUTS:
            raise ConfigError(f"int4 layout {int4_layout!r}: one of {INT4_LAYOUTS}")
        if not (kind == "gpu" and backend in FUSED_BACKENDS):
            return self.weight_bytes
        return self.weight_bytes + (self.tiles_copy_bytes() if int4_layout == "tiles"
                                    else self.fused_copy_bytes)

    @property
    def activation_bytes_per_token(self) -> float:
        """Bytes of one token's activations sent one way (to the expert, or back)."""
        # int4/fp8 are weight formats; activations travel in bf16.
        return self.hidden * max(DTYPE_BYTES[self.dtype], 2.0)

    @classmethod
    def from_config(cls, config: object, dtype: str = "bf16") -> ExpertShape:
        """From a `wattmoe.moe.MoEConfig` (duck-typed: hidden_size, expert_inner_size,
        expert_form)."""
        return cls(int(config.hidden_size), int(config.expert_inner_size),  # type: ignore[attr-defined]
                   str(config.expert_form), dtype)  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, object]:
        return {"hidden": self.hidden, "inner": self.inner, "form": self.form,
                "dtype": self.dtype}


OBJECTIVE_TERMS: tuple[str, ...] = ("energy", "latency", "balance")


@dataclass(frozen=True)
class Objective:
    """What a solver minimizes: a weighted mix of three metrics.

    - ``energy``: predicted joules per token (dynamic energy of every expert kernel, the
      activations' transfer energy, and the idle power of every powered device over the
      batch);
    - ``latency``: seconds per batch of the MoE part, the sum over layers of the slowest
      device's time in that layer (layers run one after the other);
    - ``balance``: EPLB's imbalance, max over devices / mean over devices of the tokens per
      device, averaged over layers (1.0 is perfect).

    Each term is divided by its value for the round-robin placement of the same problem, so
    the weights of a mix are unitless ("energy=1,latency=0.5" weighs a 1% latency change half
    as much as a 1% energy change).
    """

    energy: float = 0.0
    latency: float = 0.0
    balance: float = 0.0

    def __post_init__(self) -> None:
        for name in OBJECTIVE_TERMS:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"objective weight {name} must be a finite number >= 0, "
                                  f"got {v!r}")
        if self.energy + self.latency + self.balance <= 0:
            raise ConfigError("objective needs at least one positive weight "
                              "(energy, latency or balance)")

    @classmethod
    def parse(cls, text: str | Objective) -> Objective:
        """'energy' | 'latency' | 'balance' | 'energy=1,latency=0.5'."""
        if isinstance(text, Objective):
            return text
        s = str(text).strip().lower()
        if s in OBJECTIVE_TERMS:
            return cls(**{s: 1.0})
        weights: dict[str, float] = {}
        for part in s.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in OBJECTIVE_TERMS:
                raise ConfigError(
                    f"cannot read objective {text!r}: use one of {', '.join(OBJECTIVE_TERMS)} "
                    "or a mix like 'energy=1,latency=0.5'"
                )
            if name in weights:  # was: the last one won
                raise ConfigError(f"objective {text!r} weighs {name} more than once")
            try:
                weights[name] = float(value)
            except ValueError:
                raise ConfigError(f"objective weight {name}={value.strip()!r} is not a number") \
                    from None
        return cls(**weights)

    @property
    def name(self) -> str:
        """'energy' for a single term of weight 1, 'latency=0.5' or 'energy=1,latency=0.5'
        otherwise; `parse` reads it back to the same weights."""
        terms = [(n, getattr(self, n)) for n in OBJECTIVE_TERMS if getattr(self, n) > 0]
        if len(terms) == 1 and terms[0][1] == 1:
            return terms[0][0]
        return ",".join(f"{n}={_weight_text(w)}" for n, w in terms)


def _weight_text(w: float) -> str:
    """A weight as short as it reads back exactly ('0.5', not '0.5000'; 1/3 in full)."""
    short = f"{w:g}"
    return short if float(short) == w else repr(float(w))


@dataclass(frozen=True)
class Constraints:
    """Limits every solver respects.

    Memory per device always applies (from the cluster spec), and so does each device's
    optional power budget: a device over its budget is throttled the way a power cap throttles
    it (its kernels stretch until its power while busy fits), which the cost curves include.

    Attributes:
        latency_slo_s: upper bound on the batch latency (the `latency` metric); None = none.
        max_replicas: most replicas one expert may have (<= number of devices); 1 disables
            replication.
        redundant_per_layer: most extra replicas per layer in total (EPLB's
            num_replicas - num_experts); None = limited by memory and `max_replicas` only.
    """

    latency_slo_s: float | None = None
    max_replicas: int = 4
    redundant_per_layer: int | None = None

    def __post_init__(self) -> None:
        if self.latency_slo_s is not None and not (
            isinstance(self.latency_slo_s, int | float) and self.latency_slo_s > 0
            and math.isfinite(self.latency_slo_s)
        ):
            raise ConfigError(f"latency_slo_s must be a positive number or None, "
                              f"got {self.latency_slo_s!r}")
        if isinstance(self.max_replicas, bool) or not isinstance(self.max_replicas, int) \
                or self.max_replicas < 1:
            raise ConfigError(f"max_replicas must be an integer >= 1, got {self.max_replicas!r}")
        if self.redundant_per_layer is not None and (
            isinstance(self.redundant_per_layer, bool)
            or not isinstance(self.redundant_per_layer, int) or self.redundant_per_layer < 0
        ):
            raise ConfigError(f"redundant_per_layer must be an integer >= 0 or None, "
                              f"got {self.redundant_per_layer!r}")
