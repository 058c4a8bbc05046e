"""`LayerBackendCosts`: one expert's share of a measured MoE layer step, for the placement.

`KernelCostModel.expert_cost` prices one expert called on its own (the `expert` op, what the
`loop` backend runs per expert). A layer runs its experts through a backend (`grouped`,
`fused`, their CUDA graphs ...) whose cost per expert is not that. This view answers the
placement's question, "what does one expert cost on this device for n tokens", from the
profiled steps of one backend, `moe_layer:<backend>` (`moe_layer_int4:<backend>` for dtype
'int4', in the compute dtype that was profiled, bf16 preferred):

- the layer shape: a profiled step of that op with the same hidden, inner and form on the
  device and dtype; where several (E, top_k) were, the one whose range of rows per expert
  (profiled tokens x top_k / E) holds n, else the one nearest to n in log rows; ties go to the
  first shape key in sorted order. For int4 the step is the one with the default group
  (`wattmoe.int4_layout.default_group`): a layer shape profiled only with another group (a
  profile measured before the default changed, e.g. `tiny` with groups of 64 where the
  default is now 32) is predicted from that curve by the fitted models (`KernelCostModel`'s
  shape model), not read as if it were the default's;
- the step: every expert of that layer gets n rows, so the layer runs T = n E / top_k tokens,
  rounded up to an integer >= 1; the cost at T is scaled by the ratio exact / rounded T;
- the experts' part: the whole step divided by E. The step includes its routing, as the
  backend does it (the fused backends route in their own kernel, ~20 us at 512 OLMoE tokens;
  the others through the torch router): a standalone `router_gate` measurement times another
  implementation, so subtracting it would be wrong for the fused backends (on the committed
  H200 profile it left remainders drawing 820-960 W, above the card's 700 W limit). Each
  expert thus carries 1/E of the step's routing, which a deployment pays once per token:
  an overstatement by the router's share of the step.

Latency and energy are computed alike; energy includes the idle power drawn meanwhile (as in
`KernelCostModel.expert_cost`). The figures keep the `source` of the measured steps, but the
split into one expert's share is a model: an estimate of what one expert costs in the step.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from wattmoe.cost_model.base import (
    CostModelError,
    KernelCost,
    OpShape,
    check_tokens,
    int4_compute_dtype,
    layer_op,
    layer_op_name,
)

if TYPE_CHECKING:
    from wattmoe.cost_model.model import Curve, KernelCostModel

#: `KernelCost.method` of an amortized answer.
METHOD = "layer-amortized"


def profiled_backends(model: KernelCostModel, device: str | None = None) -> list[str]:
    """Expert backends with profiled layer steps (bf16/fp32 or int4) in `model`, on `device`
    or on any device."""
    return sorted({lay[0] for op in model.ops(device) if (lay := layer_op(op)) is not None})


class LayerBackendCosts:
    """The placement's `ExpertCostProvider` for one expert backend, from measured layer steps.

    See the module docstring for how a step is split per expert.

    Args:
        model: a `KernelCostModel` whose profile holds `moe_layer:<backend>` (and/or
            `moe_layer_int4:<backend>`) points.
        backend: the expert backend ('loop', 'grouped', 'fused', 'fused_graph', ...).

    Raises:
        CostModelError: no device of the profile has a layer step of `backend`.
    """

    def __init__(self, model: KernelCostModel, backend: str) -> None:
        known = profiled_backends(model)
        if backend not in known:
            raise CostModelError(
                f"backend {backend!r} was not profiled: no {layer_op_name(backend)} or "
                f"{layer_op_name(backend, int4=True)} points in this profile (profiled "
                f"backends: {', '.join(known) or 'none; run `wattmoe profile --ops moe_layer`'})"
            )
        self.model = model
        self.backend = backend

    def devices(self) -> list[str]:
        """The profile's devices with layer steps of this backend (bf16/fp32 or int4)."""
        return [d for d in self.model.devices() if self.backend in profiled_backends(self.model, d)]

    def describe(self, device: str) -> str:
        return (f"backend {self.backend} on {device} (measured layer steps, amortized per "
                "expert: estimate)")

    def idle_power_w(self, device: str) -> float:
        """The device's idle power, from the profile (see `KernelCostModel.idle_power_w`)."""
        return self.model.idle_power_w(device)

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        """(latency_s, energy_j incl. idle power during it) of one expert's share of a layer
        step of this backend in which every expert gets `tokens` rows."""
        c = self.amortized_cost(device, tokens, hidden, inner, form, dtype)
        return c.latency_s, c.energy_j

    def amortized_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                       dtype: str) -> KernelCost:
        """`expert_cost` as a `KernelCost` (method 'layer-amortized', an
        estimate: source 'estimated' from a measured profile).

        Raises:
            CostModelError: unknown device; this backend, or this dtype of it, not profiled on
                the device; no profiled layer shape of this hidden, inner and form; a negative
                or non-integer token count.
        """
        tokens = check_tokens(tokens)
        op, dt = self._op(device, dtype)
        want = OpShape(hidden, inner, form).for_op(op)
        curve = self._layer_curve(op, device, dt, want, tokens)
        if tokens == 0:
            return KernelCost.answer(0.0, 0.0, 0.0, 0.0, curve.source, "empty")
        e, k = curve.shape.num_experts, curve.shape.top_k
        exact = tokens * e / k
        layer_tokens = max(1, -(-tokens * e // k))  # ceil, in integers
        scale = exact / layer_tokens / e
        # int4: the step with `want`'s group (the default); a curve measured with another
        # group answers it by the shape model, not as its own (`OpShape.int4_group`)
        step = self.model.get_cost(op, layer_tokens, device, dt,
                                   shape=replace(curve.shape, int4_group=want.int4_group))
        return KernelCost.answer(step.latency_s * scale, step.energy_j * scale,
                                 step.avg_power_w, step.peak_power_w, step.profile_source,
                                 METHOD)

    # --- lookups --------------------------------------------------------------------------

    def _op(self, device: str, dtype: str) -> tuple[str, str]:
        """The layer op and the profiled compute dtype that answer for `dtype` on `device`."""
        devices = self.model.devices()
        if device not in devices:
            raise CostModelError(
                f"unknown device {device!r}: not in this profile (profiled: {', '.join(devices)})"
            )
        int4 = dtype == "int4"
        op = layer_op_name(self.backend, int4)
        dts = sorted({k[2] for k in self.model.curves if k[:2] == (op, device)})
        if not dts:
            here = [o for o in self.model.ops(device) if layer_op(o) is not None]
            raise CostModelError(
                f"backend {self.backend!r}{' with int4 experts' if int4 else ''} was not "
                f"profiled on {device}: no {op} points (layer steps profiled there: "
                f"{', '.join(here) or 'none'})"
            )
        if int4:
            return op, int4_compute_dtype(dts)
        if dtype not in dts:
            raise CostModelError(f"{op} was not profiled on {device} in {dtype!r} "
                                 f"(profiled in: {', '.join(dts)})")
        return op, dtype

    def _layer_curve(self, op: str, device: str, dtype: str, want: OpShape,
                     tokens: int) -> Curve:
        """The profiled layer shape of `want`'s hidden, inner and form whose rows per expert
        cover `tokens` best (module docstring)."""
        all_curves = sorted(self.model.shapes(op, device, dtype), key=lambda c: c.shape.key)
        curves = [c for c in all_curves if (c.shape.hidden, c.shape.inner, c.shape.form)
                  == (want.hidden, want.inner, want.form)]
        if not curves:
            raise CostModelError(
                f"{op} on {device} ({dtype}) was not profiled at hidden={want.hidden}, "
                f"inner={want.inner}, form={want.form} (profiled layer shapes: "
                f"{', '.join(c.shape.key for c in all_curves)}); profile one with "
                f"`wattmoe profile --ops {op} --shapes h{want.hidden}_f{want.inner}_"
                f"{want.form}_e<E>_k<K>`"
            )
        n = max(tokens, 1)

        def miss(c: Curve) -> float:
            per_row = c.shape.top_k / c.shape.num_experts
            lo, hi = float(c.tokens[0]) * per_row, float(c.tokens[-1]) * per_row
            return math.log(lo / n) if n < lo else math.log(n / hi) if n > hi else 0.0

        return min(curves, key=miss)
