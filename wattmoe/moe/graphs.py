"""CUDA-graph capture of expert execution for the small, fixed step sizes of decoding.

A decode step of a few dozen tokens launches a handful of kernels whose launch gaps cost as
much as their work. `GraphedBackend` captures the inner backend once per step shape
(tokens, assignments, dtype, stack) into a CUDA graph with static input buffers; later steps of
that shape copy their inputs in (4-5 small copies), replay, and return a copy of the output.

Only backends with no host synchronization can be captured (`fused`, and `grouped` where
`torch._grouped_mm` keeps offsets on the device); a shape whose capture fails is remembered and
runs eagerly. CPU tensors, steps above `max_tokens` and calls that need autograd run the inner
backend eagerly.

`GraphedLayer` captures a whole layer step instead (router, dispatch, experts, combine): one
launch per decode step.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wattmoe.moe import fused_route
from wattmoe.moe.backends import get_backend, needs_autograd, register_backend
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.fused_triton import copies_moved, refresh_frag_words
from wattmoe.moe.quant import layout_changes
from wattmoe.moe.router import RoutingStrategy
from wattmoe.moe.stacked import (
    ExpertStack,
    _anchors,
    _attr,
    _members,
    existing_stack,
    stacked_experts,
)

log = logging.getLogger(__name__)

#: module attributes of these types are settings a captured step reads as constants
_SETTING_TYPES = frozenset({int, float, bool, str})


class _Uncapturable(RuntimeError):
    """The captured call failed (a host sync or an operation CUDA graphs cannot record)."""


def _warm_and_capture(fn: Callable[[], Any], device: torch.device,
                      pool: object) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Runs fn twice on a side stream (compile kernels, create handles, settle the allocator),
    then records one call into a CUDA graph from `pool`; returns (graph, fn's output).

    Raises:
        _Uncapturable: the recorded call failed (the device is synchronized first). Errors of
            the warm-up calls propagate as they are.
    """
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    except RuntimeError as exc:
        torch.cuda.synchronize(device)
        raise _Uncapturable(str(exc)) from exc
    return graph, out


def _remember(cache: OrderedDict, key: tuple[object, ...], value: object, limit: int) -> None:
    """Adds a captured graph, dropping the least recently used beyond `limit`."""
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    d: Dispatch
    out: torch.Tensor
    derived: frozenset = frozenset()  # the int4 copies when captured (`refresh_frag_words`)


class GraphedBackend:
    """Wraps a backend with per-shape CUDA graphs.

    Args:
        inner: name of the backend to capture.
        max_tokens: steps with more tokens run eagerly (graphs pay off for small steps).
        max_graphs: captured shapes kept (least recently used dropped first).
    """

    def __init__(self, inner: str, max_tokens: int = 512, max_graphs: int = 32) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[object, ...], _Captured] = OrderedDict()
        self._uncapturable: set[tuple[object, ...]] = set()
        self._pool: object | None = None
        self.replays = 0
        self.captures = 0
        self._build_of: dict[int, int] = {}  # id of a watched stack -> its build watched
        self._pending: set[int] = set()  # builds freed, their graphs not dropped yet

    def clear(self) -> None:
        """Drops every captured graph."""
        self._graphs.clear()
        self._uncapturable.clear()

    def _watch(self, st: ExpertStack) -> None:
        """Drops the graphs of `st`'s build when the stack is freed (its layer deleted, its
        experts re-stacked): a registered backend lives as long as the process, and its graphs
        of a layer gone would keep the memory their steps allocated (up to `max_graphs`)."""
        prev = self._build_of.get(id(st))
        if prev != st.build_id:
            if prev is not None:  # the stack was re-laid (`relayout_stack`): a new build
                self._forget_build(prev)  # (or a freed stack's id taken by another)
            self._build_of[id(st)] = st.build_id
            # the callback only notes the build: it runs where the collector frees the stack
            # (inside a capture, another thread, the middle of this object's own loops)
            weakref.finalize(st, self._pending.add, st.build_id).atexit = False

    def _flush(self) -> None:
        """Drops the graphs of the builds freed since (`_watch`), outside a capture."""
        if self._pending and not (torch.cuda.is_available()
                                  and torch.cuda.is_current_stream_capturing()):
            while self._pending:
                self._forget_build(self._pending.pop())

    def _forget_build(self, build_id: int) -> None:
        for k, b in list(self._build_of.items()):
            if b == build_id:
                self._build_of.pop(k, None)
        for k in list(self._graphs):
            if k[0] == build_id:
                self._graphs.pop(k, None)
        self._uncapturable = {k for k in list(self._uncapturable) if k[0] != build_id}

    def captured(self) -> frozenset[tuple[object, ...]]:
        """The keys of the graphs held now (for `drop`)."""
        self._flush()
        return frozenset(self._graphs)

    def drop(self, keys: Iterable[tuple[object, ...]]) -> None:
        """Drops the graphs of `keys`: the memory their step allocated while captured (a
        `grouped` int4 step's dequantized weights) goes back to the caching allocator once no
        graph of the pool holds it. `auto` drops what its calibration captured for backends
        it did not choose."""
        for k in keys:
            self._graphs.pop(k, None)

    def __call__(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
        inner = get_backend(self.inner)
        if self._pending:
            self._flush()
        if (not x.is_cuda or x.shape[0] > self.max_tokens or needs_autograd(experts, x)
                or torch.cuda.is_current_stream_capturing()):
            return inner(experts, x, d)
        st = stacked_experts(experts)
        key = (st.build_id, tuple(x.shape), x.dtype, x.device, d.graph_key())
        if key in self._uncapturable:
            return inner(experts, x, d)
        cap = self._graphs.get(key)
        # int4 copies of weights written in place are rewritten; copies made anew (a cleared
        # kernel cache) are not what the graph reads: capture it again
        if cap is not None and copies_moved(cap.derived, refresh_frag_words(st.kernel_cache)):
            del self._graphs[key]
            cap = None
        if cap is None:
            cap = self._capture(key, experts, x, d)
            if cap is None:
                return inner(experts, x, d)
            cap.derived = refresh_frag_words(st.kernel_cache)
            self._watch(st)
        else:
            self._graphs.move_to_end(key)
            cap.x.copy_(x)
            cap.d.copy_(d)
        cap.graph.replay()
        self.replays += 1
        return cap.out.clone()

    def _capture(
        self, key: tuple[object, ...], experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch
    ) -> _Captured | None:
        inner = get_backend(self.inner)
        sx = x.clone()
        sd = d.clone()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            graph, out = _warm_and_capture(lambda: inner(experts, sx, sd), x.device, self._pool)
        except _Uncapturable as exc:  # a host sync or an uncapturable op inside `inner`
            log.info("could not capture %s for %s: %s; running it eagerly", self.inner, key, exc)
            self._uncapturable.add(key)
            return None
        cap = _Captured(graph, sx, sd, out)
        _remember(self._graphs, key, cap, self.max_graphs)
        self.captures += 1
        return cap


class GraphedLayer:
    """A whole `SimpleMoELayer` step (router, dispatch, experts, combine) as CUDA graphs.

    Decode steps are short enough that launching the router's and the dispatch's small kernels
    costs as much as the experts' work. This wrapper captures `layer(x)` once per input shape
    and replays it: one launch per step. It needs a step with no host synchronization: no
    capacity factor, a routing strategy without `observe` side effects, and a capturable
    backend (`fused`, `grouped` on Hopper bf16); otherwise, and for CPU tensors or calls that
    need autograd, it runs the layer eagerly.

    The returned `MoEOutput.hidden_states` is a fresh tensor; its other fields (routing, counts,
    aux loss) are the graph's static buffers, overwritten by the next replay of that shape,
    unless `fresh_outputs` (then every tensor of the output is fresh, in memory the next replay
    does not overwrite, as an eager step's: `_FreshOutputs`).

    A graph reads the weights at the addresses it was captured with. In-place updates
    (`load_state_dict`, an optimizer step) are seen; a change that replaces tensors
    (`layer.quantize()`, `layer.to(...)`, `load_state_dict(assign=True)`, a new routed-expert
    list, a replaced expert module, an int4 layout change) is detected on the next call
    (router, shared expert, buffers, the first and last routed experts' tensors, the expert
    modules and `quant.layout_changes` are checked) and every graph is dropped and captured
    again. The int4
    kernels' copies of the weights (fragment words, scale pairs) are rewritten in place before
    each replay; copies made anew (the stack's `kernel_cache` cleared) get the step captured
    again.

    Args:
        layer: the layer; its backend is used as set (`layer.set_backend(...)`).
        max_tokens: inputs with more tokens run eagerly.
        max_graphs: captured shapes kept (least recently used dropped first).
        capture_after: a shape is captured at its `capture_after`-th capturable call (the
            earlier ones run eagerly): a size seen once (a prefill of odd length) does not pay
            a capture (two warm-up steps and the recording).
        evict: with False, a full cache keeps its graphs and steps of other shapes run
            eagerly (logged once): no shape is captured twice, however many sizes rotate.
        fresh_outputs: every tensor of the returned output is fresh (see above).
        owned: the layer's own `GraphedLayer` (`SimpleMoELayer.set_step_graphs`), called from
            inside the layer's call: it holds the layer weakly (the layer holds it: a strong
            reference back would keep a deleted layer's weights and graphs until the garbage
            collector's next full pass) and runs `layer._forward_in_step_graph` (the
            layer's `forward`, not asking the step-graph policy again), not `layer(...)` (the
            layer's hooks ran in the call that got here: through `__call__` they would run
            twice, an output hook applied twice).
    """

    def __init__(self, layer: nn.Module, max_tokens: int = 512, max_graphs: int = 16, *,
                 capture_after: int = 1, evict: bool = True, fresh_outputs: bool = False,
                 owned: bool = False) -> None:
        self._owned = owned
        self._ref: Any = weakref.ref(layer) if owned else layer
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self.evict = evict
        self.fresh_outputs = fresh_outputs
        self._seen: dict[tuple[object, ...], int] = {}  # calls of shapes not captured yet
        self._full_noted = False
        # key -> (graph, static input, static output, the int4 copies it reads)
        self._graphs: OrderedDict[tuple[object, ...], tuple[
            torch.cuda.CUDAGraph, torch.Tensor, object, frozenset]] = OrderedDict()
        self._uncapturable: set[tuple[object, ...]] = set()
        self._pool: object | None = None
        self._weights: tuple[object, ...] | None = None
        self._modules_cache: tuple[list[nn.Module], tuple[object, ...],
                                   list[tuple[dict[str, Any], str]],
                                   list[dict[str, Any]]] = ([], (), [], [])
        # the stacks the captured steps read (int4 fragment words to refresh before a replay),
        # held weakly: the stack of replaced experts is not kept alive here
        self._stacks: list[weakref.ref] = []
        self.captures = 0
        self.replays = 0

    @property
    def layer(self) -> nn.Module:
        if not self._owned:
            return self._ref
        layer = self._ref()
        if layer is None:
            raise RuntimeError("the layer of this GraphedLayer was deleted")
        return layer

    @layer.setter
    def layer(self, layer: nn.Module) -> None:
        self._owned, self._ref = False, layer
        self.clear()

    def _step(self, x: torch.Tensor):  # -> MoEOutput
        """The layer's step, eagerly: its call, or for the layer's own GraphedLayer its
        `forward` (see `owned`)."""
        layer = self.layer
        return layer._forward_in_step_graph(x) if self._owned else layer(x)

    def weights_signature(self) -> tuple[object, ...]:
        """Addresses of the tensors a captured step reads (O(1) in the number of experts), and
        what decides the kernels it runs (the routing path, `auto`'s resets).

        Runs before every replay, so it reads the modules' parameter and buffer dicts directly
        from a cached list of the layer's submodules outside the routed experts (router,
        shared expert; the layer's own tensors and children are read each time), walked again
        only when a module's children change; with their plain settings (ints, floats, bools,
        strings: the router's `top_k`, `score_func`, `aux_loss_coef`, a strategy's scalars),
        read each time from the attribute names found in that walk. The list holds those
        modules (so their identities stay unique) until the next call after they are
        replaced; `clear()` drops it.
        """
        layer = self.layer
        experts = _attr(layer, "experts")
        try:
            # and the expert modules (a replaced middle expert: one tuple comparison at C
            # speed, +1.2 us with 64 experts, results/cpu/stack_member_check) and the int4
            # layout changes (`set_int4_layout` rewrites codes at their addresses)
            anchors: tuple[object, ...] = ((*_anchors(experts), _members(experts),
                                            layout_changes()) if len(experts) else ())
        except AttributeError:
            anchors = tuple(id(e) for e in experts)
        # the layer's own children and tensors are read each time; its submodules but the
        # experts are cached (not the layer itself: the layer may hold this object)
        top = tuple(id(c) for c in layer._modules.values())
        mods, tree, settings, tables = self._modules_cache
        if tree[:1] != (top,) or tree[1:] != self._module_tree(mods):
            mods = [m for n, c in layer.named_children() if n != "experts"
                    for m in c.modules()]
            tree = (top, *self._module_tree(mods))
            # their plain settings (the router's top_k, score function, aux-loss weight, a
            # strategy's scalars): a graph holds the values it was captured with
            settings = [(vars(m), k) for m in mods for k, v in vars(m).items()
                        if type(v) in _SETTING_TYPES]
            # the dicts of tensors, the layer's own included (their contents read each time)
            tables = [d for m in (layer, *mods) for d in (m._parameters, m._buffers)]
            self._modules_cache = (mods, tree, settings, tables)
        # the tree too: a swapped module without tensors (a routing strategy) changes the
        # step; so do the routing path (`fused_routing`, the gate's kernel) and `auto`'s
        # decisions (`AutoBackend.reset`): what a captured step runs (a change drops every
        # graph, which a key of them would have left in place, holding their memory)
        return (id(experts), len(experts), anchors, tree, tuple(d.get(k) for d, k in settings),
                getattr(layer, "fused_routing", None),
                fused_route.FUSE_GATE,
                getattr(getattr(layer, "expert_backend", None), "resets", None),
                tuple((t.data_ptr(), t.dtype, t.device) for d in tables for t in d.values()
                      if t is not None))

    @staticmethod
    def _module_tree(mods: list[nn.Module]) -> tuple[int, ...]:
        """Identities of every cached module's children (a replaced submodule changes it)."""
        return tuple(id(c) for m in mods for c in m._modules.values())

    def capturable(self, x: torch.Tensor) -> bool:
        """True if a step on `x` can be captured (see the class docstring)."""
        layer = self.layer
        strategy = layer.router.strategy
        tokens = x.numel() // max(x.shape[-1], 1)
        # autocast: a replay would read the weight casts autocast cached outside the graph's
        # pool during the capture (torch.cuda.make_graphed_callables refuses it too)
        return (x.is_cuda and tokens <= self.max_tokens
                and layer.config.capacity_factor is None
                and type(strategy).observe is RoutingStrategy.observe
                and not torch.is_autocast_enabled(x.device.type)
                and not (torch.is_grad_enabled() and (x.requires_grad or any(
                    p.requires_grad for p in layer.parameters()))))

    def __call__(self, x: torch.Tensor):  # -> MoEOutput
        if not self.capturable(x):
            return self._step(x)
        sig = self.weights_signature()
        if sig != self._weights:
            if self._weights is not None:
                log.info("layer weights were replaced: dropping %d captured step graph(s)",
                         len(self._graphs))
            self.clear()
            self._weights = sig
        key = self._key(x)
        if key in self._uncapturable:
            return self._step(x)
        entry = self._graphs.get(key)
        # int4 copies of weights written in place are rewritten; copies made anew (a cleared
        # kernel cache) are not what the graph reads: capture it again
        if entry is not None and copies_moved(entry[3], self._refresh_derived()):
            del self._graphs[key]
            entry = None
        if entry is None:
            if not self._may_capture(key):
                return self._step(x)
            entry = self._capture(key, x)
            if entry is None:
                return self._step(x)
            after = self.weights_signature()
            if after != sig:  # the warm-up stacked the experts (re-pointing their tensors):
                # this graph reads the new addresses, any other the old ones
                for k in [k for k in self._graphs if k != key]:
                    del self._graphs[k]
                self._weights = after
        else:
            self._graphs.move_to_end(key)
            entry[1].copy_(x)
        return self._replay(entry)

    def _replay_held(self, x: torch.Tensor):  # -> MoEOutput | None
        """The layer's own step (`SimpleMoELayer.forward`, policy 'auto'): replays the graph
        of `x`'s shape if one is held and still reads the layer's tensors, else returns None
        (the layer then calls this object, which captures the shape again or runs it
        eagerly). The layer has checked the rest of `capturable`'s conditions (a CUDA input,
        grad mode off, no autocast); `max_tokens` and the capacity factor are checked here,
        and a swapped routing strategy changes the weights signature's module tree. One key
        and one weights signature per replay, where the call repeats the layer's checks and
        makes the key twice."""
        key = self._key(x)
        entry = self._graphs.get(key)
        if (entry is None or x.numel() > self.max_tokens * x.shape[-1]
                or self.layer.config.capacity_factor is not None
                or self.weights_signature() != self._weights
                or copies_moved(entry[3], self._refresh_derived())):
            return None
        self._graphs.move_to_end(key)
        entry[1].copy_(x)
        return self._replay(entry)

    def _replay(self, entry: tuple[torch.cuda.CUDAGraph, torch.Tensor, Any, frozenset]):
        """Replays a held graph whose static input holds the step's tokens; its output."""
        graph, _, out, _ = entry
        graph.replay()
        self.replays += 1
        if isinstance(out, _FreshOutputs):
            return out.fresh()
        return dataclasses.replace(out, hidden_states=out.hidden_states.clone())

    def _key(self, x: torch.Tensor) -> tuple[object, ...]:
        return (tuple(x.shape), x.dtype, x.device, self.layer.backend_name,
                torch.is_inference_mode_enabled())

    def holds(self, x: torch.Tensor) -> bool:
        """Whether a step on `x` has a captured graph now (it may still be captured again,
        if the layer's tensors were replaced since)."""
        return self._key(x) in self._graphs

    def _may_capture(self, key: tuple[object, ...]) -> bool:
        """Whether this call of a shape not held captures it (`capture_after`, `evict`)."""
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if seen < self.capture_after:
            return False
        if not self.evict and len(self._graphs) >= self.max_graphs:
            if not self._full_noted:
                log.info("%d step shapes captured, the most kept (max_graphs): steps of other "
                         "shapes run eagerly", len(self._graphs))
                self._full_noted = True
            return False
        self._seen.pop(key, None)
        return True

    def _refresh_derived(self) -> frozenset:
        """`refresh_frag_words` on every stack a captured step reads; their copies' keys and
        addresses."""
        ptrs: frozenset = frozenset()
        for ref in self._stacks:
            st = ref()
            if st is not None:
                ptrs |= refresh_frag_words(st.kernel_cache)
        return ptrs

    def clear(self) -> None:
        """Drops every captured graph (and the module list `weights_signature` keeps)."""
        self._graphs.clear()
        self._uncapturable.clear()
        self._modules_cache = ([], (), [], [])
        self._stacks = []
        self._full_noted = False

    def _capture(self, key: tuple[object, ...], x: torch.Tensor):
        sx = x.clone()
        layer = self.layer
        counts = layer.tokens_per_expert.clone()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # the `auto` backend's counts of steps run (what `wattmoe demo` reports) leave the
        # warm-up and capture runs out, as the loads do
        auto = getattr(layer, "expert_backend", None)
        ran = dict(auto.counts) if isinstance(getattr(auto, "counts", None), dict) else None
        # fresh outputs: their small tensors packed inside the graph (`_FreshOutputs`)
        step: Callable[[], Any] = ((lambda: _FreshOutputs.of(self._step(sx)))
                                   if self.fresh_outputs else (lambda: self._step(sx)))
        try:
            graph, out = _warm_and_capture(step, x.device, self._pool)
        except _Uncapturable as exc:
            log.info("could not capture the layer step for %s: %s; running it eagerly", key, exc)
            self._uncapturable.add(key)
            return None
        finally:  # warm-up and capture steps are not real steps (nor an interrupted one)
            layer.tokens_per_expert.copy_(counts)
            if ran is not None:
                auto.counts.clear()
                auto.counts.update(ran)
        st = existing_stack(layer.experts)  # the one the step used, if it stacked them
        if st is not None and not any(r() is st for r in self._stacks):
            self._stacks.append(weakref.ref(st))
        _remember(self._graphs, key, (graph, sx, out, self._refresh_derived()), self.max_graphs)
        self.captures += 1
        log.info("captured the layer step for input %s %s (%s backend), %d shape(s) held; "
                 "later steps of it replay the graph", tuple(x.shape), x.dtype,
                 layer.backend_name, len(self._graphs))
        return self._graphs[key]


#: output tensors of at most this many bytes share one copy (`_FreshOutputs`): the routing,
#: counts and losses of a decode step; hidden states and larger routing tensors are cloned alone
FRESH_SMALL_BYTES = 1024
#: each tensor in that copy starts at a multiple of this many bytes (vector loads)
FRESH_ALIGN = 16


def output_tensors(out: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a step's output (a dataclass such as `MoEOutput`; dataclasses in it are
    walked), by its dotted path ('routing.logits'). A tensor held by two fields (the aux loss
    of the step and of its routing) appears under both paths."""
    found: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(out):
        v = getattr(out, f.name)
        if isinstance(v, torch.Tensor):
            found[f.name] = v
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            found.update({f"{f.name}.{k}": t for k, t in output_tensors(v).items()})
    return found


class _FreshOutputs:
    """A captured step's output, handed out fresh after each replay, every tensor in memory
    that the next replay does not overwrite. Tensors of more than `FRESH_SMALL_BYTES` (the
    hidden states, a larger step's logits) are each cloned; the small ones (the losses, the
    counts, a decode step's routing), of any dtype, are packed inside the graph into one byte
    buffer (each at a multiple of `FRESH_ALIGN` bytes), cloned once, and handed out as views
    of the clone: after a 1-token replay two clones, one dtype view per dtype and one
    `as_strided` per small tensor. A small tensor kept from every step (a routing trace)
    keeps the step's other small tensors alive (a few KB), never its hidden states or logits
    above the limit. Host time of making them after a 1-token replay on the H200: this 30-32
    us, the same as the small ones in a clone per dtype and the large each (run 140, one
    process); everything in one pack of tensors up to 16 KiB, hidden states included, 20
    against 27 us (run 138; but a kept aux loss kept the step's hidden states alive, and they
    were only 8-byte aligned); a tensor of its own each (`empty_like` and one
    `_foreach_copy_`) 77-82 us, a clone each 75-76 us (run 136). A tensor that appears
    twice (the aux loss of the step and of its routing) stays one tensor. `of` runs inside
    the capture (the packing is part of the graph); the rebuild plan is made once."""

    def __init__(self, buffers: list[torch.Tensor],
                 slots: list[tuple[int, torch.dtype | None, int, tuple[int, ...],
                                   tuple[int, ...]]],
                 dtypes: tuple[torch.dtype, ...],
                 plan: tuple[type, tuple[tuple[str, int, Any], ...]]) -> None:
        # buffers: the large tensors, then (if any tensor is small) the byte pack, last;
        # slots: per tensor (buffer, None, ...) handed out whole, or (pack, dtype, offset in
        # that dtype's elements, shape, strides)
        self.buffers, self.slots, self.dtypes, self.plan = buffers, slots, dtypes, plan

    @classmethod
    def of(cls, out: Any) -> _FreshOutputs:
        unique: list[torch.Tensor] = []
        slot_of: dict[int, int] = {}  # id of an output tensor -> its index in unique
        for t in output_tensors(out).values():
            if id(t) not in slot_of:
                slot_of[id(t)] = len(unique)
                unique.append(t)

        # each field of each dataclass: (name, 0, slot) a tensor, (name, 1, value) kept as
        # it is, (name, 2, plan) a dataclass
        def plan_of(obj: Any) -> tuple[type, tuple[tuple[str, int, Any], ...]]:
            items: list[tuple[str, int, Any]] = []
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                if isinstance(v, torch.Tensor):
                    items.append((f.name, 0, slot_of[id(v)]))
                elif dataclasses.is_dataclass(v) and not isinstance(v, type):
                    items.append((f.name, 2, plan_of(v)))
                else:
                    items.append((f.name, 1, v))
            return type(obj), tuple(items)

        plan = plan_of(out)
        buffers: list[torch.Tensor] = []
        slots: list[tuple[int, torch.dtype | None, int, tuple[int, ...], tuple[int, ...]]] = [
            (0, None, 0, (), ())] * len(unique)
        small: list[int] = []
        for i, t in enumerate(unique):
            if t.numel() * t.element_size() > FRESH_SMALL_BYTES:
                slots[i] = (len(buffers), None, 0, (), ())  # the clone itself
                buffers.append(t)
            else:
                small.append(i)
        parts: list[torch.Tensor] = []
        offset = 0
        zeros = (torch.zeros(FRESH_ALIGN, dtype=torch.uint8, device=unique[small[0]].device)
                 if small else None)
        for i in small:  # each at a multiple of FRESH_ALIGN bytes (so of its element size)
            if offset % FRESH_ALIGN:
                parts.append(zeros[:FRESH_ALIGN - offset % FRESH_ALIGN])  # type: ignore[index]
                offset += FRESH_ALIGN - offset % FRESH_ALIGN
            t = unique[i]
            shape = tuple(t.shape)
            slots[i] = (len(buffers), t.dtype, offset // t.element_size(), shape,
                        _contiguous_strides(shape))
            parts.append(t.contiguous().reshape(-1).view(torch.uint8))
            offset += t.numel() * t.element_size()
        dtypes = tuple(dict.fromkeys(unique[i].dtype for i in small))
        if small:
            if offset % FRESH_ALIGN:  # (a view of the whole pack in each dtype)
                parts.append(zeros[:FRESH_ALIGN - offset % FRESH_ALIGN])  # type: ignore[index]
            buffers.append(torch.cat(parts))
        return cls(buffers, slots, dtypes, plan)

    def fresh(self) -> Any:
        copies = [b.clone() for b in self.buffers]
        typed = {dt: copies[-1].view(dt) for dt in self.dtypes}
        views = [copies[b] if dt is None else typed[dt].as_strided(shape, strides, offset)
                 for b, dt, offset, shape, strides in self.slots]

        def build(plan: tuple[type, tuple[tuple[str, int, Any], ...]]) -> Any:
            kind, items = plan
            return kind(**{name: views[v] if k == 0 else v if k == 1 else build(v)
                           for name, k, v in items})

        return build(self.plan)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, n = [], 1
    for d in reversed(shape):
        strides.append(n)
        n *= max(d, 1)
    return tuple(reversed(strides))


FUSED_GRAPH = register_backend("fused_graph")(GraphedBackend("fused"))
GROUPED_GRAPH = register_backend("grouped_graph")(GraphedBackend("grouped"))
