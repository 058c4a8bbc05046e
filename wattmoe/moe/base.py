"""Configuration and result types of the MoE model."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from wattmoe.checks import check_positive_int, is_finite_real, is_int
from wattmoe.errors import ConfigError

ExpertForm = Literal["swiglu", "relu"]
ScoreFunc = Literal["softmax", "sigmoid"]

EXPERT_FORMS: tuple[str, ...] = ("swiglu", "relu")
SCORE_FUNCS: tuple[str, ...] = ("softmax", "sigmoid")

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turns 'fp32' / 'bf16' / 'fp16' (or a torch dtype) into a torch dtype.

    Raises:
        ConfigError: the name is not a supported dtype.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype {dtype} is not supported; use one of fp32, bf16, fp16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of fp32, bf16, fp16"
        ) from None


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a torch dtype ('fp32', 'bf16', 'fp16')."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


#: the seeds torch's generator takes (a negative one is taken modulo 2**64)
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Runs the block with torch's CPU generator seeded (restored afterwards); None = as is.

    Raises:
        ConfigError: an integer seed outside -2**63 .. 2**64 - 1, which torch's generator
            refuses with a bare "Overflow when unpacking long long".
    """
    if seed is None:
        yield
        return
    if is_int(seed) and not SEED_MIN <= seed <= SEED_MAX:
        raise ConfigError(f"seed must be an integer from -2**63 to 2**64 - 1 (what torch's "
                          f"generator takes), got {seed}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


#: the largest width (hidden, inner, shared inner) and number of experts a config takes:
#: 2**24, far above any real model's (DeepSeek-V3: 7168 hidden; 256 experts) and small enough
#: that a weight's element and byte counts stay exact int64 and float numbers everywhere
#: (above it torch, numpy and the placement's arrays failed with tracebacks, not errors)
MAX_SIZE = 1 << 24


@dataclass(frozen=True)
class MoEConfig:
    """Shape and routing of one MoE model (all of its MoE layers share it).

    Attributes:
        name: preset or user name.
        hidden_size: model width H.
        expert_inner_size: inner width F of one routed expert.
        num_experts: routed experts E per layer.
        top_k: experts chosen per token.
        num_layers: MoE layers in the model (dense layers are not counted).
        expert_form: 'swiglu' (gate, up, down) or 'relu' (Linear-ReLU-Linear).
        num_heads: attention heads of the transformer block.
        num_kv_heads: key/value heads (grouped-query attention); equal to num_heads if None.
        num_shared_experts: always-active experts of the same inner size (DeepSeek, Qwen-MoE).
        shared_inner_size: inner width of the fused shared expert; num_shared * F if None.
        score_func: 'softmax' or 'sigmoid' router scores.
        normalize_topk: renormalize the chosen experts' scores to sum to one.
        capacity_factor: per-expert capacity = ceil(cf * tokens * top_k / E); None = unlimited.
        aux_loss_coef: weight of the Switch load-balancing loss.
        source: where the shape comes from (model card / config file).
    """

    name: str
    hidden_size: int
    expert_inner_size: int
    num_experts: int
    top_k: int
    num_layers: int = 1
    expert_form: ExpertForm = "swiglu"
    num_heads: int = 8
    num_kv_heads: int | None = None
    num_shared_experts: int = 0
    shared_inner_size: int | None = None
    score_func: ScoreFunc = "softmax"
    normalize_topk: bool = True
    capacity_factor: float | None = None
    aux_loss_coef: float = 0.01
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "expert_inner_size", "num_experts", "top_k", "num_layers",
                     "num_heads"):
            check_positive_int(name, getattr(self, name))
        for name in ("hidden_size", "expert_inner_size", "num_experts", "shared_inner_size"):
            value = getattr(self, name)
            if is_int(value) and value > MAX_SIZE:
                raise ConfigError(f"{name}={value} in config {self.name!r} is larger than "
                                  f"{MAX_SIZE} (2**24), the most a config takes (far above any "
                                  "real model's; torch and the placement cannot size it)")
        if self.top_k > self.num_experts:
            raise ConfigError(
                f"top_k={self.top_k} is larger than num_experts={self.num_experts} "
                f"in config {self.name!r}"
            )
        if self.expert_form not in EXPERT_FORMS:
            raise ConfigError(
                f"expert_form must be one of {EXPERT_FORMS}, got {self.expert_form!r}"
            )
        if self.score_func not in SCORE_FUNCS:
            raise ConfigError(f"score_func must be one of {SCORE_FUNCS}, got {self.score_func!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_kv_heads is not None:
            check_positive_int("num_kv_heads", self.num_kv_heads)
        kv = self.kv_heads
        if self.num_heads % kv:
            raise ConfigError(f"num_kv_heads={kv} must divide num_heads={self.num_heads}")
        if not is_int(self.num_shared_experts) or self.num_shared_experts < 0:
            raise ConfigError(f"num_shared_experts must be an integer >= 0, got "
                              f"{self.num_shared_experts!r}")
        if self.shared_inner_size is not None:
            check_positive_int("shared_inner_size", self.shared_inner_size)
        if not isinstance(self.normalize_topk, bool):
            raise ConfigError(f"normalize_topk must be True or False, got {self.normalize_topk!r}")
        if self.capacity_factor is not None and not (
                is_finite_real(self.capacity_factor) and self.capacity_factor > 0):
            raise ConfigError(f"capacity_factor must be a finite number > 0 or None, got "
                              f"{self.capacity_factor!r}")
        if not (is_finite_real(self.aux_loss_coef) and self.aux_loss_coef >= 0):
            raise ConfigError(f"aux_loss_coef must be a finite number >= 0, got "
                              f"{self.aux_loss_coef!r}")

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def shared_size(self) -> int:
        """Inner width of the (fused) shared expert; 0 if there is none."""
        if self.num_shared_experts == 0:
            return 0
        return self.shared_inner_size or self.num_shared_experts * self.expert_inner_size

    @property
    def expert_params(self) -> int:
        """Weights of one routed expert."""
        mats = 3 if self.expert_form == "swiglu" else 2
        return mats * self.hidden_size * self.expert_inner_size

    def expert_bytes(self, bytes_per_param: float = 2.0) -> int:
        """Memory of one routed expert's weights (bf16 by default)."""
        return int(self.expert_params * bytes_per_param)

    def expert_flops(self, tokens: int) -> int:
        """Multiply-add FLOPs (2 per MAC) of one expert over `tokens` tokens."""
        return 2 * tokens * self.expert_params

    def replace(self, **changes: object) -> MoEConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def scaled(self, scale: float, multiple: int = 64) -> MoEConfig:
        """The same model with hidden and expert widths multiplied by `scale`.

        Widths are rounded to a multiple of `multiple` (so int4 groups and attention heads fit);
        the numbers of experts, top-k and layers are kept.

        Raises:
            ConfigError: a scale that is not finite and > 0, or so large that a width overflows.
        """
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"scale must be > 0 and finite, got {scale}")
        if scale == 1:
            return self

        def rnd(v: int, m: int) -> int:
            if not math.isfinite(v * scale):  # round() of inf is an OverflowError
                raise ConfigError(f"scale {scale:g} is too large: a width of {v} overflows")
            w = max(m, round(v * scale / m) * m)
            if w > MAX_SIZE:
                raise ConfigError(f"scale {scale:g} is too large: a width of {v} becomes {w:.4g}, "
                                  f"above {MAX_SIZE} (2**24), the most a config takes")
            return w

        heads = self.num_heads
        hidden = rnd(self.hidden_size, max(multiple, heads))
        while hidden % heads:
            heads //= 2
        kv = min(self.kv_heads, heads)
        while heads % kv:
            kv -= 1
        return self.replace(
            name=f"{self.name}@{scale:g}",
            hidden_size=hidden,
            expert_inner_size=rnd(self.expert_inner_size, multiple),
            shared_inner_size=rnd(self.shared_size, multiple) if self.shared_size else None,
            num_heads=heads,
            num_kv_heads=kv,
        )
