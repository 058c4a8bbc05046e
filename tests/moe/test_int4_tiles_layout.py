"""int4 codes stored in the fused kernels' tile order (`SimpleMoELayer.set_int4_layout`).

The fused int4 launches that read tile order then read the stack's codes in place instead of
a copy; every other reader (loop, grouped, launches of another order, the state dict) gets the
half-split codes. Run by Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import pytest
import torch

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.int4_layout import fused_layouts, tile_layout
from wattmoe.moe import fused_triton as ft
from wattmoe.moe.backends import get_backend
from wattmoe.moe.base import MoEConfig
from wattmoe.moe.layer import SimpleMoELayer
from wattmoe.moe.quant import (
    fragment_words,
    from_layout,
    quantize_expert,
    tile_rows,
    to_layout,
    unfragment_words,
    untile_rows,
)
from wattmoe.moe.stacked import stacked_experts
from wattmoe.placement.base import ExpertShape

from .interpreter import _interpreter, requires_interpreter  # noqa: F401 (autouse fixture)
from .test_backends import make_dispatch
from .test_backends_triton import default_tile_settings, experts, no_fallback  # noqa: F401


@pytest.mark.parametrize("layout", [(128, 16), (64, 16), (64, 8), (128, 8)])
def test_layout_round_trips_and_is_the_kernels_tile_order(layout: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (3, 256, 128), dtype=torch.uint8, generator=gen)
    stored = to_layout(codes, layout)
    assert stored.shape == codes.shape and stored.dtype == torch.uint8
    assert not torch.equal(stored, codes)
    assert torch.equal(stored.view(torch.int32), tile_rows(fragment_words(codes), *layout))
    assert torch.equal(from_layout(stored, layout), codes)
    assert torch.equal(unfragment_words(fragment_words(codes)), codes)
    words = fragment_words(codes)
    assert torch.equal(untile_rows(tile_rows(words, *layout), *layout), words)


def test_inverse_layouts_refuse_what_they_cannot_read() -> None:
    with pytest.raises(ShapeError, match="int32"):
        unfragment_words(torch.zeros(4, 8, dtype=torch.uint8))
    with pytest.raises(ShapeError, match="tiles of 64"):
        untile_rows(torch.zeros(96, 16, dtype=torch.int32), 64, 16)


@pytest.mark.parametrize(("rows", "up", "k", "group", "want"), [
    (2048, 1024, 2048, 128, (128, 16)),  # OLMoE gate/up: 128-row tiles, 64-byte K steps
    (2048, 0, 1024, 128, (128, 16)),  # its down rows
    (5760, 2880, 2880, 32, (64, 8)),  # gpt-oss-like, groups of 32: 64-row tiles, 32-byte steps
    (5760, 2880, 2880, 64, None),  # groups of 64: halves of 1440 columns not whole groups
    (384, 192, 128, 32, (64, 8)),  # the up rows start inside a 128-row tile
    (2048, 1024, 2048, 16, None),  # groups below a 32-byte block: no fragment words
    (96, 48, 96, 16, None),  # K/2 = 48: not whole 32-byte blocks
])
def test_tile_layout_is_what_the_kernels_read(rows: int, up: int, k: int, group: int,
                                              want: tuple[int, int] | None) -> None:
    assert tile_layout(rows, up, k, group) == want


def layer(hidden: int = 256, inner: int = 128, group: int = 32, seed: int = 0,
          form: str = "swiglu") -> SimpleMoELayer:
    cfg = MoEConfig("t", hidden_size=hidden, expert_inner_size=inner, num_experts=6, top_k=2,
                    expert_form=form)
    return SimpleMoELayer(cfg, seed=seed).quantize(group).eval()


@requires_interpreter
def test_tiles_change_no_result_and_no_state() -> None:
    lay = layer()
    x = torch.randn(37, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = lay(x).hidden_states
        state = {k: v.clone() for k, v in lay.state_dict().items()}
        packed = lay.experts[0].up_proj.packed.clone()
        assert lay.set_int4_layout("tiles") is lay and lay.int4_layout == "tiles"
        assert not torch.equal(lay.experts[0].up_proj.packed, packed)  # rewritten in place
        assert torch.equal(lay(x).hidden_states, before)  # loop reads the half-split codes
        saved = lay.state_dict()
        assert saved.keys() == state.keys()
        assert all(torch.equal(saved[k], v) for k, v in state.items())
        lay.set_int4_layout("rows")
    assert lay.int4_layout == "rows"
    assert torch.equal(lay.experts[0].up_proj.packed, packed)


@requires_interpreter
def test_a_state_dict_loads_into_a_layer_in_tile_order() -> None:
    src, dst = layer(seed=0), layer(seed=1).set_int4_layout("tiles")
    x = torch.randn(19, 256, generator=torch.Generator().manual_seed(2))
    dst.load_state_dict(src.state_dict())
    with torch.no_grad():
        assert torch.equal(dst(x).hidden_states, src(x).hidden_states)
    assert dst.int4_layout == "tiles"
    assert torch.equal(dst.experts[3].down_proj.codes(), src.experts[3].down_proj.packed)


@requires_interpreter
@pytest.mark.parametrize("form", ["swiglu", "relu"])
@pytest.mark.parametrize("config", [
    "w64t16fpx", "w128t128fpx", "w64t32r16fpx/w256t32s3w8fpx",  # tile order: read in place
    "w64t16f", "w64t16",  # fragment words row-major, half-split codes: copies made from codes
])
@pytest.mark.usefixtures("no_fallback")
def test_fused_launches_read_tile_order_in_place(config: str, form: str,
                                                 gen: torch.Generator) -> None:
    qx = torch.nn.ModuleList(quantize_expert(e, 32) for e in experts(6, 256, 128, form))
    x = torch.randn(41, 256, generator=gen)
    d = make_dispatch("skewed", 41, 6, 2, gen, with_rowof=True)
    with torch.no_grad():
        ref = get_backend("loop")(qx, x, d)
        rows_out = ft.fused_forward(stacked_experts(qx), x, d, config)
        rows_copies = ft.copy_bytes(stacked_experts(qx).kernel_cache)
        for e in qx:
            e.set_layout(True)
        from wattmoe.moe.stacked import invalidate_stack

        invalidate_stack(qx)
        st = stacked_experts(qx)
        assert (st.layout13, st.layout2) == fused_layouts(256, 128, form, 32)
        out = ft.fused_forward(st, x, d, config)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, rows_out)
    copies = ft.copy_bytes(st.kernel_cache)
    if config.endswith("fpx"):
        assert "frag_tiles" in rows_copies and "frag_tiles" not in copies
    else:
        assert "frag_tiles" not in copies and copies.get("frag", 0) + copies.get("codes", 0) > 0


@requires_interpreter
@pytest.mark.usefixtures("no_fallback")
def test_fused_launches_follow_weights_loaded_in_tile_order(gen: torch.Generator) -> None:
    lay = layer().set_int4_layout("tiles")
    lay.set_backend("fused")
    other = layer(seed=5)
    x = torch.randn(29, 256, generator=gen)
    with torch.no_grad():
        lay(x)  # builds the stack and its copies (scale pairs)
        lay.load_state_dict(other.state_dict())
        torch.testing.assert_close(lay(x).hidden_states, other(x).hidden_states,
                                   rtol=1e-5, atol=1e-5)


def test_set_int4_layout_keeps_the_stack_and_drops_its_copies() -> None:
    # no rebuild (which would hold the codes twice while copying them): the stack's tensors
    # stay, the kernels' objects made from the old layout go, graphs see a new build
    lay = layer()
    st = stacked_experts(lay.experts)
    ptr, build = st.q13.data_ptr(), st.build_id
    st.kernel_cache[("frag", ptr)] = "made from the row-major codes"
    lay.set_int4_layout("tiles")
    assert stacked_experts(lay.experts) is st and st.q13.data_ptr() == ptr
    assert (st.layout13, st.layout2) == lay.experts[0].layout != (None, None)
    assert st.kernel_cache == {} and st.build_id != build


def test_stacks_refuse_experts_of_mixed_layouts() -> None:
    qx = [quantize_expert(e, 32) for e in experts(3, 256, 128)]
    qx[1].set_layout(True)
    with pytest.raises(ConfigError, match="one layout"):
        stacked_experts(qx)


def test_set_int4_layout_needs_int4_experts_and_a_known_layout() -> None:
    cfg = MoEConfig("t", hidden_size=64, expert_inner_size=64, num_experts=2, top_k=1)
    with pytest.raises(ConfigError, match="quantize"):
        SimpleMoELayer(cfg).set_int4_layout("tiles")
    with pytest.raises(ConfigError, match="'rows'"):
        layer().set_int4_layout("tile")


@pytest.mark.parametrize(("hidden", "inner"), [(2048, 1024), (2048, 768), (7168, 2048)])
def test_placement_counts_no_copy_of_codes_in_tile_order(hidden: int, inner: int) -> None:
    # the table's three shapes: every matrix in tile order, so a GPU keeps the codes and
    # scales and a copy of the scales only (groups of 128: 1/32 of the codes' bytes)
    s = ExpertShape(hidden, inner, "swiglu", "int4")
    rows = s.replica_bytes("gpu", "fused")
    tiles = s.replica_bytes("gpu", "fused", "tiles")
    assert rows == 2 * s.weight_bytes
    assert tiles == s.weight_bytes + s.params // 64
    assert s.replica_bytes("cpu", "fused", "tiles") == s.weight_bytes
    assert s.replica_bytes("gpu", "loop", "tiles") == s.weight_bytes
    with pytest.raises(ConfigError, match="int4 layout"):
        s.replica_bytes("gpu", "fused", "columns")


@requires_interpreter
@pytest.mark.usefixtures("no_fallback")
def test_tile_copies_probe_compares_the_storage_layouts(tmp_path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # two layers of the same weights, codes row-major and in tile order, in alternating
    # windows: the tile-order launches read a copy of the first and the second itself
    import json

    from tests.scripts import load_script

    probe = load_script("benchmarks/gpu/tile_copies_probe.py")
    monkeypatch.setattr(ft, "choose_config", lambda st, n, dev: "w64t16fpx")
    reads = []
    real = ft._launch
    monkeypatch.setattr(ft, "_launch", lambda *a, **k: reads.append(k.get("w_layout"))
                        or real(*a, **k))
    out = tmp_path / "storage.json"
    assert probe.main(["--shapes", "h256_f128_swiglu_e4_k2", "--tokens", "24", "--compare",
                       "storage", "--rounds", "2", "--window", "0.01", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"] for r in rows] == ["rows eager", "tiles eager"]
    assert all(len(r["windows"]) == 2 and r["mj_per_step"] == 0 for r in rows)
    assert {None, (128, 16)} <= set(reads)


def test_tiles_on_a_shape_with_no_tile_order_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # H = F = 96, groups of 32: K/2 = 48 is not whole 32-byte blocks, no fragment words
    lay = layer(hidden=96, inner=96, group=32)
    with caplog.at_level("WARNING", logger="wattmoe.moe.layer"):
        lay.set_int4_layout("tiles")
    assert lay.int4_layout == "rows" and "stay row-major" in caplog.text


def test_a_stack_follows_layouts_set_expert_by_expert(gen: torch.Generator) -> None:
    # was: the stack kept its old layout (same addresses) and `dense` read tile-order bytes
    # as half-split codes (the grouped backend off by up to 0.38)
    qx = torch.nn.ModuleList(quantize_expert(e, 32) for e in experts(4, 256, 128))
    x = torch.randn(23, 256, generator=gen)
    d = make_dispatch("skewed", 23, 4, 2, gen, with_rowof=True)
    with torch.no_grad():
        want = get_backend("loop")(qx, x, d)
        assert stacked_experts(qx).layout13 is None
        for e in qx:
            e.set_layout(True)
        assert stacked_experts(qx).layout13 == (128, 8)
        torch.testing.assert_close(get_backend("grouped")(qx, x, d), want, rtol=1e-5, atol=1e-5)
    qx[0].gate_proj.set_layout(None)  # gate and up rows apart: no stack reads that
    with pytest.raises(ConfigError, match="gate and up rows alike"):
        stacked_experts(qx)


def test_whole_step_graphs_see_a_layout_change() -> None:
    # the layout changes at the same addresses: the step graphs' signature must still move
    from wattmoe.moe.graphs import GraphedLayer

    lay = layer()
    g = GraphedLayer(lay)
    before = g.weights_signature()
    lay.set_int4_layout("tiles")
    assert g.weights_signature() != before


def test_set_int4_layout_again_changes_nothing_and_works_in_inference_mode() -> None:
    lay = layer()
    st = stacked_experts(lay.experts)
    lay.set_int4_layout("rows")  # already: the stack keeps its build (graphs stay valid)
    assert stacked_experts(lay.experts).build_id == st.build_id
    cfg = MoEConfig("t", hidden_size=256, expert_inner_size=128, num_experts=6, top_k=2)
    with torch.inference_mode():  # codes made here are inference tensors (no stack yet)
        inf = SimpleMoELayer(cfg, seed=0).quantize(32).set_int4_layout("tiles")
    assert inf.int4_layout == "tiles"
    assert torch.equal(inf.experts[2].up_proj.codes(), lay.experts[2].up_proj.packed)


def test_a_middle_experts_layout_change_is_seen() -> None:
    # was: only the first expert's layout was compared, so a middle expert set apart left
    # the stack on its layout and grouped read that expert's tile-order bytes as codes
    lay = layer().set_int4_layout("tiles")
    x = torch.randn(31, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stacked_experts(lay.experts)
        lay.experts[3].set_layout(False)
        with pytest.raises(ConfigError, match="one layout"):  # not StackError: auto must not
            stacked_experts(lay.experts)  # run `loop` for good where one call fixes it
        lay.set_int4_layout("tiles")
        lay.set_backend("grouped")
        want = SimpleMoELayer(lay.config, seed=0).quantize(32).eval()
        want.set_backend("loop")
        torch.testing.assert_close(lay(x).hidden_states, want(x).hidden_states,
                                   rtol=1e-5, atol=1e-5)


def test_auto_decides_again_for_another_layout() -> None:
    from wattmoe.moe.stacked import stack_signature

    lay = layer()
    rows = stack_signature(lay.experts)
    lay.set_int4_layout("tiles")
    assert stack_signature(lay.experts) != rows


@pytest.fixture()
def as_if_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 'auto' int4 layout's device test answering as on an H200, for CPU tensors."""
    import wattmoe.moe.layer as layer_mod

    monkeypatch.setattr(layer_mod, "_reads_tiles_in_place", lambda device, dtype=None: True)


@requires_interpreter
@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.usefixtures("no_fallback", "as_if_sm90")
def test_auto_layout_stores_tiles_where_the_kernels_read_them(backend: str,
                                                              gen: torch.Generator) -> None:
    lay, want = layer(), layer()
    want.set_backend("loop")
    lay.set_backend(backend)
    assert lay.int4_layout_policy == "auto" and lay.int4_layout == "rows"
    x = torch.randn(23, 256, generator=gen)
    with torch.no_grad():
        out = lay(x).hidden_states
        assert lay.int4_layout == "tiles"
        assert lay.experts[2].layout == fused_layouts(256, 128, "swiglu", 32)
        torch.testing.assert_close(out, want(x).hidden_states, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lay(x).hidden_states, out, rtol=0, atol=0)
    # the format of record is unchanged: the state dict holds the half-split codes
    assert torch.equal(lay.state_dict()["experts.4.up_proj.packed"],
                       want.state_dict()["experts.4.up_proj.packed"])


@pytest.mark.usefixtures("as_if_sm90")
def test_auto_layout_leaves_pinned_reference_and_training_layers_alone() -> None:
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(3))
    pinned = layer().set_int4_layout("rows")
    pinned.set_backend("fused")
    loop = layer()
    loop.set_backend("loop")
    training = layer().train()
    training.set_backend("grouped")
    with torch.no_grad():
        pinned(x)
        loop(x)
    training(x.requires_grad_())
    assert (pinned.int4_layout_policy, pinned.int4_layout) == ("rows", "rows")
    assert loop.int4_layout == "rows" and training.int4_layout == "rows"
    # un-pinned, the next step of a fused backend stores tiles
    pinned.set_int4_layout("auto")
    with torch.no_grad():
        pinned(x.detach())
    assert pinned.int4_layout == "tiles"
    # a layer quantized after its first steps is looked at again
    late = SimpleMoELayer(MoEConfig("t", hidden_size=256, expert_inner_size=128,
                                    num_experts=6, top_k=2), seed=0).eval()
    late.set_backend("fused")
    with torch.no_grad():
        late(x.detach())
        late.quantize(32)(x.detach())
    assert late.int4_layout == "tiles"


def test_auto_layout_changes_nothing_off_sm90() -> None:
    lay = layer()
    lay.set_backend("fused")
    with torch.no_grad():
        lay(torch.randn(5, 256))
    assert lay.int4_layout == "rows"
    with pytest.raises(ConfigError, match="'auto'"):
        lay.set_int4_layout("columns")
    assert SimpleMoELayer(MoEConfig("t", hidden_size=64, expert_inner_size=64, num_experts=2,
                                    top_k=1)).set_int4_layout("auto").int4_layout is None


@pytest.mark.parametrize("tiles", [False, True])
def test_stacks_dequantize_in_pieces_as_whole(tiles: bool, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    import wattmoe.moe.stacked as stacked_mod
    from wattmoe.moe.quant import dequantize_int4

    lay = layer()
    if tiles:
        lay.set_int4_layout("tiles")
    st = stacked_experts(lay.experts)
    want13 = torch.stack([torch.cat([dequantize_int4(lin.codes(), lin.scales)
                                     for lin in (e.gate_proj, e.up_proj)]) for e in lay.experts])
    want2 = torch.stack([dequantize_int4(e.down_proj.codes(), e.down_proj.scales)
                         for e in lay.experts])
    for piece in (1, 256 * 256 * 4, 1 << 26):  # one expert a piece, 4 of 6 (a short last), all
        monkeypatch.setattr(stacked_mod, "DEQUANT_PIECE_WEIGHTS", piece)
        w13, w2 = st.dense(torch.float32)
        assert torch.equal(w13, want13) and torch.equal(w2, want2)


@requires_interpreter
@pytest.mark.usefixtures("no_fallback", "as_if_sm90")
def test_auto_layout_stores_a_replaced_expert_in_tiles_too(gen: torch.Generator) -> None:
    lay, want = layer(), layer()
    lay.set_backend("fused")
    want.set_backend("loop")
    x = torch.randn(17, 256, generator=gen)
    with torch.no_grad():
        lay(x)
        assert lay.int4_layout == "tiles"
        fresh = layer(seed=7).experts[2]  # row-major, as `quantize` makes it
        lay.experts[2] = fresh
        want.experts[2] = layer(seed=7).experts[2]
        torch.testing.assert_close(lay(x).hidden_states, want(x).hidden_states,
                                   rtol=1e-5, atol=1e-5)
    assert fresh.layout == lay.experts[0].layout != (None, None)


def test_tiles_are_read_in_place_only_in_16_bit_on_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    import wattmoe.moe.layer as layer_mod

    monkeypatch.setattr(ft, "_is_sm90", lambda device: True)
    monkeypatch.setattr(layer_mod, "available_backends", lambda device, dtype: ["fused"])
    dev = torch.device("cpu")
    assert layer_mod._reads_tiles_in_place(dev, torch.bfloat16)
    assert layer_mod._reads_tiles_in_place(dev, torch.float16)
    # fp32 activations: the kernels read half-split codes (a copy of tiles, not a saving)
    assert not layer_mod._reads_tiles_in_place(dev, torch.float32)


def test_a_layer_pickled_before_the_layout_policy_still_runs() -> None:
    lay = layer()
    del lay.__dict__["int4_layout_policy"], lay.__dict__["_int4_layout_seen"]
    with torch.no_grad():
        lay(torch.randn(3, 256))
    assert lay.int4_layout_policy == "auto" and lay.int4_layout == "rows"


def test_auto_layout_looks_again_in_another_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    # an fp32 step rules tiles out (the kernels read half-split codes in fp32); after
    # `.to(bf16)` the next step stores them
    import wattmoe.moe.layer as layer_mod

    monkeypatch.setattr(ft, "_is_sm90", lambda device: True)
    monkeypatch.setattr(layer_mod, "available_backends", lambda device, dtype: ["fused"])
    lay = layer()
    lay.set_backend("fused")
    with torch.no_grad():
        lay._auto_int4_layout(torch.randn(4, 256))
        assert lay.int4_layout == "rows"
        lay.to(torch.bfloat16)
        lay._auto_int4_layout(torch.randn(4, 256, dtype=torch.bfloat16))
    assert lay.int4_layout == "tiles"
