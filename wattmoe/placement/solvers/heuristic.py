"""The fast heuristic: greedy placement, replica allocation, local search; vectorized numpy.

The objective separates by layer once the set of powered devices is fixed:

    cost_l = a * sum_d dyn[l, d] + alpha * max_d T[l, d] + c_l * max_d tokens[l, d]

(`PlacementProblem.coefficients`; alpha = a x idle power of the powered set + b). So each step
works on all layers at once with [L, D] (or [candidates, D]) arrays, and memory, the one
constraint that couples layers, is a global per-device slot count checked when a step is
applied. For a given powered set S:

1. a start: *greedy* (a bundled replica allocation for hot experts per layer, then each
   layer's replicas heaviest first onto the device with the smallest increase of cost_l, all
   layers advancing together) or *round-robin*;
2. *replicas*: per layer, the heaviest replica on the critical device (the slowest, the most
   loaded) gets one more replica where that lowers cost_l most, while it does; replicas that
   no longer pay off are dropped;
3. *local search*: best-improvement moves (one replica to another device), swaps (two
   replicas on different devices trade places) and, on full devices, cross-layer exchanges
   (a slot moves to the layer that gains most), one per layer per pass, until nothing helps;

and the best result, scored exactly by `evaluate`, wins over starts and powered sets (all
subsets containing the always-on devices for small clusters; prefixes of devices ranked by
efficiency for large ones) and over plain round-robin and fill-first, so it is never worse than
either. Small instances then get seeded iterated local search (kicks). A latency SLO is met by
mixing latency into the objective with the smallest weight that meets it (bisection).

Modules: `heuristic_state` (the state and its primitive updates), `heuristic_greedy` (step 1),
`heuristic_replicas` (step 2), `heuristic_search` (step 3 and the kicks); this one holds the
options, the improvement rounds and the search over starts, powered sets and SLO weights.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np

from wattmoe.errors import ConfigError
from wattmoe.placement.base import InfeasibleError, Objective, check_time_limit
from wattmoe.placement.problem import (
    Evaluation,
    PlacementProblem,
    evaluate,
    round_robin_assignment,
)
from wattmoe.placement.solvers.baselines import solve_fill
from wattmoe.placement.solvers.heuristic_greedy import allocate_replicas, greedy
from wattmoe.placement.solvers.heuristic_replicas import drop_pass, replicate_pass
from wattmoe.placement.solvers.heuristic_search import kick, local_search
from wattmoe.placement.solvers.heuristic_state import HeuristicState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeuristicOptions:
    """Knobs of the heuristic.

    Attributes:
        max_passes: local-search passes per improvement round.
        max_rounds: improvement rounds (replicas, then local search).
        full_neighborhood_limit: evaluate every replica as a move source when
            replicas x devices is at most this; otherwise only those on critical devices.
        enumerate_powered_sets_up_to: try every powered set for clusters of at most this
            many devices; prefixes of an efficiency ranking for larger ones.
        starts: constructive starts to try ('greedy', 'round-robin').
        slo_bisection_steps: steps of the latency-weight bisection under an SLO.
        kicks: iterated-local-search rounds on the best answer (a few random moves, then
            local search, kept if better) for instances with at most `kick_limit`
            layers x experts x devices.
        kick_limit: see `kicks`.
        seed: seed of the kicks.
        time_limit_s: soft limit; the search stops improving after it (None: no limit).
    """

    max_passes: int = 400
    max_rounds: int = 6
    full_neighborhood_limit: int = 300_000
    enumerate_powered_sets_up_to: int = 6
    starts: tuple[str, ...] = ("greedy", "round-robin")
    slo_bisection_steps: int = 7
    kicks: int = 40
    kick_limit: int = 1024
    seed: int = 0
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        unknown = [s for s in self.starts if s not in ("greedy", "round-robin")]
        if unknown or not self.starts:
            raise ConfigError(f"heuristic starts must be some of 'greedy', 'round-robin', "
                              f"got {self.starts!r}")
        check_time_limit(self.time_limit_s)


def _improve(st: HeuristicState, opts: HeuristicOptions, deadline: float | None) -> None:
    """Replicas, then local search, until neither changes anything."""
    for _ in range(opts.max_rounds):
        changed = False
        for _ in range(st.E * st.max_r):
            if not replicate_pass(st):
                break
            changed = True
        while drop_pass(st):
            changed = True
        changed |= local_search(st, opts.full_neighborhood_limit, opts.max_passes, deadline)
        if not changed or (deadline is not None and time.perf_counter() > deadline):
            break


def _powered_sets(problem: PlacementProblem, objective: Objective,
                  opts: HeuristicOptions) -> list[np.ndarray]:
    """Sets of devices allowed to host experts: subsets or efficiency-ranked prefixes."""
    g = problem.graph
    L, E, D = problem.dims
    everyone = np.ones(D, dtype=bool)
    if objective.energy <= 0 or g.always_on.all():
        return [everyone]
    base = g.always_on.copy()
    optional = np.flatnonzero(~base)
    need = L * E
    sets = []
    if opts.enumerate_powered_sets_up_to >= D:
        for k in range(len(optional) + 1):
            for extra in itertools.combinations(optional, k):
                s = base.copy()
                s[list(extra)] = True
                if s.any() and int(g.slots[s].sum()) >= need:
                    sets.append(s)
        return sets or [everyone]
    # Rank optional devices by the cost of one average expert there (time x idle + dynamic).
    mean_load = max(float(problem.loads.tokens.mean()), 1e-9)
    t, e = g.replica_cost(np.array(mean_load))
    score = e + g.idle_power_w * t
    s = base.copy()
    for d in optional[np.argsort(score[optional], kind="stable")]:
        if s.any() and int(g.slots[s].sum()) >= need:
            break
        s[d] = True
    sets.append(s)
    if not s.all():
        sets.append(everyone)
    return sets


def _solve_fixed(problem: PlacementProblem, objective: Objective, opts: HeuristicOptions,
                 deadline: float | None) -> tuple[np.ndarray, Evaluation]:
    """Best assignment over powered sets and starts, for one objective (no SLO).

    The round-robin start runs on small instances, and on large ones only when the greedy
    start ends up worse than round-robin itself; plain round-robin and fill-first are
    candidates too, so the answer is never worse than either.
    """
    L, E, D = problem.dims
    scored = problem.with_objective(objective)
    slots = problem.graph.slots
    candidates: list[tuple[np.ndarray, Evaluation, np.ndarray]] = []

    def keep(N: np.ndarray, allowed: np.ndarray) -> Evaluation:
        ev = evaluate(scored, N)
        candidates.append((N, ev, allowed))
        return ev

    plain_rr = keep(round_robin_assignment(L, E, slots), np.ones(D, dtype=bool))
    keep(solve_fill(problem)[0], np.ones(D, dtype=bool))
    small = opts.full_neighborhood_limit >= L * E * D
    for allowed in _powered_sets(problem, objective, opts):
        best_here = np.inf
        for start in opts.starts:
            if start == "round-robin" and not small and allowed.all() \
                    and best_here < plain_rr.objective:
                continue  # large instance, and greedy already beat round-robin
            st = HeuristicState(problem, allowed, objective)
            if start == "greedy":
                greedy(st, allocate_replicas(st))
            else:
                devices = None if allowed.all() else np.flatnonzero(allowed)
                st.load(round_robin_assignment(L, E, slots, devices=devices))
            _improve(st, opts, deadline)
            ev = keep(st.N.copy(), allowed)
            best_here = min(best_here, ev.objective)
            log.debug("start %s on %d devices: objective %.6g", start, int(allowed.sum()),
                      ev.objective)
    N, ev, allowed = min(candidates, key=lambda c: c[1].objective)
    if opts.kicks and opts.kick_limit >= L * E * D:
        N, ev = _iterated_local_search(problem, scored, objective, N, ev, allowed, opts,
                                       deadline)
    return N, ev


def _iterated_local_search(problem: PlacementProblem, scored: PlacementProblem,
                           objective: Objective, N: np.ndarray, ev: Evaluation,
                           allowed: np.ndarray, opts: HeuristicOptions,
                           deadline: float | None) -> tuple[np.ndarray, Evaluation]:
    """Kicks the best answer out of its local optimum and searches again, `opts.kicks`
    times; keeps whatever scores better (exactly)."""
    rng = np.random.default_rng(opts.seed)
    st = HeuristicState(problem, allowed, objective)
    for i in range(opts.kicks):
        st.load(N)
        kick(st, rng, moves=2 + i % 3)
        _improve(st, opts, deadline)
        cand = evaluate(scored, st.N)
        if cand.objective < ev.objective * (1 - 1e-12):
            N, ev = st.N.copy(), cand
        if deadline is not None and time.perf_counter() > deadline:
            break
    return N, ev


def solve_heuristic(problem: PlacementProblem, options: HeuristicOptions | None = None,
                    ) -> tuple[np.ndarray, str]:
    """The heuristic's assignment [L, E, D] and status 'heuristic'.

    Raises:
        InfeasibleError: the latency SLO cannot be met even when minimizing latency alone.
    """
    opts = options or HeuristicOptions()
    deadline = None if opts.time_limit_s is None else time.perf_counter() + opts.time_limit_s
    N, ev = _solve_fixed(problem, problem.objective, opts, deadline)
    slo = problem.constraints.latency_slo_s
    if slo is None or ev.latency_s <= slo:
        return N, "heuristic"
    fastest = Objective(latency=1.0)
    n_fast, ev_fast = _solve_fixed(problem, fastest, opts, deadline)
    if ev_fast.latency_s > slo:
        raise InfeasibleError(
            f"latency SLO {slo * 1e3:.3f} ms is infeasible: the fastest placement found takes "
            f"{ev_fast.latency_s * 1e3:.3f} ms per batch"
        )
    obj = problem.objective
    total = obj.energy + obj.latency + obj.balance
    best_n, best_ev = n_fast, evaluate(problem, n_fast)
    lo, hi = 0.0, 1.0
    for _ in range(opts.slo_bisection_steps):
        theta = (lo + hi) / 2
        mixed = Objective(energy=(1 - theta) * obj.energy,
                          latency=(1 - theta) * obj.latency + theta * total,
                          balance=(1 - theta) * obj.balance)
        n_mid, _ = _solve_fixed(problem, mixed, opts, deadline)
        ev_mid = evaluate(problem, n_mid)
        if ev_mid.latency_s <= slo:
            hi = theta
            if ev_mid.objective < best_ev.objective:
                best_n, best_ev = n_mid, ev_mid
        else:
            lo = theta
    return best_n, "heuristic"
