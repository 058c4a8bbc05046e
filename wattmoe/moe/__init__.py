"""The MoE model that everything else measures, places and routes."""

from __future__ import annotations

from wattmoe.moe.backends import (
    EXPERT_BACKENDS,
    available_backends,
    get_backend,
    register_backend,
)
from wattmoe.moe.base import MoEConfig, dtype_name, resolve_dtype
from wattmoe.moe.block import MoETransformerBlock
from wattmoe.moe.dispatch import Dispatch, build_dispatch, expert_capacity
from wattmoe.moe.expert import Expert
from wattmoe.moe.layer import MoEOutput, SimpleMoELayer
from wattmoe.moe.presets import (
    PRESETS,
    SHAPE_KEY_FORM,
    get_preset,
    resolve_shape,
    resolve_shape_at,
)
from wattmoe.moe.quant import (
    QuantizedExpert,
    dequantize_int4,
    int4_group_size,
    pair_group_size,
    quantize_expert,
    quantize_int4,
    unpack_int4,
)
from wattmoe.moe.router import (
    ROUTING_STRATEGIES,
    AdaptiveRouter,
    RouterOutput,
    RoutingStrategy,
    make_strategy,
    register_strategy,
    switch_balance_loss,
)

__all__ = [
    "EXPERT_BACKENDS",
    "PRESETS",
    "ROUTING_STRATEGIES",
    "SHAPE_KEY_FORM",
    "AdaptiveRouter",
    "Dispatch",
    "Expert",
    "MoEConfig",
    "MoEOutput",
    "MoETransformerBlock",
    "QuantizedExpert",
    "RouterOutput",
    "RoutingStrategy",
    "SimpleMoELayer",
    "available_backends",
    "build_dispatch",
    "dequantize_int4",
    "dtype_name",
    "expert_capacity",
    "get_backend",
    "get_preset",
    "int4_group_size",
    "make_strategy",
    "pair_group_size",
    "quantize_expert",
    "quantize_int4",
    "register_backend",
    "register_strategy",
    "resolve_dtype",
    "resolve_shape",
    "resolve_shape_at",
    "switch_balance_loss",
    "unpack_int4",
]
