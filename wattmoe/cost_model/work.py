"""FLOPs and bytes moved by each op: the features of the per-device latency and energy models.

Counts are analytic and deliberately simple: FLOPs count a multiply-add as 2; bytes are the
compulsory traffic through device memory (each input read once, each output written once,
intermediate tensors that torch materializes included). They are the same for every device,
so a fitted model transfers between shapes, not between devices.
"""

from __future__ import annotations

from wattmoe.cost_model.base import MOE_LAYER_PREFIX, CostModelError, OpShape, check_op

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
INT4_GROUP = 128


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise CostModelError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})") from None


def _expert_work(n: float, s: OpShape, b: int) -> tuple[float, float, int]:
    """FLOPs, bytes and matmul count of one dense expert over n tokens."""
    h, f, m_up = s.hidden, s.inner, s.matrices - 1
    flops = 2.0 * n * h * f * m_up + 2.0 * n * f * h
    act_flops, act_bytes = _activation_work(n, s, b)
    byts = b * (n * h + m_up * h * f + m_up * n * f)  # up/gate: x, weights, outputs
    byts += act_bytes
    byts += b * (n * f + f * h + n * h)  # down: a, weight, y
    return flops + act_flops, byts, s.matrices


def _activation_work(n: float, s: OpShape, b: int) -> tuple[float, float]:
    f = s.inner
    if s.form == "swiglu":
        # silu(g) (read g, write t; ~4 flops/elt) then t * u (read t, u; write a)
        return 5.0 * n * f, b * 5.0 * n * f
    return 1.0 * n * f, b * 2.0 * n * f


def _router_work(n: float, s: OpShape, b: int) -> tuple[float, float]:
    h, e = s.hidden, s.num_experts
    flops = 2.0 * n * h * e + 6.0 * n * e  # logits, then softmax + top-k
    byts = b * (n * h + h * e) + 4.0 * 3 * n * e + 12.0 * n * s.top_k  # fp32 logits/probs
    return flops, byts


def op_work(op: str, tokens: int, shape: OpShape, dtype: str) -> tuple[float, float]:
    """(flops, bytes) of one call of `op` on `tokens` tokens.

    Raises:
        CostModelError: unknown op or dtype.
    """
    check_op(op)
    b = dtype_bytes(dtype)
    n = float(tokens)
    s = shape
    h, f, m_up = s.hidden, s.inner, s.matrices - 1
    if op == "up_gate_proj":
        return 2.0 * n * h * f * m_up, b * (n * h + m_up * h * f + m_up * n * f)
    if op == "activation":
        return _activation_work(n, s, b)
    if op == "down_proj":
        return 2.0 * n * f * h, b * (n * f + f * h + n * h)
    if op == "expert":
        fl, by, _ = _expert_work(n, s, b)
        return fl, by
    if op == "expert_int4":
        fl, by, mats = _expert_work(n, s, b)
        w = mats * h * f
        # read packed codes (1/2 byte) + fp16 scales, unpack to int8, scale into the compute
        # dtype, then the dense expert reads the dequantized weights (counted in `by`)
        deq_bytes = w * 0.5 + 2.0 * w / INT4_GROUP + w * 2 + w * 2 * b
        return fl + 4.0 * w, by + deq_bytes
    if op == "router_gate":
        return _router_work(n, s, b)
    if op in ("h2d_copy", "d2h_copy"):
        return 0.0, b * n * h
    if op.startswith(MOE_LAYER_PREFIX):
        assigned = n * s.top_k
        active = min(float(s.num_experts), assigned)  # experts that receive >= 1 token
        rf, rb = _router_work(n, s, b)
        fl, by, _ = _expert_work(assigned, s, b)
        # the weight term of _expert_work counts one expert; `active` experts are read
        by += (active - 1.0) * b * s.matrices * h * f if active >= 1 else -b * s.matrices * h * f
        # dispatch: gather inputs, scale, index_add outputs, zero-fill the output
        by += b * (2 * assigned * h + 2 * assigned * h + 2 * n * h) + 8.0 * 4 * assigned
        return rf + fl + 3.0 * assigned * h, rb + by
    raise CostModelError(f"no work formula for op {op!r}")  # pragma: no cover
