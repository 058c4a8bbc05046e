"""Token dispatch: sort the (token, expert) assignments by expert, apply capacity."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields, replace

import torch

from wattmoe.checks import check_positive_int
from wattmoe.errors import ConfigError, ShapeError


@dataclass
class Dispatch:
    """Assignments sorted by expert, after capacity drops.

    Attributes:
        token_idx: [N] int64 token of each kept assignment, grouped by expert.
        weight: [N] float32 combine weight of each kept assignment.
        counts: [E] int64 kept assignments per expert (segment lengths of token_idx).
        routed: [E] int64 assignments per expert before capacity.
        dropped: assignments dropped by the capacity limit.
        capacity: per-expert capacity used, or None.
        rowof: [T, k] integer row of each (token, slot) assignment in this order, -1 where it
            was dropped; None where not computed. With it the fused backend adds each token's
            k rows itself instead of with atomics (deterministic, and fewer bytes moved). Code
            that filters or reorders token_idx must set it to None.

    A CUDA graph captured with a dispatch reads its tensors at fixed addresses: `graph_key`,
    `clone` and `copy_` handle every tensor field, so a new one cannot be left stale. A tensor
    field that backends do not read is marked `metadata={"graph_input": False}` (`routed`,
    which only the layer's statistics use).
    """

    token_idx: torch.Tensor
    weight: torch.Tensor
    counts: torch.Tensor
    routed: torch.Tensor = field(metadata={"graph_input": False})
    dropped: int
    capacity: int | None
    rowof: torch.Tensor | None = None

    @property
    def offsets(self) -> torch.Tensor:
        """[E + 1] start of each expert's segment, and the total at the end."""
        return torch.cat((self.counts.new_zeros(1), self.counts.cumsum(0)))

    def graph_key(self) -> tuple[object, ...]:
        """What a graph captured with this dispatch depends on: (shape, dtype) of each tensor
        that backends read, None for an absent one. Host values (`dropped`, `capacity`) are not
        part of it."""
        return tuple(None if (t := getattr(self, n)) is None else (tuple(t.shape), t.dtype)
                     for n in _GRAPH_INPUTS)

    def clone(self) -> Dispatch:
        """A copy with every tensor cloned; host values and None fields are kept as they are."""
        return replace(self, **{n: None if (t := getattr(self, n)) is None else t.clone()
                                for n in _TENSORS})

    def copy_(self, other: Dispatch) -> Dispatch:
        """Copies `other`'s tensors that backends read into this dispatch's, in place, and returns
        self: the static inputs of a captured graph, refreshed before a replay. Host values are
        left as they are (a graph cannot read them anew). `other.graph_key()` must equal
        `self.graph_key()`.

        Raises:
            ValueError: a field is None in one dispatch and a tensor in the other, or the
                shapes differ.
        """
        for n in _GRAPH_INPUTS:
            dst, src = getattr(self, n), getattr(other, n)
            if (dst is None) != (src is None):
                raise ValueError(f"Dispatch.copy_: {n} is None in one dispatch only")
            if dst is not None and dst.shape != src.shape:  # copy_ would broadcast silently
                raise ValueError(f"Dispatch.copy_: {n} is {tuple(src.shape)}, the buffer "
                                 f"{tuple(dst.shape)}")
            if dst is not None:
                dst.copy_(src)
        return self


def _tensor_fields(graph_inputs_only: bool) -> tuple[str, ...]:
    """Names of Dispatch's fields annotated as tensors (or tensor | None)."""
    hints = typing.get_type_hints(Dispatch)
    return tuple(f.name for f in fields(Dispatch)
                 if torch.Tensor in (hints[f.name], *typing.get_args(hints[f.name]))
                 and (f.metadata.get("graph_input", True) or not graph_inputs_only))


_TENSORS = _tensor_fields(graph_inputs_only=False)
_GRAPH_INPUTS = _tensor_fields(graph_inputs_only=True)


def expert_capacity(tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """Switch-style capacity: ceil(capacity_factor * tokens * top_k / num_experts)."""
    return max(1, math.ceil(capacity_factor * tokens * top_k / num_experts))


def count_experts(expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[E] int64 occurrences of each expert in `expert_idx`.

    Same result as `torch.bincount(expert_idx, minlength=num_experts)`, without its host sync
    on CUDA (bincount reads the maximum back to size its output), so that a whole layer step
    can be captured in a CUDA graph.
    """
    counts = torch.zeros(num_experts, dtype=torch.int64, device=expert_idx.device)
    return counts.index_add_(0, expert_idx.reshape(-1), torch.ones_like(expert_idx.reshape(-1)))


def check_finite_rows(what: str, x: torch.Tensor, row: str, col: str) -> None:
    """Raises a ConfigError naming the count and the first (row, col) of x's NaN/inf values.

    For CPU tensors only (a value check on a GPU would synchronize the host: callers skip it
    there). x is [rows, cols]."""
    x = x.detach()
    if bool(torch.isfinite(x.sum(dtype=torch.float32))):
        return  # a finite sum has no NaN or inf in it (and costs a tenth of isfinite(x))
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        n = int(bad.sum())
        raise ConfigError(f"{what} has {n} NaN/inf value{'' if n == 1 else 's'} (first: "
                          f"{row} {r}, {col} {c} is {float(x[r, c])})")


def check_routing(topk_idx: torch.Tensor, topk_weight: torch.Tensor, num_experts: int) -> None:
    """Checks the arguments of `build_dispatch` (see there).

    Raises:
        ShapeError: topk_idx is not an integer [T, k] tensor, or topk_weight not a
            floating-point tensor of its shape.
        ConfigError: num_experts is not a positive integer; on the CPU also an expert index
            outside 0..num_experts-1 or a NaN/inf weight (the first one named).
    """
    check_positive_int("build_dispatch num_experts", num_experts)
    if (topk_idx.dim() != 2 or topk_idx.dtype.is_floating_point or topk_idx.dtype.is_complex
            or topk_idx.dtype == torch.bool):
        raise ShapeError(f"build_dispatch: topk_idx must be an integer [tokens, k] tensor, got "
                         f"{topk_idx.dtype} {tuple(topk_idx.shape)}")
    if topk_weight.shape != topk_idx.shape or not topk_weight.dtype.is_floating_point:
        raise ShapeError(f"build_dispatch: topk_weight must be a floating-point tensor of "
                         f"topk_idx's shape {tuple(topk_idx.shape)}, got {topk_weight.dtype} "
                         f"{tuple(topk_weight.shape)}")
    if topk_idx.device.type != "cpu" or topk_weight.device.type != "cpu":
        return  # a value check would synchronize the host (and break CUDA-graph capture)
    if topk_idx.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(topk_idx))
    if low < 0 or high >= num_experts:
        out = (topk_idx < 0) | (topk_idx >= num_experts)
        n = int(out.sum())
        t, s = (int(i) for i in out.nonzero()[0])
        raise ConfigError(
            f"build_dispatch: topk_idx has {n} expert {'index' if n == 1 else 'indices'} out of "
            f"range (first: token {t}, slot {s} is {int(topk_idx[t, s])}); experts are "
            f"0..{num_experts - 1} (num_experts={num_experts})")
    check_finite_rows("build_dispatch: topk_weight", topk_weight, "token", "slot")


def _rowof(order: torch.Tensor, rows: torch.Tensor, tokens: int, top_k: int) -> torch.Tensor:
    """[tokens, k]: the dispatch row of each (token, slot), from the rows in sorted order."""
    return torch.empty_like(order).scatter_(0, order, rows).view(tokens, top_k)


def build_dispatch(
    topk_idx: torch.Tensor,
    topk_weight: torch.Tensor,
    num_experts: int,
    capacity_factor: float | None = None,
    with_rowof: bool = False,
) -> Dispatch:
    """Groups the [T, k] assignments by expert with one stable sort (no loop over tokens).

    Within an expert, assignments keep token order; with a capacity, the first `capacity`
    assignments of each expert are kept and the rest dropped (earlier tokens win, as in the
    Switch Transformer). `with_rowof` also records each assignment's row (`Dispatch.rowof`;
    two more small kernels, so only for backends that use it).

    The counts (`Dispatch.counts`, which `SimpleMoELayer.tokens_per_expert` adds up) count
    every assignment, so bad ones are refused rather than counted: on CPU tensors an expert
    index outside 0..num_experts-1 or a NaN/inf weight (what a NaN token or gate weight gives)
    is a ConfigError naming the first. On a GPU the values are not checked: that would
    synchronize the host every step and break CUDA-graph capture of the step.

    Raises:
        ShapeError: topk_idx is not an integer [T, k] tensor, or topk_weight not a
            floating-point tensor of its shape.
        ConfigError: num_experts is not a positive integer; on the CPU, a bad index or weight.
    """
    check_routing(topk_idx, topk_weight, num_experts)
    tokens, top_k = topk_idx.shape
    flat_e = topk_idx.reshape(-1)
    flat_tok = torch.arange(tokens, device=topk_idx.device).repeat_interleave(top_k)
    order = torch.argsort(flat_e, stable=True)
    sorted_e = flat_e[order]
    token_idx = flat_tok[order]
    weight = topk_weight.reshape(-1)[order]
    routed = count_experts(sorted_e, num_experts)
    n = sorted_e.numel()
    if capacity_factor is None:
        rowof = None
        if with_rowof:
            rowof = _rowof(order, torch.arange(n, device=order.device), tokens, top_k)
        return Dispatch(token_idx, weight, routed, routed, 0, None, rowof)
    cap = expert_capacity(tokens, top_k, num_experts, capacity_factor)
    starts = routed.cumsum(0) - routed
    pos = torch.arange(n, device=sorted_e.device) - starts[sorted_e]
    keep = pos < cap
    kept = routed.clamp(max=cap)
    rowof = None
    if with_rowof:
        rowof = _rowof(order, torch.where(keep, keep.long().cumsum(0) - 1, -1), tokens, top_k)
    return Dispatch(
        token_idx[keep], weight[keep], kept, routed, int((routed - kept).sum()), cap, rowof
    )
