"""State dicts of stacked experts (`wattmoe.moe.stack_state`): less than the whole stack saves
its own bytes; the layer, its `experts` list and a model keep the stack's views."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from wattmoe.moe import MoETransformerBlock, SimpleMoELayer, get_preset
from wattmoe.moe.base import MoEConfig
from wattmoe.moe.stacked import ExpertStack, stacked_experts

KINDS = ["fp32", "int4", "int4-tiles"]


@pytest.fixture(autouse=True)
def _no_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def stepped(layer: SimpleMoELayer, seed: int = 3) -> ExpertStack:
    """Runs one no-grad step on `grouped`, which stacks the experts (as a user's step does)."""
    layer.set_backend("grouped")
    x = torch.randn(11, layer.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        layer(x)
    return stacked_experts(layer.experts)


def olmoe(kind: str) -> SimpleMoELayer:
    """OLMoE at 1/16 (64 experts, H 128, F 64), where the bug was measured."""
    layer = SimpleMoELayer(get_preset("olmoe-1b-7b", 1 / 16), seed=0).eval()
    return layer.quantize() if kind.startswith("int4") else layer


def tiled(kind: str, seed: int) -> SimpleMoELayer:
    """A layer whose int4 codes do tile (H 256, F 128, groups of 32), or its dense twin."""
    cfg = MoEConfig("t", hidden_size=256, expert_inner_size=128, num_experts=6, top_k=2)
    layer = SimpleMoELayer(cfg, seed=seed).eval()
    if kind.startswith("int4"):
        layer.quantize(32)
    if kind == "int4-tiles":
        layer.set_int4_layout("tiles")
        assert layer.int4_layout == "tiles"
    return layer


def saved_bytes(state: dict) -> int:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


def own_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def reloaded(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def stack_storages(st: ExpertStack) -> set[int]:
    ts = (st.q13, st.s13, st.q2, st.s2) if st.quantized else (st.w13, st.w2)
    return {t.untyped_storage().data_ptr() for t in ts}


@pytest.mark.parametrize("kind", ["fp32", "int4"])
def test_one_stacked_experts_state_dict_saves_its_own_bytes(kind: str) -> None:
    # was 6,293,477 bytes for an fp32 expert of 98,304 (887,261 for 13,824 int4): the stack
    layer = olmoe(kind)
    st = stepped(layer)
    layer.state_dict()  # a whole state dict before leaves no mark behind
    expert = layer.experts[3]
    for module in (expert, expert.up_proj):
        state = module.state_dict()
        own = own_bytes(state)
        assert own < saved_bytes(state) < own + 4096  # + the zip file's records
        assert not stack_storages(st) & {t.untyped_storage().data_ptr() for t in state.values()}
        tensors = dict(module.named_parameters(), **dict(module.named_buffers()))
        assert all(torch.equal(state[k], tensors[k]) for k in state)
    assert saved_bytes(expert.state_dict()) * 50 < saved_bytes(layer.experts.state_dict())


def test_experts_stacked_as_a_plain_list_save_their_own_bytes() -> None:
    layer = olmoe("fp32")
    stacked_experts(list(layer.experts))  # no container to take the whole stack's state dict
    state = layer.experts[0].state_dict()
    assert saved_bytes(state) < own_bytes(state) + 4096


@pytest.mark.parametrize("kind", ["fp32", "int4"])
def test_whole_layer_and_model_state_dicts_keep_the_stack_views(kind: str) -> None:
    # no copies: a whole stack's state dict copied would hold the stack twice in memory
    block = MoETransformerBlock(get_preset("olmoe-1b-7b", 1 / 16), seed=0).eval()
    if kind == "int4":
        block.moe.quantize()
    layer = block.moe
    st = stepped(layer)
    lead = layer.experts[5].gate_proj
    want = (lead.weight if kind == "fp32" else lead.packed).data_ptr()
    key = "gate_proj." + ("weight" if kind == "fp32" else "packed")
    for module, prefix in ((block, "moe.experts."), (layer, "experts."),
                           (layer.experts, ""), (nn.Sequential(layer), "0.experts.")):
        state = module.state_dict()
        experts = {k: t for k, t in state.items() if k.startswith(prefix)}
        assert len(experts) == len(layer.experts) * (3 if kind == "fp32" else 6)
        assert {t.untyped_storage().data_ptr() for t in experts.values()} == stack_storages(st)
        assert state[f"{prefix}5.{key}"].data_ptr() == want
    assert stacked_experts(layer.experts) is st


@pytest.mark.parametrize("kind", KINDS)
def test_keep_vars_gives_the_stacked_tensors_themselves(kind: str) -> None:
    layer = tiled(kind, seed=0)
    stepped(layer)
    expert = layer.experts[2]
    state = expert.state_dict(keep_vars=True)
    assert len(state) == (3 if kind == "fp32" else 6)
    for k, t in state.items():
        owner, _, name = k.rpartition(".")
        lin = expert.get_submodule(owner)
        if kind == "int4-tiles" and name == "packed":  # saved as half-split codes (a copy)
            assert torch.equal(t, lin.codes())
        else:
            assert t is getattr(lin, name)


@pytest.mark.parametrize("stacked", [True, False], ids=["into-stacked", "into-unstacked"])
@pytest.mark.parametrize("kind", KINDS)
def test_state_dicts_round_trip_expert_by_expert_and_whole(kind: str, stacked: bool) -> None:
    src, gen = tiled(kind, seed=0), torch.Generator().manual_seed(4)
    stepped(src)
    x = torch.randn(23, 256, generator=gen)
    with torch.no_grad():
        want = src(x).hidden_states
    for whole in (False, True):
        dst = tiled(kind, seed=1)
        st = stepped(dst) if stacked else None
        if whole:
            dst.load_state_dict(reloaded(src.state_dict()))
        else:
            dst.router.load_state_dict(reloaded(src.router.state_dict()))
            for i, ex in enumerate(src.experts):
                dst.experts[i].load_state_dict(reloaded(ex.state_dict()))
        if st is not None:  # loaded in place: the experts are still the stack's views
            assert stacked_experts(dst.experts, verify=True) is st
        dst.set_backend("grouped")
        with torch.no_grad():
            assert torch.equal(dst(x).hidden_states, want)


def test_a_state_dict_that_raised_leaves_no_mark_that_counts() -> None:
    # a container's state dict that raises part-way never runs its post-hook (the mark stays):
    # one expert's state dict after it saved the whole stack again (2.36 MB for 0.13 MB)
    layer = olmoe("fp32")
    stepped(layer)

    def boom(*args: object) -> None:
        raise RuntimeError("a user's hook")

    handle = layer.experts[5].register_state_dict_post_hook(boom)
    for whole in (layer.experts, layer):
        with pytest.raises(RuntimeError, match="a user's hook"):
            whole.state_dict()
        state = layer.experts[2].state_dict()
        assert saved_bytes(state) < own_bytes(state) + 4096
    handle.remove()
    st = stacked_experts(layer.experts)
    assert {t.untyped_storage().data_ptr() for t in layer.state_dict().values()
            if t.untyped_storage().data_ptr() in stack_storages(st)} == stack_storages(st)


def test_a_destination_of_the_users_keeps_the_views() -> None:
    # a dict passed as destination has no `_metadata`: the whole stack's state dict copied
    # every expert (a second stack in memory) under a rule that looked for it
    layer = olmoe("fp32")
    st = stepped(layer)
    for whole in (layer, layer.experts):
        state = whole.state_dict(destination={})
        assert {t.untyped_storage().data_ptr() for t in state.values()} >= stack_storages(st)
        assert all(t.untyped_storage().data_ptr() in stack_storages(st)
                   for k, t in state.items() if "experts." in f".{k}" and "proj" in k)
