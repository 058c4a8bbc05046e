"""The heuristic's search state: an assignment with the aggregates its steps need.

`HeuristicState` holds the replica matrix N [L, E, D] of one powered set, per-replica costs
and the per-layer, per-device aggregates (busy time T, tokens, dynamic energy, replica count
n) plus free memory slots, and updates them in place for the primitive steps the greedy
start, the replica passes and the local search are made of: replacing the whole assignment,
changing one expert's replicas, moving one replica, swapping two (in one layer) or exchanging
two (in different layers). Each step bumps its layers' `version`, so that the local search can
skip layers it has already searched without finding anything and that have not changed since.
"""

from __future__ import annotations

import numpy as np

from wattmoe.placement.base import Objective
from wattmoe.placement.problem import PlacementProblem


class HeuristicState:
    """A mutable assignment with the per-layer aggregates the moves need.

    Every step is scored by the change of its layer's cost plus a tiny tie-break,
    q_T sum_d T[l,d]^2 + q_K[l] sum_d tokens[l,d]^2 (about 1e-4 of the cost): it lets the
    search walk along plateaus where several devices share the maximum (no single move lowers
    it, but moves that unload one of them lead to one that does), and it cannot cycle since
    the scored function strictly decreases.
    """

    def __init__(self, problem: PlacementProblem, allowed: np.ndarray, objective: Objective):
        L, E, D = problem.dims
        g = problem.graph
        self.L, self.E, self.D = L, E, D
        self.g = g
        self.W = problem.loads.tokens
        self.allowed = allowed
        self.lat0 = g.message_latency_s
        self.slots = g.slots
        a, b, c = problem.coefficients(objective)
        powered_idle = float(g.idle_power_w[allowed | g.always_on].sum())
        self.a, self.alpha, self.c = a, a * powered_idle + b, c
        self.use_tok = bool(np.any(c > 0))
        self.max_r = problem.max_replicas
        budget = problem.constraints.redundant_per_layer
        self.budget = E * D if budget is None else budget
        self.ct1, self.ce1 = g.replica_cost(self.W)  # [L, E, D] at one replica
        self.N = np.zeros((L, E, D), dtype=bool)
        self.r = np.zeros((L, E), dtype=np.int64)
        self.y = np.zeros((L, E))
        self.ct = np.zeros((L, E, D))
        self.ce = np.zeros((L, E, D))
        self.T = np.zeros((L, D))
        self.tok = np.zeros((L, D))
        self.dyn = np.zeros((L, D))
        self.n = np.zeros((L, D), dtype=np.int64)
        self.free = self.slots.astype(np.int64).copy()
        self.version = np.zeros(L, dtype=np.int64)  # bumped by every change of a layer
        # Scale of one expert's cost, for tolerances and tie-breaks.
        per = (a * self.ce1.min(axis=2) + self.alpha * self.ct1.min(axis=2)
               + c[:, None] * self.W)
        self.scale = float(per.mean()) if per.size and per.mean() > 0 else 1.0
        self.tol = 1e-9 * self.scale
        eps = 1e-4 / D
        t_ref = max(float(self.ct1.min(axis=2).sum(axis=1).mean()) / D, 1e-300)
        self.qT = eps * self.alpha / t_ref
        self.qK = eps * c / np.maximum(self.W.sum(axis=1) / D, 1e-300)

    def load(self, N: np.ndarray) -> None:
        """Replaces the assignment and recomputes every aggregate."""
        self.N = N.copy()
        self.r = N.sum(axis=2)
        self.y = np.where(self.r > 0, self.W / np.maximum(self.r, 1), 0.0)
        self.ct, self.ce = self.g.replica_cost(self.y)
        ones = self.r == 1
        self.ct[ones] = self.ct1[ones]
        self.ce[ones] = self.ce1[ones]
        self.n = N.sum(axis=1)
        self.T = (N * self.ct).sum(axis=1) + (self.n > 0) * self.lat0
        self.tok = (N * self.y[..., None]).sum(axis=1)
        self.dyn = (N * self.ce).sum(axis=1)
        self.free = self.slots - N.sum(axis=(0, 1))
        self.version += 1

    def set_expert(self, layer: int, e: int, holders: np.ndarray,
                   costs: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Gives expert (layer, e) exactly the replicas in `holders` ([D] bool); `costs` are
        its per-replica (time, energy) rows at the new count, if already known."""
        old = self.N[layer, e]
        self.version[layer] += 1
        self.T[layer] -= old * self.ct[layer, e]
        self.tok[layer] -= old * self.y[layer, e]
        self.dyn[layer] -= old * self.ce[layer, e]
        was = self.n[layer] > 0
        self.n[layer] += holders.astype(np.int64) - old
        now = self.n[layer] > 0
        self.T[layer] += (now.astype(float) - was) * self.lat0
        self.free += old.astype(np.int64) - holders
        r = int(holders.sum())
        self.N[layer, e] = holders
        self.r[layer, e] = r
        self.y[layer, e] = self.W[layer, e] / r
        if r == 1:
            ct, ce = self.ct1[layer, e], self.ce1[layer, e]
        elif costs is not None:
            ct, ce = costs
        else:
            ct, ce = self.g.replica_cost(np.array(self.y[layer, e]))
        self.ct[layer, e] = ct
        self.ce[layer, e] = ce
        self.T[layer] += holders * ct
        self.tok[layer] += holders * self.y[layer, e]
        self.dyn[layer] += holders * ce
        self.T[layer, ~now] = 0.0
        self.tok[layer, ~now] = 0.0
        self.dyn[layer, ~now] = 0.0

    def move(self, layer: int, e: int, a: int, b: int) -> bool:
        """Moves expert (layer, e)'s replica from device a to device b; False (and nothing
        changes) if b has no free slot, already holds the expert, or a does not."""
        if self.free[b] <= 0 or self.N[layer, e, b] or not self.N[layer, e, a]:
            return False
        ct, ce, y = self.ct[layer, e], self.ce[layer, e], self.y[layer, e]
        self.version[layer] += 1
        self.N[layer, e, a] = False
        self.N[layer, e, b] = True
        self.n[layer, a] -= 1
        self.n[layer, b] += 1
        self.T[layer, b] += ct[b] + (self.lat0[b] if self.n[layer, b] == 1 else 0.0)
        self.tok[layer, b] += y
        self.dyn[layer, b] += ce[b]
        if self.n[layer, a] == 0:  # reset exactly: no drift on emptied devices
            self.T[layer, a] = self.tok[layer, a] = self.dyn[layer, a] = 0.0
        else:
            self.T[layer, a] -= ct[a]
            self.tok[layer, a] -= y
            self.dyn[layer, a] -= ce[a]
        self.free[a] += 1
        self.free[b] -= 1
        return True

    def exchange(self, l1: int, e1: int, l2: int, e2: int, a: int, b: int) -> bool:
        """Expert (l1, e1) moves from a to b and (l2, e2) from b to a, in different layers
        (each device's slot count is unchanged, so both may be full); False (and nothing
        changes) if either move is not possible."""
        N = self.N
        if l1 == l2 or not (N[l1, e1, a] and not N[l1, e1, b] and N[l2, e2, b]
                            and not N[l2, e2, a]):
            return False
        self.free[b] += 1  # (l2, e2)'s slot on b, lent to (l1, e1) until it leaves
        self.move(l1, e1, a, b)
        self.move(l2, e2, b, a)
        self.free[b] -= 1
        return True

    def swap(self, layer: int, e1: int, a: int, e2: int, b: int) -> None:
        """Expert e1 moves from a to b and e2 from b to a (slot counts are unchanged)."""
        ct, ce, y = self.ct[layer], self.ce[layer], self.y[layer]
        self.version[layer] += 1
        self.N[layer, e1, a] = self.N[layer, e2, b] = False
        self.N[layer, e1, b] = self.N[layer, e2, a] = True
        self.T[layer, a] += ct[e2, a] - ct[e1, a]
        self.T[layer, b] += ct[e1, b] - ct[e2, b]
        self.tok[layer, a] += y[e2] - y[e1]
        self.tok[layer, b] += y[e1] - y[e2]
        self.dyn[layer, a] += ce[e2, a] - ce[e1, a]
        self.dyn[layer, b] += ce[e1, b] - ce[e2, b]


def best_per_layer(layers: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index (into the candidate arrays) of each layer's smallest value."""
    order = np.lexsort((values, layers))
    _, first = np.unique(layers[order], return_index=True)
    return order[first]
