"""Solvers: name -> function(problem, **options) -> (assignment [L, E, D], status), or
(assignment, status, lower_bound) from a solver that proves a lower bound on the optimum's
objective value (the MILP; None where it proved none); `solve` records it as
`Placement.objective_lower_bound`.

- ``heuristic``: greedy + replicas + local search (fast; any size);
- ``milp``: exact mixed-integer program (scipy.optimize.milp / HiGHS; small instances);
- ``eplb``: EPLB-style balanced packing with replication (baseline);
- ``round-robin``: expert e on device e mod D (baseline);
- ``fill``: hottest experts on the fastest device until it is full (offloading baseline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wattmoe.errors import ConfigError
from wattmoe.placement.problem import PlacementProblem, evaluate
from wattmoe.placement.result import Placement, summarize
from wattmoe.placement.solvers.baselines import (
    default_redundant,
    eplb_assignment,
    solve_eplb,
    solve_fill,
    solve_round_robin,
)
from wattmoe.placement.solvers.heuristic import HeuristicOptions, solve_heuristic
from wattmoe.placement.solvers.milp import MilpOptions, MilpResult, milp_result, solve_milp

SolverFn = Callable[..., tuple[np.ndarray, str] | tuple[np.ndarray, str, float | None]]


def _solve_milp_bounded(problem: PlacementProblem, options: MilpOptions | None = None,
                        ) -> tuple[np.ndarray, str, float | None]:
    """`solve_milp` with HiGHS's proven lower bound (`MilpResult.lower_bound`; None where it
    proved none) as a third element (`solve_milp` keeps its pair for its callers)."""
    res = milp_result(problem, options)
    bound = res.lower_bound if np.isfinite(res.lower_bound) else None
    return res.assignment, res.status, bound


SOLVERS: dict[str, SolverFn] = {
    "heuristic": solve_heuristic,
    "milp": _solve_milp_bounded,
    "eplb": solve_eplb,
    "round-robin": solve_round_robin,
    "fill": solve_fill,
}


def solve(problem: PlacementProblem, solver: str = "heuristic",
          meta: dict[str, Any] | None = None, **options: Any) -> Placement:
    """Runs a solver and returns its `Placement` with the exact summary (and the lower bound
    the solver proved, if it proves one: `Placement.objective_lower_bound`).

    Args:
        solver: a name in `SOLVERS`.
        meta: provenance to store in the placement (preset, loads source, cost model ...).
        options: passed to the solver (`options=HeuristicOptions(...)`,
            `options=MilpOptions(...)`, `redundant=...` for eplb).

    Raises:
        ConfigError: unknown solver.
        InfeasibleError: the constraints cannot be met.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r} (known: {', '.join(SOLVERS)})")
    start = time.perf_counter()
    assignment, status, *bound = SOLVERS[solver](problem, **options)
    elapsed = time.perf_counter() - start
    summary = summarize(problem, evaluate(problem, assignment))
    g = problem.graph
    return Placement(
        device_names=g.device_names, assignment=assignment, expert_bytes=g.shape.weight_bytes,
        solver=solver, objective=problem.objective.name, status=status, solve_time_s=elapsed,
        cluster=g.cluster.name, summary=summary,
        objective_lower_bound=float(bound[0]) if bound and bound[0] is not None else None,
        meta={"shape": g.shape.to_dict(), "loads": problem.loads.source,
              "tokens_per_batch": problem.loads.tokens_per_batch,
              "top_k": problem.loads.top_k,
              "constraints": {"latency_slo_s": problem.constraints.latency_slo_s,
                              "max_replicas": problem.constraints.max_replicas,
                              "redundant_per_layer": problem.constraints.redundant_per_layer},
              **(meta or {})},
    )


__all__ = [
    "SOLVERS",
    "HeuristicOptions",
    "MilpOptions",
    "MilpResult",
    "default_redundant",
    "eplb_assignment",
    "milp_result",
    "solve",
    "solve_eplb",
    "solve_fill",
    "solve_heuristic",
    "solve_milp",
    "solve_round_robin",
]
