"""Quantities as people read them (`wattmoe.units`)."""

from __future__ import annotations

import pytest

from wattmoe.units import fmt_bytes, fmt_power, read_alike


@pytest.mark.parametrize(("n", "text"), [
    (1000, "1,000 B"), (48 * 2**10, "48.0 KiB"), (336 * 2**20, "336.0 MiB"),
    (121.1 * 2**30, "121.1 GiB"), (1.5 * 2**40, "1.5 TiB"),
    # a new user's trial (session 16): 1e18 bytes printed as '931,322,574.6 GiB'
    (1e18, "888.2 PiB"), (3 * 2**60, "3.0 EiB"),
])
def test_bytes_in_the_largest_unit_they_reach(n: float, text: str) -> None:
    assert fmt_bytes(n) == text


def test_byte_counts_that_read_alike_are_printed_exact() -> None:
    # 'need 768.0 MiB ... hold 63 experts (768.0 MiB)' for a one-byte difference
    assert read_alike(805306368, 805306367)
    assert not read_alike(805306368, 805306368) and not read_alike(2**20, 2**30)
    assert fmt_bytes(805306367, exact=True) == "805,306,367 B"


@pytest.mark.parametrize(("w", "spec", "text"), [
    (45.0, ",.1f", "45.0 W"), (422.34, ",.1f", "422.3 W"), (700, ",g", "700 W"),
    (2500, ",.1f", "2.5 kW"), (2.5e6, ",g", "2.5 MW"),
    # a new user's trial (session 16): a power budget of 1e9 W printed as '1e+09 W'
    (1e9, ",g", "1 GW"), (1e12, ",g", "1,000 GW"),
])
def test_power_in_the_largest_unit_it_reaches(w: float, spec: str, text: str) -> None:
    assert fmt_power(w, spec) == text
