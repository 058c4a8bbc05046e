"""Sizes of the packed int4 weight layout that code without torch needs too.

`wattmoe.moe.quant` packs and reorders the codes (with torch); placement counts the bytes of
the fused kernels' copy (`wattmoe.placement.base.ExpertShape`) and imports no torch. Both
read the sizes from here, so that they cannot drift apart.
"""

from __future__ import annotations

#: `wattmoe.moe.quant.fragment_words` reorders a packed row's bytes within blocks of this many;
#: the fused int4 kernels read a matrix's codes as fragment words only where its packed rows
#: are whole blocks.
FRAGMENT_BYTES = 32

#: the largest int4 group size: a group's fp16 scale serves at most this many weights of a row
MAX_GROUP = 128


def default_group(hidden: int, inner: int) -> int | None:
    """The group size a layer of this shape is quantized with: the largest power of two <=
    MAX_GROUP dividing both widths (groups must tile each row), or None (an odd width)."""
    g = MAX_GROUP
    while g >= 2 and (hidden % g or inner % g):
        g //= 2
    return g if g >= 2 else None


def halves_whole(hidden: int, inner: int, group: int) -> bool:
    """Whether groups of `group` tile each half of both matrices' rows (hidden / 2 and inner /
    2 columns): a packed byte holds columns c and c + K/2, and the fused int4 kernels read its
    two scales as one pair word only then (`fused_triton._uses_scale_pairs`)."""
    return (hidden // 2) % group == 0 and (inner // 2) % group == 0


def pair_group(hidden: int, inner: int) -> int | None:
    """The largest group size (a power of two, 32 to MAX_GROUP; below 32 the kernels read no
    fragment words) for which `halves_whole` holds, or None."""
    if hidden % 2 or inner % 2:
        return None
    g = MAX_GROUP
    while g >= 32 and not halves_whole(hidden, inner, g):
        g //= 2
    return g if g >= 32 else None
