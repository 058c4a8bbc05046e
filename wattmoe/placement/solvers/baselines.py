"""Baselines a user would otherwise reach for: round-robin, EPLB-style balancing, fill-first.

They ignore the objective (and the latency SLO), respect memory, and are scored by the same
`evaluate` as the optimizers.
"""

from __future__ import annotations

import numpy as np

from wattmoe.placement.base import InfeasibleError
from wattmoe.placement.problem import PlacementProblem, round_robin_assignment


def solve_round_robin(problem: PlacementProblem) -> tuple[np.ndarray, str]:
    """Expert e of every layer on device e mod D (memory permitting); no replicas."""
    L, E, _ = problem.dims
    return round_robin_assignment(L, E, problem.graph.slots), "baseline"


def default_redundant(num_experts: int, num_devices: int) -> int:
    """EPLB-style redundancy: round E up to a multiple of D, or one extra slot per device
    when E already is one (256 experts on 64 GPUs -> 64 redundant, 5 slots per GPU)."""
    if num_devices <= 1:
        return 0
    r = (-num_experts) % num_devices
    return r if r else num_devices


def _quotas(physical: int, slots_per_layer: np.ndarray) -> np.ndarray | None:
    """Replica slots per device per layer: as equal as possible (EPLB); where memory does not
    allow that, proportional to each device's memory. None if `physical` cannot fit."""
    D = len(slots_per_layer)
    equal = np.full(D, physical // D) + (np.arange(D) < physical % D)
    if np.all(equal <= slots_per_layer):
        return equal
    if int(slots_per_layer.sum()) < physical:
        return None
    share = physical * slots_per_layer / slots_per_layer.sum()
    q = np.minimum(np.floor(share).astype(np.int64), slots_per_layer)
    for d in np.argsort(-(share - np.floor(share)), kind="stable"):
        if q.sum() >= physical:
            break
        if q[d] < slots_per_layer[d]:
            q[d] += 1
    while q.sum() < physical:  # leftovers go wherever there is room
        q[np.argmax(slots_per_layer - q)] += 1
    return q


def eplb_assignment(tokens: np.ndarray, quotas: np.ndarray, max_replicas: int) -> np.ndarray:
    """EPLB's global policy on a `[layers, experts]` load matrix.

    1. replicate: each of the sum(quotas) - E extra slots goes to the expert with the highest
       load per replica (as in EPLB's `replicate_experts`);
    2. balanced packing: replicas, heaviest first, each onto the least-loaded device that has
       a free slot (`quotas[d]` per layer) and no replica of that expert yet.

    Returns:
        [L, E, D] bool assignment.
    """
    L, E = tokens.shape
    D = len(quotas)
    physical = int(quotas.sum())
    rows = np.arange(L)
    cnt = np.ones((L, E), dtype=np.int64)
    cap = min(max_replicas, D)
    for _ in range(physical - E):
        per = np.where(cnt < cap, tokens / cnt, -1.0)
        i = np.argmax(per, axis=1)
        grow = per[rows, i] >= 0
        cnt[rows[grow], i[grow]] += 1
    # Physical replicas of each layer: [L, P] expert ids (padded with -1 where cnt was capped).
    P = int(cnt.sum(axis=1).max())
    phy = np.full((L, P), -1, dtype=np.int64)
    for layer in range(L):
        ids = np.repeat(np.arange(E), cnt[layer])
        phy[layer, :len(ids)] = ids
    w = np.where(phy >= 0, tokens[rows[:, None], np.maximum(phy, 0)]
                 / cnt[rows[:, None], np.maximum(phy, 0)], -1.0)
    order = np.argsort(-w, axis=1, kind="stable")
    out = np.zeros((L, E, D), dtype=bool)
    load = np.zeros((L, D))
    left = np.broadcast_to(quotas, (L, D)).copy()
    for k in range(P):
        j = order[:, k]
        e = phy[rows, j]
        live = e >= 0
        ok = (left > 0) & ~out[rows, np.maximum(e, 0)]
        d = np.argmin(np.where(ok, load, np.inf), axis=1)
        place = live & ok[rows, d]
        lr, ld, le = rows[place], d[place], e[place]
        out[lr, le, ld] = True
        load[lr, ld] += w[lr, j[place]]
        left[lr, ld] -= 1
        # A replica with no device left that lacks its expert is dropped (rare corner case).
    return out


def solve_eplb(problem: PlacementProblem, redundant: int | None = None) -> tuple[np.ndarray, str]:
    """EPLB-style balanced packing with replication over every device.

    Args:
        redundant: extra replicas per layer; default the problem's `redundant_per_layer`,
            else `default_redundant(E, D)`, reduced as needed to fit memory.
    """
    L, E, D = problem.dims
    g = problem.graph
    if redundant is None:
        redundant = problem.constraints.redundant_per_layer
    if redundant is None:
        redundant = default_redundant(E, D)
    per_layer = g.slots // L
    redundant = min(redundant, max(int(per_layer.sum()) - E, 0))
    quotas = _quotas(E + redundant, per_layer)
    if quotas is None:
        raise InfeasibleError(
            f"EPLB-style packing gives every layer the same slots on each device, and the "
            f"devices' memory holds only {int(per_layer.sum())} experts per layer < {E}"
        )
    return eplb_assignment(problem.loads.tokens, quotas, problem.max_replicas), "baseline"


def solve_fill(problem: PlacementProblem) -> tuple[np.ndarray, str]:
    """Offloading baseline: the hottest experts of all layers on the fastest device until its
    memory is full, then the next fastest (how GPU+CPU offloading systems place experts)."""
    L, E, D = problem.dims
    g = problem.graph
    mean_load = max(float(problem.loads.tokens.mean()), 1e-9)
    t, _ = g.replica_cost(np.array(mean_load))
    devices = np.argsort(t, kind="stable")
    order = np.argsort(-problem.loads.tokens, axis=None, kind="stable")
    owner = np.repeat(devices, np.minimum(g.slots[devices], L * E))[: L * E]
    if len(owner) < L * E:
        raise InfeasibleError("the experts do not fit in the devices' memory")
    out = np.zeros((L, E, D), dtype=bool)
    out.reshape(L * E, D)[order, owner] = True
    return out, "baseline"
