"""Fused routing (`fused_route`) on CPU tensors through Triton's interpreter.

Set up like test_backends_triton.py: TRITON_INTERPRET=1 before anything imports Triton; skipped
where Triton is missing or was imported without the interpreter. Shapes stay small (the
interpreter is slow). bf16 gate outputs tie often, so selections are checked for being *a*
valid top-k, and weights are compared with the router's only on rows whose sets agree.
"""

from __future__ import annotations

import pytest
import torch

from wattmoe.errors import ShapeError
from wattmoe.moe import SimpleMoELayer, get_preset, switch_balance_loss
from wattmoe.moe import fused_route as fr
from wattmoe.moe import layer as layer_mod
from wattmoe.moe.router import AdaptiveRouter, RouterOutput, RoutingStrategy

from .interpreter import _interpreter, requires_interpreter  # noqa: F401 (autouse fixture)

pytestmark = requires_interpreter


class _TestFixedBias(RoutingStrategy):
    """Returns a fixed selection bias (not registered) and records what it observed."""

    def __init__(self, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = bias
        self.observed: list[RouterOutput] = []

    def selection_bias(self, logits: torch.Tensor) -> torch.Tensor | None:
        return self.bias

    def observe(self, output: RouterOutput) -> None:
        self.observed.append(output)


def make_router(experts: int, top_k: int, score: str, normalize: bool, bias: str, tokens: int,
                dtype: torch.dtype, gen: torch.Generator, hidden: int = 32) -> AdaptiveRouter:
    router = AdaptiveRouter(hidden, experts, top_k, score_func=score, normalize_topk=normalize,
                            aux_loss_coef=0.03, dtype=dtype)
    with torch.no_grad():
        router.gate.weight.copy_(torch.randn(experts, hidden, generator=gen) / 4)
    b = None
    if bias == "expert":
        b = torch.randn(experts, generator=gen)
    elif bias == "expert_row":
        b = torch.randn(1, experts, generator=gen)
    elif bias == "token":
        b = torch.randn(tokens, experts, generator=gen)
    router.set_strategy(_TestFixedBias(b))
    return router


def reference_weights(router: AdaptiveRouter, logits: torch.Tensor,
                      idx: torch.Tensor) -> torch.Tensor:
    """The router's combine weights for a given selection."""
    w = router.scores(logits).gather(1, idx)
    if router.normalize_topk:
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-20)
    return w


def check_route(router: AdaptiveRouter, x: torch.Tensor) -> None:
    """Everything `fused_route` returns, against the router and build_dispatch semantics."""
    tokens, num_experts, k = x.shape[0], router.num_experts, router.top_k
    with torch.no_grad():
        want = router(x)
        got, d = fr.fused_route(router, x)
    assert router.strategy.observed[-1] is got
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    torch.testing.assert_close(got.probs, want.probs, rtol=1e-6, atol=1e-6)
    assert got.topk_idx.dtype == torch.int64 and got.topk_idx.shape == (tokens, k)
    assert got.bias is router.strategy.bias

    # a valid top-k of logits + bias: distinct experts, no unchosen one scores higher
    select = got.logits if got.bias is None else got.logits + got.bias
    idx = got.topk_idx
    assert int(idx.min()) >= 0 and int(idx.max()) < num_experts
    assert all(len(set(row)) == k for row in idx.tolist())
    chosen = torch.zeros(tokens, num_experts, dtype=torch.bool).scatter_(1, idx, True)
    lowest = select.masked_fill(~chosen, float("inf")).amin(1)
    highest = select.masked_fill(chosen, float("-inf")).amax(1)
    assert bool((lowest >= highest).all())
    # chosen best first, ties to the lowest index
    sel_k = select.gather(1, idx)
    assert bool((sel_k[:, :-1] >= sel_k[:, 1:]).all())
    tie = sel_k[:, :-1] == sel_k[:, 1:]
    assert bool((idx[:, :-1][tie] < idx[:, 1:][tie]).all())

    # weights: the router's for this selection; equal to the router's own where sets agree
    torch.testing.assert_close(got.topk_weight, reference_weights(router, got.logits, idx),
                               rtol=1e-6, atol=1e-6)
    s_got, o_got = idx.sort(1)
    s_want, o_want = want.topk_idx.sort(1)
    same = (s_got == s_want).all(1)
    # rows that differ differ by ties only: the same selected values; fp32 has no ties here
    assert torch.equal(sel_k.sort(1).values, select.gather(1, want.topk_idx).sort(1).values)
    assert bool(same.all()) or x.dtype != torch.float32
    torch.testing.assert_close(got.topk_weight.gather(1, o_got)[same],
                               want.topk_weight.gather(1, o_want)[same], rtol=1e-6, atol=1e-6)

    counts = torch.bincount(idx.reshape(-1), minlength=num_experts)
    assert got.routed_counts.dtype == torch.int64
    assert torch.equal(got.routed_counts, counts)
    torch.testing.assert_close(got.balance_loss, switch_balance_loss(got.probs, counts, k),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.aux_loss, router.aux_loss_coef * got.balance_loss,
                               rtol=1e-6, atol=1e-7)
    if bool(same.all()):
        torch.testing.assert_close(got.balance_loss, want.balance_loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.aux_loss, want.aux_loss, rtol=1e-5, atol=1e-6)
    assert got.balance_loss.dim() == 0 and got.aux_loss.dim() == 0

    # dispatch: grouped by expert, segment lengths = counts, each assignment exactly once
    assert torch.equal(d.counts, counts) and torch.equal(d.routed, counts)
    assert d.dropped == 0 and d.capacity is None
    assert d.token_idx.dtype == torch.int64 and d.token_idx.numel() == tokens * k
    expert_of_row = torch.repeat_interleave(torch.arange(num_experts), counts)
    triples = sorted(zip(d.token_idx.tolist(), expert_of_row.tolist(), d.weight.tolist()))
    want_triples = sorted(zip(torch.arange(tokens).repeat_interleave(k).tolist(),
                              idx.reshape(-1).tolist(), got.topk_weight.reshape(-1).tolist()))
    assert triples == want_triples
    # rowof: each (token, slot) assignment's row holds that token, expert and weight
    assert d.rowof is not None and d.rowof.shape == (tokens, k)
    rows = d.rowof.reshape(-1).long()
    assert torch.equal(rows.sort().values, torch.arange(tokens * k))
    assert torch.equal(d.token_idx[rows], torch.arange(tokens).repeat_interleave(k))
    assert torch.equal(expert_of_row[rows], idx.reshape(-1))
    assert torch.equal(d.weight[rows], got.topk_weight.reshape(-1))


CASES = [  # experts, top_k, tokens, score_func, normalize_topk, bias, dtype
    (8, 2, 37, "softmax", True, "none", torch.float32),
    (8, 1, 1, "sigmoid", False, "expert", torch.float32),
    (8, 8, 7, "softmax", True, "token", torch.bfloat16),
    (8, 2, 37, "sigmoid", True, "expert_row", torch.float32),
    (60, 8, 37, "sigmoid", True, "token", torch.float32),
    (60, 2, 7, "softmax", False, "expert", torch.bfloat16),
    (60, 1, 37, "softmax", True, "none", torch.float32),
    (64, 8, 37, "softmax", True, "expert", torch.float32),
    (64, 2, 1, "sigmoid", True, "none", torch.bfloat16),
    (64, 1, 7, "sigmoid", False, "token", torch.float32),
    (64, 8, 37, "sigmoid", False, "none", torch.bfloat16),
    (64, 2, 37, "softmax", False, "token", torch.bfloat16),
]


@pytest.mark.parametrize(("experts", "top_k", "tokens", "score", "normalize", "bias", "dtype"),
                         CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_fused_route_matches_router(experts: int, top_k: int, tokens: int, score: str,
                                    normalize: bool, bias: str, dtype: torch.dtype,
                                    gen: torch.Generator) -> None:
    router = make_router(experts, top_k, score, normalize, bias, tokens, dtype, gen)
    x = torch.randn(tokens, 32, generator=gen).to(dtype)
    check_route(router, x)


def test_ties_go_to_the_lowest_index_and_padding_is_never_chosen(gen: torch.Generator) -> None:
    # all logits equal: experts 0..k-1; a bias of -inf everywhere: still real, distinct experts
    router = make_router(60, 8, "softmax", True, "none", 5, torch.float32, gen)
    with torch.no_grad():
        router.gate.weight.zero_()
        x = torch.randn(5, 32, generator=gen)
        got, _ = fr.fused_route(router, x)
        assert got.topk_idx.tolist() == [list(range(8))] * 5
        torch.testing.assert_close(got.topk_weight, torch.full((5, 8), 1 / 8))
        router.strategy.bias = torch.full((60,), float("-inf"))
        router.gate.weight.normal_(generator=gen)
        got, d = fr.fused_route(router, x)
    assert int(got.topk_idx.max()) < 60
    assert all(len(set(row)) == 8 for row in got.topk_idx.tolist())
    assert torch.equal(d.counts, torch.bincount(got.topk_idx.reshape(-1), minlength=60))


def test_tokens_per_expert_accumulates(gen: torch.Generator) -> None:
    router = make_router(60, 2, "softmax", True, "none", 9, torch.float32, gen)
    tpe = torch.zeros(60, dtype=torch.int64)
    x1, x2 = torch.randn(9, 32, generator=gen), torch.randn(4, 32, generator=gen)
    with torch.no_grad():
        r1, _ = fr.fused_route(router, x1, tpe)
        assert torch.equal(tpe, r1.routed_counts)
        r2, _ = fr.fused_route(router, x2, tpe)
    assert torch.equal(tpe, r1.routed_counts + r2.routed_counts)
    assert int(tpe.sum()) == (9 + 4) * 2


def test_bad_bias_shape_and_empty_step(gen: torch.Generator) -> None:
    router = make_router(8, 2, "softmax", True, "none", 4, torch.float32, gen)
    router.strategy.bias = torch.zeros(3, 8)
    with torch.no_grad(), pytest.raises(ShapeError, match="selection bias"):
        fr.fused_route(router, torch.randn(4, 32, generator=gen))
    router.strategy.bias = None
    with torch.no_grad():
        got, d = fr.fused_route(router, torch.randn(0, 32))
    assert got.topk_idx.shape == (0, 2) and d.token_idx.numel() == 0
    assert int(d.counts.sum()) == 0
    assert fr.fused_route_available(torch.zeros(1))


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the layer's calls of `fused_route`."""
    calls: list[int] = []

    def wrapped(*args: object, **kwargs: object):  # -> tuple[RouterOutput, Dispatch]
        calls.append(1)
        return fr.fused_route(*args, **kwargs)

    monkeypatch.setattr(layer_mod, "fused_route", wrapped)
    return calls


@pytest.mark.parametrize("backend", ["fused", "fused_graph"])
def test_layer_with_fused_route_matches_loop(backend: str, spy: list[int],
                                             gen: torch.Generator) -> None:
    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    fused = SimpleMoELayer(cfg, seed=3, backend=backend)
    loop = SimpleMoELayer(cfg, seed=3, backend="loop")
    x = torch.randn(2, 9, 32, generator=gen)
    with torch.no_grad():
        got, want = fused(x), loop(x)
        fused(x[:1])
        loop(x[:1])
    assert len(spy) == 2
    torch.testing.assert_close(got.hidden_states, want.hidden_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.aux_loss, want.aux_loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.expert_counts, want.expert_counts)
    assert torch.equal(got.routed_counts, want.routed_counts) and got.dropped == 0
    assert torch.equal(fused.tokens_per_expert, loop.tokens_per_expert)


def test_layer_keeps_the_unfused_route_with_capacity_autograd_or_other_backends(
    spy: list[int], gen: torch.Generator
) -> None:
    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    x = torch.randn(6, 32, generator=gen)
    capped = SimpleMoELayer(cfg.replace(capacity_factor=0.5), seed=1, backend="fused")
    with torch.no_grad():
        out = capped(x)
    assert out.dropped > 0  # capacity applied, in token order, by build_dispatch
    grouped = SimpleMoELayer(cfg, seed=1, backend="grouped")
    with torch.no_grad():
        grouped(x)
    layer = SimpleMoELayer(cfg, seed=1, backend="fused")
    out = layer(x)  # grad mode with trainable parameters: the router's autograd path
    assert out.aux_loss.requires_grad
    assert not spy
    layer.router.gate.weight.requires_grad_(False)
    out = layer(x)  # the experts still need gradients
    assert not spy
    layer.requires_grad_(False)
    layer(x)  # nothing to differentiate: fused even in grad mode
    assert len(spy) == 1
    assert layer.uses_fused_route(x)
    layer.fused_routing = False  # switched off: the torch path, as `+torch_route` measures
    assert not layer.uses_fused_route(x)
    layer.fused_routing = True
    assert not layer.uses_fused_route(x.requires_grad_())


def test_auto_routes_fused_once_its_choice_is_a_fused_backend(
    spy: list[int], gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattmoe.moe.autoselect import AutoBackend

    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    layer = SimpleMoELayer(cfg, seed=2, backend="auto")
    ref = SimpleMoELayer(cfg, seed=2, backend="loop")
    for winner, fused_after in (("fused", True), ("grouped", False)):
        auto = AutoBackend(candidates=["fused", "grouped"],
                           cost_fn=lambda name, info, w=winner: 0.0 if name == w else 1.0)
        monkeypatch.setattr(layer, "_backend", auto)
        spy.clear()
        x = torch.randn(5, 32, generator=gen)
        with torch.no_grad():
            assert not layer.uses_fused_route(x)  # no decision for this step size yet
            first = layer(x)  # decides, after routing with torch
            second = layer(x)
            want = ref(x)
            assert layer.uses_fused_route(x) is fused_after
        assert auto.decided(layer.experts, x, 5 * cfg.top_k) == winner
        assert len(spy) == (1 if fused_after else 0)
        for out in (first, second):
            torch.testing.assert_close(out.hidden_states, want.hidden_states, rtol=1e-5,
                                       atol=1e-5)


def test_bias_on_another_device_is_one_clear_error(gen: torch.Generator) -> None:
    router = AdaptiveRouter(32, 8, 2, strategy=_TestFixedBias(torch.zeros(8, device="meta")))
    with torch.no_grad(), pytest.raises(ShapeError, match="selection bias is on meta"):
        fr.fused_route(router, torch.randn(4, 32, generator=gen))


def test_auto_in_training_neither_stacks_nor_needs_stackable_experts(
    gen: torch.Generator,
) -> None:
    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    layer = SimpleMoELayer(cfg, seed=2, backend="auto")
    ptr = layer.experts[0].up_proj.weight.data_ptr()
    out = layer(torch.randn(3, 32, generator=gen))  # grad mode: loop path, no stacking
    assert out.hidden_states.requires_grad
    assert layer.experts[0].up_proj.weight.data_ptr() == ptr
    layer.experts[1] = torch.nn.Sequential(torch.nn.Linear(32, 32))  # not stackable
    layer(torch.randn(3, 32, generator=gen)).hidden_states.sum().backward()


def test_layer_with_capacity_and_fused_experts_matches_loop(gen: torch.Generator) -> None:
    # capacity: torch routing with rowof (-1 for drops), fused experts, combine pass
    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32, capacity_factor=0.5)
    fused = SimpleMoELayer(cfg, seed=4, backend="fused")
    loop = SimpleMoELayer(cfg, seed=4, backend="loop")
    x = torch.randn(11, 32, generator=gen)
    with torch.no_grad():
        got, want = fused(x), loop(x)
    assert got.dropped == want.dropped > 0
    torch.testing.assert_close(got.hidden_states, want.hidden_states, rtol=1e-5, atol=1e-5)
