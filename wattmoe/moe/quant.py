"""Real 4-bit weight-only quantization of experts.

Weights are quantized per group of `group_size` input columns with a symmetric scale
(q = round(w / s) in [-8, 7], s = max|w| / 7 per group), stored as unsigned nibbles (q + 8)
packed two per byte: of an [out, in] weight, column j in the low nibble and column j + in/2 in
the high nibble of byte j. This "half-split" packing makes unpacking elementwise (a mask and a
shift give two tiles of whole columns), which lets the fused kernel dequantize a weight tile in
registers and feed it to the tensor cores without reshuffling it. The forward pass unpacks and
dequantizes on every call, so that work is real and shows up in a profiler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from wattmoe.checks import is_int
from wattmoe.errors import ConfigError, ShapeError
from wattmoe.int4_layout import (
    DEFAULT_TILE_ROWS,
    FRAGMENT_BYTES,
    default_group,
    fused_layouts,
    pair_group,
)
from wattmoe.moe.base import resolve_dtype
from wattmoe.moe.expert import Expert, FeedForward

QMIN, QMAX = -8, 7


def quantize_int4(
    weight: torch.Tensor, group_size: int = 128,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes a [out, in] weight to packed int4.

    Args:
        weight: [out, in].
        group_size: input columns per scale.
        out: (packed, scales) tensors of the result's shapes and dtypes to write into (the
            views of a stack's tensors, `stacked.quantize_experts`); returned.

    Returns:
        packed: uint8 [out, in // 2], two 4-bit codes per byte.
        scales: float16 [out, in // group_size].

    Raises:
        ShapeError: the weight is not 2-D or `in` is not a multiple of group_size (and of 2),
            or `out` does not fit.
    """
    if weight.dim() != 2:
        raise ShapeError(f"int4 quantization needs a 2-D weight, got {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    if not is_int(group_size) or group_size <= 0 or group_size % 2:
        raise ConfigError(f"group_size must be a positive even number, got {group_size!r}")
    if in_f % group_size:
        raise ShapeError(
            f"input width {in_f} is not a multiple of the int4 group size {group_size}"
        )
    w = weight.detach().float().reshape(out_f, in_f // group_size, group_size)
    scales = (w.abs().amax(dim=-1, keepdim=True) / QMAX).clamp_min(1e-8)
    # Round through fp16 so that dequantization with the stored scale is what was quantized.
    half_scales = scales.half()
    bad = ~torch.isfinite(half_scales.squeeze(-1))
    if bad.any():  # an inf/NaN scale would dequantize the whole group to NaN
        row, group = (int(i) for i in bad.nonzero()[0])
        amax = w[row, group].abs().amax().item()
        raise ConfigError(
            f"cannot quantize to int4: row {row}, group {group} (columns "
            f"{group * group_size}..{(group + 1) * group_size - 1}) has max |w| = {amax:g}; "
            f"its scale max|w|/{QMAX} must be a finite fp16 number (max |w| <= "
            f"{QMAX * torch.finfo(torch.float16).max:g})"
        )
    scales = half_scales.float()
    q = torch.clamp(torch.round(w / scales), QMIN, QMAX).to(torch.int16) - QMIN  # 0..15
    q = q.reshape(out_f, in_f).to(torch.uint8)
    half = in_f // 2
    if out is None:
        packed = q[:, :half] | (q[:, half:] << 4)
        return packed.contiguous(), scales.squeeze(-1).half().contiguous()
    packed, scales_out = out
    want = ((out_f, half), (out_f, in_f // group_size))
    if (packed.dtype, scales_out.dtype) != (torch.uint8, torch.float16) or (
            tuple(packed.shape), tuple(scales_out.shape)) != want:
        raise ShapeError(f"int4 out= must be uint8 {want[0]} and float16 {want[1]}, got "
                         f"{packed.dtype} {tuple(packed.shape)} and {scales_out.dtype} "
                         f"{tuple(scales_out.shape)}")
    torch.bitwise_or(q[:, :half], q[:, half:] << 4, out=packed)
    scales_out.copy_(scales.squeeze(-1))
    return packed, scales_out


def int4_group_size(hidden: int, inner: int) -> int:
    """The default int4 group size of experts of this shape (`SimpleMoELayer.quantize()`, the
    profiler's scenarios, the cost model and placement): `pair_group_size` where it exists, so
    that the fused int4 kernels can read scale pairs in tile order, else the largest power of
    two <= 128 dividing both widths (`wattmoe.int4_layout.default_group`, which says why:
    on the H200 up to 28% less energy per int4 step).

    Raises:
        ConfigError: no even group size divides both widths.
    """
    g = default_group(hidden, inner)
    if g is None:
        raise ConfigError(f"no int4 group size divides both widths {hidden} and {inner}")
    return g


def pair_group_size(hidden: int, inner: int) -> int | None:
    """The largest int4 group size (a power of two, 32 to 128) whose groups tile each half of
    both matrices' rows (hidden / 2 and inner / 2 columns), or None. The fused int4 kernels
    read a byte's two scales as one pair word, and their words in tile order, only there
    (`fused_triton._uses_scale_pairs`: a byte holds columns c and c + K/2). It is the default
    group (`int4_group_size`) wherever it exists; a group given to `SimpleMoELayer.quantize`
    may still rule pairs out (H = F = 2880 with 64: halves of 1440 columns are not whole
    groups; on the H200 that shape with groups of 32 spent 28% less energy per 512-token int4
    step than with 64, 3% at 4096 tokens; results/h200/kernels/run115_int4_groups)."""
    return pair_group(hidden, inner)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unpacks uint8 [out, in // 2] into signed int8 codes [out, in] in [-8, 7]."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    return torch.cat((low, high), dim=-1) + QMIN


def dequantize_int4(
    packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Reconstructs the [out, in] weight from packed codes and per-group scales."""
    q = unpack_int4(packed)
    out_f, in_f = q.shape
    groups = scales.shape[1]
    w = q.reshape(out_f, groups, in_f // groups).to(dtype)
    del q  # (one temporary fewer at the peak: large stacks, `stacked._dequant_stack`)
    return w.mul_(scales.to(dtype).unsqueeze(-1)).reshape(out_f, in_f)


def fragment_words(packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Half-split packed codes [..., in // 2] as 32-bit words in the fused kernel's register
    order: int32 [..., in // 8], bytes reordered within each 32-byte block of a row.

    Block byte j = 16w + 8h + 2q + i (w, h, i in {0, 1}, q in 0..3) moves to 8q + 4w + 2h + i,
    so word 2q + w of a block holds the columns {2q, 2q+1, 8+2q, 9+2q} (w = 0) or
    {16+2q, ..., 25+2q} (w = 1): the ones that thread q of a quad holds in a Hopper wgmma's
    register operand (`_fused_kernel._dequant_int4_frag`), so the kernel loads each thread's
    bytes as whole words and writes its operand registers without moving bytes around.
    A copy: the half-split tensor stays the format of record (`dequantize_int4`). With `out`
    (int32, the result's shape) the words are written there, with no temporary copy.

    Raises:
        ShapeError: a row is not a whole number of 32-byte blocks, packed is not uint8, or out
            does not fit.
    """
    if packed.dtype != torch.uint8 or packed.dim() == 0 or packed.shape[-1] % FRAGMENT_BYTES:
        raise ShapeError(f"fragment words need uint8 rows of a multiple of {FRAGMENT_BYTES} "
                         f"bytes, got {packed.dtype} {tuple(packed.shape)}")
    lead = packed.shape[:-1]
    blocks = packed.reshape(*lead, packed.shape[-1] // FRAGMENT_BYTES, 2, 2, 4, 2)  # w h q i
    nd = blocks.dim()
    ordered = blocks.permute((*range(nd - 4), nd - 2, nd - 4, nd - 3, nd - 1))  # -> q w h i
    if out is None:
        return ordered.contiguous().reshape(*lead, -1).view(torch.int32)
    want = (*lead, packed.shape[-1] // 4)
    if out.dtype != torch.int32 or tuple(out.shape) != want or not out.is_contiguous():
        raise ShapeError(f"fragment words out= must be contiguous int32 {want}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    out.view(torch.uint8).view(ordered.shape).copy_(ordered)
    return out


def scale_pairs(scales: torch.Tensor, dtype: torch.dtype,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Group scales [..., G] (G even) as 32-bit pair words int32 [..., G // 2]: word g holds
    scale g in `dtype` (bf16 or fp16) in its low 16 bits and scale g + G/2 in its high 16
    bits, the two scales of one packed byte's nibbles (columns j and j + in/2: the half-split
    packing, with whole groups in each half). The fused int4 kernel loads one word per row and
    K step (`_fused_kernel._int4_scales`, SPAIR); rounded to `dtype` exactly as
    `dequantize_int4` rounds them. A copy; with `out` (int32, the result's shape) written there.

    Raises:
        ShapeError: G is odd, dtype is not 16-bit, or out does not fit.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ShapeError(f"scale pairs are 16-bit (bf16, fp16), got {dtype}")
    if scales.dim() == 0 or scales.shape[-1] % 2:
        raise ShapeError(f"scale pairs need an even number of groups per row, got "
                         f"{tuple(scales.shape)}")
    g = scales.shape[-1] // 2
    halves = torch.stack((scales[..., :g].to(dtype), scales[..., g:].to(dtype)), dim=-1)
    words = halves.view(torch.int16).view(torch.int32).squeeze(-1)  # little-endian: lo first
    if out is None:
        return words.contiguous()
    if out.dtype != torch.int32 or out.shape != words.shape or not out.is_contiguous():
        raise ShapeError(f"scale pairs out= must be contiguous int32 {tuple(words.shape)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    out.copy_(words)
    return out


def tile_rows(words: torch.Tensor, rows: int, cols: int,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Words [..., R, C] reordered so that each [rows, cols] tile is contiguous: the tiles of a
    block of `rows` rows follow one another along C, and the row blocks follow one another.
    Element (r, c) moves to (r // rows) * rows * C + (c // cols) * rows * cols
    + (r % rows) * cols + c % cols of its [R, C] matrix; the result keeps the shape [..., R, C].

    The fused int4 kernel with `int4_tiles` reads its K steps this way: one contiguous block of
    rows x cols words per step (4 KB for 64 rows of 64 packed bytes), where row-major words
    give it `rows` pieces of cols words, C words apart; and the scale pair words of a row block
    (cols = 1) as one contiguous run of `rows` words per group, where row-major pairs give it a
    4-byte piece per row. A copy; with `out` (the result's shape and dtype) written there.

    Raises:
        ShapeError: R is not a multiple of rows, C not of cols, or out does not fit.
    """
    if rows < 1 or cols < 1:
        raise ShapeError(f"tile sizes must be >= 1, got {rows} x {cols}")
    if words.dim() < 2 or words.shape[-2] % rows or words.shape[-1] % cols:
        raise ShapeError(f"tiles of {rows} x {cols} need [..., R, C] with R a multiple of "
                         f"{rows} and C of {cols}, got {tuple(words.shape)}")
    *lead, r, c = words.shape
    tiled = words.reshape(*lead, r // rows, rows, c // cols, cols).transpose(-3, -2)
    if out is None:
        return tiled.contiguous().reshape(words.shape)
    if out.dtype != words.dtype or out.shape != words.shape or not out.is_contiguous():
        raise ShapeError(f"tiled words out= must be contiguous {words.dtype} "
                         f"{tuple(words.shape)}, got {out.dtype} {tuple(out.shape)}")
    out.view(tiled.shape).copy_(tiled)
    return out


def unfragment_words(words: torch.Tensor) -> torch.Tensor:
    """The half-split packed codes uint8 [..., in // 2] of fragment words int32 [..., in // 8]
    (`fragment_words`, undone: block byte 8q + 4w + 2h + i back to 16w + 8h + 2q + i)."""
    if words.dtype != torch.int32 or words.dim() == 0 or words.shape[-1] % (FRAGMENT_BYTES // 4):
        raise ShapeError(f"fragment words are int32 rows of a multiple of {FRAGMENT_BYTES // 4} "
                         f"words, got {words.dtype} {tuple(words.shape)}")
    lead = words.shape[:-1]
    blocks = words.contiguous().view(torch.uint8).reshape(
        *lead, words.shape[-1] * 4 // FRAGMENT_BYTES, 4, 2, 2, 2)  # q w h i
    nd = blocks.dim()
    ordered = blocks.permute((*range(nd - 4), nd - 3, nd - 2, nd - 4, nd - 1))  # -> w h q i
    return ordered.contiguous().reshape(*lead, -1)


def untile_rows(words: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Words [..., R, C] in tile order (`tile_rows`) back in row-major order (a copy).

    Raises:
        ShapeError: R is not a multiple of rows or C not of cols.
    """
    if rows < 1 or cols < 1 or words.dim() < 2 or words.shape[-2] % rows or (
            words.shape[-1] % cols):
        raise ShapeError(f"tiles of {rows} x {cols} need [..., R, C] with R a multiple of "
                         f"{rows} and C of {cols}, got {tuple(words.shape)}")
    *lead, r, c = words.shape
    tiled = words.contiguous().reshape(*lead, r // rows, c // cols, rows, cols)
    return tiled.transpose(-3, -2).contiguous().reshape(words.shape)


#: (rows per tile, words per K step) of packed codes stored in the fused kernels' tile order
#: (`wattmoe.int4_layout.tile_layout`); None: the half-split codes, row-major
Layout = tuple[int, int] | None


def to_layout(codes: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Half-split codes uint8 [..., R, in // 2] as stored in `layout` (same shape and dtype:
    the tile-order fragment words' bytes); the codes themselves for None."""
    if layout is None:
        return codes
    return tile_rows(fragment_words(codes), *layout).view(torch.uint8)


def from_layout(packed: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The half-split codes of `packed` stored in `layout` (`to_layout`, undone; a copy), or
    packed itself for None."""
    if layout is None:
        return packed
    return unfragment_words(untile_rows(packed.contiguous().view(torch.int32), *layout))


_LAYOUT_CHANGES = [0]  # `Int4Linear.set_layout` calls that changed a layout, in this process


def layout_changes() -> int:
    """How many times an int4 layout changed in this process (`Int4Linear.set_layout`): a
    change rewrites codes at their addresses, so stacks and CUDA graphs, which check a few
    addresses per step, look at every expert's layout only when this moved."""
    return _LAYOUT_CHANGES[0]


class Int4Linear(nn.Module):
    """A bias-free linear layer with packed int4 weights, dequantized in `forward`.

    `packed` holds the half-split codes (`layout` None, the format of record), or the same
    bytes in the fused int4 kernels' tile order (`set_layout`), which those kernels read in
    place instead of keeping a copy: half the GPU memory of an int4 stack that they run.
    Either way `codes()` gives the half-split codes, `forward` and `weight` read them, and the
    state dict holds them (a layer in tile order saves and loads the half-split codes, so that
    its files are the same either way). Writing `packed` by hand (``packed.copy_(codes)``)
    needs the layout's bytes (`to_layout`): a layer in tile order would read half-split codes
    written there as other weights.
    """

    def __init__(self, packed: torch.Tensor, scales: torch.Tensor, compute_dtype: torch.dtype):
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scales)
        self.compute_dtype = compute_dtype
        self.out_features = packed.shape[0]
        self.in_features = packed.shape[1] * 2

    #: how `packed` holds the codes (None: half-split rows; a class default, so that modules
    #: pickled before layouts existed load)
    layout: Layout = None

    def codes(self) -> torch.Tensor:
        """The half-split codes uint8 [out, in // 2] (`packed` itself in the row-major layout,
        a copy in tile order)."""
        return from_layout(self.packed, self.layout)

    def set_layout(self, layout: Layout) -> None:
        """Rewrites `packed` in place (same storage: the views of a built `ExpertStack` stay its
        views) from the current layout to `layout` (None: half-split codes, row-major; (rows
        per tile, words per K step): `to_layout`).

        Raises:
            ShapeError: the codes do not tile that way.
        """
        if layout == self.layout:
            return
        with torch.no_grad():
            new = to_layout(self.codes(), layout)
            if self.packed.is_inference():  # made under inference mode, so no stack's view
                # (stacks are built outside it): an inference tensor takes no in-place write
                self.packed = new if new.data_ptr() != self.packed.data_ptr() else new.clone()
            elif new.data_ptr() != self.packed.data_ptr():
                self.packed.copy_(new)
        self.layout = layout
        _LAYOUT_CHANGES[0] += 1

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout is not None and prefix + "packed" in destination:
            destination[prefix + "packed"] = self.codes()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        key = prefix + "packed"
        codes = state_dict.get(key)
        if (self.layout is not None and isinstance(codes, torch.Tensor)
                and codes.shape == self.packed.shape):  # (a cast as loading would make it)
            state_dict[key] = to_layout(codes.to(self.packed.device, torch.uint8), self.layout)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int, compute_dtype: torch.dtype,
                    out: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The int4 layer of `linear`'s weight; with `out`, its packed codes and scales are
        those tensors, written in place (`quantize_int4`)."""
        if linear.bias is not None:
            raise ConfigError("int4 quantization supports bias-free linear layers only")
        packed, scales = quantize_int4(linear.weight, group_size, out)
        return cls(packed, scales, compute_dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True,
               ) -> Int4Linear:
        """`.to(dtype)`, `.half()`, ... set the compute dtype and leave the fp16 scales as they
        are (only `.to(device)` moves them): cast, bf16 scales would lose 3 bits of every
        scale, and a replaced tensor would no longer be the view of a built `ExpertStack`, which
        would go on reading the old scales."""
        scales = self._buffers["scales"]
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=scales.device))
        # what fn does to the scales, learnt on an empty tensor: a cast is dropped, so the
        # whole buffer is handed to fn only when fn keeps its dtype (a move, share_memory_)
        target = fn(torch.empty(0, dtype=scales.dtype, device=scales.device))
        self._buffers["scales"] = None  # nn.Module._apply skips None buffers
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers["scales"] = (fn(scales) if target.dtype == scales.dtype
                                       else scales.to(target.device))
        if probe.dtype.is_floating_point:
            self.compute_dtype = probe.dtype
        return self

    def weight(self) -> torch.Tensor:
        return dequantize_int4(self.codes(), self.scales, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.weight())

    def extra_repr(self) -> str:
        tiles = "" if self.layout is None else f", tile order {self.layout[0]}x{self.layout[1]}"
        return (f"in={self.in_features}, out={self.out_features}, "
                f"groups={self.scales.shape[1]}{tiles}")


class QuantizedExpert(FeedForward):
    """An `Expert` whose weights are stored as packed int4 with per-group fp16 scales.

    `out`, by projection name ('gate_proj', 'up_proj', 'down_proj'), gives the (packed,
    scales) tensors to quantize into (`Int4Linear.from_linear`): views of the [E, ...]
    tensors of a stack (`stacked.quantize_experts`), so that the codes are never held twice.
    """

    def __init__(
        self,
        expert: Expert,
        group_size: int = 128,
        compute_dtype: str | torch.dtype | None = None,
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(expert, QuantizedExpert):
            raise ConfigError("this expert is already quantized to int4 (group size "
                              f"{expert.group_size}); quantize the original Expert instead")
        if not isinstance(expert, Expert):
            raise ConfigError(f"int4 quantization takes an Expert, got {type(expert).__name__}")
        dtype = expert.dtype if compute_dtype is None else resolve_dtype(compute_dtype)
        self.hidden_size = expert.hidden_size
        self.inner_size = expert.inner_size
        self.form = expert.form
        self.group_size = group_size
        out = out or {}
        self.gate_proj = (
            Int4Linear.from_linear(expert.gate_proj, group_size, dtype, out.get("gate_proj"))
            if expert.gate_proj is not None
            else None
        )
        self.up_proj = Int4Linear.from_linear(expert.up_proj, group_size, dtype,
                                              out.get("up_proj"))
        self.down_proj = Int4Linear.from_linear(expert.down_proj, group_size, dtype,
                                                out.get("down_proj"))

    @property
    def dtype(self) -> torch.dtype:
        return self.up_proj.compute_dtype

    @property
    def layout(self) -> tuple[Layout | str, Layout]:
        """(gate/up, down) layouts of the packed codes (`Int4Linear.layout`); gate/up is
        'mixed' where the gate and up rows were set apart (no stack reads that)."""
        up = self.up_proj.layout
        if self.gate_proj is not None and self.gate_proj.layout != up:
            return "mixed", self.down_proj.layout
        return up, self.down_proj.layout

    def set_layout(self, tiles: bool, tile_rows: int = DEFAULT_TILE_ROWS) -> None:
        """Stores the codes in the fused int4 kernels' tile order (`tiles`: each matrix that
        their tile-order entries read, `fused_layouts`; the others stay row-major) or back in
        the half-split row-major layout, in place (`Int4Linear.set_layout`)."""
        up, down = fused_layouts(self.hidden_size, self.inner_size, self.form,
                                 self.group_size, tile_rows) if tiles else (None, None)
        for lin in (self.gate_proj, self.up_proj):
            if lin is not None:
                lin.set_layout(up)
        self.down_proj.set_layout(down)

    def weight_bytes(self) -> int:
        """Bytes actually stored: packed codes plus scales."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return (
            f"hidden={self.hidden_size}, inner={self.inner_size}, form={self.form}, "
            f"int4 group={self.group_size}"
        )


def quantize_expert(
    expert: Expert, group_size: int = 128, compute_dtype: str | torch.dtype | None = None
) -> QuantizedExpert:
    """Quantizes an `Expert` into a `QuantizedExpert` (4-bit weights, packed two per byte)."""
    return QuantizedExpert(expert, group_size=group_size, compute_dtype=compute_dtype)
