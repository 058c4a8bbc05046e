"""Type predicates for checking user input: Python numbers, with bools refused (True is an
int to Python, but never a count, size or power a user meant)."""

from __future__ import annotations

import math

from wattmoe.errors import ConfigError


def is_int(value: object) -> bool:
    """A Python int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A Python int or float, not a bool (NaN and inf included)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite_real(value: object) -> bool:
    """A Python int or float, not a bool, neither NaN nor infinite."""
    return is_real(value) and math.isfinite(value)  # type: ignore[arg-type]


def is_power_of_two(value: object) -> bool:
    """A Python int (not a bool) that is 1, 2, 4, ..."""
    return is_int(value) and value >= 1 and not value & (value - 1)  # type: ignore[operator]


def check_positive_int(name: str, value: object) -> None:
    """Raises ConfigError naming `name` unless value is an int > 0 (not a bool)."""
    if not is_int(value) or value <= 0:  # type: ignore[operator]
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
