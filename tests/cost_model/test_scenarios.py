"""Scenarios: the sweep's expansion and every op running for real on a CPU."""

from __future__ import annotations

import pytest
import torch

from wattmoe.cost_model import BASE_OPS, CostModelError, OpShape, op_work
from wattmoe.cost_model.scenarios import (
    Scenario,
    SweepConfig,
    build_runner,
    build_sweep,
    log_tokens,
    moe_backends,
    resolve_shape_spec,
)


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


def test_shape_specs() -> None:
    assert resolve_shape_spec("olmoe-1b-7b@0.25").hidden_size == 512
    cfg = resolve_shape_spec("h2048_f1408_swiglu_e60_k4")
    assert (cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k) == (2048, 1408,
                                                                                   60, 4)
    assert OpShape.from_key("h2048_f1408_swiglu") == OpShape(2048, 1408)


@pytest.mark.parametrize("op", [o for o in BASE_OPS if "copy" not in o] + ["moe_layer:loop"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_op_runs(op: str, dtype: str) -> None:
    fn = build_runner(Scenario(op, resolve_shape_spec("tiny"), dtype, "cpu", 16))
    with torch.inference_mode():
        fn()


def test_copies_need_a_gpu() -> None:
    with pytest.raises(CostModelError, match="needs a cuda device"):
        build_runner(Scenario("h2d_copy", resolve_shape_spec("tiny"), "fp32", "cpu", 4))


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
