"""The int4 fragment-word PTX of `_fused_kernel`, run by a small PTX interpreter on the CPU.

Only a GPU executes these asm strings, so here they run instruction by instruction in an
interpreter of exactly the PTX they use (`.reg`, `mov`, `prmt`, `shr`, `lop3` with any LUT,
`fma.rn.{bf16,f16}x2` computed exactly and rounded once, to nearest even, signed zeros kept).
Checked, for thousands of seeded random words and scales:

- the split asm (`_LO_*` then `_HI_*`, the high half fed the low half's byte lanes $4-$7) gives
  bit for bit the combined asm's (`_INT4_FRAG_*`) $0-$3 and $4-$7;
- the combined and the split asm compute what their comments say, against a torch reference:
  lane h of register $(2w + j) is (low nibble of byte 2j + h of word $(8 + w) - 8) * (low
  columns' scale), rounded to the dtype, and $(4 + 2w + j) the same with the high nibble and
  the high columns' scale;
- mutated asm (a swapped byte selector, a wrong shift, the wrong scale half) fails that check.

Independent of `test_int4_frag_asm.py` (its own interpreter, no Triton interpreter needed).
"""

from __future__ import annotations

import functools
import math
import random
import re

import pytest
import torch

from . import interpreter  # noqa: F401 (TRITON_INTERPRET=1 before anything imports Triton)

_M32 = 0xFFFFFFFF
# exponent and mantissa bits of each 16-bit format (and fp32, for the rounding check)
_FMT = {"bf16": (8, 7), "f16": (5, 10), "f32": (8, 23)}
_DT = {"bf16": torch.bfloat16, "f16": torch.float16}
_NAN16 = 0x7FFF  # every NaN result (a fixed pattern: NaNs are compared only split vs combined)


# ---- 16-bit float arithmetic, exact -------------------------------------------------------

def _decode(bits: int, fmt: str) -> tuple[int, int, int] | None:
    """A finite float as (sign, significand, exponent): (-1)^sign * sig * 2^exp; None for
    inf and NaN."""
    ebits, mbits = _FMT[fmt]
    sign, field = bits >> (ebits + mbits), (bits >> mbits) & ((1 << ebits) - 1)
    mant = bits & ((1 << mbits) - 1)
    bias = (1 << (ebits - 1)) - 1
    if field == (1 << ebits) - 1:
        return None
    if field == 0:  # zero or subnormal
        return sign, mant, 1 - bias - mbits
    return sign, mant | (1 << mbits), field - bias - mbits


def _to_float(bits: int, fmt: str) -> float:
    ebits, mbits = _FMT[fmt]
    d = _decode(bits, fmt)
    if d is None:
        neg = bits >> (ebits + mbits)
        return math.nan if bits & ((1 << mbits) - 1) else (-math.inf if neg else math.inf)
    return (-1) ** d[0] * math.ldexp(d[1], d[2])


def _round(sign: int, n: int, e: int, fmt: str) -> int:
    """(-1)^sign * n * 2^e (n >= 0, exact) rounded to `fmt` to nearest, ties to even."""
    ebits, mbits = _FMT[fmt]
    bias = (1 << (ebits - 1)) - 1
    sign_bit = sign << (ebits + mbits)
    if n == 0:
        return sign_bit
    exp = max(n.bit_length() - 1 + e, 1 - bias)  # the result's exponent (the least: subnormal)
    shift = exp - mbits - e  # quantum 2^(exp - mbits) = 2^(e + shift)
    if shift <= 0:
        m = n << -shift
    else:
        m, r = divmod(n, 1 << shift)
        half = 1 << (shift - 1)
        m += r > half or (r == half and m & 1)
    if m >> (mbits + 1):  # rounded up to the next binade
        m, exp = m >> 1, exp + 1
    field = exp + bias if m >> mbits else 0  # no implicit bit: subnormal (or zero)
    if field >= (1 << ebits) - 1:
        return sign_bit | (((1 << ebits) - 1) << mbits)  # overflow: infinity
    return sign_bit | (field << mbits) | (m & ((1 << mbits) - 1))


@functools.cache
def _fma16(a: int, b: int, c: int, fmt: str) -> int:
    """One lane of `fma.rn`: a * b + c, computed exactly and rounded once."""
    da, db, dc = (_decode(x, fmt) for x in (a, b, c))
    if da is None or db is None or dc is None:  # an infinity or a NaN among the operands
        r = _to_float(a, fmt) * _to_float(b, fmt) + _to_float(c, fmt)  # finite products exact
        if math.isnan(r):
            return _NAN16
        ebits, mbits = _FMT[fmt]
        return (int(r < 0) << (ebits + mbits)) | (((1 << ebits) - 1) << mbits)  # infinity
    sp, np_, ep = da[0] ^ db[0], da[1] * db[1], da[2] + db[2]
    sc, nc, ec = dc
    e = min(ep, ec)
    total = (-1) ** sp * (np_ << (ep - e)) + (-1) ** sc * (nc << (ec - e))
    if total == 0:  # x + (-x) is +0 when rounding to nearest; -0 + -0 is -0
        return _round(int(np_ == 0 and nc == 0 and sp == 1 and sc == 1), 0, 0, fmt)
    return _round(int(total < 0), abs(total), e, fmt)


@functools.cache
def _fma_x2(a: int, b: int, c: int, fmt: str) -> int:
    lo = _fma16(a & 0xFFFF, b & 0xFFFF, c & 0xFFFF, fmt)
    return lo | (_fma16(a >> 16, b >> 16, c >> 16, fmt) << 16)


# ---- bit instructions ------------------------------------------------------------------------

def _prmt(a: int, b: int, sel: int) -> int:
    """`prmt.b32` default mode: byte i of d is byte (sel nibble i) & 7 of {b, a}, or that
    byte's sign replicated when the nibble's bit 3 is set."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        byte = src[nib & 7]
        if nib & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """`lop3.b32`: bit k of d is bit (a_k << 2 | b_k << 1 | c_k) of the LUT."""
    out = 0
    for i in range(8):
        if (lut >> i) & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out & _M32


# ---- the interpreter ---------------------------------------------------------------------------

_OPS = {"mov.b32": 1, "prmt.b32": 3, "shr.b32": 2, "lop3.b32": 4, "fma.rn.bf16x2": 3,
        "fma.rn.f16x2": 3}
_IMM = re.compile(r"0x[0-9A-Fa-f]+|\d+")
_OPERAND = re.compile(r"\$(\d+)")


@functools.cache
def _parse(asm: str) -> tuple[frozenset[str], tuple[tuple[str, str, tuple[int | str, ...]], ...]]:
    """(declared registers, instructions as (opcode, destination, sources)); immediates are
    ints, registers and $N operands their names."""
    regs: set[str] = set()
    code = []
    text = asm.replace("{", ";").replace("}", ";")
    for stmt in (s.strip() for s in text.split(";")):
        if not stmt:
            continue
        op, _, rest = stmt.partition(" ")
        args = [a.strip() for a in rest.split(",")]
        if op == ".reg":
            kind, _, first = args[0].partition(" ")
            assert kind == ".b32", stmt
            regs.update((first.strip(), *args[1:]))
            continue
        assert op in _OPS and len(args) == _OPS[op] + 1, f"not in the interpreter: {stmt!r}"
        src = tuple(int(a, 0) if _IMM.fullmatch(a) else a for a in args[1:])
        assert all(isinstance(a, int) or a in regs or _OPERAND.fullmatch(a) for a in src), stmt
        code.append((op, args[0], src))
    return frozenset(regs), tuple(code)


def run_ptx(asm: str, n_out: int, inputs: list[int]) -> list[int]:
    """Runs `asm` with $0..$(n_out - 1) its outputs and `inputs` bound to $n_out on; returns
    the outputs. Fails on a read of an unwritten register or output, a write to an input or an
    undeclared register, and an output never written."""
    declared, code = _parse(asm)
    writable = declared | {f"${i}" for i in range(n_out)}
    env: dict[str, int] = {f"${n_out + i}": v & _M32 for i, v in enumerate(inputs)}
    for op, d, src in code:
        try:
            v = [s if isinstance(s, int) else env[s] for s in src]
        except KeyError as e:
            raise AssertionError(f"{e.args[0]} read before it is written") from None
        assert d in writable, f"write to {d}"
        if op == "mov.b32":
            r = v[0]
        elif op == "prmt.b32":
            r = _prmt(*v)
        elif op == "shr.b32":
            r = v[0] >> min(v[1], 32)
        elif op == "lop3.b32":
            r = _lop3(*v)
        else:
            r = _fma_x2(*v, "bf16" if "bf16" in op else "f16")
        env[d] = r & _M32
    missing = [f"${i}" for i in range(n_out) if f"${i}" not in env]
    assert not missing, f"outputs never written: {missing}"
    return [env[f"${i}"] for i in range(n_out)]


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
    while _decode(v := rng.getrandbits(16), fmt) is None:
        pass
    return v


def _words(rng: random.Random, n: int) -> list[tuple[int, int]]:
    edge = [(0, 0), (_M32, _M32), (0x88888888, 0x77777777), (0x76543210, 0xFEDCBA98)]
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
    bits = [b for b in bits if _decode(b, "f32") is not None]
    x = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
    want = (x.to(_DT[fmt]).view(torch.int16).to(torch.int64) & 0xFFFF).tolist()
    got = [_round(b >> 31, *_decode(b, "f32")[1:], fmt) for b in bits]
    assert got == want


def test_fma_signed_zeros_and_single_rounding() -> None:
    one, neg_one, zero, neg_zero = 0x3F80, 0xBF80, 0x0000, 0x8000  # bf16
    assert _fma16(zero, one, neg_zero, "bf16") == zero  # +0 + -0 = +0
    assert _fma16(zero, neg_one, neg_zero, "bf16") == neg_zero  # -0 + -0 = -0
    assert _fma16(neg_one, neg_one, neg_one, "bf16") == zero  # 1 - 1 = +0
    # bf16 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even (1). 2^-8 * 1.0703125 * 0.9375 + 1
    # = 1 + 2^-8 + 2^-16 - 2^-19 rounds up; with the product rounded first (to 2^-8) it would
    # tie and round down
    assert _fma16(0x3B80, one, one, "bf16") == one
    assert _fma16(0x3B89, 0x3F70, one, "bf16") == 0x3F81
    # fp16: 65504 + 16 ties to even (infinity); 0.5 * 2^-24 (half the least subnormal) -> +0
    assert _fma16(0x7BFF, 0x3C00, 0x4C00, "f16") == 0x7C00
    assert _fma16(0x0001, 0x3800, 0x8000, "f16") == 0x0000
    assert _fma16(0x0001, 0xB800, 0x8000, "f16") == 0x8000
    assert _fma16(0x7C00, 0x0000, 0x0000, "f16") == _NAN16  # inf * 0
    assert _fma_x2(0x3F80BF80, 0x40004000, 0x80008000, "bf16") == 0x4000C000  # lanes apart


def test_bit_instructions() -> None:
    rng = random.Random("bits")
    for _ in range(200):
        a, b, c = (rng.getrandbits(32) for _ in range(3))
        assert _lop3(a, b, c, 0xF0) == a and _lop3(a, b, c, 0xCC) == b
        assert _lop3(a, b, c, 0xAA) == c and _lop3(a, b, c, 0xEA) == (a & b) | c
        assert _lop3(a, b, c, 0x96) == a ^ b ^ c
        assert _prmt(a, b, 0x3210) == a and _prmt(a, b, 0x7654) == b
    assert _prmt(0x44332211, 0, 0x4140) == 0x00220011
    assert _prmt(0x44332211, 0, 0x4342) == 0x00440033
    assert _prmt(0xBEEF1234, 0, 0x1010) == 0x12341234
    assert _prmt(0xBEEF1234, 0, 0x3232) == 0xBEEFBEEF
    assert _prmt(0x00008000, 0, 0x8888) == 0  # byte 0 (0x00) sign-replicated
    assert _prmt(0x00000080, 0, 0x0008) == 0x808080FF  # byte 0 (0x80) sign, 3x byte 0
    with pytest.raises(AssertionError, match="read before"):
        run_ptx("{\n.reg .b32 t0;\nmov.b32 $0, t0;\n}", 1, [])
    with pytest.raises(AssertionError, match="never written"):
        run_ptx("{\nmov.b32 $0, $2;\n}", 2, [7])
    with pytest.raises(AssertionError, match="write to"):
        run_ptx("{\nmov.b32 $1, 0;\n}", 1, [7])
    with pytest.raises(AssertionError, match="not in the interpreter"):
        run_ptx("{\nadd.u32 $0, $1, 1;\n}", 1, [7])
