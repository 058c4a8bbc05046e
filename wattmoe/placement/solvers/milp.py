"""The exact solver: a mixed-integer linear program solved by HiGHS (scipy.optimize.milp).

Variables (R = max replicas per expert; an expert with zero tokens gets one replica):

- u[l,e,r] in {0,1}: expert (l,e) has exactly r replicas (sum_r u = 1);
- v[l,e,r,d] in {0,1}: device d hosts one of them (sum_d v[l,e,r,d] = r u[l,e,r]); each
  replica then serves W[l,e]/r tokens at the sampled per-replica time and energy;
- lam[l] >= T[l,d] = sum v x time + message latency x g[l,d] (g: d used in layer l);
- mu[l] >= tokens of d in layer l (only for the balance term);
- p[d] in {0,1}: d is powered (forced by hosting anything; fixed for always-on devices),
  z[d] >= sum_l lam[l] - M (1 - p[d]) its idle time (McCormick, M a latency upper bound).

Memory per device, the redundancy budget and the latency SLO (sum_l lam[l] <= SLO) are linear
constraints; the objective is `PlacementProblem.coefficients`' linear form. Its optimum is the
optimum of the same model `evaluate` scores (the cost curves are sampled at W/r exactly), so
on small instances it is the ground truth the heuristic is measured against.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from wattmoe.placement.base import InfeasibleError, PlacementError, check_time_limit
from wattmoe.placement.problem import PlacementProblem, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MilpOptions:
    """Attributes:
    time_limit_s: HiGHS time limit; the best solution found is returned with status
        'time-limit' (None: no limit).
    mip_rel_gap: relative optimality gap at which HiGHS stops.
    max_binaries: refuse larger instances (use the heuristic).
    """

    time_limit_s: float | None = 60.0
    mip_rel_gap: float = 1e-5
    max_binaries: int = 40_000

    def __post_init__(self) -> None:
        check_time_limit(self.time_limit_s)
        if not (isinstance(self.mip_rel_gap, (int, float)) and math.isfinite(self.mip_rel_gap)
                and self.mip_rel_gap >= 0):
            raise PlacementError(f"mip_rel_gap must be a finite number >= 0, got "
                                 f"{self.mip_rel_gap!r}")


@dataclass(frozen=True, eq=False)
class MilpResult:
    """Attributes:
    assignment: [L, E, D] bool, the best assignment found.
    status: 'optimal' (within `mip_rel_gap`) or 'time-limit'.
    objective: its objective value (as `evaluate` scores it).
    lower_bound: HiGHS's proven lower bound on the optimum, on the same scale (-inf when it
        stopped at its time limit with none proven).
    """

    assignment: np.ndarray
    status: str
    objective: float
    lower_bound: float

    @property
    def gap(self) -> float:
        """Relative gap between the answer and the proven bound."""
        return (self.objective - self.lower_bound) / max(abs(self.objective), 1e-300)


def solve_milp(problem: PlacementProblem, options: MilpOptions | None = None,
               ) -> tuple[np.ndarray, str]:
    """The optimal assignment [L, E, D] and its status ('optimal' or 'time-limit').

    Raises:
        PlacementError: the instance is too large for the exact model.
        InfeasibleError: HiGHS proves that no assignment meets the constraints.
    """
    res = milp_result(problem, options)
    return res.assignment, res.status


def milp_result(problem: PlacementProblem, options: MilpOptions | None = None) -> MilpResult:
    """`solve_milp` with the objective and the proven lower bound (see `MilpResult`)."""
    opts = options or MilpOptions()
    L, E, D = problem.dims
    g = problem.graph
    W = problem.loads.tokens
    R = problem.max_replicas
    r_max = np.where(W > 0, R, 1)  # [L, E]
    vmask = np.broadcast_to(np.arange(1, R + 1)[None, None, :, None] <= r_max[..., None, None],
                            (L, E, R, D))
    n_bin = int(vmask.sum()) + int((r_max).sum())
    if n_bin > opts.max_binaries:
        raise PlacementError(
            f"instance too large for the exact MILP: {n_bin} binary variables > "
            f"{opts.max_binaries} ({L} layers x {E} experts x {D} devices x {R} replica "
            "counts); use the heuristic solver or fewer layers"
        )
    a, b, c = problem.coefficients()
    use_mu = bool(np.any(c > 0))
    optional = np.flatnonzero(~g.always_on) if a > 0 else np.array([], dtype=np.int64)
    use_g = g.message_latency_s > 0

    # Per-replica costs at each replica count: [R, L, E, D].
    ys = np.stack([W / r for r in range(1, R + 1)])
    ct, ce = g.replica_cost(ys)

    # --- columns ---------------------------------------------------------------------------
    col = 0

    def block(n: int) -> np.ndarray:
        nonlocal col
        out = np.arange(col, col + n)
        col += n
        return out

    v_idx = np.full((L, E, R, D), -1, dtype=np.int64)
    v_idx[vmask] = block(int(vmask.sum()))
    umask = np.arange(1, R + 1)[None, None, :] <= r_max[..., None]
    u_idx = np.full((L, E, R), -1, dtype=np.int64)
    u_idx[umask] = block(int(umask.sum()))
    g_idx = np.full((L, D), -1, dtype=np.int64)
    g_idx[:, use_g] = block(L * int(use_g.sum())).reshape(L, -1)
    lam_idx = block(L)
    mu_idx = block(L) if use_mu else np.array([], dtype=np.int64)
    p_idx = block(len(optional))
    z_idx = block(len(optional))
    n_col = col

    cost = np.zeros(n_col)
    cost[v_idx[vmask]] = a * ce.transpose(1, 2, 0, 3)[vmask]
    p_on = float(g.idle_power_w[g.always_on].sum())
    cost[lam_idx] = a * p_on + b
    if use_mu:
        cost[mu_idx] = c
    cost[z_idx] = a * g.idle_power_w[optional]

    integrality = np.zeros(n_col)
    integrality[v_idx[vmask]] = 1
    integrality[u_idx[umask]] = 1
    integrality[g_idx[g_idx >= 0]] = 1
    integrality[p_idx] = 1
    upper = np.full(n_col, np.inf)
    for idx in (v_idx[vmask], u_idx[umask], g_idx[g_idx >= 0], p_idx):
        upper[idx] = 1.0

    # --- rows ------------------------------------------------------------------------------
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    n_row = 0

    def add(r_ids: np.ndarray, c_ids: np.ndarray, v: np.ndarray | float) -> None:
        rows.append(np.asarray(r_ids).ravel())
        cols.append(np.asarray(c_ids).ravel())
        vals.append(np.broadcast_to(np.asarray(v, dtype=np.float64), np.shape(c_ids)).ravel())

    def new_rows(n: int, lower: float | np.ndarray, upper_: float | np.ndarray) -> np.ndarray:
        nonlocal n_row
        out = np.arange(n_row, n_row + n)
        n_row += n
        lo.append(np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)))
        hi.append(np.broadcast_to(np.asarray(upper_, dtype=np.float64), (n,)))
        return out

    li, ei, ri, di = np.nonzero(vmask)  # v's coordinates, in v_idx order
    lu, eu, ru = np.nonzero(umask)
    # 1. one replica count per expert
    one = new_rows(L * E, 1.0, 1.0)
    add(one[lu * E + eu], u_idx[lu, eu, ru], 1.0)
    # 2. sum_d v[l,e,r,d] = r u[l,e,r]
    link = new_rows(len(lu), 0.0, 0.0)
    link_of = np.full((L, E, R), -1, dtype=np.int64)
    link_of[lu, eu, ru] = link
    add(link_of[li, ei, ri], v_idx[li, ei, ri, di], 1.0)
    add(link, u_idx[lu, eu, ru], -(ru + 1.0))
    # 3. T[l,d] <= lam[l]
    t_rows = new_rows(L * D, -np.inf, 0.0)
    add(t_rows[li * D + di], v_idx[li, ei, ri, di], ct[ri, li, ei, di])
    lg, dg = np.nonzero(g_idx >= 0)
    add(t_rows[lg * D + dg], g_idx[lg, dg], g.message_latency_s[dg])
    add(t_rows, np.repeat(lam_idx, D), -1.0)
    # 4. g[l,d] = 1 if d hosts anything in layer l
    if len(lg):
        g_rows = new_rows(len(lg), -np.inf, 0.0)
        g_row_of = np.full((L, D), -1, dtype=np.int64)
        g_row_of[lg, dg] = g_rows
        sel = g_row_of[li, di] >= 0
        add(g_row_of[li[sel], di[sel]], v_idx[li[sel], ei[sel], ri[sel], di[sel]], 1.0)
        add(g_rows, g_idx[lg, dg], -float(E))
    # 5. tokens[l,d] <= mu[l]
    if use_mu:
        m_rows = new_rows(L * D, -np.inf, 0.0)
        add(m_rows[li * D + di], v_idx[li, ei, ri, di], ys[ri, li, ei])
        add(m_rows, np.repeat(mu_idx, D), -1.0)
    # 6. memory
    mem = new_rows(D, -np.inf, g.slots.astype(np.float64))
    add(mem[di], v_idx[li, ei, ri, di], 1.0)
    # 7-8. powered devices and their idle time
    if len(optional):
        big_m = latency_upper_bound(ct, g.message_latency_s)
        pw = new_rows(len(optional), -np.inf, 0.0)
        pos = np.full(D, -1, dtype=np.int64)
        pos[optional] = np.arange(len(optional))
        sel = pos[di] >= 0
        add(pw[pos[di[sel]]], v_idx[li[sel], ei[sel], ri[sel], di[sel]], 1.0)
        add(pw, p_idx, -float(L * E))
        zr = new_rows(len(optional), -big_m, np.inf)
        add(zr, z_idx, 1.0)
        add(np.repeat(zr, L), np.tile(lam_idx, len(optional)), -1.0)
        add(zr, p_idx, -big_m)
    # 9. redundancy budget
    budget = problem.constraints.redundant_per_layer
    if budget is not None:
        red = new_rows(L, -np.inf, float(E + budget))
        add(red[lu], u_idx[lu, eu, ru], ru + 1.0)
    # 9b. symmetry: of devices that are interchangeable (same costs, memory and power
    # state), the first hosts at least as many replicas as the next.
    twins = np.column_stack([g.device_classes(), g.slots, g.always_on])
    for d in range(D - 1):
        if np.array_equal(twins[d], twins[d + 1]):
            sym = new_rows(1, 0.0, np.inf)
            for dd, sign in ((d, 1.0), (d + 1, -1.0)):
                sel = di == dd
                add(np.repeat(sym, int(sel.sum())), v_idx[li[sel], ei[sel], ri[sel], dd], sign)
    # 10. latency SLO
    slo = problem.constraints.latency_slo_s
    if slo is not None:
        s_row = new_rows(1, -np.inf, slo)
        add(np.repeat(s_row, L), lam_idx, 1.0)

    A = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_row, n_col))
    fixed = {"disp": False, "mip_rel_gap": opts.mip_rel_gap}
    if opts.time_limit_s is not None:
        fixed["time_limit"] = opts.time_limit_s
    log.debug("MILP: %d columns (%d binary), %d rows, %d nonzeros", n_col, n_bin, n_row, A.nnz)
    res = _interruptible(lambda: milp(
        cost, integrality=integrality, bounds=Bounds(np.zeros(n_col), upper),
        constraints=LinearConstraint(A, np.concatenate(lo), np.concatenate(hi)),
        options=fixed))
    if res.x is None:
        if res.status == 2:
            what = (f"the latency SLO of {slo * 1e3:.3f} ms cannot be met" if slo is not None
                    else "memory, replica and redundancy limits cannot all be met")
            raise InfeasibleError(f"no placement exists: {what} (HiGHS proved the MILP "
                                  "infeasible)")
        raise PlacementError(f"MILP solver found no solution: {res.message}")
    x = res.x
    chosen = np.zeros((L, E, D), dtype=bool)
    hit = x[v_idx[li, ei, ri, di]] > 0.5
    chosen[li[hit], ei[hit], di[hit]] = True
    status = "optimal" if res.status == 0 else "time-limit"
    # evaluate() adds constants the model leaves out (e.g. layers without tokens).
    value = evaluate(problem, chosen).objective
    bound = getattr(res, "mip_dual_bound", None)
    if bound is None or not np.isfinite(bound):
        # proven optimal, the answer is its own bound (within mip_rel_gap); stopped before
        # HiGHS bounded the relaxation, there is none (was: the answer itself, as if proven)
        bound = float(res.fun) if status == "optimal" else -math.inf
    result = MilpResult(chosen, status, value, bound + (value - float(res.fun)))
    if status != "optimal":
        # how far above the optimum the answer can be: of the bound, not of the answer (an
        # answer at 0.9534 against a bound of 0.4881 is up to 95% above it, not "within 49%")
        lb = result.lower_bound
        # (to the hundredth, as `wattmoe place`'s "proven lower bound" row gives it)
        above = f"{100 * (value - lb) / lb:.2f}%" if lb > 0 else "an unknown share"
        log.warning("MILP stopped at its time limit (%s): its answer (objective %.4f) is at most "
                    "%s above the optimum (%s)", res.message, value, above,
                    f"HiGHS's proven lower bound: {lb:.4f}" if np.isfinite(lb)
                    else "HiGHS proved no lower bound")
    return result


def _interruptible(solve: Callable[[], Any], poll_s: float = 0.1) -> Any:
    """`solve()` in a daemon thread, the caller waiting in short joins, so that Ctrl-C stops
    the wait at once: HiGHS releases the GIL but checks for no interrupt, and ran to its time
    limit before the KeyboardInterrupt was seen. It keeps no answer then (HiGHS gives none
    before it returns, so the abandoned thread's is dropped), and says so. HiGHS cannot be
    stopped from outside: the abandoned thread solves on to its time limit (`--time-limit`,
    60 s by default) in a process that goes on (a notebook); the CLI exits."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["res"] = solve()
        except BaseException as exc:  # handed to the caller's thread
            out["exc"] = exc

    t = threading.Thread(target=run, name="wattmoe-milp", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(poll_s)
    except KeyboardInterrupt:
        log.warning("MILP interrupted: HiGHS gives no solution before it returns, so none is "
                    "kept; --time-limit bounds the solve and returns its best")
        raise
    if "exc" in out:
        raise out["exc"]
    return out["res"]


def latency_upper_bound(ct: np.ndarray, message_latency_s: np.ndarray) -> float:
    """Latency no assignment exceeds: per layer, every expert's costliest replica on one
    device, plus the largest message latency. `ct` is [R, L, E, D]."""
    worst = ct.max(axis=(0, 3)).sum(axis=1)  # [L]
    return float((worst + (message_latency_s.max() if len(message_latency_s) else 0)).sum()
                 ) * 1.01 + 1e-9
