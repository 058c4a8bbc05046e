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

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from wattmoe.errors import ConfigError
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.stacked import _members

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


_PARAM_DICTS = "_wattmoe_param_dicts"


def _param_dicts(experts: Sequence[nn.Module]) -> tuple[dict, ...]:
    """The parameter dicts (`nn.Module._parameters`) of the modules that hold the experts'
    parameters (their `nn.Linear`s), found once per set of expert modules: cached on an
    `nn.ModuleList` with the modules' identities (compared at C speed, as the expert stack
    does), found anew for a plain list. The dicts are the modules' own, read each time, so a
    parameter replaced in one (``load_state_dict(..., assign=True)``) is seen; a submodule
    replaced inside an expert is not, until an expert module is replaced (the stack has the
    same blind spot, `stacked.invalidate_stack`)."""
    members = _members(experts)
    cached = experts.__dict__.get(_PARAM_DICTS) if isinstance(experts, nn.Module) else None
    if cached is not None and cached[0] == members:
        return cached[1]
    dicts = tuple(m._parameters for e in members for m in e.modules() if m._parameters)
    if isinstance(experts, nn.Module):
        experts.__dict__[_PARAM_DICTS] = (members, dicts)
    return dicts


def needs_autograd(experts: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """True if autograd records this call and gradients would flow (then only `loop` is right).

    Every expert's parameters count: with only the first expert's, a layer whose first expert
    was frozen (``experts[0].requires_grad_(False)``) ran a stacked backend while training
    the others, which got no gradients. A training step stops at the first parameter; a
    step in grad mode with frozen dense experts reads every one (64 swiglu experts: ~40 us,
    256: ~200 us on a loaded 2-core CPU, where walking `experts.parameters()` took ~900 us
    for 64); int4 experts hold no parameters (~5 us)."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad:
        return True
    params = itertools.chain.from_iterable(map(dict.values, _param_dicts(experts)))
    # getattr(None, ..., False): a bias-free linear holds None; map keeps the walk in C
    return any(map(getattr, params, itertools.repeat("requires_grad"), itertools.repeat(False)))


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
