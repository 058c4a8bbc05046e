"""The heuristic's greedy start.

A bundled replica allocation for hot experts (`allocate_replicas`), then every layer's
replicas placed heaviest first onto the device whose layer cost grows least (`greedy`).
"""

from __future__ import annotations

import numpy as np

from wattmoe.placement.solvers.heuristic_state import HeuristicState


def allocate_replicas(st: HeuristicState, levels: int = 32) -> np.ndarray:
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
    L, E = st.L, st.E
    ones = np.ones((L, E), dtype=np.int64)
    R = st.max_r
    allowed = np.flatnonzero(st.allowed)
    if R <= 1 or len(allowed) <= 1 or (st.alpha <= 0 and not st.use_tok):
        return ones
    classes = st.g.device_classes()[allowed]
    reps = allowed[np.unique(classes, return_index=True)[1]]
    rs = np.arange(1, R + 1)
    y_r = st.W[:, :, None] / rs  # [L, E, R]
    t_all, e_all = st.g.replica_cost(y_r, reps)
    t_r, e_r = t_all.min(axis=-1), e_all.min(axis=-1)
    speed = st.ct1[:, :, allowed].mean(axis=(0, 1))
    d_eff = float((speed.min() / np.maximum(speed, 1e-300)).sum())
    w_r = st.alpha * t_r + st.c[:, None, None] * y_r
    flat = w_r.reshape(L, -1)
    taus = np.quantile(flat, np.linspace(0.0, 1.0, levels), axis=1).T  # [L, Q]
    taus = np.concatenate([taus, np.full((L, 1), np.inf)], axis=1)
    above = w_r[:, None, :, :] > taus[:, :, None, None] * (1 + 1e-12)  # [L, Q, E, R]
    r = np.minimum(above.sum(axis=3) + 1, R)  # [L, Q, E]
    pick = (r - 1)[..., None]
    t_sel = np.take_along_axis(np.broadcast_to(t_r[:, None], above.shape), pick, 3)[..., 0]
    e_sel = np.take_along_axis(np.broadcast_to(e_r[:, None], above.shape), pick, 3)[..., 0]
    cost = st.a * (r * e_sel).sum(axis=2) + st.alpha * np.maximum(
        t_sel.max(axis=2), (r * t_sel).sum(axis=2) / d_eff)
    if st.use_tok:
        y_sel = st.W[:, None, :] / r
        mean_tok = st.W.sum(axis=1)[:, None] / len(allowed)
        cost = cost + st.c[:, None] * np.maximum(y_sel.max(axis=2), mean_tok)
    spare = int(st.slots[allowed].sum()) - L * E
    cap = min(st.budget, max(spare // L, 0), E * (R - 1))
    extra = (r - 1).sum(axis=2)
    cost = np.where(extra <= cap, cost, np.inf)
    # Among levels as good as the best, the one with the fewest replicas.
    near = cost <= cost.min(axis=1, keepdims=True) * (1 + 1e-9) + 1e-300
    best = np.argmin(np.where(near, extra, np.iinfo(np.int64).max), axis=1)
    return r[np.arange(L), best]


def greedy(st: HeuristicState, replicas: np.ndarray | None = None) -> None:
    """Places `replicas` [L, E] replicas of each expert (default: one each), heaviest
    first, each onto the device with the least cost increase that holds no replica of
    that expert yet; all layers advance together, memory conflicts go to the heavier
    replica. A replica that finds no device is dropped."""
    L, E, D = st.L, st.E, st.D
    r = np.ones((L, E), dtype=np.int64) if replicas is None else replicas
    rows = np.arange(L)
    y = st.W / r
    split = r > 1
    ct, ce = st.ct1.copy(), st.ce1.copy()
    if split.any():
        ct[split], ce[split] = st.g.replica_cost(y[split])
    weight = st.alpha * ct.min(axis=2) + st.c[:, None] * y + 1e-300 * y
    items = np.full((L, int(r.sum(axis=1).max())), -1, dtype=np.int64)
    for layer in range(L):
        order = np.argsort(-weight[layer], kind="stable")
        ids = np.repeat(order, r[layer, order])
        items[layer, :len(ids)] = ids
    st.r[:] = 0
    st.y, st.ct, st.ce = y, ct, ce
    dropped = False
    for k in range(items.shape[1]):
        e = items[:, k]
        live = e >= 0
        e = np.maximum(e, 0)
        x = y[rows, e]
        ct_k, ce_k = ct[rows, e], ce[rows, e]
        t_new = st.T + ct_k + (st.n == 0) * st.lat0
        lam = st.T.max(axis=1, keepdims=True)
        delta = st.a * ce_k + st.alpha * (np.maximum(lam, t_new) - lam)
        tok_new = st.tok + x[:, None]
        if st.use_tok:
            mu = st.tok.max(axis=1, keepdims=True)
            delta = delta + st.c[:, None] * (np.maximum(mu, tok_new) - mu)
        # Ties (common: identical devices) go to the least busy, then least loaded device.
        tie = t_new / (t_new.max(axis=1, keepdims=True) + 1e-300) \
            + tok_new / (tok_new.max(axis=1, keepdims=True) + 1e-300)
        key = delta + 1e-7 * st.scale * tie
        mask = (st.allowed & (st.free > 0))[None, :] & ~st.N[rows, e] & live[:, None]
        while True:
            choice = np.argmin(np.where(mask, key, np.inf), axis=1)
            ok = mask[rows, choice]
            counts = np.bincount(choice[ok], minlength=D)
            over = np.flatnonzero(counts > st.free)
            if not len(over):
                break
            for d in over:
                at = np.flatnonzero(ok & (choice == d))
                reject = at[np.argsort(-x[at], kind="stable")][st.free[d]:]
                mask[reject, d] = False
        dropped |= bool((live & ~ok).any())
        lr, le, ld = rows[ok], e[ok], choice[ok]
        st.N[lr, le, ld] = True
        st.r[lr, le] += 1
        st.T[lr, ld] = t_new[lr, ld]
        st.tok[lr, ld] += x[ok]
        st.dyn[lr, ld] += ce_k[lr, ld]
        st.n[lr, ld] += 1
        st.free -= np.bincount(ld, minlength=D)
    if dropped or np.any(st.r != r):
        st.load(st.N)
