"""Execution backends for the experts of one device.

A backend computes sum_k w_k * expert_k(x) for every token from a `Dispatch`. `loop` is the
reference: one gather, one call per non-empty expert on its contiguous segment, one
scatter-add. Faster backends register under their own names and must match it:

- `loop`: one call per non-empty expert; runs everywhere.
- `grouped`: two `torch._grouped_mm` over stacked weights (`grouped.py`); everywhere (on CPU
  torch's kernel, or a loop where torch lacks it).
- `fused`: Triton, gather + gate/up + SwiGLU in one kernel, down + weighted combine in a
  second; int4 experts dequantized inside the GEMM (`fused_triton.py`). CUDA with Triton; on
  CPU Triton's interpreter if TRITON_INTERPRET=1, else the `grouped` math.
- `fused_graph`, `grouped_graph`: the same captured as CUDA graphs per step shape
  (`graphs.py`); elsewhere the eager backend.
- `auto`: picks one of `available_backends` per step size from a one-time calibration or a
  cost function, and records the choice (`autoselect.py`). `SimpleMoELayer`'s default: on an
  H200 the loop spends 2.2-7.5x the joules per token of the fused path (OLMoE, run 109).

All backends except `loop` are for inference: with autograd recording and expert parameters
that need gradients they run `loop`, so training still gets gradients.
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


def needs_autograd(experts: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """True if autograd records this call and gradients would flow (then only `loop` is right)."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    return any(p.requires_grad for p in experts[0].parameters()) if len(experts) else False


def available_backends(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> list[str]:
    """Backends that run natively (not through a fallback) on `device` with `dtype`.

    `loop` everywhere; `grouped` where torch has `_grouped_mm`; on CUDA, `fused`,
    `fused_graph` and `grouped_graph` where Triton imports. `auto` itself is not listed.
    """
    dev = torch.device(device)
    names = ["loop"]
    if HAS_GROUPED_MM:
        names.append("grouped")
    if dev.type == "cuda" and torch.cuda.is_available():
        if HAS_GROUPED_MM:
            names.append("grouped_graph")
        if triton_available() and dtype in (torch.bfloat16, torch.float16,
                                                         torch.float32):
            names += ["fused", "fused_graph"]
    return [n for n in names if n in EXPERT_BACKENDS]


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


# The other backends register themselves on import (they import this module first).
from wattmoe.moe import autoselect, graphs  # noqa: E402, F401
from wattmoe.moe.fused_triton import triton_available  # noqa: E402
from wattmoe.moe.grouped import HAS_GROUPED_MM  # noqa: E402
