"""The Triton kernels of fused routing (see `fused_route` for what they compute).

Kept as plain functions: `fused_route` wraps them with `triton.jit` on first use, compiled for
the GPU or run by Triton's interpreter. Importing this module needs Triton.
"""

from __future__ import annotations

import triton.language as tl


def route_topk(
    logits_ptr, bias_ptr, probs_ptr, idx_ptr, weight_ptr, pos_ptr, counts_ptr, psum_ptr,
    num_tokens, num_experts,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, TOP_K: tl.constexpr, BLOCK_K: tl.constexpr,
    BIAS: tl.constexpr, SIGMOID: tl.constexpr, NORMALIZE: tl.constexpr,
):
    """Scores, top-k and per-expert slots of BLOCK_T tokens.

    logits [T, E] fp32 (E padded to BLOCK_E, masked); BIAS 0: none, 1: bias [E], 2: bias
    [T, E]. Writes probs [T, E], idx [T, K] int64, weight [T, K] fp32 and pos [T, K] int32
    (the assignment's slot within its expert, from an atomic add on counts [E] int64), and adds
    the block's column sums of probs atomically into psum [E] fp32.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < num_tokens
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_E)
    cmask = cols < num_experts
    mask = rmask[:, None] & cmask[None, :]
    offs = rows64[:, None] * num_experts + cols[None, :]
    # rows past T read zeros: finite scores everywhere, nothing of theirs is stored
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
