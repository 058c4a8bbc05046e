"""Whole-step CUDA graphs: `GraphedLayer`'s options and `SimpleMoELayer`'s 'auto' policy.

A CPU has no CUDA graphs: the tests replace the capture by a `FakeGraph` whose replay re-runs
the captured call into the static output (what a graph computes), and feed tensors that
report `is_cuda` so that the GPU path runs.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import logging
import pickle
import weakref

import pytest
import torch

from wattmoe.errors import ConfigError
from wattmoe.moe import SimpleMoELayer, get_preset
from wattmoe.moe.backends import get_backend
from wattmoe.moe.graphs import (
    FRESH_ALIGN,
    FRESH_SMALL_BYTES,
    GraphedLayer,
    _FreshOutputs,
    output_tensors,
)

from .conftest import FakeGraph


class FakeCuda(torch.Tensor):  # takes the CUDA path on a CPU
    @property
    def is_cuda(self) -> bool:
        return True


def _copy_into(static: object, new: object) -> None:
    """What a replay does: the captured call's results written into its static output."""
    if isinstance(static, _FreshOutputs):  # (its small tensors packed inside the graph)
        for a, b in zip(static.buffers, new.buffers):  # type: ignore[attr-defined]
            a.copy_(b)
        return
    for a, b in zip(tensors(static).values(), tensors(new).values()):
        a.copy_(b)


@pytest.fixture
def fake_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    import wattmoe.moe.graphs as graphs

    def fake_capture(fn, device, pool):
        out = fn()
        return FakeGraph(lambda: _copy_into(out, fn())), out

    monkeypatch.setattr(graphs, "_warm_and_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)


def small_layer(seed: int = 0) -> SimpleMoELayer:
    cfg = get_preset("tiny").replace(num_experts=8, top_k=2)
    return SimpleMoELayer(cfg, seed=seed).eval()


tensors = output_tensors  # every tensor of an output, by its path


def cuda_like(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(FakeCuda)


def test_capture_after_runs_the_first_calls_of_a_shape_eagerly(fake_graphs: None) -> None:
    layer = small_layer()
    layer.set_backend("grouped")
    step = GraphedLayer(layer, capture_after=3)
    x = cuda_like(torch.randn(5, layer.config.hidden_size))
    with torch.no_grad():
        want = layer(x.as_subclass(torch.Tensor)).hidden_states
        for calls, captures in [(1, 0), (2, 0), (3, 1), (4, 1)]:
            out = step(x).hidden_states.as_subclass(torch.Tensor)
            torch.testing.assert_close(out, want)
            assert step.captures == captures, calls
        assert step.replays == 2


def test_a_full_cache_without_eviction_keeps_its_graphs(
        fake_graphs: None, caplog: pytest.LogCaptureFixture) -> None:
    layer = small_layer()
    layer.set_backend("grouped")
    step = GraphedLayer(layer, max_graphs=2, evict=False)
    h = layer.config.hidden_size
    xs = [cuda_like(torch.randn(n, h)) for n in (3, 4, 5, 6)]
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="wattmoe.moe.graphs"):
        for _ in range(3):  # sizes rotating through more shapes than the cache holds
            for x in xs:
                got = step(x).hidden_states.as_subclass(torch.Tensor)
                torch.testing.assert_close(got, layer(x.as_subclass(torch.Tensor)).hidden_states)
    assert step.captures == 2  # the first two shapes, captured once each
    assert step.replays == 2 * 3  # (each captured at its first call, then replayed)
    assert sum("run eagerly" in r.getMessage() for r in caplog.records) == 1


def test_fresh_outputs_are_an_eager_steps_tensors(fake_graphs: None) -> None:
    # the static buffers of a graph are overwritten by the next replay: an output kept from
    # one step (a routing trace, the expert counts of each step for placement) must not change
    layer = small_layer(seed=3)
    layer.set_backend("grouped")
    step = GraphedLayer(layer, fresh_outputs=True)
    h = layer.config.hidden_size
    x1, x2 = torch.randn(6, h), torch.randn(6, h)
    with torch.no_grad():
        eager1, eager2 = layer(x1), layer(x2)
        first = step(cuda_like(x1))
        second = step(cuda_like(x2))
        third = step(cuda_like(x1))
    assert step.captures == 1 and step.replays == 3
    for got, want in [(first, eager1), (second, eager2), (third, eager1)]:
        got_t, want_t = tensors(got), tensors(want)
        assert got_t.keys() == want_t.keys()
        for name, t in want_t.items():
            torch.testing.assert_close(got_t[name].as_subclass(torch.Tensor), t, msg=name)
        assert got.dropped == want.dropped
    # nothing shared between two steps' outputs; a tensor that is one tensor in an eager
    # output (the step's aux loss is its routing's) is one tensor here too
    ptrs = {t.data_ptr() for t in tensors(first).values()}
    assert ptrs.isdisjoint(t.data_ptr() for t in tensors(second).values())
    shared = eager1.aux_loss is eager1.routing.aux_loss
    assert (first.aux_loss is first.routing.aux_loss) == shared


def _as_auto_on_a_gpu(layer: SimpleMoELayer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer as the 'auto' policy sees it on a GPU whose `auto` chose `fused` for every
    size: its steps run `grouped` here (the fused kernels need a GPU or the interpreter)."""
    monkeypatch.setattr(layer, "_step_backend", lambda tokens, timed=None: "fused")
    monkeypatch.setattr(layer, "_fused_route_possible", lambda tokens: False)
    monkeypatch.setattr(layer, "_backend", get_backend("grouped"))


def test_the_auto_policy_captures_the_auto_backends_fused_steps(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = small_layer(seed=1)
    assert layer.step_graph_policy == "auto" and layer.step_graphs is None
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = torch.randn(7, layer.config.hidden_size)
    with torch.no_grad():
        want = layer(x)  # CPU tensors: eager
        assert layer.step_graphs is None
        outs = [layer(cuda_like(x)) for _ in range(3)]
    runner = layer.step_graphs
    assert isinstance(runner, GraphedLayer)
    # the first step of the shape eagerly, captured at the second, replayed at the third
    assert (runner.captures, runner.replays) == (1, 2)
    for out in outs:
        torch.testing.assert_close(out.hidden_states.as_subclass(torch.Tensor),
                                   want.hidden_states)
        torch.testing.assert_close(out.expert_counts.as_subclass(torch.Tensor),
                                   want.expert_counts)
    # every step counted once in the layer's loads (the warm-up and capture runs are not)
    assert layer.tokens_per_expert.sum().item() == 4 * 7 * layer.config.top_k


@pytest.mark.parametrize("case", ["off", "training", "named backend", "too many tokens"])
def test_the_auto_policy_leaves_other_steps_eager(
        case: str, fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = small_layer(seed=1)
    _as_auto_on_a_gpu(layer, monkeypatch)
    tokens = 7
    if case == "off":
        layer.set_step_graphs("off")
    elif case == "training":
        layer.train()
    elif case == "named backend":
        layer.backend_name = "fused"  # as set_backend('fused') names it
    else:
        tokens = 513
    x = cuda_like(torch.randn(tokens, layer.config.hidden_size))
    with torch.no_grad():
        for _ in range(3):
            layer(x)
    assert layer.step_graphs is None


def test_set_step_graphs_names_the_choices_and_off_drops_the_graphs(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = small_layer()
    with pytest.raises(ConfigError, match=r"'auto'.*'off'"):
        layer.set_step_graphs("on")
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = cuda_like(torch.randn(3, layer.config.hidden_size))
    with torch.no_grad():
        layer(x)
        layer(x)
    assert layer.step_graphs is not None and layer.step_graphs.captures == 1
    layer.set_step_graphs("off")
    assert layer.step_graphs is None
    layer.set_step_graphs("auto")
    with torch.no_grad():
        layer(x)
    assert layer.step_graphs is not None and layer.step_graphs.captures == 0


def test_a_copy_or_pickle_of_the_layer_holds_none_of_its_graphs(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = small_layer()
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = cuda_like(torch.randn(3, layer.config.hidden_size))
    with torch.no_grad():
        layer(x)
        layer(x)
    assert layer.step_graphs is not None
    monkeypatch.undo()  # (the instance attributes patched above are not state)
    # (`tokens_per_expert += counts` of FakeCuda steps re-wrapped the buffer as one)
    layer.tokens_per_expert = layer.tokens_per_expert.as_subclass(torch.Tensor)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert other.step_graphs is None and other.step_graph_policy == "auto"
        assert not other._in_step_graph
        y = torch.randn(3, layer.config.hidden_size)
        with torch.no_grad():
            torch.testing.assert_close(other(y).hidden_states, layer(y).hidden_states)


def test_a_layer_pickled_before_step_graphs_still_runs() -> None:
    layer = small_layer()
    for name in ("step_graph_policy", "_step_graphs", "_in_step_graph"):
        layer.__dict__.pop(name, None)
    with torch.no_grad():
        layer(torch.randn(2, layer.config.hidden_size))
    assert layer.step_graph_policy == "auto" and layer.step_graphs is None


@pytest.mark.parametrize("tokens, hidden", [(64, None), (1, 512)])
def test_fresh_outputs_keep_little_beside_themselves(
        fake_graphs: None, tokens: int, hidden: int | None) -> None:
    # an aux loss or the counts kept from every step (a routing trace) must not keep the
    # step's logits and hidden states alive (views of one buffer per dtype did, and one pack
    # of every tensor up to 16 KiB kept a decode step's hidden states): large tensors are
    # copies of their own, small ones share a copy of the small ones (each 16-byte aligned)
    cfg = get_preset("tiny").replace(num_experts=8, top_k=2)
    if hidden is not None:
        cfg = cfg.replace(hidden_size=hidden)
    layer = SimpleMoELayer(cfg, seed=2).eval()
    layer.set_backend("grouped")
    step = GraphedLayer(layer, fresh_outputs=True)
    x = torch.randn(tokens, layer.config.hidden_size)
    with torch.no_grad():
        eager = layer(x)
        step(cuda_like(x))
        out = step(cuda_like(x))
    unique = {id(t): t for t in tensors(eager).values()}.values()
    small = [t.numel() * t.element_size() for t in unique
             if t.numel() * t.element_size() <= FRESH_SMALL_BYTES]
    for name, t in tensors(eager).items():
        have, want = tensors(out)[name].untyped_storage().nbytes(), t.untyped_storage().nbytes()
        if want > FRESH_SMALL_BYTES:
            assert have == want, name
        else:
            assert have <= sum(small) + FRESH_ALIGN * len(small), name
            assert tensors(out)[name].data_ptr() % FRESH_ALIGN == 0, name
    assert tensors(out)["hidden_states"].untyped_storage().nbytes() > FRESH_SMALL_BYTES


def test_a_step_that_wants_gradients_is_not_replayed(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # a replay records nothing for autograd: with a shape captured in evaluation, a later
    # grad-mode step of that shape (input gradients through a frozen layer) ran the graph
    # and its output had no grad_fn
    layer = small_layer(seed=1).requires_grad_(False)
    _as_auto_on_a_gpu(layer, monkeypatch)
    h = layer.config.hidden_size
    with torch.no_grad():
        for _ in range(3):
            layer(cuda_like(torch.randn(4, h)))
    runner = layer.step_graphs
    assert runner is not None and runner.replays == 2
    x = cuda_like(torch.randn(4, h)).requires_grad_()
    out = layer(x)
    assert out.hidden_states.requires_grad and runner.replays == 2
    assert not GraphedLayer(layer).capturable(x)  # a GraphedLayer made by hand too


def test_autocast_steps_are_not_captured(fake_graphs: None) -> None:
    layer = small_layer()
    layer.set_backend("grouped")
    step = GraphedLayer(layer)
    x = cuda_like(torch.randn(4, layer.config.hidden_size))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # (x's device)
        assert not step.capturable(x)
        step(x)
    assert step.captures == 0


def test_a_deleted_layer_is_freed_without_the_collector(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # the layer holds its GraphedLayer: a strong reference back was a cycle, which kept the
    # weights (and on a GPU the graphs' memory) until the collector's next full pass
    import wattmoe.moe.graphs as graphs

    # (a CUDA graph holds no Python reference to the step it recorded)
    monkeypatch.setattr(graphs, "_warm_and_capture",
                        lambda fn, device, pool: (FakeGraph(lambda: None), fn()))
    layer = small_layer()
    _as_auto_on_a_gpu(layer, monkeypatch)
    with torch.no_grad():
        for _ in range(3):
            layer(cuda_like(torch.randn(2, layer.config.hidden_size)))
    assert layer.step_graphs is not None and layer.step_graphs.replays == 2
    monkeypatch.undo()  # (the patched instance attributes refer to the layer)
    gone = weakref.ref(layer)
    gc.disable()
    try:
        del layer
        assert gone() is None
    finally:
        gc.enable()


def test_capturing_leaves_the_auto_backends_counts_of_real_steps(fake_graphs: None,
                                                                 monkeypatch) -> None:
    # `wattmoe demo` reports the steps each backend ran from `AutoBackend.counts`: the
    # capture's two warm-up runs and its recording are not steps
    import wattmoe.moe.graphs as graphs

    monkeypatch.setattr(graphs, "_warm_and_capture",
                        lambda fn, device, pool: (FakeGraph(lambda: None), (fn(), fn(), fn())[0]))
    layer = small_layer()
    step = GraphedLayer(layer, capture_after=2)
    monkeypatch.setattr(step, "capturable", lambda x: True)
    x = torch.randn(3, layer.config.hidden_size)
    with torch.no_grad():
        step(x)  # eager: auto decides and runs
        ran = sum(layer.expert_backend.counts.values())
        loads = layer.tokens_per_expert.clone()
        step(x)  # captured (three runs), then replayed (the fake replay runs nothing)
    assert step.captures == 1 and sum(layer.expert_backend.counts.values()) == ran
    assert torch.equal(layer.tokens_per_expert, loads)


def test_a_changed_routing_path_or_reset_auto_captures_again(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = small_layer()
    step = GraphedLayer(layer)
    monkeypatch.setattr(step, "capturable", lambda x: True)
    x = torch.randn(3, layer.config.hidden_size)
    with torch.no_grad():
        step(x)
        layer.fused_routing = False  # a replay would still route with the fused kernels
        step(x)
        layer.expert_backend.reset()  # the next step of each bucket decides again
        step(x)
    assert step.captures == 3
    # the graphs of before are dropped, not kept beside (a full cache of stale graphs, with
    # evict=False, refused every capture after 16 resets)
    assert len(step._graphs) == 1


def test_the_layers_hooks_run_once_a_step(fake_graphs: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the layer's GraphedLayer runs `forward`: through the layer's call its hooks ran inside
    # too (an output hook doubled the hidden states again)
    layer = small_layer(seed=4)
    _as_auto_on_a_gpu(layer, monkeypatch)
    calls = []

    def double(module, args, out):
        calls.append(1)
        return dataclasses.replace(out, hidden_states=out.hidden_states * 2)

    layer.register_forward_hook(double)
    x = torch.randn(5, layer.config.hidden_size)
    with torch.no_grad():
        layer.set_step_graphs("off")
        want = layer(cuda_like(x)).hidden_states.as_subclass(torch.Tensor)
        layer.set_step_graphs("auto")
        calls.clear()
        for _ in range(3):  # eager, captured, replayed
            got = layer(cuda_like(x)).hidden_states.as_subclass(torch.Tensor)
            torch.testing.assert_close(got, want)
    assert len(calls) == 3 and layer.step_graphs.captures == 1


def test_quantize_and_moves_drop_the_step_graphs(fake_graphs: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the graphs' weights signature held the old expert modules (a dense stack of GBs after
    # quantize()), and a layer moved to the CPU kept its GPU graphs
    layer = small_layer()
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = cuda_like(torch.randn(3, layer.config.hidden_size))

    def graphed() -> bool:
        with torch.no_grad():
            layer(x)
            layer(x)
        return layer.step_graphs is not None

    assert graphed()
    layer.to(torch.float32)  # moves nothing: kept
    assert layer.step_graphs is not None
    layer.quantize()
    assert layer.step_graphs is None
    assert graphed()
    layer.to(torch.bfloat16)
    assert layer.step_graphs is None


@dataclasses.dataclass
class _Inner:
    flags: torch.Tensor
    empty: torch.Tensor
    scalar: torch.Tensor


@dataclasses.dataclass
class _Outer:
    big: torch.Tensor
    half: torch.Tensor
    idx: torch.Tensor
    strided: torch.Tensor
    inner: _Inner
    again: torch.Tensor
    note: str


def test_fresh_outputs_pack_every_small_tensor_into_one_copy() -> None:
    # a decode step's outputs: one clone of a byte pack holding the small tensors of every
    # dtype (each 16-byte aligned), handed out as views with their values, shapes and
    # contiguous strides; large tensors cloned alone; a tensor in two fields stays one
    g = torch.Generator().manual_seed(0)
    scalar = torch.tensor(2.5)
    out = _Outer(
        big=torch.randn(FRESH_SMALL_BYTES // 4 + 1, generator=g),
        half=torch.randn(3, 5, generator=g).to(torch.bfloat16),  # 30 bytes: misaligns
        idx=torch.randint(0, 9, (7, 2), generator=g),
        strided=torch.randn(4, 6, generator=g)[:, ::2],  # not contiguous
        inner=_Inner(flags=torch.tensor([True, False, True]),
                     empty=torch.empty(0, 3, dtype=torch.int32), scalar=scalar),
        again=scalar, note="kept")
    fresh = _FreshOutputs.of(out)
    assert len(fresh.buffers) == 2  # the large tensor, then the pack
    first, second = fresh.fresh(), fresh.fresh()
    for path, t in tensors(out).items():
        got = tensors(first)[path]
        assert got.dtype == t.dtype and got.shape == t.shape, path
        assert got.is_contiguous(), path
        torch.testing.assert_close(got, t, rtol=0, atol=0, msg=path)
        assert got.data_ptr() % FRESH_ALIGN == 0, path
        if t.numel():
            assert got.data_ptr() != t.data_ptr(), path
            assert got.data_ptr() != tensors(second)[path].data_ptr(), path
    small = [p for p, t in tensors(first).items() if p != "big" and t.numel()]
    assert len({tensors(first)[p].untyped_storage().data_ptr() for p in small}) == 1
    assert tensors(first)["big"].untyped_storage().nbytes() == out.big.numel() * 4
    assert first.again is first.inner.scalar and first.note == "kept"
    # the static outputs change at each replay; the copies handed out do not
    out.idx.add_(1)
    fresh.buffers[-1].zero_()
    assert tensors(first)["idx"].sum().item() > 0


def test_a_held_shape_replays_without_the_graphed_layers_call(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # the layer's held shapes take the short path (one key, one weights signature); a stale
    # graph (the layer's tensors replaced) goes through the call again and is recaptured
    layer = small_layer(seed=4)
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = cuda_like(torch.randn(3, layer.config.hidden_size))
    calls = []
    real_call = GraphedLayer.__call__
    monkeypatch.setattr(GraphedLayer, "__call__",
                        lambda self, x: calls.append(1) or real_call(self, x))
    with torch.no_grad():
        want = layer(x.as_subclass(torch.Tensor)).hidden_states
        for _ in range(2):  # eager, then captured: through the call
            layer(x)
        assert len(calls) == 2
        runner = layer.step_graphs
        for _ in range(3):
            got = layer(x).hidden_states.as_subclass(torch.Tensor)
            torch.testing.assert_close(got, want)
        assert len(calls) == 2 and (runner.captures, runner.replays) == (1, 4)
        layer.router.gate.weight = torch.nn.Parameter(layer.router.gate.weight.clone() * 2)
        want = layer(x.as_subclass(torch.Tensor)).hidden_states
        for _ in range(3):  # dropped: eager, captured again, replayed
            got = layer(x).hidden_states.as_subclass(torch.Tensor)
            torch.testing.assert_close(got, want)
    assert len(calls) == 4 and (runner.captures, runner.replays) == (2, 6)


@pytest.mark.parametrize("change", ["capacity factor", "top_k", "aux loss weight",
                                    "max_tokens"])
def test_the_short_path_declines_a_changed_step(
        fake_graphs: None, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    # a held graph replays the settings it was captured with: a capacity factor set since runs
    # eagerly; the router's plain settings (top_k, a knob of energy-aware routing, and the
    # aux-loss weight) recapture; a lowered max_tokens runs the shape eagerly
    layer = small_layer(seed=5)
    _as_auto_on_a_gpu(layer, monkeypatch)
    x = cuda_like(torch.randn(4, layer.config.hidden_size))
    with torch.no_grad():
        for _ in range(3):  # eager, captured, replayed
            layer(x)
        runner = layer.step_graphs
        assert (runner.captures, runner.replays) == (1, 2)
        if change == "capacity factor":
            layer.config = layer.config.replace(capacity_factor=1.0)
        elif change == "top_k":
            layer.router.top_k = 1
        elif change == "aux loss weight":
            layer.router.aux_loss_coef = 0.5
        else:
            runner.max_tokens = 2
        for _ in range(3):
            layer(x)
    if change in ("capacity factor", "max_tokens"):
        assert (runner.captures, runner.replays) == (1, 2)  # eager since
    else:  # dropped, then eager, captured again and replayed
        assert (runner.captures, runner.replays) == (2, 4)
