"""A placement problem and the exact evaluation of any assignment of experts to devices.

An *assignment* is a boolean array ``[layers, experts, devices]``: True where the device hosts
a replica of the expert in that layer. An expert with r replicas sends each of them 1/r of its
tokens. For a batch (one pass of `loads.tokens_per_batch` tokens through every MoE layer):

- device d's time in layer l, T[l, d], is the sum over its replicas of kernel time plus link
  time, plus the message latency if it receives any tokens in that layer;
- latency = sum over layers of max over devices of T[l, d] (layers run in sequence);
- energy = dynamic kernel energy + transfer energy + latency x idle power of every powered
  device (hosting at least one replica, or always on);
- imbalance = mean over layers of max over devices / mean over devices of tokens per device.

Solvers minimize `Objective` under `Constraints`; `evaluate` is the single source of truth
that every solver's answer is scored with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wattmoe.cost_model.work import int4_group
from wattmoe.placement.base import (
    Constraints,
    ExpertCostProvider,
    ExpertShape,
    InfeasibleError,
    Objective,
    PlacementError,
)
from wattmoe.placement.graph import CostGraph, build_cost_graph
from wattmoe.placement.loads import ExpertLoads
from wattmoe.placement.spec import ClusterSpec
from wattmoe.units import fmt_bytes, read_alike


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Every metric of one assignment (arrays: [L, D] per layer and device, [D] per device).

    Attributes:
        layer_time_s: T[l, d], device time per layer.
        layer_tokens: tokens each device receives per layer.
        kernel_energy_j: [D] dynamic kernel energy per batch (above idle).
        transfer_energy_j: energy of moving activations over links per batch.
        idle_energy_j: [D] idle energy per batch (0 for unpowered devices).
        replicas: [L, E] replica count per expert.
        slots_used: [D] replicas hosted (all layers).
        powered: [D] whether the device's idle power counts.
        latency_s: MoE time per batch.
        energy_j: total energy per batch.
        energy_j_per_token: energy_j / tokens per batch.
        imbalance: EPLB max/mean tokens per device, averaged over layers.
        objective: the problem's objective value (normalized by the round-robin reference).
        violations: human-readable constraint violations; empty when feasible.
    """

    layer_time_s: np.ndarray
    layer_tokens: np.ndarray
    kernel_energy_j: np.ndarray
    transfer_energy_j: float
    idle_energy_j: np.ndarray
    replicas: np.ndarray
    slots_used: np.ndarray
    powered: np.ndarray
    latency_s: float
    energy_j: float
    energy_j_per_token: float
    imbalance: float
    objective: float
    violations: tuple[str, ...]

    @property
    def feasible(self) -> bool:
        return not self.violations


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """Everything a solver needs. Build with `make_problem`.

    Attributes:
        graph: the cost graph (cluster + curves + transfer costs).
        loads: expected tokens per (layer, expert).
        objective: what to minimize.
        constraints: limits (memory and power always apply; see `Constraints`).
        reference: (energy_j_per_token, latency_s, imbalance) of the round-robin placement,
            the scale each objective term is divided by.
    """

    graph: CostGraph
    loads: ExpertLoads
    objective: Objective
    constraints: Constraints
    reference: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def shape(self) -> ExpertShape:
        return self.graph.shape

    @property
    def dims(self) -> tuple[int, int, int]:
        """(layers, experts, devices)."""
        return self.loads.num_layers, self.loads.num_experts, self.graph.num_devices

    @property
    def max_replicas(self) -> int:
        return min(self.constraints.max_replicas, self.graph.num_devices)

    def with_objective(self, objective: Objective | str) -> PlacementProblem:
        """The same problem with another objective (same reference scale)."""
        return PlacementProblem(self.graph, self.loads, Objective.parse(objective),
                                self.constraints, self.reference)

    def with_constraints(self, constraints: Constraints) -> PlacementProblem:
        return PlacementProblem(self.graph, self.loads, self.objective, constraints,
                                self.reference)

    def coefficients(self, objective: Objective | None = None) -> tuple[float, float, np.ndarray]:
        """(a, b, c[L]) such that the objective is, up to a constant,
        a * energy_j + b * latency_s + sum_l c[l] * max_d tokens[l, d]."""
        obj = objective or self.objective
        ref_e, ref_l, ref_b = self.reference
        L, _, D = self.dims
        a = obj.energy / (self.loads.tokens_per_batch * ref_e)
        b = obj.latency / ref_l
        totals = self.loads.tokens.sum(axis=1)
        with np.errstate(divide="ignore"):
            c = np.where(totals > 0, obj.balance * D / (L * np.maximum(totals, 1e-300) * ref_b),
                         0.0)
        return a, b, c

    def objective_value(self, energy_j_per_token: float, latency_s: float, imbalance: float,
                        objective: Objective | None = None) -> float:
        obj = objective or self.objective
        ref_e, ref_l, ref_b = self.reference
        return (obj.energy * energy_j_per_token / ref_e + obj.latency * latency_s / ref_l
                + obj.balance * imbalance / ref_b)


def make_problem(cluster: ClusterSpec, loads: ExpertLoads, shape: ExpertShape,
                 provider: ExpertCostProvider, objective: Objective | str = "energy",
                 constraints: Constraints | None = None, *,
                 backend: str | None = None, int4_layout: str = "rows") -> PlacementProblem:
    """Builds the cost graph and checks that a placement can exist at all.

    Args:
        backend: the expert backend the GPUs run, for the memory of a replica (int4 with a
            fused backend counts the kernels' copy on GPUs: `ExpertShape.replica_bytes`);
            default: the provider's (`profile_cost_provider(..., backend=...)`), else None.
        int4_layout: how the GPUs store int4 codes, 'rows' or 'tiles' (no copy of the codes
            beside them: `ExpertShape.replica_bytes`).

    Raises:
        ConfigError: an int4 shape no int4 group size divides (an odd width).
        InfeasibleError: an expert fits on no device, all devices together cannot hold the
            experts, or the latency SLO is below a lower bound of any placement's latency.
        PlacementError: `backend` is not the one the provider prices.
    """
    constraints = constraints or Constraints()
    if shape.dtype == "int4":  # an odd width: no group divides it (`int4_group` raises)
        int4_group(shape.hidden, shape.inner)
    L, E = loads.tokens.shape
    graph = build_cost_graph(cluster, provider, shape, max_tokens=float(loads.tokens.max()),
                             backend=backend, int4_layout=int4_layout)
    if graph.slots.max() == 0:
        big = int(np.argmax([d.memory_bytes for d in cluster.devices]))
        memory = cluster.devices[big].memory_bytes
        # a replica a byte larger than the device: both in bytes, not '12.0 MiB' twice
        exact = read_alike(memory, *graph.replica_bytes.tolist())
        raise InfeasibleError(
            f"one expert (H={shape.hidden}, F={shape.inner}, {shape.form}, {shape.dtype}: "
            f"{replica_text(graph, exact=exact)}) is larger than the memory of every device "
            f"(largest: {cluster.devices[big].name} with {fmt_bytes(memory, exact)})"
        )
    if int(graph.slots.sum()) < L * E:
        least, most = int(graph.replica_bytes.min()), int(graph.replica_bytes.max())
        total = sum(d.memory_bytes for d in cluster.devices)
        exact = read_alike(L * E * least, L * E * most, total)
        need = fmt_bytes(L * E * least, exact) + ("" if least == most
                                                  else f" to {fmt_bytes(L * E * most, exact)}")
        raise InfeasibleError(
            f"the {L} x {E} experts need {need} ({replica_text(graph, ' each')}) but all "
            f"devices together hold {int(graph.slots.sum())} experts "
            f"({fmt_bytes(total, exact)})"
        )
    problem = PlacementProblem(graph, loads, Objective.parse(objective), constraints)
    ref = evaluate(problem, round_robin_assignment(L, E, graph.slots))
    reference = tuple(v if v > 0 and math.isfinite(v) else 1.0
                      for v in (ref.energy_j_per_token, ref.latency_s, ref.imbalance))
    problem = PlacementProblem(graph, loads, problem.objective, constraints, reference)  # type: ignore[arg-type]
    slo = constraints.latency_slo_s
    if slo is not None:
        bound = latency_lower_bound(problem)
        if bound > slo:
            raise InfeasibleError(
                f"latency SLO {_ms(slo)} is infeasible: any placement takes at least "
                f"{_ms(bound)} per batch (each layer's hottest expert split over "
                f"{problem.max_replicas} replicas on the fastest devices)"
            )
    return problem


def replica_text(graph: CostGraph, each: str = "", exact: bool = False) -> str:
    """The memory one replica takes, as errors and the CLI say it: '3.1 MiB', or, where the
    GPUs count the fused int4 kernels' copy, '3.1 MiB; 6.2 MiB on a GPU with backend fused
    (the fused kernels' copy of the int4 weights)'; `each` follows the first figure; `exact`:
    in bytes (`fmt_bytes`)."""
    shape = graph.shape
    text = fmt_bytes(shape.weight_bytes, exact) + each
    more = sorted({int(b) for b in graph.replica_bytes if b != shape.weight_bytes})
    if more:
        what = ("the fused kernels' copies: of the int4 scales, and of the codes of any "
                "matrix they read in another order than the tiles the codes are stored in"
                if graph.int4_layout == "tiles" else "the fused kernels' copy of the int4 weights")
        text += (f"; {', '.join(fmt_bytes(b, exact) for b in more)} on a GPU with backend "
                 f"{graph.backend} ({what})")
    return text


def latency_lower_bound(problem: PlacementProblem) -> float:
    """A lower bound on any placement's latency: per layer, the larger of (a) the hottest
    expert split over `max_replicas` replicas on the fastest device and (b) the layer's total
    fastest-device time spread over every device, each expert's total at the replica count
    (1 to `max_replicas`) where its replicas take the least time together (r replicas of W/r
    tokens can take less than one of W where the cost curve grows faster than linearly: the
    whole expert's time alone was no bound there)."""
    W = problem.loads.tokens
    R = problem.max_replicas
    g = problem.graph
    t_hot, _ = g.replica_cost(W.max(axis=1) / R)  # [L, D]
    work = np.full(W.shape, np.inf)  # [L, E] least total time of an expert's replicas
    for r in range(1, R + 1):
        t_r, _ = g.replica_cost(W / r)  # [L, E, D]
        work = np.minimum(work, r * t_r.min(axis=2))
    spread = work.sum(axis=1) / g.num_devices
    return float(np.maximum(t_hot.min(axis=1), spread).sum())


def round_robin_assignment(num_layers: int, num_experts: int, slots: np.ndarray,
                           devices: np.ndarray | None = None) -> np.ndarray:
    """Expert e of every layer on device e mod D (of `devices`, default all); a device whose
    memory is full passes its expert to the next one with room. One replica per expert."""
    slots = np.asarray(slots, dtype=np.int64)
    devs = np.arange(len(slots)) if devices is None else np.asarray(devices)
    free = slots.copy()
    if int(free[devs].sum()) < num_layers * num_experts:
        raise InfeasibleError(f"round-robin: {num_layers * num_experts} experts do not fit in "
                              f"{int(free[devs].sum())} slots")
    out = np.zeros((num_layers, num_experts, len(slots)), dtype=bool)
    k = len(devs)
    first = devs[np.arange(num_experts) % k]  # [E]
    if np.all(np.bincount(first, minlength=len(slots)) * num_layers <= slots):
        out[:, np.arange(num_experts), first] = True
        return out
    for layer in range(num_layers):  # some device fills up: walk on to the next with room
        for e in range(num_experts):
            j = e % k
            while free[devs[j]] == 0:
                j = (j + 1) % k
            out[layer, e, devs[j]] = True
            free[devs[j]] -= 1
    return out


def evaluate(problem: PlacementProblem, assignment: np.ndarray) -> Evaluation:
    """Scores an assignment [L, E, D] exactly.

    Raises:
        PlacementError: the assignment's shape does not match the problem.
    """
    N = np.asarray(assignment, dtype=bool)
    L, E, D = problem.dims
    if N.shape != (L, E, D):
        raise PlacementError(f"assignment has shape {N.shape}, problem needs {(L, E, D)}")
    g = problem.graph
    W = problem.loads.tokens
    r = N.sum(axis=2)
    y = np.where(r > 0, W / np.maximum(r, 1), 0.0)
    ct, ce = g.replica_cost(y)
    hosts = N.any(axis=1)  # [L, D]
    T = (N * ct).sum(axis=1) + hosts * g.message_latency_s
    tok = (N * y[..., None]).sum(axis=1)
    dyn = (N * ce).sum(axis=1)  # kernel + transfer
    transfer = tok * g.transfer_energy_j_per_token
    kernel = (dyn - transfer).sum(axis=0)
    slots_used = N.sum(axis=(0, 1))
    powered = g.always_on | (slots_used > 0)
    latency = float(T.max(axis=1).sum())
    idle = powered * g.idle_power_w * latency
    energy = float(dyn.sum() + idle.sum())
    per_token = energy / problem.loads.tokens_per_batch
    totals = W.sum(axis=1)
    layer_imb = np.where(totals > 0, tok.max(axis=1) / np.maximum(totals / D, 1e-300), 1.0)
    imbalance = float(layer_imb.mean())

    violations: list[str] = []
    missing = np.argwhere(r == 0)
    if len(missing):
        violations.append(f"{len(missing)} experts have no replica (first: layer "
                          f"{missing[0][0]}, expert {missing[0][1]})")
    for d in np.flatnonzero(slots_used > g.slots):
        violations.append(f"{g.device_names[d]} holds {slots_used[d]} experts, memory fits "
                          f"{g.slots[d]}")
    if r.max() > problem.max_replicas:
        violations.append(f"an expert has {r.max()} replicas > max_replicas "
                          f"{problem.max_replicas}")
    budget = problem.constraints.redundant_per_layer
    if budget is not None and (r.sum(axis=1) - E).max() > budget:
        violations.append(f"a layer has {(r.sum(axis=1) - E).max()} redundant replicas > "
                          f"redundant_per_layer {budget}")
    slo = problem.constraints.latency_slo_s
    if slo is not None and latency > slo * (1 + 1e-9):
        violations.append(f"latency {_ms(latency)} exceeds the SLO {_ms(slo)}")
    return Evaluation(
        layer_time_s=T, layer_tokens=tok, kernel_energy_j=kernel,
        transfer_energy_j=float(transfer.sum()), idle_energy_j=idle, replicas=r,
        slots_used=slots_used, powered=powered, latency_s=latency, energy_j=energy,
        energy_j_per_token=per_token, imbalance=imbalance,
        objective=problem.objective_value(per_token, latency, imbalance),
        violations=tuple(violations),
    )


def _ms(seconds: float) -> str:
    """A time in milliseconds to the microsecond, or to 3 significant digits below that (an
    SLO of 1e-5 ms was printed as 0.000 ms)."""
    ms = seconds * 1e3
    return f"{ms:.3f} ms" if abs(ms) >= 1e-3 or ms == 0 else f"{ms:.3g} ms"
