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

log = logging.getLogger(__name__)

_INF = np.inf


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


class _State:
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
        # Scale of one expert's cost, for tolerances and tie-breaks.
        per = (a * self.ce1.min(axis=2) + self.alpha * self.ct1.min(axis=2)
               + c[:, None] * self.W)
        self.scale = float(per.mean()) if per.size and per.mean() > 0 else 1.0
        self.tol = 1e-9 * self.scale
        eps = 1e-4 / D
        t_ref = max(float(self.ct1.min(axis=2).sum(axis=1).mean()) / D, 1e-300)
        self.qT = eps * self.alpha / t_ref
        self.qK = eps * c / np.maximum(self.W.sum(axis=1) / D, 1e-300)

    # --- whole-state ----------------------------------------------------------------------

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

    # --- greedy start ---------------------------------------------------------------------

    def allocate_replicas(self, levels: int = 32) -> np.ndarray:
        """Replica counts [L, E] for hot experts, decided per layer as one bundled choice.

        Each replica of expert e with r replicas has weight w = alpha t(W/r) + c W/r (its
        share of the layer's max terms, on the best allowed device). For a level tau, every
        expert gets the fewest replicas (<= max_replicas) that bring w under tau; the level is
        scored by a packing lower bound of the layer cost,

            a sum r e(W/r) + alpha max(max t, sum r t / D_eff) + c max(max W/r, W_l / D_S),

        (D_eff: allowed devices weighted by speed), and each layer takes its best level
        within the redundancy budget and memory. Splitting all experts above a level at once
        is what single-replica steps cannot do when several hot experts tie at the maximum.
        """
        L, E = self.L, self.E
        ones = np.ones((L, E), dtype=np.int64)
        R = self.max_r
        allowed = np.flatnonzero(self.allowed)
        if R <= 1 or len(allowed) <= 1 or (self.alpha <= 0 and not self.use_tok):
            return ones
        classes = self.g.device_classes()[allowed]
        reps = allowed[np.unique(classes, return_index=True)[1]]
        rs = np.arange(1, R + 1)
        y_r = self.W[:, :, None] / rs  # [L, E, R]
        t_all, e_all = self.g.replica_cost(y_r, reps)
        t_r, e_r = t_all.min(axis=-1), e_all.min(axis=-1)
        speed = self.ct1[:, :, allowed].mean(axis=(0, 1))
        d_eff = float((speed.min() / np.maximum(speed, 1e-300)).sum())
        w_r = self.alpha * t_r + self.c[:, None, None] * y_r
        flat = w_r.reshape(L, -1)
        taus = np.quantile(flat, np.linspace(0.0, 1.0, levels), axis=1).T  # [L, Q]
        taus = np.concatenate([taus, np.full((L, 1), np.inf)], axis=1)
        above = w_r[:, None, :, :] > taus[:, :, None, None] * (1 + 1e-12)  # [L, Q, E, R]
        r = np.minimum(above.sum(axis=3) + 1, R)  # [L, Q, E]
        pick = (r - 1)[..., None]
        t_sel = np.take_along_axis(np.broadcast_to(t_r[:, None], above.shape), pick, 3)[..., 0]
        e_sel = np.take_along_axis(np.broadcast_to(e_r[:, None], above.shape), pick, 3)[..., 0]
        cost = self.a * (r * e_sel).sum(axis=2) + self.alpha * np.maximum(
            t_sel.max(axis=2), (r * t_sel).sum(axis=2) / d_eff)
        if self.use_tok:
            y_sel = self.W[:, None, :] / r
            mean_tok = self.W.sum(axis=1)[:, None] / len(allowed)
            cost = cost + self.c[:, None] * np.maximum(y_sel.max(axis=2), mean_tok)
        spare = int(self.slots[allowed].sum()) - L * E
        cap = min(self.budget, max(spare // L, 0), E * (R - 1))
        extra = (r - 1).sum(axis=2)
        cost = np.where(extra <= cap, cost, np.inf)
        # Among levels as good as the best, the one with the fewest replicas.
        near = cost <= cost.min(axis=1, keepdims=True) * (1 + 1e-9) + 1e-300
        best = np.argmin(np.where(near, extra, np.iinfo(np.int64).max), axis=1)
        return r[np.arange(L), best]

    def greedy(self, replicas: np.ndarray | None = None) -> None:
        """Places `replicas` [L, E] replicas of each expert (default: one each), heaviest
        first, each onto the device with the least cost increase that holds no replica of
        that expert yet; all layers advance together, memory conflicts go to the heavier
        replica. A replica that finds no device is dropped."""
        L, E, D = self.L, self.E, self.D
        r = np.ones((L, E), dtype=np.int64) if replicas is None else replicas
        rows = np.arange(L)
        y = self.W / r
        split = r > 1
        ct, ce = self.ct1.copy(), self.ce1.copy()
        if split.any():
            ct[split], ce[split] = self.g.replica_cost(y[split])
        weight = self.alpha * ct.min(axis=2) + self.c[:, None] * y + 1e-300 * y
        items = np.full((L, int(r.sum(axis=1).max())), -1, dtype=np.int64)
        for layer in range(L):
            order = np.argsort(-weight[layer], kind="stable")
            ids = np.repeat(order, r[layer, order])
            items[layer, :len(ids)] = ids
        self.r[:] = 0
        self.y, self.ct, self.ce = y, ct, ce
        dropped = False
        for k in range(items.shape[1]):
            e = items[:, k]
            live = e >= 0
            e = np.maximum(e, 0)
            x = y[rows, e]
            ct_k, ce_k = ct[rows, e], ce[rows, e]
            t_new = self.T + ct_k + (self.n == 0) * self.lat0
            lam = self.T.max(axis=1, keepdims=True)
            delta = self.a * ce_k + self.alpha * (np.maximum(lam, t_new) - lam)
            tok_new = self.tok + x[:, None]
            if self.use_tok:
                mu = self.tok.max(axis=1, keepdims=True)
                delta = delta + self.c[:, None] * (np.maximum(mu, tok_new) - mu)
            # Ties (common: identical devices) go to the least busy, then least loaded device.
            tie = t_new / (t_new.max(axis=1, keepdims=True) + 1e-300) \
                + tok_new / (tok_new.max(axis=1, keepdims=True) + 1e-300)
            key = delta + 1e-7 * self.scale * tie
            mask = (self.allowed & (self.free > 0))[None, :] & ~self.N[rows, e] & live[:, None]
            while True:
                choice = np.argmin(np.where(mask, key, _INF), axis=1)
                ok = mask[rows, choice]
                counts = np.bincount(choice[ok], minlength=D)
                over = np.flatnonzero(counts > self.free)
                if not len(over):
                    break
                for d in over:
                    at = np.flatnonzero(ok & (choice == d))
                    reject = at[np.argsort(-x[at], kind="stable")][self.free[d]:]
                    mask[reject, d] = False
            dropped |= bool((live & ~ok).any())
            lr, le, ld = rows[ok], e[ok], choice[ok]
            self.N[lr, le, ld] = True
            self.r[lr, le] += 1
            self.T[lr, ld] = t_new[lr, ld]
            self.tok[lr, ld] += x[ok]
            self.dyn[lr, ld] += ce_k[lr, ld]
            self.n[lr, ld] += 1
            self.free -= np.bincount(ld, minlength=D)
        if dropped or np.any(self.r != r):
            self.load(self.N)

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _top3(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices [L, 3] and values [L, 3] of each row's three largest entries (padded)."""
        L, D = M.shape
        idx = np.argsort(-M, axis=1, kind="stable")[:, :3]
        if D < 3:
            idx = np.concatenate([idx, np.full((L, 3 - D), -1)], axis=1)
        vals = np.where(idx >= 0, np.take_along_axis(M, np.maximum(idx, 0), axis=1), 0.0)
        return idx, vals

    @staticmethod
    def _max_excl_rows(idx: np.ndarray, vals: np.ndarray, a: np.ndarray,
                       b: np.ndarray) -> np.ndarray:
        """Per candidate row (top-3 `idx`, `vals` [K, 3]): the largest entry of the row other
        than devices a [K, 1] and b [K or 1, X], from its top 3; shape [K, X]."""
        i1, i2 = idx[:, 0:1], idx[:, 1:2]
        return np.where((i1 != a) & (i1 != b), vals[:, 0:1],
                        np.where((i2 != a) & (i2 != b), vals[:, 1:2], vals[:, 2:3]))

    @staticmethod
    def _best_per_layer(layers: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Index (into the candidate arrays) of each layer's smallest value."""
        order = np.lexsort((values, layers))
        _, first = np.unique(layers[order], return_index=True)
        return order[first]

    def _critical(self, k: int) -> np.ndarray:
        """[L, D] mask of each layer's k most critical devices per active objective term."""
        crit = np.zeros((self.L, self.D), dtype=bool)
        k = min(k, self.D)
        terms = []
        if self.alpha > 0:
            terms.append(self.T)
        if self.use_tok:
            terms.append(self.tok)
        if self.a > 0:
            terms.append(self.dyn)
        for M in terms:
            if k < self.D:
                top = np.argpartition(-M, k - 1, axis=1)[:, :k]
                np.put_along_axis(crit, top, True, axis=1)
            else:
                crit[:] = True
        return crit

    def _replicas_on(self, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """(layer, expert, device) of every replica on the (layer, device) pairs of `mask`
        (all replicas if None), without scanning the whole [L, E, D] array."""
        if mask is None:
            return np.nonzero(self.N)
        pl, pd = np.nonzero(mask)
        p, e = np.nonzero(self.N[pl, :, pd])
        return pl[p], e, pd[p]

    def _set_expert(self, layer: int, e: int, holders: np.ndarray,
                    costs: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Gives expert (layer, e) exactly the replicas in `holders` ([D] bool); `costs` are
        its per-replica (time, energy) rows at the new count, if already known."""
        old = self.N[layer, e]
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

    # --- replicas ---------------------------------------------------------------------------

    def _score_replica_change(self, cl: np.ndarray, t_rows: np.ndarray, k_rows: np.ndarray,
                              dyn_change: np.ndarray) -> np.ndarray:
        """Change [K, X] of the true layer cost (no tie-break: a replica must pay for its
        memory) of candidates (layer cl [K]) whose layer ends up with device times t_rows
        [K, X, D] and tokens k_rows, and dynamic energy changed by dyn_change."""
        lam = self.T.max(axis=1)[cl]
        delta = self.alpha * (t_rows.max(axis=2) - lam[:, None])
        if self.a > 0:
            delta += self.a * dyn_change
        if self.use_tok:
            mu = self.tok.max(axis=1)[cl]
            delta += self.c[cl][:, None] * (k_rows.max(axis=2) - mu[:, None])
        return delta

    def replicate_pass(self) -> bool:
        """Adds at most one replica per layer, where it lowers the layer's score most."""
        if self.max_r <= 1 or self.D <= 1:
            return False
        rows = np.arange(self.L)
        # Candidates: the heaviest replica on the slowest device, and on the most loaded one.
        critical = []
        if self.alpha > 0:
            d = self.T.argmax(axis=1)
            critical.append((d, self.ct[rows, :, d]))
        if self.use_tok:
            critical.append((self.tok.argmax(axis=1), self.y))
        cands_l, cands_e = [], []
        for d, weight in critical:
            on = self.N[rows, :, d]  # [L, E]
            e = np.argmax(np.where(on, weight, -1.0), axis=1)
            ok = on[rows, e]
            cands_l.append(rows[ok])
            cands_e.append(e[ok])
        if not cands_l:
            return False
        cl = np.concatenate(cands_l)
        ce_ = np.concatenate(cands_e)
        extra = self.r.sum(axis=1) - self.E
        ok = (self.r[cl, ce_] < self.max_r) & (extra[cl] < self.budget) & (self.W[cl, ce_] > 0)
        cl, ce_ = cl[ok], ce_[ok]
        if not len(cl):
            return False
        K, D = len(cl), self.D
        y2 = self.W[cl, ce_] / (self.r[cl, ce_] + 1)
        ct2, cen2 = self.g.replica_cost(y2)  # [K, D]
        hold = self.N[cl, ce_]
        eye = np.eye(D, dtype=bool)[None]  # target b on axis 1
        base_t = self.T[cl] + hold * (ct2 - self.ct[cl, ce_])
        add_t = ct2 + (self.n[cl] == 0) * self.lat0
        t_rows = base_t[:, None, :] + eye * add_t[:, None, :]  # [K, b, d]
        k_rows = np.zeros((K, 1, 1))
        if self.use_tok:
            base_k = self.tok[cl] + hold * (y2 - self.y[cl, ce_])[:, None]
            k_rows = base_k[:, None, :] + eye * y2[:, None, None]
        dyn_change = (hold * (cen2 - self.ce[cl, ce_])).sum(axis=1)[:, None] + cen2
        delta = self._score_replica_change(cl, t_rows, k_rows, dyn_change)
        valid = ~hold & self.allowed & (self.free > 0)
        delta = np.where(valid, delta, _INF)
        best_d = np.argmin(delta, axis=1)
        best_v = delta[np.arange(K), best_d]
        changed = False
        for i in self._best_per_layer(cl, best_v):
            if best_v[i] < -self.tol:
                layer, e, d = int(cl[i]), int(ce_[i]), int(best_d[i])
                if self.free[d] <= 0 or self.N[layer, e, d]:
                    continue
                holders = self.N[layer, e].copy()
                holders[d] = True
                self._set_expert(layer, e, holders, (ct2[i], cen2[i]))
                changed = True
        return changed

    def drop_pass(self) -> bool:
        """Removes at most one replica per layer where that lowers the layer's score."""
        cl, ce_, ca = np.nonzero(self.N & (self.r > 1)[..., None])
        if not len(cl):
            return False
        ks = np.arange(len(cl))
        y3 = self.W[cl, ce_] / (self.r[cl, ce_] - 1)
        ct3, cen3 = self.g.replica_cost(y3)
        hold = self.N[cl, ce_].copy()
        hold[ks, ca] = False
        new_t = self.T[cl] + hold * (ct3 - self.ct[cl, ce_])
        new_t[ks, ca] = self.T[cl, ca] - self.ct[cl, ce_, ca] - (self.n[cl, ca] == 1) * \
            self.lat0[ca]
        new_k = np.zeros((len(cl), 1))
        if self.use_tok:
            new_k = self.tok[cl] + hold * (y3 - self.y[cl, ce_])[:, None]
            new_k[ks, ca] = self.tok[cl, ca] - self.y[cl, ce_]
        dyn_change = (hold * (cen3 - self.ce[cl, ce_])).sum(axis=1) - self.ce[cl, ce_, ca]
        delta = self._score_replica_change(cl, new_t[:, None, :], new_k[:, None, :],
                                           dyn_change[:, None])[:, 0]
        changed = False
        for i in self._best_per_layer(cl, delta):
            if delta[i] < -self.tol:
                layer, e, d = int(cl[i]), int(ce_[i]), int(ca[i])
                holders = self.N[layer, e].copy()
                holders[d] = False
                self._set_expert(layer, e, holders, (ct3[i], cen3[i]))
                changed = True
        return changed

    # --- local search -----------------------------------------------------------------------

    def _pair_delta(self, cl: np.ndarray, a: np.ndarray, b: np.ndarray, t_a: np.ndarray,
                    t_b: np.ndarray, k_a: np.ndarray | None, k_b: np.ndarray | None,
                    ddyn: np.ndarray | None) -> np.ndarray:
        """Score change when only devices a [K, 1] and b [K, X] of layer cl [K] change, to
        times t_a, t_b and tokens k_a, k_b."""
        idx, vals = self._top3(self.T)
        m = self._max_excl_rows(idx[cl], vals[cl], a, b)
        lam = vals[cl, 0][:, None]
        old_a = np.take_along_axis(self.T[cl], a, axis=1)
        old_b = self.T[cl[:, None], b]
        delta = self.alpha * (np.maximum(m, np.maximum(t_a, t_b)) - lam)
        delta += self.qT * (t_a ** 2 + t_b ** 2 - old_a ** 2 - old_b ** 2)
        if ddyn is not None:
            delta += self.a * ddyn
        if self.use_tok and k_a is not None and k_b is not None:
            kidx, kvals = self._top3(self.tok)
            mk = self._max_excl_rows(kidx[cl], kvals[cl], a, b)
            ko_a = np.take_along_axis(self.tok[cl], a, axis=1)
            ko_b = self.tok[cl[:, None], b]
            cc, qq = self.c[cl][:, None], self.qK[cl][:, None]
            delta += cc * (np.maximum(mk, np.maximum(k_a, k_b)) - kvals[cl, 0][:, None])
            delta += qq * (k_a ** 2 + k_b ** 2 - ko_a ** 2 - ko_b ** 2)
        return delta

    def _move_deltas(self, cl: np.ndarray, ce_: np.ndarray, ca: np.ndarray) -> np.ndarray:
        """[K, D] score change of moving replica (cl, ce_) from device ca to each device
        (inf where the expert is already, or the device is not allowed; memory unchecked)."""
        K, D = len(cl), self.D
        ks = np.arange(K)
        A = ca[:, None]
        B = np.broadcast_to(np.arange(D)[None, :], (K, D))
        ct_row = self.ct[cl, ce_]
        t_a = (self.T[cl, ca] - ct_row[ks, ca] - (self.n[cl, ca] == 1) * self.lat0[ca])[:, None]
        t_a = np.maximum(t_a, 0.0)
        t_b = self.T[cl] + ct_row + (self.n[cl] == 0) * self.lat0
        k_a = k_b = ddyn = None
        if self.use_tok:
            yk = self.y[cl, ce_]
            k_a = (self.tok[cl, ca] - yk)[:, None]
            k_b = self.tok[cl] + yk[:, None]
        if self.a > 0:
            ce_row = self.ce[cl, ce_]
            ddyn = ce_row - ce_row[ks, ca][:, None]
        delta = self._pair_delta(cl, A, B, t_a, t_b, k_a, k_b, ddyn)
        return np.where(~self.N[cl, ce_] & self.allowed, delta, _INF)

    def move_pass(self, full: bool) -> bool:
        """Moves at most one replica per layer to the device where that helps most."""
        cl, ce_, ca = self._replicas_on(None if full else self._critical(2))
        if not len(cl):
            return False
        delta = np.where(self.free > 0, self._move_deltas(cl, ce_, ca), _INF)
        best_d = np.argmin(delta, axis=1)
        best_v = delta[np.arange(len(cl)), best_d]
        changed = False
        for i in self._best_per_layer(cl, best_v):
            if best_v[i] < -self.tol:
                changed |= self._move(int(cl[i]), int(ce_[i]), int(ca[i]), int(best_d[i]))
        return changed

    def exchange_pass(self, full: bool) -> bool:
        """For each full device d: the best move into d in one layer paired with the cheapest
        move out of d in another, so that d's slots go to the layers that gain most (moves
        and swaps keep each layer's count on d fixed once d is full)."""
        full_devices = np.flatnonzero(self.allowed & (self.free <= 0))
        if not len(full_devices) or self.L < 2 or self.D < 2:
            return False
        mask = None if full else (self._critical(2) | np.isin(
            np.arange(self.D), full_devices)[None, :])
        cl, ce_, ca = self._replicas_on(mask)
        if not len(cl):
            return False
        delta = self._move_deltas(cl, ce_, ca)
        for d in full_devices:
            into = np.where(ca != d, delta[:, d], _INF)
            out = np.where((ca == d)[:, None] & (self.free > 0)[None, :]
                           & (np.arange(self.D) != d)[None, :], delta, _INF)
            out_d = np.argmin(out, axis=1)
            out_v = out[np.arange(len(cl)), out_d]
            best_in = self._best_per_layer(cl, into)
            best_out = self._best_per_layer(cl, out_v)
            i = best_in[np.argmin(into[best_in])]
            outs = best_out[np.argsort(out_v[best_out], kind="stable")[:2]]
            j = next((o for o in outs if cl[o] != cl[i]), None)
            if j is None or not into[i] + out_v[j] < -self.tol:
                continue
            # Out first (frees a slot on d), then in; different layers, so both deltas hold.
            # One exchange per pass: the candidate arrays are stale after it.
            if self._move(int(cl[j]), int(ce_[j]), int(d), int(out_d[j])):
                if self._move(int(cl[i]), int(ce_[i]), int(ca[i]), int(d)):
                    return True
                self._move(int(cl[j]), int(ce_[j]), int(out_d[j]), int(d))  # pragma: no cover
        return False

    def _move(self, layer: int, e: int, a: int, b: int) -> bool:
        if self.free[b] <= 0 or self.N[layer, e, b] or not self.N[layer, e, a]:
            return False
        ct, ce, y = self.ct[layer, e], self.ce[layer, e], self.y[layer, e]
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

    def swap_pass(self, full: bool) -> bool:
        """Swaps at most one pair of replicas per layer (on different devices)."""
        if self.D < 2 or self.E < 2:
            return False
        cl, e1, a = self._replicas_on(None if full else self._critical(1))
        if not len(cl):
            return False
        # Every replica of each layer, padded to [L, R].
        pl, pe, pd = np.nonzero(self.N)
        per_layer = np.bincount(pl, minlength=self.L)
        R = int(per_layer.max())
        start = np.concatenate([[0], np.cumsum(per_layer)[:-1]])
        slot = np.arange(len(pl)) - start[pl]
        PE = np.zeros((self.L, R), dtype=np.int64)
        PD = np.full((self.L, R), -1, dtype=np.int64)
        PE[pl, slot] = pe
        PD[pl, slot] = pd
        e2, b = PE[cl], PD[cl]  # [K, R]
        A, E1, Lc = a[:, None], e1[:, None], cl[:, None]
        bb = np.maximum(b, 0)
        valid = (b >= 0) & (b != A) & ~self.N[Lc, E1, bb] & ~self.N[Lc, e2, A]
        if not valid.any():
            return False
        ct, ce = self.ct, self.ce
        t_a = self.T[cl, a][:, None] - ct[cl, e1, a][:, None] + ct[Lc, e2, A]
        t_b = self.T[Lc, bb] - ct[Lc, e2, bb] + ct[Lc, E1, bb]
        k_a = k_b = ddyn = None
        if self.use_tok:
            y1, y2 = self.y[cl, e1][:, None], self.y[Lc, e2]
            k_a = self.tok[cl, a][:, None] - y1 + y2
            k_b = self.tok[Lc, bb] - y2 + y1
        if self.a > 0:
            ddyn = ce[Lc, E1, bb] + ce[Lc, e2, A] - ce[cl, e1, a][:, None] - ce[Lc, e2, bb]
        delta = self._pair_delta(cl, A, bb, t_a, t_b, k_a, k_b, ddyn)
        delta = np.where(valid, delta, _INF)
        best_j = np.argmin(delta, axis=1)
        best_v = delta[np.arange(len(cl)), best_j]
        changed = False
        for i in self._best_per_layer(cl, best_v):
            if best_v[i] < -self.tol:
                layer, j = int(cl[i]), int(best_j[i])
                x1, x2, da, db = int(e1[i]), int(e2[i, j]), int(a[i]), int(b[i, j])
                if not self.N[layer, x1, db] and not self.N[layer, x2, da]:
                    self._swap(layer, x1, da, x2, db)
                    changed = True
        return changed

    def _swap(self, layer: int, e1: int, a: int, e2: int, b: int) -> None:
        """Expert e1 moves from a to b and e2 from b to a (slot counts are unchanged)."""
        ct, ce, y = self.ct[layer], self.ce[layer], self.y[layer]
        self.N[layer, e1, a] = self.N[layer, e2, b] = False
        self.N[layer, e1, b] = self.N[layer, e2, a] = True
        self.T[layer, a] += ct[e2, a] - ct[e1, a]
        self.T[layer, b] += ct[e1, b] - ct[e2, b]
        self.tok[layer, a] += y[e2] - y[e1]
        self.tok[layer, b] += y[e1] - y[e2]
        self.dyn[layer, a] += ce[e2, a] - ce[e1, a]
        self.dyn[layer, b] += ce[e1, b] - ce[e2, b]

    def kick(self, rng: np.random.Generator, moves: int) -> None:
        """Perturbs the assignment by `moves` random moves (or swaps where memory is full)."""
        for _ in range(moves):
            reps = np.argwhere(self.N)
            layer, e, a = (int(v) for v in reps[rng.integers(len(reps))])
            targets = np.flatnonzero(self.allowed & (self.free > 0) & ~self.N[layer, e])
            if len(targets):
                self._move(layer, e, a, int(rng.choice(targets)))
                continue
            others = np.argwhere(self.N[layer] & ~self.N[layer, e][None, :])
            others = others[~self.N[layer, others[:, 0], a]] if len(others) else others
            if len(others):
                e2, b = (int(v) for v in others[rng.integers(len(others))])
                self._swap(layer, e, a, e2, b)

    def local_search(self, limit: int, max_passes: int, deadline: float | None) -> bool:
        """Moves until none helps, then one pass of swaps (costlier), then cross-layer
        exchanges on full devices, and again; the full neighborhood when it has at most
        `limit` candidates, critical devices otherwise."""
        changed = False
        for _ in range(max_passes):
            replicas = int(self.n.sum())
            full_moves = replicas * self.D <= limit
            full_swaps = replicas * int(self.n.sum(axis=1).max()) <= limit
            if self.move_pass(full_moves) or self.swap_pass(full_swaps) \
                    or self.exchange_pass(full_moves):
                changed = True
            else:
                break
            if deadline is not None and time.perf_counter() > deadline:
                break
        return changed

    def improve(self, opts: HeuristicOptions, deadline: float | None) -> None:
        """Replicas, then local search, until neither changes anything."""
        for _ in range(opts.max_rounds):
            changed = False
            for _ in range(self.E * self.max_r):
                if not self.replicate_pass():
                    break
                changed = True
            while self.drop_pass():
                changed = True
            changed |= self.local_search(opts.full_neighborhood_limit, opts.max_passes,
                                         deadline)
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
            st = _State(problem, allowed, objective)
            if start == "greedy":
                st.greedy(st.allocate_replicas())
            else:
                devices = None if allowed.all() else np.flatnonzero(allowed)
                st.load(round_robin_assignment(L, E, slots, devices=devices))
            st.improve(opts, deadline)
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
    st = _State(problem, allowed, objective)
    for i in range(opts.kicks):
        st.load(N)
        st.kick(rng, moves=2 + i % 3)
        st.improve(opts, deadline)
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
