"""`SimpleMoELayer`: router, sorted dispatch, experts, weighted combine.

The experts run on the `auto` backend unless the layer names another: it chooses per device,
dtype, shape and step size, once, and records each choice (`autoselect.py`; why it is the
default there). `loop` is the reference, to be named where that is what is wanted.

With the `fused` and `fused_graph` expert backends, no capacity factor and no autograd, routing
and dispatch run as two Triton kernels (`fused_route`) instead of ~25 small torch kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.int4_layout import INT4_LAYOUTS, fused_layouts, halves_whole
from wattmoe.moe.autoselect import AutoBackend, median_seconds
from wattmoe.moe.backends import available_backends, get_backend, needs_autograd
from wattmoe.moe.base import MoEConfig, resolve_dtype, seeded
from wattmoe.moe.dispatch import build_dispatch, check_finite_rows
from wattmoe.moe.expert import Expert
from wattmoe.moe.fused_route import FUSED_ROUTING_BACKENDS, fused_route, fused_route_available
from wattmoe.moe.quant import (
    QuantizedExpert,
    int4_group_size,
    layout_changes,
    pair_group_size,
    quantize_expert,
)
from wattmoe.moe.router import AdaptiveRouter, RouterOutput, RoutingStrategy
from wattmoe.moe.stacked import _members, quantize_experts, relayout_stack

log = logging.getLogger(__name__)

#: the layer backends whose steps may run the fused int4 kernels, for which the 'auto' int4
#: layout stores the codes in their tile order on an sm_90 GPU (`SimpleMoELayer.set_int4_layout`)
TILE_ORDER_BACKENDS = frozenset({"auto", "fused", "fused_graph"})

#: `SimpleMoELayer.int4_layout_policy`'s values: a layout, or 'auto' (the default)
INT4_LAYOUT_POLICIES: tuple[str, ...] = ("auto", *INT4_LAYOUTS)
#: `SimpleMoELayer.set_step_graphs`: 'auto' captures the whole step of the `auto` backend's
#: fused steps on a GPU (`_step_graph_ready`, `forward`), 'off' never
STEP_GRAPH_POLICIES: tuple[str, ...] = ("auto", "off")
#: the step sizes 'auto' captures: steps of up to this many tokens, a shape at its second
#: step (a size seen once does not pay a capture), at most this many shapes per layer
#: (others then run eagerly: no shape is captured twice however many sizes rotate)
STEP_GRAPH_MAX_TOKENS = 512
STEP_GRAPH_CAPTURE_AFTER = 2
STEP_GRAPH_MAX_SHAPES = 16


@dataclass
class MoEOutput:
    """Result of one MoE forward.

    Attributes:
        hidden_states: output with the input's shape.
        aux_loss: scalar load-balancing loss (already scaled by aux_loss_coef).
        expert_counts: [E] int64 token assignments each expert computed.
        routed_counts: [E] int64 assignments before capacity drops.
        dropped: assignments dropped by the capacity factor.
        routing: the router's full decision.
    """

    hidden_states: torch.Tensor
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor
    routed_counts: torch.Tensor
    dropped: int
    routing: RouterOutput



def _backend_for(name: str) -> object:
    """The backend a layer runs for `name`: for `auto` a new `AutoBackend` of its own (its
    decisions and counts are this layer's; the decisions are shared with the other layers),
    else the registered one.

    Raises:
        ConfigError: no backend has that name.
    """
    backend = get_backend(name)  # an unknown name raises here
    return AutoBackend.default() if name == "auto" else backend


def _reads_tiles_in_place(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether the fused int4 kernels run natively on `device` and read the tile order there
    for activations of `dtype` (`fused_triton.reads_tile_order`: sm_90 and bf16/fp16)."""
    from wattmoe.moe import fused_triton  # (imports this module)

    return (fused_triton.reads_tile_order(device, dtype)
            and "fused" in available_backends(device, dtype))


def check_input_dtype(what: str, x: torch.Tensor, dtype: torch.dtype) -> None:
    """Raises a `ShapeError` naming both dtypes unless x has the parameters' dtype (torch
    would say only "expected m1 and m2 to have the same dtype" from inside the router).
    Under autocast for x's device, autocast casts, so any dtype passes."""
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise ShapeError(f"{what} has {dtype} weights and expects {dtype} inputs, got "
                         f"{x.dtype} (convert with x.to({dtype}))")


class SimpleMoELayer(nn.Module):
    """A Mixture-of-Experts feed-forward layer.

    Args:
        config: shape and routing (see `MoEConfig`; presets in `wattmoe.moe.presets`).
        dtype: parameter dtype ('fp32', 'bf16', ...).
        device: where parameters live.
        strategy: routing strategy name or instance (default 'baseline').
        backend: expert execution backend name (`wattmoe.moe.backends`). Default 'auto': the
            backend that calibrates fastest for each step size, chosen on the first step of
            that size and recorded in `expert_backend.decisions` (on an H200 the reference
            'loop' spends 2.2-7.5x the joules per token of the fused path on the OLMoE shape;
            docs/kernels.md, run 109). That first step of a size takes 8-15 steps' time
            on a CPU (logged at INFO). Steps that record autograd (grad mode with trainable
            weights: training, or inference outside `torch.inference_mode()`/`no_grad()`)
            run 'loop' without deciding. Name 'loop' for the reference itself.
        seed: seed for the random weights; None uses torch's global generator.
    """

    # class defaults too: a layer pickled before session 18 has neither attribute (nor,
    # before session 19, the step-graph ones)
    int4_layout_policy = "auto"
    _int4_layout_seen: object = None
    step_graph_policy = "auto"
    _step_graphs: object = None  # the `GraphedLayer` of policy 'auto', made at first use
    _in_step_graph = False  # a step run by that GraphedLayer (its warm-up, capture, eager)

    def __init__(
        self,
        config: MoEConfig,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        strategy: str | RoutingStrategy = "baseline",
        backend: str = "auto",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        dt = resolve_dtype(dtype)
        self.config = config
        self.backend_name = backend
        self._backend = _backend_for(backend)
        # False: always the torch routing path (to measure the fused routing's share)
        self.fused_routing = True
        # how int4 codes are stored: 'auto' (tile order once fused kernels read them on an
        # sm_90 GPU) or a layout pinned by `set_int4_layout`
        self.int4_layout_policy = "auto"
        self._int4_layout_seen: object = None  # what `_auto_int4_layout` last looked at
        with seeded(seed):
            self.router = AdaptiveRouter(
                config.hidden_size, config.num_experts, config.top_k, strategy=strategy,
                score_func=config.score_func, normalize_topk=config.normalize_topk,
                aux_loss_coef=config.aux_loss_coef, dtype=dt, device=device,
            )
            self.experts = nn.ModuleList(
                Expert(config.hidden_size, config.expert_inner_size, config.expert_form, dt, device)
                for _ in range(config.num_experts)
            )
            self.shared_expert = (
                Expert(config.hidden_size, config.shared_size, config.expert_form, dt, device)
                if config.shared_size
                else None
            )
        self.register_buffer(
            "tokens_per_expert", torch.zeros(config.num_experts, dtype=torch.long, device=device),
            persistent=False,
        )

    @property
    def num_experts(self) -> int:
        return self.config.num_experts

    @property
    def expert_backend(self) -> object:
        """What runs the experts: the registered backend `backend_name` names; for `auto`, this
        layer's own `AutoBackend`, whose `decisions` and `counts` say what it chose and ran."""
        return self._backend

    def set_backend(self, name: str) -> None:
        """Runs the experts on backend `name` from the next step (`auto`: a new `AutoBackend`,
        with no decisions of its own yet; it takes those already made for other layers).

        Raises:
            ConfigError: no backend has that name.
        """
        self._backend = _backend_for(name)
        self.backend_name = name
        self._step_graphs = None  # (captured with the backend's choices of before)

    def reset_utilization(self) -> None:
        """Zeroes the running per-expert token counts."""
        self.tokens_per_expert.zero_()

    def quantize(self, group_size: int | None = None) -> SimpleMoELayer:
        """Replaces every routed expert by its packed-int4 `QuantizedExpert`, in place.

        `group_size` left out is the default, `int4_group_size(H, F)`: groups whose halves of
        a row are whole where such a group exists, which the fused int4 kernels need to read
        scale pairs in tile order (`wattmoe.int4_layout.default_group` says why, with the
        H200 measurements), or, where experts are int4 already, their group size. A group
        given that rules pairs out where the default would not is logged (INFO).

        Experts that are int4 already are kept: called again with their group size, this
        quantizes only the dense experts (none: it changes nothing). The original weights are
        not kept, so another group size cannot be had from them, and quantizing the int4
        weights again would compound the error: it is refused.

        Raises:
            ConfigError: some experts are int4 with a group size other than `group_size`; or
                (from `quantize_int4`) a bad group size or a weight that cannot be quantized;
                or, with `group_size` left out, no group divides both widths (an odd width).
            ShapeError: `group_size` does not divide both widths (the message names
                `int4_group_size(H, F)`, the default, which does).
        """
        done = sorted({e.group_size for e in self.experts if isinstance(e, QuantizedExpert)})
        h, f = self.config.hidden_size, self.config.expert_inner_size
        if group_size is None:
            group_size = done[0] if len(done) == 1 else int4_group_size(h, f)
        if done and done != [group_size]:
            have = " and ".join(str(g) for g in done)
            raise ConfigError(
                f"this layer's experts are already quantized to int4 with group size {have}; "
                f"group_size={group_size!r} would quantize their int4 weights again (the "
                "original weights are not kept): build the layer anew and quantize it once "
                "with the group size you want")
        if (any(isinstance(e, Expert) for e in self.experts) and isinstance(group_size, int)
                and group_size > 0 and (h % group_size or f % group_size)):
            try:
                fit = f"int4_group_size({h}, {f}) = {int4_group_size(h, f)}, the default, "
                fit += ("divides both and tiles each half of a row, which the fused int4 "
                        "kernels need for their scale pairs and tile order (pair_group_size)"
                        if pair_group_size(h, f) is not None else "divides both")
            except ConfigError as exc:
                fit = str(exc)
            raise ShapeError(f"int4 group size {group_size} does not divide the experts' widths "
                             f"(hidden {h}, inner {f}); {fit}")
        pair = pair_group_size(h, f)
        if (any(isinstance(e, Expert) for e in self.experts) and pair is not None
                and isinstance(group_size, int) and group_size > 0
                and not halves_whole(h, f, group_size)):
            log.info("int4 groups of %d do not tile each half of a row (hidden %d, inner %d): "
                     "the fused int4 kernels read their scales one by one and their words "
                     "row-major; groups of %d, the default (int4_group_size), would let them "
                     "read scale pairs in tile order", group_size, h, f, pair)
        if all(isinstance(e, Expert) for e in self.experts):  # into a stack: its first build
            self.experts = quantize_experts(self.experts, group_size)  # copies nothing
        else:
            self.experts = nn.ModuleList(
                quantize_expert(e, group_size) if isinstance(e, Expert) else e
                for e in self.experts
            )
        self._int4_layout_seen = None
        # the step graphs' weights signature holds the old expert modules (and so their
        # stack) until the next graphed step: dropped now, as quantizing is to free memory
        self._step_graphs = None
        return self

    def _int4_experts(self) -> list[QuantizedExpert]:
        return [e for e in self.experts if isinstance(e, QuantizedExpert)]

    @property
    def int4_layout(self) -> str | None:
        """'rows' (half-split codes, the format of record) or 'tiles' (the fused int4 kernels'
        tile order, `set_int4_layout`) for an int4 layer; None for a dense one."""
        q = self._int4_experts()
        if not q:
            return None
        return "tiles" if any(e.layout != (None, None) for e in q) else "rows"

    def set_int4_layout(self, layout: str) -> SimpleMoELayer:
        """Stores the int4 experts' packed codes in `layout`, in place, and keeps them so:
        'tiles', the order in which the fused int4 kernels' tile-order entries (`...fpx`: the
        H200 table's and the sm_90 heuristic's) read them, so that those launches read the
        codes themselves instead of a copy: about half the memory of the experts on an sm_90
        GPU (run 118); 'rows', the half-split codes row-major (what `quantize` makes); or
        'auto' (the default policy, `int4_layout_policy`): 'tiles' from the first step on an
        sm_90 GPU (H100, H200) in bf16 or fp16 whose backend may run the fused kernels
        (`auto`, `fused`, `fused_graph`; not a training step, not inside a CUDA-graph
        capture), where the kernels read some matrix of the shape in tile order, and for an
        expert module replaced later; elsewhere the codes stay as they are. 'auto' changes
        nothing now; 'rows' and 'tiles' pin the layout.

        Code that reads or writes `Int4Linear.packed` itself sees the stored order: read the
        codes with `Int4Linear.codes()` or the state dict (half-split codes in either layout),
        or pin 'rows'. The loop and grouped backends (and `Int4Linear.weight`) read the codes
        of a layer in tile order through a temporary copy of each matrix per call (slower,
        same results). Launches that read another order keep a copy made from the
        half-split codes, as with 'rows': a K step of 32 bytes (OLMoE's 512-token down
        launch), row-major words, tiles of other rows ($WATTMOE_INT4_TILE_ROWS, per-program
        copies), and every int4 launch off sm_90, whose kernels read half-split codes: there
        'tiles' costs a copy instead of saving one (a warning says so, for a pinned 'tiles').
        The expert stack keeps its tensors (nothing is copied) and drops the kernels' copies;
        CUDA graphs of the layer are captured again.

        Raises:
            ConfigError: layout is not 'auto', 'rows' or 'tiles', or ('rows', 'tiles') the
                layer has no int4 experts.
        """
        if layout not in INT4_LAYOUT_POLICIES:
            raise ConfigError(f"int4 layout {layout!r}: 'rows' (half-split codes, row-major), "
                              "'tiles' (the fused int4 kernels' tile order) or 'auto' (tiles "
                              "where those kernels read them on an sm_90 GPU)")
        if layout == "auto":
            self.int4_layout_policy = "auto"
            self._int4_layout_seen = None
            return self
        q = self._int4_experts()
        if not q:
            raise ConfigError("set_int4_layout needs int4 experts: call quantize() first")
        self._store_int4_layout(q, layout)
        self.int4_layout_policy = layout
        cfg, dev = self.config, q[0].up_proj.packed.device
        if layout == "tiles" and self.int4_layout == "rows":
            log.warning("int4 layout 'tiles': the fused int4 kernels read no matrix of this "
                        "shape in tile order (hidden %d, inner %d, groups of %d: "
                        "`int4_layout.tile_layout`), so the codes stay row-major",
                        cfg.hidden_size, cfg.expert_inner_size, q[0].group_size)
        elif layout == "tiles" and dev.type == "cuda" and not _reads_tiles_in_place(
                dev, q[0].dtype):
            log.warning("int4 layout 'tiles' on %s computing in %s: the fused int4 kernels "
                        "read tile order only on sm_90 in bf16/fp16, elsewhere half-split "
                        "codes, so they keep a copy of them made from the tiles (more memory, "
                        "not less); 'rows' needs none there", dev, q[0].dtype)
        return self

    def set_step_graphs(self, policy: str) -> SimpleMoELayer:
        """Whether steps of the `auto` backend are captured whole in CUDA graphs.

        'auto' (the default): on a GPU, an evaluation step (grad mode off: `torch.no_grad()`
        or `torch.inference_mode()`; not training mode, not under autocast, not traced by
        torch.compile, not inside a capture of the caller's) of at most
        `STEP_GRAPH_MAX_TOKENS` tokens whose experts `auto` runs on a fused backend is
        captured at its second step of that shape (router, dispatch, experts, combine: one
        launch per step; `graphs.GraphedLayer`) and replayed from then on; at most
        `STEP_GRAPH_MAX_SHAPES` shapes, after which other shapes run eagerly. Decode steps are
        host-bound: on the H200, 1-token steps spent 16-67% fewer joules than with this off
        (OLMoE, Qwen3-30B-A3B, DeepSeek-V3, bf16 and int4; run 136, docs/kernels.md), 8-32
        token steps up to 35% fewer; GPU-bound steps (DeepSeek-V3 at 8-512 tokens) the same
        within 1%. The output is an eager step's: every tensor fresh, in memory the next
        replay does not touch (`graphs._FreshOutputs`: tensors over 1 KiB copied each, the
        small ones sharing one copy). A step with a capacity factor or a
        routing strategy with side effects runs eagerly. The graphs are captured again when
        the layer's tensors are replaced, its routing path (`fused_routing`) changes or its
        `AutoBackend` is reset.
        'off': every step eagerly. An explicitly named backend never captures the whole step
        (wrap the layer in `GraphedLayer` for that).

        Raises:
            ConfigError: policy is not 'auto' or 'off'.
        """
        if policy not in STEP_GRAPH_POLICIES:
            raise ConfigError(f"step graphs {policy!r}: 'auto' (the auto backend's fused "
                              "steps captured whole on a GPU) or 'off'")
        self.step_graph_policy = policy
        if policy == "off":
            self._step_graphs = None  # (their memory goes back to the caching allocator)
        return self

    @property
    def step_graphs(self) -> object:
        """The `GraphedLayer` that captures this layer's steps under policy 'auto' (its
        `captures` and `replays` count them), or None before its first step."""
        return self._step_graphs

    def _step_graph_ready(self, tokens: torch.Tensor) -> bool:
        """The cheap conditions of policy 'auto' (see `set_step_graphs`): a GPU evaluation
        step of the `auto` backend, small enough, not run by the layer's own GraphedLayer,
        not traced, not inside a capture. `forward` adds: a shape the GraphedLayer holds a
        graph of (a replay asks `auto` nothing), or one `auto` runs on a fused backend; the
        GraphedLayer checks the rest (capacity factor, strategy, autograd)."""
        # grad mode off (no_grad, inference_mode): a replay records nothing for autograd, so
        # a step whose input or weights want gradients must run eagerly; autocast: a replay
        # would read weight casts cached outside the graph's memory
        return (tokens.is_cuda and not self._in_step_graph and not self.training
                and self.backend_name == "auto" and tokens.shape[0] <= STEP_GRAPH_MAX_TOKENS
                and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled(tokens.device.type)
                and not torch.compiler.is_compiling()
                and not torch.cuda.is_current_stream_capturing())

    def _run_step_graph(self, x: torch.Tensor) -> MoEOutput:
        from wattmoe.moe.graphs import GraphedLayer  # (imports this module's dependencies)

        runner = self._step_graphs
        if runner is None:
            runner = self._step_graphs = GraphedLayer(
                self, max_tokens=STEP_GRAPH_MAX_TOKENS, max_graphs=STEP_GRAPH_MAX_SHAPES,
                capture_after=STEP_GRAPH_CAPTURE_AFTER, evict=False, fresh_outputs=True,
                owned=True)
        return runner(x)

    def _forward_in_step_graph(self, x: torch.Tensor) -> MoEOutput:
        """`forward` for the layer's own `GraphedLayer` (its warm-up, capture and eager
        steps): the policy is not asked again (a replay runs no Python)."""
        # (set in __dict__: nn.Module.__setattr__'s checks cost ~8 us a step; no nesting:
        # `_step_graph_ready` refuses while it is set)
        self.__dict__["_in_step_graph"] = True
        try:
            return self.forward(x)
        finally:
            self.__dict__["_in_step_graph"] = False

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # `.to()`, `.cpu()`, `.half()`, ...: graphs of tensors moved elsewhere are dropped
        # (offloading a layer to the CPU frees their GPU memory); a `.to()` that moves
        # nothing keeps them
        gate = self.router.gate.weight
        before = (gate.device, gate.dtype)
        out = super()._apply(fn, recurse)
        gate = self.router.gate.weight
        if (gate.device, gate.dtype) != before:
            self._step_graphs = None
        return out

    def __getstate__(self) -> dict[str, object]:
        # a copy or a pickle of the layer holds no CUDA graphs of this one (they read this
        # layer's tensors): it captures its own
        state = dict(super().__getstate__())
        state.pop("_step_graphs", None)
        state.pop("_in_step_graph", None)
        return state

    def _store_int4_layout(self, q: list[QuantizedExpert], layout: str) -> None:
        from wattmoe.moe import fused_triton  # its tile rows (imports this module)

        before = [e.layout for e in q]
        for e in q:
            e.set_layout(layout == "tiles", fused_triton.tile_rows_in_use())
        if [e.layout for e in q] != before:
            relayout_stack(self.experts)

    def _auto_int4_layout(self, tokens: torch.Tensor) -> None:
        """The 'auto' int4 layout policy (`set_int4_layout`), before a step on tokens. Looks
        again only when the device, dtype, backend, experts list or the process's layout
        changes moved, and for an int4 layer when an expert module was replaced (a tuple
        comparison at C speed, as the stack makes): O(1) per step for a dense layer."""
        if torch.compiler.is_compiling():  # (before the key: no guards on it)
            return
        key = (tokens.device, tokens.dtype, self.backend_name, layout_changes(),
               id(self.experts), len(self.experts))
        seen = self._int4_layout_seen
        if (seen is not None and seen[0] == key
                and (seen[1] is None or seen[1] == tuple(map(id, _members(self.experts))))):
            return
        if tokens.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return  # (the warm-up steps before a capture look)
        if needs_autograd(self.experts, tokens):
            return  # a training step runs `loop`; an evaluation step after it looks
        q = self._int4_experts()
        # the expert modules' identities, for an int4 layer: an expert replaced by a
        # row-major one is stored in tiles like the others (else the stack, of mixed layouts,
        # would refuse every step)
        self._int4_layout_seen = (key, tuple(map(id, _members(self.experts))) if q else None)
        if (not q or len(q) != len(self.experts) or self.backend_name not in TILE_ORDER_BACKENDS
                or not _reads_tiles_in_place(tokens.device, tokens.dtype)):
            return
        from wattmoe.moe import fused_triton

        cfg = self.config
        want = fused_layouts(cfg.hidden_size, cfg.expert_inner_size, cfg.expert_form,
                             q[0].group_size, fused_triton.tile_rows_in_use())
        if want == (None, None) or all(e.layout == want for e in q):
            return
        log.info("int4 layout 'auto': storing the codes of %d experts (hidden %d, inner %d) in "
                 "the fused kernels' tile order on %s, which they read in place (no copy; "
                 "`set_int4_layout('rows')` keeps them row-major)", len(q), cfg.hidden_size,
                 cfg.expert_inner_size, tokens.device)
        self._store_int4_layout(q, "tiles")

    def uses_fused_route(self, tokens: torch.Tensor) -> bool:
        """True if a step on tokens [T, H] routes with `fused_route`.

        That needs `fused_routing` (True unless switched off), a fused expert backend (for
        `auto`: a fused backend already chosen for this step size), no capacity factor
        (capacity keeps the earliest tokens, which needs token order within each expert),
        Triton for the tokens' device, and no autograd through the router or the experts (the
        kernels have no backward).
        """
        return self._fused_route_possible(tokens) and (
            self._step_backend(tokens) in FUSED_ROUTING_BACKENDS)

    def _fused_route_possible(self, tokens: torch.Tensor) -> bool:
        """Every condition of `uses_fused_route` but the backend's."""
        if (not self.fused_routing or self.config.capacity_factor is not None
                or not fused_route_available(tokens)):
            return False
        if torch.is_grad_enabled() and self.router.gate.weight.requires_grad:
            return False
        return not needs_autograd(self.experts, tokens)

    def _times_routing(self, tokens: torch.Tensor, fusable: bool | None = None) -> bool:
        """Whether `auto`'s decision for this step counts each candidate's routing (the
        layer passes it a timer, `_routing_seconds`): its candidates route differently (fused
        ones with `fused_route`, the others with the router and `build_dispatch`), fused
        routing is possible here, and routing the tokens again changes nothing (a strategy
        with neither `observe` nor `selection_bias` of its own, no hooks on the router). The
        same answer for every step of a shape (it is part of `auto`'s key). fusable:
        `_fused_route_possible(tokens)`, where the caller has it."""
        if not isinstance(self._backend, AutoBackend) or tokens.shape[0] == 0:
            return False
        strategy, router = type(self.router.strategy), self.router
        return (strategy.observe is RoutingStrategy.observe
                and strategy.selection_bias is RoutingStrategy.selection_bias
                and not any(m._forward_hooks or m._forward_pre_hooks
                            for m in (router, router.gate))
                and (self._fused_route_possible(tokens) if fusable is None else fusable)
                and self._backend.routing_differs(tokens))

    def _routing_seconds(self, tokens: torch.Tensor) -> tuple[float, float]:
        """(router + `build_dispatch`, `fused_route`): median seconds of `auto`'s `repeats`
        runs each after a warm-up, on this step's tokens (nothing counted in the loads; the
        RNG state as it was)."""
        reps = self._backend.repeats  # type: ignore[union-attr]

        def torch_way() -> object:
            r = self.router(tokens)
            return build_dispatch(r.topk_idx, r.topk_weight, self.num_experts, None)

        cuda = [tokens.device] if tokens.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return (median_seconds(torch_way, reps, tokens.device)[0],
                    median_seconds(lambda: fused_route(self.router, tokens), reps,
                                   tokens.device)[0])

    def _step_backend(self, tokens: torch.Tensor, timed: bool | None = None) -> str | None:
        """The backend that runs a step on tokens: the layer's; for `auto`, `loop` where the
        step needs autograd or is traced by `torch.compile` (what it runs then, without looking
        at the experts), else the one chosen for this step size (None: not chosen yet; the
        step decides). timed: `_times_routing(tokens)`, where the caller has it."""
        if isinstance(self._backend, AutoBackend):
            if needs_autograd(self.experts, tokens) or torch.compiler.is_compiling():
                return "loop"
            return self._backend.decided(self.experts, tokens,
                                         tokens.shape[0] * self.config.top_k,
                                         routing=self._times_routing(tokens)
                                         if timed is None else timed)
        return self.backend_name

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """Runs tokens x [..., H] through the layer.

        Raises:
            ShapeError: x is not [..., H] or not of the parameters' dtype.
            ConfigError: on the CPU, x has NaN/inf values (the router would send such a token
                to arbitrary experts and `tokens_per_expert` would count it), or the routing
                weights do (a NaN gate weight). On a GPU these are not checked: that would
                synchronize the host every step and break CUDA-graph capture.
        """
        h = self.config.hidden_size
        if x.dim() == 0 or x.shape[-1] != h:
            raise ShapeError(f"MoE layer expects inputs [..., {h}], got {tuple(x.shape)}")
        check_input_dtype("MoE layer", x, self.router.gate.weight.dtype)
        shape = x.shape
        tokens = x.reshape(-1, h)
        if tokens.device.type == "cpu":
            check_finite_rows("MoE layer input", tokens, "token", "column")
        graphs = self.step_graph_policy == "auto" and self._step_graph_ready(tokens)
        runner = self._step_graphs
        if graphs and runner is not None:
            # a held shape replays (its graph was captured after the int4 layout policy
            # looked); one whose graph is stale (a replaced expert changes the weights
            # signature) is captured again, the capture's warm-up steps looking again
            out = runner._replay_held(x)  # type: ignore[attr-defined]
            if out is not None:
                return out
            if runner.holds(x):  # type: ignore[attr-defined]
                return self._run_step_graph(x)
        if self.int4_layout_policy == "auto":
            self._auto_int4_layout(tokens)
        # each once a step (in grad mode, `_fused_route_possible` and the step backend walk
        # the experts' parameters)
        fusable = self._fused_route_possible(tokens)
        timed = self._times_routing(tokens, fusable)
        step = self._step_backend(tokens, timed)
        if graphs and step in FUSED_ROUTING_BACKENDS:
            return self._run_step_graph(x)
        if step in FUSED_ROUTING_BACKENDS and fusable:
            # same decisions; adds this step's counts to tokens_per_expert in the kernel
            routing, dispatch = fused_route(self.router, tokens, self.tokens_per_expert)
        else:
            routing = self.router(tokens)
            dispatch = build_dispatch(
                routing.topk_idx, routing.topk_weight, self.num_experts,
                self.config.capacity_factor,
                # each assignment's row (`Dispatch.rowof`) for the fused backends' combine
                # (`fused_route` always gives it); an `AutoBackend` gets the rows until it has
                # chosen for the step size, and always with a capacity factor (drops move the
                # step to the bucket of the rows kept)
                with_rowof=step in FUSED_ROUTING_BACKENDS or (
                    isinstance(self._backend, AutoBackend) and (
                        step is None or self.config.capacity_factor is not None)),
            )
            self.tokens_per_expert += dispatch.counts
        if timed:  # (the timer runs only if `auto` decides now)
            out = self._backend(self.experts, tokens, dispatch,
                                routing_s=lambda: self._routing_seconds(tokens))
        else:
            out = self._backend(self.experts, tokens, dispatch)
        if self.shared_expert is not None:
            out = out + self.shared_expert(tokens)
        return MoEOutput(
            hidden_states=out.reshape(shape),
            aux_loss=routing.aux_loss,
            expert_counts=dispatch.counts,
            routed_counts=dispatch.routed,
            dropped=dispatch.dropped,
            routing=routing,
        )
