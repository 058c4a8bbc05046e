"""Fused routing: router scores, top-k, counts, dispatch and balance loss in two Triton kernels.

`AdaptiveRouter` followed by `build_dispatch` launches ~35 small kernels per layer step
(softmax, topk, gathers, counts, arange/repeat_interleave, argsort, ...): on an H200, for a
512-token OLMoE step, ~107 us of GPU time against ~0.25 ms for the experts (measured,
results/h200/kernels/run6). `fused_route` does it in two kernels (`_route_kernel.py`) after one
zero-fill. The gate GEMM takes one of two paths:

- torch: `F.linear`, the float cast and the strategy's selection bias in torch, then the
  kernels read the logits (~19 us in all on that step: GEMM 5.5, cast 2.8, zero-fill 0.9,
  kernels 6.4 + 4.0, 19.6 us summed; results/h200/kernels/run22_verify).
- fused: `route_topk` computes the logits itself from x and the gate weight (fp32
  accumulation, rounded through x's dtype as `F.linear(x, w).float()` rounds them) and stores
  them: no cuBLAS GEMM and no cast. It can when the strategy's selection bias does not need
  the logits (it does not override `RoutingStrategy.selection_bias`, so there is none), x and
  the gate weight share a float dtype and device, E fits one 512-wide tile and the logits
  need no gradient. Each program (16 tokens) streams the weight from L2, so where the token
  blocks are few H is split over nsplit programs per block (~128 programs in all), and the
  last program of a block to finish adds the parts in split order (the same sums on every
  run) and goes on with the top-k. Measured on an H200 (Triton 3.6, bf16, the whole
  `fused_route` replayed in a CUDA graph, us, torch gate -> fused split;
  results/h200/kernels/run26_gate_check/route_gate.json, run 25 before nsplit became a runtime
  argument): OLMoE's gate (E=64, H=2048, 256 KiB) at 1 / 64 / 512 / 4096 tokens 16.2 -> 14.0,
  18.6 -> 15.7, 19.4 -> 16.0, 29.0 -> 29.9 (no split at 4096); E=60 (240 KiB) 17.5-33.5 ->
  16.1-24.3 at every size; E=128 (512 KiB) 16.8 -> 18.6 at 1 token, 18.6 -> 21.5 at 64, 20.8
  -> 19.7 at 512, 32.4 -> 43.6 at 4096 (and no energy difference in Qwen3's captured layer
  step at 64 or 512 tokens); E=256 H=7168 (3.5 MiB) worse at every size (24.8 -> 38.0 at 512).
  In the captured OLMoE layer step: route_topk 9.9 us with the GEMM against 6.3 us + 5.6
  (cuBLAS) + 2.8 (cast) without, span 261.4 vs 266.4 us at 512 tokens, 223.6 vs 228.1 at 64
  (run 26); 360.3 vs 366.4 uJ/token at 512 (run 25, NVML counter). The fused logits are
  closer to exact: against the products summed in fp64 and rounded once to bf16, the fused
  logits differ on 0-0.4% of entries, cuBLAS's on up to 42% (E=60; run 26). fp32 gates need
  exact fp32 products (`input_precision="ieee"`: FMA, no tensor cores) and are never fused by
  default.

`fuse_gate=None` (what the layer uses) therefore fuses bf16/fp16 gates of at most 256 KiB;
`fuse_gate=True` forces the fused GEMM wherever it can run (else ConfigError), `False` keeps
torch's; the module's `FUSE_GATE = False` turns the None choice off, for benchmarks.

Then:

1. `route_topk`, a program per BLOCK_T tokens: the logits first when the GEMM is fused, then
   scores (softmax or sigmoid) and probs over the E experts in registers, top-k of logits +
   bias by k rounds of argmax (ties to the lowest index), the combine weights (renormalized if
   the router does), and per assignment an atomic add on counts[e] whose old value is the
   assignment's slot within expert e; the block's column sums of probs are added atomically
   for the balance loss.
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
from wattmoe.moe.router import AdaptiveRouter, RouterOutput, RoutingStrategy

# Expert backends whose layer steps route with `fused_route` (no capacity, no autograd).
FUSED_ROUTING_BACKENDS = frozenset({"fused", "fused_graph"})

# Module switch: False keeps the gate GEMM in torch wherever `fuse_gate` is left at None.
FUSE_GATE = True

ROUTE_NUM_WARPS = 4
_TILE_ELEMS = 1024  # [BLOCK_T, BLOCK_E] per route_topk program: 8 per thread, no spills
_SCATTER_ELEMS = 8192  # [BLOCK_N, BLOCK_E] elements per route_scatter program
# fused gate GEMM: tl.dot needs every block >= 16; [16, BLOCK_E] top-k tiles; weight tiles
# [BLOCK_E, BLOCK_H] of ~8K elements; 8 warps past 64 experts, where 4 spill. E past one
# 512-wide tile keeps the torch GEMM: at BLOCK_E 1024 even 8 warps spill (ptxas, sm_90,
# Triton 3.9: 255 registers and 0.7-3 KB of stack per thread); BLOCK_E 512 with a split
# spills 120 B (forced only: such gates are never fused by default)
_GATE_BLOCK_T = 16
_GATE_MAX_BLOCK_E = 512
_GATE_TILE_ELEMS = 8192
_GATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# fuse_gate=None fuses 16-bit gates of at most this many bytes: each program streams its share
# of the weight from L2, so bigger gates gain nothing over cuBLAS (see the module docstring)
_GATE_AUTO_MAX_BYTES = 256 * 1024
# split H over this many programs in all where the token blocks are fewer (NSPLIT per block)
_GATE_TARGET_PROGRAMS = 128


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """The two Triton functions: compiled for the GPU, or run by Triton's interpreter."""
    triton = checked_triton(interpret, "fused routing needs", "run fused routing")
    from wattmoe.moe._route_kernel import route_scatter, route_topk

    # token and assignment counts change with every step: no recompiles for their divisibility
    return (triton.jit(route_topk, do_not_specialize=["num_tokens", "nsplit"]),
            triton.jit(route_scatter, do_not_specialize=["num_assign", "num_tokens"]))


fused_route_available = triton_runs_on  # can `fused_route` run on x (CUDA, or CPU interpreted)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _gate_blocks(num_experts: int, hidden: int) -> tuple[int, int, int]:
    """(BLOCK_E, BLOCK_H, num_warps) of `route_topk` with the fused gate GEMM; the blocks are
    powers of two, at least 16."""
    block_e = max(16, _pow2(num_experts))
    block_h = max(16, min(128, _GATE_TILE_ELEMS // block_e, _pow2(hidden)))
    return block_e, block_h, 8 if block_e > 64 else ROUTE_NUM_WARPS


def _gate_split(tokens: int, hidden: int, block_h: int) -> tuple[int, int]:
    """(NSPLIT, columns of H per split): enough programs for ~_GATE_TARGET_PROGRAMS in all, each
    split a whole number of BLOCK_H chunks and none empty."""
    chunks = triton_cdiv(hidden, block_h)
    blocks = max(1, triton_cdiv(tokens, _GATE_BLOCK_T))
    per = triton_cdiv(chunks, min(chunks, max(1, _GATE_TARGET_PROGRAMS // blocks)))
    return triton_cdiv(chunks, per), per * block_h


def _gate_pays_off(router: AdaptiveRouter, x: torch.Tensor) -> bool:
    """Whether `fuse_gate=None` fuses a fusable gate: a 16-bit weight of at most
    _GATE_AUTO_MAX_BYTES (runs 25-26: bigger ones are as fast as cuBLAS at best)."""
    w = router.gate.weight
    return x.dtype != torch.float32 and w.numel() * w.element_size() <= _GATE_AUTO_MAX_BYTES


def _unfusable_gate(router: AdaptiveRouter, x: torch.Tensor) -> str | None:
    """Why `route_topk` cannot compute the gate GEMM for x, or None if it can."""
    w = router.gate.weight
    if type(router.strategy).selection_bias is not RoutingStrategy.selection_bias:
        return f"the {type(router.strategy).__name__} strategy's selection bias needs the logits"
    if x.dtype != w.dtype or x.dtype not in _GATE_DTYPES:
        return f"x is {x.dtype} and the gate weight {w.dtype} (one of fp32, bf16, fp16 needed)"
    if x.device != w.device:
        return f"x is on {x.device} and the gate weight on {w.device}"
    if _gate_blocks(router.num_experts, x.shape[1])[0] > _GATE_MAX_BLOCK_E:
        return f"{router.num_experts} experts do not fit one {_GATE_MAX_BLOCK_E}-wide tile"
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        return "the logits need gradients (the kernel has no backward)"
    return None


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
    router: AdaptiveRouter, x: torch.Tensor, tokens_per_expert: torch.Tensor | None = None,
    *, fuse_gate: bool | None = None,
) -> tuple[RouterOutput, Dispatch]:
    """`router(x)` and `build_dispatch(..., capacity_factor=None)` in two Triton kernels.

    The gate GEMM runs inside the first kernel (see the module docstring: possible with no
    selection bias that needs the logits, x and the gate weight of one float dtype and device,
    at most 512 experts and no gradient needed; chosen by default for 16-bit gates of at most
    256 KiB), else in torch with the float cast and the strategy's selection bias, as
    `router(x)` does.

    Args:
        router: the router (gate, score function, top-k, strategy, aux-loss coefficient).
        x: [T, H] tokens, on CUDA (or CPU under Triton's interpreter).
        tokens_per_expert: optional [E] int64 running counts; this step's counts are added.
        fuse_gate: True: the gate GEMM in the kernel; False: in torch; None: in the kernel
            where it can run there and pays off (a bf16/fp16 weight of at most 256 KiB), while
            the module's `FUSE_GATE` is on.

    Returns:
        The router's output and the dispatch, as the unfused path gives them, except that
        within one expert's segment of `token_idx` the assignments are not in token order
        (slots come from atomics); ties in the selection go to the lowest expert index. With
        the fused GEMM the logits equal `F.linear(x, w).float()` up to the order of the fp32
        accumulation: for bf16 or fp16 x, one ulp of x's dtype apart where the two sums round
        differently (on the H200 against cuBLAS, 0-42% of entries depending on the shape,
        runs 25-26; the fused ones are the closer to exact), so near-tied selections can
        differ; everything else follows from these
        logits. The summation order depends on T (the split), so a token's logits can change
        by an ulp with the step size; for a given T every run gives the same ones. The
        counts, balance and aux-loss tensors are views of one small buffer per call.

    Raises:
        ShapeError: x is not [T, H], or the strategy's bias does not fit [T, E].
        ConfigError: Triton cannot run on x's device (see `fused_route_available`), or
            `fuse_gate=True` where the gate GEMM cannot run in the kernel.
    """
    if x.dim() != 2 or x.shape[1] != router.hidden_size:
        raise ShapeError(f"router expects [tokens, {router.hidden_size}], got {tuple(x.shape)}")
    if not fused_route_available(x):
        raise ConfigError(f"fused routing cannot run on {x.device} tensors here")
    if fuse_gate:
        unfusable = _unfusable_gate(router, x)
        if unfusable is not None:
            raise ConfigError(f"cannot fuse the router's gate GEMM: {unfusable}")
    tokens, hidden = x.shape
    num_experts, top_k = router.num_experts, router.top_k
    if tokens == 0:  # nothing to launch: the unfused path handles the empty step
        routing = router(x)
        dispatch = build_dispatch(routing.topk_idx, routing.topk_weight, num_experts)
        return routing, dispatch
    if fuse_gate is None:  # the cheap rule first: most steps that do not fuse stop there
        fuse = (FUSE_GATE and _gate_pays_off(router, x)
                and _unfusable_gate(router, x) is None)
    else:
        fuse = fuse_gate

    dev = x.device
    w = router.gate.weight
    tpe = tokens_per_expert
    if tpe is not None and (tpe.shape != (num_experts,) or tpe.dtype != torch.int64
                            or tpe.device != dev or not tpe.is_contiguous()):
        raise ShapeError(f"tokens_per_expert must be a contiguous [{num_experts}] int64 tensor "
                         f"on {dev}, got {tuple(tpe.shape)} {tpe.dtype} on {tpe.device}")
    block_e = _pow2(num_experts)
    if fuse:  # the logits come out of route_topk's own gate GEMM
        x = x if x.stride(1) == 1 else x.contiguous()
        w = w if w.stride(1) == 1 else w.contiguous()
        logits = torch.empty(tokens, num_experts, dtype=torch.float32, device=dev)
        bias = None
        topk_block_e, block_h, num_warps = _gate_blocks(num_experts, hidden)
        nsplit, h_per_split = _gate_split(tokens, hidden, block_h)
        block_t = _GATE_BLOCK_T
        gate_x, gate_w, strides = x, w, (x.stride(0), w.stride(0))
    else:  # gate operands unused: fixed ones, so x's dtype and strides add no kernel variant
        logits = F.linear(x, w).float().contiguous()
        bias = router.strategy.selection_bias(logits)
        topk_block_e, block_h, num_warps = block_e, 16, ROUTE_NUM_WARPS
        block_t = max(1, min(32, _TILE_ELEMS // block_e))
        gate_x, gate_w, strides, hidden = logits, logits, (0, 0), 0
        nsplit, h_per_split = 1, 0
    mode, bias_op = _bias_operand(bias, tokens, num_experts, dev)
    num_assign = tokens * top_k

    # one zero-filled launch: counts [E] int64, then psum [E] and [balance, aux] as fp32, then
    # the split gate GEMM's arrival counters (one per token block)
    nfloat = (num_experts + 3) // 2
    nsem = triton_cdiv(tokens, _GATE_BLOCK_T) if nsplit > 1 else 0
    buf = torch.zeros(num_experts + nfloat + nsem, dtype=torch.int64, device=dev)
    counts = buf[:num_experts]
    floats = buf[num_experts:num_experts + nfloat].view(torch.float32)
    psum, loss = floats[:num_experts], floats[num_experts:num_experts + 2]
    probs = torch.empty(tokens, num_experts, dtype=torch.float32, device=dev)
    topk_idx = torch.empty(tokens, top_k, dtype=torch.int64, device=dev)
    topk_weight = torch.empty(tokens, top_k, dtype=torch.float32, device=dev)
    pos = torch.empty(tokens, top_k, dtype=torch.int32, device=dev)
    token_idx = torch.empty(num_assign, dtype=torch.int64, device=dev)
    weight = torch.empty(num_assign, dtype=torch.float32, device=dev)
    part = (torch.empty(nsplit, tokens, num_experts, dtype=torch.float32, device=dev)
            if nsplit > 1 else logits)  # the split GEMM's partial logits

    topk_kernel, scatter_kernel = _kernels(interpret=not x.is_cuda)
    topk_kernel[(triton_cdiv(tokens, block_t) * nsplit,)](
        logits, bias_op if bias_op is not None else logits, probs, topk_idx, topk_weight, pos,
        counts, psum, gate_x, gate_w, part, buf[num_experts + nfloat:] if nsem else buf,
        tokens, num_experts, hidden, nsplit, h_per_split, *strides,
        BLOCK_T=block_t, BLOCK_E=topk_block_e, TOP_K=top_k, BLOCK_K=_pow2(top_k), BIAS=mode,
        SIGMOID=router.score_func == "sigmoid", NORMALIZE=bool(router.normalize_topk),
        FUSE_GATE=fuse, SPLIT=nsplit > 1, BLOCK_H=block_h, EVEN_H=hidden % block_h == 0,
        DOT_F32=fuse and not x.is_cuda,
        DOT_PRECISION="ieee" if fuse and x.dtype == torch.float32 else None,
        num_warps=num_warps,
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
