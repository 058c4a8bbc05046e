"""Kernel profiler and cost model: what each expert kernel costs on each device, measured.

`KernelProfiler` runs isolated scenarios (`build_sweep`) with an injected telemetry monitor
and writes a versioned JSON profile (`save_profile`); `KernelCostModel` loads it and answers
`get_cost(op, tokens, device, dtype, shape)` by interpolation, extrapolation and fitted
per-device latency and energy models; `KernelCostModel.backend_view(backend)`
(`LayerBackendCosts`) prices one expert as its share of a measured layer step of one backend.
`import_nsys_sqlite` reads Nsight Systems exports; `collect_ncu` reads hardware counters with
Nsight Compute where `ncu` exists.
"""

from __future__ import annotations

from wattmoe.cost_model.base import (
    BASE_OPS,
    LAYER_OP_FAMILIES,
    MOE_LAYER_INT4_PREFIX,
    MOE_LAYER_PREFIX,
    SCHEMA_VERSION,
    CostModelError,
    KernelCost,
    KernelTime,
    OpShape,
    ProfileFormatError,
    ProfilePoint,
    layer_op,
    layer_op_name,
)
from wattmoe.cost_model.database import ProfileDatabase, load_profile, save_profile
from wattmoe.cost_model.fit import EnergyModel, FitError, LatencyModel, fit_energy, fit_latency
from wattmoe.cost_model.layer_costs import LayerBackendCosts
from wattmoe.cost_model.model import FitReport, KernelCostModel
from wattmoe.cost_model.nsys import NsysReport, import_nsys_sqlite
from wattmoe.cost_model.work import op_work

__all__ = [
    "BASE_OPS",
    "LAYER_OP_FAMILIES",
    "MOE_LAYER_INT4_PREFIX",
    "MOE_LAYER_PREFIX",
    "SCHEMA_VERSION",
    "CostModelError",
    "EnergyModel",
    "FitError",
    "FitReport",
    "KernelCost",
    "KernelCostModel",
    "KernelTime",
    "LatencyModel",
    "LayerBackendCosts",
    "NsysReport",
    "OpShape",
    "ProfileDatabase",
    "ProfileFormatError",
    "ProfilePoint",
    "fit_energy",
    "fit_latency",
    "import_nsys_sqlite",
    "layer_op",
    "layer_op_name",
    "load_profile",
    "op_work",
    "save_profile",
]
