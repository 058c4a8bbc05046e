"""Expert weights stacked into [E, ...] tensors, shared with the experts, for grouped kernels.

Grouped and fused backends want every expert's weight in one tensor indexed by expert. Stacking
copies the weights once into such tensors and then points each expert's own parameters (or
int4 buffers) at its slice; int4 experts quantized by `SimpleMoELayer.quantize` are views of
such tensors from the start (`quantize_experts`), which their stack takes as they are, with no
copy (copying held the codes twice at the first build's peak). So

- no memory is duplicated (DeepSeek-V3's routed experts alone are 22.5 GB in bf16);
- in-place updates of an expert (``load_state_dict``, ``param.copy_``, an optimizer step) are
  seen by the stack without any invalidation (the fused kernels' int4 fragment-word copies
  follow them through the tensors' version counter; writes that bypass it, through ``.data``,
  numpy or DLPack, need ``fused_triton.refresh_frag_words(stack.kernel_cache, force=True)``);
- a change that *replaces* tensors (``layer.to(...)``, ``layer.quantize()``, assigning
  ``param.data``) is detected on the next call and the stack is rebuilt, and so is a replaced
  expert module (``layer.experts[i] = ...``), wherever it is in the list.
- a state dict of less than the whole stack (one expert's, one linear's) holds copies of just
  its tensors' bytes, not the stack's storage that a view would save; the state dict of the
  experts' container, the layer or a model keeps the views (`stack_state`).

Layout (what the kernels index):
    dense:  w13 [E, R, H] with R = 2F for 'swiglu' (gate rows 0..F-1, up rows F..2F-1) or F for
            'relu'; w2 [E, H, F].
    int4:   q13 [E, R, H // 2] uint8 and s13 [E, R, H // G] fp16; q2 [E, H, F // 2] and
            s2 [E, H, F // G] (`wattmoe.moe.quant` packing: column j low, j + in/2 high).

Detection is cheap: the first and last experts' pointers, and the identities of the expert
modules (one tuple comparison at C speed, O(E): +1.2 us per check with 64 experts, +3.9 us with
256, on a loaded 2-core CPU; results/cpu/stack_member_check). The modules are compared since
`auto` became the layer's default: a user who swaps an expert module runs a stacked backend
without having chosen one, and the loop always saw the new expert. Replacing the tensors of
one middle expert by hand (``.data``, a new ``nn.Parameter`` or submodule) is not noticed:
call `invalidate_stack(experts)` after such surgery, or `stacked_experts(experts, verify=True)`
to check every pointer.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wattmoe.checks import is_int
from wattmoe.errors import ConfigError
from wattmoe.moe.expert import Expert
from wattmoe.moe.quant import (
    Layout,
    QuantizedExpert,
    dequantize_int4,
    from_layout,
    layout_changes,
    quantize_expert,
)
from wattmoe.moe.stack_state import save_own_bytes, save_views_whole

log = logging.getLogger(__name__)

_ATTR = "_wattmoe_stack"


class StackError(ConfigError):
    """The experts cannot be stacked (empty, mixed kinds, shapes or group sizes, or modules
    other than `Expert` and `QuantizedExpert`): only `loop` can run them."""


_builds = itertools.count(1)
# Stacks of containers that cannot hold an attribute (plain lists), by the experts' ids.
_LIST_CACHE: OrderedDict[tuple[int, ...], ExpertStack] = OrderedDict()
_LIST_CACHE_SIZE = 8


@dataclass(eq=False)
class ExpertStack:
    """The routed experts of one layer, stacked (see the module docstring for the layout).

    Attributes:
        form: 'swiglu' or 'relu'.
        hidden_size: H.
        inner_size: F.
        num_experts: E.
        dtype: compute dtype (the experts' dtype; for int4, the dequantization dtype).
        w13, w2: dense weights, or None for int4 stacks.
        q13, s13, q2, s2: packed int4 codes and fp16 scales, or None for dense stacks.
        group_size: int4 group size G, or None.
        layout13, layout2: how q13 and q2 hold the codes (`quant.Int4Linear.layout`: None,
            half-split rows; (rows, words) the fused kernels' tile order, which they read in
            place, `SimpleMoELayer.set_int4_layout`).
        build_id: unique per build (CUDA graphs key on it: a rebuilt stack has new pointers).
        kernel_cache: per-stack objects of the kernels that depend only on these tensors (the
            fused backend's TMA descriptors and, for int4 "...f" configurations, a copy of
            the codes as fragment-ordered words: as much memory again as q13 and q2; for
            "...fp", the scales as pair words in the compute dtype, as much as s13 and s2;
            for "...fpx", both in tile order, one copy per K step size: 64-row programs read
            halves of the 128-row tiles), dropped with
            the stack; `fused_triton.copy_bytes(kernel_cache)` says how much they hold.
    """

    form: str
    hidden_size: int
    inner_size: int
    num_experts: int
    dtype: torch.dtype
    w13: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    q13: torch.Tensor | None = None
    s13: torch.Tensor | None = None
    q2: torch.Tensor | None = None
    s2: torch.Tensor | None = None
    group_size: int | None = None
    layout13: Layout = None
    layout2: Layout = None
    build_id: int = 0
    layouts_seen: int = -1  # `quant.layout_changes()` when every member's layout was checked
    kernel_cache: dict = field(default_factory=dict, repr=False)
    members: tuple = field(default=(), repr=False)  # the expert modules it was built from

    def __getstate__(self) -> dict[str, object]:
        # the kernels' copies and descriptors are remade from the tensors where needed
        return {**self.__dict__, "kernel_cache": {}}

    def __setstate__(self, state: dict[str, object]) -> None:
        # a loaded (or deep-copied) stack is another build: graphs keyed by the build id must
        # not take it for the one it was saved from (or, in another process, for whichever
        # stack got that number), whose weights they read
        self.__dict__.update(state)
        self.build_id = next(_builds)

    @property
    def quantized(self) -> bool:
        return self.q13 is not None

    @property
    def gated(self) -> bool:
        return self.form == "swiglu"

    @property
    def device(self) -> torch.device:
        t = self.q13 if self.quantized else self.w13
        assert t is not None
        return t.device

    def dense(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) in `dtype`; int4 stacks are dequantized here (materialized, every call)."""
        dtype = dtype or self.dtype
        if not self.quantized:
            assert self.w13 is not None and self.w2 is not None
            return self.w13.to(dtype), self.w2.to(dtype)
        assert self.q13 is not None and self.s13 is not None
        assert self.q2 is not None and self.s2 is not None
        return (_dequant_stack(self.q13, self.s13, dtype, self.layout13),
                _dequant_stack(self.q2, self.s2, dtype, self.layout2))

    def weight_bytes(self) -> int:
        """Bytes a kernel must read to touch every expert once."""
        ts = (self.q13, self.s13, self.q2, self.s2) if self.quantized else (self.w13, self.w2)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


#: weights per piece that `_dequant_stack` dequantizes at a time (whole experts, at least one)
DEQUANT_PIECE_WEIGHTS = 1 << 26


def _dequant_stack(q: torch.Tensor, s: torch.Tensor, dtype: torch.dtype,
                   layout: Layout = None) -> torch.Tensor:
    """The stack's int4 matrices q [E, R, K/2] (stored in `layout`) with scales s, dequantized
    into one [E, R, K] tensor of `dtype`, a few experts at a time: the unpacking's temporaries
    (int8 codes, their cast) then take a piece's size, not the stack's (about 2.5x the result:
    the first `grouped` step of a DeepSeek-V3 int4 layer, which `auto` calibrates, peaked at
    48-50 GB on the H200 in run 123 with the whole stack at once)."""
    e, r, half = q.shape
    out = torch.empty(e, r, 2 * half, dtype=dtype, device=q.device)
    step = max(1, DEQUANT_PIECE_WEIGHTS // max(1, r * 2 * half))
    for i in range(0, e, step):
        codes = from_layout(q[i:i + step], layout)
        n = codes.shape[0]
        out[i:i + n] = dequantize_int4(codes.reshape(n * r, half), s[i:i + n].reshape(n * r, -1),
                                       dtype).reshape(n, r, 2 * half)
    return out


def _gate_up_rows(expert: nn.Module, f: int) -> list[tuple[nn.Module, slice]]:
    """The expert's up (and gate) projections with their rows in the stacked [2F | F, H]
    block: gate in rows 0..F, up in F..2F for SwiGLU; up in 0..F otherwise."""
    gate, up = expert.gate_proj, expert.up_proj  # type: ignore[attr-defined]
    if gate is None:
        return [(up, slice(0, f))]
    return [(up, slice(f, 2 * f)), (gate, slice(0, f))]


def _ends(experts: Sequence[nn.Module]) -> tuple[nn.Module, nn.Module]:
    """First and last expert; an `nn.ModuleList`'s from its module dict (ordered by index),
    which is cheaper than its `__getitem__` on these per-step paths."""
    children = getattr(experts, "_modules", None)
    if isinstance(experts, nn.ModuleList) and children:
        return next(iter(children.values())), next(reversed(children.values()))
    return experts[0], experts[-1]


def stack_signature(experts: Sequence[nn.Module]) -> tuple[object, ...]:
    """(experts, hidden, inner, form, weights) of the stack `stacked_experts` would build, from
    the first expert alone (no stack check: for per-step keys). Only the first expert is looked
    at: a list whose first expert cannot be stacked raises what `stacked_experts` raises; a
    mixed list is caught where a backend stacks it.

    Raises:
        StackError: no experts, or a first expert that is neither `Expert` nor
            `QuantizedExpert` (see `stacked_experts`).
    """
    sig = head_signature(experts)
    if sig is None:
        if len(experts) == 0:
            raise StackError("cannot stack an empty list of experts")
        stacked_experts(experts)  # raises the stacking error (only these two kinds stack)
    assert sig is not None
    return sig


def head_signature(experts: Sequence[nn.Module]) -> tuple[object, ...] | None:
    """`stack_signature`'s tuple, or None where it raises (no experts, or a first expert that
    is neither `Expert` nor `QuantizedExpert`): O(1) and no exception, for per-step keys of
    experts that may never stack (`auto`'s 'unstackable' steps)."""
    if len(experts) == 0:
        return None
    first = _ends(experts)[0]
    if not isinstance(first, (Expert, QuantizedExpert)):
        return None
    weights = (f"int4g{first.group_size}" + ("" if first.layout == (None, None) else "/tiles")
               if isinstance(first, QuantizedExpert)
               else str(first.dtype))
    return (len(experts), first.hidden_size, first.inner_size, first.form, weights)


def _attr(m: nn.Module, name: str) -> Any:
    """`getattr(m, name)` for a child module, parameter or buffer, read from the module's own
    dicts first (`nn.Module.__getattr__` tries them one after the other, ~1 us a read on
    these per-step paths); anything else through `getattr`."""
    d = m.__dict__
    for table in ("_modules", "_parameters", "_buffers"):
        entries = d.get(table)
        if entries is not None and name in entries:
            return entries[name]
    return getattr(m, name)


def _anchors(experts: Sequence[nn.Module]) -> tuple[int, int]:
    """Pointers that must match the stack: first expert's first and last expert's down rows.

    Runs on every step (stack cache check, graph replays): an `nn.ModuleList`'s ends are read
    from its module dict (ordered by index) instead of its slower `__getitem__`, and the
    modules' children and tensors from their dicts (`_attr`).
    """
    first, last = _ends(experts)
    lead = _attr(first, "gate_proj")
    if lead is None:
        lead = _attr(first, "up_proj")
    tensor = "packed" if isinstance(first, QuantizedExpert) else "weight"
    return (_attr(lead, tensor).data_ptr(),
            _attr(_attr(last, "down_proj"), tensor).data_ptr())


def _stack_anchors(st: ExpertStack) -> tuple[int, int]:
    if st.quantized:
        assert st.q13 is not None and st.q2 is not None
        return st.q13[0].data_ptr(), st.q2[-1].data_ptr()
    assert st.w13 is not None and st.w2 is not None
    return st.w13[0].data_ptr(), st.w2[-1].data_ptr()


def _members(experts: Sequence[nn.Module]) -> tuple:
    """The expert modules in order (an `nn.ModuleList`'s from its module dict)."""
    children = getattr(experts, "_modules", None)
    return tuple(children.values()) if isinstance(experts, nn.ModuleList) else tuple(experts)


def _matches(st: ExpertStack, experts: Sequence[nn.Module], verify: bool,
             layouts: bool = True) -> bool:
    if st.num_experts != len(experts) or _members(experts) != st.members:
        return False
    try:
        if _anchors(experts) != _stack_anchors(st):
            return False
        first = _ends(experts)[0]
        if first.dtype != st.dtype:
            return False  # an int4 layer's `.to(dtype)` keeps its codes and scales in place
        if layouts and st.quantized and st.layouts_seen != layout_changes():
            # codes rewritten in place into another layout (at the same addresses), maybe of
            # one middle expert: every member's layout, once per change in the process
            want = (st.layout13, st.layout2)
            if any(ex.layout != want for ex in experts):
                return False
            st.layouts_seen = layout_changes()
    except AttributeError:
        return False
    return not verify or _all_views(st, experts)


def _all_views(st: ExpertStack, experts: Sequence[nn.Module]) -> bool:
    f = st.inner_size
    for e, ex in enumerate(experts):
        if st.quantized:
            assert st.q13 is not None and st.q2 is not None
            want = [(lin.packed, st.q13[e, sl]) for lin, sl in _gate_up_rows(ex, f)]
            want.append((ex.down_proj.packed, st.q2[e]))
        else:
            assert st.w13 is not None and st.w2 is not None
            want = [(lin.weight, st.w13[e, sl]) for lin, sl in _gate_up_rows(ex, f)]
            want.append((ex.down_proj.weight, st.w2[e]))
        if any(a.data_ptr() != b.data_ptr() for a, b in want):
            return False
    return True


def _int4_shapes(n: int, rows: int, h: int, f: int,
                 g: int) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
    """(shape, dtype) of the int4 stack's q13, s13, q2 and s2 (the module docstring)."""
    return (((n, rows, h // 2), torch.uint8), ((n, rows, h // g), torch.float16),
            ((n, h, f // 2), torch.uint8), ((n, h, f // g), torch.float16))


def _int4_views(ex: nn.Module, e: int, f: int, bases: Sequence[torch.Tensor],
                ) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(linear, its codes' place, its scales' place) of expert `e` in the stack's tensors
    `bases` (q13, s13, q2, s2)."""
    q13, s13, q2, s2 = bases
    places = [(lin, q13[e, sl], s13[e, sl]) for lin, sl in _gate_up_rows(ex, f)]
    places.append((ex.down_proj, q2[e], s2[e]))
    return places


def quantize_experts(experts: Sequence[nn.Module], group_size: int) -> nn.ModuleList:
    """Dense `experts` as int4 `QuantizedExpert`s (`quant.quantize_expert`, same codes and
    scales) whose codes and scales are quantized straight into the [E, ...] tensors of their
    stack: the first stacked step takes those tensors as its stack (`_adopted`) instead of
    copying the codes in, which held them twice at that step's peak (DeepSeek-V3: 11.72 GB on
    the H200, run 118; measured on the CPU in `benchmarks/stack_build_memory.py`). Until
    then each expert holds views of tensors that no stack holds yet, saved in state dicts as
    a built stack's are (`stack_state`); one expert module pickled or deep-copied on its own
    (not its state dict) carries the whole tensors, as after a first build.

    Experts that would not stack together (other kinds, shapes, forms, dtypes or devices)
    are quantized one by one, as `quantize_expert` does. The tensors are made outside
    inference mode, as a stack's are (`_stack_int4`). Returned in an `nn.ModuleList` whose
    state dict keeps the views, as a stack's container's does (`stack_state`).

    Raises:
        ConfigError, ShapeError: as `quant.quantize_int4` (a bad group size, a weight that
            cannot be quantized).
    """
    experts = list(experts)
    if not _stack_born(experts, group_size):
        return nn.ModuleList(quantize_expert(ex, group_size) for ex in experts)
    first = experts[0]
    h, f = first.hidden_size, first.inner_size
    rows = 2 * f if first.form == "swiglu" else f
    with torch.inference_mode(False), torch.no_grad():
        bases = [torch.empty(shape, dtype=dtype, device=first.up_proj.weight.device)
                 for shape, dtype in _int4_shapes(len(experts), rows, h, f, group_size)]
        quantized = []
        for e, ex in enumerate(experts):
            # the dense linears' places are the int4 ones' (`_gate_up_rows` reads either)
            *gate_up, (_, q2, s2) = _int4_views(ex, e, f, bases)
            out = {("gate_proj" if lin is ex.gate_proj else "up_proj"): (q, s)
                   for lin, q, s in gate_up}
            out["down_proj"] = (q2, s2)
            quantized.append(QuantizedExpert(ex, group_size, out=out))
    for qe in quantized:
        for lin in (qe.gate_proj, qe.up_proj, qe.down_proj):
            if lin is not None:
                save_own_bytes(lin)
    container = nn.ModuleList(quantized)
    save_views_whole(container)
    return container


def _stack_born(experts: list[nn.Module], group_size: object) -> bool:
    """Whether `quantize_experts` quantizes `experts` into a stack: dense `Expert`s of one
    shape, form, dtype and device, and a group size that divides both widths (others are
    quantized one by one, where `quantize_int4` raises for a bad group size)."""
    if not experts or any(type(ex) is not Expert for ex in experts):
        return False
    key = {(ex.hidden_size, ex.inner_size, ex.form, ex.dtype, ex.up_proj.weight.device)
           for ex in experts}
    if len(key) != 1:
        return False
    h, f = experts[0].hidden_size, experts[0].inner_size
    return (is_int(group_size) and group_size > 0 and group_size % 2 == 0
            and h % group_size == 0 and f % group_size == 0)


def _adopted(experts: Sequence[nn.Module], n: int, rows: int, h: int, f: int,
             g: int) -> list[torch.Tensor] | None:
    """The tensors (q13, s13, q2, s2) that every expert's codes and scales are already views
    of, at their places in a stack (`quantize_experts` made them so), or None. Only views of
    these very tensors (their `_base`), which share their version counters (the fused
    kernels' copies follow in-place writes through them), and none made in inference mode."""
    lead = _gate_up_rows(experts[0], f)[-1][0]  # the gate, or up in 'relu'
    down = experts[0].down_proj
    bases = [lead.packed._base, lead.scales._base, down.packed._base, down.scales._base]
    for b, (shape, dtype) in zip(bases, _int4_shapes(n, rows, h, f, g)):
        if (b is None or tuple(b.shape) != shape or b.dtype != dtype or not b.is_contiguous()
                or b.is_inference()):
            return None
    for e, ex in enumerate(experts):
        for lin, q, s in _int4_views(ex, e, f, bases):
            for t, want, base in ((lin.packed, q, q._base), (lin.scales, s, s._base)):
                if (t._base is not base or t.dtype != want.dtype or t.shape != want.shape
                        or t.stride() != want.stride() or t.data_ptr() != want.data_ptr()):
                    return None
    return bases


def _stack_int4(st: ExpertStack, experts: Sequence[nn.Module], n: int, rows: int, h: int,
                f: int, g: int) -> None:
    """Fills st's int4 tensors and makes the experts' codes and scales views of them, or takes
    the tensors they are views of already (`_adopted`: quantized into a stack, nothing is
    copied). Built outside inference mode (even when called inside it), so that the stack's
    codes keep a version counter: the fused kernels' copies of them (`fused_triton._derived`)
    follow in-place writes through it."""
    with torch.inference_mode(False), torch.no_grad():
        dev = experts[0].up_proj.packed.device
        st.group_size = g
        layouts = {ex.layout for ex in experts}
        if len(layouts) != 1 or "mixed" in next(iter(layouts)):
            # not a StackError: `auto` would run `loop` for good, where the fix is one call
            raise ConfigError("stacked int4 experts must share one layout of their codes, "
                              f"gate and up rows alike (got {sorted(map(str, layouts))}): set "
                              "it on the whole layer (`SimpleMoELayer.set_int4_layout`)")
        st.layout13, st.layout2 = layouts.pop()
        st.layouts_seen = layout_changes()
        bases = _adopted(experts, n, rows, h, f, g)
        if bases is None:
            bases = [torch.empty(shape, dtype=dtype, device=dev)
                     for shape, dtype in _int4_shapes(n, rows, h, f, g)]
            for e, ex in enumerate(experts):
                for lin, q, s in _int4_views(ex, e, f, bases):
                    q.copy_(lin.packed)
                    s.copy_(lin.scales)
                    lin.packed, lin.scales = q, s
        for ex in experts:
            for lin in (ex.gate_proj, ex.up_proj, ex.down_proj):
                if lin is not None:
                    save_own_bytes(lin)
        st.q13, st.s13, st.q2, st.s2 = bases


def _build(experts: Sequence[nn.Module]) -> ExpertStack:
    if len(experts) == 0:
        raise StackError("cannot stack an empty list of experts")
    first = experts[0]
    kinds = {type(e) for e in experts}
    if len(kinds) != 1 or not issubclass(kinds.pop(), (Expert, QuantizedExpert)):
        raise StackError(
            "stacking needs experts that are all `Expert` or all `QuantizedExpert`, got "
            f"{sorted({type(e).__name__ for e in experts})}"
        )
    h, f, form = first.hidden_size, first.inner_size, first.form
    for e in experts:
        if (e.hidden_size, e.inner_size, e.form) != (h, f, form):
            raise StackError("stacked experts must share hidden size, inner size and form")
    gated = form == "swiglu"
    rows = 2 * f if gated else f
    n = len(experts)
    st = ExpertStack(form=form, hidden_size=h, inner_size=f, num_experts=n, dtype=first.dtype,
                     build_id=next(_builds))
    # outside inference mode even when called inside it (as `_stack_int4` builds): weights
    # re-pointed at inference tensors got no gradients when the layer was trained afterwards
    # (an evaluation under `torch.inference_mode()` first, then fine-tuning; silent, measured)
    with torch.inference_mode(False), torch.no_grad():
        if isinstance(first, QuantizedExpert):
            g = first.group_size
            if any(e.group_size != g for e in experts):
                raise StackError("stacked int4 experts must share one group size")
            _stack_int4(st, experts, n, rows, h, f, g)
        else:
            w = first.up_proj.weight
            st.w13 = torch.empty(n, rows, h, dtype=w.dtype, device=w.device)
            st.w2 = torch.empty(n, h, f, dtype=w.dtype, device=w.device)
            for e, ex in enumerate(experts):
                down = ex.down_proj
                for lin, sl in _gate_up_rows(ex, f):
                    st.w13[e, sl].copy_(lin.weight)
                    lin.weight.data = st.w13[e, sl]
                    save_own_bytes(lin)
                st.w2[e].copy_(down.weight)
                down.weight.data = st.w2[e]
                save_own_bytes(down)
    log.debug("stacked %d experts (%s, H=%d, F=%d, %s, build %d)", n, form, h, f,
              "int4" if st.quantized else str(st.dtype), st.build_id)
    return st


def stacked_experts(experts: Sequence[nn.Module], verify: bool = False) -> ExpertStack:
    """The stack of `experts`, built on first use and rebuilt when their tensors were replaced.

    The stack is cached on the container (an `nn.ModuleList` holds it as an attribute; plain
    lists are cached by the experts' identities). Building it re-points the experts' weights at
    slices of the stack (see the module docstring).

    Args:
        experts: all `Expert` or all `QuantizedExpert`, of one shape.
        verify: check every expert's pointers, not only the first and last.

    Raises:
        StackError: the experts cannot be stacked (mixed kinds or shapes, empty).
    """
    st = existing_stack(experts, verify)
    if st is not None:
        return st
    st = _build(experts)
    st.members = _members(experts)
    if isinstance(experts, nn.Module):
        experts.__dict__[_ATTR] = st
        save_views_whole(experts)
    else:
        _LIST_CACHE[tuple(id(e) for e in experts)] = st
        while len(_LIST_CACHE) > _LIST_CACHE_SIZE:
            _LIST_CACHE.popitem(last=False)
    return st


def _cached(experts: Sequence[nn.Module]) -> ExpertStack | None:
    """The stack cached for `experts`, matching them or not."""
    if isinstance(experts, nn.Module):
        return experts.__dict__.get(_ATTR)
    return _LIST_CACHE.get(tuple(id(e) for e in experts))


def existing_stack(experts: Sequence[nn.Module], verify: bool = False) -> ExpertStack | None:
    """The cached stack of `experts` if it still matches them, else None (builds nothing)."""
    st = _cached(experts)
    return st if st is not None and _matches(st, experts, verify) else None


def relayout_stack(experts: Sequence[nn.Module]) -> None:
    """After the experts' int4 codes were rewritten in place into another layout
    (`QuantizedExpert.set_layout`): their cached stack, whose tensors they still are, takes
    the new layout, drops the kernels' objects made from the old one (copies, descriptors) and
    gets a new build id (CUDA graphs of it are captured again). Nothing is copied. Where the
    experts do not share one layout the stack is dropped (building it again raises
    `ConfigError`, which `auto` does not take for unstackable experts)."""
    st = _cached(experts)
    if st is None or not st.quantized or not _matches(st, experts, False, layouts=False):
        return
    layouts = {ex.layout for ex in experts}
    if len(layouts) != 1:
        invalidate_stack(experts)
        return
    st.layout13, st.layout2 = layouts.pop()
    st.layouts_seen = layout_changes()
    st.kernel_cache.clear()
    st.build_id = next(_builds)


def invalidate_stack(experts: Sequence[nn.Module]) -> None:
    """Forgets the cached stack of `experts`; the next call rebuilds it."""
    if isinstance(experts, nn.Module):
        experts.__dict__.pop(_ATTR, None)
    else:
        _LIST_CACHE.pop(tuple(id(e) for e in experts), None)
