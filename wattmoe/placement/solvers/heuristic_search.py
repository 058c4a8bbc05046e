"""The heuristic's local search.

Best-improvement moves (one replica to another device), swaps (two replicas on different
devices trade places) and, on full devices, cross-layer exchanges (a slot moves to the layer
that gains most, to a device with room or, between two full devices, against a slot moving
back in another layer), one per layer per pass; and the random kicks of the iterated local
search.

Steps are scored by the change of their layer's cost plus the state's tie-break (see
`HeuristicState`), from each layer's top 3 device times and tokens, so that a candidate's
new maximum needs no pass over the layer. A step's score depends on its own layer only (and
a move's target on which devices have room), so each kind of step searches again only the
layers that changed since it last found nothing there (`_Searched`): after an exchange, the
moves and swaps it opens up are looked for in its two layers, not in all of them.
"""

from __future__ import annotations

import time

import numpy as np

from wattmoe.placement.solvers.heuristic_state import HeuristicState, best_per_layer


def _top3(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices [L, 3] and values [L, 3] of each row's three largest entries (padded)."""
    L, D = M.shape
    idx = np.argsort(-M, axis=1, kind="stable")[:, :3]
    if D < 3:
        idx = np.concatenate([idx, np.full((L, 3 - D), -1)], axis=1)
    vals = np.where(idx >= 0, np.take_along_axis(M, np.maximum(idx, 0), axis=1), 0.0)
    return idx, vals


def _top3_rows(M: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_top3` of M's `rows` (sorting only those where they are fewer than M's rows)."""
    if len(rows) < len(M):
        return _top3(M[rows])
    idx, vals = _top3(M)
    return idx[rows], vals[rows]


def _max_excl_rows(idx: np.ndarray, vals: np.ndarray, a: np.ndarray,
                   b: np.ndarray) -> np.ndarray:
    """Per candidate row (top-3 `idx`, `vals` [K, 3]): the largest entry of the row other
    than devices a [K, 1] and b [K or 1, X], from its top 3; shape [K, X]."""
    i1, i2 = idx[:, 0:1], idx[:, 1:2]
    return np.where((i1 != a) & (i1 != b), vals[:, 0:1],
                    np.where((i2 != a) & (i2 != b), vals[:, 1:2], vals[:, 2:3]))


def _critical(st: HeuristicState, k: int) -> np.ndarray:
    """[L, D] mask of each layer's k most critical devices per active objective term."""
    crit = np.zeros((st.L, st.D), dtype=bool)
    k = min(k, st.D)
    terms = []
    if st.alpha > 0:
        terms.append(st.T)
    if st.use_tok:
        terms.append(st.tok)
    if st.a > 0:
        terms.append(st.dyn)
    for M in terms:
        if k < st.D:
            top = np.argpartition(-M, k - 1, axis=1)[:, :k]
            np.put_along_axis(crit, top, True, axis=1)
        else:
            crit[:] = True
    return crit


class _Searched:
    """What one kind of step has already searched: per layer, the `HeuristicState.version`
    at which it last found no improving step there (-1: not since the search began); for
    moves, the devices that had room then; for pair exchanges, the full devices and each
    layer's best move between two of them (score `best` [L, F, F] and expert `mover`), as
    of the layer's `version`."""

    def __init__(self, st: HeuristicState) -> None:
        self.version = np.full(st.L, -1)
        self.room = np.zeros(st.D, dtype=bool)
        self.devices = np.zeros(0, dtype=np.int64)
        self.best = np.zeros((st.L, 0, 0))
        self.mover = np.zeros((st.L, 0, 0), dtype=np.int64)

    def todo(self, st: HeuristicState) -> np.ndarray:
        """Indices (ascending) of the layers to search: changed since they gave nothing."""
        return np.flatnonzero(st.version != self.version)

    def done(self, st: HeuristicState, layers: np.ndarray) -> None:
        """Records that `layers`, as they are now, have no improving step."""
        self.version[layers] = st.version[layers]


def _replicas_on(st: HeuristicState, layers: np.ndarray,
                 mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(layer, expert, device) of every replica of `layers` (ascending indices) on the
    (layer, device) pairs of `mask` [L, D] (on every device if None), without scanning the
    whole [L, E, D] array; in (layer, expert, device) order, or (layer, device, expert)
    with a mask."""
    if mask is None:
        sl, e, d = np.nonzero(st.N[layers])
        return layers[sl], e, d
    pl, pd = np.nonzero(mask[layers])
    pl = layers[pl]
    p, e = np.nonzero(st.N[pl, :, pd])
    return pl[p], e, pd[p]


def _done_but_improved(st: HeuristicState, searched: _Searched, layers: np.ndarray,
                       cl: np.ndarray, best: np.ndarray, best_v: np.ndarray) -> None:
    """Marks the searched `layers` done except those whose best step (`best`, indices into
    the candidates `cl`, values `best_v`) improves: they changed, or may still."""
    searched.done(st, np.setdiff1d(layers, cl[best[best_v[best] < -st.tol]]))


def _pair_delta(st: HeuristicState, cl: np.ndarray, a: np.ndarray, b: np.ndarray,
                t_a: np.ndarray, t_b: np.ndarray, k_a: np.ndarray | None,
                k_b: np.ndarray | None, ddyn: np.ndarray | None) -> np.ndarray:
    """Score change when only devices a [K, 1] and b [K, X] of layer cl [K] change, to
    times t_a, t_b and tokens k_a, k_b."""
    idx, vals = _top3_rows(st.T, cl)
    m = _max_excl_rows(idx, vals, a, b)
    lam = vals[:, 0][:, None]
    old_a = np.take_along_axis(st.T[cl], a, axis=1)
    old_b = st.T[cl[:, None], b]
    delta = st.alpha * (np.maximum(m, np.maximum(t_a, t_b)) - lam)
    delta += st.qT * (t_a ** 2 + t_b ** 2 - old_a ** 2 - old_b ** 2)
    if ddyn is not None:
        delta += st.a * ddyn
    if st.use_tok and k_a is not None and k_b is not None:
        kidx, kvals = _top3_rows(st.tok, cl)
        mk = _max_excl_rows(kidx, kvals, a, b)
        ko_a = np.take_along_axis(st.tok[cl], a, axis=1)
        ko_b = st.tok[cl[:, None], b]
        cc, qq = st.c[cl][:, None], st.qK[cl][:, None]
        delta += cc * (np.maximum(mk, np.maximum(k_a, k_b)) - kvals[:, 0][:, None])
        delta += qq * (k_a ** 2 + k_b ** 2 - ko_a ** 2 - ko_b ** 2)
    return delta


def _move_deltas(st: HeuristicState, cl: np.ndarray, ce_: np.ndarray,
                 ca: np.ndarray) -> np.ndarray:
    """[K, D] score change of moving replica (cl, ce_) from device ca to each device
    (inf where the expert is already, or the device is not allowed; memory unchecked)."""
    K, D = len(cl), st.D
    ks = np.arange(K)
    A = ca[:, None]
    B = np.broadcast_to(np.arange(D)[None, :], (K, D))
    ct_row = st.ct[cl, ce_]
    t_a = (st.T[cl, ca] - ct_row[ks, ca] - (st.n[cl, ca] == 1) * st.lat0[ca])[:, None]
    t_a = np.maximum(t_a, 0.0)
    t_b = st.T[cl] + ct_row + (st.n[cl] == 0) * st.lat0
    k_a = k_b = ddyn = None
    if st.use_tok:
        yk = st.y[cl, ce_]
        k_a = (st.tok[cl, ca] - yk)[:, None]
        k_b = st.tok[cl] + yk[:, None]
    if st.a > 0:
        ce_row = st.ce[cl, ce_]
        ddyn = ce_row - ce_row[ks, ca][:, None]
    delta = _pair_delta(st, cl, A, B, t_a, t_b, k_a, k_b, ddyn)
    return np.where(~st.N[cl, ce_] & st.allowed, delta, np.inf)


def move_pass(st: HeuristicState, full: bool, searched: _Searched) -> bool:
    """Moves at most one replica per layer to the device where that helps most, in the
    layers not `searched` (all of them again when a device gains room)."""
    room = st.allowed & (st.free > 0)
    if (room & ~searched.room).any():
        searched.version[:] = -1
    searched.room = room
    if not room.any():  # no move has a target
        return False
    layers = searched.todo(st)
    cl, ce_, ca = _replicas_on(st, layers, None if full else _critical(st, 2))
    if not len(cl):
        searched.done(st, layers)
        return False
    delta = np.where(st.free > 0, _move_deltas(st, cl, ce_, ca), np.inf)
    best_d = np.argmin(delta, axis=1)
    best_v = delta[np.arange(len(cl)), best_d]
    changed = False
    best = best_per_layer(cl, best_v)
    for i in best:
        if best_v[i] < -st.tol:
            changed |= st.move(int(cl[i]), int(ce_[i]), int(ca[i]), int(best_d[i]))
    _done_but_improved(st, searched, layers, cl, best, best_v)
    return changed


def swap_pass(st: HeuristicState, full: bool, searched: _Searched) -> bool:
    """Swaps at most one pair of replicas per layer (on different devices), in the layers
    not `searched`."""
    if st.D < 2 or st.E < 2:
        return False
    layers = searched.todo(st)
    cl, e1, a = _replicas_on(st, layers, None if full else _critical(st, 1))
    if not len(cl):
        searched.done(st, layers)
        return False
    # Every replica of those layers, padded to [len(layers), R].
    pl, pe, pd = np.nonzero(st.N[layers])
    per_layer = np.bincount(pl, minlength=len(layers))
    R = int(per_layer.max())
    start = np.concatenate([[0], np.cumsum(per_layer)[:-1]])
    slot = np.arange(len(pl)) - start[pl]
    PE = np.zeros((len(layers), R), dtype=np.int64)
    PD = np.full((len(layers), R), -1, dtype=np.int64)
    PE[pl, slot] = pe
    PD[pl, slot] = pd
    row = np.searchsorted(layers, cl)
    e2, b = PE[row], PD[row]  # [K, R]
    A, Lc = a[:, None], cl[:, None]
    bb = np.maximum(b, 0)
    # Flat indices into [L, E, D] arrays (one gather each instead of three index arrays):
    # expert e1 of the candidate, e2 of its partner, on devices A and bb.
    one = ((cl * st.E + e1) * st.D)[:, None]
    two = (Lc * st.E + e2) * st.D
    one_b, two_a, two_b = one + bb, two + A, two + bb
    N = st.N.reshape(-1)
    valid = (b >= 0) & (b != A) & ~N[one_b] & ~N[two_a]
    if not valid.any():
        searched.done(st, layers)
        return False
    ct, ce = st.ct.reshape(-1), st.ce.reshape(-1)
    t_a = st.T[cl, a][:, None] - ct[one + A] + ct[two_a]
    t_b = st.T[Lc, bb] - ct[two_b] + ct[one_b]
    k_a = k_b = ddyn = None
    if st.use_tok:
        y1, y2 = st.y[cl, e1][:, None], st.y.reshape(-1)[Lc * st.E + e2]
        k_a = st.tok[cl, a][:, None] - y1 + y2
        k_b = st.tok[Lc, bb] - y2 + y1
    if st.a > 0:
        ddyn = ce[one_b] + ce[two_a] - ce[one + A] - ce[two_b]
    delta = _pair_delta(st, cl, A, bb, t_a, t_b, k_a, k_b, ddyn)
    delta = np.where(valid, delta, np.inf)
    best_j = np.argmin(delta, axis=1)
    best_v = delta[np.arange(len(cl)), best_j]
    changed = False
    best = best_per_layer(cl, best_v)
    for i in best:
        if best_v[i] < -st.tol:
            layer, j = int(cl[i]), int(best_j[i])
            x1, x2, da, db = int(e1[i]), int(e2[i, j]), int(a[i]), int(b[i, j])
            if not st.N[layer, x1, db] and not st.N[layer, x2, da]:
                st.swap(layer, x1, da, x2, db)
                changed = True
    _done_but_improved(st, searched, layers, cl, best, best_v)
    return changed


def _best_moves(st: HeuristicState, full_devices: np.ndarray,
                searched: _Searched) -> tuple[np.ndarray, np.ndarray]:
    """M [L, F, F]: the score of the best move a -> b in each layer between full devices,
    and the expert that makes it (the first of equals), kept in `searched` and computed
    again only for the layers that changed since (all of them when the full devices
    change): a segment minimum of the move deltas over the replicas grouped by (layer,
    source)."""
    F = len(full_devices)
    if not np.array_equal(searched.devices, full_devices):
        searched.devices = full_devices
        searched.best = np.full((st.L, F, F), np.inf)
        searched.mover = np.zeros((st.L, F, F), dtype=np.int64)
        searched.version[:] = -1
    layers = searched.todo(st)
    M, W = searched.best, searched.mover
    if not len(layers):
        return M, W
    M[layers] = np.inf
    cl, ce_, ca = _replicas_on(st, layers, None)
    pos = np.full(st.D, -1)
    pos[full_devices] = np.arange(F)
    idx = np.flatnonzero(pos[ca] >= 0)
    if len(idx):
        cl, ce_, ca = cl[idx], ce_[idx], ca[idx]
        delta = _move_deltas(st, cl, ce_, ca)[:, full_devices]
        group = cl * F + pos[ca]
        order = np.argsort(group, kind="stable")
        group = group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        g = group[starts]
        delta = delta[order]
        best = np.minimum.reduceat(delta, starts, axis=0)
        # The first row of each segment that reaches its minimum: the largest rank K - row.
        ranks = np.arange(len(delta), 0, -1)[:, None]
        hit = delta == np.repeat(best, np.diff(np.r_[starts, len(delta)]), axis=0)
        first = len(delta) - np.maximum.reduceat(np.where(hit, ranks, 0), starts, axis=0)
        M[g // F, g % F] = best
        W[g // F, g % F] = ce_[order][first]
        M[:, np.arange(F), np.arange(F)] = np.inf
    searched.done(st, layers)
    return M, W


def _pair_exchanges(st: HeuristicState, full_devices: np.ndarray,
                    searched: _Searched) -> bool:
    """Pairs of moves between two full devices a and b: one replica a -> b in one layer, one
    b -> a in another (each device keeps its slot count), best first, while they help; each
    layer takes part in at most one (its move deltas are stale after it).

    The best move of each (layer, source, target) of full devices comes from `_best_moves`;
    each ordered device pair takes its best two layers per direction.
    """
    F = len(full_devices)
    if F < 2 or st.L < 2:
        return False
    M, W = _best_moves(st, full_devices, searched)
    M = M.copy()  # M[l, a, b]: best move a -> b in layer l, by expert W[l, a, b]
    changed = False
    while True:
        p1, pv1, pv2 = _best_two(M)  # a -> b
        q1, qv1, qv2 = _best_two(M.transpose(0, 2, 1))  # b -> a
        total = np.where(p1 != q1, pv1 + qv1, np.minimum(pv1 + qv2, pv2 + qv1))
        fa, fb = np.unravel_index(np.argmin(total), total.shape)
        if not total[fa, fb] < -st.tol:
            return changed
        a, b = int(full_devices[fa]), int(full_devices[fb])
        m_ab, m_ba = M[:, fa, fb].copy(), M[:, fb, fa].copy()
        if p1[fa, fb] == q1[fa, fb]:  # the same best layer both ways: the cheaper second
            if pv1[fa, fb] + qv2[fa, fb] <= pv2[fa, fb] + qv1[fa, fb]:
                m_ba[p1[fa, fb]] = np.inf
            else:
                m_ab[p1[fa, fb]] = np.inf
        l1, l2 = int(np.argmin(m_ab)), int(np.argmin(m_ba))
        changed |= st.exchange(l1, int(W[l1, fa, fb]), l2, int(W[l2, fb, fa]), a, b)
        M[[l1, l2]] = np.inf


def _best_two(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Along axis 0 of X: the index of the smallest entry, its value, the second smallest."""
    i1 = np.argmin(X, axis=0)
    v1 = np.take_along_axis(X, i1[None], axis=0)[0]
    rest = X.copy()
    np.put_along_axis(rest, i1[None], np.inf, axis=0)
    return i1, v1, rest.min(axis=0)


def exchange_pass(st: HeuristicState, full: bool, searched: _Searched) -> bool:
    """For each full device d: the best move into d in one layer paired with the cheapest
    move out of d in another, so that d's slots go to the layers that gain most (moves
    and swaps keep each layer's count on d fixed once d is full); where every target is
    full too and the neighborhood is searched in full (`full`), the best pair of opposite
    moves between two full devices (`searched` keeps each layer's best of those)."""
    full_devices = np.flatnonzero(st.allowed & (st.free <= 0))
    if not len(full_devices) or st.L < 2 or st.D < 2:
        return False
    if (st.allowed & (st.free > 0)).any() and _exchange_with_room(st, full, full_devices):
        return True
    # One pair per pass, each after a pass over the whole neighborhood: too slow where the
    # neighborhood is not searched in full (58 x 256 x 64 full GPUs: 1.3 s -> over 20 s).
    return full and _pair_exchanges(st, full_devices, searched)


def _exchange_with_room(st: HeuristicState, full: bool, full_devices: np.ndarray) -> bool:
    """The first exchange of `exchange_pass`: into a full device d in one layer, out of d to a
    device with room in another; at most one."""
    mask = None if full else (_critical(st, 2) | np.isin(
        np.arange(st.D), full_devices)[None, :])
    cl, ce_, ca = _replicas_on(st, np.arange(st.L), mask)
    if not len(cl):
        return False
    delta = _move_deltas(st, cl, ce_, ca)
    for d in full_devices:
        into = np.where(ca != d, delta[:, d], np.inf)
        out = np.where((ca == d)[:, None] & (st.free > 0)[None, :]
                       & (np.arange(st.D) != d)[None, :], delta, np.inf)
        out_d = np.argmin(out, axis=1)
        out_v = out[np.arange(len(cl)), out_d]
        best_in = best_per_layer(cl, into)
        best_out = best_per_layer(cl, out_v)
        i = best_in[np.argmin(into[best_in])]
        outs = best_out[np.argsort(out_v[best_out], kind="stable")[:2]]
        j = next((o for o in outs if cl[o] != cl[i]), None)
        if j is None or not into[i] + out_v[j] < -st.tol:
            continue
        # Out first (frees a slot on d), then in; different layers, so both deltas hold.
        # One exchange per pass: the candidate arrays are stale after it.
        if st.move(int(cl[j]), int(ce_[j]), int(d), int(out_d[j])):
            if st.move(int(cl[i]), int(ce_[i]), int(ca[i]), int(d)):
                return True
            st.move(int(cl[j]), int(ce_[j]), int(out_d[j]), int(d))  # pragma: no cover
    return False


def kick(st: HeuristicState, rng: np.random.Generator, moves: int) -> None:
    """Perturbs the assignment by `moves` random moves; where memory is full, random swaps
    (in one layer) or, every other time, exchanges (two layers trade a slot on two devices,
    the one step that changes a layer's count on full devices)."""
    for _ in range(moves):
        reps = np.argwhere(st.N)
        layer, e, a = (int(v) for v in reps[rng.integers(len(reps))])
        targets = np.flatnonzero(st.allowed & (st.free > 0) & ~st.N[layer, e])
        if len(targets):
            st.move(layer, e, a, int(rng.choice(targets)))
            continue
        if st.L > 1 and rng.random() < 0.5:
            others = reps[(reps[:, 0] != layer) & (reps[:, 2] != a) & ~st.N[layer, e, reps[:, 2]]
                          & ~st.N[reps[:, 0], reps[:, 1], a]]
            if len(others):
                l2, e2, b = (int(v) for v in others[rng.integers(len(others))])
                st.exchange(layer, e, l2, e2, a, b)
                continue
        others = np.argwhere(st.N[layer] & ~st.N[layer, e][None, :])
        others = others[~st.N[layer, others[:, 0], a]] if len(others) else others
        if len(others):
            e2, b = (int(v) for v in others[rng.integers(len(others))])
            st.swap(layer, e, a, e2, b)


def local_search(st: HeuristicState, limit: int, max_passes: int, deadline: float | None) -> bool:
    """Moves until none helps, then one pass of swaps (costlier), then cross-layer
    exchanges on full devices, and again; the full neighborhood when it has at most
    `limit` candidates, critical devices otherwise."""
    changed = False
    moves, swaps, pairs = _Searched(st), _Searched(st), _Searched(st)
    for _ in range(max_passes):
        replicas = int(st.n.sum())
        full_moves = replicas * st.D <= limit
        full_swaps = replicas * int(st.n.sum(axis=1).max()) <= limit
        if move_pass(st, full_moves, moves) or swap_pass(st, full_swaps, swaps) \
                or exchange_pass(st, full_moves, pairs):
            changed = True
        else:
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
    return changed
