"""The int4 fragment-word PTX of `_fused_kernel`, run by a small PTX interpreter on the CPU.

Only a GPU executes these asm strings, so here they run instruction by instruction in the
interpreter of `ptx_emulator.py`, of exactly the PTX they use (`.reg`, `mov`, `prmt`, `shr`,
`lop3` with any LUT, `fma.rn.{bf16,f16}x2` computed exactly and rounded once, to nearest even,
signed zeros kept). Checked, for thousands of seeded random words and scales:

- the split asm (`_LO_*` then `_HI_*`, the high half fed the low half's byte lanes $4-$7) gives
  bit for bit the combined asm's (`_INT4_FRAG_*`) $0-$3 and $4-$7;
- the combined and the split asm compute what their comments say, against a torch reference:
  lane h of register $(2w + j) is (low nibble of byte 2j + h of word $(8 + w) - 8) * (low
  columns' scale), rounded to the dtype, and $(4 + 2w + j) the same with the high nibble and
  the high columns' scale;
- mutated asm (a swapped byte selector, a wrong shift, the wrong scale half) fails that check;
- the interpreter's own instructions: rounding against torch's, fma's single rounding and
  signed zeros, the bit instructions, and its refusals.

`test_int4_frag_asm.py` runs the same interpreter on whole tiles of `quant.fragment_words`
against `dequantize_int4`.
"""

from __future__ import annotations

import random

import pytest
import torch

from . import interpreter  # noqa: F401 (TRITON_INTERPRET=1 before anything imports Triton)
from .ptx_emulator import M32, NAN16, decode, fma16, fma_x2, lop3, prmt, round_to, run_ptx

_DT = {"bf16": torch.bfloat16, "f16": torch.float16}


# ---- the asm under test ------------------------------------------------------------------------

def _asms(fmt: str, pair: bool) -> tuple[str, str, str]:
    """(combined, low half, high half) asm text."""
    from wattmoe.moe import _fused_kernel as fk

    s = "BF16" if fmt == "bf16" else "FP16"
    p = "_PAIR" if pair else ""
    return tuple(getattr(fk, f"{name}{p}_{s}").value for name in ("_INT4_FRAG", "_LO", "_HI"))


def run_combined(asm: str, w: tuple[int, int], s_lo: int, s_hi: int) -> list[int]:
    """$0-$7 of `_int4_frag_asm`: words $8, $9, scales $10, $11 (pair: both the pair word)."""
    return run_ptx(asm, 8, [w[0], w[1], s_lo, s_hi])


def run_split(lo: str, hi: str, w: tuple[int, int], s_lo: int, s_hi: int,
              pair: bool) -> list[int]:
    """The low half's $0-$3, then the high half's $0-$3 from the low half's lanes $4-$7."""
    low = run_ptx(lo, 8, [w[0], w[1], s_lo] + ([s_lo] if pair else []))
    high = run_ptx(hi, 4, low[4:] + [s_hi] + ([s_hi] if pair else []))
    return low[:4] + high


def _finite16(rng: random.Random, fmt: str) -> int:
    while decode(v := rng.getrandbits(16), fmt) is None:
        pass
    return v


def _words(rng: random.Random, n: int) -> list[tuple[int, int]]:
    edge = [(0, 0), (M32, M32), (0x88888888, 0x77777777), (0x76543210, 0xFEDCBA98)]
    return edge + [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(n - len(edge))]


CASES = 1000  # per (dtype, pair): 8000 asm runs against each other, 4000 against the reference

FMTS = [pytest.param("bf16", id="bf16"), pytest.param("f16", id="fp16")]
PAIRS = [pytest.param(False, id="scales"), pytest.param(True, id="pairs")]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("fmt", FMTS)
def test_split_halves_match_the_combined_asm(fmt: str, pair: bool) -> None:
    # any 32-bit scale registers (lanes apart, inf, NaN, subnormals): the two must agree bit
    # for bit whatever the registers hold
    combined, lo, hi = _asms(fmt, pair)
    rng = random.Random(f"split-{fmt}-{pair}")
    for w in _words(rng, CASES):
        if pair:
            s_lo = s_hi = rng.getrandbits(32)
        else:
            s_lo, s_hi = rng.getrandbits(32), rng.getrandbits(32)
        want = run_combined(combined, w, s_lo, s_hi)
        got = run_split(lo, hi, w, s_lo, s_hi, pair)
        assert got == want, (
            f"words {w[0]:#010x} {w[1]:#010x}, scales {s_lo:#010x} {s_hi:#010x}: split "
            f"{[f'{r:#010x}' for r in got]} != combined {[f'{r:#010x}' for r in want]}")


def reference(words: list[tuple[int, int]], s_lo: list[int], s_hi: list[int],
              fmt: str) -> list[list[int]]:
    """The eight registers in torch: lane h of $(2w + j) = (low nibble of byte 2j + h of word
    w - 8) * s_lo, of $(4 + 2w + j) the high nibble's times s_hi, each rounded to the dtype."""
    dt = _DT[fmt]
    wt = torch.tensor(words, dtype=torch.int64)  # [N, word]
    byte = torch.stack([(wt >> (8 * i)) & 0xFF for i in range(4)], -1)  # [N, word, byte]
    nib = torch.stack((byte & 0xF, byte >> 4), 1)  # [N, low/high nibble, word, byte]
    q = nib.reshape(len(words), 8, 2) - 8  # [N, register, lane]: (nibble, word, j, lane h)
    scales = torch.tensor([s_lo, s_hi], dtype=torch.int32).to(torch.int16).view(dt)
    s = scales.T.float().repeat_interleave(4, 1)[..., None]  # [N, register (nibble), 1]
    # products of a 16-bit float and |q| <= 8 are exact in fp32: one rounding, in .to(dt)
    out = (q.float() * s).to(dt).view(torch.int16).to(torch.int64) & 0xFFFF
    return (out[..., 0] | (out[..., 1] << 16)).tolist()


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("fmt", FMTS)
def test_asm_dequantizes_like_the_reference(fmt: str, pair: bool) -> None:
    # the interfaces of the comments: pair, $10 = $11 the pair word (low columns' scale in
    # bits 0-15); otherwise $10, $11 each scale in both lanes. Finite scales of every kind:
    # signs, zeros, subnormals, products that overflow to infinity
    combined, lo, hi = _asms(fmt, pair)
    rng = random.Random(f"ref-{fmt}-{pair}")
    words = _words(rng, CASES)
    s_lo = [_finite16(rng, fmt) for _ in words]
    s_hi = [_finite16(rng, fmt) for _ in words]
    want = reference(words, s_lo, s_hi, fmt)
    assert len({x >> 16 == x & 0xFFFF for r in want for x in r}) == 2  # both kinds of lanes
    for w, a, b, ref in zip(words, s_lo, s_hi, want):
        regs = (a | b << 16,) * 2 if pair else (a * 0x10001, b * 0x10001)
        for got in (run_combined(combined, w, *regs), run_split(lo, hi, w, *regs, pair)):
            assert got == ref, (
                f"words {w[0]:#010x} {w[1]:#010x}, scales {a:#06x} {b:#06x}: asm "
                f"{[f'{r:#010x}' for r in got]} != reference {[f'{r:#010x}' for r in ref]}")


@pytest.mark.parametrize(("pair", "old", "new"), [
    (False, "0x4140", "0x4041"),  # bytes 0 and 1 swapped between the lanes
    (False, "0x4342", "0x4140"),  # bytes 0,1 unpacked in place of bytes 2,3
    (False, "shr.b32 t3, t1, 4", "shr.b32 t3, t1, 3"),  # one high nibble misaligned
    (True, "0x1010", "0x3232"),  # the high columns' scale for the low columns
    (True, "0x3232", "0x1032"),  # the two scales mixed in the high columns' lanes
    (False, "shi, nz", "slo, nz"),  # the low columns' scale for the high columns
])
def test_the_reference_check_catches_mutated_asm(pair: bool, old: str, new: str) -> None:
    combined = _asms("bf16", pair)[0]
    assert old in combined
    bad = combined.replace(old, new, 1)
    rng = random.Random("mutants")
    words = _words(rng, 64)
    s_lo = [_finite16(rng, "bf16") for _ in words]
    s_hi = [_finite16(rng, "bf16") for _ in words]
    want = reference(words, s_lo, s_hi, "bf16")
    regs = [((a | b << 16,) * 2 if pair else (a * 0x10001, b * 0x10001))
            for a, b in zip(s_lo, s_hi)]
    assert all(run_combined(combined, w, *r) == ref for w, r, ref in zip(words, regs, want))
    assert any(run_combined(bad, w, *r) != ref for w, r, ref in zip(words, regs, want))


# ---- the interpreter's own instructions ------------------------------------------------------

@pytest.mark.parametrize("fmt", FMTS)
def test_rounding_matches_torch(fmt: str) -> None:
    # fp32 -> the 16-bit dtype (torch rounds to nearest even, once): every binade, subnormals,
    # ties, overflow, both zeros
    rng = random.Random(f"round-{fmt}")
    bits = [rng.getrandbits(32) for _ in range(4000)]
    bits += [0x00000000, 0x80000000, 0x477FEFFF, 0x477FF000, 0x7F7FFFFF, 0x3F808000,
             0x3F818000, 0x33000000, 0x33000001, 0xB3800000, 0x00400000]
    bits = [b for b in bits if decode(b, "f32") is not None]
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    want = (x.to(_DT[fmt]).view(torch.int16).to(torch.int64) & 0xFFFF).tolist()
    got = [round_to(b >> 31, *decode(b, "f32")[1:], fmt) for b in bits]
    assert got == want


def test_fma_signed_zeros_and_single_rounding() -> None:
    one, neg_one, zero, neg_zero = 0x3F80, 0xBF80, 0x0000, 0x8000  # bf16
    assert fma16(zero, one, neg_zero, "bf16") == zero  # +0 + -0 = +0
    assert fma16(zero, neg_one, neg_zero, "bf16") == neg_zero  # -0 + -0 = -0
    assert fma16(neg_one, neg_one, neg_one, "bf16") == zero  # 1 - 1 = +0
    # bf16 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even (1). 2^-8 * 1.0703125 * 0.9375 + 1
    # = 1 + 2^-8 + 2^-16 - 2^-19 rounds up; with the product rounded first (to 2^-8) it would
    # tie and round down
    assert fma16(0x3B80, one, one, "bf16") == one
    assert fma16(0x3B89, 0x3F70, one, "bf16") == 0x3F81
    # fp16: 65504 + 16 ties to even (infinity); 0.5 * 2^-24 (half the least subnormal) -> +0
    assert fma16(0x7BFF, 0x3C00, 0x4C00, "f16") == 0x7C00
    assert fma16(0x0001, 0x3800, 0x8000, "f16") == 0x0000
    assert fma16(0x0001, 0xB800, 0x8000, "f16") == 0x8000
    assert fma16(0x7C00, 0x0000, 0x0000, "f16") == NAN16  # inf * 0
    assert fma_x2(0x3F80BF80, 0x40004000, 0x80008000, "bf16") == 0x4000C000  # lanes apart


def test_bit_instructions() -> None:
    rng = random.Random("bits")
    for _ in range(200):
        a, b, c = (rng.getrandbits(32) for _ in range(3))
        assert lop3(a, b, c, 0xF0) == a and lop3(a, b, c, 0xCC) == b
        assert lop3(a, b, c, 0xAA) == c and lop3(a, b, c, 0xEA) == (a & b) | c
        assert lop3(a, b, c, 0x96) == a ^ b ^ c
        assert prmt(a, b, 0x3210) == a and prmt(a, b, 0x7654) == b
    assert prmt(0x44332211, 0, 0x4140) == 0x00220011
    assert prmt(0x44332211, 0, 0x4342) == 0x00440033
    assert prmt(0xBEEF1234, 0, 0x1010) == 0x12341234
    assert prmt(0xBEEF1234, 0, 0x3232) == 0xBEEFBEEF
    assert prmt(0x00008000, 0, 0x8888) == 0  # byte 0 (0x00) sign-replicated
    assert prmt(0x00000080, 0, 0x0008) == 0x808080FF  # byte 0 (0x80) sign, 3x byte 0
    with pytest.raises(AssertionError, match="read before"):
        run_ptx("{\n.reg .b32 t0;\nmov.b32 $0, t0;\n}", 1, [])
    with pytest.raises(AssertionError, match="never written"):
        run_ptx("{\nmov.b32 $0, $2;\n}", 2, [7])
    with pytest.raises(AssertionError, match="write to"):
        run_ptx("{\nmov.b32 $1, 0;\n}", 1, [7])
    with pytest.raises(AssertionError, match="not in the interpreter"):
        run_ptx("{\nadd.u32 $0, $1, 1;\n}", 1, [7])
