"""The fragment-word inline PTX (`_fused_kernel._INT4_FRAG_*`), which only a GPU runs, emulated
instruction by instruction on the CPU (`ptx_emulator.py`): with the word order of
`quant.fragment_words` and the column order of `_frag_cols` it must give exactly what
`dequantize_int4` gives.

Each asm call gets one thread's two adjacent words of a row (the pairing Triton's layout gives
it on sm_90, checked in the compiled PTX when the kernel was written) and the row's two scales.
"""

from __future__ import annotations

import pytest
import torch

from wattmoe.moe.quant import dequantize_int4, fragment_words, quantize_int4

from .interpreter import _interpreter, requires_interpreter  # noqa: F401 (autouse fixture)
from .ptx_emulator import M32, run_ptx

# isort: split
# after the interpreter's set-up (TRITON_INTERPRET=1 before Triton is first imported)
import triton
import triton.language as tl

from wattmoe.moe._fused_kernel import _k_halves

pytestmark = requires_interpreter  # the kernel module is imported once Triton's mode is set


def _halves(v: int, dt: torch.dtype) -> list[torch.Tensor]:
    return [torch.tensor([(v >> s) & 0xFFFF], dtype=torch.int32).to(torch.int16).view(dt)
            for s in (0, 16)]


def _pack(lo: torch.Tensor, hi: torch.Tensor) -> int:
    return (int(lo.view(torch.int16)[0]) & 0xFFFF) | ((int(hi.view(torch.int16)[0]) & 0xFFFF)
                                                      << 16)


def frag_cols(o: list[torch.Tensor]) -> torch.Tensor:
    """`_frag_cols` in torch (tl.join stacks on a new last axis)."""
    t = torch.stack((torch.stack((o[0], o[1]), -1), torch.stack((o[2], o[3]), -1)), -1)
    rows, nb = t.shape[0], t.shape[1] // 8
    return t.reshape(rows, nb, 8, 2, 2).permute(0, 1, 4, 3, 2).reshape(rows, nb * 32)


def _k_halves_kernel(src, dst_a, dst_b, ROWS: tl.constexpr, N: tl.constexpr):
    """`_k_halves` of a [ROWS, N] int32 tile into two [ROWS, N / 2] ones."""
    r = tl.arange(0, ROWS)[:, None]
    a, b = _k_halves(tl.load(src + r * N + tl.arange(0, N)[None, :]))
    half = r * (N // 2) + tl.arange(0, N // 2)[None, :]
    tl.store(dst_a + half, a)
    tl.store(dst_b + half, b)


def _tile(dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed codes, scales, fragment words) of 3 rows of K = 128: K/2 = 64 bytes, two
    32-byte blocks, one scale group per half."""
    torch.manual_seed(0)
    rows, k = 3, 128
    packed, scales = quantize_int4(torch.randn(rows, k), group_size=k // 2)
    return packed, scales, fragment_words(packed)


def _emulated(words: torch.Tensor, scales: torch.Tensor, dt: torch.dtype,
              pair: bool) -> torch.Tensor:
    """What the combined asm writes for fragment words [rows, 8 * blocks], by `_frag_cols`:
    the low nibbles' columns, then the high ones'. pair: the SPAIR variant, $10 (= $11) the
    row's scale pair word (`quant.scale_pairs`); else $10, $11 the row's two scales, each in
    both 16-bit lanes."""
    from wattmoe.moe import _fused_kernel as fk
    from wattmoe.moe.quant import scale_pairs

    fp16 = dt == torch.float16
    asm = ((fk._INT4_FRAG_PAIR_FP16 if fp16 else fk._INT4_FRAG_PAIR_BF16) if pair else
           (fk._INT4_FRAG_FP16 if fp16 else fk._INT4_FRAG_BF16)).value
    rows = words.shape[0]
    s_lo, s_hi = scales[:, 0].to(dt), scales[:, 1].to(dt)
    pairs = scale_pairs(scales, dt)  # [rows, 1]: groups 0 (low nibbles) and 1 (high)
    outs = [torch.zeros(rows, words.shape[1], dtype=dt) for _ in range(8)]
    for r in range(rows):
        for j in range(0, words.shape[1], 2):  # one thread's two words
            if pair:
                scale_regs = [int(pairs[r, 0]) & M32] * 2
            else:
                scale_regs = [_pack(s_lo[r:r + 1], s_lo[r:r + 1]),
                              _pack(s_hi[r:r + 1], s_hi[r:r + 1])]
            regs = run_ptx(asm, 8, [int(words[r, j]) & M32, int(words[r, j + 1]) & M32,
                                    *scale_regs])  # $0-$7 out; $8, $9 words, $10, $11 scales
            for o in range(8):  # each output register: elements j, j + 1
                lo, hi = _halves(regs[o], dt)
                outs[o][r, j], outs[o][r, j + 1] = lo[0], hi[0]
    return torch.cat((frag_cols(outs[:4]), frag_cols(outs[4:])), dim=1)


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_fragment_word_asm_dequantizes_like_the_reference(dt: torch.dtype, pair: bool) -> None:
    packed, scales, words = _tile(dt)
    assert torch.equal(_emulated(words, scales, dt, pair), dequantize_int4(packed, scales, dt))


@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_k_halves_of_the_words_are_the_halves_of_the_packed_columns(dt: torch.dtype,
                                                                    pair: bool) -> None:
    # INT4_SPLIT 2 (`_wt_accumulate`): a K step's words split by `_k_halves` (run here by
    # Triton's interpreter) and each half unpacked by the combined asm give the first and the
    # second half of the step's packed columns, low and high nibbles: the word order is kept
    # within 32-byte blocks, so whole blocks can be split off
    packed, scales, words = _tile(dt)
    rows, n = words.shape  # 16 words a row: two blocks of 8
    src = torch.zeros(4, n, dtype=torch.int32)  # rows padded to a power of two
    src[:rows] = words
    dst = [torch.zeros(4, n // 2, dtype=torch.int32) for _ in range(2)]
    triton.jit(_k_halves_kernel)[(1,)](src, dst[0], dst[1], ROWS=4, N=n)
    ref = dequantize_int4(packed, scales, dt)  # [rows, 128]: low nibbles' columns, then high
    cols = ref.shape[1] // 2
    for h, half_words in enumerate(dst):
        got = _emulated(half_words[:rows], scales, dt, pair)
        lo = slice(h * cols // 2, (h + 1) * cols // 2)
        assert torch.equal(got, torch.cat((ref[:, lo], ref[:, cols:][:, lo]), dim=1)), h
