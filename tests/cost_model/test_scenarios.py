"""Scenarios: the sweep's expansion and every op running for real on a CPU."""

from __future__ import annotations

import inspect

import pytest
import torch

from wattmoe.cost_model import BASE_OPS, CostModelError, OpShape, layer_op, layer_op_name, op_work
from wattmoe.cost_model.base import check_op
from wattmoe.cost_model.fit import latency_features
from wattmoe.cost_model.scenarios import (
    Scenario,
    SweepConfig,
    build_runner,
    build_sweep,
    log_tokens,
    moe_backends,
)
from wattmoe.cost_model.work import int4_group
from wattmoe.errors import ConfigError
from wattmoe.moe import QuantizedExpert, int4_group_size, resolve_shape


def test_log_tokens() -> None:
    assert log_tokens(1, 8192, 4) == (1, 4, 16, 64, 256, 1024, 4096, 8192)
    assert log_tokens(1, 8, 2) == (1, 2, 4, 8)
    with pytest.raises(CostModelError):
        log_tokens(0, 8)


def test_sweep_is_op_major_and_skips_copies_on_a_cpu() -> None:
    scs, notes = build_sweep(SweepConfig(shapes=("tiny",), dtypes=("fp32", "bf16"),
                                         ops=("expert", "h2d_copy", "moe_layer"),
                                         tokens=(1, 8)))
    assert [s.op for s in scs[:4]] == ["expert"] * 4
    layer_ops = {f"moe_layer:{b}" for b in moe_backends("cpu", "fp32")}
    assert {s.op for s in scs} == {"expert", *layer_ops}
    assert any("h2d_copy skipped on cpu" in n for n in notes)


def test_sweep_config_rejects_bad_values() -> None:
    with pytest.raises(CostModelError, match="unknown device 'gpu7'"):
        SweepConfig(devices=("gpu7",))
    with pytest.raises(CostModelError, match="unknown op"):
        SweepConfig(ops=("transpose",))
    with pytest.raises(CostModelError, match=">= 0 tokens"):
        SweepConfig(tokens=(-4,))
    # a misspelled backend: every scenario of it failed, and `wattmoe profile` exited 0
    for op in ("moe_layer:bogus", "moe_layer_int4:FUSED"):
        with pytest.raises(CostModelError, match=f"unknown expert backend .* in op '{op}'"):
            SweepConfig(ops=("expert", op))
    assert SweepConfig(ops=("moe_layer:auto", "moe_layer_int4:fused_graph")).ops
    # a bad shape fails with the sweep's settings, not inside the sweep under its progress bar
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        SweepConfig(shapes=("tiny", "nope"))


def test_shape_specs() -> None:
    assert resolve_shape("olmoe-1b-7b@0.25").hidden_size == 512
    cfg = resolve_shape("h2048_f1408_swiglu_e60_k4")
    assert (cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k) == (2048, 1408,
                                                                                   60, 4)
    assert OpShape.from_key("h2048_f1408_swiglu") == OpShape(2048, 1408)


@pytest.mark.parametrize(("key", "why"), [
    ("h96_f200_swiglu_e4_k8", "shape top_k=8 > num_experts=4"),
    ("h0_f200_swiglu_e4_k2", "shape field hidden must be a positive integer, got 0"),
])
def test_shape_key_that_parses_but_is_invalid_says_why(key: str, why: str) -> None:
    # was: the shape's own ValueError was caught as unreadable ("cannot read shape ...;
    # expected like 'h2048_f1024_swiglu_e64_k8'"), though the key had exactly that form
    with pytest.raises(CostModelError, match=f"^{why}"):
        OpShape.from_key(key)


@pytest.mark.parametrize("op", [o for o in BASE_OPS if "copy" not in o]
                         + ["moe_layer:loop", "moe_layer_int4:loop"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_op_runs(op: str, dtype: str) -> None:
    fn = build_runner(Scenario(op, resolve_shape("tiny"), dtype, "cpu", 16))
    with torch.inference_mode():
        fn()


def test_copies_need_a_gpu() -> None:
    with pytest.raises(CostModelError, match="needs a cuda device"):
        build_runner(Scenario("h2d_copy", resolve_shape("tiny"), "fp32", "cpu", 4))


def test_work_counts() -> None:
    s = OpShape(64, 128)
    n = 10
    f_up, _ = op_work("up_gate_proj", n, s, "fp32")
    f_down, _ = op_work("down_proj", n, s, "fp32")
    f_act, _ = op_work("activation", n, s, "fp32")
    f_exp, b_exp = op_work("expert", n, s, "fp32")
    assert f_up == 2 * n * 64 * 128 * 2 and f_down == 2 * n * 128 * 64
    assert f_exp == f_up + f_down + f_act
    _, b_bf16 = op_work("expert", n, s, "bf16")
    assert b_exp == 2 * b_bf16
    assert op_work("h2d_copy", n, s, "bf16") == (0.0, 2.0 * n * 64)
    # the int4 path does the dense expert's work plus the dequantization
    f4, b4 = op_work("expert_int4", n, s, "bf16")
    assert f4 > op_work("expert", n, s, "bf16")[0] and b4 > b_bf16
    # a MoE layer reads only the experts that receive tokens
    layer = OpShape(64, 128, num_experts=8, top_k=2)
    _, b1 = op_work("moe_layer:loop", 1, layer, "bf16")
    _, b100 = op_work("moe_layer:loop", 100, layer, "bf16")
    assert b1 < b100 and b1 > 2 * 3 * 64 * 128 * 2  # two experts' weights at one token


def test_int4_layer_work_counts_the_dequantized_copies_each_backend_makes() -> None:
    # torch's dequantization moves 9 + 3b bytes per weight besides the scales (int8 unpack 8,
    # cast 1 + b, scaling 2b): 15.0156 bytes per bf16 weight with groups of 128, and a matmul
    # then reads the copy (b) of each expert that runs; a fused kernel reads 0.5156 (codes and
    # scales) of each expert that runs
    layer = OpShape(2048, 1024, num_experts=64, top_k=8)
    w = 3 * 2048 * 1024
    per_deq, per_read = 9 + 3 * 2 + 2 / 128, 0.5 + 2 / 128
    _, fused = op_work("moe_layer_int4:fused", 1, layer, "bf16")  # 8 experts run
    _, loop = op_work("moe_layer_int4:loop", 1, layer, "bf16")  # their 8 copies
    _, grouped = op_work("moe_layer_int4:grouped", 1, layer, "bf16")  # the whole stack's 64
    assert loop - fused == pytest.approx(8 * w * (per_deq + 2 - per_read))
    # grouped dequantizes all 64 experts, but its grouped GEMM reads only the 8 that have rows
    assert grouped - fused == pytest.approx(64 * w * per_deq + 8 * w * (2 - per_read))
    assert op_work("moe_layer_int4:grouped_graph", 1, layer, "bf16")[1] == grouped
    # at 64 tokens every expert runs: loop and grouped make the same copies
    assert op_work("moe_layer_int4:loop", 64, layer, "bf16") == pytest.approx(
        op_work("moe_layer_int4:grouped", 64, layer, "bf16"))
    # one expert alone: the same chain, the dense expert reading the copy
    one = OpShape(2048, 1024)
    f4, b4 = op_work("expert_int4", 4, one, "bf16")
    f2, b2 = op_work("expert", 4, one, "bf16")
    assert (f4 - f2, b4 - b2) == pytest.approx((4 * w, w * (9 + 3 * 2 + 2 / 128)))
    # the scales of the group size the expert is quantized with (`int4_group_size`: 32 here
    # since session 17, 64 before), or of the group a shape names (a point measured with it)
    small = OpShape(64, 128)
    b4 = op_work("expert_int4", 4, small, "bf16")[1] - op_work("expert", 4, small, "bf16")[1]
    assert b4 == pytest.approx(3 * 64 * 128 * (9 + 3 * 2 + 2 / 32))
    old = OpShape(64, 128, int4_group=64)
    b4 = op_work("expert_int4", 4, old, "bf16")[1] - op_work("expert", 4, old, "bf16")[1]
    assert b4 == pytest.approx(3 * 64 * 128 * (9 + 3 * 2 + 2 / 64))


# --- MoE layer steps with int4 experts ---------------------------------------------------------


def test_layer_op_names() -> None:
    assert layer_op("moe_layer:fused") == ("fused", False)
    assert layer_op("moe_layer_int4:loop") == ("loop", True)
    for op in ("expert", "expert_int4", "moe_layer", "moe_layer:", "moe_layer_int4:"):
        assert layer_op(op) is None
    assert layer_op_name("grouped", int4=True) == "moe_layer_int4:grouped"
    assert check_op("moe_layer_int4:fused_graph") == "moe_layer_int4:fused_graph"
    for bad in ("moe_layer_int4", "moe_layer_int4:", "moe_layer_int8:loop"):
        with pytest.raises(CostModelError, match=r"moe_layer:<backend>, moe_layer_int4:<backend>"):
            check_op(bad)
    layer = OpShape(64, 128, num_experts=8, top_k=2)
    assert layer.for_op("moe_layer_int4:loop") == layer


def test_moe_layer_int4_expands_per_backend_and_is_not_a_default() -> None:
    scs, _ = build_sweep(SweepConfig(shapes=("tiny",), dtypes=("bf16",),
                                     ops=("moe_layer_int4",), tokens=(1, 8)))
    assert {s.op for s in scs} == {f"moe_layer_int4:{b}" for b in moe_backends("cpu", "bf16")}
    assert len(scs) == 2 * len(moe_backends("cpu", "bf16"))
    assert "moe_layer_int4" not in SweepConfig().ops
    # one explicit backend is an op of its own
    scs, _ = build_sweep(SweepConfig(shapes=("tiny",), dtypes=("bf16",),
                                     ops=("moe_layer_int4:loop",), tokens=(4,)))
    assert [s.op for s in scs] == ["moe_layer_int4:loop"]


def test_int4_layer_work_reads_packed_weights() -> None:
    layer = OpShape(256, 512, num_experts=8, top_k=2)
    w = 3 * 256 * 512  # weights of one expert
    for n in (1, 64):
        active = min(8, 2 * n)
        f16, b16 = op_work("moe_layer:fused", n, layer, "bf16")
        f4, b4 = op_work("moe_layer_int4:fused", n, layer, "bf16")
        # the active experts' weights: 2 bytes each in bf16, 0.5 + one fp16 scale per 128
        assert b16 - b4 == pytest.approx(active * w * (2 - (0.5 + 2 / 128)))
        assert f4 - f16 == pytest.approx(4.0 * active * w)  # unpack and scale
    assert op_work("moe_layer_int4:fused", 64, layer, "bf16") == op_work(
        "moe_layer_int4:fused_graph", 64, layer, "bf16")
    assert int4_group(256, 512) == int4_group_size(256, 512) == 128
    assert int4_group(96, 160) == int4_group_size(96, 160) == 32
    # the fit sees the expert invocations of an int4 layer as of any layer
    assert latency_features("moe_layer_int4:loop", 3, layer, "bf16")[3] == 6
    assert latency_features("expert_int4", 3, OpShape(256, 512), "bf16")[3] == 0


def test_int4_work_of_a_shape_no_group_divides_is_an_error(capsys) -> None:
    # was: int4 work and costs with groups of 2 for a shape the model cannot quantize (an odd
    # width; int4_group_size refuses it): 'wattmoe cost --op expert_int4 --shape
    # h100_f37_swiglu_e7_k3' answered 669.3 us, 81.426 mJ
    from wattmoe.cli import main
    from wattmoe.cost_model.base import CostModelError

    with pytest.raises(CostModelError, match="no int4 group size divides both widths 100 and 37"):
        int4_group(100, 37)
    assert int4_group(100, 38) == int4_group_size(100, 38) == 2
    from pathlib import Path

    profile = str(Path(__file__).resolve().parents[2] / "data" / "profiles" / "h200.json")
    assert main(["cost", "--profile", profile, "--op", "expert_int4",
                 "--shape", "h100_f37_swiglu_e7_k3", "--device", "cuda:0", "--dtype", "bf16",
                 "--tokens", "64"]) == 2
    assert "no int4 group size divides both widths 100 and 37" in capsys.readouterr().err


def test_int4_layer_memory_holds_packed_and_dense_weights() -> None:
    tiny = resolve_shape("tiny")
    dense = Scenario("moe_layer:loop", tiny, "bf16", "cpu", 16).memory_bytes()
    int4 = Scenario("moe_layer_int4:loop", tiny, "bf16", "cpu", 16).memory_bytes()
    packed = 8 * 3 * 64 * 128 * (0.5 + 2 / 32)  # tiny: E=8, H=64, F=128, int4 group 32
    assert int4 - dense == pytest.approx(packed)


@pytest.mark.parametrize("backend", moe_backends("cpu", "bf16"))
def test_int4_layer_runner_quantizes_the_layer(backend: str) -> None:
    fn = build_runner(Scenario(f"moe_layer_int4:{backend}", resolve_shape("tiny"), "bf16",
                               "cpu", 16))
    layer = inspect.getclosurevars(fn).nonlocals["layer"]
    assert layer.backend_name == backend and not layer.training
    # the default group (32 for tiny since session 17: halves of 32 and 64 columns whole)
    assert all(isinstance(e, QuantizedExpert) and e.group_size == 32 and not e.training
               for e in layer.experts)
    with torch.inference_mode():
        out = fn()
    assert torch.isfinite(out.hidden_states).all()


@pytest.mark.parametrize("key", ["h96_f200_relu_e6_kk3", "h96_f200_relu_e6_k3_x",
                                 "h96_f200_relu_e6_e7_k3", "h96_f200_relu_e6_k3@0.5"])
def test_shape_key_with_parts_it_cannot_read_is_refused(key: str) -> None:
    # was: unknown or repeated parts were skipped, so 'e6_kk3' and 'k3@0.5' read as top_k=1
    with pytest.raises(CostModelError, match="cannot read shape"):
        OpShape.from_key(key)


def test_resolve_shape_scales_a_shape_key() -> None:
    cfg = resolve_shape("h96_f200_relu_e6_k3@0.5")
    assert (cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k) == (64, 128,
                                                                                   6, 3)
