"""Sizes of the packed int4 weight layout, and the group-size rules, that code without torch
needs too.

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


def divisor_group(hidden: int, inner: int) -> int | None:
    """The largest power of two <= MAX_GROUP dividing both widths (groups must tile each row),
    or None (an odd width).

    The default group size before session 17, and so the group every int4 point of a profile
    that records no group was measured with (`wattmoe.cost_model.base.stored_shape`); today
    the default where no pair group exists (`default_group`)."""
    g = MAX_GROUP
    while g >= 2 and (hidden % g or inner % g):
        g //= 2
    return g if g >= 2 else None


def default_group(hidden: int, inner: int) -> int | None:
    """The group size a layer of this shape is quantized with by default: `pair_group` where
    one exists, else `divisor_group` (None: an odd width, no group tiles its rows).

    Why pairs first: a packed byte holds columns c and c + K/2, so the fused int4 kernels read
    a byte's two scales as one pair word, and their words in tile order, only where each half
    of a row is whole groups (`halves_whole`); the largest group dividing both widths can rule
    that out. Measured on the H200, int4 fused layer steps, old / new / new / old in one lease
    (results/h200/kernels/run115_int4_groups; benchmarks/gpu/KERNEL_NOTES.md, version 16): on
    a gpt-oss-120b-like shape (H = F = 2880: groups of 64, halves of 1440 columns not whole)
    groups of 32 spent 28% less energy per 512-token step (1875 -> 1355 uJ/token eager, 1866
    -> 1341 captured) and 3.1% less at 4096 tokens, where the 64-row programs that pairs allow
    since run 116 brought it to 421.6 uJ/token against 596.5 (run116_w64_rows,
    run117_w64_rows_check); on Qwen1.5-MoE (F = 1408: groups of 128, down halves of 704
    columns not whole) groups of 64 spent 2.2% less captured at 512 tokens (+0.4% at 4096).
    A smaller group is at least as accurate (a scale per fewer weights), and costs 2 bytes of
    scale per group: 0.5 + 2/G bytes per weight. Where both rules agree (OLMoE, Qwen3,
    DeepSeek-V3, Mixtral, Switch: 128) nothing changed; `tiny` went 64 -> 32 and Qwen1.5-MoE
    128 -> 64 (`wattmoe.moe.presets`)."""
    return pair_group(hidden, inner) or divisor_group(hidden, inner)


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
