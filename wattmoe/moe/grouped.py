"""`grouped`: both projections of all experts as two grouped GEMMs (`torch._grouped_mm`).

One gather, one grouped GEMM for gate+up over the stacked [E, R, H] weights, the activation,
one grouped GEMM for down, the weighted scatter-add. On CUDA with bf16 on Hopper
`torch._grouped_mm` runs CUTLASS kernels with the group offsets on the device (no host sync);
elsewhere it runs PyTorch's own fallback. Where `torch._grouped_mm` is missing or refuses the
layout (torch < 2.9 on CPU, strides not a multiple of 16 bytes), a per-expert loop over the
stacked weights takes its place, so the backend runs everywhere.

int4 experts are dequantized to the compute dtype on every call (the whole stack is
materialized): that is the cost the fused int4 kernel avoids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wattmoe.moe.backends import loop_backend, needs_autograd, register_backend
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.stacked import ExpertStack, stacked_experts

log = logging.getLogger(__name__)

HAS_GROUPED_MM = hasattr(torch, "_grouped_mm")
_refused: set[tuple[str, torch.dtype, int, int]] = set()


def _loop_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a [N, K] rows grouped by offs (cumulative ends), b [E, K, M] -> [N, M] (host sync)."""
    out = a.new_empty(a.shape[0], b.shape[2])
    lo = 0
    for e, hi in enumerate(offs.tolist()):
        if hi > lo:
            torch.mm(a[lo:hi], b[e], out=out[lo:hi])
        lo = hi
    return out


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """`torch._grouped_mm(a, b, offs=offs)` where it runs, else a loop with the same result.

    Args:
        a: [N, K] rows of all groups, group g in rows offs[g-1]..offs[g]-1.
        b: [E, K, M] one matrix per group (a transposed view of [E, M, K] weights is fine).
        offs: [E] int32 cumulative row ends.
    """
    key = (a.device.type, a.dtype, a.shape[1], b.shape[2])
    if HAS_GROUPED_MM and key not in _refused:
        try:
            return torch._grouped_mm(a, b, offs=offs)
        except (RuntimeError, NotImplementedError) as exc:
            # Layout or dtype this build refuses: remember, and use the loop from now on.
            _refused.add(key)
            log.info("torch._grouped_mm refused %s (%s); using a per-expert loop", key, exc)
    return _loop_mm(a, b, offs)


def activation(h: torch.Tensor, gated: bool) -> torch.Tensor:
    """silu(gate) * up on [N, 2F] (gate columns first), or relu on [N, F]."""
    if gated:
        f = h.shape[1] // 2
        return F.silu(h[:, :f]) * h[:, f:]
    return F.relu(h)


def grouped_forward(st: ExpertStack, x: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """sum_k w_k * expert_k(x) from the stacked weights with two grouped GEMMs."""
    out = torch.zeros_like(x)
    if d.token_idx.numel() == 0:
        return out
    w13, w2 = st.dense(x.dtype)
    offs = d.counts.cumsum(0).to(torch.int32)
    xs = x.index_select(0, d.token_idx)
    h = grouped_mm(xs, w13.transpose(1, 2), offs)
    y = grouped_mm(activation(h, st.gated), w2.transpose(1, 2), offs)
    y.mul_(d.weight.to(y.dtype).unsqueeze(1))
    out.index_add_(0, d.token_idx, y)
    return out


@register_backend("grouped")
def grouped_backend(experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """Two grouped GEMMs over stacked weights (see the module docstring)."""
    if needs_autograd(experts, x):
        return loop_backend(experts, x, d)
    return grouped_forward(stacked_experts(experts), x, d)
