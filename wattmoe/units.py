"""Quantities as people read them, shared by the CLI and the error messages of the library."""

from __future__ import annotations


def fmt_bytes(n: float) -> str:
    """A byte count in the largest binary unit it reaches: '48.0 KiB', '336.0 MiB', '1,000 B'
    (a fixed unit printed small experts and devices as '0.0 MiB')."""
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:,.1f} {unit}"
    return f"{n:,.0f} B"
