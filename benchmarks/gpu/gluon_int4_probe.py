"""Does explicit overlap make the int4 gate/up launch faster? A Gluon kernel against Triton's.

KERNEL_NOTES version 8: the int4 launches take about the sum of their MMA time and their
instruction-issue time (Qwen3 at 512 tokens, estimates), as if the dequantization and the MMAs
barely overlapped in Triton's software pipeline. This experiment writes the same gate/up launch
(int4 half-split codes, fp16 scales, gathered activation rows, SwiGLU epilogue) in Gluon
(`triton.experimental.gluon`, Triton >= 3.6, Hopper) with the overlap spelled out:

- the activation tiles of the next STAGES - 1 K steps are copied ahead into a ring of shared
  buffers (cp.async, masked past the block's rows);
- each K step issues its four wgmma (gate and up, low and high nibble halves) asynchronously,
  with the weight tiles as register operands;
- while they run, the next K step's codes and scales are loaded and dequantized (through fp32,
  the simple way: `int4_asm=False` in the Triton kernel);
- then it waits for the MMAs.

It is an experiment, not a backend: the grid comes from a block table built on the host (a
host sync, done once per dispatch, outside the timed launches), and there are no tails. On one
GPU it checks the result against an fp32 reference and times (CUDA events, median; a variant
off by more than bf16 allows is not timed) the Gluon launch against Triton's gate/up launch
with the same tiles and the same fp32 dequantization, and against the tuned table's launch:

    PYTHONPATH=$PWD python3 benchmarks/gpu/gluon_int4_probe.py --out $OUT/gluon.json

A second kernel, `gate_up_int4_frag_kernel`, does the same at the table kernel's
dequantization (fragment words and scale pairs through its bit-operation asm, the words of
step i + 2 loaded while step i's MMAs run).

Measured (results/h200/kernels/run60_gluon_probe, run62_gluon_frag): neither is faster than
Triton. At equal fp32 dequantization the first is 13-38% slower than Triton's same-tile launch;
the fragment-word kernel is 32-41% slower than the table's launch (Qwen3 at 512 tokens: 158.8
vs 112.8 us). ncu: it holds two operand sets live across the MMAs (254 registers, 2 CTAs per
SM against Triton's 3) and issues ~1.4x the instructions, while Triton's launch already keeps
the tensor pipe busy 34% of its time by interleaving its resident CTAs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia import hopper
from triton.experimental.gluon.language.nvidia.ampere import async_copy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from wattmoe.moe._fused_kernel import _INT4_FRAG_PAIR_BF16  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))


@gluon.jit
def _dequant(q, s_lo, s_hi, a_l: gl.constexpr):
    """Half-split codes [BF, BK] (byte j: column j low nibble, column j + K/2 high nibble) to
    the two bf16 register operands, scaled by one fp16 scale per row each. The codes are
    loaded in the operand layout a_l already (scales in its row slice), so the conversions
    move no data (asserted: a real one goes through shared memory, with two CTA barriers)."""
    lo = ((q & 15).to(gl.float32) - 8.0) * s_lo.to(gl.float32)[:, None]
    hi = ((q >> 4).to(gl.float32) - 8.0) * s_hi.to(gl.float32)[:, None]
    return (gl.convert_layout(lo.to(gl.bfloat16), a_l, assert_trivial=True),
            gl.convert_layout(hi.to(gl.bfloat16), a_l, assert_trivial=True))


@gluon.jit
def _block(blk_e_ptr, blk_r0_ptr, blk_n_ptr, n_ftiles):
    """This program's F tile, expert, first dispatch row and rows (the host's block table)."""
    pid = gl.program_id(0)
    b = pid // n_ftiles
    e = gl.load(blk_e_ptr + b).to(gl.int64)
    return pid % n_ftiles, e, gl.load(blk_r0_ptr + b), gl.load(blk_n_ptr + b)


@gluon.jit
def _x_tiles(x_ptr, tok_ptr, r0, nrow, H: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr):
    """Pointers [BT, BK] to the block's gathered activation rows, columns 0..BK (step 0's low
    half), and the mask of its rows."""
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    rt = gl.arange(0, BT, layout=gl.SliceLayout(1, blk))
    rk = gl.arange(0, BK, layout=gl.SliceLayout(0, blk))
    tmask = rt < nrow
    tok = gl.load(tok_ptr + r0 + rt, mask=tmask, other=0).to(gl.int64)
    return x_ptr + tok[:, None] * H + rk[None, :], tmask[:, None] & (rk[None, :] < BK)


@gluon.jit
def _copy_x(slot_lo, slot_hi, x_lo, step, xmask, H: gl.constexpr, BK: gl.constexpr):
    """Step `step`'s gathered activation tiles (columns j0.. and H/2 + j0..) into one ring
    slot, by cp.async (masked past the block's rows)."""
    async_copy.async_copy_global_to_shared(slot_lo, x_lo + step * BK, mask=xmask)
    async_copy.async_copy_global_to_shared(slot_hi, x_lo + (H // 2 + step * BK), mask=xmask)


@gluon.jit
def _ring_step(ring_lo, ring_hi, x_lo, xmask, i, NK: gl.constexpr, STAGES: gl.constexpr,
               H: gl.constexpr, BK: gl.constexpr):
    """K step i of the activation ring: step i + STAGES - 1's copies issued (one commit group
    per step, empty or not: the waits count them), step i's waited for, made visible to the
    wgmma; its two tiles [BK, BT] returned."""
    nxt = i + STAGES - 1
    if nxt < NK:
        _copy_x(ring_lo.index(nxt % STAGES), ring_hi.index(nxt % STAGES), x_lo, nxt, xmask,
                H, BK)
    async_copy.commit_group()
    async_copy.wait_group(STAGES - 1)
    gl.thread_barrier()  # every thread's copies of this step's tiles landed
    hopper.fence_async_shared()  # and are visible to the wgmma
    return (ring_lo.index(i % STAGES).permute((1, 0)),
            ring_hi.index(i % STAGES).permute((1, 0)))


@gluon.jit
def _swiglu_store(acc_g, acc_u, h_ptr, r0, nrow, ft, F: gl.constexpr, BF: gl.constexpr,
                  BT: gl.constexpr):
    """h[r0 + t, ft * BF + f] = silu(gate) * up of the [BF, BT] accumulators (fp32), in bf16."""
    act = acc_g / (1.0 + gl.exp(-acc_g)) * acc_u
    # h is F-contiguous, dim 0 of the tile: 8 consecutive outputs per thread (16-byte stores)
    o_l: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, 4], [0, 1])
    out = gl.convert_layout(act.to(gl.bfloat16), o_l)
    rf_o = gl.arange(0, BF, layout=gl.SliceLayout(1, o_l))
    rt_o = gl.arange(0, BT, layout=gl.SliceLayout(0, o_l))
    h_ptrs = h_ptr + (r0 + rt_o)[None, :].to(gl.int64) * F + (ft * BF + rf_o)[:, None]
    gl.store(h_ptrs, out, mask=(rt_o < nrow)[None, :] & (rf_o < BF)[:, None])


@gluon.jit
def gate_up_int4_kernel(x_ptr, tok_ptr, q_ptr, s_ptr, h_ptr, blk_e_ptr, blk_r0_ptr, blk_n_ptr,
                        n_ftiles, H: gl.constexpr, F: gl.constexpr, G: gl.constexpr,
                        BF: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
                        STAGES: gl.constexpr):
    """h[rows, ftile] = silu(x[tok] Wg^T) * (x[tok] Wu^T) for one (row block, F tile).

    q: [E, 2F, H/2] uint8 (gate rows, then up rows), s: [E, 2F, H/G] fp16, h: [rows, F] bf16.
    One K step covers BK packed columns: activation columns j0.. and H/2 + j0.. ."""
    ft, e, r0, nrow = _block(blk_e_ptr, blk_r0_ptr, blk_n_ptr, n_ftiles)

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BT, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    x_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BK], gl.bfloat16)
    ring_lo = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, BK], x_sl)
    ring_hi = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, BK], x_sl)

    x_lo, xmask = _x_tiles(x_ptr, tok_ptr, r0, nrow, H, BT, BK)
    # weight codes and scales straight in the wgmma operand layout (2-byte loads per thread)
    rf_a = gl.arange(0, BF, layout=gl.SliceLayout(1, a_l))
    rk_a = gl.arange(0, BK, layout=gl.SliceLayout(0, a_l))
    g_rows = (ft * BF + rf_a).to(gl.int64)
    q_g = q_ptr + e * (2 * F * (H // 2)) + g_rows[:, None] * (H // 2) + rk_a[None, :]
    q_u = q_g + F * (H // 2)
    s_g = s_ptr + e * (2 * F * (H // G)) + g_rows * (H // G)
    s_u = s_g + F * (H // G)

    NK: gl.constexpr = (H // 2) // BK
    for st in gl.static_range(STAGES - 1):  # prologue: the first activation tiles in flight
        if st < NK:  # (a K loop shorter than the ring: no copies past the row's end)
            _copy_x(ring_lo.index(st), ring_hi.index(st), x_lo, st, xmask, H, BK)
        async_copy.commit_group()  # one group per step, empty or not: the waits count them

    acc_g = gl.zeros([BF, BT], gl.float32, mma)
    acc_u = gl.zeros([BF, BT], gl.float32, mma)
    g_lo, g_hi = _dequant(gl.load(q_g), gl.load(s_g), gl.load(s_g + (H // 2) // G), a_l)
    u_lo, u_hi = _dequant(gl.load(q_u), gl.load(s_u), gl.load(s_u + (H // 2) // G), a_l)
    for i in range(NK):
        xl, xh = _ring_step(ring_lo, ring_hi, x_lo, xmask, i, NK, STAGES, H, BK)
        t_g = hopper.warpgroup_mma(g_lo, xl, acc_g, is_async=True)
        t_g = hopper.warpgroup_mma(g_hi, xh, t_g, is_async=True)
        t_u = hopper.warpgroup_mma(u_lo, xl, acc_u, is_async=True)
        t_u = hopper.warpgroup_mma(u_hi, xh, t_u, is_async=True)
        f_glo, f_ghi, f_ulo, f_uhi = g_lo, g_hi, u_lo, u_hi  # the MMAs' operands, until the wait
        if i + 1 < NK:  # the next step's operands, dequantized while this step's MMAs run
            j1 = (i + 1) * BK
            g_lo, g_hi = _dequant(gl.load(q_g + j1), gl.load(s_g + j1 // G),
                                  gl.load(s_g + (H // 2 + j1) // G), a_l)
            u_lo, u_hi = _dequant(gl.load(q_u + j1), gl.load(s_u + j1 // G),
                                  gl.load(s_u + (H // 2 + j1) // G), a_l)
        # the operands in deps stay live (in their registers) until the wait: without them
        # the next step's operands may be written into registers the MMAs still read
        acc_g, acc_u, _, _, _, _ = hopper.warpgroup_mma_wait(
            num_outstanding=0, deps=[t_g, t_u, f_glo, f_ghi, f_ulo, f_uhi])
        gl.thread_barrier()  # nobody refills this slot before every warp's MMAs read it

    _swiglu_store(acc_g, acc_u, h_ptr, r0, nrow, ft, F, BF, BT)


_FRAG_ASM = gl.constexpr(_INT4_FRAG_PAIR_BF16.value)


def frag_word_layout(bk: int) -> gl.DistributedLinearLayout:
    """Where a warp group's threads hold the fragment words [64, bk/4] of one K step: thread
    (lane 4g + q) holds words 2q and 2q + 1 of each 32-byte block (registers 0/1, and one more
    register bit per further block) of rows g and g + 8 (a register bit) of its warp's 16
    rows: the words whose unpacked columns are its wgmma register operand's."""
    if bk < 32 or bk & (bk - 1):
        raise ValueError(f"BK={bk}: a power of two >= 32 (whole 32-byte blocks)")
    blocks = [[0, 8 << i] for i in range((bk // 32).bit_length() - 1)]
    return gl.DistributedLinearLayout(
        reg_bases=[[0, 1], [8, 0], *blocks], lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
        warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, bk // 4])


@gluon.jit
def _frag_dequant(w, sp, a_l: gl.constexpr):
    """Fragment-ordered words [BF, BK/4] (`quant.fragment_words`) and the rows' scale pair
    words [BF] (`quant.scale_pairs`, bf16) to the two bf16 register operands [BF, BK], with
    the table kernel's bit-operation asm (`_fused_kernel._INT4_FRAG_PAIR_BF16`): a thread's
    two words per 32-byte block become its eight operand registers, and the join / reshape /
    permute below only name them (asserted: the conversion to a_l moves no data)."""
    sp2 = gl.broadcast(sp[:, None], w)[0]
    lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = gl.inline_asm_elementwise(
        asm=_FRAG_ASM, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r", args=[w, sp2],
        dtype=(gl.bfloat16,) * 8, is_pure=True, pack=2)
    return _frag_cols(lo0, lo1, lo2, lo3, a_l), _frag_cols(hi0, hi1, hi2, hi3, a_l)


@gluon.jit
def _frag_cols(o0, o1, o2, o3, a_l: gl.constexpr):
    """o_h [R, NB*8] (o_h[:, 8b + m] = column 32b + 8h + m) -> [R, NB*32] in layout a_l."""
    rows: gl.constexpr = o0.shape[0]
    nb: gl.constexpr = o0.shape[1] // 8
    t = gl.join(gl.join(o0, o1), gl.join(o2, o3))  # [R, NB*8, 2 (h & 1), 2 (h >> 1)]
    t = gl.reshape(t, (rows, nb, 8, 2, 2))
    t = gl.permute(t, (0, 1, 4, 3, 2))  # [R, NB, h >> 1, h & 1, m]
    return gl.convert_layout(gl.reshape(t, (rows, nb * 32)), a_l, assert_trivial=True)


@gluon.jit
def gate_up_int4_frag_kernel(x_ptr, tok_ptr, w_ptr, sp_ptr, h_ptr, blk_e_ptr, blk_r0_ptr,
                             blk_n_ptr, n_ftiles, H: gl.constexpr, F: gl.constexpr,
                             G: gl.constexpr, BT: gl.constexpr, BK: gl.constexpr,
                             STAGES: gl.constexpr, W_L: gl.constexpr):
    """`gate_up_int4_kernel` at the table kernel's operating point: the codes as fragment
    words (w: [E, 2F, H/8] int32) and scale pair words (sp: [E, 2F, H/G/2] int32, bf16
    halves), dequantized by the same asm. The words of step i + 2 are loaded (into
    registers) while step i's MMAs run and step i + 1 is dequantized, so that their global
    latency is hidden (run 60: the first kernel's loads were not, long-scoreboard stalls).
    BF is 64 (one warp group's rows)."""
    BF: gl.constexpr = 64
    BW: gl.constexpr = BK // 4  # words per row and K step
    ft, e, r0, nrow = _block(blk_e_ptr, blk_r0_ptr, blk_n_ptr, n_ftiles)

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BT, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    w_l: gl.constexpr = W_L  # `frag_word_layout(BK)`
    x_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BK], gl.bfloat16)
    ring_lo = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, BK], x_sl)
    ring_hi = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, BK], x_sl)

    x_lo, xmask = _x_tiles(x_ptr, tok_ptr, r0, nrow, H, BT, BK)
    NP: gl.constexpr = H // G // 2  # scale pair words per row
    rf_w = gl.arange(0, BF, layout=gl.SliceLayout(1, w_l))
    rw = gl.arange(0, BW, layout=gl.SliceLayout(0, w_l))
    g_rows = (ft * BF + rf_w).to(gl.int64)
    w_g = w_ptr + e * (2 * F * (H // 8)) + g_rows[:, None] * (H // 8) + rw[None, :]
    w_u = w_g + F * (H // 8)
    sp_g = sp_ptr + e * (2 * F * NP) + g_rows * NP
    sp_u = sp_g + F * NP

    NK: gl.constexpr = (H // 2) // BK
    for st in gl.static_range(STAGES - 1):
        if st < NK:
            _copy_x(ring_lo.index(st), ring_hi.index(st), x_lo, st, xmask, H, BK)
        async_copy.commit_group()

    acc_g = gl.zeros([BF, BT], gl.float32, mma)
    acc_u = gl.zeros([BF, BT], gl.float32, mma)
    g_lo, g_hi = _frag_dequant(gl.load(w_g), gl.load(sp_g), a_l)
    u_lo, u_hi = _frag_dequant(gl.load(w_u), gl.load(sp_u), a_l)
    j1 = (1 % NK) * BK  # step 1's words in flight (step 0 again for a one-step loop)
    nw_g = gl.load(w_g + j1 // 4)
    nw_u = gl.load(w_u + j1 // 4)
    ns_g = gl.load(sp_g + j1 // G)
    ns_u = gl.load(sp_u + j1 // G)
    for i in range(NK):
        xl, xh = _ring_step(ring_lo, ring_hi, x_lo, xmask, i, NK, STAGES, H, BK)
        t_g = hopper.warpgroup_mma(g_lo, xl, acc_g, is_async=True)
        t_g = hopper.warpgroup_mma(g_hi, xh, t_g, is_async=True)
        t_u = hopper.warpgroup_mma(u_lo, xl, acc_u, is_async=True)
        t_u = hopper.warpgroup_mma(u_hi, xh, t_u, is_async=True)
        f_glo, f_ghi, f_ulo, f_uhi = g_lo, g_hi, u_lo, u_hi
        # step i + 2's words (wrapping past the end: a few wasted loads, no branch)
        j2 = ((i + 2) % NK) * BK
        w2_g = gl.load(w_g + j2 // 4)
        w2_u = gl.load(w_u + j2 // 4)
        s2_g = gl.load(sp_g + j2 // G)
        s2_u = gl.load(sp_u + j2 // G)
        # step i + 1 dequantized from the words loaded one step ago, while the MMAs run
        g_lo, g_hi = _frag_dequant(nw_g, ns_g, a_l)
        u_lo, u_hi = _frag_dequant(nw_u, ns_u, a_l)
        nw_g, nw_u, ns_g, ns_u = w2_g, w2_u, s2_g, s2_u
        acc_g, acc_u, _, _, _, _ = hopper.warpgroup_mma_wait(
            num_outstanding=0, deps=[t_g, t_u, f_glo, f_ghi, f_ulo, f_uhi])
        gl.thread_barrier()

    _swiglu_store(acc_g, acc_u, h_ptr, r0, nrow, ft, F, BF, BT)


TOL = 2e-2  # relative error allowed against the fp32 reference (bf16 inputs and outputs)


def block_table(counts: torch.Tensor, bt: int) -> tuple[torch.Tensor, ...]:
    """(expert, first dispatch row, rows) of each block of <= bt rows, expert after expert
    (a host sync: this is an experiment, not the capturable grid of `moe_gemm_wt`)."""
    es, r0s, ns = [], [], []
    row = 0
    for e, c in enumerate(counts.tolist()):
        for start in range(0, c, bt):
            es.append(e)
            r0s.append(row + start)
            ns.append(min(bt, c - start))
        row += c
    dev = counts.device
    return tuple(torch.tensor(v, dtype=torch.int32, device=dev) for v in (es, r0s, ns))


def gluon_gate_up(st, x: torch.Tensor, tok: torch.Tensor, counts: torch.Tensor, *,
                  bf: int = 64, bt: int = 64, bk: int = 64, stages: int = 3,
                  blocks: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """The Gluon launch on an int4 stack (`ExpertStack` with q13, s13): h [rows, F] bf16.
    blocks: `block_table(counts, bt)`, built here if not given (a host sync: pass it in when
    timing the launch)."""
    h_dim, f_dim, g = st.hidden_size, st.inner_size, st.group_size
    if (h_dim // 2) % bk or g % bk or f_dim % bf:
        raise ValueError(f"tiles bk={bk}, bf={bf} do not divide H/2={h_dim // 2}, G={g}, "
                         f"F={f_dim}")
    blk_e, blk_r0, blk_n = blocks if blocks is not None else block_table(counts, bt)
    h = torch.empty(tok.numel(), f_dim, dtype=torch.bfloat16, device=x.device)
    n_ft = f_dim // bf
    grid = (blk_e.numel() * n_ft,)
    gate_up_int4_kernel[grid](x, tok, st.q13, st.s13, h, blk_e, blk_r0, blk_n, n_ft,
                              H=h_dim, F=f_dim, G=g, BF=bf, BT=bt, BK=bk, STAGES=stages,
                              num_warps=4)
    return h


def gluon_frag_gate_up(st, x: torch.Tensor, tok: torch.Tensor, counts: torch.Tensor, *,
                       bt: int = 32, bk: int = 64, stages: int = 2,
                       blocks: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """`gate_up_int4_frag_kernel` on an int4 stack: h [rows, F] bf16. The fragment words and
    scale pairs are the stack's cached copies (`fused_triton._derived`, as the table's launch
    reads them); blocks as in `gluon_gate_up`."""
    from wattmoe.moe import fused_triton as ft

    h_dim, f_dim, g = st.hidden_size, st.inner_size, st.group_size
    if (h_dim // 2) % bk or g % bk or f_dim % 64 or (h_dim // 2) % g:
        raise ValueError(f"tiles bk={bk}, bf=64 do not divide H/2={h_dim // 2}, G={g}, "
                         f"F={f_dim}")
    words = ft._derived(st.q13, st.kernel_cache, "frag")
    pairs = ft._derived(st.s13, st.kernel_cache, "pairs", torch.bfloat16)
    blk_e, blk_r0, blk_n = blocks if blocks is not None else block_table(counts, bt)
    h = torch.empty(tok.numel(), f_dim, dtype=torch.bfloat16, device=x.device)
    n_ft = f_dim // 64
    grid = (blk_e.numel() * n_ft,)
    gate_up_int4_frag_kernel[grid](x, tok, words, pairs, h, blk_e, blk_r0, blk_n, n_ft,
                                   H=h_dim, F=f_dim, G=g, BT=bt, BK=bk, STAGES=stages,
                                   W_L=frag_word_layout(bk), num_warps=4)
    return h


def reference_gate_up(st, x: torch.Tensor, tok: torch.Tensor, counts: torch.Tensor
                      ) -> torch.Tensor:
    """silu(x Wg^T) * (x Wu^T) per dispatch row, weights dequantized in fp32."""
    from wattmoe.moe.quant import dequantize_int4

    f_dim = st.inner_size
    out = torch.empty(tok.numel(), f_dim, dtype=torch.float32, device=x.device)
    row = 0
    for e, c in enumerate(counts.tolist()):
        if c:
            w = dequantize_int4(st.q13[e], st.s13[e], torch.float32)
            hm = x[tok[row:row + c]].float() @ w.t()
            out[row:row + c] = torch.nn.functional.silu(hm[:, :f_dim]) * hm[:, f_dim:]
        row += c
    return out


def _variants(qst, x: torch.Tensor, d, dev: torch.device
              ) -> dict[str, Callable[[], torch.Tensor]]:
    """The launches compared on one dispatch: the Gluon kernel at 2-4 stages, Triton's gate/up
    with the same tiles (fp32 and bit-operation dequantization) and the tuned table's."""
    from wattmoe.moe import fused_triton as ft

    tok, counts = d.token_idx.contiguous(), d.counts.contiguous()
    f_dim, h_dim, g = qst.inner_size, qst.hidden_size, qst.group_size
    bt = 64 if tok.numel() / counts.numel() > 48 else 32
    blocks = block_table(counts, bt)  # once, outside the timed launches (it syncs the host)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        f"gluon bt{bt} s{stages}": (
            lambda s=stages: gluon_gate_up(qst, x, tok, counts, bt=bt, stages=s, blocks=blocks))
        for stages in (2, 3, 4)}
    for fbt in (bt, bt // 2):  # the table kernel's dequantization, on two token tiles
        fblocks = blocks if fbt == bt else block_table(counts, fbt)
        for bk, stages in ((64, 2), (64, 3), (128, 2)):
            variants[f"gluon frag bt{fbt} bk{bk} s{stages}"] = (
                lambda b=fbt, k=bk, s=stages, bl=fblocks: gluon_frag_gate_up(
                    qst, x, tok, counts, bt=b, bk=k, stages=s, blocks=bl))

    def triton_launch(cfg1):
        def fn():
            h = torch.empty(tok.numel(), f_dim, dtype=torch.bfloat16, device=dev)
            ft._launch(x, tok, d.weight, counts, qst.q13, qst.s13, h, f_dim, h_dim, f_dim,
                       cfg1, gather=True, gated=True, act=1, combine=0, qgroup=g,
                       ieee=False, cache=qst.kernel_cache)
            return h
        return fn

    base = ft._fit(ft.INT4_CANDIDATES[f"w64t{bt}"][0], f_dim, h_dim, g)
    variants[f"triton w64t{bt} fp32 dequant"] = triton_launch(
        dataclasses.replace(base, int4_asm=False))
    variants[f"triton w64t{bt} bit-op dequant"] = triton_launch(base)
    table = ft.resolve_config(ft.choose_config(qst, tok.numel(), dev), True)
    variants["triton table gate/up"] = triton_launch(ft._fit(table[0], f_dim, h_dim, g))
    return variants


def main(argv: list[str] | None = None) -> int:
    from _meta import provenance, write_json
    from kernels_bench import bench_ms, bf16_and_int4_stacks, routing

    from wattmoe.errors import ConfigError
    from wattmoe.moe import get_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b")
    ap.add_argument("--tokens", default="512")
    ap.add_argument("--out", default="gluon.json")
    ap.add_argument("--only", default="",
                    help="run the variants whose name contains this (e.g. for ncu: 'table')")
    args = ap.parse_args(argv)
    try:
        cfgs = [(name, get_preset(name)) for name in args.shapes.split(",") if name]
        tokens_list = [int(t) for t in args.tokens.split(",") if t]
    except (ConfigError, ValueError) as exc:
        ap.error(f"--shapes/--tokens: {exc}")
    if not cfgs or not tokens_list or min(tokens_list) < 1:
        ap.error("--shapes and --tokens need at least one entry, tokens >= 1")
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        ap.error("needs a Hopper GPU (sm_90): wgmma")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict[str, object]] = []
    payload = {**provenance(), "triton": triton.__version__, "args": vars(args), "rows": rows}
    for shape, cfg in cfgs:
        _, qst = bf16_and_int4_stacks(cfg, dev)
        for tokens in tokens_list:
            d = routing("uniform", tokens, cfg.num_experts, cfg.top_k, dev, gen)
            x = torch.randn(tokens, cfg.hidden_size, device=dev, generator=gen).bfloat16()
            ref = reference_gate_up(qst, x, d.token_idx, d.counts)
            for name, fn in _variants(qst, x, d, dev).items():
                if args.only not in name:
                    continue
                rec: dict[str, object] = {"shape": shape, "tokens": tokens, "variant": name}
                try:
                    out = fn().float()
                    err = ((out - ref).norm() / ref.norm()).item()
                    rec.update(rel_err=err, ok=err <= TOL)
                    if rec["ok"]:  # a wrong kernel's time means nothing
                        rec["us"] = bench_ms(fn) * 1e3
                except Exception as exc:  # record and go on: the other variants still run
                    rec["error"] = f"{exc.__class__.__name__}: {exc}"
                rows.append(rec)
                write_json(Path(args.out), payload)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()},
                      flush=True)
    if not rows:  # --only matched no variant's name
        print(f"gluon_int4_probe.py: error: --only {args.only!r} matches no variant", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
