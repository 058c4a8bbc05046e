from __future__ import annotations

import pytest
import torch

from wattmoe.errors import ShapeError
from wattmoe.moe import (
    Expert,
    SimpleMoELayer,
    dequantize_int4,
    get_preset,
    quantize_expert,
    quantize_int4,
    unpack_int4,
)


def test_pack_unpack_roundtrip_exact(gen: torch.Generator) -> None:
    codes = torch.randint(-8, 8, (5, 256), generator=gen)
    scales = torch.ones(5, 2)
    # quantizing integer weights with max |w| = 7 per group reproduces them exactly
    w = codes.clamp(-7, 7).float()
    w[:, 0], w[:, 128] = 7.0, 7.0
    packed, s = quantize_int4(w, group_size=128)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 128)
    torch.testing.assert_close(s.float(), scales)
    assert torch.equal(unpack_int4(packed).float(), w)
    assert torch.equal(dequantize_int4(packed, s), w)


def test_nibble_layout() -> None:
    w = torch.zeros(1, 4)
    w[0] = torch.tensor([7.0, -7.0, 1.0, 0.0])  # codes +8: 15, 1, 9, 8
    packed, _ = quantize_int4(w, group_size=4)
    # half-split: byte j holds column j (low nibble) and column j + in/2 (high nibble)
    assert packed.tolist() == [[15 | (9 << 4), 1 | (8 << 4)]]


@pytest.mark.parametrize("form", ["swiglu", "relu"])
def test_int4_expert_error_and_size(form: str, gen: torch.Generator) -> None:
    torch.manual_seed(0)
    e = Expert(512, 1024, form=form)
    q = quantize_expert(e, group_size=128)
    for name in ("up_proj", "down_proj"):
        w = getattr(e, name).weight
        wq = getattr(q, name).weight()
        rel = ((w - wq).norm() / w.norm()).item()
        # uniform 16-level quantization of ~Gaussian/uniform groups: ~8-11% error
        assert 0.01 < rel < 0.15, (name, rel)
    x = torch.randn(64, 512, generator=gen)
    with torch.no_grad():
        y, yq = e(x), q(x)
    assert ((y - yq).norm() / y.norm()).item() < 0.2
    ratio = q.weight_bytes() / e.weight_bytes()
    # 4 bits of 32 plus an fp16 scale per 128 weights: 1/8 + 1/256
    assert ratio == pytest.approx(1 / 8 + 2 / 128 / 4, rel=1e-6)


def test_quantized_layer_runs_and_stays_close(gen: torch.Generator) -> None:
    cfg = get_preset("olmoe-1b-7b", 1 / 8)
    layer = SimpleMoELayer(cfg, seed=1)
    x = torch.randn(40, cfg.hidden_size, generator=gen)
    with torch.no_grad():
        ref = layer(x).hidden_states
        q = layer.quantize(group_size=128)(x).hidden_states
    assert ((ref - q).norm() / ref.norm()).item() < 0.2


def test_bad_group_size() -> None:
    with pytest.raises(ShapeError, match="multiple of the int4 group size 128"):
        quantize_int4(torch.randn(4, 100), group_size=128)
