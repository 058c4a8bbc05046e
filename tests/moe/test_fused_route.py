"""Fused routing (`fused_route`) on CPU tensors through Triton's interpreter.

Set up like test_backends_triton.py: TRITON_INTERPRET=1 before anything imports Triton; skipped
where Triton is missing or was imported without the interpreter. Shapes stay small (the
interpreter is slow). bf16 gate outputs tie often, so selections are checked for being *a*
valid top-k, and weights are compared with the router's only on rows whose sets agree.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.moe import SimpleMoELayer, get_preset, switch_balance_loss
from wattmoe.moe import fused_route as fr
from wattmoe.moe import layer as layer_mod
from wattmoe.moe.router import AdaptiveRouter, RouterOutput, RoutingStrategy

from .interpreter import _interpreter, requires_interpreter  # noqa: F401 (autouse fixture)

pytestmark = requires_interpreter


class _TestObserver(RoutingStrategy):
    """No selection bias (`selection_bias` not overridden: the gate GEMM can be fused); records
    what it observed. Not registered."""

    bias: torch.Tensor | None = None

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[RouterOutput] = []

    def observe(self, output: RouterOutput) -> None:
        self.observed.append(output)


class _TestFixedBias(_TestObserver):
    """Returns a fixed selection bias (None too): overrides `selection_bias`, so `fused_route`
    keeps the gate GEMM in torch."""

    def __init__(self, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bias = bias

    def selection_bias(self, logits: torch.Tensor) -> torch.Tensor | None:
        return self.bias


def fuses_gate(router: AdaptiveRouter) -> bool:
    """Whether the GEMM can be fused: the strategy does not override selection_bias (every
    router of these tests is fusable otherwise)."""
    return type(router.strategy).selection_bias is RoutingStrategy.selection_bias


def assert_gate_logits(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """got [T, E] fp32 is F.linear(x, w).float() up to the fp32 accumulation order: ~1e-6 for
    fp32 x; else rounded to x's dtype like it and at most one ulp apart, on few entries."""
    want = F.linear(x, w).float()
    assert got.dtype == torch.float32 and got.shape == want.shape
    if x.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return
    assert torch.equal(got.to(x.dtype).float(), got)
    exponent = torch.frexp(torch.maximum(got.abs(), want.abs())).exponent  # |v| < 2**exponent
    ulp = torch.finfo(x.dtype).eps * torch.exp2(exponent.float() - 1)  # spacing at |v|
    diff = (got - want).abs()
    assert bool((diff <= ulp).all()), float((diff / ulp).max())
    assert float((diff > 0).float().mean()) <= 0.05


def make_router(experts: int, top_k: int, score: str, normalize: bool, bias: str, tokens: int,
                dtype: torch.dtype, gen: torch.Generator, hidden: int = 32) -> AdaptiveRouter:
    """bias: 'fused' (no selection_bias: the fused gate GEMM), 'none' (a strategy returning
    None: the torch GEMM), or a bias [E] ('expert'), [1, E] ('expert_row'), [T, E] ('token')."""
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
    router.set_strategy(_TestObserver() if bias == "fused" else _TestFixedBias(b))
    return router


def reference_weights(router: AdaptiveRouter, logits: torch.Tensor,
                      idx: torch.Tensor) -> torch.Tensor:
    """The router's combine weights for a given selection."""
    w = router.scores(logits).gather(1, idx)
    if router.normalize_topk:
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-20)
    return w


def check_route(router: AdaptiveRouter, x: torch.Tensor) -> None:
    """Everything `fused_route` returns, against the router and build_dispatch semantics.
    Fusable gates are fused (fuse_gate=True), others take the default path (torch's GEMM)."""
    tokens, num_experts, k = x.shape[0], router.num_experts, router.top_k
    with torch.no_grad():
        got, d = fr.fused_route(router, x, fuse_gate=True if fuses_gate(router) else None)
        assert router.strategy.observed[-1] is got
        if fuses_gate(router):  # the kernel's GEMM: F.linear's up to accumulation order
            assert_gate_logits(got.logits, x, router.gate.weight)
        else:  # torch's GEMM, as the router's
            torch.testing.assert_close(got.logits, F.linear(x, router.gate.weight).float(),
                                       rtol=0, atol=0)
        # the router's own decisions from the same logits (they are values of x's dtype)
        assert torch.equal(got.logits.to(x.dtype).float(), got.logits)
        with mock.patch.object(F, "linear", return_value=got.logits.to(x.dtype)):
            want = router(x)
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
    # the gate GEMM in route_topk
    (8, 2, 37, "softmax", True, "fused", torch.float32),
    (6, 4, 1, "sigmoid", False, "fused", torch.bfloat16),
    (60, 8, 37, "sigmoid", True, "fused", torch.bfloat16),
    (64, 2, 7, "softmax", False, "fused", torch.float32),
]


@pytest.mark.parametrize(("experts", "top_k", "tokens", "score", "normalize", "bias", "dtype"),
                         CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_fused_route_matches_router(experts: int, top_k: int, tokens: int, score: str,
                                    normalize: bool, bias: str, dtype: torch.dtype,
                                    gen: torch.Generator) -> None:
    router = make_router(experts, top_k, score, normalize, bias, tokens, dtype, gen)
    x = torch.randn(tokens, 32, generator=gen).to(dtype)
    check_route(router, x)


GATE_CASES = [  # experts, hidden, tokens, dtype: H tails, E not a power of two (< 16 too)
    (6, 80, 37, torch.bfloat16),  # BLOCK_E 16, one partial BLOCK_H=128 chunk
    (6, 200, 21, torch.float32),  # BLOCK_H 128: a full chunk and a 72 tail
    (60, 200, 37, torch.bfloat16),
    (60, 80, 19, torch.float32),
    (200, 80, 19, torch.bfloat16),  # BLOCK_E 256, BLOCK_H 32: two chunks and a 16 tail
    (6, 200, 37, torch.float16),
    (6, 256, 21, torch.bfloat16),  # EVEN_H: two full chunks, no H masks
]


def inf_padded(values: torch.Tensor, cols: int) -> torch.Tensor:
    """values [R, C] as a view of [R + 16, cols] storage (rows cols apart) whose next 16 rows
    are inf: a kernel reading rows past the masks makes NaN (numpy warns) or wrong values.
    Columns C..cols hold zeros (torch 2.13's CPU bf16 GEMM multiplies them by zero)."""
    rows, c = values.shape
    storage = torch.zeros(rows + 16, cols, dtype=values.dtype)
    storage[rows:] = float("inf")
    storage[:rows, :c] = values
    return storage[:rows, :c]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(("experts", "hidden", "tokens", "dtype"), GATE_CASES,
                         ids=lambda v: str(v).removeprefix("torch."))
def test_fused_gate_matches_the_torch_gate(experts: int, hidden: int, tokens: int,
                                           dtype: torch.dtype, gen: torch.Generator) -> None:
    top_k = min(4, experts - 1)
    router = AdaptiveRouter(hidden, experts, top_k, dtype=dtype)
    # x: rows 2H apart; x and the weight amid infs; logits of a few units
    x = inf_padded(torch.randn(tokens, hidden, generator=gen).to(dtype), 2 * hidden)
    w = torch.randn(experts, hidden, generator=gen) / hidden**0.5
    router.gate.weight = torch.nn.Parameter(inf_padded(w.to(dtype), hidden))
    with torch.no_grad():
        got, _ = fr.fused_route(router, x, fuse_gate=True)
        want, _ = fr.fused_route(router, x, fuse_gate=False)
        # a column-major x is made contiguous first
        again, _ = fr.fused_route(router, x.t().contiguous().t(), fuse_gate=True)
    assert_gate_logits(got.logits, x, router.gate.weight)
    assert torch.equal(again.logits, got.logits)
    torch.testing.assert_close(want.logits, F.linear(x, router.gate.weight).float(), rtol=0,
                               atol=0)
    assert float(got.logits.abs().amax()) > 1.0

    # the same selection, in the same order, on rows whose top k + 1 have no near-ties
    top = want.logits.topk(top_k + 1, dim=1).values
    slack = 2 * (got.logits - want.logits).abs().amax(1)
    clear = ((top[:, :-1] - top[:, 1:]) > slack[:, None]).all(1)
    assert int(clear.sum()) >= tokens // 2
    assert torch.equal(got.topk_idx[clear], want.topk_idx[clear])
    torch.testing.assert_close(got.topk_weight[clear], want.topk_weight[clear], rtol=1e-2,
                               atol=1e-6)
    torch.testing.assert_close(got.probs, want.probs, rtol=1e-2, atol=1e-6)
    assert torch.equal(got.routed_counts, torch.bincount(got.topk_idx.reshape(-1),
                                                         minlength=experts))


class _SpyBias(RoutingStrategy):
    """Overrides selection_bias (returning None): records the logits it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def selection_bias(self, logits: torch.Tensor) -> torch.Tensor | None:
        self.seen.append(logits)
        return None


def test_a_strategy_with_selection_bias_keeps_the_torch_gate(gen: torch.Generator) -> None:
    spy = _SpyBias()
    router = AdaptiveRouter(40, 6, 2, strategy=spy)
    x = torch.randn(5, 40, generator=gen)
    with torch.no_grad(), mock.patch.object(F, "linear", wraps=F.linear) as linear:
        got, _ = fr.fused_route(router, x)
        assert linear.call_count == 1
        assert len(spy.seen) == 1 and spy.seen[0] is got.logits
        with pytest.raises(ConfigError, match="_SpyBias strategy's selection bias"):
            fr.fused_route(router, x, fuse_gate=True)
    torch.testing.assert_close(got.logits, F.linear(x, router.gate.weight), rtol=0, atol=0)


def test_the_default_fuses_small_16bit_baseline_gates(gen: torch.Generator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    router = AdaptiveRouter(40, 6, 2, dtype=torch.bfloat16)  # baseline
    x = torch.randn(5, 40, generator=gen).bfloat16()
    fp32 = AdaptiveRouter(40, 6, 2)
    x32 = x.float()
    # 262,400 bytes of bf16 weight: past the 256 KiB that pay off (not run: the GEMM raises)
    big = AdaptiveRouter(16400, 8, 2, dtype=torch.bfloat16)
    tpe = torch.zeros(6, dtype=torch.int64)
    with torch.no_grad(), mock.patch.object(F, "linear", side_effect=AssertionError("torch")):
        got, d = fr.fused_route(router, x, tpe)  # no torch GEMM
        assert torch.equal(tpe, got.routed_counts) and d.token_idx.numel() == 10
        assert got.bias is None
        forced, _ = fr.fused_route(fp32, x32, fuse_gate=True)  # fp32: fused only when asked
        for r, xs in ((fp32, x32), (big, torch.zeros(1, 16400, dtype=torch.bfloat16))):
            with pytest.raises(AssertionError, match="torch"):
                fr.fused_route(r, xs)
        with pytest.raises(AssertionError, match="torch"):
            fr.fused_route(router, x, fuse_gate=False)
        monkeypatch.setattr(fr, "FUSE_GATE", False)  # the module's switch, for benchmarks
        with pytest.raises(AssertionError, match="torch"):
            fr.fused_route(router, x)
        forced_too, _ = fr.fused_route(router, x, fuse_gate=True)
    assert_gate_logits(got.logits, x, router.gate.weight)
    assert torch.equal(forced_too.logits, got.logits)
    assert_gate_logits(forced.logits, x32, fp32.gate.weight)


def test_unfusable_gates_keep_torch_or_refuse_fuse_gate(gen: torch.Generator) -> None:
    x = torch.randn(3, 16, generator=gen)
    mixed = AdaptiveRouter(16, 4, 2, dtype=torch.bfloat16)  # x fp32, weight bf16
    with torch.no_grad(), pytest.raises(ConfigError, match=r"gate weight torch\.bfloat16"):
        fr.fused_route(mixed, x, fuse_gate=True)
    wide = AdaptiveRouter(16, 513, 2)  # beyond one 512-wide tile
    with torch.no_grad(), pytest.raises(ConfigError, match="513 experts"):
        fr.fused_route(wide, x, fuse_gate=True)
    router = AdaptiveRouter(16, 4, 2)  # grad mode, trainable gate: logits need gradients
    with pytest.raises(ConfigError, match="gradients"):
        fr.fused_route(router, x, fuse_gate=True)
    got, _ = fr.fused_route(router, x)  # the torch GEMM, differentiable logits
    assert got.logits.requires_grad
    with torch.no_grad():
        fused, _ = fr.fused_route(router, x, fuse_gate=True)
    assert not fused.logits.requires_grad
    torch.testing.assert_close(fused.logits, got.logits.detach(), rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("gate", ["torch", "fused"])
@pytest.mark.parametrize("backend", ["fused", "fused_graph"])
def test_layer_with_fused_route_matches_loop(backend: str, gate: str, spy: list[int],
                                             gen: torch.Generator,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # fp32 gates keep torch's GEMM by default; "fused": the layer's default choice fuses it
    if gate == "fused":  # and fused_route's own torch GEMM fails
        monkeypatch.setattr(fr, "_gate_pays_off", lambda router, x: True)
        monkeypatch.setattr(fr, "F", mock.Mock(linear=mock.Mock(side_effect=AssertionError)))
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
    layer.experts[0] = torch.nn.Sequential(torch.nn.Linear(32, 32))  # the first one neither
    layer(torch.randn(3, 32, generator=gen)).hidden_states.sum().backward()


def test_auto_builds_rows_for_a_fused_combine_only_while_it_may_choose_fused(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattmoe.moe.autoselect import AutoBackend

    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    layer = SimpleMoELayer(cfg, seed=2, backend="auto")
    monkeypatch.setattr(layer, "fused_routing", False)  # torch routing: build_dispatch's rows
    seen: list[bool] = []
    real = layer_mod.build_dispatch

    def spy(*args, **kwargs):
        d = real(*args, **kwargs)
        seen.append(d.rowof is not None)
        return d

    monkeypatch.setattr(layer_mod, "build_dispatch", spy)
    for winner, rows_after in (("grouped", False), ("fused", True)):
        auto = AutoBackend(candidates=["fused", "grouped"],
                           cost_fn=lambda name, info, w=winner: 0.0 if name == w else 1.0)
        monkeypatch.setattr(layer, "_backend", auto)
        seen.clear()
        with torch.no_grad():
            x = torch.randn(5, 32, generator=gen)
            layer(x)  # undecided: rows, in case it picks fused
            layer(x)
        assert seen == [True, rows_after], winner

    # with a capacity factor the kept rows decide auto's bucket: rows on every step
    cap = SimpleMoELayer(cfg.replace(capacity_factor=0.5), seed=2, backend="auto")
    monkeypatch.setattr(cap, "_backend", AutoBackend(
        candidates=["fused", "grouped"], cost_fn=lambda name, info: 0.0 if name == "grouped"
        else 1.0))
    seen.clear()
    with torch.no_grad():
        for _ in range(2):
            cap(torch.randn(5, 32, generator=gen))
    assert seen == [True, True]


def test_an_auto_backend_under_another_name_routes_fused_once_it_chose_fused(
    spy: list[int], gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wattmoe.moe.autoselect import AutoBackend

    cfg = get_preset("tiny").replace(hidden_size=32, expert_inner_size=32)
    layer = SimpleMoELayer(cfg, seed=2, backend="loop")
    monkeypatch.setattr(layer, "_backend", AutoBackend(
        candidates=["fused", "grouped"], cost_fn=lambda name, info: 0.0 if name == "fused"
        else 1.0))
    assert layer.backend_name == "loop"  # the name says nothing: the backend's type does
    spy.clear()
    with torch.no_grad():
        x = torch.randn(5, 32, generator=gen)
        layer(x)
        layer(x)
    assert len(spy) == 1  # the second step routed with fused_route


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


@pytest.mark.parametrize("hidden, tokens", [(200, 21), (256, 33), (1000, 5), (300, 3)])
def test_split_gate_sums_every_column_once_in_a_fixed_order(hidden: int, tokens: int,
                                                           gen: torch.Generator) -> None:
    # H split over programs (the parts summed by the last to arrive) gives the one-program
    # logits up to fp32 order, the same on every call, whatever the split. (The interpreter
    # runs programs in order, so the last split always arrives last here; on a GPU any may.)
    router = AdaptiveRouter(hidden, 12, 3, dtype=torch.float32)
    with torch.no_grad():
        router.gate.weight.copy_(torch.randn(12, hidden, generator=gen) / hidden**0.5)
    x = torch.randn(tokens, hidden, generator=gen)
    block_h = fr._gate_blocks(12, hidden)[1]
    runs = {}
    for target in (1, 1024):  # one split per token block; as many splits as BLOCK_H chunks
        with mock.patch.object(fr, "_GATE_TARGET_PROGRAMS", target), torch.no_grad():
            nsplit, per = fr._gate_split(tokens, hidden, block_h)
            assert per % block_h == 0 and nsplit * per >= hidden > (nsplit - 1) * per
            first, d1 = fr.fused_route(router, x, fuse_gate=True)
            second, _ = fr.fused_route(router, x, fuse_gate=True)
        assert torch.equal(first.logits, second.logits)
        assert_gate_logits(first.logits, x, router.gate.weight)
        runs[nsplit] = (first, d1)
    assert min(runs) == 1 and max(runs) == -(-hidden // block_h)
    (one, d_one), (split, d_split) = runs[1], runs[max(runs)]
    torch.testing.assert_close(split.logits, one.logits, rtol=1e-6, atol=1e-6)
    assert torch.equal(split.topk_idx, one.topk_idx)
    assert torch.equal(d_split.counts, d_one.counts)
    # the arrival counters lie past counts and the loss floats: the losses are still right
    torch.testing.assert_close(split.balance_loss, one.balance_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fuse_gate", [None, True, False])
def test_an_empty_step_routes_nothing_whatever_the_gate_path(fuse_gate: bool | None) -> None:
    # T = 0 returns before the gate path is chosen (a split of no token blocks would divide
    # by zero)
    router = AdaptiveRouter(64, 8, 2, dtype=torch.bfloat16)
    with torch.no_grad():
        got, d = fr.fused_route(router, torch.zeros(0, 64, dtype=torch.bfloat16),
                                fuse_gate=fuse_gate)
    assert got.topk_idx.shape == (0, 2) and d.token_idx.numel() == 0
    assert fr._gate_split(0, 64, 64)[0] >= 1


def test_bf16_rounding_of_the_fused_gate_keeps_nan_and_inf() -> None:
    from ._round_probe import round_kernel  # imports Triton: only once it runs interpreted

    # NaNs whose rounding carry would reach the exponent or the sign (0x7FFFFFFF is what
    # NVIDIA's fp32 units produce), infinities, the largest finite floats, ties to even
    bits = torch.tensor([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000, 0x7F800000,
                         0xFF800000, 0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F808001,
                         0, 0x80000000, 0x3F800000, 0x40490FDB, 0xC0490FDB, 0x00000001],
                        dtype=torch.int64).to(torch.int32)
    src = bits.view(torch.float32)
    dst = torch.empty_like(src)
    round_kernel[(1,)](src, dst, torch.zeros(1, dtype=torch.bfloat16), N=16)
    want = src.to(torch.bfloat16).float()  # torch rounds to nearest even
    assert torch.equal(dst.isnan(), want.isnan()) and int(dst[:4].isnan().sum()) == 4
    fin = ~want.isnan()
    assert torch.equal(dst[fin], want[fin])
