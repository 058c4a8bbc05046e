"""Quantities as people read them, shared by the CLI and the error messages of the library."""

from __future__ import annotations

from itertools import combinations

#: binary byte units, largest first
_BYTE_UNITS: tuple[tuple[str, int], ...] = (
    ("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
    ("KiB", 2**10))
#: power units above the watt, largest first
_POWER_UNITS: tuple[tuple[str, float], ...] = (("GW", 1e9), ("MW", 1e6), ("kW", 1e3))


def fmt_bytes(n: float, exact: bool = False) -> str:
    """A byte count in the largest binary unit it reaches: '48.0 KiB', '336.0 MiB', '1.5 TiB',
    '888.2 PiB', '1,000 B' (a fixed unit printed small experts and devices as '0.0 MiB', large
    ones as '931,322,574.6 GiB'); `exact`: in bytes, '805,306,368 B' (`read_alike`)."""
    if not exact:
        for unit, f in _BYTE_UNITS:
            if abs(n) >= f:
                return f"{n / f:,.1f} {unit}"
    return f"{n:,.0f} B"


def read_alike(*ns: float) -> bool:
    """Whether two different byte counts of `ns` print the same with `fmt_bytes` ('768.0 MiB'
    for 805,306,368 and 805,306,367 bytes): where they are compared, print them `exact`."""
    return any(a != b and fmt_bytes(a) == fmt_bytes(b) for a, b in combinations(ns, 2))


def fmt_power(w: float, spec: str = ",.1f") -> str:
    """A power in the largest unit it reaches, its number formatted by `spec`: '45.0 W',
    '2.5 MW' (`spec` ',g': '700 W', '1 GW'; '1e+09 W' was hard to read)."""
    for unit, f in _POWER_UNITS:
        if abs(w) >= f:
            return f"{w / f:{spec}} {unit}"
    return f"{w:{spec}} W"
