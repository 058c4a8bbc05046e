"""argparse types that check a number where it is parsed, so that a bad value is one error
naming the flag ("argument --interval: ...") rather than the Python field it fills
(`interval_s`, in seconds where the flag is in milliseconds, ...)."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> float:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{'an integer' if kind is int else 'a number'} expected, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"a finite number expected, got {text!r}")
    return v


def positive_float(text: str) -> float:
    """A finite number > 0."""
    v = _number(text, float)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    v = _number(text, float)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def positive_int(text: str) -> int:
    """An integer >= 1."""
    v = int(_number(text, int))
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return v


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    v = int(_number(text, int))
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return v
