"""The Triton kernel of the `fused` backend (see `fused_triton` for what it computes).

Kept as a plain function: `fused_triton` wraps it with `triton.jit` on first use, compiled for
the GPU or run by Triton's interpreter. Importing this module needs Triton.
"""

from __future__ import annotations

import triton.language as tl


def moe_gemm(
    a_ptr, tok_ptr, wt_ptr, cnt_ptr, w_ptr, s_ptr, c_ptr,
    n_out, k_dim, num_experts, num_pid_m,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_cm,
    up_rows,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, BLOCK_E: tl.constexpr, GATHER_A: tl.constexpr,
    GATED: tl.constexpr, ACT: tl.constexpr, COMBINE: tl.constexpr,
    INT4: tl.constexpr, QGROUP: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_IEEE: tl.constexpr, DOT_F32: tl.constexpr, FAST_INT4: tl.constexpr,
    MAGIC_BITS: tl.constexpr, MAGIC_OFF: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(n_out, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m

    # The expert of m-block pid_m: blocks are laid out expert after expert.
    e_offs = tl.arange(0, BLOCK_E)
    cnt = tl.load(cnt_ptr + e_offs, mask=e_offs < num_experts, other=0).to(tl.int32)
    nblk = (cnt + BLOCK_M - 1) // BLOCK_M
    cum = tl.cumsum(nblk, 0)
    if pid_m >= tl.sum(nblk, 0):
        return
    e = tl.sum((cum <= pid_m).to(tl.int32), 0)
    is_e = e_offs == e
    first_blk = tl.sum(tl.where(is_e, cum - nblk, 0), 0)
    cnt_e = tl.sum(tl.where(is_e, cnt, 0), 0)
    row0 = tl.sum(tl.where(e_offs < e, cnt, 0), 0)
    local = (pid_m - first_blk) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = local < cnt_e
    rows = (row0 + local).to(tl.int64)
    tok = tl.load(tok_ptr + rows, mask=rmask, other=0).to(tl.int64)
    if GATHER_A:
        a_rows = tok
    else:
        a_rows = rows

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    wn = (offs_n % n_out).to(tl.int64)  # wrapped, so weight loads need no mask
    offs_k = tl.arange(0, BLOCK_K)
    e64 = e.to(tl.int64)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    if INT4:
        # packed rows [BLOCK_N, BLOCK_K // 2] as stored (bytes contiguous along k: wide loads)
        w_ptrs = (w_ptr + e64 * stride_we + wn[:, None] * stride_wn
                  + tl.arange(0, BLOCK_K // 2)[None, :])
        s_ptrs = s_ptr + e64 * stride_se + wn[:, None] * stride_sn
        s_row = s_ptr + e64 * stride_se + wn * stride_sn
    else:
        w_ptrs = w_ptr + e64 * stride_we + wn[None, :] * stride_wn + offs_k[:, None]
    up_w = up_rows * stride_wn
    up_s = up_rows * stride_sn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
        else:
            kmask = offs_k < k_dim - k0
            a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        if FAST_INT4:
            # codes c become MAGIC_BITS | c = (MAGIC_OFF - 8) + c exactly in the compute dtype
            # (no int->float conversion); the offset and the tile's one scale per column are
            # applied to the [BLOCK_M, BLOCK_N] partial product instead of every weight.
            rs = tl.sum(a.to(tl.float32), axis=1)[:, None] * MAGIC_OFF
            sc = tl.load(s_row + k0 // QGROUP).to(tl.float32)[None, :]
            p = tl.load(w_ptrs)
            q = tl.interleave((p & 0xF).to(tl.uint16) | MAGIC_BITS,
                              (p >> 4).to(tl.uint16) | MAGIC_BITS)
            b = tl.trans(q.to(a_ptr.dtype.element_ty, bitcast=True))
            if DOT_F32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc += (tl.dot(a, b) - rs) * sc
            if GATED:
                sc_u = tl.load(s_row + up_s + k0 // QGROUP).to(tl.float32)[None, :]
                p_u = tl.load(w_ptrs + up_w)
                q_u = tl.interleave((p_u & 0xF).to(tl.uint16) | MAGIC_BITS,
                                    (p_u >> 4).to(tl.uint16) | MAGIC_BITS)
                b_u = tl.trans(q_u.to(a_ptr.dtype.element_ty, bitcast=True))
                if DOT_F32:
                    b_u = b_u.to(tl.float32)
                acc_up += (tl.dot(a, b_u) - rs) * sc_u
        else:
            if INT4:
                if BLOCK_K <= QGROUP:
                    sc = tl.load(s_ptrs + k0 // QGROUP).to(tl.float32)
                else:
                    sc = tl.load(s_ptrs + (k0 + offs_k[None, :]) // QGROUP).to(tl.float32)
                p = tl.load(w_ptrs)
                q = tl.interleave(p & 0xF, p >> 4)  # column 2j: low nibble, 2j+1: high
                b = tl.trans(((q.to(tl.float32) - 8.0) * sc).to(a_ptr.dtype.element_ty))
            elif EVEN_K:
                b = tl.load(w_ptrs)
            else:
                b = tl.load(w_ptrs, mask=kmask[:, None], other=0.0)
            if DOT_F32:  # Triton's interpreter multiplies bf16 wrongly: give it fp32
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if DOT_IEEE:
                acc = tl.dot(a, b, acc=acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc=acc)
            if GATED:
                if INT4:
                    if BLOCK_K <= QGROUP:
                        sc_u = tl.load(s_ptrs + up_s + k0 // QGROUP).to(tl.float32)
                    else:
                        sc_u = tl.load(s_ptrs + up_s + (k0 + offs_k[None, :]) // QGROUP)
                        sc_u = sc_u.to(tl.float32)
                    p_u = tl.load(w_ptrs + up_w)
                    q_u = tl.interleave(p_u & 0xF, p_u >> 4)
                    b_u = tl.trans(((q_u.to(tl.float32) - 8.0) * sc_u).to(
                        a_ptr.dtype.element_ty))
                elif EVEN_K:
                    b_u = tl.load(w_ptrs + up_w)
                else:
                    b_u = tl.load(w_ptrs + up_w, mask=kmask[:, None], other=0.0)
                if DOT_F32:
                    b_u = b_u.to(tl.float32)
                if DOT_IEEE:
                    acc_up = tl.dot(a, b_u, acc=acc_up, input_precision="ieee")
                else:
                    acc_up = tl.dot(a, b_u, acc=acc_up)
        a_ptrs += BLOCK_K
        if INT4:
            w_ptrs += BLOCK_K // 2
        else:
            w_ptrs += BLOCK_K

    if ACT == 1:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    elif ACT == 2:
        acc = tl.maximum(acc, 0.0)
    nmask = offs_n < n_out
    if COMBINE:
        wgt = tl.load(wt_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        acc = acc * wgt[:, None]
        c_ptrs = c_ptr + tok[:, None] * stride_cm + offs_n[None, :]
        tl.atomic_add(c_ptrs, acc, mask=rmask[:, None] & nmask[None, :], sem="relaxed")
    else:
        c_ptrs = c_ptr + rows[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])
