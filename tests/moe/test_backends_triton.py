"""The fused Triton kernels, run on CPU tensors by Triton's interpreter.

Triton decides at its first import whether its library runs interpreted, so this module sets
TRITON_INTERPRET=1 before anything imports Triton (wattmoe imports it lazily). Skipped where
Triton is not installed, or was already imported without the interpreter.

The interpreter rounds fp32 -> bf16 by truncation (the GPU rounds to nearest), so bf16 results
are held to 2e-2 here; fp32 (and int4 with fp32 compute) must match `loop` to 1e-5.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import pytest
import torch

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.moe import Expert, QuantizedExpert, quantize_expert
from wattmoe.moe import fused_triton as ft
from wattmoe.moe.backends import get_backend
from wattmoe.moe.stacked import stacked_experts

from .conftest import FakeGraph
from .interpreter import _interpreter, requires_interpreter  # noqa: F401 (autouse fixture)
from .test_backends import make_dispatch, rel_err

pytestmark = requires_interpreter


@pytest.fixture(autouse=True)
def default_tile_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the default int4 tile-order layout (128-row tiles, one copy per
    stack), whatever the environment the suite runs in ($WATTMOE_INT4_TILE_ROWS /
    $WATTMOE_INT4_TILE_COPIES are read once per process into these globals)."""
    for env in (ft.TILE_ROWS_ENV, ft.TILE_COPIES_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    monkeypatch.setattr(ft, "TILE_SHARED", True)


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if `fused_forward` falls back to `grouped_forward` (which matches `loop`
    too, so a silent fallback would pass every numeric check)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("fused_forward fell back to grouped_forward")

    monkeypatch.setattr(ft, "grouped_forward", refuse)


def experts(num: int, hidden: int, inner: int, form: str = "swiglu",
            dtype: torch.dtype = torch.float32, seed: int = 0) -> list[Expert]:
    torch.manual_seed(seed)
    return [Expert(hidden, inner, form, dtype) for _ in range(num)]


def run(ex: list, x: torch.Tensor, d, config: str) -> torch.Tensor:
    return ft.fused_forward(stacked_experts(ex), x, d, config)


@pytest.mark.parametrize("config", ["m16", "m32", "m64", "w64t16", "w64t32", "m32/w64t16"])
@pytest.mark.parametrize("form", ["swiglu", "relu"])
@pytest.mark.parametrize("kind", ["uniform", "skewed", "hot", "capacity"])
def test_fused_fp32_matches_loop(config: str, form: str, kind: str,
                                 gen: torch.Generator, no_fallback: None) -> None:
    ex = experts(8, 64, 32, form)
    # the row-store + combine path (rowof) for half the cases, the atomic path for the rest
    d = make_dispatch(kind, 37, 8, 2, gen, with_rowof=(form == "swiglu"))
    x = torch.randn(37, 64, generator=gen)
    with torch.no_grad():
        want = get_backend("loop")(ex, x, d)
        got = run(ex, x, d, config)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fused_single_token_and_ragged_widths(gen: torch.Generator, no_fallback: None) -> None:
    # H=48: K tiles of 32 do not divide it (masked K loop); F=40: columns wrap and are masked
    ex = experts(4, 48, 40)
    x = torch.randn(1, 48, generator=gen)
    d = make_dispatch("uniform", 1, 4, 2, gen)
    with torch.no_grad():
        torch.testing.assert_close(run(ex, x, d, "m16"), get_backend("loop")(ex, x, d),
                                   rtol=1e-5, atol=1e-5)


def test_fused_bf16_within_interpreter_rounding(gen: torch.Generator,
                                                no_fallback: None) -> None:
    ex = experts(8, 64, 64, dtype=torch.bfloat16)
    x = torch.randn(33, 64, generator=gen).bfloat16()
    d = make_dispatch("skewed", 33, 8, 2, gen, with_rowof=True)
    with torch.no_grad():
        assert rel_err(run(ex, x, d, "m32"), get_backend("loop")(ex, x, d)) < 2e-2


@pytest.mark.parametrize("config", ["w64t16fpx", "w64t32r16fp", "w64t16f", "w64t64k32dr16f",
                                    "w128t128fpx", "w256t32s3w8fpx"])
def test_fused_int4_in_halves_equals_the_whole_tile(config: str, gen: torch.Generator,
                                                    no_fallback: None) -> None:
    # the down launch unpacks each K step's tile in nibble halves (low, its MMAs, high; run 91),
    # in K halves (the first half of the packed columns, both nibbles, its MMAs, then the
    # second: `int4_split_form` 2, session 14, measured dearer than the wait on 256-row tiles,
    # run 97) or whole with a wait: the same weights, scales (pair
    # words or not), tails and TMA loads, so the same sums (K halves add them in another order);
    # the interpreter runs the halves' order through fp32 (MODE 4)
    qx = [quantize_expert(e, 64) for e in experts(4, 256, 128)]
    x = torch.randn(40, 256, generator=gen)
    d = make_dispatch("skewed", 40, 4, 2, gen, with_rowof=True)
    st = stacked_experts(qx)
    pair = ft.resolve_config(config, True)
    nibbles, k_halves, whole = (
        tuple(dataclasses.replace(c, **changes) for c in pair)
        for changes in ({"int4_split_form": 1}, {"int4_split_form": 2},
                        {"int4_split_dequant": False}))
    # each form is what its down launch runs (K halves: where the fitted K step of 64 packed
    # columns is two 32-byte blocks of words; w64t64k32dr16f's 32 is one, and it waits)
    down = ft._fit(pair[1], 256, 128, 64)
    assert down is not None
    k_form = 2 if down.block_k >= ft.INT4_SPLIT_K_MIN_BLOCK_K else 0
    default = (1 if down.block_n <= ft.INT4_NIBBLE_MAX_ROWS
               else (k_form or 1) if down.block_n <= ft.INT4_SPLIT_MAX_ROWS else 0)
    for cfgs, split in ((nibbles, 1), (k_halves, k_form), (whole, 0), (pair, default)):
        meta = ft.launch_meta(ft._fit(cfgs[1], 256, 128, 64), num_experts=4, k_dim=128,
                              gather=False, gated=False, act=0, combine=2, qgroup=64, ieee=True,
                              interpret=True, w_tma=False, int4_dequant=4)
        assert meta["INT4_SPLIT"] == split and meta["INT4_WAIT"] == (split == 0)
    with torch.no_grad():
        want = get_backend("loop")(qx, x, d)
        got_nibbles = ft.fused_forward(st, x, d, nibbles)
        got_k_halves = ft.fused_forward(st, x, d, k_halves)
        got_whole = ft.fused_forward(st, x, d, whole)
    torch.testing.assert_close(got_nibbles, got_whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_k_halves, got_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_nibbles, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k_halves, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("group", "config"),
                         [(32, "w64t16"), (16, "w64t16"), (64, "w64t32"), (64, "w64t16k128")])
@pytest.mark.parametrize("form", ["swiglu", "relu"])
def test_fused_int4_dequantizes_in_the_gemm(group: int, config: str, form: str,
                                            gen: torch.Generator, no_fallback: None) -> None:
    # K tiles shrink to divide the group and K/2 (group 16: tiles of 16 packed columns; group
    # 64 with K tiles of 128: 64 for gate/up, 32 for down (F=64, K/2=32). fp32
    # compute: exact against loop, which dequantizes separately.
    qx = [quantize_expert(e, group_size=group) for e in experts(8, 128, 64, form)]
    assert isinstance(qx[0], QuantizedExpert)
    d = make_dispatch("skewed", 29, 8, 2, gen)
    x = torch.randn(29, 128, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)


def test_fused_int4_bf16(gen: torch.Generator, no_fallback: None) -> None:
    qx = [quantize_expert(e, 32) for e in experts(8, 64, 64, dtype=torch.bfloat16)]
    x = torch.randn(21, 64, generator=gen).bfloat16()
    d = make_dispatch("uniform", 21, 8, 2, gen, with_rowof=True)
    with torch.no_grad():
        assert rel_err(run(qx, x, d, "w64t16"), get_backend("loop")(qx, x, d)) < 2e-2


def test_fused_unknown_config_is_a_config_error(gen: torch.Generator) -> None:
    qx = [quantize_expert(e, 32) for e in experts(4, 64, 32)]
    x = torch.randn(3, 64, generator=gen)
    d = make_dispatch("uniform", 3, 4, 2, gen)
    with pytest.raises(ConfigError, match="unknown int4 fused kernel config 'm16'"):
        run(qx, x, d, "m16")


def test_fused_backend_uses_triton_in_interpreter(gen: torch.Generator) -> None:
    ex = experts(4, 32, 32)
    x = torch.randn(5, 32, generator=gen)
    d = make_dispatch("uniform", 5, 4, 2, gen)
    with torch.no_grad():
        torch.testing.assert_close(get_backend("fused")(ex, x, d),
                                   get_backend("loop")(ex, x, d), rtol=1e-5, atol=1e-5)
    assert ft._kernel.cache_info().currsize >= 1


def test_no_candidate_skips_int4_dequantization() -> None:
    # the skip mode gives wrong values on purpose (kernel_diag.py), and the in-flight K loop
    # gives them at random (runs 86-88); neither may be tuned in
    for table in (ft.CANDIDATES, ft.INT4_CANDIDATES):
        for pair in table.values():
            assert not any(c.int4_skip_dequant or c.int4_inflight_mma for c in pair)


@pytest.mark.parametrize(("config", "inner", "group"), [
    ("w128t128fpx", 512, 64),  # 4 K steps, tile-order words and pair scales, a group a step
    ("w128t128dfp", 512, 128),  # TMA loads, two steps a group
    ("w128t32k128fp", 1024, 128),  # K steps of 128: four blocks each
    ("w64t64r16fpx", 512, 64),  # tails, in K halves asked for
])
def test_fused_int4_k_halves_over_several_k_steps(config: str, inner: int, group: int,
                                                  gen: torch.Generator,
                                                  no_fallback: None) -> None:
    # a session-14 review: the test above runs one K step of the down launch, so K halves'
    # pointer advances (activations, words in tile order, TMA coordinates) and a scale group
    # changing between steps were not run. Here the down launch's K is `inner`, several steps
    qx = [quantize_expert(e, group) for e in experts(4, 256, inner)]
    x = torch.randn(150, 256, generator=gen)
    d = make_dispatch("uniform", 150, 4, 2, gen, with_rowof=True)
    st = stacked_experts(qx)
    pair = ft.resolve_config(config, True)
    k_halves = tuple(dataclasses.replace(c, int4_split_form=2) for c in pair)
    whole = tuple(dataclasses.replace(c, int4_split_dequant=False) for c in pair)
    down = ft._fit(k_halves[1], 256, inner, group)
    assert down is not None and inner // 2 // down.block_k >= 2, down
    meta = ft.launch_meta(down, num_experts=4, k_dim=inner, gather=False, gated=False, act=0,
                          combine=2, qgroup=group, ieee=True, interpret=True, w_tma=False,
                          int4_dequant=4)
    assert meta["INT4_SPLIT"] == 2
    with torch.no_grad():
        want = get_backend("loop")(qx, x, d)
        got = ft.fused_forward(st, x, d, k_halves)
        got_whole = ft.fused_forward(st, x, d, whole)
    torch.testing.assert_close(got, got_whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", range(6))
def test_every_non_gated_int4_launch_waits_for_its_mmas_or_unpacks_in_halves(mode: int) -> None:
    # runs 86-88: a non-gated int4 K loop that neither waits for each step's MMAs nor unpacks
    # the tile in halves lets the next step rewrite an in-flight MMA's registers. Every
    # candidate's launches, every dequantization mode, every split form: exactly one of the two
    # (halves only for fragment words, MODE 3, and MODE 4 in the interpreter: nibble halves on
    # tiles of at most INT4_NIBBLE_MAX_ROWS rows, K halves up to INT4_SPLIT_MAX_ROWS where the
    # K step is two whole 32-byte blocks of words (else nibble halves), the wait above; K halves
    # asked for on a step of one block wait), gated and dense launches neither; the diagnostic
    # in-flight loop neither
    for name, pair in ft.INT4_CANDIDATES.items():
        for cfg, gated in ((pair[0], True), (pair[1], False)):
            for variant in (cfg, dataclasses.replace(cfg, int4_split_dequant=False),
                            dataclasses.replace(cfg, int4_inflight_mma=True),
                            dataclasses.replace(cfg, int4_split_form=1),
                            dataclasses.replace(cfg, int4_split_form=2)):
                meta = ft.launch_meta(
                    variant, num_experts=8, k_dim=1024, gather=gated, gated=gated,
                    act=1 if gated else 0, combine=0 if gated else 2, qgroup=128, ieee=False,
                    interpret=mode == 4, w_tma=variant.tma, int4_dequant=mode)
                wait, split = meta["INT4_WAIT"], meta["INT4_SPLIT"]
                if gated or variant.int4_inflight_mma:
                    assert not wait and not split, (name, mode, variant)
                    continue
                assert wait != bool(split), (name, mode, variant)
                want = 0
                if mode in (3, 4) and variant.int4_split_dequant:
                    k_ok = variant.block_k >= ft.INT4_SPLIT_K_MIN_BLOCK_K
                    rows = variant.block_n
                    form = variant.int4_split_form
                    if form:
                        want = form if k_ok or form == 1 else 0
                    elif rows <= ft.INT4_NIBBLE_MAX_ROWS:
                        want = 1
                    elif rows <= ft.INT4_SPLIT_MAX_ROWS:
                        want = 2 if k_ok else 1
                    else:
                        want = 0
                assert split == want, (name, mode, variant)
    dense = ft.launch_meta(ft.CANDIDATES["w64t32"][1], num_experts=8, k_dim=1024, gather=False,
                           gated=False, act=0, combine=2, qgroup=None, ieee=False,
                           interpret=False, w_tma=False, int4_dequant=0)
    assert not dense["INT4_WAIT"] and not dense["INT4_SPLIT"]
    # the 256-row down launch of Qwen3's and DeepSeek-V3's 512-token entries waits: nibble
    # halves took 197 registers and +5-7% energy (run 91), K halves 128 registers and
    # +0.9-1.8% (run 97), against the wait in the same process
    w256 = ft.INT4_CANDIDATES["w256t32s3w8fpx"][1]
    meta = ft.launch_meta(w256, num_experts=8, k_dim=1024, gather=False, gated=False, act=0,
                          combine=2, qgroup=128, ieee=False, interpret=False, w_tma=False,
                          int4_dequant=3)
    assert meta["INT4_SPLIT"] == 0 and meta["INT4_WAIT"]
    # the 128-row down launch of the 4096- and 16384-token entries unpacks in K halves (0.6-2.8%
    # less energy than nibble halves, runs 98-99), the 64-row one of the 64-token entries in
    # nibble halves (runs 91-92)
    for name, split in (("w128t128fpx", 2), ("w64t16fpx", 1)):
        meta = ft.launch_meta(ft.INT4_CANDIDATES[name][1], num_experts=8, k_dim=1024,
                              gather=False, gated=False, act=0, combine=2, qgroup=128,
                              ieee=False, interpret=False, w_tma=False, int4_dequant=3)
        assert meta["INT4_SPLIT"] == split and not meta["INT4_WAIT"], name


def test_int4_split_form_must_be_a_known_form() -> None:
    with pytest.raises(ConfigError, match="int4_split_form"):
        dataclasses.replace(ft.INT4_CANDIDATES["w64t16fpx"][1], int4_split_form=3)


def test_fused_int4_group_not_a_power_of_two(gen: torch.Generator, no_fallback: None) -> None:
    # group 48 divides K/2 = 48: the K tile must still be a power of two (16), not 48
    qx = [quantize_expert(e, group_size=48) for e in experts(4, 96, 96)]
    d = make_dispatch("uniform", 7, 4, 2, gen)
    x = torch.randn(7, 96, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, "w64t16"), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)


def test_fused_int4_without_a_tile_falls_back(gen: torch.Generator,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # group 20, K/2 = 20: no power-of-two tile of >= 16 divides both; grouped math instead
    calls: list[int] = []
    grouped = ft.grouped_forward

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return grouped(*args, **kwargs)

    monkeypatch.setattr(ft, "grouped_forward", spy)
    qx = [quantize_expert(e, group_size=20) for e in experts(4, 40, 40)]
    d = make_dispatch("uniform", 5, 4, 2, gen)
    x = torch.randn(5, 40, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, "w64t16"), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    assert calls == [1]


@pytest.mark.parametrize("kind", ["uniform", "capacity", "hot"])
def test_fused_combine_without_atomics_equals_atomic_path(kind: str, gen: torch.Generator,
                                                          no_fallback: None) -> None:
    ex = experts(8, 48, 32)
    x = torch.randn(19, 48, generator=gen)
    d = make_dispatch(kind, 19, 8, 3, gen, with_rowof=True)
    atomic = dataclasses.replace(d, rowof=None)
    with torch.no_grad():
        a = run(ex, x, d, "m16")
        b = run(ex, x, atomic, "m16")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, get_backend("loop")(ex, x, d), rtol=1e-5, atol=1e-5)


def test_fused_rejects_a_rowof_that_does_not_fit(gen: torch.Generator) -> None:
    ex = experts(4, 32, 32)
    x = torch.randn(3, 32, generator=gen)
    d = make_dispatch("uniform", 6, 4, 2, gen, with_rowof=True)  # built for 6 tokens
    d = dataclasses.replace(d, token_idx=d.token_idx[:5], weight=d.weight[:5])
    with pytest.raises(ShapeError, match=r"Dispatch.rowof is \(6, 2\) for 3 tokens"):
        run(ex, x, d, "m16")


@pytest.fixture
def tma_spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per weight descriptor built (not found in a stack's cache), whether TMA could
    address the weights."""
    made: list[bool] = []
    real = ft._new_descriptor

    def spy(w: torch.Tensor, cfg: ft.KernelConfig) -> object:
        desc = real(w, cfg)
        made.append(desc is not None)
        return desc

    monkeypatch.setattr(ft, "_new_descriptor", spy)
    return made


@pytest.mark.parametrize("config", ["m16d", "w64t32d", "m16d/w64t32d"])
@pytest.mark.parametrize("form", ["swiglu", "relu"])
def test_fused_tma_weight_loads_match_loop(config: str, form: str, gen: torch.Generator,
                                           no_fallback: None, tma_spy: list[bool]) -> None:
    # F=40 and H=48: tiles run past an expert's rows into the next expert's (and past the
    # last expert's into the descriptor's zero fill); K=48 is not a multiple of the K tile
    ex = experts(6, 48, 40, form)
    d = make_dispatch("skewed", 23, 6, 2, gen, with_rowof=(form == "swiglu"))
    x = torch.randn(23, 48, generator=gen)
    with torch.no_grad():
        got = run(ex, x, d, config)
        want = get_backend("loop")(ex, x, d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert tma_spy == [True, True]


def test_fused_int4_tma_weight_loads(gen: torch.Generator, no_fallback: None,
                                     tma_spy: list[bool]) -> None:
    qx = [quantize_expert(e, group_size=32) for e in experts(8, 128, 64)]
    d = make_dispatch("hot", 17, 8, 2, gen)
    x = torch.randn(17, 128, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, "w64t16d"), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    assert tma_spy == [True, True]


def test_fused_tma_unaligned_rows_use_plain_loads(gen: torch.Generator, no_fallback: None,
                                                  tma_spy: list[bool]) -> None:
    # fp32 rows of 50 (200 bytes) and 36 (144 bytes): the first is not 16-byte aligned
    ex = experts(4, 50, 36)
    d = make_dispatch("uniform", 9, 4, 2, gen)
    x = torch.randn(9, 50, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(ex, x, d, "m16d"), get_backend("loop")(ex, x, d),
                                   rtol=1e-5, atol=1e-5)
    assert tma_spy == [False, True]  # gate/up weights [E, 2F, 50]; down weights [E, 50, 36]


# counts around 64-token tiles: empty, exactly one tile, tails of 1, 16, 17, 32 and 33 rows,
# two full tiles, two tiles + 2, and a partial first tile
TAIL_COUNTS = [0, 64, 65, 80, 81, 96, 97, 128, 130, 10]


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """The constexpr keyword arguments of every fused GEMM launch (to see which paths ran)."""
    seen: list[dict[str, object]] = []
    real = ft._kernel

    class Spy:
        def __init__(self, kernel: object) -> None:
            self.kernel = kernel

        def __getitem__(self, grid: object) -> object:
            def launch(*args: object, **kwargs: object) -> object:
                seen.append(kwargs)
                return self.kernel[grid](*args, **kwargs)  # type: ignore[index]
            return launch

    monkeypatch.setattr(ft, "_kernel", lambda *a, **k: Spy(real(*a, **k)))
    return seen


def counted_dispatch(counts: list[int], gen: torch.Generator, with_rowof: bool):
    """Top-1 dispatch in which expert e gets exactly counts[e] tokens, in random order."""
    from wattmoe.moe import build_dispatch

    idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    idx = idx[torch.randperm(idx.numel(), generator=gen)][:, None]
    w = torch.rand(idx.shape[0], 1, generator=gen) + 0.1
    return build_dispatch(idx, w, len(counts), with_rowof=with_rowof)


@pytest.mark.parametrize(("config", "with_rowof"),
                         [("w64t64r16", True), ("w64t64r32", False), ("w64t64dr16", True)])
def test_fused_tail_rows_ride_on_the_last_tile(config: str, with_rowof: bool,
                                               gen: torch.Generator, no_fallback: None,
                                               launches: list[dict[str, object]]) -> None:
    ex = experts(len(TAIL_COUNTS), 32, 48)  # F=48: output tiles run past an expert's rows
    d = counted_dispatch(TAIL_COUNTS, gen, with_rowof)
    x = torch.randn(d.token_idx.numel(), 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(ex, x, d, config), get_backend("loop")(ex, x, d),
                                   rtol=1e-5, atol=1e-5)
    tail = int(config.split("r")[-1])
    gemms = [k for k in launches if "TAIL" in k]
    assert len(gemms) == 2 and all(k["TAIL"] == tail for k in gemms)
    assert all(k["W_TMA"] == ("dr" in config) for k in gemms)


def test_fused_tail_rows_on_128_token_tiles(gen: torch.Generator, no_fallback: None,
                                            launches: list[dict[str, object]]) -> None:
    # around one 128-token tile: empty, one tile, tails of 1, 31, 32 and 33 rows, two tiles
    counts = [0, 128, 129, 159, 160, 161, 256, 40]
    ex = experts(len(counts), 32, 48)
    d = counted_dispatch(counts, gen, True)
    x = torch.randn(d.token_idx.numel(), 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(ex, x, d, "w64t128dr32"), get_backend("loop")(ex, x, d),
                                   rtol=1e-5, atol=1e-5)
    gemms = [k for k in launches if "TAIL" in k]
    assert [(k["BLOCK_T"], k["TAIL"]) for k in gemms] == [(128, 32), (128, 32)]


@pytest.mark.parametrize("tail", [0, 16, 32])
def test_tail_block_layout_covers_every_row_once(tail: int) -> None:
    # the kernels' own block layout (`_expert_block`, `_rows`), run by the interpreter
    from ._layout_probe import layout_hits

    counts = [0, 64, 65, 80, 81, 96, 97, 128, 130, 10, 1, 0]
    total = sum(counts)
    hits = torch.zeros(total + 64, dtype=torch.int32)
    programs = torch.zeros(1, dtype=torch.int32)
    grid = (total + len(counts) * 63) // 64  # the launcher's upper bound
    layout_hits[(grid,)](torch.tensor(counts), hits, programs, len(counts), BLOCK=64,
                         TAIL=tail, TAIL_T=tail or 16, BLOCK_E=16)
    assert hits[:total].tolist() == [1] * total  # every row once
    # a last block of <= tail rows rides on the block before it
    want = sum(-(-c // 64) - (tail > 0 and c > 64 and 0 < c % 64 <= tail) for c in counts)
    assert int(programs.item()) == want
    assert int(hits[total:].sum()) == 0


@pytest.mark.parametrize("config", ["w64t64k32r16", "w64t64k32dr32"])
def test_fused_int4_tail_rows(config: str, gen: torch.Generator, no_fallback: None) -> None:
    # F=96: gate/up output tiles run past an expert's rows (into the next expert's)
    qx = [quantize_expert(e, group_size=32) for e in experts(len(TAIL_COUNTS), 64, 96)]
    d = counted_dispatch(TAIL_COUNTS, gen, True)
    x = torch.randn(d.token_idx.numel(), 64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("config", "tail", "message"),
                         [("w64t64", 24, "tail=24"), ("w64t64", 8, "tail=8"),
                          ("w64t64", 128, "tail=128"), ("m64", 16, "weights-first")])
def test_fused_bad_tail_is_a_config_error(config: str, tail: int, message: str,
                                          gen: torch.Generator) -> None:
    ex = experts(4, 32, 32)
    d = make_dispatch("uniform", 5, 4, 2, gen)
    x = torch.randn(5, 32, generator=gen)
    pair = ft.resolve_config(config, False)
    assert pair is not None
    bad = tuple(dataclasses.replace(c, tail=tail) for c in pair)
    with pytest.raises(ConfigError, match=message):
        ft.fused_forward(stacked_experts(ex), x, d, bad)


@pytest.mark.parametrize(("change", "message"), [
    (dict(block_m=0), "block_m"), (dict(block_m=48), "block_m"), (dict(block_n=-16), "block_n"),
    (dict(block_k=0), "block_k"), (dict(block_k=24), "block_k"),
    (dict(group_m=0), "group_m"),  # was a wrong answer
    (dict(group_m=-1), "group_m"),  # crashed the interpreter (free(): invalid pointer)
    (dict(num_warps=3), "num_warps"), (dict(num_stages=0), "num_stages"),
    (dict(tail=-16), "tail"), (dict(block_m=16.0), "block_m"),
])
def test_kernel_config_refuses_bad_values(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"kernel config {message}"):
        dataclasses.replace(ft.CANDIDATES["m16"][0], **change)


def test_kernel_config_from_dict() -> None:
    for pair in (*ft.CANDIDATES.values(), *ft.INT4_CANDIDATES.values()):
        for c in pair:
            assert ft.KernelConfig.from_dict(dataclasses.asdict(c)) == c
    base = {"block_m": 16, "block_n": 64, "block_k": 64}
    assert ft.KernelConfig.from_dict({**base, "swap": 1, "tma": 0}) == ft.KernelConfig(
        16, 64, 64, swap=True)
    for bad, message in [
        ({**base, "blok_m": 16}, "unknown field 'blok_m'"),
        ({"block_m": 16}, "missing field"),
        ({**base, "block_m": "x"}, "block_m"),
        ({**base, "block_m": 16.5}, "block_m"),  # was truncated to 16
        ({**base, "block_m": None}, "block_m"),
        ({**base, "swap": "false"}, "swap"),  # was True
        ({**base, "tma": 2}, "tma"),
        ([16, 64, 64], "an object"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ft.KernelConfig.from_dict(bad)  # type: ignore[arg-type]


def test_fused_tma_descriptors_are_built_once_per_stack(gen: torch.Generator, no_fallback: None,
                                                        tma_spy: list[bool]) -> None:
    ex = experts(6, 48, 40)
    d = make_dispatch("uniform", 11, 6, 2, gen, with_rowof=True)
    x = torch.randn(11, 48, generator=gen)
    with torch.no_grad():
        first = run(ex, x, d, "m16d/w64t32d")
        again = run(ex, x, d, "m16d/w64t32d")
        # bf16 tokens on an fp32 stack: weights cast for this call only, never cached
        run(ex, x.bfloat16(), d, "m16d/w64t32d")
        run(ex, x.bfloat16(), d, "m16d/w64t32d")
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert tma_spy == [True, True] + [True, True] * 2
    assert len(stacked_experts(ex).kernel_cache) == 2


# ---- int4 weights as fragment-ordered words (`int4_frag`; MODE 4 in the interpreter) ----


@pytest.mark.parametrize("config", ["w64t64k32f", "w64t64k32r16fp", "w64t64k32df",
                                    "w64t16k128f/w64t64k32dr32f", "w64t64k32dfp",
                                    "w64t16fp/w64t64k32dr32fp"])
def test_fused_int4_fragment_words_match_loop(config: str, gen: torch.Generator,
                                              no_fallback: None,
                                              launches: list[dict[str, object]]) -> None:
    # K/2 = 32 (gate/up) and 64 (down): whole 32-byte blocks, so the words are read
    qx = [quantize_expert(e, 32) for e in experts(6, 64, 128)]
    x = torch.randn(53, 64, generator=gen)
    d = make_dispatch("skewed", 53, 6, 2, gen, with_rowof=True)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    gemms = [k for k in launches if "INT4_DEQUANT" in k]
    assert [k["INT4_DEQUANT"] for k in gemms] == [4, 4]
    assert [k["W_TMA"] for k in gemms] == [c.tma for c in ft.resolve_config(config, True)]
    assert [k["SPAIR"] for k in gemms] == [c.int4_pairs for c in ft.resolve_config(config, True)]


@pytest.mark.parametrize("config", ["w64t64k32r16fp", "w64t16fp", "w64t64k32dr32fp",
                                    "w64t16r16fp", "w64t32r16fp/w64t32k32r32fp"])
@pytest.mark.parametrize("form", ["swiglu", "relu"])
def test_fused_int4_scale_pairs_match_loop(config: str, form: str, gen: torch.Generator,
                                           no_fallback: None,
                                           launches: list[dict[str, object]]) -> None:
    # groups of 32 = one K step: every step reads another pair word (4 steps in gate/up, 2 in
    # down), and the up rows' pairs lie F rows past the gate rows'; the interpreter reads fp16
    # pairs (MODE 4), the same indexing and strides as the GPU's compute-dtype pairs
    gemms = _pairs_case_launches(config, form, gen, launches)
    assert [(k["SPAIR"], k["INT4_DEQUANT"]) for k in gemms] == [(True, 4), (True, 4)]


def _pairs_case_launches(config: str, form: str, gen: torch.Generator,
                         launches: list[dict[str, object]]) -> list[dict[str, object]]:
    """Six int4 experts (H = 256, F = 128, groups of 32) against `loop` with `config`; the
    int4 launches' constexprs."""
    qx = [quantize_expert(e, 32) for e in experts(6, 256, 128, form)]
    x = torch.randn(41, 256, generator=gen)
    d = make_dispatch("skewed", 41, 6, 2, gen, with_rowof=True)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    return [k for k in launches if "INT4_DEQUANT" in k]


@pytest.mark.parametrize("config", ["w64t64k32r16fpx", "w64t16fpx", "w64t16r16fpx",
                                    "w64t32r16fpx/w64t32k32r32fpx", "w128t16r16fpx",
                                    "w128t32fpx/w64t16fp",
                                    # the shipped 512-token pairs: 256-row down programs over
                                    # two warp groups, 128-row tiles (four 64-row runs at 64)
                                    "w128t32s3fpx/w256t32s3w8fpx",
                                    "w64t32r16fpx/w256t32s3w8fpx", "w128t128fpx"])
@pytest.mark.parametrize("form", ["swiglu", "relu"])
@pytest.mark.parametrize("tile_rows", [128, 64])
def test_fused_int4_tile_order_matches_loop(config: str, form: str, tile_rows: int,
                                            gen: torch.Generator, no_fallback: None,
                                            launches: list[dict[str, object]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # words and pairs in tile order (`int4_tiles`): every K step's tile and every group's
    # pairs at their tile-order place, the up rows' tiles F rows on; groups of 32 = one K step.
    # Tiles of 64 rows: 128-row programs read two tiles' runs per K step; of 128 rows: 64-row
    # programs read the first or the second half of a tile (H = 256, F = 128: both halves)
    monkeypatch.setattr(ft, "TILE_ROWS", tile_rows)
    gemms = _pairs_case_launches(config, form, gen, launches)
    want = [tile_rows if c.int4_tiles else 0 for c in ft.resolve_config(config, True)]
    assert [(k["SPAIR"], k["W_TILES"]) for k in gemms] == [(True, t) for t in want]


@pytest.mark.parametrize(("inner", "config", "tile_rows", "tiles"), [
    # F = 192: 128-row tiles would cross from gate rows into up rows (row-major words there),
    # down (H = 128) has them whole
    (192, "w128t16fpx", 128, [0, 128]),
    # 64-row tiles are whole in both, but gate/up's 128-row programs are not (192 rows: the
    # second program would read rows past the gate rows): row-major there; down's read two
    # tiles' runs per K step
    (192, "w128t16fpx", 64, [0, 64]),
    # F = 96: gate/up's 64-row tiles would cross; down's K/2 = 48 is not whole 32-byte blocks
    # (no words, no pairs)
    (96, "w64t16fpx", 128, [0, 0]),
    # F = 192: gate/up's 64-row programs cannot read 128-row tiles (the up rows start inside
    # one), so they read 64-row tiles; down's (H = 128) read halves of a 128-row tile
    (192, "w64t16fpx", 128, [64, 128]),
])
def test_fused_int4_tile_order_only_where_tiles_are_whole(
        inner: int, config: str, tile_rows: int, tiles: list[int], gen: torch.Generator,
        no_fallback: None, launches: list[dict[str, object]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ft, "TILE_ROWS", tile_rows)
    qx = [quantize_expert(e, 32) for e in experts(4, 128, inner)]
    x = torch.randn(29, 128, generator=gen)
    d = make_dispatch("uniform", 29, 4, 2, gen, with_rowof=True)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    assert [k["W_TILES"] for k in launches if "INT4_DEQUANT" in k] == tiles


@pytest.mark.parametrize(("tile_rows", "shared", "copies"),
                         [(64, True, 1), (128, True, 1), (128, False, 2)])
def test_tile_order_copies_per_stack_follow_the_settings(
        tile_rows: int, shared: bool, copies: int, gen: torch.Generator, no_fallback: None,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # 64- and 128-row programs with the same K step read one copy: in 64-row tiles (128-row
    # programs read two tiles' runs) or in 128-row tiles (64-row programs read half of one);
    # with per-program copies (before session 15) each program size reads its own
    monkeypatch.setattr(ft, "TILE_ROWS", tile_rows)
    monkeypatch.setattr(ft, "TILE_SHARED", shared)
    caplog.set_level(logging.INFO, logger=ft.__name__)
    qx = [quantize_expert(e, 32) for e in experts(6, 256, 128)]
    x = torch.randn(41, 256, generator=gen)
    d = make_dispatch("skewed", 41, 6, 2, gen, with_rowof=True)
    stk = stacked_experts(qx)
    with torch.no_grad():
        a = ft.fused_forward(stk, x, d, "w64t16fpx")
        b = ft.fused_forward(stk, x, d, "w128t32fpx")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    kinds = [k[0] for k in stk.kernel_cache if isinstance(k[0], str)]
    assert sorted(kinds) == ["frag_tiles"] * 2 * copies + ["pair_tiles"] * 2 * copies  # w13, w2
    # each copy of the codes holds as many bytes as the codes, each of the scales (fp16 pairs
    # in the interpreter) as many as the scales
    def nbytes(*ts: torch.Tensor) -> int:
        return sum(t.numel() * t.element_size() for t in ts)

    assert ft.copy_bytes(stk.kernel_cache) == {
        "frag_tiles": copies * nbytes(stk.q13, stk.q2),
        "pair_tiles": copies * nbytes(stk.s13, stk.s2)}
    assert ft.copy_bytes({}) == {}
    # each new copy is logged once, with what the stack's copies hold by then
    made = [r.getMessage() for r in caplog.records if "fused int4: new" in r.getMessage()]
    assert len(made) == 4 * copies
    assert made[-1].endswith(f"hold {sum(ft.copy_bytes(stk.kernel_cache).values()) / 1e6:.1f} MB")
    with torch.no_grad():
        ft.fused_forward(stk, x, d, "w64t16fpx")
    assert sum("fused int4: new" in r.getMessage() for r in caplog.records) == 4 * copies


def test_int4_heuristic_on_sm90_takes_the_tuned_families(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # untuned int4 shapes on an H100/H200 get the families that won every H200 tuning; CPUs
    # and other GPUs keep the plain tiles
    picks = {m: ft.heuristic_config(m * 64, 64, True, sm90=True) for m in (2, 16, 32, 64, 512)}
    assert picks == {2: "w64t16fpx", 16: "w64t16fpx", 32: "w64t32r16fpx",
                     64: "w64t64r16fpx", 512: "w128t128fpx"}
    assert all(ft.resolve_config(n, True) is not None for n in picks.values())
    assert ft.heuristic_config(64 * 64, 64, True) == "w64t64"
    assert ft.heuristic_config(64 * 64, 64, False) == "m64"  # bf16 elsewhere: unchanged
    qst = stacked_experts([quantize_expert(e, 32) for e in experts(4, 64, 32)])
    assert ft.choose_config(qst, 64, torch.device("cpu")) == "w64t16"
    monkeypatch.setattr(ft, "_is_sm90", lambda device: True)
    monkeypatch.setattr(ft, "load_tuned", lambda device: {})
    assert ft.choose_config(qst, 64, torch.device("cpu")) == "w64t16fpx"
    # above 96 rows per expert: 128-row tiles where the widths are whole 128-row tiles, or
    # where no tile order is possible (no scale pairs); else 64-row ones, which read tile
    # order (run 116: H = F = 2880 with groups of 32, -27% per captured experts step)
    assert ft.heuristic_config(512 * 64, 64, True, sm90=True, tiles128=False) == "w64t128fpx"
    for h, f, g, want in ((256, 192, 32, "w64t128fpx"),  # halves whole, F not 128-row tiles
                          (256, 256, 32, "w128t128fpx"),  # whole 128-row tiles
                          (256, 192, 64, "w128t128fpx")):  # F/2 = 96: no scale pairs
        st = stacked_experts([quantize_expert(e, g) for e in experts(4, h, f)])
        assert ft.choose_config(st, 4 * 512, torch.device("cpu")) == want, (h, f, g)


def test_bf16_heuristic_on_sm90_takes_the_tuned_entries(gen: torch.Generator,
                                                        no_fallback: None) -> None:
    # untuned bf16 shapes on an H100/H200 get the entries that won the H200 tunings by rows per
    # expert (run 82); each is a candidate (pairs too), and runs as `loop` does where the
    # shape's rows are not whole tiles (TMA loads fall back to pointer loads on the CPU)
    picks = {m: ft.heuristic_config(m * 8, 8, False, sm90=True)
             for m in (4, 16, 32, 64, 128, 1024)}
    assert picks == {4: "m16", 16: "w64t32", 32: "w64t64dr16/m64d",
                     64: "w64t64dr16/w128t64dr16", 128: "w128t128dr16/m128n256d",
                     1024: "m128n256d"}
    # fp32 stacks keep the plain tiles, without m32: its fp32 gate/up launch needs more
    # shared memory than an sm_90 SM has
    fp32 = {m: ft.heuristic_config(m * 8, 8, False, sm90=True, elem_size=4)
            for m in (4, 16, 32, 64, 128, 1024)}
    assert fp32 == {4: "m16", 16: "m16", 32: "m64", 64: "m64", 128: "m64", 1024: "m128"}
    st = stacked_experts(experts(4, 64, 32))
    assert st.dtype == torch.float32
    assert ft.choose_config(st, 32 * 4, torch.device("cpu")) == "m64"
    ex = experts(5, 96, 224)
    x = torch.randn(37, 96, generator=gen)
    d = make_dispatch("skewed", 37, 5, 2, gen, with_rowof=True)
    with torch.no_grad():
        want = get_backend("loop")(ex, x, d)
        for name in picks.values():
            assert ft.resolve_config(name, False) is not None
            torch.testing.assert_close(run(ex, x, d, name), want, rtol=1e-5, atol=1e-5)


def test_int4_heuristic_picks_share_one_copy(gen: torch.Generator, no_fallback: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # a stack run at every step size through the heuristic holds one tile-order copy of its
    # codes and of its scales, not one per program size
    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    qx = [quantize_expert(e, 32) for e in experts(4, 256, 128)]
    stk = stacked_experts(qx)
    with torch.no_grad():
        for m in (2, 32, 64, 512):
            x = torch.randn(37, 256, generator=gen)
            d = make_dispatch("skewed", 37, 4, 2, gen, with_rowof=True)
            ft.fused_forward(stk, x, d, ft.heuristic_config(m * 4, 4, True, sm90=True))
    nbytes = sum(t.numel() * t.element_size() for t in (stk.q13, stk.q2, stk.s13, stk.s2))
    assert sum(ft.copy_bytes(stk.kernel_cache).values()) == nbytes


@pytest.mark.parametrize(("hidden", "inner", "form"),
                         [(256, 256, "swiglu"), (256, 128, "swiglu"), (128, 256, "relu"),
                          (96, 128, "swiglu")])
def test_placement_counts_the_copies_the_fused_int4_kernels_make(
        hidden: int, inner: int, form: str, gen: torch.Generator, no_fallback: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the placement's figure for the fused kernels' copy of an int4 replica
    # (`ExpertShape.fused_copy_bytes`, from the shape alone) is what a stack run through the
    # heuristic's picks holds, per expert: with words and pairs for every matrix (256 x 256),
    # without pairs where a row's halves are not whole groups (K = 128, groups of 128), and
    # without words where a row is not whole 32-byte blocks (H = 96: gate and up, groups of 32)
    from wattmoe.moe import int4_group_size
    from wattmoe.placement import ExpertShape

    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    group = int4_group_size(hidden, inner)
    stk = stacked_experts([quantize_expert(e, group) for e in experts(4, hidden, inner, form)])
    with torch.no_grad():
        for m in (2, 64, 512):
            x = torch.randn(37, hidden, generator=gen)
            d = make_dispatch("skewed", 37, 4, 2, gen, with_rowof=True)
            ft.fused_forward(stk, x, d, ft.heuristic_config(m * 4, 4, True, sm90=True))
    shape = ExpertShape(hidden, inner, form, "int4")
    assert sum(ft.copy_bytes(stk.kernel_cache).values()) == 4 * shape.fused_copy_bytes
    held = sum(t.numel() * t.element_size() for t in (stk.q13, stk.q2, stk.s13, stk.s2))
    assert held == 4 * shape.weight_bytes


@pytest.mark.parametrize("config", ["w64t32r16fpx", "w64t64r16fpx", "w64t128fpx",
                                    "w128t128fpx"])
@pytest.mark.parametrize(("hidden", "inner", "group"), [(96, 224, 32), (128, 192, 64)])
def test_int4_heuristic_picks_on_shapes_with_partial_tiles(
        config: str, hidden: int, inner: int, group: int, gen: torch.Generator,
        no_fallback: None) -> None:
    # an untuned shape whose rows are not whole tiles (F = 224, 192; H = 96) or whose halves are not
    # whole groups falls back to row-major words or half-split codes, with the same outputs
    qx = [quantize_expert(e, group) for e in experts(5, hidden, inner)]
    x = torch.randn(37, hidden, generator=gen)
    d = make_dispatch("skewed", 37, 5, 2, gen, with_rowof=True)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)


def test_tile_rows_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ft.TILE_ROWS_ENV, raising=False)
    assert ft._tile_rows_setting() == 128
    monkeypatch.setenv(ft.TILE_ROWS_ENV, "64")
    assert ft._tile_rows_setting() == 64
    for bad in ("96", "8", "x", "-64"):
        monkeypatch.setenv(ft.TILE_ROWS_ENV, bad)
        with pytest.raises(ConfigError, match="WATTMOE_INT4_TILE_ROWS"):
            ft._tile_rows_setting()


def test_resolve_config_needs_both_halves_of_a_pair() -> None:
    assert ft.resolve_config("w64t16fp", True) == ft.INT4_CANDIDATES["w64t16fp"]
    pair = ft.resolve_config("w64t16fp/w64t32fp", True)
    assert pair == (ft.INT4_CANDIDATES["w64t16fp"][0], ft.INT4_CANDIDATES["w64t32fp"][1])
    for bad in ("w64t16fp/", "/w64t16fp", "/", "w64t16fp/nope"):
        assert ft.resolve_config(bad, True) is None


def test_tile_rows_setting_is_read_at_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # not at import: a bad value fails the first int4 tile-order launch, not `import wattmoe`
    cfg = ft.INT4_CANDIDATES["w128t32s3fpx"][0]
    monkeypatch.setattr(ft, "TILE_ROWS", None)
    monkeypatch.setenv(ft.TILE_ROWS_ENV, "96")
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fp"][0], 2048, 2048, 4096) == 0  # no tiles
    with pytest.raises(ConfigError, match="WATTMOE_INT4_TILE_ROWS"):
        ft._tile_rows(cfg, 2048, 2048, 4096)
    monkeypatch.setenv(ft.TILE_ROWS_ENV, "64")
    assert ft._tile_rows(cfg, 2048, 2048, 4096) == 64
    assert ft.TILE_ROWS == 64


def test_tile_copies_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ft.TILE_COPIES_ENV, raising=False)
    assert ft._tile_copies_setting() is True
    for raw, want in (("shared", True), (" per-program ", False)):
        monkeypatch.setenv(ft.TILE_COPIES_ENV, raw)
        assert ft._tile_copies_setting() is want
    monkeypatch.setenv(ft.TILE_COPIES_ENV, "one")
    with pytest.raises(ConfigError, match="WATTMOE_INT4_TILE_COPIES='one': 'shared'"):
        ft._tile_copies_setting()
    # read at the first launch that could read tile order, as the tile rows
    monkeypatch.setattr(ft, "TILE_SHARED", None)
    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    with pytest.raises(ConfigError, match="WATTMOE_INT4_TILE_COPIES"):
        ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 2048, 2048, 4096)
    monkeypatch.setenv(ft.TILE_COPIES_ENV, "per-program")
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 2048, 2048, 4096) == 64
    assert ft.TILE_SHARED is False


def test_tile_rows_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ft, "TILE_SHARED", True)
    cfg = ft.INT4_CANDIDATES["w128t32s3fpx"][0]
    monkeypatch.setattr(ft, "TILE_ROWS", 64)
    assert ft._tile_rows(cfg, 2048, 2048, 4096) == 64
    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    assert ft._tile_rows(cfg, 2048, 2048, 4096) == 128
    # 64-row programs read halves of 128-row tiles where those are whole, else 64-row tiles
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 2048, 2048, 4096) == 128
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 192, 192, 384) == 64
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 192, 0, 192) == 64
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 128, 0, 128) == 128
    assert ft._tile_rows(cfg, 192, 192, 384) == 0  # 128 rows do not divide 192
    monkeypatch.setattr(ft, "TILE_ROWS", 64)
    assert ft._tile_rows(cfg, 192, 192, 384) == 0  # nor whole 128-row programs
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fpx"][0], 192, 192, 384) == 64
    assert ft._tile_rows(ft.INT4_CANDIDATES["w64t16fp"][0], 2048, 2048, 4096) == 0


def test_tile_rows_places_each_tile_contiguously() -> None:
    from wattmoe.moe.quant import tile_rows

    w = torch.arange(2 * 4 * 6, dtype=torch.int32).reshape(2, 4, 6)
    t = tile_rows(w, 2, 3)
    assert t.shape == w.shape
    # expert 0: rows 0-1 x cols 0-2, then rows 0-1 x cols 3-5, then rows 2-3 ...
    assert t[0].flatten().tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11,
                                       12, 13, 14, 18, 19, 20, 15, 16, 17, 21, 22, 23]
    assert torch.equal(t[1], tile_rows(w[1], 2, 3))
    out = torch.empty_like(w)
    assert tile_rows(w, 2, 3, out=out) is out and torch.equal(out, t)
    with pytest.raises(ShapeError, match="multiple of 3"):
        tile_rows(w, 3, 3)
    with pytest.raises(ShapeError, match="out="):
        tile_rows(w, 2, 3, out=torch.empty(2, 4, 6, dtype=torch.int64))


def test_tile_order_copies_are_refreshed_in_place(gen: torch.Generator,
                                                  no_fallback: None) -> None:
    # what a graph replay runs instead of `_launch`: the tile-order words and pairs of written
    # weights and scales rewritten at their addresses
    from wattmoe.moe.quant import fragment_words, scale_pairs, tile_rows

    qx, x, d, stk = int4_case(gen)
    with torch.no_grad():
        ft.fused_forward(stk, x, d, "w64t16fpx")
    kinds = {k[0] for k in stk.kernel_cache if isinstance(k, tuple) and isinstance(k[0], str)}
    assert {"frag_tiles", "pair_tiles"} <= kinds and "frag" not in kinds
    before = {k: v[1].data_ptr() for k, v in stk.kernel_cache.items() if k[0] in kinds}
    with torch.no_grad():
        qx[1].up_proj.packed.copy_(qx[2].up_proj.packed)
        qx[2].gate_proj.scales.mul_(2.0)
    ft.refresh_frag_words(stk.kernel_cache)
    for k, v in stk.kernel_cache.items():
        if k[0] == "frag_tiles" and k[1] == stk.q13.data_ptr():
            assert torch.equal(v[1], tile_rows(fragment_words(stk.q13), *k[3:]))
        if k[0] == "pair_tiles" and k[1] == stk.s13.data_ptr():
            assert torch.equal(v[1], tile_rows(scale_pairs(stk.s13, k[2]), k[3], 1))
    assert {k: v[1].data_ptr() for k, v in stk.kernel_cache.items() if k[0] in kinds} == before


@pytest.mark.parametrize(("group", "hidden", "inner", "config", "modes"), [
    # group 16: K tiles of 16 packed columns (a tile lies in one group), not a 32-byte block
    (16, 64, 64, "w64t64k32f", [0, 0]),
    # H = 96: gate/up rows are 48 bytes (not whole 32-byte blocks); down rows (F = 128) are
    (32, 96, 128, "w64t16f", [0, 4]),
])
def test_fused_int4_fragment_words_off_where_tiles_are_not_whole_blocks(
        group: int, hidden: int, inner: int, config: str, modes: list[int],
        gen: torch.Generator, no_fallback: None, launches: list[dict[str, object]]) -> None:
    qx = [quantize_expert(e, group) for e in experts(4, hidden, inner)]
    x = torch.randn(9, hidden, generator=gen)
    d = make_dispatch("uniform", 9, 4, 2, gen, with_rowof=True)
    with torch.no_grad():
        torch.testing.assert_close(run(qx, x, d, config), get_backend("loop")(qx, x, d),
                                   rtol=1e-5, atol=1e-5)
    assert [k["INT4_DEQUANT"] for k in launches if "INT4_DEQUANT" in k] == modes


def int4_case(gen: torch.Generator):
    """Four int4 experts (H = F = 64, groups of 32: whole 32-byte blocks), 7 tokens, top-2,
    and their stack."""
    qx = [quantize_expert(e, 32) for e in experts(4, 64, 64)]
    x = torch.randn(7, 64, generator=gen)
    d = make_dispatch("uniform", 7, 4, 2, gen, with_rowof=True)
    return qx, x, d, stacked_experts(qx)


def test_fused_int4_fragment_words_follow_weight_writes(gen: torch.Generator,
                                                        no_fallback: None) -> None:
    # the words are a cached copy: writing the experts' packed weights in place refreshes it
    qx, x, d, stk = int4_case(gen)
    with torch.no_grad():
        first = ft.fused_forward(stk, x, d, "w64t16f")
        words = [v[1] for k, v in stk.kernel_cache.items() if k[0] == "frag"]
        qx[2].up_proj.packed.copy_(qx[1].up_proj.packed)  # a view of the stack's codes
        second = ft.fused_forward(stk, x, d, "w64t16f")
        torch.testing.assert_close(second, get_backend("loop")(qx, x, d), rtol=1e-5, atol=1e-5)
    assert not torch.equal(first, second)
    # refreshed in place: what a captured graph reads is the new weights
    assert [v[1].data_ptr() for k, v in stk.kernel_cache.items() if k[0] == "frag"] == [
        t.data_ptr() for t in words]


def test_fragment_words_only_where_their_dequantization_runs() -> None:
    from types import SimpleNamespace

    cfg = ft.INT4_CANDIDATES["w64t64k32f"][0]
    on = SimpleNamespace
    gpu_bf16 = on(is_cuda=True, dtype=torch.bfloat16)
    gpu_fp32 = on(is_cuda=True, dtype=torch.float32)
    cpu = on(is_cuda=False, dtype=torch.float32)
    assert ft._dequant_mode(cfg, cpu, 128) == 4  # the interpreter checks the word order
    assert ft._dequant_mode(cfg, gpu_fp32, 128) == 0  # fp32 on a GPU: half-split codes
    assert ft._dequant_mode(cfg, gpu_bf16, 128) == (3 if torch.version.hip is None else 0)
    assert ft._dequant_mode(cfg, gpu_bf16, None) == 0  # dense weights
    off = dataclasses.replace(cfg, int4_frag=False)
    assert ft._dequant_mode(off, cpu, 128) == 0
    # kernel_diag's skip variant keeps the launch's data path: MODE 5 reads the fragment words
    # (2 the half-split codes); the interpreter and fp32 ignore the flag
    skip = dataclasses.replace(cfg, int4_skip_dequant=True)
    assert ft._dequant_mode(skip, gpu_bf16, 128) == (5 if torch.version.hip is None else 0)
    assert ft._dequant_mode(dataclasses.replace(skip, int4_frag=False), gpu_bf16, 128) == (
        2 if torch.version.hip is None else 0)
    assert ft._dequant_mode(skip, cpu, 128) == 4
    assert ft._dequant_mode(skip, gpu_fp32, 128) == 0


def test_fused_int4_fragment_words_of_inference_tensors(gen: torch.Generator,
                                                        no_fallback: None) -> None:
    # experts quantized and stacked under inference mode: the stack's codes still keep a
    # version counter, so writes made under inference mode refresh the words too
    with torch.inference_mode():
        qx, x, d, stk = int4_case(gen)
        assert not stk.q13.is_inference()
        first = ft.fused_forward(stk, x, d, "w64t16f")
        qx[0].down_proj.packed.copy_(qx[3].down_proj.packed)
        second = ft.fused_forward(stk, x, d, "w64t16f")
        torch.testing.assert_close(second, get_backend("loop")(qx, x, d), rtol=1e-5, atol=1e-5)
    assert not torch.equal(first, second)


def test_graphs_keep_their_copies_when_a_stack_gains_one(
        gen: torch.Generator, no_fallback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # a graph captured at one step size reads that size's int4 copies: a copy made later for
    # another layout, or a copy rewritten in place, leaves it valid; a copy it reads made anew
    # at another address does not
    monkeypatch.setattr(ft, "TILE_ROWS", 64)
    qx = [quantize_expert(e, 32) for e in experts(6, 256, 128)]
    x = torch.randn(41, 256, generator=gen)
    d = make_dispatch("skewed", 41, 6, 2, gen, with_rowof=True)
    stk = stacked_experts(qx)
    with torch.no_grad():
        ft.fused_forward(stk, x, d, "w64t16fpx")
        captured = ft.refresh_frag_words(stk.kernel_cache)
        monkeypatch.setattr(ft, "TILE_ROWS", 128)  # 128-row tiles: copies of their own
        ft.fused_forward(stk, x, d, "w128t32fpx")
        monkeypatch.setattr(ft, "TILE_ROWS", 64)
        now = ft.refresh_frag_words(stk.kernel_cache)
        assert len(now) > len(captured) and not ft.copies_moved(captured, now)
        qx[1].up_proj.packed.copy_(qx[2].up_proj.packed)  # rewritten at the same addresses
        assert not ft.copies_moved(captured, ft.refresh_frag_words(stk.kernel_cache))
        held = [v[1] for v in stk.kernel_cache.values()]  # so that no address is handed back
        stk.kernel_cache.clear()
        ft.fused_forward(stk, x, d, "w64t16fpx")
        assert ft.copies_moved(captured, ft.refresh_frag_words(stk.kernel_cache))
    del held
    # the same address under another key (memory handed from one copy to another) is moved
    (key, ptr), = list(captured)[:1]
    assert ft.copies_moved(frozenset({(key, ptr)}), frozenset({(("frag", 0), ptr)}))


def test_refresh_frag_words_rewrites_written_weights_in_place(gen: torch.Generator,
                                                              no_fallback: None) -> None:
    # what a graph replay runs instead of `_launch`: stale words rewritten at their address
    qx, x, d, stk = int4_case(gen)
    with torch.no_grad():
        ft.fused_forward(stk, x, d, "w64t16f")
    entries = {k: v for k, v in stk.kernel_cache.items() if k[0] == "frag"}
    before = {k: (v[1].data_ptr(), v[1].clone()) for k, v in entries.items()}
    ft.refresh_frag_words(stk.kernel_cache)  # nothing written: nothing changes
    assert all(torch.equal(stk.kernel_cache[k][1], b) for k, (_, b) in before.items())
    qx[1].up_proj.packed.copy_(qx[2].up_proj.packed)
    ft.refresh_frag_words(stk.kernel_cache)
    from wattmoe.moe.quant import fragment_words

    assert torch.equal(stk.kernel_cache[("frag", stk.q13.data_ptr())][1],
                       fragment_words(stk.q13))
    assert {k: v[1].data_ptr() for k, v in stk.kernel_cache.items() if k[0] == "frag"} == {
        k: p for k, (p, _) in before.items()}


def test_scale_pairs_are_cached_and_refreshed_in_place(gen: torch.Generator) -> None:
    # what `_launch` reads with `int4_pairs` on a GPU (MODE 3): kept per stack like the
    # words, rewritten at the same address after an in-place write to the scales
    from wattmoe.moe.quant import scale_pairs

    qx, _, _, stk = int4_case(gen)
    first = ft._derived(stk.s13, stk.kernel_cache, "pairs", torch.bfloat16)
    assert ft._derived(stk.s13, stk.kernel_cache, "pairs", torch.bfloat16) is first
    assert torch.equal(first, scale_pairs(stk.s13, torch.bfloat16))
    with torch.no_grad():
        qx[2].gate_proj.scales.mul_(2.0)
    ft.refresh_frag_words(stk.kernel_cache)
    entry = stk.kernel_cache[("pairs", stk.s13.data_ptr(), torch.bfloat16)]
    assert entry[1].data_ptr() == first.data_ptr()
    assert torch.equal(entry[1], scale_pairs(stk.s13, torch.bfloat16))


def test_scale_pairs_only_where_their_dequantization_runs() -> None:
    cfg = ft.INT4_CANDIDATES["w64t64k32fp"][0]
    assert cfg.int4_frag and cfg.int4_pairs
    assert ft._uses_scale_pairs(cfg, 3, 2048, 128)
    assert ft._uses_scale_pairs(cfg, 4, 2048, 128)  # the interpreter: fp16 pair words
    assert ft._uses_scale_pairs(cfg, 5, 2048, 128)  # kernel_diag's skip of MODE 3
    assert not ft._uses_scale_pairs(cfg, 2, 2048, 128)  # the skip of half-split codes
    assert not ft._uses_scale_pairs(cfg, 1, 2048, 128)  # half-split codes
    assert not ft._uses_scale_pairs(cfg, 3, 96, 32)  # K/2 = 48: halves are not whole groups
    assert not ft._uses_scale_pairs(cfg, 3, 2048, None)
    assert not ft._uses_scale_pairs(dataclasses.replace(cfg, int4_pairs=False), 3, 2048, 128)
    assert all(p[0].int4_pairs == p[1].int4_pairs == n.endswith(("fp", "fpx"))
               for n, p in ft.INT4_CANDIDATES.items())


def test_graphed_layer_refreshes_fragment_words_before_each_replay(
        monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    # CUDA graphs on a CPU: a stand-in graph whose replay checks the words it would read
    import gc

    from wattmoe.moe import SimpleMoELayer, get_preset, graphs
    from wattmoe.moe.quant import fragment_words
    from wattmoe.moe.stacked import existing_stack

    stale: list[bool] = []

    def check_words() -> None:  # a replay: are the words it would read those of the codes?
        st = existing_stack(layer.experts)
        stale.extend(not torch.equal(v[1], fragment_words(v[2]))
                     for k, v in st.kernel_cache.items() if k[0] == "frag")

    def fake_capture(fn, device, pool):  # warm-up calls, then the "recorded" one
        fn()
        fn()
        return FakeGraph(check_words), fn()

    monkeypatch.setattr(graphs, "_warm_and_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(graphs.GraphedLayer, "capturable", lambda self, x: True)
    cfg = get_preset("olmoe-1b-7b", 0.03125)
    torch.manual_seed(0)
    layer = SimpleMoELayer(cfg, dtype="fp32").eval().quantize(32)
    layer.set_backend("fused")
    x = torch.randn(5, cfg.hidden_size, generator=gen)
    monkeypatch.setattr(ft, "choose_config", lambda *args: "w64t16f")
    with torch.inference_mode():
        layer(x)  # builds the stack (which re-points the experts' tensors) before capturing
        g = graphs.GraphedLayer(layer)
        g(x)
        g(x)
        layer.experts[0].down_proj.packed.copy_(layer.experts[1].down_proj.packed.clone())
        g(x)
    assert g.captures == 1 and g.replays == 3
    assert len(stale) == 6 and not any(stale)  # two word tensors (gate/up, down) per replay
    with torch.inference_mode():
        existing_stack(layer.experts).kernel_cache.clear()  # the words the graph reads go
        g(x)  # made anew at other addresses: the step is captured again, not replayed stale
        g(x)
    assert (g.captures, g.replays) == (2, 5) and len(stale) == 10 and not any(stale)
    layer.experts = torch.nn.ModuleList(list(layer.experts))  # a new container: a new stack
    gc.collect()
    assert g._stacks[0]() is None  # the old stack is not kept alive by the wrapper


def test_graphed_layer_captures_once_when_its_warm_up_builds_the_stack(
        monkeypatch: pytest.MonkeyPatch, gen: torch.Generator) -> None:
    # no eager step before the wrapper: the first capture's warm-up stacks the experts, which
    # re-points their tensors; the graph reads the stack, so it is kept, not captured again
    from wattmoe.moe import SimpleMoELayer, get_preset, graphs
    from wattmoe.moe.stacked import existing_stack

    def fake_capture(fn, device, pool):
        fn()
        return FakeGraph(lambda: None), fn()

    monkeypatch.setattr(graphs, "_warm_and_capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(graphs.GraphedLayer, "capturable", lambda self, x: True)
    cfg = get_preset("olmoe-1b-7b", 0.03125)
    layer = SimpleMoELayer(cfg, dtype="fp32").eval()
    layer.set_backend("fused")
    x = torch.randn(5, cfg.hidden_size, generator=gen)
    with torch.inference_mode():
        g = graphs.GraphedLayer(layer)
        assert existing_stack(layer.experts) is None
        for _ in range(3):
            g(x)
        assert existing_stack(layer.experts) is not None
        assert (g.captures, g.replays) == (1, 3)
        layer.quantize(32)  # replaced tensors: dropped and captured again, once
        g(x)
        g(x)
    assert (g.captures, g.replays) == (2, 5)


def test_graphed_backend_recaptures_when_the_int4_copies_are_made_anew(
        gen: torch.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    # a cleared kernel cache frees the words a captured graph reads: capture again
    from wattmoe.moe import graphs

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
    monkeypatch.setattr(ft, "choose_config", lambda *args: "w64t16f")
    from wattmoe.moe import backends

    def fused_on_cpu(experts, x, d):  # the kernels in Triton's interpreter, on a plain tensor
        return get_backend("fused")(experts, x.as_subclass(torch.Tensor), d)

    monkeypatch.setitem(backends.EXPERT_BACKENDS, "fused_on_cpu", fused_on_cpu)
    qx, x, d, stk = int4_case(gen)
    g = graphs.GraphedBackend("fused_on_cpu")
    with torch.no_grad():
        for _ in range(2):
            g(qx, x.as_subclass(FakeCuda), d)
        stk.kernel_cache.clear()
        out = g(qx, x.as_subclass(FakeCuda), d).as_subclass(torch.Tensor)
        g(qx, x.as_subclass(FakeCuda), d)
        torch.testing.assert_close(out, get_backend("loop")(qx, x, d), rtol=1e-5, atol=1e-5)
    assert (g.captures, g.replays) == (2, 4)


def test_fragment_words_made_under_inference_mode_are_rewritten_outside_it(
        gen: torch.Generator, no_fallback: None) -> None:
    qx, x, d, stk = int4_case(gen)
    with torch.inference_mode():
        ft.fused_forward(stk, x, d, "w64t16f")  # words made here
    with torch.no_grad():  # a load_state_dict-like write, then a step, outside inference mode
        qx[0].up_proj.packed.copy_(qx[3].up_proj.packed)
        torch.testing.assert_close(ft.fused_forward(stk, x, d, "w64t16f"),
                                   get_backend("loop")(qx, x, d), rtol=1e-5, atol=1e-5)


def test_refresh_frag_words_force_sees_writes_past_the_version_counter(
        gen: torch.Generator, no_fallback: None) -> None:
    qx, x, d, stk = int4_case(gen)
    with torch.no_grad():
        ft.fused_forward(stk, x, d, "w64t16f")
        qx[0].down_proj.packed.data.copy_(qx[2].down_proj.packed)  # .data: no version bump
        ft.refresh_frag_words(stk.kernel_cache, force=True)
        torch.testing.assert_close(ft.fused_forward(stk, x, d, "w64t16f"),
                                   get_backend("loop")(qx, x, d), rtol=1e-5, atol=1e-5)


def test_kernels_bench_runs_its_checks_on_the_cpu(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                  no_fallback: None) -> None:
    # the GPU benchmark end to end on the CPU (Triton's interpreter for the fused backends): a
    # change to the script that breaks a section, its JSON or the int4 copy record shows here,
    # not on the next GPU lease
    import json

    from tests.scripts import load_script

    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    monkeypatch.setattr(ft, "choose_config",  # int4 in tile order: copies to record
                        lambda st, *args: "w64t16fpx" if st.quantized else "m16")
    kb = load_script("benchmarks/gpu/kernels_bench.py")
    kb.main(["--device", "cpu", "--shapes", "tiny@0.5", "--sections", "check",
             "--check-cases", "uniform:16,skewed:16", "--check-backends", "loop,grouped,fused",
             "--out", str(tmp_path)])
    out = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert out["errors"] == []
    assert len(out["check"]) == 2 * 2 * 3 and all(r["ok"] for r in out["check"])
    (copies,) = out["int4_copies"]
    assert copies["shape"] == "tiny@0.5" and copies["weight_bytes"] > 0
    # tiny@0.5 (H = F = 64) is quantized with its default group, 32 since session 17, whose
    # halves of a row are whole: scale pairs and fragment words, both in tile order, as many
    # bytes as the codes and scales (with 64, the default before, its halves were not whole
    # groups: row-major fragment words alone, fewer bytes than the codes and scales)
    assert sorted(copies["copy_bytes"]) == ["frag_tiles", "pair_tiles"]
    assert sum(copies["copy_bytes"].values()) == copies["weight_bytes"]


def test_kernels_bench_records_what_the_default_backend_ran(tmp_path) -> None:
    # the `auto` variants measure the default backend; each row says which backends its
    # steps ran (the layer's own AutoBackend, calibration in the window's warm-up)
    import json

    from tests.scripts import load_script

    kb = load_script("benchmarks/gpu/kernels_bench.py")
    kb.main(["--device", "cpu", "--shapes", "tiny@0.5", "--sections", "energy",
             "--tokens", "2", "--variants", "auto,auto_int4,auto_eager,loop", "--window", "0.05",
             "--out", str(tmp_path)])
    out = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert out["errors"] == []
    rows = {r["backend"]: r for r in out["energy"]}
    assert rows["loop"]["auto_chose"] is None
    for label, weights in (("auto", "bf16"), ("auto_int4", "int4"), ("auto_eager", "bf16")):
        assert rows[label]["whole_step_replays"] is None  # (a CPU: no whole-step graphs)
        ran = rows[label]["auto_chose"]
        assert rows[label]["weights"] == weights
        assert ran and set(ran) <= {"loop", "grouped", "fused"}
        assert sum(ran.values()) >= rows[label]["steps"]  # the window's steps, warm-up too


def test_kernels_bench_tunes_a_shipped_pair_beside_candidates(tmp_path,
                                                            no_fallback: None) -> None:
    # --tune-candidates takes 'A/B' pairs (a shipped entry, timed and energy-measured in the
    # same windows as the candidates it is weighed against); before, pairs were dropped
    import json

    from tests.scripts import load_script

    kb = load_script("benchmarks/gpu/kernels_bench.py")
    kb.main(["--device", "cpu", "--shapes", "tiny@0.5", "--sections", "tune",
             "--tune-weights", "int4", "--tokens", "16",
             "--tune-candidates", "w64t16f,w64t32f/w64t16f", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert out["errors"] == []
    impls = [r["impl"] for r in out["tune"] if r["impl"] != "grouped"]
    assert impls == ["fused:w64t16f", "fused:w64t32f/w64t16f"]
    assert all(r["ok"] for r in out["tune"] if r["impl"] != "grouped")


def test_kernels_bench_keeps_what_it_measured_when_stopped(tmp_path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           no_fallback: None) -> None:
    # a GPU run stopped by `timeout` (SIGTERM) or Ctrl-C in its second shape keeps the first
    # shape's results in its JSON (run 81 lost a whole tune section that way) and exits 130
    import json

    from tests.scripts import load_script

    kb = load_script("benchmarks/gpu/kernels_bench.py")
    shapes_done: list[str] = []

    def stop_in_second(self, shape: str, qlayer) -> None:
        shapes_done.append(shape)
        if len(shapes_done) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` sends it
            time.sleep(1)  # the handler runs at the next bytecode

    monkeypatch.setattr(kb.Bench, "record_copies", stop_in_second)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        kb.main(["--device", "cpu", "--shapes", "tiny@0.5,tiny@0.25", "--sections", "check",
                 "--check-cases", "uniform:8", "--check-backends", "loop",
                 "--out", str(tmp_path)])
    assert exit_info.value.code == 130
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    out = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert out["interrupted"] is True
    assert {r["shape"] for r in out["check"]} == {"tiny@0.5", "tiny@0.25"}
    assert (tmp_path / "tuned_configs.json").exists()


def test_kernels_bench_stops_at_its_deadline(tmp_path, no_fallback: None) -> None:
    # --deadline ends the run at the next item once passed, saving what was measured, without
    # an error (a cooperative stop where `timeout` may kill a process inside a CUDA call)
    import json

    from tests.scripts import load_script

    kb = load_script("benchmarks/gpu/kernels_bench.py")
    kb.main(["--device", "cpu", "--shapes", "tiny@0.5,tiny@0.25", "--sections", "check",
             "--check-cases", "uniform:8,skewed:8", "--check-backends", "loop",
             "--deadline", "0", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "kernels_bench.json").read_text())
    assert out["stopped"].startswith("--deadline 0 s passed")
    assert out["check"] == [] and out["errors"] == []


def test_nan_probe_runs_on_the_cpu(tmp_path, no_fallback: None) -> None:
    # the GPU hunt for run 85's intermittent non-finite output, end to end in the interpreter:
    # one JSON record per repeat, none bad on a correct configuration
    import json

    from tests.scripts import load_script

    probe = load_script("benchmarks/gpu/nan_probe.py")
    out = tmp_path / "probe.json"
    assert probe.main(["--device", "cpu", "--shape", "tiny", "--tokens", "24", "--repeats", "2",
                       "--config", "w64t16fpx,w64t16fpx/w64t16f:s2:inflight", "--out",
                       str(out)]) == 0
    reps = json.loads(out.read_text())["repeats"]
    assert [(r["repeat"], r["config"], r["pattern"]) for r in reps] == [
        (0, "w64t16fpx", "0xFF"), (0, "w64t16fpx/w64t16f:s2:inflight", "0x7F"),
        (1, "w64t16fpx", "0x7F"), (1, "w64t16fpx/w64t16f:s2:inflight", "0x00")]
    assert all(r["ok"] and r["nonfinite"] == 0 and r["rel_err"] < 1e-4 for r in reps)
    for bad, why in (("nope", "unknown int4 config 'nope'"), ("w64t16fpx:2", "modifier '2'"),
                     ("w64t16fpx:s0", "modifier 's0'"), ("w64t16fpx:inflight:x", "modifier 'x'"),
                     ("w64t16fpx:inflight:split", "does not go with :split")):
        with pytest.raises(SystemExit, match=why):
            probe.main(["--device", "cpu", "--shape", "tiny", "--config", bad])
    with pytest.raises(SystemExit, match="--shape: unknown preset 'nope'"):
        probe.main(["--device", "cpu", "--shape", "nope"])
    # the split forms whatever the tile's rows (a 256-row tile waits unless one is asked for)
    for mod, form in (("nibbles", 1), ("khalves", 2)):
        pair = probe.resolve(f"w256t32s3w8fpx:{mod}", True)
        assert all(c.int4_split_dequant and c.int4_split_form == form for c in pair)
    with pytest.raises(SystemExit, match="are for --weights int4"):
        probe.main(["--device", "cpu", "--shape", "tiny", "--weights", "bf16", "--config",
                    "m16:inflight"])
    # where a wrong output is: non-finite and wild entries, their tokens and column blocks
    ref = torch.ones(4, 130)
    got = ref.clone()
    got[1, 3], got[2, 129] = float("nan"), 1e6
    assert probe.wrong_entries(got, ref) == {
        "wrong": 2, "wrong_tokens": 2, "first_tokens": [1, 2], "columns": [3, 129],
        "column_blocks64": [0, 2]}


@pytest.mark.parametrize(("config", "int4"), [
    ("w64t16fpx", True), ("w64t32r16fpx", True), ("w128t128fpx", True),
    ("w64t32", False), ("w64t64dr16/m64d", False), ("m128n256d", False)])
def test_fused_launches_read_only_memory_they_wrote(config: str, int4: bool, gen: torch.Generator,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    no_fallback: None) -> None:
    # every buffer the fused step allocates (int4 copies, h, y) starts as NaN (floats) or -1
    # (integers): a launch that read a row it did not write would give a non-finite output
    # (run 85 saw one intermittently on the GPU; this rules out the index logic)
    ex = experts(4, 128, 128)
    x = torch.randn(70, 128, generator=gen)
    d = make_dispatch("skewed", 70, 4, 2, gen, with_rowof=True)
    ex = [quantize_expert(e, 64) for e in ex] if int4 else ex
    want = get_backend("loop")(ex, x, d)
    st = stacked_experts(ex)
    empty, made = torch.empty, []

    def poisoned(*args, **kwargs) -> torch.Tensor:
        t = empty(*args, **kwargs)
        made.append(t.dtype)
        return t.fill_(float("nan") if t.is_floating_point() else -1)

    monkeypatch.setattr(torch, "empty", poisoned)
    with torch.no_grad():
        out = ft.fused_forward(st, x, d, config)
    monkeypatch.undo()
    assert x.dtype in made  # h and y came through the poisoned allocator
    if int4:
        assert torch.int32 in made  # and the int4 copies
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_tile_copies_probe_runs_on_the_cpu(tmp_path, no_fallback: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # both int4 tile layouts in one process, alternating windows, end to end in the
    # interpreter: a row per layout with its windows, each step in its own layout (64-row
    # programs read halves of 128-row tiles, or tiles of their own), the setting left as found
    import json

    from tests.scripts import load_script

    probe = load_script("benchmarks/gpu/tile_copies_probe.py")
    out = tmp_path / "tiles.json"
    monkeypatch.setattr(ft, "choose_config", lambda st, n, dev: "w64t16fpx")  # tile order
    monkeypatch.setattr(ft, "TILE_ROWS", 128)
    seen = []
    real = ft._tile_rows
    monkeypatch.setattr(ft, "_tile_rows", lambda *a: seen.append(
        (ft.TILE_SHARED, real(*a))) or seen[-1][1])
    before = ft.TILE_SHARED
    assert probe.main(["--shapes", "h256_f128_swiglu_e4_k2", "--tokens", "24",
                       "--rounds", "2", "--window", "0.01", "--out", str(out)]) == 0
    assert ft.TILE_SHARED is before
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tokens"], r["step"]) for r in rows] == [(24, "shared eager"),
                                                         (24, "per-program eager")]
    for r in rows:
        assert len(r["windows"]) == 2 and r["cpu_ms_per_step"] > 0 and r["ms_per_step"] > 0
    assert {(True, 128), (False, 64)} <= set(seen)
    with pytest.raises(SystemExit):
        probe.main(["--tokens", "0", "--out", str(out)])
    assert probe.main(["--shapes", "nope", "--out", str(out)]) == 2
