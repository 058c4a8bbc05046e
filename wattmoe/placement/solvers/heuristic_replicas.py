"""The heuristic's replica passes.

One more replica for the heaviest expert on a layer's critical device where that lowers the
layer cost (`replicate_pass`), and dropping replicas that no longer pay off (`drop_pass`).
Scored by the true layer cost (no tie-break): a replica must pay for its memory.
"""

from __future__ import annotations

import numpy as np

from wattmoe.placement.solvers.heuristic_state import HeuristicState, best_per_layer


def _score_replica_change(st: HeuristicState, cl: np.ndarray, t_rows: np.ndarray,
                          k_rows: np.ndarray, dyn_change: np.ndarray) -> np.ndarray:
    """Change [K, X] of the true layer cost (no tie-break: a replica must pay for its
    memory) of candidates (layer cl [K]) whose layer ends up with device times t_rows
    [K, X, D] and tokens k_rows, and dynamic energy changed by dyn_change."""
    lam = st.T.max(axis=1)[cl]
    delta = st.alpha * (t_rows.max(axis=2) - lam[:, None])
    if st.a > 0:
        delta += st.a * dyn_change
    if st.use_tok:
        mu = st.tok.max(axis=1)[cl]
        delta += st.c[cl][:, None] * (k_rows.max(axis=2) - mu[:, None])
    return delta


def replicate_pass(st: HeuristicState) -> bool:
    """Adds at most one replica per layer, where it lowers the layer's score most."""
    if st.max_r <= 1 or st.D <= 1:
        return False
    rows = np.arange(st.L)
    # Candidates: the heaviest replica on the slowest device, and on the most loaded one.
    critical = []
    if st.alpha > 0:
        d = st.T.argmax(axis=1)
        critical.append((d, st.ct[rows, :, d]))
    if st.use_tok:
        critical.append((st.tok.argmax(axis=1), st.y))
    cands_l, cands_e = [], []
    for d, weight in critical:
        on = st.N[rows, :, d]  # [L, E]
        e = np.argmax(np.where(on, weight, -1.0), axis=1)
        ok = on[rows, e]
        cands_l.append(rows[ok])
        cands_e.append(e[ok])
    if not cands_l:
        return False
    cl = np.concatenate(cands_l)
    ce_ = np.concatenate(cands_e)
    extra = st.r.sum(axis=1) - st.E
    ok = (st.r[cl, ce_] < st.max_r) & (extra[cl] < st.budget) & (st.W[cl, ce_] > 0)
    cl, ce_ = cl[ok], ce_[ok]
    if not len(cl):
        return False
    K, D = len(cl), st.D
    y2 = st.W[cl, ce_] / (st.r[cl, ce_] + 1)
    ct2, cen2 = st.g.replica_cost(y2)  # [K, D]
    hold = st.N[cl, ce_]
    eye = np.eye(D, dtype=bool)[None]  # target b on axis 1
    base_t = st.T[cl] + hold * (ct2 - st.ct[cl, ce_])
    add_t = ct2 + (st.n[cl] == 0) * st.lat0
    t_rows = base_t[:, None, :] + eye * add_t[:, None, :]  # [K, b, d]
    k_rows = np.zeros((K, 1, 1))
    if st.use_tok:
        base_k = st.tok[cl] + hold * (y2 - st.y[cl, ce_])[:, None]
        k_rows = base_k[:, None, :] + eye * y2[:, None, None]
    dyn_change = (hold * (cen2 - st.ce[cl, ce_])).sum(axis=1)[:, None] + cen2
    delta = _score_replica_change(st, cl, t_rows, k_rows, dyn_change)
    valid = ~hold & st.allowed & (st.free > 0)
    delta = np.where(valid, delta, np.inf)
    best_d = np.argmin(delta, axis=1)
    best_v = delta[np.arange(K), best_d]
    changed = False
    for i in best_per_layer(cl, best_v):
        if best_v[i] < -st.tol:
            layer, e, d = int(cl[i]), int(ce_[i]), int(best_d[i])
            if st.free[d] <= 0 or st.N[layer, e, d]:
                continue
            holders = st.N[layer, e].copy()
            holders[d] = True
            st.set_expert(layer, e, holders, (ct2[i], cen2[i]))
            changed = True
    return changed


def drop_pass(st: HeuristicState) -> bool:
    """Removes at most one replica per layer where that lowers the layer's score."""
    cl, ce_, ca = np.nonzero(st.N & (st.r > 1)[..., None])
    if not len(cl):
        return False
    ks = np.arange(len(cl))
    y3 = st.W[cl, ce_] / (st.r[cl, ce_] - 1)
    ct3, cen3 = st.g.replica_cost(y3)
    hold = st.N[cl, ce_].copy()
    hold[ks, ca] = False
    new_t = st.T[cl] + hold * (ct3 - st.ct[cl, ce_])
    new_t[ks, ca] = st.T[cl, ca] - st.ct[cl, ce_, ca] - (st.n[cl, ca] == 1) * \
        st.lat0[ca]
    new_k = np.zeros((len(cl), 1))
    if st.use_tok:
        new_k = st.tok[cl] + hold * (y3 - st.y[cl, ce_])[:, None]
        new_k[ks, ca] = st.tok[cl, ca] - st.y[cl, ce_]
    dyn_change = (hold * (cen3 - st.ce[cl, ce_])).sum(axis=1) - st.ce[cl, ce_, ca]
    delta = _score_replica_change(st, cl, new_t[:, None, :], new_k[:, None, :],
                                  dyn_change[:, None])[:, 0]
    changed = False
    for i in best_per_layer(cl, delta):
        if delta[i] < -st.tol:
            layer, e, d = int(cl[i]), int(ce_[i]), int(ca[i])
            holders = st.N[layer, e].copy()
            holders[d] = False
            st.set_expert(layer, e, holders, (ct3[i], cen3[i]))
            changed = True
    return changed
