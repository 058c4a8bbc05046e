"""The shape key of an MoE model that is not a preset: 'h2880_f2880_swiglu_e32_k4'.

One parser for `wattmoe.moe.resolve_shape` (commands' shape options) and
`wattmoe.cost_model.OpShape.from_key` (profiles), and one test of whether a name is meant as a
key (`is_shape_key`); torch-free, so that the cost model and placement can read keys without
importing torch.
"""

from __future__ import annotations

import re
from typing import TypeGuard

#: The form of a shape key; '_e<E>_k<k>' may be left out (1 and 1).
SHAPE_KEY_FORM = "h<H>_f<F>_<swiglu|relu>_e<E>_k<k>"
_SHAPE_KEY = re.compile(r"h(\d+)_f(\d+)_(swiglu|relu)(?:_e(\d+))?(?:_k(\d+))?")


def is_shape_key(spec: object) -> TypeGuard[str]:
    """Whether `spec` is meant as a shape key ('h...' with an '_f' part), not a preset name
    (`resolve_shape` then parses it, and one not exactly of `SHAPE_KEY_FORM` is an error)."""
    return isinstance(spec, str) and spec.startswith("h") and "_f" in spec


def parse_shape_key(key: object) -> tuple[int, int, str, int, int] | None:
    """(hidden, inner, form, experts, top-k) of a key exactly of `SHAPE_KEY_FORM`, else None
    (the caller raises its own error; the values are not checked here)."""
    m = _SHAPE_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        return None
    return int(m[1]), int(m[2]), m[3], int(m[4] or 1), int(m[5] or 1)
