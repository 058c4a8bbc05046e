"""FLOPs and bytes moved by each op: the features of the per-device latency and energy models.

Counts are analytic and deliberately simple: FLOPs count a multiply-add as 2; bytes are the
compulsory traffic through device memory (each input read once, each output written once,
intermediate tensors that torch materializes included). They are the same for every device,
so a fitted model transfers between shapes, not between devices.
"""

from __future__ import annotations

from wattmoe.cost_model.base import CostModelError, OpShape, check_op, layer_op
from wattmoe.int4_layout import default_group

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
INT4_CODE_BYTES = 0.5  # two 4-bit codes per byte
INT4_SCALE_BYTES = 2.0  # one fp16 scale per group of input columns


def int4_group(hidden: int, inner: int) -> int:
    """The int4 group size a layer of this shape is quantized with by default
    (`wattmoe.int4_layout.default_group`, which `wattmoe.moe.quant.int4_group_size` follows
    too): the largest group whose halves of a row are whole, for the fused kernels' scale
    pairs, where one exists, else the largest power of two <= 128 dividing both widths.

    Raises:
        CostModelError: no even group size divides both widths (an odd width): experts of
            this shape cannot be int4 (`int4_group_size` refuses them too).
    """
    g = default_group(hidden, inner)
    if g is None:
        raise CostModelError(f"no int4 group size divides both widths {hidden} and {inner}")
    return g


def shape_group(shape: OpShape) -> int:
    """The int4 group size of `shape`'s experts: its `int4_group` (a point measured with
    another group than today's default), else the default (`int4_group`, which raises as
    there)."""
    return shape.int4_group or int4_group(shape.hidden, shape.inner)


def int4_weight_bytes(hidden: int, inner: int, group: int | None = None) -> float:
    """Bytes one weight takes in packed int4: half a byte of code plus its share of the
    group's fp16 scale (`group` left out: the default, `int4_group`)."""
    return INT4_CODE_BYTES + INT4_SCALE_BYTES / (group or int4_group(hidden, inner))


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
        # dequantize (codes and scales read, the copy in the compute dtype written); the
        # dense expert reads the copy (counted in `by`)
        return fl + 4.0 * w, by + w * _dequant_bytes(b, shape_group(s))
    if op == "router_gate":
        return _router_work(n, s, b)
    if op in ("h2d_copy", "d2h_copy"):
        return 0.0, b * n * h
    layer = layer_op(op)
    if layer is not None:
        return _layer_work(n, s, b, int4=layer[1], backend=layer[0])
    raise CostModelError(f"no work formula for op {op!r}")  # pragma: no cover


def _dequant_bytes(b: int, group: int) -> float:
    """Bytes per weight that `quant.dequantize_int4` moves in torch: the codes to int8 codes
    (8: a mask, a shift and their two casts each read and write half a byte per weight, then
    the concatenation and the -8 offset each read and write one), the cast to the compute
    dtype (1 + b), the scaling (2b), and the weight's share of its group's fp16 scale."""
    return 9.0 + 3.0 * b + INT4_SCALE_BYTES / group


#: int4 layer backends that dequantize into a copy in the compute dtype on every call, and
#: whether they do the whole stack (`grouped`: `ExpertStack.dense`) or only the experts that
#: receive tokens (`loop`: each `QuantizedExpert` that runs). Either way the matmuls read only
#: the copies of the experts that receive tokens (`torch._grouped_mm` and its per-expert loop
#: skip empty groups). The fused backends dequantize in registers and move only the codes and
#: scales.
_DEQUANT_COPIES: dict[str, bool] = {"loop": False, "grouped": True, "grouped_graph": True}


def _layer_work(n: float, s: OpShape, b: int, int4: bool,
                backend: str = "") -> tuple[float, float]:
    """FLOPs and bytes of one MoE layer step (router, dispatch, experts, combine).

    Only the experts that receive tokens read their weights: in the compute dtype, or for an
    int4 layer as packed codes plus fp16 group scales (what every backend reads from memory;
    the unpack and scale are counted as 4 FLOPs per weight). Backends that materialize
    dequantized copies (`_DEQUANT_COPIES`) also move those copies, for the whole stack
    (grouped) or the experts that run (loop); a matmul reads the copies of the experts that
    run.
    """
    h, f = s.hidden, s.inner
    assigned = n * s.top_k
    active = min(float(s.num_experts), assigned)  # experts that receive >= 1 token
    rf, rb = _router_work(n, s, b)
    fl, by, _ = _expert_work(assigned, s, b)
    w = s.matrices * h * f
    # the weight term of _expert_work counts one expert in the compute dtype; `active`
    # experts are read, each in its stored format
    if int4 and backend in _DEQUANT_COPIES:
        dequantized = float(s.num_experts) if _DEQUANT_COPIES[backend] else active
        # torch's dequantization and the scales of every copy; the matmuls read the copies of
        # the active experts only
        weights = dequantized * w * _dequant_bytes(b, shape_group(s)) + active * w * b
    elif int4:  # the fused backends dequantize in registers the weights they read
        dequantized = active
        weights = active * w * int4_weight_bytes(h, f, shape_group(s))
    else:
        dequantized = 0.0
        weights = active * w * b
    by += weights - b * w  # _expert_work counted one expert's weights in the compute dtype
    fl += 4.0 * dequantized * w
    # dispatch: gather inputs, scale, index_add outputs, zero-fill the output
    by += b * (2 * assigned * h + 2 * assigned * h + 2 * n * h) + 8.0 * 4 * assigned
    return rf + fl + 3.0 * assigned * h, rb + by
