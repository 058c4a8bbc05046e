"""The Triton kernels of the `fused` backend (see `fused_triton` for what they compute).

`moe_gemm` and `moe_gemm_wt` are kept as plain functions: `fused_triton` wraps them with
`triton.jit` on first use, compiled for the GPU or run by Triton's interpreter. The small helper
below is a `triton.jit` function already (it is called from inside the kernels), so this module
is imported only once Triton's mode (compiled or interpreted) is settled. Importing it needs
Triton.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _expert_block(pid_m, cnt_ptr, num_experts, BLOCK_M: tl.constexpr, TAIL: tl.constexpr,
                  BLOCK_E: tl.constexpr):
    """Which expert's which row-block `pid_m` is.

    Blocks are laid out expert after expert (ceil(count / BLOCK_M) blocks each) and found from
    `counts` by a cumulative sum in registers. With TAIL > 0 an expert's last partial block of
    <= TAIL rows is not a block of its own: it rides on the block before it (see
    `moe_gemm_wt`). Returns (valid, expert, block index within the expert, the expert's block
    count, its row count, its first dispatch row); valid is False for blocks past the last
    expert's (the grid is an upper bound).
    """
    e_offs = tl.arange(0, BLOCK_E)
    cnt = tl.load(cnt_ptr + e_offs, mask=e_offs < num_experts, other=0).to(tl.int32)
    nblk = (cnt + BLOCK_M - 1) // BLOCK_M
    if TAIL > 0:
        nblk -= ((nblk >= 2) & (cnt - (nblk - 1) * BLOCK_M <= TAIL)).to(tl.int32)
    cum = tl.cumsum(nblk, 0)
    valid = pid_m < tl.sum(nblk, 0)
    e = tl.sum((cum <= pid_m).to(tl.int32), 0)
    is_e = e_offs == e
    blk = pid_m - tl.sum(tl.where(is_e, cum - nblk, 0), 0)
    nblk_e = tl.sum(tl.where(is_e, nblk, 0), 0)
    cnt_e = tl.sum(tl.where(is_e, cnt, 0), 0)
    row0 = tl.sum(tl.where(e_offs < e, cnt, 0), 0)
    return valid, e.to(tl.int64), blk, nblk_e, cnt_e, row0


@triton.jit
def _rows(row0, start, cnt_e, tok_ptr, SIZE: tl.constexpr):
    """Dispatch rows start.. start + SIZE of an expert (masked at its count) and their tokens."""
    local = start + tl.arange(0, SIZE)
    rmask = local < cnt_e  # all False past the last block (cnt_e is 0 there)
    rows = (row0 + local).to(tl.int64)
    tok = tl.load(tok_ptr + rows, mask=rmask, other=0).to(tl.int64)
    return rows, rmask, tok


@triton.jit
def _has_tail(blk, nblk_e, cnt_e, BLOCK_M: tl.constexpr):
    """True for an expert's last block when rows remain past it (they ride on it: TAIL > 0)."""
    return (blk == nblk_e - 1) & ((blk + 1) * BLOCK_M < cnt_e)


@triton.jit
def _block_rows(pid_m, cnt_ptr, tok_ptr, num_experts,
                BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """(valid, expert, rows, row mask, tokens) of row-block `pid_m` (`_expert_block`)."""
    valid, e, blk, _, cnt_e, row0 = _expert_block(pid_m, cnt_ptr, num_experts, BLOCK_M, 0,
                                                  BLOCK_E)
    rows, rmask, tok = _rows(row0, blk * BLOCK_M, cnt_e, tok_ptr, BLOCK_M)
    return valid, e, rows, rmask, tok


@triton.jit
def _swizzle(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) with GROUP_M row-blocks walked together over all column blocks, so
    that programs running side by side share weight tiles in L2."""
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    return pid_m, pid_n


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; IEEE: full fp32 precision (fp32 compute; otherwise Triton may use TF32)."""
    if IEEE:
        out = tl.dot(a, b, acc=acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc=acc)
    return out


@triton.jit
def _activate(acc, acc_up, ACT: tl.constexpr):
    """ACT 1: silu(gate) * up; 2: relu; 0: identity."""
    if ACT == 1:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    elif ACT == 2:
        acc = tl.maximum(acc, 0.0)
    return acc


def _x2(v: int) -> str:
    """A 16-bit constant in both halves of a 32-bit PTX immediate."""
    return f"0x{v:04X}{v:04X}"


def _asm_prologue(one: int, minus_offset: int, regs: str = "") -> list[str]:
    """The int4 asm's scratch registers (t0-t3, the fma constants, and `regs`) and constants."""
    return [f".reg .b32 t0, t1, t2, t3, one, off, nz{regs};",
            f"mov.b32 one, {_x2(one)};", f"mov.b32 off, {_x2(minus_offset)};",
            "mov.b32 nz, 0x80008000;"]


def _asm_unpack(src: str, dst: list[str], magic: int) -> list[str]:
    """The 4 bytes of `src` -> 128 + q (or 1024 + q) in the 16-bit lanes of dst[0], dst[1]
    (low nibbles of bytes 0,1 and 2,3) and dst[2], dst[3] (their high nibbles)."""
    lines = [f"prmt.b32 t0, {src}, 0, 0x4140;", f"prmt.b32 t1, {src}, 0, 0x4342;",
             "shr.b32 t2, t0, 4;", "shr.b32 t3, t1, 4;"]
    return lines + [f"lop3.b32 {r}, t{t}, 0x000F000F, {_x2(magic)}, 0xEA;"
                    for t, r in enumerate(dst)]


# int4 -> 16-bit float without int->float conversions (the conversion units run at a fraction
# of the ALU rate and bounded the first version of this kernel). For 4 packed bytes: `prmt`
# spreads bytes 0,1 and 2,3 into 16-bit lanes, `lop3` keeps one nibble of each lane and ors it
# into the exponent of 128 (bf16 0x4300) or 1024 (fp16 0x6400), where consecutive integers are
# exact: the lane holds 128 + q (or 1024 + q); one fma subtracts 136 (1032), giving q - 8
# exactly, and a second multiplies by the group scale with one rounding, as `dequantize_int4`
# does in the same dtype. Outputs $0-$3: the low nibbles (columns j) in $0, $1 and the high
# nibbles (j + K/2) in $2, $3; inputs: $4 the 4 packed bytes, $5-$8 the scales.
def _int4_asm(fma: str, one: int, minus_offset: int, magic: int) -> str:
    regs = [f"${i}" for i in range(4)]
    lines = _asm_prologue(one, minus_offset) + _asm_unpack("$4", regs, magic)
    lines += [f"{fma} {r}, {r}, one, off;" for r in regs]
    lines += [f"{fma} {r}, {r}, ${i + 5}, nz;" for i, r in enumerate(regs)]
    return "{\n" + "\n".join(lines) + "\n}"


_INT4_ASM_FP16 = tl.constexpr(_int4_asm("fma.rn.f16x2", 0x3C00, 0xE408, 0x6400))
_INT4_ASM_BF16 = tl.constexpr(_int4_asm("fma.rn.bf16x2", 0x3F80, 0xC308, 0x4300))


@triton.jit
def _dequant_int4_asm(p, s_lo, s_hi, FP16: tl.constexpr):
    if FP16:
        lo, hi = tl.inline_asm_elementwise(
            asm=_INT4_ASM_FP16, constraints="=r,=r,=r,=r,r,r,r,r,r", args=[p, s_lo, s_hi],
            dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        lo, hi = tl.inline_asm_elementwise(
            asm=_INT4_ASM_BF16, constraints="=r,=r,=r,=r,r,r,r,r,r", args=[p, s_lo, s_hi],
            dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
    return lo, hi


# Fragment-ordered words (MODE 3): within each 32-byte block of a packed row, the bytes of
# columns {2q, 2q+1, 8+2q, 9+2q} form word 2q and {16+2q, 17+2q, 24+2q, 25+2q} word 2q+1
# (q = 0..3), the columns that one thread of a warp group holds in wgmma's register operand.
# One call takes a thread's two words (pack=2) and writes its eight registers directly:
# $0-$3 the low nibbles of columns (2q,2q+1), (8+2q,9+2q), (16+2q,17+2q), (24+2q,25+2q),
# $4-$7 the high nibbles likewise; $8, $9 the words; $10, $11 the scales (lo, hi columns), or
# with `pair` $10 (= $11) a scale pair word holding both.
def _int4_frag_asm(fma: str, one: int, minus_offset: int, magic: int,
                   pair: bool = False) -> str:
    lines = _asm_prologue(one, minus_offset, ", slo, shi")
    if pair:  # $10 a scale pair word (lo scale in bits 0-15, hi in 16-31): spread each half
        lines += ["prmt.b32 slo, $10, 0, 0x1010;", "prmt.b32 shi, $10, 0, 0x3232;"]
    else:
        lines += ["mov.b32 slo, $10;", "mov.b32 shi, $11;"]
    for w in range(2):  # word 2q -> registers 0, 1 (lo) and 4, 5 (hi); word 2q+1 -> 2, 3, 6, 7
        regs = [f"${r}" for r in (2 * w, 2 * w + 1, 4 + 2 * w, 5 + 2 * w)]
        lines += _asm_unpack(f"${8 + w}", regs, magic)
        for t, r in enumerate(regs):
            lines.append(f"{fma} {r}, {r}, one, off;")
            lines.append(f"{fma} {r}, {r}, {'slo' if t < 2 else 'shi'}, nz;")
    return "{\n" + "\n".join(lines) + "\n}"


_INT4_FRAG_FP16 = tl.constexpr(_int4_frag_asm("fma.rn.f16x2", 0x3C00, 0xE408, 0x6400))
_INT4_FRAG_BF16 = tl.constexpr(_int4_frag_asm("fma.rn.bf16x2", 0x3F80, 0xC308, 0x4300))
# the same with $10 (and $11, the same word) a scale pair word (SPAIR)
_INT4_FRAG_PAIR_FP16 = tl.constexpr(_int4_frag_asm("fma.rn.f16x2", 0x3C00, 0xE408, 0x6400, True))
_INT4_FRAG_PAIR_BF16 = tl.constexpr(_int4_frag_asm("fma.rn.bf16x2", 0x3F80, 0xC308, 0x4300,
                                                   True))


# The same work in two halves, for launches that feed each half to its MMA before unpacking the
# next (`_wt_accumulate`, INT4_SPLIT). Low half: $0-$3 as above; $4, $5 the two words' byte
# lanes of bytes 0,1 (`prmt ... 0x4140`) and $6, $7 those of bytes 2,3, which the high half
# shifts instead of unpacking the words again; inputs $8, $9 the words, $10 the scale pair word
# (`pair`) or the low columns' scales. High half: $0-$3 as $4-$7 above; inputs $4-$7 the lanes,
# $8 the scale pair word or the high columns' scales.
def _int4_frag_half_asm(fma: str, one: int, minus_offset: int, magic: int, pair: bool,
                        high: bool) -> str:
    lines = _asm_prologue(one, minus_offset, ", s")
    if high:
        lines.append("prmt.b32 s, $8, 0, 0x3232;" if pair else "mov.b32 s, $8;")
    else:
        lines.append("prmt.b32 s, $10, 0, 0x1010;" if pair else "mov.b32 s, $10;")
    for w in range(2):
        lanes = (f"${4 + w}", f"${6 + w}")
        if not high:
            lines += [f"prmt.b32 {lanes[0]}, ${8 + w}, 0, 0x4140;",
                      f"prmt.b32 {lanes[1]}, ${8 + w}, 0, 0x4342;"]
        for j, lane in enumerate(lanes):
            r = f"${2 * w + j}"
            if high:
                lines += [f"shr.b32 t{j}, {lane}, 4;",
                          f"lop3.b32 {r}, t{j}, 0x000F000F, {_x2(magic)}, 0xEA;"]
            else:
                lines.append(f"lop3.b32 {r}, {lane}, 0x000F000F, {_x2(magic)}, 0xEA;")
            lines += [f"{fma} {r}, {r}, one, off;", f"{fma} {r}, {r}, s, nz;"]
    return "{\n" + "\n".join(lines) + "\n}"


def _half_asms(fma: str, one: int, minus_offset: int, magic: int) -> tuple[tl.constexpr, ...]:
    """(low, high) x (scales, pair words) of `_int4_frag_half_asm`."""
    return tuple(tl.constexpr(_int4_frag_half_asm(fma, one, minus_offset, magic, pair, high))
                 for high in (False, True) for pair in (False, True))


_LO_FP16, _LO_PAIR_FP16, _HI_FP16, _HI_PAIR_FP16 = _half_asms("fma.rn.f16x2", 0x3C00, 0xE408,
                                                             0x6400)
_LO_BF16, _LO_PAIR_BF16, _HI_BF16, _HI_PAIR_BF16 = _half_asms("fma.rn.bf16x2", 0x3F80, 0xC308,
                                                             0x4300)


@triton.jit
def _dequant_frag_low(p, s, cdt: tl.constexpr, SPAIR: tl.constexpr):
    """The low half of `_dequant_int4_frag` (columns j), and the byte lanes that
    `_dequant_frag_high` takes: s is the rows' scale pair words (SPAIR) or low scales."""
    s = tl.broadcast_to(s[:, None], p.shape)
    if SPAIR:
        if cdt == tl.float16:
            o0, o1, o2, o3, ta, tb = tl.inline_asm_elementwise(
                asm=_LO_PAIR_FP16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r", args=[p, s],
                dtype=(tl.float16,) * 4 + (tl.int32,) * 2, is_pure=True, pack=2)
        else:
            o0, o1, o2, o3, ta, tb = tl.inline_asm_elementwise(
                asm=_LO_PAIR_BF16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r", args=[p, s],
                dtype=(tl.bfloat16,) * 4 + (tl.int32,) * 2, is_pure=True, pack=2)
    else:
        if cdt == tl.float16:
            o0, o1, o2, o3, ta, tb = tl.inline_asm_elementwise(
                asm=_LO_FP16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r", args=[p, s],
                dtype=(tl.float16,) * 4 + (tl.int32,) * 2, is_pure=True, pack=2)
        else:
            o0, o1, o2, o3, ta, tb = tl.inline_asm_elementwise(
                asm=_LO_BF16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r", args=[p, s],
                dtype=(tl.bfloat16,) * 4 + (tl.int32,) * 2, is_pure=True, pack=2)
    return _frag_cols(o0, o1, o2, o3), ta, tb


@triton.jit
def _dequant_frag_high(ta, tb, s, cdt: tl.constexpr, SPAIR: tl.constexpr):
    """The high half of `_dequant_int4_frag` (columns j + K/2) from `_dequant_frag_low`'s byte
    lanes: s is the rows' scale pair words (SPAIR) or high scales."""
    s = tl.broadcast_to(s[:, None], ta.shape)
    if SPAIR:
        if cdt == tl.float16:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                asm=_HI_PAIR_FP16, constraints="=r,=r,=r,=r,r,r,r,r,r,r", args=[ta, tb, s],
                dtype=(tl.float16,) * 4, is_pure=True, pack=2)
        else:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                asm=_HI_PAIR_BF16, constraints="=r,=r,=r,=r,r,r,r,r,r,r", args=[ta, tb, s],
                dtype=(tl.bfloat16,) * 4, is_pure=True, pack=2)
    else:
        if cdt == tl.float16:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                asm=_HI_FP16, constraints="=r,=r,=r,=r,r,r,r,r,r", args=[ta, tb, s],
                dtype=(tl.float16,) * 4, is_pure=True, pack=2)
        else:
            o0, o1, o2, o3 = tl.inline_asm_elementwise(
                asm=_HI_BF16, constraints="=r,=r,=r,=r,r,r,r,r,r", args=[ta, tb, s],
                dtype=(tl.bfloat16,) * 4, is_pure=True, pack=2)
    return _frag_cols(o0, o1, o2, o3)


@triton.jit
def _k_halves(t):
    """[R, 2N] -> its columns 0..N-1 and N..2N-1, [R, N] each (INT4_SPLIT 2: a K step's
    fragment words in two halves of whole 32-byte blocks, which the word order keeps apart)."""
    rows: tl.constexpr = t.shape[0]
    n: tl.constexpr = t.shape[1] // 2
    return tl.split(tl.permute(tl.reshape(t, (rows, 2, n)), (0, 2, 1)))


@triton.jit
def _frag_cols(o0, o1, o2, o3):
    """[R, NB*8] tiles o_h (o_h[:, 8b + m] = column 32b + 8h + m) -> the [R, NB*32] tile."""
    rows: tl.constexpr = o0.shape[0]
    nb: tl.constexpr = o0.shape[1] // 8
    t = tl.join(tl.join(o0, o1), tl.join(o2, o3))  # [R, NB*8, 2 (h & 1), 2 (h >> 1)]
    t = tl.reshape(t, (rows, nb, 8, 2, 2))
    t = tl.permute(t, (0, 1, 4, 3, 2))  # [R, NB, h >> 1, h & 1, m]
    return tl.reshape(t, (rows, nb * 32))


@triton.jit
def _dequant_int4_frag(p, s_lo, s_hi, cdt: tl.constexpr, SPAIR: tl.constexpr):
    """MODE 3 of `_dequant_int4`: p is the packed tile as fragment-ordered 32-bit words
    [BLOCK_F, BLOCK_K / 4]; SPAIR: s_lo (= s_hi) are the rows' scale pair words."""
    if SPAIR:
        sp = tl.broadcast_to(s_lo[:, None], p.shape)
        if cdt == tl.float16:
            lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
                asm=_INT4_FRAG_PAIR_FP16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r",
                args=[p, sp], dtype=(tl.float16,) * 8, is_pure=True, pack=2)
        else:
            lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
                asm=_INT4_FRAG_PAIR_BF16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r",
                args=[p, sp], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)
    else:
        s_lo = tl.broadcast_to(s_lo[:, None], p.shape)
        s_hi = tl.broadcast_to(s_hi[:, None], p.shape)
        if cdt == tl.float16:
            lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
                asm=_INT4_FRAG_FP16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r",
                args=[p, s_lo, s_hi], dtype=(tl.float16,) * 8, is_pure=True, pack=2)
        else:
            lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
                asm=_INT4_FRAG_BF16, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r",
                args=[p, s_lo, s_hi], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)
    return _frag_cols(lo0, lo1, lo2, lo3), _frag_cols(hi0, hi1, hi2, hi3)


# MODE 5 (diagnostic only, `benchmarks/gpu/kernel_diag.py`): a thread's two fragment words
# copied into its eight operand registers, no unpacking or scaling (wrong values): what the
# fragment-word launches cost without the dequantization's instructions.
_FRAG_SKIP = tl.constexpr("{\n" + "\n".join(f"mov.b32 ${r}, ${8 + r % 2};" for r in range(8))
                          + "\n}")


@triton.jit
def _frag_skip(p, cdt: tl.constexpr):
    if cdt == tl.float16:
        lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
            asm=_FRAG_SKIP, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r", args=[p],
            dtype=(tl.float16,) * 8, is_pure=True, pack=2)
    else:
        lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3 = tl.inline_asm_elementwise(
            asm=_FRAG_SKIP, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r", args=[p],
            dtype=(tl.bfloat16,) * 8, is_pure=True, pack=2)
    return _frag_cols(lo0, lo1, lo2, lo3), _frag_cols(hi0, hi1, hi2, hi3)


@triton.jit
def _frag_nibbles(p, SHIFT: tl.constexpr):
    """MODE 4: what `_INT4_FRAG_*` writes, as integer codes (q + 8) of one nibble (SHIFT 0:
    low, 4: high) by plain Triton operations, for Triton's interpreter: the four [R, NB*8]
    tiles o_h of `_frag_cols` from fragment-ordered words p [R, NB*8]."""
    rows: tl.constexpr = p.shape[0]
    n: tl.constexpr = p.shape[1] // 2
    w0, w1 = tl.split(tl.reshape(p, (rows, n, 2)))  # words 2q and 2q + 1 of each block
    o0 = tl.join((w0 >> SHIFT) & 0xF, (w0 >> (8 + SHIFT)) & 0xF)
    o1 = tl.join((w0 >> (16 + SHIFT)) & 0xF, (w0 >> (24 + SHIFT)) & 0xF)
    o2 = tl.join((w1 >> SHIFT) & 0xF, (w1 >> (8 + SHIFT)) & 0xF)
    o3 = tl.join((w1 >> (16 + SHIFT)) & 0xF, (w1 >> (24 + SHIFT)) & 0xF)
    return (tl.reshape(o0, (rows, 2 * n)), tl.reshape(o1, (rows, 2 * n)),
            tl.reshape(o2, (rows, 2 * n)), tl.reshape(o3, (rows, 2 * n)))


@triton.jit
def _frag_half_fp32(p, s, cdt: tl.constexpr, SPAIR: tl.constexpr, SHIFT: tl.constexpr):
    """MODE 4's half of a fragment-word tile through fp32 (SHIFT 0: the low nibbles, columns j;
    4: the high ones, j + K/2): s is the rows' fp16 scale pair words (SPAIR; the half that goes
    with SHIFT) or fp32 scales of those columns."""
    if SPAIR:
        s = ((s >> (4 * SHIFT)) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(
            tl.float32)
    o0, o1, o2, o3 = _frag_nibbles(p, SHIFT)
    return ((_frag_cols(o0, o1, o2, o3).to(tl.float32) - 8.0) * s[:, None]).to(cdt)


@triton.jit
def _int4_scales(s_ptrs, k_lo, k_hi, QGROUP: tl.constexpr, cdt: tl.constexpr,
                 MODE: tl.constexpr, SPAIR: tl.constexpr, GSTRIDE: tl.constexpr = 1):
    """The scales [BLOCK_F] of packed columns k_lo.. and k_hi.. (one group each), in the
    dtype `_dequant_int4` multiplies in for MODE: the compute dtype for the bit-operation
    modes (1, 3; the stored fp16 rounded to it, as `dequantize_int4` does), fp32 otherwise.

    SPAIR (MODE 3 and its diagnostic skip 5, and 4 in the interpreter): s_ptrs point to scale
    pair words (`quant.scale_pairs`, cached by `fused_triton._derived`): one 32-bit word holds
    both scales in the compute dtype (fp16 for MODE 4: the stored scales, exactly), group g
    (low half) and g + G/2, the group of the same byte's high nibbles; returned as (words,
    words). A 32-bit load is one that Triton's pipeliner copies ahead through shared memory
    (`cp.async`, 4 bytes at least); the 16-bit scale loads it leaves in the loop, where they
    stall the dequantization (ncu, results/h200/kernels/run36_verify). GSTRIDE: words from one
    group's to the next's (1; the layout's tile rows for pairs in tile order, W_TILES)."""
    if SPAIR:
        s_lo = tl.load(s_ptrs + (k_lo // QGROUP) * GSTRIDE)
        s_hi = s_lo
    else:
        if MODE == 1 or MODE == 3:
            sdt: tl.constexpr = cdt
        else:
            sdt: tl.constexpr = tl.float32
        s_lo = tl.load(s_ptrs + k_lo // QGROUP).to(sdt)
        s_hi = tl.load(s_ptrs + k_hi // QGROUP).to(sdt)
    return s_lo, s_hi


@triton.jit
def _dequant_int4(p, s_lo, s_hi, cdt: tl.constexpr, MODE: tl.constexpr, SPAIR: tl.constexpr):
    """The two [BLOCK_F, BLOCK_K] weight tiles (columns j and j + K/2) of packed tile p, with
    the rows' scales s_lo, s_hi of those columns (`_int4_scales`; SPAIR: both are the rows'
    scale pair words).

    MODE 1: bit operations and 16-bit fmas (GPU, bf16/fp16); 0: through fp32; 3: the tile as
    fragment-ordered 32-bit words [BLOCK_F, BLOCK_K / 4] (`wattmoe.moe.quant.fragment_words`),
    bit operations and fmas straight into wgmma's register layout (GPU); 4: the same words
    through fp32 (Triton's interpreter, to test the word order without a GPU); 2: diagnostic
    only, the bytes reinterpreted as 16-bit floats with no unpacking or scaling (wrong values;
    `benchmarks/gpu/kernel_diag.py` uses it to measure what dequantization costs); 5: the
    same for fragment-ordered words (their bits copied into the operand registers).
    """
    if MODE == 3:
        w_lo, w_hi = _dequant_int4_frag(p, s_lo, s_hi, cdt, SPAIR)
    elif MODE == 4:
        w_lo = _frag_half_fp32(p, s_lo, cdt, SPAIR, 0)
        w_hi = _frag_half_fp32(p, s_hi, cdt, SPAIR, 4)
    elif MODE == 1:
        w_lo, w_hi = _dequant_int4_asm(p, tl.broadcast_to(s_lo[:, None], p.shape),
                                       tl.broadcast_to(s_hi[:, None], p.shape),
                                       cdt == tl.float16)
    elif MODE == 5:
        w_lo, w_hi = _frag_skip(p, cdt)
    elif MODE == 2:
        w_lo = (p.to(tl.uint16) << 8).to(cdt, bitcast=True)
        w_hi = (p.to(tl.uint16) << 4).to(cdt, bitcast=True)
    else:
        w_lo = (((p & 0xF).to(tl.float32) - 8.0) * s_lo[:, None]).to(cdt)
        w_hi = (((p >> 4).to(tl.float32) - 8.0) * s_hi[:, None]).to(cdt)
    return w_lo, w_hi

def moe_gemm(
    a_ptr, tok_ptr, wt_ptr, cnt_ptr, w_ptr, c_ptr,
    n_out, k_dim: tl.constexpr, num_experts, num_pid_m,
    stride_am, stride_we, stride_wn, stride_cm,
    up_rows, w_desc,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, BLOCK_E: tl.constexpr, GATHER_A: tl.constexpr,
    GATED: tl.constexpr, ACT: tl.constexpr, COMBINE: tl.constexpr, EVEN_K: tl.constexpr,
    DOT_IEEE: tl.constexpr, DOT_F32: tl.constexpr, W_TMA: tl.constexpr,
):
    """Tokens x weights^T: a [BLOCK_M tokens, BLOCK_N outputs] tile per program (dense).

    W_TMA: weight tiles come through `w_desc`, a tensor descriptor of the weights viewed as
    [experts * rows, K] (TMA on Hopper); its rows past this expert's belong to the next expert
    or lie outside (zeros), and only feed outputs that are masked at the store.
    """
    pid_m, pid_n = _swizzle(tl.program_id(0), num_pid_m, tl.cdiv(n_out, BLOCK_N), GROUP_M)
    valid, e, rows, rmask, tok = _block_rows(pid_m, cnt_ptr, tok_ptr, num_experts,
                                             BLOCK_M, BLOCK_E)
    if not valid:
        return
    if GATHER_A:
        a_rows = tok
    else:
        a_rows = rows

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    wn = (offs_n % n_out).to(tl.int64)  # wrapped, so weight loads need no mask
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + e * stride_we + wn[None, :] * stride_wn + offs_k[:, None]
    up_w = up_rows * stride_wn
    w_row = (e * (stride_we // stride_wn) + pid_n * BLOCK_N).to(tl.int32)  # W_TMA

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_dim, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
        else:
            kmask = offs_k < k_dim - k0
            a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        if W_TMA:
            b = tl.trans(w_desc.load([w_row, k0]))
        elif EVEN_K:
            b = tl.load(w_ptrs)
        else:
            b = tl.load(w_ptrs, mask=kmask[:, None], other=0.0)
        if DOT_F32:  # Triton's interpreter multiplies bf16 wrongly: give it fp32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = _mma(a, b, acc, DOT_IEEE)
        if GATED:
            if W_TMA:
                b_u = tl.trans(w_desc.load([w_row + up_rows, k0]))
            elif EVEN_K:
                b_u = tl.load(w_ptrs + up_w)
            else:
                b_u = tl.load(w_ptrs + up_w, mask=kmask[:, None], other=0.0)
            if DOT_F32:
                b_u = b_u.to(tl.float32)
            acc_up = _mma(a, b_u, acc_up, DOT_IEEE)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    acc = _activate(acc, acc_up, ACT)
    nmask = offs_n < n_out
    if COMBINE != 0:
        wgt = tl.load(wt_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        acc = acc * wgt[:, None]
    if COMBINE == 1:
        c_ptrs = c_ptr + tok[:, None] * stride_cm + offs_n[None, :]
        tl.atomic_add(c_ptrs, acc, mask=rmask[:, None] & nmask[None, :], sem="relaxed")
    else:
        c_ptrs = c_ptr + rows[:, None] * stride_cm + offs_n[None, :]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _x_quarters(ptrs, mask, half, BLOCK_K: tl.constexpr, cdt: tl.constexpr):
    """INT4_SPLIT 2: the activation tiles [BLOCK_K / 2, tokens] of a K step's two halves, for
    the low nibbles' columns (j0.., j0 + BLOCK_K / 2..) and the high ones' (K/2 + the same);
    ptrs: the rows' first BLOCK_K / 2 columns of the step."""
    x_lo_a = tl.trans(tl.load(ptrs, mask=mask[:, None], other=0.0).to(cdt))
    x_lo_b = tl.trans(tl.load(ptrs + BLOCK_K // 2, mask=mask[:, None], other=0.0).to(cdt))
    x_hi_a = tl.trans(tl.load(ptrs + half, mask=mask[:, None], other=0.0).to(cdt))
    x_hi_b = tl.trans(tl.load(ptrs + (half + BLOCK_K // 2), mask=mask[:, None],
                              other=0.0).to(cdt))
    return x_lo_a, x_lo_b, x_hi_a, x_hi_b


@triton.jit
def _wt_accumulate(
    a_ptrs, at_ptrs, ah_ptrs, ath_ptrs, w_ptrs, w_desc, w_row, s_ptrs, up_w, up_s, up_rows, rmask,
    tmask, offs_k,
    k_dim: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr, TAIL_T: tl.constexpr,
    BLOCK_K: tl.constexpr, GATED: tl.constexpr, INT4: tl.constexpr, QGROUP: tl.constexpr,
    EVEN_K: tl.constexpr, DOT_IEEE: tl.constexpr, INT4_DEQUANT: tl.constexpr,
    W_TMA: tl.constexpr, cdt: tl.constexpr, HAS_TAIL: tl.constexpr, SPAIR: tl.constexpr,
    W_TILES: tl.constexpr, INT4_WAIT: tl.constexpr, INT4_SPLIT: tl.constexpr,
):
    """The K loop of `moe_gemm_wt`: (gate, up) accumulators of the main token tile and, with
    HAS_TAIL, of the tail tile, from one load (and one dequantization) of each weight tile.
    SPAIR (int4, MODE 3, 4 and 5): the scales are pair words (`_int4_scales`). W_TILES > 0: words
    and pairs in tile order of W_TILES rows (`quant.tile_rows`): a K step's words follow the
    previous step's [W_TILES, KW] tile, a group's pairs the previous group's W_TILES words.

    INT4_WAIT (int4 without GATED): each K step ends by waiting for its MMAs. Their first
    operand, the dequantized tile, is in registers; Triton's pipeliner would leave the step's
    last MMA in flight across the back edge, while the next step's dequantization rewrites the
    same registers (PTX leaves that undefined: ptxas hands them to the next step's loads and
    constants, and the MMA reads those at times: Triton 3.6 on the H200, results/h200/kernels/
    run86-run88; Triton 3.9's ptxas happened to leave them alone).
    Adding 0.0 to the accumulators is a use that the pipeliner must wait for. Gated launches
    dequantize the up rows into other registers after the gate MMAs' wait, so the up MMA in
    flight at the back edge keeps its registers (ptxas leaves them alone there).

    INT4_SPLIT (fragment words, without GATED; in place of INT4_WAIT; MODE 4, the interpreter,
    takes the same path through fp32, so that the CPU tests run its order): the tile is
    unpacked in halves, each fed to its MMAs before the next (`_dequant_frag_low/high`), so
    the high half's MMA left in flight keeps its registers while the next step unpacks its low
    half into others; Triton waits for it after the next low MMA, before the high half is
    unpacked again. The same instructions as unpacking at once (the high half shifts the low
    half's byte lanes). INT4_SPLIT 1 is that (nibble halves); INT4_SPLIT 2 splits the K step
    instead (BLOCK_K >= 64: halves of whole 32-byte blocks of fragment words, `_k_halves`):
    each half unpacked at once (`_dequant_int4`, low and high nibbles), then its two MMAs on
    the activations' matching quarters (`_x_quarters`), so a quarter of the tile is in flight
    at the back edge and the next step's first half goes to other registers. Nibble halves keep
    the low half's byte lanes (two registers a word) and the high half's MMA operand (half the
    tile) live across the next low half: on 256-row tiles with 8 warps that was 197 registers
    instead of the waiting loop's 127, one CTA per SM instead of two; K halves keep only the
    second half's words and a quarter-tile operand: 128 (Triton 3.6, sm_90, no spills;
    results/cpu/compile_sm90/w256_split_k.txt), yet on the H200 they spent 0.9-1.8% more than
    the wait there (run 97), and 0.6-2.8% less than nibble halves on 128-row tiles (runs
    98-99): `launch_meta` picks the form by the tile's rows (`fused_triton._split_by_rows`)."""
    acc = tl.zeros((BLOCK_F, BLOCK_T), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_F, BLOCK_T), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_F, TAIL_T), dtype=tl.float32)
    acc_tu = tl.zeros((BLOCK_F, TAIL_T), dtype=tl.float32)
    if INT4:
        half = k_dim // 2
        # the weights' K step in their elements: fragment words (MODE >= 3) hold 4 packed bytes
        KW: tl.constexpr = BLOCK_K // 4 if INT4_DEQUANT >= 3 else BLOCK_K
        W_STEP: tl.constexpr = KW * W_TILES if W_TILES else KW
        GSTRIDE: tl.constexpr = W_TILES if W_TILES else 1
        for k0 in range(0, half, BLOCK_K):
            s_lo, s_hi = _int4_scales(s_ptrs, k0, k0 + half, QGROUP, cdt, INT4_DEQUANT, SPAIR,
                                      GSTRIDE)
            if INT4_SPLIT == 2:  # the activations of each K half: columns j, then j + K/2
                x_lo_a, x_lo_b, x_hi_a, x_hi_b = _x_quarters(ah_ptrs, rmask, half, BLOCK_K, cdt)
                if HAS_TAIL:
                    t_lo_a, t_lo_b, t_hi_a, t_hi_b = _x_quarters(ath_ptrs, tmask, half, BLOCK_K,
                                                                 cdt)
            else:
                x_lo = tl.trans(tl.load(a_ptrs, mask=rmask[:, None], other=0.0).to(cdt))
                x_hi = tl.trans(tl.load(a_ptrs + half, mask=rmask[:, None], other=0.0).to(cdt))
                if HAS_TAIL:
                    t_lo = tl.trans(tl.load(at_ptrs, mask=tmask[:, None], other=0.0).to(cdt))
                    t_hi = tl.trans(tl.load(at_ptrs + half, mask=tmask[:, None],
                                            other=0.0).to(cdt))
            if W_TMA:  # MODE >= 3: descriptor and pointers count 32-bit words
                p = w_desc.load([w_row, (k0 // BLOCK_K) * KW])
            else:
                p = tl.load(w_ptrs)
            if INT4_SPLIT == 2:  # each K half unpacked whole, its MMAs before the next
                p_a, p_b = _k_halves(p)
                w_lo, w_hi = _dequant_int4(p_a, s_lo, s_hi, cdt, INT4_DEQUANT, SPAIR)
                acc = _mma(w_hi, x_hi_a, _mma(w_lo, x_lo_a, acc, DOT_IEEE), DOT_IEEE)
                if HAS_TAIL:
                    acc_t = _mma(w_hi, t_hi_a, _mma(w_lo, t_lo_a, acc_t, DOT_IEEE), DOT_IEEE)
                w_lo, w_hi = _dequant_int4(p_b, s_lo, s_hi, cdt, INT4_DEQUANT, SPAIR)
                acc = _mma(w_hi, x_hi_b, _mma(w_lo, x_lo_b, acc, DOT_IEEE), DOT_IEEE)
                if HAS_TAIL:
                    acc_t = _mma(w_hi, t_hi_b, _mma(w_lo, t_lo_b, acc_t, DOT_IEEE), DOT_IEEE)
            elif INT4_SPLIT:  # each half to its MMAs before the next is unpacked
                if INT4_DEQUANT == 3:
                    w_lo, lanes_a, lanes_b = _dequant_frag_low(p, s_lo, cdt, SPAIR)
                else:  # MODE 4, Triton's interpreter: the same halves through fp32
                    w_lo = _frag_half_fp32(p, s_lo, cdt, SPAIR, 0)
                acc = _mma(w_lo, x_lo, acc, DOT_IEEE)
                if HAS_TAIL:
                    acc_t = _mma(w_lo, t_lo, acc_t, DOT_IEEE)
                if INT4_DEQUANT == 3:
                    w_hi = _dequant_frag_high(lanes_a, lanes_b, s_hi, cdt, SPAIR)
                else:
                    w_hi = _frag_half_fp32(p, s_hi, cdt, SPAIR, 4)
                acc = _mma(w_hi, x_hi, acc, DOT_IEEE)
                if HAS_TAIL:
                    acc_t = _mma(w_hi, t_hi, acc_t, DOT_IEEE)
            else:
                w_lo, w_hi = _dequant_int4(p, s_lo, s_hi, cdt, INT4_DEQUANT, SPAIR)
                acc = _mma(w_hi, x_hi, _mma(w_lo, x_lo, acc, DOT_IEEE), DOT_IEEE)
                if HAS_TAIL:
                    acc_t = _mma(w_hi, t_hi, _mma(w_lo, t_lo, acc_t, DOT_IEEE), DOT_IEEE)
            if GATED:
                if W_TMA:
                    p_u = w_desc.load([w_row + up_rows, (k0 // BLOCK_K) * KW])
                else:
                    p_u = tl.load(w_ptrs + up_w)
                su_lo, su_hi = _int4_scales(s_ptrs + up_s, k0, k0 + half, QGROUP, cdt,
                                            INT4_DEQUANT, SPAIR, GSTRIDE)
                u_lo, u_hi = _dequant_int4(p_u, su_lo, su_hi, cdt, INT4_DEQUANT, SPAIR)
                acc_up = _mma(u_hi, x_hi, _mma(u_lo, x_lo, acc_up, DOT_IEEE), DOT_IEEE)
                if HAS_TAIL:
                    acc_tu = _mma(u_hi, t_hi, _mma(u_lo, t_lo, acc_tu, DOT_IEEE), DOT_IEEE)
            if INT4_WAIT:  # no MMA in flight when the next step's dequantization runs
                acc = acc + 0.0
                if HAS_TAIL:
                    acc_t = acc_t + 0.0
            a_ptrs += BLOCK_K
            at_ptrs += BLOCK_K
            if INT4_SPLIT == 2:
                ah_ptrs += BLOCK_K
                ath_ptrs += BLOCK_K
            w_ptrs += W_STEP
    else:
        for k0 in range(0, k_dim, BLOCK_K):
            if EVEN_K:
                x = tl.load(a_ptrs, mask=rmask[:, None], other=0.0)
                if HAS_TAIL:
                    xt = tl.load(at_ptrs, mask=tmask[:, None], other=0.0)
            else:
                kmask = offs_k < k_dim - k0
                x = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
                if HAS_TAIL:
                    xt = tl.load(at_ptrs, mask=tmask[:, None] & kmask[None, :], other=0.0)
            if W_TMA:
                w = w_desc.load([w_row, k0])
            elif EVEN_K:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=kmask[None, :], other=0.0)
            x = tl.trans(x.to(cdt))
            w = w.to(cdt)
            acc = _mma(w, x, acc, DOT_IEEE)
            if HAS_TAIL:
                xt = tl.trans(xt.to(cdt))
                acc_t = _mma(w, xt, acc_t, DOT_IEEE)
            if GATED:
                if W_TMA:
                    u = w_desc.load([w_row + up_rows, k0])
                elif EVEN_K:
                    u = tl.load(w_ptrs + up_w)
                else:
                    u = tl.load(w_ptrs + up_w, mask=kmask[None, :], other=0.0)
                u = u.to(cdt)
                acc_up = _mma(u, x, acc_up, DOT_IEEE)
                if HAS_TAIL:
                    acc_tu = _mma(u, xt, acc_tu, DOT_IEEE)
            a_ptrs += BLOCK_K
            at_ptrs += BLOCK_K
            w_ptrs += BLOCK_K
    return acc, acc_up, acc_t, acc_tu


@triton.jit
def _wt_store(acc, acc_up, offs_f, fmask, rows, rmask, tok, wt_ptr, c_ptr, stride_cm,
              ACT: tl.constexpr, COMBINE: tl.constexpr):
    """Epilogue of `moe_gemm_wt` for one [BLOCK_F, tokens] tile: activation, routing weight,
    then a store of each row (COMBINE 0, 2) or an atomic add at its token (COMBINE 1)."""
    acc = _activate(acc, acc_up, ACT)
    mask = fmask[:, None] & rmask[None, :]
    if COMBINE != 0:
        wgt = tl.load(wt_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        acc = acc * wgt[None, :]
    if COMBINE == 1:
        c_ptrs = c_ptr + tok[None, :] * stride_cm + offs_f[:, None]
        tl.atomic_add(c_ptrs, acc, mask=mask, sem="relaxed")
    else:
        c_ptrs = c_ptr + rows[None, :] * stride_cm + offs_f[:, None]
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


def moe_gemm_wt(
    a_ptr, tok_ptr, wt_ptr, cnt_ptr, w_ptr, s_ptr, c_ptr,
    n_out, k_dim: tl.constexpr, num_experts, num_pid_t,
    stride_am, stride_we, stride_wn, stride_se, stride_sn, stride_cm,
    up_rows, w_desc,
    BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_T: tl.constexpr, BLOCK_E: tl.constexpr, GATHER_A: tl.constexpr,
    GATED: tl.constexpr, ACT: tl.constexpr, COMBINE: tl.constexpr, INT4: tl.constexpr,
    QGROUP: tl.constexpr, EVEN_K: tl.constexpr, DOT_IEEE: tl.constexpr,
    DOT_F32: tl.constexpr, INT4_DEQUANT: tl.constexpr, W_TMA: tl.constexpr,
    TAIL: tl.constexpr, TAIL_T: tl.constexpr, SPAIR: tl.constexpr, W_TILES: tl.constexpr,
    INT4_WAIT: tl.constexpr, INT4_SPLIT: tl.constexpr,
):
    """Weights x tokens^T: a [BLOCK_F outputs, BLOCK_T tokens] tile per program.

    k_dim is a compile-time constant (one compile per model width, in both kernels): with a
    runtime K the K loop may run zero times, the accumulators then reach the epilogue from
    their zero fill, and ptxas serializes every wgmma that takes its first operand from
    registers (warning C7515; int4 gate/up with 32-column K steps: 24 waits for 24 wgmma
    instead of 8, compiled for sm_90).

    The weight tile is the MMA's first operand, so an int4 tile is dequantized in registers
    and fed to the tensor cores from there (no shared-memory round trip). int4 weights use the
    half-split packing of `wattmoe.moe.quant`: byte j of a row holds columns j and j + K/2, so a
    K step over packed column block [j0, j0 + BLOCK_K) yields two dequantized tiles, for the
    activations' columns j0.. and K/2 + j0.., by a mask and a shift (elementwise). Each tile lies
    in one quantization group (BLOCK_K divides QGROUP and K/2): one scale per row and tile.
    INT4_DEQUANT selects how (`_dequant_int4`): bit operations and 16-bit fmas for bf16/fp16 on
    a GPU, else through fp32 (the interpreter, fp32 compute). W_TMA: weight (or packed int4)
    tiles come through `w_desc` as in `moe_gemm`.

    W_TILES > 0 (fragment words and scale pairs only): both in tile order of W_TILES rows
    (`quant.tile_rows`), each K step's [W_TILES, BLOCK_K / 4] words and each group's W_TILES
    pair words contiguous; a program's BLOCK_F rows are one tile (W_TILES = BLOCK_F), a part of
    one (BLOCK_F divides W_TILES: 64-row programs in the 128-row tiles that 128-row programs
    read, so one copy serves both) or span several tiles' runs (W_TILES divides BLOCK_F). The
    launcher sets it only where BLOCK_F divides n_out and W_TILES the stack's rows and up_rows,
    so no row wraps and every tile is whole.

    TAIL > 0 (TAIL_T = TAIL): an expert whose rows overflow its last full token tile by at most
    TAIL does those rows in the same program, as a second, TAIL_T-token MMA on the same weight
    tiles, instead of in a program of its own that would read (and dequantize) the weights again
    for a mostly empty tile. (With TAIL = 0, TAIL_T only sizes unused placeholders.)
    """
    pid_t, pid_f = _swizzle(tl.program_id(0), num_pid_t, tl.cdiv(n_out, BLOCK_F), GROUP_T)
    valid, e, blk, nblk_e, cnt_e, row0 = _expert_block(pid_t, cnt_ptr, num_experts, BLOCK_T,
                                                       TAIL, BLOCK_E)
    if not valid:
        return
    rows, rmask, tok = _rows(row0, blk * BLOCK_T, cnt_e, tok_ptr, BLOCK_T)
    trows, tmask, ttok = _rows(row0, (blk + 1) * BLOCK_T, cnt_e, tok_ptr, TAIL_T)
    if GATHER_A:
        a_rows = tok
        at_rows = ttok
    else:
        a_rows = rows
        at_rows = trows
    if DOT_F32:
        cdt = tl.float32
    else:
        cdt = a_ptr.dtype.element_ty

    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    wf = (offs_f % n_out).to(tl.int64)  # wrapped, so weight loads need no mask
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    at_ptrs = a_ptr + at_rows[:, None] * stride_am + offs_k[None, :]
    # INT4_SPLIT 2: the first half of each K step's columns (the activations in quarters)
    offs_kh = tl.arange(0, BLOCK_K // 2)
    ah_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_kh[None, :]
    ath_ptrs = a_ptr + at_rows[:, None] * stride_am + offs_kh[None, :]
    if W_TILES >= BLOCK_F:  # words and pairs in tile order: the program's rows in one tile
        # (all of it, or the part0-th BLOCK_F-row part of a larger layout tile: one contiguous
        # run of BLOCK_F x KW words per K step either way); the part's offset goes into the
        # scalar base, so the vector offsets are the whole tile's (as aligned, as few registers)
        PARTS: tl.constexpr = W_TILES // BLOCK_F
        tile0 = ((pid_f // PARTS) * W_TILES).to(tl.int64)
        part0 = ((pid_f % PARTS) * BLOCK_F).to(tl.int64)
        r_in = tl.arange(0, BLOCK_F)
        w_ptrs = (w_ptr + (e * stride_we + tile0 * stride_wn + part0 * (BLOCK_K // 4))
                  + r_in[:, None] * (BLOCK_K // 4) + tl.arange(0, BLOCK_K // 4)[None, :])
        s_ptrs = s_ptr + (e * stride_se + tile0 * stride_sn + part0) + r_in
    elif W_TILES:  # a program over several layout tiles: each of its rows in its own tile
        r_all = tl.arange(0, BLOCK_F)
        tiles = ((pid_f * (BLOCK_F // W_TILES) + r_all // W_TILES) * W_TILES).to(tl.int64)
        r_in = r_all % W_TILES
        w_ptrs = (w_ptr + e * stride_we + tiles[:, None] * stride_wn
                  + r_in[:, None] * (BLOCK_K // 4) + tl.arange(0, BLOCK_K // 4)[None, :])
        s_ptrs = s_ptr + e * stride_se + tiles * stride_sn + r_in
    else:
        if INT4_DEQUANT >= 3:  # int4 weights as fragment-ordered 32-bit words
            w_ptrs = (w_ptr + e * stride_we + wf[:, None] * stride_wn
                      + tl.arange(0, BLOCK_K // 4)[None, :])
        else:
            w_ptrs = w_ptr + e * stride_we + wf[:, None] * stride_wn + offs_k[None, :]
        s_ptrs = s_ptr + e * stride_se + wf * stride_sn  # INT4
    w_row = (e * (stride_we // stride_wn) + pid_f * BLOCK_F).to(tl.int32)  # W_TMA
    up_w = up_rows * stride_wn
    up_s = up_rows * stride_sn
    fmask = offs_f < n_out
    has_tail = False
    if TAIL > 0:  # the tail's loop is compiled only for tail configurations
        has_tail = _has_tail(blk, nblk_e, cnt_e, BLOCK_T)
    if has_tail:
        acc, acc_up, acc_t, acc_tu = _wt_accumulate(
            a_ptrs, at_ptrs, ah_ptrs, ath_ptrs, w_ptrs, w_desc, w_row, s_ptrs, up_w, up_s,
            up_rows, rmask, tmask, offs_k, k_dim, BLOCK_F, BLOCK_T, TAIL_T, BLOCK_K, GATED, INT4,
            QGROUP, EVEN_K, DOT_IEEE, INT4_DEQUANT, W_TMA, cdt, True, SPAIR, W_TILES, INT4_WAIT,
            INT4_SPLIT)
        _wt_store(acc_t, acc_tu, offs_f, fmask, trows, tmask, ttok, wt_ptr, c_ptr, stride_cm,
                  ACT, COMBINE)
    else:
        acc, acc_up, acc_t, acc_tu = _wt_accumulate(
            a_ptrs, at_ptrs, ah_ptrs, ath_ptrs, w_ptrs, w_desc, w_row, s_ptrs, up_w, up_s,
            up_rows, rmask, tmask, offs_k, k_dim, BLOCK_F, BLOCK_T, TAIL_T, BLOCK_K, GATED, INT4,
            QGROUP, EVEN_K, DOT_IEEE, INT4_DEQUANT, W_TMA, cdt, False, SPAIR, W_TILES, INT4_WAIT,
            INT4_SPLIT)
    _wt_store(acc, acc_up, offs_f, fmask, rows, rmask, tok, wt_ptr, c_ptr, stride_cm, ACT,
              COMBINE)


def moe_combine(
    y_ptr, rowof_ptr, out_ptr, num_tokens, n_cols, num_rows, stride_y, stride_o,
    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[t] = sum over the token's k assignment rows of y (the down launch's weighted rows),
    in fp32, in slot order (deterministic); rows of dropped assignments (-1) add nothing, and
    rows outside y are never read."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    tmask = t < num_tokens
    hmask = h < n_cols
    t64 = t.to(tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        r = tl.load(rowof_ptr + t64 * TOP_K + j, mask=tmask, other=-1).to(tl.int64)
        ok = tmask & (r >= 0) & (r < num_rows)
        v = tl.load(y_ptr + r[:, None] * stride_y + h[None, :],
                    mask=ok[:, None] & hmask[None, :], other=0.0)
        acc += v.to(tl.float32)
    tl.store(out_ptr + t64[:, None] * stride_o + h[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=tmask[:, None] & hmask[None, :])
