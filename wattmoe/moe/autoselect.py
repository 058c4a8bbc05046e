"""`auto`: picks an execution backend per step size and records every choice.

The choice depends on the device, the dtype, the stack's shape (E, H, F, form, int4 or not) and
the step's number of assignments, rounded up to a power of two (the bucket). The first step of
a bucket decides, once:

- with a `cost_fn` (the cost model's per-step joules, say), the cheapest candidate by it;
- otherwise by calibration: every candidate runs this very step once to warm up (compile,
  capture) and `repeats` times timed, and the fastest wins. On one device, at the power a
  saturated kernel draws, less time per step is less energy per step; energy itself cannot be
  read per step (NVML's counter moves every ~100 ms).

Calibration times the expert execution, plus, where the layer passes them (`routing_s`), what
routing the step costs each candidate's way: once a bucket's choice is `fused` or
`fused_graph`, the layer routes with `fused_route`'s two kernels
(`SimpleMoELayer.uses_fused_route`), otherwise with the router and `build_dispatch` (torch's
top-k, sort and scatter kernels), and on a small expert shape that difference decides: on the
H200 `tiny` at 1024 tokens, timed on the experts alone, chose `grouped` at 213.9 mJ a step
against 69.8 for `fused` (profile refresh 10, run 139). The layer times both routings once
per bucket, inside the calibration (if timing them raises, the candidates are timed on their
experts alone, logged), and only where routing again changes nothing (a strategy with neither
`observe` nor `selection_bias` of its own, no hooks on the router; the RNG state is restored
after). Such decisions are keyed apart (`ROUTING_TIMED` in the key): a layer of the same shape
that routes torch's way only (a capacity factor, `fused_routing` off, an observing strategy)
does not take a choice made on a saving it never has, nor the other way round.

`auto` is `SimpleMoELayer`'s default backend: on an H200 the reference `loop` spends 2.2-7.5x
the joules per token of the fused path on the OLMoE shape (16384 down to 64 tokens per step,
measured; run 109 in docs/kernels.md), so a layer that names no backend must not run it. Each
layer gets its own `AutoBackend` (`AutoBackend.default()`): its `decisions` and `counts` are
that layer's. The decisions themselves are shared by every default instance of the process
(`SHARED_DECISIONS`): the layers of one shape on one device calibrate once per bucket, and a
layer that takes another's choice records it in its own `decisions` all the same.

`AutoBackend.decisions` holds each decision (the key, the winner, why, every candidate's time
or cost, and the seconds deciding took); `counts` how many steps each backend ran; `last` the
latest decision applied; `deciding_s` the seconds its own decisions took. Every decision is
logged at INFO (`wattmoe -v` shows them) with what calibrating cost: on a CPU (candidates
`loop` and `grouped`) the first step of a bucket runs the experts 8 times (a warm-up and 3
timed runs each; the winner's last run is the step's output): 8-15 steps' time on a 2-core
machine (`wattmoe demo`'s fp32 step 470 ms against 46 ms, bf16 1.86 s against 225 ms; the
tests' tiny shape 12 ms against 1.5 ms; results/cpu/auto_default).

What `auto` runs without deciding:

- with autograd (a step that records gradients for the experts or their input): `loop`, the
  only backend with a backward, as every other backend does. Training neither calibrates nor
  stacks the experts.
- with experts that cannot be stacked (modules other than `Expert` and `QuantizedExpert`, or of
  mixed shapes; a user's own expert put in the list, say): `loop`, which runs any module, as it
  did when it was the default. Recorded with the reason 'unstackable', for this layer alone,
  and for these expert modules: once one is replaced (`layer.experts[i] = ...`), that step size
  decides again (the shared decision, else a calibration), so experts made stackable again run
  a stacked backend without a `reset()`. The steps in between pay no stacking attempt: their
  key comes from the first expert, plus, where that one stacks, a comparison of the expert
  modules' identities with the record's.
- under `torch.compile` (while dynamo traces the layer): `loop`. Timing a candidate there would
  time the compiler, and the compiled graph would keep whatever that chose; `loop` compiles
  everywhere, while `grouped` in fp32 on a CPU does not (torch 2.13's meta kernel of
  `torch._grouped_mm` accepts bf16 only). Recorded once per bucket with the reason 'compiling'.
  Compile a layer with an explicit backend to compile another.

Calibration cannot run inside a CUDA-graph capture (it synchronizes the device): a step of a
bucket not decided yet is refused there with a `ConfigError` (run one step of that size first, as
a capture's warm-up does; `GraphedLayer` runs two before it captures).

Reproducibility: the choice follows measured times, so two processes may choose differently
where two candidates are close (`wattmoe demo`'s bf16 CPU step: loop 204-232 ms, grouped
191-236 ms; 2 of 5 fresh processes chose loop). On a CPU that changes no output: `loop` and
`grouped` gave bit-identical layer outputs in all 282 cases tried (7 shapes, fp32/bf16/fp16,
dense and int4, 1-1500 tokens; torch 2.13; a test keeps checking a few). On CUDA the fused
kernels and the torch GEMMs round differently: a run that must reproduce another bit for bit
names the backend its `decisions` recorded.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from wattmoe.checks import check_positive_int
from wattmoe.errors import ConfigError
from wattmoe.moe.backends import (
    EXPERT_BACKENDS,
    available_backends,
    get_backend,
    loop_backend,
    needs_autograd,
    register_backend,
)
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.fused_route import FUSED_ROUTING_BACKENDS
from wattmoe.moe.stacked import (
    StackError,
    _members,
    head_signature,
    stack_signature,
    stacked_experts,
)

log = logging.getLogger(__name__)

UNSTACKABLE = "unstackable"  # a key's weights where the first expert cannot be stacked

CostFn = Callable[[str, dict[str, object]], float]
"""cost_fn(backend name, step description) -> cost (joules, seconds: lower is better)."""


@dataclass
class Decision:
    """One backend choice for one bucket of steps.

    Attributes:
        key: device, dtype, E, H, F, form, weights ('int4' or dtype) and assignment bucket.
        backend: the chosen backend.
        reason: 'calibrated', 'cost', 'only' (a single candidate), 'compiling' (`loop` while
            `torch.compile` traces the layer) or 'unstackable' (`loop`: experts that cannot
            be stacked); see the module docstring.
        scores: each candidate's median step time in seconds ('calibrated': its experts, plus
            its way of routing where `routing_s` was given) or cost ('cost').
        seconds: wall time the decision took (calibration: every candidate's warm-up and timed
            runs), spent once, in the step that decided.
        routing_s: the routing times added to the calibrated scores ('torch': router and
            `build_dispatch`; 'fused_route': `fused_route`, for the fused candidates); empty
            where none were.
    """

    key: tuple[object, ...]
    backend: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    routing_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["key"] = [str(k) for k in self.key]
        return d

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("routing_s", {})  # pickled before it existed


SHARED_DECISIONS: dict[tuple[object, ...], Decision] = {}
"""Decisions of every `AutoBackend.default()` of this process (each layer's default backend and
the registry's `auto`), by key."""


def bucket(n: int) -> int:
    """n rounded up to a power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


RoutingTimer = Callable[[], tuple[float, float]]
"""A layer's timer of a step's routing: (seconds with the router and `build_dispatch`, seconds
with `fused_route`)."""

#: in a decision's key: its calibration counted each candidate's routing
ROUTING_TIMED = "routing timed"


def _time_routing(timer: RoutingTimer, x: torch.Tensor) -> tuple[float, float] | None:
    """The timer's result, or None (logged) where it raised: the candidates are then timed on
    their experts alone, as before there was a timer (a routing kernel that fails to compile
    or runs out of memory does not fail a step that a non-fused backend can run)."""
    try:
        return timer()
    except Exception as exc:  # (not the exception itself: its traceback holds the step)
        log.warning("auto: timing the step's routings on %s failed (%s: %s); calibrating on "
                    "the experts alone", x.device, type(exc).__name__, exc)
        return None


def median_seconds(fn: Callable[[], object], repeats: int,
                   device: torch.device) -> tuple[float, object]:
    """(median seconds of `repeats` runs of fn after one warm-up run (compile, capture,
    stack), each between device synchronizations; the last run's result)."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _capturing(x: torch.Tensor) -> bool:
    """Whether x's CUDA stream is being captured into a graph (where nothing may sync)."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AutoBackend:
    """Chooses a backend per (device, dtype, shape, assignment bucket); see the module docstring.

    Args:
        candidates: backend names to choose from; None = `available_backends(device, dtype)`.
        cost_fn: ranks candidates without running them; None = calibrate.
        repeats: timed runs per candidate when calibrating.
        shared: decisions to take where this instance has none for a key, and to add its own
            to (other instances of the same candidates, cost function and repeats may share
            it); None: its own decisions only. `default()` shares `SHARED_DECISIONS`.
    """

    def __init__(
        self,
        candidates: Sequence[str] | None = None,
        cost_fn: CostFn | None = None,
        repeats: int = 3,
        shared: dict[tuple[object, ...], Decision] | None = None,
    ) -> None:
        if candidates is not None:
            unknown = [c for c in candidates if c not in EXPERT_BACKENDS or c == "auto"]
            if unknown:
                raise ConfigError(f"auto: unknown or invalid candidate backends {unknown}")
            if not candidates:  # None means every available backend; [] would mean that too
                raise ConfigError("auto: candidates=[] names no backend to choose from (None: "
                                  "every backend available for the step's device and dtype)")
        check_positive_int("auto: repeats", repeats)
        self.candidates = list(dict.fromkeys(candidates)) if candidates is not None else None
        self.cost_fn = cost_fn
        self.repeats = repeats
        self.shared = shared
        self.table: dict[tuple[object, ...], Decision] = {}
        self.decisions: list[Decision] = []
        self.counts: Counter[str] = Counter()
        self.resets = 0  # times `reset` ran
        self.last: Decision | None = None
        # seconds spent in this instance's own decisions (taking a shared one costs nothing)
        self.deciding_s = 0.0
        self._compiled: dict[tuple[object, ...], Decision] = {}  # 'compiling' records
        self._differs: dict[tuple[object, ...], bool] = {}  # `routing_differs`'s answers
        # the expert modules each 'unstackable' record of a stackable-looking key was made for
        self._unstackable_for: dict[tuple[object, ...], tuple[int, ...]] = {}

    @classmethod
    def default(cls) -> AutoBackend:
        """A new instance choosing among every available backend by calibration, sharing its
        decisions with the other default instances (`SHARED_DECISIONS`): what a layer gets for
        `backend="auto"`, its default."""
        return cls(shared=SHARED_DECISIONS)

    def __getstate__(self) -> dict[str, object]:
        # a pickled (or deep-copied) default instance shares the process's table again, not a
        # frozen copy of the one it was pickled with
        state = dict(self.__dict__)
        if self.shared is SHARED_DECISIONS:
            state["shared"] = "SHARED_DECISIONS"
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        if state.get("shared") == "SHARED_DECISIONS":
            state = {**state, "shared": SHARED_DECISIONS}
        self.__dict__.update(state)
        self.__dict__.setdefault("_unstackable_for", {})  # pickled before it existed
        self.__dict__.setdefault("_differs", {})

    def reset(self) -> None:
        """Forgets all decisions (the next step of each bucket decides again). Its decisions
        leave the shared table too; other instances keep running what they took from it."""
        if self.shared is not None:
            for k, dec in self.table.items():
                if self.shared.get(k) is dec:
                    del self.shared[k]
        self.table.clear()
        self.decisions.clear()
        self.counts.clear()
        self.deciding_s = 0.0
        self._compiled.clear()
        self._unstackable_for.clear()
        self.resets += 1  # (a layer's whole-step graphs, whose signature has it, capture again)
        self.last = None

    def key(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch,
            routing: bool = False) -> tuple[object, ...]:
        return self._key(experts, x, d.token_idx.numel(), routing)

    def _key(self, experts: Sequence[nn.Module], x: torch.Tensor,
             num_assign: int, routing: bool = False) -> tuple[object, ...]:
        # from the first expert, not the stack: the key is computed twice per step (the layer
        # asks `decided` first), and the chosen backend checks the stack itself. O(1) even
        # where the first expert cannot be stacked (no StackError raised and caught per step)
        shape = head_signature(experts)
        if shape is None:  # a first expert of another kind: `loop` alone can run them
            shape = (len(experts), None, None, None, UNSTACKABLE)
        # a decision whose calibration counted the routing is one for layers that count it
        # (another layer of the shape, routing torch's way only, would take a choice made on
        # a saving it never has)
        return (str(x.device), str(x.dtype), *((ROUTING_TIMED,) if routing else ()), *shape,
                bucket(num_assign))

    def _lookup(self, k: tuple[object, ...], experts: Sequence[nn.Module]) -> Decision | None:
        """This instance's decision for k, else the shared table's (then taken and recorded
        as this instance's own). An 'unstackable' record made for other expert modules than
        these (one was replaced since) is dropped: the key decides again."""
        made_for = self._unstackable_for.get(k)
        if made_for is not None and tuple(map(id, _members(experts))) != made_for:
            del self._unstackable_for[k]
            del self.table[k]  # the 'unstackable' record (only `_unstackable` sets made_for)
            log.info("auto: %s: an expert module was replaced since the experts could not be "
                     "stacked; deciding again", _describe(k))
        dec = self.table.get(k)
        if dec is None and self.shared is not None:
            dec = self.shared.get(k)
            if dec is not None:
                self.table[k] = dec
                self.decisions.append(dec)
                log.debug("auto: %s -> %s (decided before for another layer: %s)",
                          _describe(k), dec.backend, dec.reason)
        return dec

    def decided(self, experts: Sequence[nn.Module], x: torch.Tensor,
                num_assign: int, routing: bool = False) -> str | None:
        """The backend already chosen for a step of `num_assign` assignments, or None (no
        decision yet). Lets the layer route with `fused_route` before calling the backend.
        routing: the layer times its routings for this step's decision (`routing_s`)."""
        dec = self._lookup(self._key(experts, x, num_assign, routing), experts)
        return dec.backend if dec is not None else None

    def routing_differs(self, x: torch.Tensor) -> bool:
        """Whether a calibration for steps on x's device and dtype chooses among candidates
        that route differently (a fused one and another): then a layer that can time its two
        routings passes them (`routing_s`), and its decisions are keyed apart."""
        if self.cost_fn is not None:
            return False
        where = (x.device, x.dtype, None if self.candidates is None else tuple(self.candidates))
        differs = self._differs.get(where)  # (asked on every eager step of a layer)
        if differs is None:
            names = [n for n in (self.candidates or available_backends(x.device, x.dtype))
                     if n != "auto"]
            fused = [n in FUSED_ROUTING_BACKENDS for n in names]
            differs = self._differs[where] = any(fused) and not all(fused)
        return differs

    def __call__(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch,
                 routing_s: RoutingTimer | None = None) -> torch.Tensor:
        """Runs the step on the bucket's backend, deciding first if none is chosen.

        Args:
            routing_s: the layer's timer of this step's routing, (seconds with the router and
                `build_dispatch`, seconds with `fused_route`), called only when calibrating
                (its results added to each candidate's time its way; if it raises, the
                candidates are timed on their experts alone); decisions made with one are
                keyed apart from those made without (see the module docstring).
        """
        if needs_autograd(experts, x):
            return loop_backend(experts, x, d)
        if torch.compiler.is_compiling():
            _eager(AutoBackend._note_compiling)(self, experts, x, d.token_idx.numel())
            return loop_backend(experts, x, d)
        k = self._key(experts, x, d.token_idx.numel(), routing_s is not None)
        dec = self._lookup(k, experts)
        out = None
        try:
            if dec is None:  # calibrating: the winner's last timed run computed this very step
                dec, out = self._decide(k, experts, x, d, routing_s)
            if out is None:
                out = get_backend(dec.backend)(experts, x, d)
        except StackError as exc:  # experts `loop` alone can run (one replaced by another kind)
            dec = self._unstackable(k, exc, experts)
            out = loop_backend(experts, x, d)
        self.counts[dec.backend] += 1
        self.last = dec
        return out

    def _unstackable(self, k: tuple[object, ...], exc: StackError,
                     experts: Sequence[nn.Module]) -> Decision:
        """Records `loop` for key k, in this instance alone (other layers of the shape may
        have experts that stack): these experts cannot be stacked, and every other backend
        runs a stack. It holds for these expert modules: once one is replaced, k decides
        again (`_lookup`). A key made from a first expert that cannot be stacked needs no
        such check: it holds while that first expert does, and another key follows it."""
        dec = Decision(k, "loop", "unstackable")
        self.table[k] = dec
        if k[-2] != UNSTACKABLE:
            # identities, not the modules: a record of a key never looked up again (the
            # layer quantized since) would keep every replaced expert and its weights alive
            self._unstackable_for[k] = tuple(map(id, _members(experts)))
        self.decisions.append(dec)
        log.info("auto: %s -> loop: the experts cannot be stacked (%s), which every other "
                 "backend needs", _describe(k), exc)
        return dec

    def _note_compiling(self, experts: Sequence[nn.Module], x: torch.Tensor,
                        num_assign: int) -> None:
        """Records (once per key) and counts a traced step's `loop`. Called through `_eager`,
        outside the compiled graph, so that every compiled step is counted."""
        k = self._key(experts, x, num_assign)
        dec = self._compiled.get(k)
        if dec is None:
            dec = self._compiled[k] = Decision(k, "loop", "compiling")
            self.decisions.append(dec)
            log.info("auto: %s -> loop under torch.compile (a traced step cannot be timed; "
                     "compile with an explicit backend to compile another)", _describe(k))
        self.counts["loop"] += 1
        self.last = dec

    def _decide(
        self, k: tuple[object, ...], experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch,
        routing_s: RoutingTimer | None = None,
    ) -> tuple[Decision, torch.Tensor | None]:
        """Decides for key k on this step; returns the decision and, when calibrating, the
        winner's output for this step (None otherwise)."""
        if k[-2] == UNSTACKABLE:
            stack_signature(experts)  # raises the StackError that says why
        names = self.candidates or available_backends(x.device, x.dtype)
        names = [n for n in names if n != "auto"]
        out = None
        t0 = time.perf_counter()
        if len(names) == 1:
            dec = Decision(k, names[0], "only")
        elif self.cost_fn is not None:
            info = {"device": str(x.device), "dtype": str(x.dtype), "tokens": x.shape[0],
                    "assignments": d.token_idx.numel(), "experts": len(experts),
                    "key": k}
            scores = {n: float(self.cost_fn(n, info)) for n in names}
            dec = Decision(k, min(scores, key=scores.__getitem__), "cost", scores)
        else:
            if _capturing(x):
                raise ConfigError(
                    f"auto has not chosen a backend for {_describe(k)} yet and cannot time "
                    "candidates inside a CUDA-graph capture: run one step of this size before "
                    "capturing (as a capture's warm-up does), or name a backend")
            if routing_s is not None:  # experts that cannot be stacked go to `loop` first
                stacked_experts(experts)
            timed = _time_routing(routing_s, x) if routing_s is not None else None
            extra = ({n: timed[1] if n in FUSED_ROUTING_BACKENDS else timed[0]
                      for n in names} if timed is not None else {})
            runs = self._calibrate(names, experts, x, d, extra)
            scores = {n: t for n, (t, _) in runs.items()}
            dec = Decision(k, min(scores, key=scores.__getitem__), "calibrated", scores,
                           routing_s={"torch": timed[0], "fused_route": timed[1]}
                           if timed is not None else {})
            out = runs[dec.backend][1]
        dec.seconds = time.perf_counter() - t0
        self.deciding_s += dec.seconds
        self.table[k] = dec
        self.decisions.append(dec)
        if self.shared is not None:
            self.shared[k] = dec
        if dec.reason == "calibrated":
            log.info("auto: %s -> %s, calibrated in %.3g s, once for this bucket (median step "
                     "%s%s; fastest wins)", _describe(k), dec.backend, dec.seconds,
                     ", ".join(f"{n} {v * 1e3:.3g} ms" for n, v in scores.items()),
                     "" if not dec.routing_s else ", each with its routing: " + ", ".join(
                         f"{n} {v * 1e3:.3g} ms" for n, v in dec.routing_s.items()))
        else:
            log.info("auto: %s -> %s (%s %s)", _describe(k), dec.backend, dec.reason,
                     {n: f"{v:.3g}" for n, v in dec.scores.items()})
        return dec, out

    def _calibrate(self, names: list[str], experts: Sequence[nn.Module], x: torch.Tensor,
                   d: Dispatch, extra: dict[str, float] | None = None,
                   ) -> dict[str, tuple[float, torch.Tensor | None]]:
        """Times every candidate (`_time`, plus its `extra` seconds: its routing); one that
        runs out of device memory scores inf
        (logged), unless all do (then that error is raised). A graphed candidate's graphs
        captured here are dropped as soon as another candidate is faster, and all of them if
        calibrating raises (`GraphedBackend.drop`: a graph kept holds the memory its step
        allocated, e.g. a `grouped_graph` int4 step's dequantized weights), so that only the
        winner's stay."""
        runs: dict[str, tuple[float, torch.Tensor | None]] = {}
        captured: dict[str, frozenset] = {}
        oom = ""
        best: str | None = None
        try:
            for n in dict.fromkeys(names):
                fn = get_backend(n)
                before = fn.captured() if hasattr(fn, "captured") else None
                try:
                    t, out = self._time(n, experts, x, d)
                    runs[n] = (t + (extra or {}).get(n, 0.0), out)
                except torch.OutOfMemoryError as exc:
                    oom = str(exc)  # not the exception: its traceback holds the step's tensors
                    runs[n] = (math.inf, None)
                    log.warning("auto: candidate %s ran out of device memory on %s (%d tokens); "
                                "choosing among the others", n, x.device, x.shape[0])
                finally:  # (what it captured before raising too)
                    if before is not None:
                        captured[n] = fn.captured() - before
                if best is None or runs[n][0] < runs[best][0]:
                    best, loser = n, best
                else:
                    loser = n
                if loser is not None and loser in captured:
                    get_backend(loser).drop(captured.pop(loser))
            if all(math.isinf(t) for t, _ in runs.values()):
                raise torch.OutOfMemoryError(oom)
        except BaseException:
            for n, keys in captured.items():
                get_backend(n).drop(keys)
            raise
        return runs

    def _time(self, name: str, experts: Sequence[nn.Module], x: torch.Tensor,
              d: Dispatch) -> tuple[float, torch.Tensor]:
        """(median seconds of `repeats` timed runs after a warm-up, the last run's output)."""
        fn = get_backend(name)
        return median_seconds(lambda: fn(experts, x, d), self.repeats, x.device)

    def records(self) -> list[dict[str, object]]:
        """Every decision so far as plain dicts (for JSON)."""
        return [dec.as_dict() for dec in self.decisions]


_EAGER: dict[Callable[..., object], Callable[..., object]] = {}


def _eager(fn: Callable[..., object]) -> Callable[..., object]:
    """fn wrapped by `torch.compiler.disable` (runs eagerly, a graph break, when a compiled
    graph reaches it), wrapped on first use: the wrapper imports dynamo, 2.6 s that an import
    of wattmoe.moe must not pay."""
    wrapped = _EAGER.get(fn)
    if wrapped is None:
        wrapped = _EAGER[fn] = torch.compiler.disable(fn)
    return wrapped


def _describe(k: tuple[object, ...]) -> str:
    """A key as a log line says it: 'cpu torch.float32 E8 H64 F128 swiglu weights
    torch.float32, bucket 64 assignments' (with ' (routing timed)' for `ROUTING_TIMED`)."""
    timed = len(k) == 9 and k[2] == ROUTING_TIMED
    if timed:
        k = (*k[:2], *k[3:])
    if len(k) != 8:
        return str(k)
    dev, dt, e, h, f, form, weights, b = k
    tail = " (routing timed)" if timed else ""
    if weights == UNSTACKABLE:
        return f"{dev} {dt} E{e} experts that cannot be stacked, bucket {b} assignments{tail}"
    return f"{dev} {dt} E{e} H{h} F{f} {form} weights {weights}, bucket {b} assignments{tail}"


AUTO = register_backend("auto")(AutoBackend.default())
