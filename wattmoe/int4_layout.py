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


#: how int4 codes are stored (`wattmoe.moe.layer.SimpleMoELayer.set_int4_layout`): 'rows', the
#: half-split codes row-major, beside which the fused kernels keep a copy in their order;
#: 'tiles', in the kernels' tile order, which they read in place
INT4_LAYOUTS: tuple[str, ...] = ("rows", "tiles")

#: rows per tile of the fused kernels' tile-order int4 words where those rows divide the
#: matrix (`wattmoe.moe.fused_triton._tile_rows_setting`'s default); else `TILE_ROWS_SMALL`
DEFAULT_TILE_ROWS = 128
TILE_ROWS_SMALL = 64

#: packed bytes per K step of the fused int4 kernels' tile-order entries (`...fpx`): every
#: such entry of the H200 table and heuristic but one down launch (OLMoE's 512-token `k32`)
K_STEP_BYTES = 64


def tile_layout(rows: int, up_rows: int, k: int, group: int,
                tile_rows: int = DEFAULT_TILE_ROWS) -> tuple[int, int] | None:
    """How the fused int4 kernels' tile-order entries read one stacked matrix of `rows` rows
    (per expert; gate/up start at `up_rows`, 0 for one matrix) and `k` input columns in groups
    of `group`: as (rows per tile, 32-bit words per K step), or None where they read no tile
    order (`fused_triton._launch`: fragment words need K steps of whole 32-byte blocks, and
    tile order scale pairs, each half of a row whole groups).

    The kernels' K step is the largest power of two up to `K_STEP_BYTES` packed bytes that
    divides both the group and k / 2 (`fused_triton._fit`); tiles of `tile_rows` rows where
    they divide the rows and the up rows' offset, else of `TILE_ROWS_SMALL` (the 64-row
    programs that the heuristic picks there). An int4 layer stored in this layout
    (`wattmoe.moe.quant.Int4Linear.set_layout`) is read by those entries in place, with no
    copy (`wattmoe.placement.base.ExpertShape.tiles_copy_bytes`)."""
    half = k // 2
    if k % 2 or group < FRAGMENT_BYTES or half % FRAGMENT_BYTES or half % group:
        return None
    step = K_STEP_BYTES
    while step >= FRAGMENT_BYTES and (half % step or group % step):
        step //= 2
    if step < FRAGMENT_BYTES:
        return None
    for tr in dict.fromkeys((tile_rows, TILE_ROWS_SMALL)):
        if rows % tr == 0 and up_rows % tr == 0:
            return tr, step // 4
    return None


def fused_layouts(hidden: int, inner: int, form: str, group: int,
                  tile_rows: int = DEFAULT_TILE_ROWS
                  ) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """`tile_layout` of an expert's gate/up rows (stacked [2F | F, H], the up rows at F for
    'swiglu') and of its down rows ([H, F])."""
    gated = form == "swiglu"
    return (tile_layout(2 * inner if gated else inner, inner if gated else 0, hidden, group,
                        tile_rows),
            tile_layout(hidden, 0, inner, group, tile_rows))
