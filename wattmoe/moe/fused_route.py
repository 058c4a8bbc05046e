"""Fused routing: router scores, top-k, counts, dispatch and balance loss in two Triton kernels.

`AdaptiveRouter` followed by `build_dispatch` launches ~35 small kernels per layer step
(softmax, topk, gathers, counts, arange/repeat_interleave, argsort, ...): on an H200, for a
512-token OLMoE step, ~107 us of GPU time against ~0.25 ms for the experts (measured,
results/h200/kernels/run6). `fused_route` keeps the gate GEMM, the float cast and the strategy's
selection bias in torch and does the rest in two kernels (`_route_kernel.py`) after one
zero-fill (~19 us in all on the same step):

1. `route_topk`, a program per BLOCK_T tokens: scores (softmax or sigmoid) and probs over the
   E experts in registers, top-k of logits + bias by k rounds of argmax (ties to the lowest
   index), the combine weights (renormalized if the router does), and per assignment an atomic
   add on counts[e] whose old value is the assignment's slot within expert e; the block's
   column sums of probs are added atomically for the balance loss.
2. `route_scatter`, a program per block of assignments: the exclusive cumsum of counts in
   registers gives each expert's first row, and the assignment goes to row offsets[e] + slot of
   the expert-sorted `token_idx` / `weight`. Program 0 writes the balance and aux losses and
   adds counts into the layer's running `tokens_per_expert`.

Within one expert the assignments are therefore NOT in token order (slots are handed out by
atomics, in whatever order programs run); nothing downstream depends on that order when there
is no capacity factor (with one, earlier tokens must win, so the layer keeps `build_dispatch`).
There is no host synchronization: the grid depends on T, k and E only, so a whole layer step
stays capturable in a CUDA graph.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.moe.dispatch import Dispatch, build_dispatch
from wattmoe.moe.fused_triton import checked_triton, triton_cdiv, triton_runs_on
from wattmoe.moe.router import AdaptiveRouter, RouterOutput

# Expert backends whose layer steps route with `fused_route` (no capacity, no autograd).
FUSED_ROUTING_BACKENDS = frozenset({"fused", "fused_graph"})

ROUTE_NUM_WARPS = 4
_TILE_ELEMS = 1024  # [BLOCK_T, BLOCK_E] per route_topk program: 8 per thread, no spills
_SCATTER_ELEMS = 8192  # [BLOCK_N, BLOCK_E] elements per route_scatter program


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The two Triton functions: compiled for the GPU, or run by Triton's interpreter."""
    triton = checked_triton(interpret, "fused routing needs", "run fused routing")
    from wattmoe.moe._route_kernel import route_scatter, route_topk

    # token and assignment counts change with every step: no recompiles for their divisibility
    return (triton.jit(route_topk, do_not_specialize=["num_tokens"]),
            triton.jit(route_scatter, do_not_specialize=["num_assign", "num_tokens"]))


fused_route_available = triton_runs_on  # can `fused_route` run on x (CUDA, or CPU interpreted)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _bias_operand(bias: torch.Tensor | None, tokens: int, num_experts: int,
                  device: torch.device) -> tuple[int, torch.Tensor | None]:
    """(BIAS mode, contiguous fp32 operand): 0 none, 1 one bias [E], 2 a bias per token [T, E].

    Raises:
        ShapeError: the bias does not broadcast to [T, E] as [E], [1, E] or [T, E], or it is
            not on the logits' device.
    """
    if bias is None:
        return 0, None
    if bias.device != device:
        raise ShapeError(f"selection bias is on {bias.device}, the router's logits on {device}")
    shape = tuple(bias.shape)
    if shape in ((num_experts,), (1, num_experts)):
        return 1, bias.reshape(num_experts).float().contiguous()
    if shape == (tokens, num_experts):
        return 2, bias.float().contiguous()
    raise ShapeError(
        f"selection bias must be [{num_experts}] or [{tokens}, {num_experts}] for {tokens} "
        f"tokens and {num_experts} experts, got {shape}"
    )


def fused_route(
    router: AdaptiveRouter, x: torch.Tensor, tokens_per_expert: torch.Tensor | None = None
) -> tuple[RouterOutput, Dispatch]:
    """`router(x)` and `build_dispatch(..., capacity_factor=None)` in two Triton kernels.

    Args:
        router: the router (gate, score function, top-k, strategy, aux-loss coefficient).
        x: [T, H] tokens, on CUDA (or CPU under Triton's interpreter).
        tokens_per_expert: optional [E] int64 running counts; this step's counts are added.

    Returns:
        The router's output and the dispatch, as the unfused path gives them, except that
        within one expert's segment of `token_idx` the assignments are not in token order
        (slots come from atomics); ties in the selection go to the lowest expert index. The
        counts, balance and aux-loss tensors are views of one small buffer per call.

    Raises:
        ShapeError: x is not [T, H], or the strategy's bias does not fit [T, E].
        ConfigError: Triton cannot run on x's device (see `fused_route_available`).
    """
    if x.dim() != 2 or x.shape[1] != router.hidden_size:
        raise ShapeError(f"router expects [tokens, {router.hidden_size}], got {tuple(x.shape)}")
    if not fused_route_available(x):
        raise ConfigError(f"fused routing cannot run on {x.device} tensors here")
    tokens, num_experts, top_k = x.shape[0], router.num_experts, router.top_k
    if tokens == 0:  # nothing to launch: the unfused path handles the empty step
        routing = router(x)
        dispatch = build_dispatch(routing.topk_idx, routing.topk_weight, num_experts)
        return routing, dispatch

    logits = F.linear(x, router.gate.weight).float().contiguous()
    bias = router.strategy.selection_bias(logits)
    mode, bias_op = _bias_operand(bias, tokens, num_experts, logits.device)
    dev = logits.device
    num_assign = tokens * top_k
    tpe = tokens_per_expert
    if tpe is not None and (tpe.shape != (num_experts,) or tpe.dtype != torch.int64
                            or tpe.device != dev or not tpe.is_contiguous()):
        raise ShapeError(f"tokens_per_expert must be a contiguous [{num_experts}] int64 tensor "
                         f"on {dev}, got {tuple(tpe.shape)} {tpe.dtype} on {tpe.device}")

    # one zero-filled launch: counts [E] int64, then psum [E] and [balance, aux] as fp32
    buf = torch.zeros(num_experts + (num_experts + 3) // 2, dtype=torch.int64, device=dev)
    counts = buf[:num_experts]
    floats = buf[num_experts:].view(torch.float32)
    psum, loss = floats[:num_experts], floats[num_experts:num_experts + 2]
    probs = torch.empty(tokens, num_experts, dtype=torch.float32, device=dev)
    topk_idx = torch.empty(tokens, top_k, dtype=torch.int64, device=dev)
    topk_weight = torch.empty(tokens, top_k, dtype=torch.float32, device=dev)
    pos = torch.empty(tokens, top_k, dtype=torch.int32, device=dev)
    token_idx = torch.empty(num_assign, dtype=torch.int64, device=dev)
    weight = torch.empty(num_assign, dtype=torch.float32, device=dev)

    topk_kernel, scatter_kernel = _kernels(interpret=not x.is_cuda)
    block_e = _pow2(num_experts)
    block_t = max(1, min(32, _TILE_ELEMS // block_e))
    topk_kernel[(triton_cdiv(tokens, block_t),)](
        logits, bias_op if bias_op is not None else logits, probs, topk_idx, topk_weight, pos,
        counts, psum, tokens, num_experts,
        BLOCK_T=block_t, BLOCK_E=block_e, TOP_K=top_k, BLOCK_K=_pow2(top_k), BIAS=mode,
        SIGMOID=router.score_func == "sigmoid", NORMALIZE=bool(router.normalize_topk),
        num_warps=ROUTE_NUM_WARPS,
    )
    block_n = max(16, min(128, _SCATTER_ELEMS // block_e))
    scatter_kernel[(triton_cdiv(num_assign, block_n),)](
        counts, topk_idx, pos, topk_weight, token_idx, weight, psum, loss,
        tpe if tpe is not None else counts,
        num_assign, tokens, num_experts, float(router.aux_loss_coef),
        TOP_K=top_k, BLOCK_N=block_n, BLOCK_E=block_e, ADD_TPE=tpe is not None,
        num_warps=ROUTE_NUM_WARPS,
    )
    out = RouterOutput(
        logits=logits,
        probs=probs,
        topk_idx=topk_idx,
        topk_weight=topk_weight,
        routed_counts=counts,
        balance_loss=loss[0],
        aux_loss=loss[1],
        bias=bias,
    )
    router.strategy.observe(out)
    return out, Dispatch(token_idx, weight, counts, counts, 0, None, pos)
