"""Expert execution backends on CPU: every backend matches `loop`, stacking, auto, graphs."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest
import torch

from wattmoe.errors import ConfigError
from wattmoe.moe import Expert, SimpleMoELayer, build_dispatch, get_preset
from wattmoe.moe.autoselect import AutoBackend, bucket
from wattmoe.moe.backends import EXPERT_BACKENDS, available_backends, get_backend
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.graphs import GraphedBackend, GraphedLayer
from wattmoe.moe.grouped import grouped_mm
from wattmoe.moe.stacked import StackError, invalidate_stack, stacked_experts

from .conftest import FakeGraph

FAST = ["grouped", "fused", "fused_graph", "grouped_graph", "auto"]


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # `fused` on CPU: the torch fallback here (the Triton interpreter has its own test file)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def make_dispatch(kind: str, tokens: int, num_experts: int, top_k: int,
                  gen: torch.Generator, with_rowof: bool = False) -> Dispatch:
    """Routings: uniform, skewed (few experts get most), hot (all on k experts), capacity."""
    if kind == "hot":
        idx = torch.randperm(num_experts, generator=gen)[:top_k].expand(tokens, -1)
    elif kind == "skewed":
        p = 1.0 / torch.arange(1, num_experts + 1).float() ** 2
        idx = torch.multinomial(p.expand(tokens, -1), top_k, generator=gen)
    else:
        idx = torch.rand(tokens, num_experts, generator=gen).topk(top_k, -1).indices
    w = torch.rand(tokens, top_k, generator=gen) + 0.1
    return build_dispatch(idx, w / w.sum(-1, keepdim=True), num_experts,
                          0.5 if kind == "capacity" else None, with_rowof=with_rowof)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def small_layer(form: str = "swiglu", dtype: str = "fp32", seed: int = 0) -> SimpleMoELayer:
    cfg = get_preset("tiny").replace(expert_form=form, num_experts=8, top_k=2)
    return SimpleMoELayer(cfg, dtype=dtype, seed=seed).eval()


def test_registry_and_available() -> None:
    for name in ["loop", *FAST]:
        assert name in EXPERT_BACKENDS
    with pytest.raises(ConfigError, match="unknown expert backend"):
        get_backend("nope")
    cpu = available_backends("cpu", torch.float32)
    assert cpu[0] == "loop" and "auto" not in cpu
    assert "fused" not in cpu and "fused_graph" not in cpu  # no native CPU kernel
    assert ("grouped" in cpu) == hasattr(torch, "_grouped_mm")


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("form", ["swiglu", "relu"])
@pytest.mark.parametrize("kind", ["uniform", "skewed", "hot", "capacity"])
def test_backend_matches_loop_fp32(backend: str, form: str, kind: str,
                                   gen: torch.Generator) -> None:
    layer = small_layer(form)
    d = make_dispatch(kind, 29, 8, 2, gen)
    if kind in ("skewed", "hot"):
        assert (d.counts == 0).any()  # experts with no tokens are part of the test
    x = torch.randn(29, layer.config.hidden_size, generator=gen)
    with torch.no_grad():
        want = get_backend("loop")(layer.experts, x, d)
        got = get_backend(backend)(layer.experts, x, d)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["grouped", "fused"])
def test_backend_matches_loop_bf16_and_int4(backend: str, gen: torch.Generator) -> None:
    cfg = get_preset("olmoe-1b-7b", 1 / 16)  # H=128, F=64, E=64, k=8
    layer = SimpleMoELayer(cfg, dtype="bf16", seed=1).eval()
    x = torch.randn(40, cfg.hidden_size, generator=gen).bfloat16()
    d = make_dispatch("skewed", 40, cfg.num_experts, cfg.top_k, gen)
    with torch.no_grad():
        assert rel_err(get_backend(backend)(layer.experts, x, d),
                       get_backend("loop")(layer.experts, x, d)) < 1e-2
        layer.quantize(group_size=32)
        assert rel_err(get_backend(backend)(layer.experts, x, d),
                       get_backend("loop")(layer.experts, x, d)) < 1e-2


def test_int4_fp32_compute_is_exact_against_loop(gen: torch.Generator) -> None:
    layer = small_layer().quantize(group_size=32)
    x = torch.randn(17, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 17, 8, 2, gen)
    with torch.no_grad():
        want = get_backend("loop")(layer.experts, x, d)
        for name in ("grouped", "fused"):
            torch.testing.assert_close(get_backend(name)(layer.experts, x, d), want,
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["loop", *FAST])
def test_no_assignments_gives_zeros(backend: str) -> None:
    layer = small_layer()
    x = torch.randn(3, layer.config.hidden_size)
    empty = torch.empty(0, dtype=torch.long)
    d = Dispatch(empty, torch.empty(0), torch.zeros(8, dtype=torch.long),
                 torch.zeros(8, dtype=torch.long), 0, None)
    with torch.no_grad():
        assert torch.equal(get_backend(backend)(layer.experts, x, d), torch.zeros_like(x))


@pytest.mark.parametrize("backend", FAST)
def test_layer_forward_with_backend(backend: str, gen: torch.Generator) -> None:
    layer = small_layer(seed=3)
    ref = small_layer(seed=3)
    layer.set_backend(backend)
    x = torch.randn(2, 5, layer.config.hidden_size, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).hidden_states, ref(x).hidden_states,
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_training_falls_back_to_loop_with_gradients(backend: str, gen: torch.Generator) -> None:
    layer = small_layer(seed=4)
    layer.set_backend(backend)
    x = torch.randn(9, layer.config.hidden_size, generator=gen)
    layer(x).hidden_states.square().sum().backward()
    grads = [e.down_proj.weight.grad for e in layer.experts]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("backend", FAST)
def test_training_with_the_first_expert_frozen_gives_the_others_loops_gradients(
        backend: str, gen: torch.Generator) -> None:
    # was: only the first expert's parameters were looked at, so with it frozen every other
    # backend ran its stacked weights and the experts being trained got no gradient at all
    layer, ref = small_layer(seed=4), small_layer(seed=4)
    layer.set_backend(backend)
    ref.set_backend("loop")
    x = torch.randn(32, layer.config.hidden_size, generator=gen)
    for m in (layer, ref):
        m.experts[0].requires_grad_(False)
        m(x).hidden_states.square().sum().backward()
    trained = 0
    for e, (got, want) in enumerate(zip(layer.experts, ref.experts, strict=True)):
        for name, p in got.named_parameters():
            q = dict(want.named_parameters())[name]
            assert (p.grad is None) == (q.grad is None), (e, name)
            if q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad)
                trained += 1
    assert trained > 3  # experts other than the frozen one were routed to and got gradients


# --- stacking -------------------------------------------------------------------------------


def test_stack_shares_storage_and_sees_inplace_updates(gen: torch.Generator) -> None:
    layer = small_layer()
    st = stacked_experts(layer.experts)
    f = layer.config.expert_inner_size
    ex = layer.experts[5]
    assert ex.gate_proj.weight.data_ptr() == st.w13[5, :f].data_ptr()
    assert ex.up_proj.weight.data_ptr() == st.w13[5, f:].data_ptr()
    assert ex.down_proj.weight.data_ptr() == st.w2[5].data_ptr()
    assert stacked_experts(layer.experts) is st  # cached
    x = torch.randn(21, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 21, 8, 2, gen)
    with torch.no_grad():
        ex.down_proj.weight.mul_(3.0)  # in place: the stack sees it without a rebuild
        layer.load_state_dict({k: v * 1.5 for k, v in layer.state_dict().items()})
        torch.testing.assert_close(get_backend("grouped")(layer.experts, x, d),
                                   get_backend("loop")(layer.experts, x, d), rtol=1e-5, atol=1e-6)
    assert stacked_experts(layer.experts) is st


def test_stack_rebuilds_after_quantize_and_dtype_change() -> None:
    layer = small_layer()
    st = stacked_experts(layer.experts)
    layer.to(torch.float16)
    st16 = stacked_experts(layer.experts)
    assert st16 is not st and st16.dtype == torch.float16 and st16.w13.dtype == torch.float16
    layer.quantize(group_size=32)
    sq = stacked_experts(layer.experts)
    assert sq.quantized and sq.q13.dtype == torch.uint8 and sq.group_size == 32
    assert sq.q13.shape == (8, 2 * layer.config.expert_inner_size, layer.config.hidden_size // 2)
    assert layer.experts[2].up_proj.packed.data_ptr() == sq.q13[2, sq.inner_size:].data_ptr()
    assert sq.weight_bytes() < st16.weight_bytes()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int4_layer_to_dtype_keeps_scales_and_the_stack(dtype: torch.dtype,
                                                        gen: torch.Generator) -> None:
    # .to(dtype) must not round the fp16 group scales (bf16 loses 3 bits) nor replace them:
    # a stack built before would keep reading the old ones (stale after load_state_dict)
    layer = small_layer().quantize(group_size=32)
    x = torch.randn(21, layer.config.hidden_size, generator=gen)
    scales = layer.experts[3].up_proj.scales.clone()
    layer.set_backend("grouped")
    with torch.no_grad():
        layer(x)  # builds the stack
        layer.to(dtype)
        up = layer.experts[3].up_proj
        assert up.scales.dtype == torch.float16 and torch.equal(up.scales, scales)
        assert layer.experts[3].dtype == dtype  # computes in the layer's new dtype
        layer.load_state_dict({k: v * 2 if k.endswith("scales") else v
                               for k, v in layer.state_dict().items()})
        got = layer(x.to(dtype)).hidden_states
        layer.set_backend("loop")
        want = layer(x.to(dtype)).hidden_states
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert stacked_experts(layer.experts).dtype == dtype


def test_replaced_middle_expert_needs_verify_or_invalidate() -> None:
    layer = small_layer()
    st = stacked_experts(layer.experts)
    w = layer.experts[3].up_proj.weight
    w.data = w.data.clone() * 2  # replaces the tensor of a middle expert
    assert stacked_experts(layer.experts) is st  # O(1) check: not noticed
    rebuilt = stacked_experts(layer.experts, verify=True)
    assert rebuilt is not st
    f = layer.config.expert_inner_size
    torch.testing.assert_close(rebuilt.w13[3, f:], layer.experts[3].up_proj.weight)
    invalidate_stack(layer.experts)
    assert stacked_experts(layer.experts) is not rebuilt


def test_replaced_middle_expert_module_rebuilds_the_stack(gen: torch.Generator) -> None:
    # `layer.experts[i] = ...`: the loop always ran the new expert; with `auto` the default, a
    # layer that names no backend runs a stack, which kept the old expert's weights (a wrong
    # output without a word) when the replaced one was neither the first nor the last
    layer = small_layer()
    x = torch.randn(40, layer.config.hidden_size, generator=gen)
    layer.set_backend("grouped")
    with torch.no_grad():
        layer(x)
        st = stacked_experts(layer.experts)
        layer.experts[3] = Expert(layer.config.hidden_size, layer.config.expert_inner_size)
        got = layer(x).hidden_states
        assert stacked_experts(layer.experts) is not st
        layer.set_backend("loop")
        torch.testing.assert_close(got, layer(x).hidden_states, rtol=1e-5, atol=1e-6)


def test_stack_of_plain_list_and_errors() -> None:
    experts = [Expert(16, 32) for _ in range(3)]
    st = stacked_experts(experts)
    assert stacked_experts(experts) is st and st.w13.shape == (3, 64, 16)
    with pytest.raises(StackError):  # a ConfigError that `auto` answers with `loop`
        stacked_experts([Expert(16, 32), Expert(16, 64)])
    with pytest.raises(StackError):
        stacked_experts([])
    assert issubclass(StackError, ConfigError)


def test_grouped_mm_falls_back_on_layouts_torch_refuses(gen: torch.Generator) -> None:
    a = torch.randn(7, 6, generator=gen)  # 6 fp32 = 24 bytes: not a multiple of 16
    b = torch.randn(3, 6, 5, generator=gen)
    offs = torch.tensor([2, 2, 7], dtype=torch.int32)
    out = grouped_mm(a, b, offs)
    torch.testing.assert_close(out[:2], a[:2] @ b[0])
    torch.testing.assert_close(out[2:], a[2:] @ b[2])


# --- auto and graphs ------------------------------------------------------------------------


def test_bucket() -> None:
    assert [bucket(n) for n in (0, 1, 2, 3, 64, 65)] == [0, 1, 2, 4, 64, 128]


def test_auto_calibrates_once_per_bucket_and_records(gen: torch.Generator) -> None:
    auto = AutoBackend(candidates=["loop", "grouped"], repeats=1)
    layer = small_layer()
    x = torch.randn(16, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 16, 8, 2, gen)
    with torch.no_grad():
        want = get_backend("loop")(layer.experts, x, d)
        for _ in range(3):
            torch.testing.assert_close(auto(layer.experts, x, d), want, rtol=1e-5, atol=1e-6)
    assert len(auto.decisions) == 1
    dec = auto.decisions[0]
    assert dec.reason == "calibrated" and set(dec.scores) == {"loop", "grouped"}
    assert dec.key[-1] == 32 and auto.last is dec
    assert sum(auto.counts.values()) == 3 and auto.counts[dec.backend] == 3
    assert auto.records()[0]["backend"] == dec.backend
    d2 = make_dispatch("uniform", 40, 8, 2, gen)  # 80 assignments: another bucket
    with torch.no_grad():
        auto(layer.experts, torch.randn(40, layer.config.hidden_size, generator=gen), d2)
    assert len(auto.decisions) == 2
    auto.reset()
    assert not auto.decisions and auto.last is None


class _Candidate:
    """A candidate backend for `auto`'s tests: runs `loop`, or raises; holds 'graphs' (one per
    call, as a graphed backend would capture) that `drop` removes."""

    def __init__(self, oom: bool = False, slow: bool = False) -> None:
        self.oom, self.slow, self.graphs, self.calls = oom, slow, set(), 0

    def __call__(self, experts, x, d):
        self.calls += 1
        if self.oom:
            raise torch.OutOfMemoryError("CUDA out of memory (a test's)")
        self.graphs.add(self.calls)
        if self.slow:
            time.sleep(0.05)  # (the loop on these sizes takes ~1 ms)
        return get_backend("loop")(experts, x, d)

    def captured(self) -> frozenset:
        return frozenset(self.graphs)

    def drop(self, keys) -> None:
        self.graphs -= set(keys)


def test_auto_calibration_survives_a_candidate_out_of_memory(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setitem(EXPERT_BACKENDS, "t_oom", _Candidate(oom=True))
    auto = AutoBackend(candidates=["t_oom", "loop"], repeats=1)
    layer = small_layer()
    x = torch.randn(16, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 16, 8, 2, gen)
    with torch.no_grad(), caplog.at_level("WARNING", logger="wattmoe.moe.autoselect"):
        out = auto(layer.experts, x, d)
        torch.testing.assert_close(out, get_backend("loop")(layer.experts, x, d))
    assert auto.last.backend == "loop" and auto.last.scores["t_oom"] == float("inf")
    assert "t_oom ran out of device memory" in caplog.text
    monkeypatch.setitem(EXPERT_BACKENDS, "t_oom2", _Candidate(oom=True))
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError):
        AutoBackend(candidates=["t_oom", "t_oom2"], repeats=1)(layer.experts, x, d)


def test_auto_drops_the_graphs_its_calibration_captured_for_losers(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    slow, fast = _Candidate(slow=True), _Candidate()
    fast.graphs.add("an earlier step's")
    monkeypatch.setitem(EXPERT_BACKENDS, "t_slow", slow)
    monkeypatch.setitem(EXPERT_BACKENDS, "t_fast", fast)
    auto = AutoBackend(candidates=["t_slow", "t_fast"], repeats=3)
    layer = small_layer()
    slow.graphs.add("an earlier step's")
    with torch.no_grad():
        auto(layer.experts, torch.randn(16, layer.config.hidden_size, generator=gen),
             make_dispatch("uniform", 16, 8, 2, gen))
    assert auto.last.backend == "t_fast"
    assert slow.graphs == {"an earlier step's"}  # what the calibration captured, dropped
    assert fast.graphs == {"an earlier step's", 1, 2, 3, 4}  # the winner keeps its graphs


def test_auto_adds_each_candidates_routing_when_calibrating(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fused candidate routes with fused_route, the others with the router and
    # build_dispatch: where routing differs more than the experts do, the step's total decides
    # (and the loser's calibration graphs go, by the same totals)
    slow_fused, fast = _Candidate(slow=True), _Candidate()
    monkeypatch.setitem(EXPERT_BACKENDS, "fused", slow_fused)
    monkeypatch.setitem(EXPERT_BACKENDS, "t_fast", fast)
    layer = small_layer()
    x = torch.randn(16, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 16, 8, 2, gen)
    with torch.no_grad():
        plain = AutoBackend(candidates=["fused", "t_fast"], repeats=1)
        plain(layer.experts, x, d)
        routed = AutoBackend(candidates=["fused", "t_fast"], repeats=1)
        routed(layer.experts, x, d, routing_s=lambda: (1.0, 0.001))
    assert plain.last.backend == "t_fast" and plain.last.routing_s == {}
    dec = routed.last
    assert dec.backend == "fused"
    assert dec.routing_s == {"torch": 1.0, "fused_route": 0.001}
    assert dec.scores["t_fast"] >= 1.0 and dec.scores["fused"] < 1.0
    # each calibration's loser drops what it captured: plain's fused {1, 2}, routed's t_fast
    # {3, 4}
    assert fast.graphs == {1, 2} and slow_fused.graphs == {3, 4}
    from wattmoe.moe.autoselect import _describe

    assert dec.key[2] == "routing timed" and _describe(dec.key).endswith(
        "bucket 32 assignments (routing timed)")
    assert AutoBackend(candidates=["fused", "loop"]).routing_differs(x)
    assert not AutoBackend(candidates=["loop", "grouped"]).routing_differs(x)
    assert not AutoBackend(candidates=["fused", "fused_graph"]).routing_differs(x)
    assert not AutoBackend(candidates=["fused", "loop"],
                           cost_fn=lambda n, info: 1.0).routing_differs(x)


def test_auto_keys_routed_decisions_apart_and_survives_a_failing_timer(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # a layer that routes torch's way only must not take a choice made on fused routing's
    # saving (nor the other way round); a timer that raises leaves the experts' times alone
    import pickle

    monkeypatch.setitem(EXPERT_BACKENDS, "fused", _Candidate(slow=True))
    monkeypatch.setitem(EXPERT_BACKENDS, "t_fast", _Candidate())
    shared: dict = {}
    layer = small_layer()
    x = torch.randn(16, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 16, 8, 2, gen)
    with torch.no_grad():
        a = AutoBackend(candidates=["fused", "t_fast"], repeats=1, shared=shared)
        a(layer.experts, x, d, routing_s=lambda: (1.0, 0.001))
        b = AutoBackend(candidates=["fused", "t_fast"], repeats=1, shared=shared)
        b(layer.experts, x, d)  # decides on its own
        assert (a.last.backend, b.last.backend) == ("fused", "t_fast")
        assert len(shared) == 2 and b.last.routing_s == {}
        assert b.decided(layer.experts, x, 32) == "t_fast"
        assert b.decided(layer.experts, x, 32, routing=True) == "fused"

        def broken() -> tuple[float, float]:
            raise RuntimeError("a routing kernel that does not compile")

        c = AutoBackend(candidates=["fused", "t_fast"], repeats=1)
        with caplog.at_level("WARNING", logger="wattmoe.moe.autoselect"):
            out = c(layer.experts, x, d, routing_s=broken)
        torch.testing.assert_close(out, get_backend("loop")(layer.experts, x, d))
    assert c.last.backend == "t_fast" and c.last.routing_s == {}
    assert "calibrating on the experts alone" in caplog.text
    # a decision pickled before routing_s existed loads with none
    old = a.last
    del old.__dict__["routing_s"]
    back = pickle.loads(pickle.dumps(old))
    assert back.routing_s == {} and back.as_dict()["backend"] == "fused"


@pytest.mark.parametrize("observes", [False, "observe", "selection_bias", "hook"])
def test_the_layer_times_its_routings_for_autos_decision(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch, observes: object) -> None:
    # the deciding step routes the tokens both ways a few more times (not counted in the
    # loads, the RNG as it was); a strategy that observes each routing or has a selection
    # bias of its own, or a hook on the router, is not routed again (no timer given)
    import wattmoe.moe.layer as layer_mod
    from wattmoe.moe.router import RoutingStrategy

    monkeypatch.setitem(EXPERT_BACKENDS, "fused", _Candidate())
    monkeypatch.setitem(EXPERT_BACKENDS, "t_fast", _Candidate())
    fused_calls = []

    def cpu_fused_route(router, x, tokens_per_expert=None):
        fused_calls.append(tokens_per_expert)
        r = router(x)
        d = build_dispatch(r.topk_idx, r.topk_weight, router.num_experts, None, with_rowof=True)
        if tokens_per_expert is not None:
            tokens_per_expert += d.counts
        return r, d

    monkeypatch.setattr(layer_mod, "fused_route", cpu_fused_route)
    layer = small_layer()
    monkeypatch.setattr(layer, "_fused_route_possible", lambda tokens: True)
    layer._backend = AutoBackend(candidates=["fused", "t_fast"], repeats=2)
    seen = []
    if observes == "observe":
        class Observing(RoutingStrategy):
            def observe(self, output) -> None:
                seen.append(output.topk_idx.shape[0])

        layer.router.strategy = Observing()
    elif observes == "selection_bias":
        class Noisy(RoutingStrategy):
            def selection_bias(self, logits):
                seen.append(logits.shape[0])
                return torch.zeros_like(logits)

        layer.router.strategy = Noisy()
    elif observes == "hook":
        layer.router.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    x = torch.randn(12, layer.config.hidden_size, generator=gen)
    torch.manual_seed(7)
    with torch.no_grad():
        layer(x)
    after = torch.randn(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.randn(3))  # the step's routings drew no random numbers
    dec = layer._backend.last
    assert dec.reason == "calibrated"
    if observes:
        assert dec.routing_s == {} and seen == [12] and not fused_calls
        assert dec.key[2] != "routing timed"
    else:
        assert set(dec.routing_s) == {"torch", "fused_route"}
        assert all(v > 0 for v in dec.routing_s.values())
        assert len(fused_calls) == 3 and fused_calls == [None] * 3  # a warm-up and 2 timed
    assert layer.tokens_per_expert.sum().item() == 12 * layer.config.top_k


def test_auto_drops_what_a_failed_calibration_captured(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    graphed = _Candidate()

    def broken(experts, x, d):
        raise ValueError("a candidate's own error")

    monkeypatch.setitem(EXPERT_BACKENDS, "t_graphed", graphed)
    monkeypatch.setitem(EXPERT_BACKENDS, "t_broken", broken)
    layer = small_layer()
    with torch.no_grad(), pytest.raises(ValueError, match="own error"):
        AutoBackend(candidates=["t_graphed", "t_broken"], repeats=1)(
            layer.experts, torch.randn(16, layer.config.hidden_size, generator=gen),
            make_dispatch("uniform", 16, 8, 2, gen))
    assert graphed.calls == 2 and graphed.graphs == set()


def test_auto_uses_cost_fn(gen: torch.Generator) -> None:
    seen = []

    def cost(name: str, info: dict[str, object]) -> float:
        seen.append(info["assignments"])
        return {"loop": 1.0, "grouped": 5.0}[name]

    auto = AutoBackend(candidates=["grouped", "loop"], cost_fn=cost)
    layer = small_layer()
    d = make_dispatch("uniform", 8, 8, 2, gen)
    with torch.no_grad():
        auto(layer.experts, torch.randn(8, layer.config.hidden_size, generator=gen), d)
    assert auto.last.backend == "loop" and auto.last.reason == "cost" and seen == [16, 16]
    with pytest.raises(ConfigError):
        AutoBackend(candidates=["auto"])
    with pytest.raises(ConfigError, match="names no backend"):
        AutoBackend(candidates=[])
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="repeats"):
            AutoBackend(repeats=bad)


def test_graphed_backend_runs_eagerly_on_cpu(gen: torch.Generator) -> None:
    g = GraphedBackend("grouped")
    layer = small_layer()
    x = torch.randn(12, layer.config.hidden_size, generator=gen)
    d = make_dispatch("uniform", 12, 8, 2, gen)
    with torch.no_grad():
        torch.testing.assert_close(g(layer.experts, x, d), get_backend("loop")(layer.experts, x, d),
                                   rtol=1e-5, atol=1e-6)
    assert g.captures == 0 and g.replays == 0


def test_graphed_backend_replays_each_steps_dispatch(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Later steps of a captured shape copy their inputs into the static ones and replay: each
    must give that step's result (a stale dispatch field would give the captured step's)."""
    import wattmoe.moe.graphs as graphs

    class FakeCuda(torch.Tensor):  # takes the CUDA path on a CPU
        @property
        def is_cuda(self) -> bool:
            return True

    def fake_capture(fn, device, pool):  # replay() re-runs the call on the static inputs
        out = fn()
        return FakeGraph(lambda: out.copy_(fn())), out

    monkeypatch.setattr(graphs, "_warm_and_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    g = GraphedBackend("grouped")
    layer = small_layer()
    with torch.no_grad():
        for kind in ["uniform", "skewed", "hot"]:
            x = torch.randn(12, layer.config.hidden_size, generator=gen)
            d = make_dispatch(kind, 12, 8, 2, gen, with_rowof=True)
            out = g(layer.experts, x.as_subclass(FakeCuda), d).as_subclass(torch.Tensor)
            torch.testing.assert_close(out, get_backend("loop")(layer.experts, x, d),
                                       rtol=1e-5, atol=1e-6)
    assert (g.captures, g.replays) == (1, 3)


def test_graphed_backend_drops_the_graphs_of_a_freed_stack(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    # a registered backend lives as long as the process: the graphs of a layer deleted (or of
    # its experts re-stacked) kept the memory their steps allocated
    import gc

    import wattmoe.moe.graphs as graphs

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self) -> bool:
            return True

    def fake_capture(fn, device, pool):  # a CUDA graph holds no Python reference to fn
        out = fn()
        return FakeGraph(lambda: None), out

    monkeypatch.setattr(graphs, "_warm_and_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    g = GraphedBackend("grouped")
    keep, gone = small_layer(), small_layer()
    x = torch.randn(12, keep.config.hidden_size, generator=gen).as_subclass(FakeCuda)
    d = make_dispatch("uniform", 12, 8, 2, gen, with_rowof=True)
    with torch.no_grad():
        g(keep.experts, x, d)
        g(gone.experts, x, d)
        assert len(g._graphs) == 2
        del gone
        gc.collect()
        assert len(g._graphs) == 2 and g._pending  # noted by the finalizer, dropped at the
        assert len(g.captured()) == 1  # next call (not where the collector freed the stack)
        st = stacked_experts(keep.experts)
        keep.quantize(32)  # re-stacked: the dense stack and its graph go
        del st
        g(keep.experts, x, d)
        gc.collect()
    assert len(g.captured()) == 1 and g.captures == 3


def test_a_loaded_stack_is_another_build(gen: torch.Generator) -> None:
    # a pickled stack kept its build id: graphs keyed by it would have replayed the saved
    # layer's graph (its weights) for the loaded one, or for another stack of that number
    import io

    layer = small_layer().eval()
    with torch.no_grad():
        get_backend("grouped")(layer.experts, torch.randn(4, layer.config.hidden_size,
                                                          generator=gen),
                               make_dispatch("uniform", 4, 8, 2, gen))
    st = stacked_experts(layer.experts)
    st.kernel_cache["copy"] = torch.zeros(3)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    st2 = stacked_experts(loaded.experts)
    assert st2.build_id != st.build_id and st2.kernel_cache == {}
    assert copy.deepcopy(st).build_id not in (st.build_id, st2.build_id)


def test_count_experts_matches_bincount(gen: torch.Generator) -> None:
    from wattmoe.moe.dispatch import count_experts

    idx = torch.randint(0, 13, (50, 3), generator=gen)
    torch.testing.assert_close(count_experts(idx, 16), torch.bincount(idx.reshape(-1),
                                                                      minlength=16))
    assert count_experts(torch.empty(0, dtype=torch.long), 4).tolist() == [0, 0, 0, 0]


def test_graphed_layer_runs_eagerly_on_cpu(gen: torch.Generator) -> None:
    from wattmoe.moe.graphs import GraphedLayer

    layer = small_layer(seed=5)
    layer.set_backend("fused")
    step = GraphedLayer(layer)
    x = torch.randn(6, layer.config.hidden_size, generator=gen)
    assert not step.capturable(x)
    with torch.no_grad():
        torch.testing.assert_close(step(x).hidden_states, layer(x).hidden_states)
    assert step.captures == 0


def test_graphed_layer_recaptures_after_weights_are_replaced(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A captured step reads the weights' old addresses: replacing them (quantize, .to,
    load_state_dict(assign=True)) must drop the graphs; in-place updates must not."""
    from wattmoe.moe.graphs import GraphedLayer

    layer = small_layer(seed=5)
    layer.set_backend("grouped")
    step = GraphedLayer(layer)

    def fake_capture(key, x):
        sx = x.clone()
        frozen = copy.deepcopy(layer)  # the step as captured: the weights it was captured with
        out = frozen(sx)

        def run() -> None:  # replay() re-runs the step on the static input, as a graph would
            out.hidden_states.copy_(frozen(sx).hidden_states)

        step._graphs[key] = (FakeGraph(run), sx, out, step._refresh_derived())
        step.captures += 1
        return step._graphs[key]

    monkeypatch.setattr(step, "capturable", lambda x: True)
    monkeypatch.setattr(step, "_capture", fake_capture)
    x = torch.randn(6, layer.config.hidden_size, generator=gen)
    with torch.no_grad():
        step(x)
        step(x)
        assert (step.captures, step.replays) == (1, 2)
        for p in layer.parameters():  # an optimizer step: in place, the graph sees it
            p.mul_(1.5)
        step(x)
        assert step.captures == 1
        layer.quantize(group_size=16)  # new tensors: the old graph would read freed memory
        torch.testing.assert_close(step(x).hidden_states, layer(x).hidden_states)
        assert step.captures == 2
        fresh = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.load_state_dict(fresh, assign=True)
        step(x)
        assert step.captures == 3


@pytest.mark.parametrize("kind", ["uniform", "capacity"])
def test_dispatch_rowof_is_each_assignments_row(kind: str, gen: torch.Generator) -> None:
    d = make_dispatch(kind, 23, 8, 3, gen, with_rowof=True)
    assert d.rowof is not None and d.rowof.shape == (23, 3)
    rowof = d.rowof.reshape(-1)
    kept = rowof >= 0
    assert int((~kept).sum()) == d.dropped
    rows = rowof[kept]
    assert torch.equal(rows.sort().values, torch.arange(d.token_idx.numel()))  # a bijection
    slot_tokens = torch.arange(23).repeat_interleave(3)
    assert torch.equal(d.token_idx[rows], slot_tokens[kept])  # each row holds its token


def _graph_inputs() -> list[str]:
    """Dispatch's tensor fields that backends read (a captured graph's static inputs)."""
    d = make_dispatch("capacity", 4, 4, 2, torch.Generator(), with_rowof=True)
    return [f.name for f in dataclasses.fields(Dispatch)
            if isinstance(getattr(d, f.name), torch.Tensor)
            and f.metadata.get("graph_input", True)]


def test_dispatch_tensor_fields_are_known() -> None:
    # a new field is a graph input unless marked; `routed` alone is not read by backends
    assert _graph_inputs() == ["token_idx", "weight", "counts", "rowof"]
    assert [f.name for f in dataclasses.fields(Dispatch)
            if not f.metadata.get("graph_input", True)] == ["routed"]


@pytest.mark.parametrize("with_rowof", [True, False])
def test_dispatch_clone_clones_every_tensor_field(with_rowof: bool, gen: torch.Generator) -> None:
    d = make_dispatch("capacity", 23, 8, 3, gen, with_rowof=with_rowof)
    c = d.clone()
    for f in dataclasses.fields(Dispatch):
        v, cv = getattr(d, f.name), getattr(c, f.name)
        if isinstance(v, torch.Tensor):  # own storage, same values
            assert cv.data_ptr() != v.data_ptr() and torch.equal(cv, v), f.name
        else:  # host values and absent tensors as they are
            assert cv == v, f.name
    assert (c.rowof is None) == (not with_rowof) and c.dropped > 0 and c.capacity is not None


def test_dispatch_copy_refreshes_every_graph_input(gen: torch.Generator) -> None:
    """A captured graph's static dispatch, refreshed with a later step's: every tensor that
    backends read must hold the new step's values, in the static storage."""
    old = make_dispatch("uniform", 23, 8, 3, gen, with_rowof=True)
    new = make_dispatch("skewed", 23, 8, 3, gen, with_rowof=True)
    assert old.graph_key() == new.graph_key()
    static = old.clone()
    ptrs = {n: getattr(static, n).data_ptr() for n in _graph_inputs()}
    for n in _graph_inputs():
        assert not torch.equal(getattr(static, n), getattr(new, n)), n  # a miss would show
    assert static.copy_(new) is static
    for n in _graph_inputs():
        assert torch.equal(getattr(static, n), getattr(new, n)), n
        assert getattr(static, n).data_ptr() == ptrs[n], n
    assert torch.equal(static.routed, old.routed)  # not a graph input: left as captured
    no_rowof = dataclasses.replace(new, rowof=None)
    with pytest.raises(ValueError, match="rowof"):
        static.copy_(no_rowof)
    one_count = dataclasses.replace(new, counts=new.counts[:1])  # would broadcast into [E]
    with pytest.raises(ValueError, match="counts"):
        static.copy_(one_count)


def test_dispatch_graph_key_sees_every_graph_input(gen: torch.Generator) -> None:
    d = make_dispatch("capacity", 23, 8, 3, gen, with_rowof=True)
    key = d.graph_key()
    for n in _graph_inputs():  # another dtype or shape of any input is another graph
        t = getattr(d, n)
        assert dataclasses.replace(d, **{n: t.double()}).graph_key() != key, n
        assert dataclasses.replace(d, **{n: t.reshape(-1)[:1]}).graph_key() != key, n
    assert dataclasses.replace(d, rowof=None).graph_key() != key
    same = dataclasses.replace(d, routed=d.routed.int(), dropped=d.dropped + 1, capacity=99)
    assert same.graph_key() == key  # host values and `routed` are not read by the graph


def test_shipped_tuned_tables_name_known_candidates_that_fit() -> None:
    # a table that names a dropped or renamed candidate would silently fall back to the heuristic
    import json

    from wattmoe.moe import fused_triton as ft

    tables = sorted(ft.CONFIG_DIR.glob("*.json"))
    assert tables
    for path in tables:
        for key, entries in json.loads(path.read_text())["configs"].items():
            fields = dict(f.split("=") for f in key.split(",") if "=" in f)
            h, f = int(fields["H"]), int(fields["F"])
            kind = key.rsplit(",", 1)[1]
            qgroup = int(kind.removeprefix("int4g")) if kind.startswith("int4g") else None
            for size, name in entries.items():
                pair = ft.resolve_config(name, qgroup is not None)
                assert pair is not None, f"{path.name}: {key} {size}: unknown {name!r}"
                assert ft._fit(pair[0], f, h, qgroup) is not None, (key, name)
                assert ft._fit(pair[1], h, f, qgroup) is not None, (key, name)


def test_user_tuned_table_from_the_environment(tmp_path, monkeypatch, caplog) -> None:
    import json

    from wattmoe.errors import ConfigError
    from wattmoe.moe import fused_triton as ft
    from wattmoe.moe.stacked import stacked_experts

    layer = small_layer()
    st = stacked_experts(layer.experts)
    key = ft.shape_key(st)
    cpu = torch.device("cpu")
    monkeypatch.setattr(ft, "_TUNED", {})
    # a directory: <device key>.json is read
    (tmp_path / "cpu.json").write_text(json.dumps({"configs": {key: {"64": "w64t16"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(tmp_path))
    assert ft.choose_config(st, 64, cpu) == "w64t16"
    # one file, as kernels_bench.py writes it (tuned elsewhere: a warning, still used)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"device": "nvidia_h200", "configs": {key: {"64": "m32"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    with caplog.at_level("WARNING"):
        assert ft.choose_config(st, 64, cpu) == "m32"
    assert "tuned on nvidia_h200" in caplog.text
    # bad values: one clear error each
    for bad, message in [(tmp_path / "missing.json", "no such file"),
                         (tmp_path / "bad.json", "not a tuned table")]:
        if bad.name == "bad.json":
            bad.write_text("{not json")
        monkeypatch.setenv(ft.CONFIG_ENV, str(bad))
        monkeypatch.setattr(ft, "_TUNED", {})
        with pytest.raises(ConfigError, match=message):
            ft.load_tuned(cpu)


def test_check_settings_reads_every_kernel_setting_now(tmp_path, monkeypatch) -> None:
    # what the library reads at its first launches, checked in one call: each bad value is
    # one error naming its variable and value
    import re
    from pathlib import Path

    from wattmoe.moe import fused_triton as ft

    # every $WATTMOE_* variable the moe package reads is one that it checks
    src = "".join(p.read_text() for p in Path(ft.__file__).parent.rglob("*.py"))
    assert set(re.findall(r'"(WATTMOE_\w+)"', src)) == set(ft.KERNEL_SETTINGS)
    cpu = torch.device("cpu")
    for env in ft.KERNEL_SETTINGS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(ft, "_TUNED", {})
    monkeypatch.setattr(ft, "TILE_ROWS", None)
    monkeypatch.setattr(ft, "TILE_SHARED", None)
    ft.check_settings(cpu)  # none set: the defaults
    (tmp_path / "cpu.json").write_text("{not json")  # this device's table in a directory
    for env, value, message in [
        (ft.TILE_ROWS_ENV, "48", "$WATTMOE_INT4_TILE_ROWS='48': a power of two >= 16"),
        (ft.TILE_COPIES_ENV, "both", "$WATTMOE_INT4_TILE_COPIES='both': 'shared'"),
        (ft.CONFIG_ENV, str(tmp_path / "missing.json"),
         f"WATTMOE_KERNEL_CONFIGS={tmp_path / 'missing.json'}: no such file or directory"),
        (ft.CONFIG_ENV, str(tmp_path),
         f"WATTMOE_KERNEL_CONFIGS: {tmp_path / 'cpu.json'} is not a tuned table"),
    ]:
        monkeypatch.setenv(env, value)
        monkeypatch.setattr(ft, "_TUNED", {})
        with pytest.raises(ConfigError, match=re.escape(message)):
            ft.check_settings(cpu)
        monkeypatch.delenv(env)
    # it reads the tile settings without keeping them: a launch still reads them at its first
    # use
    assert ft.TILE_ROWS is None and ft.TILE_SHARED is None


def test_graphed_layer_weights_signature_sees_replaced_tensors_not_inplace_updates() -> None:
    """What a captured step reads, checked before every replay: tensors replaced anywhere
    outside the routed experts (module cache walked again when children change), the ends of
    the expert list, the list itself; in-place updates keep the signature."""
    cfg = get_preset("deepseek-v3", 1 / 64)  # has a shared expert
    layer = SimpleMoELayer(cfg)
    g = GraphedLayer(layer)
    base = g.weights_signature()
    assert g.weights_signature() == base
    with torch.no_grad():
        layer.router.gate.weight.mul_(2.0)  # in place: same storage
        layer.experts[0].down_proj.weight.add_(1.0)
    assert g.weights_signature() == base

    def changed(mutate) -> bool:
        nonlocal base
        mutate()
        new = g.weights_signature()
        moved, base = new != base, new
        return moved

    gate = layer.router.gate
    assert changed(lambda: setattr(gate, "weight", torch.nn.Parameter(gate.weight.clone())))
    assert changed(lambda: setattr(layer.router, "gate", copy.deepcopy(layer.router.gate)))
    new_gate = layer.router.gate  # the replaced module's tensors are watched too
    assert changed(lambda: setattr(new_gate, "weight",
                                   torch.nn.Parameter(new_gate.weight.clone())))
    shared = layer.shared_expert
    assert shared is not None
    assert changed(lambda: setattr(shared.down_proj, "weight",
                                   torch.nn.Parameter(shared.down_proj.weight.clone())))
    assert changed(lambda: layer.tokens_per_expert.set_(layer.tokens_per_expert.clone()))
    last = layer.experts[-1].down_proj
    assert changed(lambda: setattr(last, "weight", torch.nn.Parameter(last.weight.clone())))
    assert changed(lambda: setattr(layer, "experts", torch.nn.ModuleList(list(layer.experts))))
    # a module with no tensors swapped (a routing strategy): the captured step would be stale
    assert changed(lambda: layer.router.set_strategy(type(layer.router.strategy)()))
    assert not changed(lambda: None)


def test_stack_signature_is_the_stacks_without_stacking(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` keys each step by `stack_signature` (from the first expert) instead of building
    or checking the stack: it must describe the stack `stacked_experts` builds."""
    from wattmoe.moe import stacked as stacked_mod

    cfg = get_preset("olmoe-1b-7b", 1 / 32)
    dense = SimpleMoELayer(cfg, dtype="bf16")
    quant = SimpleMoELayer(cfg, dtype="bf16").quantize(32)
    for experts in (dense.experts, list(dense.experts), quant.experts):
        st = stacked_experts(experts)
        weights = f"int4g{st.group_size}" if st.quantized else str(st.dtype)
        want = (st.num_experts, st.hidden_size, st.inner_size, st.form, weights)
        calls: list[object] = []
        monkeypatch.setattr(stacked_mod, "stacked_experts", calls.append)
        assert stacked_mod.stack_signature(experts) == want
        assert stacked_mod.head_signature(experts) == want
        assert not calls
        monkeypatch.undo()
    with pytest.raises(ConfigError, match="empty"):
        stacked_mod.stack_signature([])
    with pytest.raises(ConfigError, match="Expert"):
        stacked_mod.stack_signature([torch.nn.Linear(4, 4)])
    # where stack_signature raises, head_signature says None (`auto`'s per-step key)
    assert stacked_mod.head_signature([]) is None
    assert stacked_mod.head_signature([torch.nn.Linear(4, 4), *dense.experts]) is None


class _OwnExpert(torch.nn.Module):
    """A user's own expert: called as an `Expert` is, but not one (cannot be stacked)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


@pytest.mark.parametrize("shared", [False, True], ids=["own", "shared"])
@pytest.mark.parametrize(("where", "reasons"), [
    # a first expert of another kind gives its own key: 'unstackable' holds while it is there
    (0, ["only", "unstackable"]),
    # elsewhere the key is the stackable one: each replacement decides again
    (3, ["only", "unstackable", "only", "unstackable", "only"]),
], ids=["first", "middle"])
def test_auto_with_unstackable_experts_stacks_nothing_per_step_and_sees_replacements(
        where: int, reasons: list[str], shared: bool, gen: torch.Generator,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from wattmoe.moe import stacked as stacked_mod

    auto = AutoBackend(candidates=["grouped"], shared={} if shared else None)
    layer = small_layer()
    experts, hidden = layer.experts, layer.config.hidden_size
    x = torch.randn(16, hidden, generator=gen)
    d = make_dispatch("uniform", 16, 8, 2, gen)
    loop = get_backend("loop")
    builds: list[int] = []
    build = stacked_mod._build
    monkeypatch.setattr(stacked_mod, "_build", lambda ex: (builds.append(len(ex)), build(ex))[1])

    def steps(n: int) -> None:
        for _ in range(n):
            assert torch.equal(auto(experts, x, d), loop(experts, x, d))
            assert auto.last.backend == "loop" and auto.decided(experts, x, 32) == "loop"

    with torch.no_grad():
        auto(experts, x, d)
        assert auto.last.backend == "grouped" and builds == [8]
        own = experts[where]
        experts[where] = _OwnExpert(hidden)
        steps(4)
        # one attempt found them unstackable; the steps after it tried to stack nothing (was:
        # with the odd expert first, every key tried to build the stack and caught the error)
        assert builds == [8, 8]
        experts[where] = _OwnExpert(hidden)  # another of the user's: still loop
        steps(3)
        assert builds == ([8, 8] if where == 0 else [8, 8, 8])
        experts[where] = own  # stackable again: grouped, without a reset()
        want = loop(experts, x, d)
        for _ in range(2):
            torch.testing.assert_close(auto(experts, x, d), want, rtol=1e-5, atol=1e-6)
            assert auto.last.backend == "grouped" and auto.decided(experts, x, 32) == "grouped"
    assert [dec.reason for dec in auto.decisions] == reasons
    assert auto.counts == {"grouped": 3, "loop": 7}


def test_an_unstackable_record_keeps_no_expert_alive(gen: torch.Generator) -> None:
    import gc
    import weakref

    layer = small_layer().eval()
    hidden = layer.config.hidden_size
    layer.experts[3] = _OwnExpert(hidden)
    with torch.no_grad():
        layer(torch.randn(16, hidden, generator=gen))
    assert layer.expert_backend.last.reason == "unstackable"
    gone = [weakref.ref(e) for e in layer.experts if isinstance(e, Expert)]
    layer.quantize(32)  # another key: the dense one is never looked up again
    with torch.no_grad():
        layer(torch.randn(16, hidden, generator=gen))
    gc.collect()
    # (the record was of the modules, and kept the dense experts and their weights)
    assert len(gone) == 7 and all(r() is None for r in gone)


def test_auto_candidates_are_named_once() -> None:
    assert AutoBackend(candidates=["loop", "grouped", "loop"]).candidates == ["loop", "grouped"]


@pytest.mark.parametrize(("entries", "message"), [
    ({"64": "w64t16zz"}, "unknown fused kernel config 'w64t16zz'"),  # a name with a bad tail
    ({"64": "w64t16r"}, "unknown fused kernel config 'w64t16r'"),
    ({"64": "w64t16/zz"}, "unknown fused kernel config 'w64t16/zz'"),  # "A/B" with a bad B
    ({"64": "w64t64fpx"}, "unknown fused kernel config 'w64t64fpx'"),  # int4-only, dense key
    ({"lots": "m32"}, "assignments per step"),
    ({"64": 5}, "a candidate name"),
])
def test_user_tuned_table_entries_are_checked(entries: dict, message: str, tmp_path,
                                              monkeypatch) -> None:
    # an entry the launcher cannot use was silently replaced by the heuristic's pick (or
    # failed later with a ValueError / AttributeError from inside choose_config)
    import json

    from wattmoe.moe import fused_triton as ft

    st = stacked_experts(small_layer().experts)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"configs": {ft.shape_key(st): entries}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    with pytest.raises(ConfigError, match=message) as info:
        ft.choose_config(st, 64, torch.device("cpu"))
    assert str(table) in str(info.value)


def test_user_tuned_table_takes_composite_and_int4_names(tmp_path, monkeypatch) -> None:
    import json

    from wattmoe.moe import fused_triton as ft

    layer = small_layer()
    st = stacked_experts(layer.experts)
    qst = stacked_experts(copy.deepcopy(layer).quantize(64).experts)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"configs": {ft.shape_key(st): {"64": "w64t16/m32"},
                                             ft.shape_key(qst): {"64": "w64t64fpx/w64t32"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    cpu = torch.device("cpu")
    assert ft.choose_config(st, 64, cpu) == "w64t16/m32"
    assert ft.choose_config(qst, 64, cpu) == "w64t64fpx/w64t32"


def test_tuned_entry_serves_steps_within_its_reach(tmp_path, monkeypatch) -> None:
    # an entry tuned at one size serves steps up to TUNED_REACH times away; further away (an
    # entry tuned at 512 tokens against 1-token decode steps) the heuristic by rows per expert
    import json

    from wattmoe.moe import fused_triton as ft

    st = stacked_experts(small_layer().experts)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"configs": {ft.shape_key(st): {"1024": "w64t64"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    cpu = torch.device("cpu")
    reach = ft.TUNED_REACH
    for n in (1024 // reach, 1024, 1024 * reach):
        assert ft.choose_config(st, n, cpu) == "w64t64"
    for n in (1024 // reach - 1, 1024 * reach + 1, 8):
        assert ft.choose_config(st, n, cpu) == ft.heuristic_config(n, st.num_experts)
    assert ft.heuristic_config(8, st.num_experts) != "w64t64"
    # far below its size, but where the heuristic would pick the same for both sizes (decode
    # steps under a table's smallest entry), the entry still serves
    table.write_text(json.dumps({"configs": {ft.shape_key(st): {"128": "w64t16"}}}))
    monkeypatch.setattr(ft, "_TUNED", {})
    assert ft.heuristic_config(128, st.num_experts) == ft.heuristic_config(1, st.num_experts)
    assert ft.choose_config(st, 1, cpu) == "w64t16"


@pytest.mark.parametrize("shape", [
    "E=8,H=64,F=128,swiglu,fp32",       # the dtype as the CLI spells it, not torch's float32
    "E=8,H=64,F=128,swiglu,bf16",
    "E=8, H=64, F=128, swiglu, float32",
    "E=8,H=64,F=128,gelu,float32",
    "h64_f128_swiglu_e8_k2",            # a cost-model shape key
    "tiny",
])
def test_user_tuned_table_shape_key_no_stack_can_have_is_an_error(shape: str, tmp_path,
                                                                 monkeypatch) -> None:
    # was: silently never matched, so the user's tuned entry was never used and every step
    # ran the heuristic's pick without a word
    import json

    from wattmoe.moe import fused_triton as ft

    st = stacked_experts(small_layer().experts)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"configs": {shape: {"64": "m32"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    with pytest.raises(ConfigError, match=r"shape key .* like 'E=64,H=2048,F=1024,swiglu,"
                                          r"bfloat16'") as info:
        ft.choose_config(st, 64, torch.device("cpu"))
    assert str(table) in str(info.value) and repr(shape) in str(info.value)


@pytest.mark.parametrize("size", ["0", "-64"])
def test_user_tuned_table_size_must_be_positive(size: str, tmp_path, monkeypatch) -> None:
    import json

    from wattmoe.moe import fused_triton as ft

    st = stacked_experts(small_layer().experts)
    table = tmp_path / "tuned_configs.json"
    table.write_text(json.dumps({"configs": {ft.shape_key(st): {size: "m32"}}}))
    monkeypatch.setenv(ft.CONFIG_ENV, str(table))
    monkeypatch.setattr(ft, "_TUNED", {})
    with pytest.raises(ConfigError, match="assignments per step"):
        ft.choose_config(st, 64, torch.device("cpu"))
