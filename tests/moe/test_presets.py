from __future__ import annotations

import pytest
import torch

from wattmoe.errors import ConfigError
from wattmoe.moe import PRESETS, SimpleMoELayer, get_preset

REQUIRED = ["mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "olmoe-1b-7b", "tiny"]


def test_required_presets_present() -> None:
    for name in REQUIRED:
        assert name in PRESETS


def test_published_shapes() -> None:
    m = get_preset("mixtral-8x7b")
    assert (m.hidden_size, m.expert_inner_size, m.num_experts, m.top_k) == (4096, 14336, 8, 2)
    d = get_preset("deepseek-v3")
    assert (d.hidden_size, d.expert_inner_size, d.num_experts, d.top_k) == (7168, 2048, 256, 8)
    assert d.num_layers == 58 and d.num_shared_experts == 1 and d.score_func == "sigmoid"
    # Mixtral expert: 3 * 4096 * 14336 weights = 176M
    assert m.expert_params == 176_160_768


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("scale", [1 / 32, 0.1])
def test_every_preset_instantiates_scaled(name: str, scale: float) -> None:
    cfg = get_preset(name, scale)
    assert cfg.hidden_size % 64 == 0 and cfg.expert_inner_size % 64 == 0
    assert cfg.hidden_size % cfg.num_heads == 0
    layer = SimpleMoELayer(cfg.replace(num_experts=min(cfg.num_experts, 16),
                                       top_k=min(cfg.top_k, 4)), seed=0)
    out = layer(torch.randn(3, cfg.hidden_size))
    assert out.hidden_states.shape == (3, cfg.hidden_size)


def test_bad_scale() -> None:
    with pytest.raises(ConfigError, match="scale must be > 0"):
        get_preset("tiny", 0)
    # inf or nan ('olmoe-1b-7b@inf', --scale inf) is the same one-line error, not an
    # OverflowError from rounding the widths
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="scale must be > 0 and finite"):
            get_preset("tiny", bad)
    with pytest.raises(ConfigError, match="scale 1e\\+308 is too large"):
        get_preset("tiny", 1e308)  # finite, but a width times it is not


@pytest.mark.parametrize(("spec", "match"), [
    ("tiny@1e300", r"scale 1e\+300 is too large: a width of 64 becomes 6\.4e\+301, above "
                   r"16777216 \(2\*\*24\)"),
    ("tiny@1e7", r"scale 1e\+07 is too large: a width of 64 becomes 6\.4e\+08"),
    ("h99999999999_f64_relu", r"hidden_size=99999999999 in config 'h99999999999_f64_relu' is "
                              r"larger than 16777216"),
    ("h64_f64_swiglu_e100000000000000000000_k1", r"num_experts=100000000000000000000 in config"),
])
def test_a_width_or_expert_count_beyond_any_machine_is_one_clear_error(spec: str,
                                                                        match: str) -> None:
    # was: a finite scale that made widths of billions (`wattmoe demo --scale 1e7`) or a key
    # with such a size passed, and torch (RMSNorm's size), numpy (the placement's int64
    # arrays: "Python int too large to convert to C long") or a float conversion raised
    # a traceback
    from wattmoe.moe import resolve_shape

    with pytest.raises(ConfigError, match=match):
        resolve_shape(spec)
    assert resolve_shape("tiny@1e4").hidden_size == 640000  # large, but sized: refused later


@pytest.mark.parametrize("name", [None, 3, b"tiny", ["tiny"], 1.5])
def test_name_that_is_not_a_string_is_one_clear_error(name: object) -> None:
    # was: AttributeError: 'NoneType' object has no attribute 'lower' (bytes: "unknown
    # preset b'tiny'", as if it were a misspelt name)
    with pytest.raises(ConfigError, match=r"preset name must be a string, got .*\(known: "
                                          r"tiny, mixtral-8x7b, .*switch-base-8\)"):
        get_preset(name)  # type: ignore[arg-type]


def test_resolve_shape_reads_presets_and_shape_keys() -> None:
    from wattmoe.moe import resolve_shape

    assert resolve_shape("olmoe-1b-7b") == get_preset("olmoe-1b-7b")
    assert resolve_shape("olmoe-1b-7b@0.25") == get_preset("olmoe-1b-7b", 0.25)
    cfg = resolve_shape("h2880_f2880_swiglu_e32_k4")
    assert (cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k,
            cfg.expert_form) == (2880, 2880, 32, 4, "swiglu")
    odd = resolve_shape("h96_f200_relu_e6_k3")
    assert (odd.hidden_size, odd.expert_inner_size, odd.num_experts, odd.top_k,
            odd.expert_form) == (96, 200, 6, 3, "relu")
    assert odd.hidden_size % odd.num_heads == 0


def test_shape_key_takes_a_scale_like_a_preset() -> None:
    # was: 'h96_f200_relu_e6_k3@0.5' read as top_k=1 at full width ('k3@0.5' is not a digit
    # string, so k fell back to its default), and the profile labelled it with the spec
    from wattmoe.moe import resolve_shape

    cfg = resolve_shape("h96_f200_relu_e6_k3@0.5")
    assert (cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k) == (64, 128,
                                                                                   6, 3)
    assert cfg.name == "h96_f200_relu_e6_k3@0.5"


def test_a_shape_key_in_capitals_is_read_as_a_preset_name_is() -> None:
    # was: 'unknown preset' (preset names are read in any case, keys were not)
    from wattmoe.moe import resolve_shape

    cfg = resolve_shape("H96_F200_ReLU_E6_K3@0.5")
    assert cfg == resolve_shape("h96_f200_relu_e6_k3@0.5")


@pytest.mark.parametrize("spec", [
    "h96_f200_relu_e6_kk3",      # was: k=1
    "h96_f200_relu_e6_k3_x",     # was: the trailing part ignored
    "h96_f200_relu_e6_e7_k3",    # was: the last e won
    "h96_f200_gelu_e6_k3",
])
def test_unreadable_shape_key_is_refused_with_the_expected_form(spec: str) -> None:
    from wattmoe.moe import resolve_shape

    with pytest.raises(ConfigError, match=r"expected .*h<H>_f<F>_<swiglu\|relu>_e<E>_k<k>"):
        resolve_shape(spec)


@pytest.mark.parametrize("spec", ["h96_f200_relu_e6_k3@", "h96_f200_relu_e6_k3@half",
                                  "tiny@half"])
def test_bad_scale_in_a_shape_spec(spec: str) -> None:
    from wattmoe.moe import resolve_shape

    with pytest.raises(ConfigError, match=r"bad scale in shape spec .*: .*a number"):
        resolve_shape(spec)


def test_a_scale_is_given_once() -> None:
    # 'SPEC@SCALE' or a --scale, not both: they used to multiply silently (the demo's default
    # 0.25 on top of 'olmoe-1b-7b@0.25' ran it at 1/16 of its widths)
    from wattmoe.errors import ConfigError
    from wattmoe.moe import resolve_shape, resolve_shape_at

    assert resolve_shape_at("olmoe-1b-7b@0.25", None, 0.5) == resolve_shape("olmoe-1b-7b@0.25")
    assert resolve_shape_at("olmoe-1b-7b", None, 0.5) == resolve_shape("olmoe-1b-7b@0.5")
    assert resolve_shape_at("h2880_f2880_swiglu_e32_k4", 0.125).hidden_size == 384
    with pytest.raises(ConfigError, match="its own scale: give it once"):
        resolve_shape_at("h2880_f2880_swiglu_e32_k4@0.125", 0.25)
