"""Execution backends for the experts of one device.

A backend computes sum_k w_k * expert_k(x) for every token from a `Dispatch`. `loop` is the
reference: one gather, one call per non-empty expert on its contiguous segment, one
scatter-add. Faster backends register under their own names and must match it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from wattmoe.errors import ConfigError
from wattmoe.moe.dispatch import Dispatch

ExpertBackend = Callable[[Sequence[nn.Module], torch.Tensor, Dispatch], torch.Tensor]

EXPERT_BACKENDS: dict[str, ExpertBackend] = {}


def register_backend(name: str) -> Callable[[ExpertBackend], ExpertBackend]:
    """Function decorator adding an expert execution backend under `name`."""

    def deco(fn: ExpertBackend) -> ExpertBackend:
        EXPERT_BACKENDS[name] = fn
        return fn

    return deco


def get_backend(name: str) -> ExpertBackend:
    """The backend called `name`.

    Raises:
        ConfigError: no backend has that name.
    """
    try:
        return EXPERT_BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown expert backend {name!r} (known: {', '.join(sorted(EXPERT_BACKENDS))})"
        ) from None


@register_backend("loop")
def loop_backend(experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """Reference: a Python loop over experts (never over tokens)."""
    out = torch.zeros_like(x)
    if d.token_idx.numel() == 0:
        return out
    xs = x.index_select(0, d.token_idx)
    ys = torch.empty_like(xs)
    bounds = d.offsets.tolist()
    for e, expert in enumerate(experts):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            ys[lo:hi] = expert(xs[lo:hi]).to(x.dtype)
    ys.mul_(d.weight.to(x.dtype).unsqueeze(1))
    out.index_add_(0, d.token_idx, ys)
    return out
