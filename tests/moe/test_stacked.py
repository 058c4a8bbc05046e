"""The first build of an int4 stack (`wattmoe.moe.stacked`): `SimpleMoELayer.quantize`
quantizes the codes straight into the stack's tensors (`quantize_experts`), so that the first
stacked step takes them as they are instead of copying them in while the experts still hold
their own (two copies of the codes at that step's peak)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from wattmoe.moe import SimpleMoELayer, get_preset
from wattmoe.moe.backends import get_backend
from wattmoe.moe.base import MoEConfig
from wattmoe.moe.dispatch import build_dispatch
from wattmoe.moe.quant import quantize_expert
from wattmoe.moe.stacked import quantize_experts, stacked_experts


def allocated_bytes(fn: object) -> int:
    """Bytes `fn()` allocates on the CPU (every allocation, frees not subtracted), as the
    profiler's allocation events count them."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()  # type: ignore[operator]
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)


def layer_of(form: str = "swiglu", seed: int = 0) -> SimpleMoELayer:
    cfg = MoEConfig(name="t", hidden_size=64, expert_inner_size=32, num_experts=6, top_k=2,
                    expert_form=form)
    return SimpleMoELayer(cfg, seed=seed).eval()


def dispatch_of(layer: SimpleMoELayer, x: torch.Tensor) -> object:
    r = layer.router(x)
    return build_dispatch(r.topk_idx, r.topk_weight, layer.config.num_experts)


def code_tensors(experts: nn.ModuleList) -> list[torch.Tensor]:
    return [t for ex in experts for t in ex.buffers()]


def test_first_int4_build_copies_no_codes() -> None:
    # OLMoE at 1/4 (64 experts, H 512, F 256): 12,976,128 bytes of codes and scales, which
    # the first build allocated again (and copied in) before quantize wrote into the stack
    layer = SimpleMoELayer(get_preset("olmoe-1b-7b", 0.25), seed=0).eval().quantize()
    ptrs = [t.data_ptr() for t in code_tensors(layer.experts)]
    built: list = []
    allocated = allocated_bytes(lambda: built.append(stacked_experts(layer.experts)))
    st = built[0]
    assert st.weight_bytes() == 12_976_128
    assert allocated < 100_000  # (the stack's bookkeeping; no [E, ...] tensor)
    assert [t.data_ptr() for t in code_tensors(layer.experts)] == ptrs  # nothing re-pointed
    assert st.q13.data_ptr() == layer.experts[0].gate_proj.packed.data_ptr()
    assert stacked_experts(layer.experts, verify=True) is st


@pytest.mark.parametrize("form", ["swiglu", "relu"])
def test_codes_quantized_into_the_stack_are_the_experts_own(form: str) -> None:
    layer = layer_of(form)
    dense = copy.deepcopy(list(layer.experts))
    layer.quantize(group_size=16)
    for ex, d in zip(layer.experts, dense, strict=True):
        own = quantize_expert(d, 16)
        for name, lin in ex.named_modules():
            if name:
                assert torch.equal(lin.packed, own.get_submodule(name).packed)
                assert torch.equal(lin.scales, own.get_submodule(name).scales)
    st = stacked_experts(layer.experts, verify=True)
    x = torch.randn(19, 64, generator=torch.Generator().manual_seed(1))
    d = dispatch_of(layer, x)
    torch.testing.assert_close(get_backend("grouped")(layer.experts, x, d),
                               get_backend("loop")(layer.experts, x, d))
    assert stacked_experts(layer.experts) is st


def test_adopted_stack_shares_the_experts_version_counter() -> None:
    # the fused kernels' copies of the codes follow in-place writes through the stack's
    # version counter: the experts' views must share it, as the views of a copied-in stack do
    layer = layer_of().quantize(group_size=16)
    st = stacked_experts(layer.experts)
    before = st.q13._version, st.s2._version
    with torch.no_grad():
        layer.experts[3].up_proj.packed.add_(1)
        layer.experts[5].down_proj.scales.mul_(2)
    assert st.q13._version > before[0] and st.s2._version > before[1]


def test_quantized_in_inference_mode_stacks_without_a_copy() -> None:
    layer = layer_of()
    with torch.inference_mode():
        layer.quantize(group_size=16)
    assert not any(t.is_inference() for t in code_tensors(layer.experts))
    ptr = layer.experts[2].down_proj.packed.data_ptr()
    with torch.inference_mode():
        st = stacked_experts(layer.experts)
    assert st.q2[2].data_ptr() == ptr and not st.q2.is_inference()
    layer.set_int4_layout("tiles")  # rewritten in place: still the stack's views
    assert stacked_experts(layer.experts, verify=True).q2[2].data_ptr() == ptr


def test_experts_out_of_their_places_are_copied_in() -> None:
    # views of a stack's tensors, but not each at its own expert's place: the build copies
    layer = layer_of().quantize(group_size=16)
    x = torch.randn(13, 64, generator=torch.Generator().manual_seed(2))
    d = dispatch_of(layer, x)
    quantized_into = layer.experts[0].gate_proj.packed.untyped_storage().data_ptr()
    layer.experts = nn.ModuleList(list(layer.experts)[::-1])
    st = stacked_experts(layer.experts, verify=True)  # (every expert a view at its place)
    assert st.q13.untyped_storage().data_ptr() != quantized_into
    torch.testing.assert_close(get_backend("grouped")(layer.experts, x, d),
                               get_backend("loop")(layer.experts, x, d))


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copied_quantized_layer_builds_its_own_stack(how: str) -> None:
    layer = layer_of().quantize(group_size=16)
    if how == "deepcopy":
        twin = copy.deepcopy(layer)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(layer))
    else:
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    st, st2 = stacked_experts(layer.experts), stacked_experts(twin.experts, verify=True)
    assert st2 is not st and st2.build_id != st.build_id
    assert st2.q13.untyped_storage().data_ptr() != st.q13.untyped_storage().data_ptr()
    assert torch.equal(st2.q13, st.q13) and torch.equal(st2.s2, st.s2)


def test_state_dicts_before_the_first_build() -> None:
    # one expert's state dict holds its own bytes; the layer's keeps the views (no copy)
    layer = layer_of().quantize(group_size=16)
    one = layer.experts[1].state_dict()
    for k, t in one.items():
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), k
    whole = layer.state_dict()
    up = layer.experts[1].up_proj.packed
    assert whole["experts.1.up_proj.packed"].data_ptr() == up.data_ptr()
    buf = io.BytesIO()
    torch.save(layer.experts[1].state_dict(), buf)
    assert buf.tell() < 8 * sum(t.numel() for t in one.values()) + 4096


def test_experts_that_do_not_stack_are_quantized_one_by_one() -> None:
    a, b = layer_of().experts[0], layer_of("relu").experts[0]
    out = quantize_experts([a, b], 16)
    assert out[0].up_proj.packed._base is None and out[1].up_proj.packed._base is None
    with pytest.raises(Exception, match="multiple of the int4 group size"):
        quantize_experts(list(layer_of().experts), 24)
