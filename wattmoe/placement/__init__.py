"""Energy-aware expert placement for GPUs and CPUs together.

Pure functions over arrays and graphs; files are read only at the edge (`load_cluster`,
`read_loads`). Typical use::

    from wattmoe.placement import (AnalyticCostProvider, ExpertShape, load_cluster,
                                   make_problem, solve, synthetic_loads)

    loads = synthetic_loads(16, 64, top_k=8, tokens_per_batch=4096, skew="zipf:1.2", seed=0)
    problem = make_problem(load_cluster("h200-cpu"), loads, ExpertShape(2048, 1024),
                           AnalyticCostProvider(), objective="energy")
    placement = solve(problem, "heuristic")
    placement.summary.energy_j_per_token, placement.expert_to_devices(0)
"""

from __future__ import annotations

from wattmoe.placement.analytic import (
    ROOFLINE_DEVICES,
    AliasedCostProvider,
    AnalyticCostProvider,
    ChainCostProvider,
    RooflineDevice,
    profile_cost_provider,
)
from wattmoe.placement.base import (
    FUSED_BACKENDS,
    Constraints,
    ExpertCostProvider,
    ExpertShape,
    InfeasibleError,
    Objective,
    PlacementError,
)
from wattmoe.placement.curves import CostCurve, sample_curve
from wattmoe.placement.graph import CostGraph, build_cost_graph
from wattmoe.placement.loads import (
    ExpertLoads,
    loads_from_layers,
    make_loads,
    read_loads,
    synthetic_loads,
)
from wattmoe.placement.problem import (
    Evaluation,
    PlacementProblem,
    evaluate,
    latency_lower_bound,
    make_problem,
    replica_text,
)
from wattmoe.placement.result import (
    DeviceSummary,
    Placement,
    PlacementDiff,
    PlacementSummary,
    diff_placements,
    summarize,
)
from wattmoe.placement.solvers import SOLVERS, HeuristicOptions, MilpOptions, solve
from wattmoe.placement.spec import (
    ClusterSpec,
    DeviceSpec,
    LinkSpec,
    NodeSpec,
    cluster_from_dict,
    gpu_cluster,
    load_cluster,
    shipped_clusters,
)

__all__ = [
    "FUSED_BACKENDS",
    "ROOFLINE_DEVICES",
    "SOLVERS",
    "AliasedCostProvider",
    "AnalyticCostProvider",
    "ChainCostProvider",
    "ClusterSpec",
    "Constraints",
    "CostCurve",
    "CostGraph",
    "DeviceSpec",
    "DeviceSummary",
    "Evaluation",
    "ExpertCostProvider",
    "ExpertLoads",
    "ExpertShape",
    "HeuristicOptions",
    "InfeasibleError",
    "LinkSpec",
    "MilpOptions",
    "NodeSpec",
    "Objective",
    "Placement",
    "PlacementDiff",
    "PlacementError",
    "PlacementProblem",
    "PlacementSummary",
    "RooflineDevice",
    "build_cost_graph",
    "cluster_from_dict",
    "diff_placements",
    "evaluate",
    "gpu_cluster",
    "latency_lower_bound",
    "load_cluster",
    "loads_from_layers",
    "make_loads",
    "make_problem",
    "profile_cost_provider",
    "read_loads",
    "replica_text",
    "sample_curve",
    "shipped_clusters",
    "solve",
    "summarize",
    "synthetic_loads",
]
