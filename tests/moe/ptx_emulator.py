"""A PTX interpreter for the int4 inline asm of `_fused_kernel`, which only a GPU executes.

It runs exactly the PTX those asm strings use (`.reg`, `mov`, `prmt`, `shr`, `lop3` with any
LUT, `fma.rn.{bf16,f16}x2` computed exactly and rounded once, to nearest even, signed zeros
kept) instruction by instruction on Python integers, and fails on anything else: an unknown
instruction, a read of an unwritten register, a write to an input. Shared by
`test_int4_asm.py` (which also tests the interpreter's own instructions) and
`test_int4_frag_asm.py`. Needs neither torch nor Triton.
"""

from __future__ import annotations

import functools
import math
import re

M32 = 0xFFFFFFFF
# exponent and mantissa bits of each 16-bit format (and fp32, for the rounding check)
FMT = {"bf16": (8, 7), "f16": (5, 10), "f32": (8, 23)}
NAN16 = 0x7FFF  # every NaN result (a fixed pattern: NaNs are compared only split vs combined)


# ---- 16-bit float arithmetic, exact -------------------------------------------------------

def decode(bits: int, fmt: str) -> tuple[int, int, int] | None:
    """A finite float as (sign, significand, exponent): (-1)^sign * sig * 2^exp; None for
    inf and NaN."""
    ebits, mbits = FMT[fmt]
    sign, field = bits >> (ebits + mbits), (bits >> mbits) & ((1 << ebits) - 1)
    mant = bits & ((1 << mbits) - 1)
    bias = (1 << (ebits - 1)) - 1
    if field == (1 << ebits) - 1:
        return None
    if field == 0:  # zero or subnormal
        return sign, mant, 1 - bias - mbits
    return sign, mant | (1 << mbits), field - bias - mbits


def to_float(bits: int, fmt: str) -> float:
    ebits, mbits = FMT[fmt]
    d = decode(bits, fmt)
    if d is None:
        neg = bits >> (ebits + mbits)
        return math.nan if bits & ((1 << mbits) - 1) else (-math.inf if neg else math.inf)
    return (-1) ** d[0] * math.ldexp(d[1], d[2])


def round_to(sign: int, n: int, e: int, fmt: str) -> int:
    """(-1)^sign * n * 2^e (n >= 0, exact) rounded to `fmt` to nearest, ties to even."""
    ebits, mbits = FMT[fmt]
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
def fma16(a: int, b: int, c: int, fmt: str) -> int:
    """One lane of `fma.rn`: a * b + c, computed exactly and rounded once."""
    da, db, dc = (decode(x, fmt) for x in (a, b, c))
    if da is None or db is None or dc is None:  # an infinity or a NaN among the operands
        r = to_float(a, fmt) * to_float(b, fmt) + to_float(c, fmt)  # finite products exact
        if math.isnan(r):
            return NAN16
        ebits, mbits = FMT[fmt]
        return (int(r < 0) << (ebits + mbits)) | (((1 << ebits) - 1) << mbits)  # infinity
    sp, np_, ep = da[0] ^ db[0], da[1] * db[1], da[2] + db[2]
    sc, nc, ec = dc
    e = min(ep, ec)
    total = (-1) ** sp * (np_ << (ep - e)) + (-1) ** sc * (nc << (ec - e))
    if total == 0:  # x + (-x) is +0 when rounding to nearest; -0 + -0 is -0
        return round_to(int(np_ == 0 and nc == 0 and sp == 1 and sc == 1), 0, 0, fmt)
    return round_to(int(total < 0), abs(total), e, fmt)


@functools.cache
def fma_x2(a: int, b: int, c: int, fmt: str) -> int:
    lo = fma16(a & 0xFFFF, b & 0xFFFF, c & 0xFFFF, fmt)
    return lo | (fma16(a >> 16, b >> 16, c >> 16, fmt) << 16)


# ---- bit instructions ------------------------------------------------------------------------

def prmt(a: int, b: int, sel: int) -> int:
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


def lop3(a: int, b: int, c: int, lut: int) -> int:
    """`lop3.b32`: bit k of d is bit (a_k << 2 | b_k << 1 | c_k) of the LUT."""
    out = 0
    for i in range(8):
        if (lut >> i) & 1:
            out |= (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
    return out & M32


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
    env: dict[str, int] = {f"${n_out + i}": v & M32 for i, v in enumerate(inputs)}
    for op, d, src in code:
        try:
            v = [s if isinstance(s, int) else env[s] for s in src]
        except KeyError as e:
            raise AssertionError(f"{e.args[0]} read before it is written") from None
        assert d in writable, f"write to {d}"
        if op == "mov.b32":
            r = v[0]
        elif op == "prmt.b32":
            r = prmt(*v)
        elif op == "shr.b32":
            r = v[0] >> min(v[1], 32)
        elif op == "lop3.b32":
            r = lop3(*v)
        else:
            r = fma_x2(*v, "bf16" if "bf16" in op else "f16")
        env[d] = r & M32
    missing = [f"${i}" for i in range(n_out) if f"${i}" not in env]
    assert not missing, f"outputs never written: {missing}"
    return [env[f"${i}"] for i in range(n_out)]
