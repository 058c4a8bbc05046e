"""The Triton kernels of fused routing (see `fused_route` for what they compute).

`route_topk` and `route_scatter` are kept as plain functions: `fused_route` wraps them with
`triton.jit` on first use, compiled for the GPU or run by Triton's interpreter. The gate-GEMM
helper below is a `triton.jit` function already (it is called from inside `route_topk`), so this
module is imported only once Triton's mode (compiled or interpreted) is settled. Importing it
needs Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gate_partial(x_ptr, w_ptr, rows64, rmask, cols, cmask, hidden, h_begin, h_end, stride_xt,
                  stride_we, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_H: tl.constexpr, EVEN_H: tl.constexpr, DOT_F32: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """[BLOCK_T, BLOCK_E] fp32 sums over h in [h_begin, h_end) of x[row, h] * w[col, h] (h_begin
    a multiple of BLOCK_H); zeros on masked rows and experts."""
    hcols = tl.arange(0, BLOCK_H)
    x_ptrs = x_ptr + rows64[:, None] * stride_xt + h_begin + hcols[None, :]
    w_ptrs = (w_ptr + cols[None, :].to(tl.int64) * stride_we + h_begin
              + hcols[:, None])  # [BLOCK_H, BLOCK_E]
    acc = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for h0 in range(h_begin, h_end, BLOCK_H):
        if EVEN_H:
            a = tl.load(x_ptrs, mask=rmask[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=cmask[None, :], other=0.0)
        else:
            hmask = hcols < hidden - h0
            a = tl.load(x_ptrs, mask=rmask[:, None] & hmask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=hmask[:, None] & cmask[None, :], other=0.0)
        if DOT_F32:  # Triton's interpreter multiplies bf16 wrongly: give it fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc=acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_H
        w_ptrs += BLOCK_H
    return acc


@triton.jit
def _round_like_x(acc, x_ptr):
    """fp32 sums rounded as `F.linear(x, w).float()` rounds them: to x's dtype (none for fp32
    x), then back to fp32."""
    if x_ptr.dtype.element_ty == tl.bfloat16:
        # round to nearest even in integers: Triton's interpreter truncates in .to(tl.bfloat16)
        bits = acc.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        # NaNs stay NaN (the carry would run some of them into inf, or through the sign to 0)
        out = tl.where(acc != acc, acc, bits.to(tl.float32, bitcast=True))
    else:
        out = acc.to(x_ptr.dtype.element_ty).to(tl.float32)
    return out


def route_topk(
    logits_ptr, bias_ptr, probs_ptr, idx_ptr, weight_ptr, pos_ptr, counts_ptr, psum_ptr,
    x_ptr, w_ptr, part_ptr, sem_ptr, num_tokens, num_experts, hidden, nsplit, h_per_split,
    stride_xt, stride_we,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr,
    BIAS: tl.constexpr, SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr,
    FUSE_GATE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_H: tl.constexpr, EVEN_H: tl.constexpr,
    DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Scores, top-k and per-expert slots of BLOCK_T tokens.

    FUSE_GATE: computes the logits from x [T, H] (row stride stride_xt, unit column stride) and
    the gate weight w [E, H] (row stride stride_we, same dtype as x): fp32 accumulation with
    tl.dot over H in BLOCK_H chunks (EVEN_H: H % BLOCK_H == 0, no H masks), rounded to x's dtype
    and back as `F.linear(x, w).float()` rounds them, and stores them into logits [T, E] fp32;
    needs BLOCK_T, BLOCK_E, BLOCK_H >= 16 (tl.dot). DOT_F32: both operands go to fp32 first
    (Triton's interpreter multiplies bf16 wrongly); DOT_PRECISION: tl.dot's input_precision
    ("ieee" for fp32 x, as torch's F.linear, which uses no TF32 by default; None for 16-bit x).
    Otherwise logits [T, E] fp32 is read, and x_ptr, w_ptr, hidden and the strides are unused.

    SPLIT (fused gate only; nsplit > 1, a runtime value so step sizes share one compiled
    kernel): nsplit programs per token block (pid = block * nsplit + split), each summing
    h_per_split columns of H (a multiple of BLOCK_H) into part [nsplit, T, E] fp32; each then
    adds 1 to sem [blocks] int64 (zeroed, acquire-release), and the program that brings it to
    nsplit adds the parts in split order (the same sums on every run, whatever order the
    programs finish in) and does the rest for the block. So a step of few tokens still spreads
    the weight's reads over nsplit times as many programs. Without SPLIT, nsplit must be 1.

    E is padded to BLOCK_E and masked; BIAS 0: none, 1: bias [E], 2: bias [T, E]. Writes
    probs [T, E], idx [T, K] int64, weight [T, K] fp32 and pos [T, K] int32 (the assignment's
    slot within its expert, from an atomic add on counts [E] int64), and adds the block's
    column sums of probs atomically into psum [E] fp32.
    """
    pid = tl.program_id(0)
    block = pid // nsplit
    rows = block * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < num_tokens
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    cmask = cols < num_experts
    mask = rmask[:, None] & cmask[None, :]
    offs = rows64[:, None] * num_experts + cols[None, :]
    # rows past T read zeros: finite scores everywhere, nothing of theirs is stored
    if FUSE_GATE:
        h_begin = (pid % nsplit) * h_per_split
        acc = _gate_partial(x_ptr, w_ptr, rows64, rmask, cols, cmask, hidden, h_begin,
                            tl.minimum(hidden, h_begin + h_per_split), stride_xt, stride_we,
                            BLOCK_T, BLOCK_E, BLOCK_H, EVEN_H, DOT_F32, DOT_PRECISION)
        if SPLIT:
            plane = num_tokens.to(tl.int64) * num_experts
            tl.store(part_ptr + (pid % nsplit) * plane + offs, acc, mask=mask)
            tl.debug_barrier()  # every thread's part is stored before the release below
            arrived = tl.atomic_add(sem_ptr + block, 1, sem="acq_rel", scope="gpu")
            if arrived != nsplit - 1:
                return
            acc = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
            for split in range(nsplit):
                acc += tl.load(part_ptr + split * plane + offs, mask=mask, other=0.0,
                               cache_modifier=".cg")
        logit = _round_like_x(acc, x_ptr)
        tl.store(logits_ptr + offs, logit, mask=mask)
    else:
        logit = tl.load(logits_ptr + offs, mask=mask, other=0.0)

    if SIGMOID:
        scores = tl.where(cmask[None, :], 1.0 / (1.0 + tl.exp(-logit)), 0.0)
        probs = scores / tl.sum(scores, 1)[:, None]
    else:
        shifted = tl.where(cmask[None, :], logit, float("-inf"))
        ex = tl.exp(shifted - tl.max(shifted, 1)[:, None])  # padding: exp(-inf) = 0
        scores = ex / tl.sum(ex, 1)[:, None]
        probs = scores

    sel = logit
    if BIAS == 1:
        sel = sel + tl.load(bias_ptr + cols, mask=cmask, other=0.0)[None, :]
    elif BIAS == 2:
        sel = sel + tl.load(bias_ptr + offs, mask=mask, other=0.0)
    # NaN ranks above everything (as in torch.topk), so every round finds a maximum to match
    sel = tl.where(sel != sel, float("inf"), sel)

    # k rounds of argmax; ties go to the lowest index; padding and chosen experts unavailable
    avail = tl.broadcast_to(cmask[None, :], (BLOCK_T, BLOCK_E))
    kcols = tl.arange(0, BLOCK_K)
    top_idx = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    top_w = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        cand = tl.where(avail, sel, float("-inf"))
        best = tl.max(cand, 1)
        hit = avail & (cand == best[:, None])
        e = tl.min(tl.where(hit, cols[None, :], BLOCK_E), 1)
        chosen = cols[None, :] == e[:, None]
        w = tl.sum(tl.where(chosen, scores, 0.0), 1)
        avail = avail & (cols[None, :] != e[:, None])
        top_idx = tl.where(kcols[None, :] == j, e[:, None], top_idx)
        top_w = tl.where(kcols[None, :] == j, w[:, None], top_w)
    if NORMALIZE:
        top_w = top_w / tl.maximum(tl.sum(top_w, 1), 1e-20)[:, None]

    koffs = rows64[:, None] * TOP_K + kcols[None, :]
    kmask = rmask[:, None] & (kcols[None, :] < TOP_K)
    tl.store(idx_ptr + koffs, top_idx.to(tl.int64), mask=kmask)
    tl.store(weight_ptr + koffs, top_w, mask=kmask)
    slot = tl.atomic_add(counts_ptr + top_idx, 1, mask=kmask)
    tl.store(pos_ptr + koffs, slot.to(tl.int32), mask=kmask)
    tl.store(probs_ptr + offs, probs, mask=mask)
    tl.atomic_add(psum_ptr + cols, tl.sum(tl.where(mask, probs, 0.0), 0), mask=cmask)


def route_scatter(
    counts_ptr, idx_ptr, pos_ptr, topw_ptr, token_ptr, weight_ptr, psum_ptr, loss_ptr, tpe_ptr,
    num_assign, num_tokens, num_experts, aux_coef,
    TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, ADD_TPE: tl.constexpr,
):
    """Places BLOCK_N assignments at offsets[e] + pos in the expert-sorted dispatch, and
    overwrites pos with each assignment's row (`Dispatch.rowof`).

    Program 0 also writes [balance, aux] to loss_ptr and, with ADD_TPE, adds counts into
    tpe [E] int64.
    """
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_E)
    cmask = cols < num_experts
    cnt = tl.load(counts_ptr + cols, mask=cmask, other=0)
    cnt32 = cnt.to(tl.int32)
    start = tl.cumsum(cnt32, 0) - cnt32  # exclusive: first row of each expert's segment

    a = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    amask = a < num_assign
    a64 = a.to(tl.int64)
    e = tl.load(idx_ptr + a64, mask=amask, other=0)
    pos = tl.load(pos_ptr + a64, mask=amask, other=0)
    w = tl.load(topw_ptr + a64, mask=amask, other=0.0)
    base = tl.sum(tl.where(cols[None, :] == e[:, None], start[None, :], 0), 1)
    row = base.to(tl.int64) + pos.to(tl.int64)
    tl.store(token_ptr + row, a64 // TOP_K, mask=amask)
    tl.store(weight_ptr + row, w, mask=amask)
    tl.store(pos_ptr + a64, row.to(tl.int32), mask=amask)  # now each assignment's row

    if pid == 0:
        f = cnt.to(tl.float32) / num_assign
        p = tl.load(psum_ptr + cols, mask=cmask, other=0.0) / num_tokens
        balance = num_experts * tl.sum(f * p, 0)
        tl.store(loss_ptr, balance)
        tl.store(loss_ptr + 1, aux_coef * balance)
        if ADD_TPE:
            tpe = tl.load(tpe_ptr + cols, mask=cmask, other=0)
            tl.store(tpe_ptr + cols, tpe + cnt, mask=cmask)
