"""`Placement`: which devices host which experts, its summary, JSON round-trip, and diffs."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np

from wattmoe.checks import is_finite_real, is_int, is_real
from wattmoe.placement.base import PlacementError
from wattmoe.placement.problem import Evaluation, PlacementProblem

FORMAT = "wattmoe.placement"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DeviceSummary:
    """One device under a placement, per batch.

    Attributes:
        name, kind: the device.
        replicas: expert replicas it hosts (all layers).
        memory_bytes: memory those replicas take (`ExpertShape.replica_bytes` each: with
            int4 on a GPU with a fused backend, the weights and the kernels' copy of them).
        memory_capacity_bytes: its memory.
        tokens: expert-token assignments it computes per batch (all layers).
        busy_s: its time per batch (sum over layers of its per-layer time).
        energy_j: its energy per batch: idle power over the batch if powered, plus dynamic.
        avg_power_w: energy_j / latency.
        powered: whether its idle power counts.
        power_budget_w: its budget, if any.
    """

    name: str
    kind: str
    replicas: int
    memory_bytes: int
    memory_capacity_bytes: int
    tokens: float
    busy_s: float
    energy_j: float
    avg_power_w: float
    powered: bool
    power_budget_w: float | None = None


@dataclass(frozen=True)
class PlacementSummary:
    """Predicted cost of a placement.

    Attributes:
        energy_j_per_token: energy per token through the MoE layers.
        energy_j_per_batch: energy of one batch.
        latency_s: MoE time per batch.
        imbalance: max/mean tokens per device, averaged over layers (EPLB's measure).
        tokens_per_batch: tokens in the batch.
        transfer_energy_j: part of energy_j_per_batch spent moving activations.
        objective: objective value (normalized by round-robin; lower is better).
        redundant_replicas: replicas beyond one per expert (all layers).
        devices: per-device figures.
        energy_source: 'estimated': a prediction from a cost model, never a measurement.
        cost_sources: device -> where its kernel costs come from.
        violations: constraint violations (empty when feasible).
    """

    energy_j_per_token: float
    energy_j_per_batch: float
    latency_s: float
    imbalance: float
    tokens_per_batch: float
    transfer_energy_j: float
    objective: float
    redundant_replicas: int
    devices: tuple[DeviceSummary, ...]
    energy_source: str = "estimated"
    cost_sources: dict[str, str] = field(default_factory=dict)
    violations: tuple[str, ...] = ()

    @property
    def feasible(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = [asdict(x) for x in self.devices]
        d["violations"] = list(self.violations)
        return d

    @classmethod
    def from_dict(cls, d: object, where: str = "summary") -> PlacementSummary:
        """Reads `to_dict` output back (fields it does not know are ignored).

        Raises:
            PlacementError: `where`: the fields missing or of the wrong type, named.
        """
        values = _summary_fields(cls, d, where)
        values["devices"] = tuple(
            DeviceSummary(**_summary_fields(DeviceSummary, x, f"{where}: devices[{i}]"))
            for i, x in enumerate(values["devices"]))
        values["violations"] = tuple(str(v) for v in values.get("violations", ()))
        return cls(**values)


#: What a summary field's type asks of its JSON value: (check, in words, conversion), keyed by
#: the type, or by its origin for generics (`dict[str, str]`: dict; the items are not checked).
#: `X | None` (`_field_kind`) also takes null.
_FIELD_KINDS: dict[Any, tuple[Any, str, Any]] = {
    float: (is_real, "a number", float),
    int: (lambda v: is_finite_real(v) and v == int(v), "an integer", int),
    str: (lambda v: isinstance(v, str), "a string", str),
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    dict: (lambda v: isinstance(v, dict), "an object", dict),
    tuple: (lambda v: isinstance(v, list | tuple), "a list", list),
}


def _field_kind(tp: Any) -> tuple[Any, str, Any] | None:
    """The `_FIELD_KINDS` entry of type tp (`X | None`: X's, taking null too); None if none."""
    args = get_args(tp)
    if get_origin(tp) in (Union, UnionType) and len(args) == 2 and type(None) in args:
        inner = _field_kind(args[0] if args[1] is type(None) else args[1])
        if inner is None:
            return None
        check, words, convert = inner
        return (lambda v: v is None or check(v), f"{words} or null",
                lambda v: v if v is None else convert(v))
    return _FIELD_KINDS.get(get_origin(tp) or tp)


@functools.cache
def _field_kinds(cls: Any) -> dict[str, tuple[Any, str, Any]]:
    """`_field_kind` of each field of dataclass `cls`, from its resolved type hints.

    Raises:
        TypeError: a field of a type that `_FIELD_KINDS` has no check for, named with its type.
    """
    hints = get_type_hints(cls)
    kinds = {}
    for f in fields(cls):
        kind = _field_kind(hints[f.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no JSON check for a field of type "
                            f"{hints[f.name]!r}; add one to placement.result._FIELD_KINDS")
        kinds[f.name] = kind
    return kinds


def _summary_fields(cls: Any, d: object, where: str) -> dict[str, Any]:
    """The fields of dataclass `cls` in the JSON object `d`, checked against their types.

    Raises:
        PlacementError: one line naming every missing field and every value of a wrong type.
        TypeError: a field of `cls` has a type with no check (`_field_kinds`).
    """
    required = [f.name for f in fields(cls) if f.default is MISSING
                and f.default_factory is MISSING]
    return _checked_fields(d, where, _field_kinds(cls), required)


def _shown(v: object) -> str:
    """A JSON value in an error: a list's or an object's type, another value's repr."""
    return type(v).__name__ if isinstance(v, list | dict) else repr(v)


def _checked_fields(d: object, where: str, kinds: dict[str, tuple[Any, str, Any]],
                    required: Sequence[str]) -> dict[str, Any]:
    """The fields of `kinds` present in the JSON object `d`, checked and converted.

    Raises:
        PlacementError: one line naming every missing `required` field and every value of a
            wrong type.
    """
    if not isinstance(d, dict):
        raise PlacementError(f"{where} must be an object of named fields, got "
                             f"{type(d).__name__}")
    missing = [repr(name) for name in required if name not in d]
    bad, out = [], {}
    for name, (check, words, convert) in kinds.items():
        if name not in d:
            continue
        v = d[name]
        if check(v):
            out[name] = convert(v)
        else:
            bad.append(f"field {name!r} must be {words}, got {_shown(v)}")
    if missing or bad:
        s = "s" if len(missing) > 1 else ""
        parts = ([f"missing field{s} {', '.join(missing)}"] if missing else []) + bad
        raise PlacementError(f"{where}: {'; '.join(parts)}")
    return out


def _positive_int(v: object) -> bool:
    return is_finite_real(v) and v >= 1 and v == int(v)  # type: ignore[operator]


#: The fields of a placement file besides its summary, with what their values must be
#: (`_FIELD_KINDS`). The maps are checked further in `Placement.from_dict`.
_PLACEMENT_FIELDS: dict[str, Any] = {
    "devices": _FIELD_KINDS[tuple],
    "layers": _FIELD_KINDS[tuple],
    "num_experts": (_positive_int, "an integer >= 1", int),
    "expert_bytes": (_positive_int, "a positive integer (bytes of one expert's weights)", int),
    "num_layers": _FIELD_KINDS[int],
    **dict.fromkeys(("cluster", "solver", "objective", "status"), _FIELD_KINDS[str]),
    "solve_time_s": _FIELD_KINDS[float],
    "replica_counts": _field_kind(tuple | None),
    "meta": _field_kind(dict | None),
    # a solver's proven bound, and the gap derived from it (checked against it on reading)
    **dict.fromkeys(("objective_lower_bound", "gap_above_bound"),
                    (lambda v: v is None or is_finite_real(v), "a finite number or null",
                     lambda v: v if v is None else float(v))),
}
_PLACEMENT_REQUIRED = ("devices", "layers", "num_experts", "expert_bytes")


def summarize(problem: PlacementProblem, ev: Evaluation) -> PlacementSummary:
    """A `PlacementSummary` from an exact `Evaluation`."""
    g = problem.graph
    latency = ev.latency_s
    devices = []
    for i, spec in enumerate(g.cluster.devices):
        energy = float(ev.idle_energy_j[i] + ev.kernel_energy_j[i])
        devices.append(DeviceSummary(
            name=spec.name, kind=spec.kind, replicas=int(ev.slots_used[i]),
            memory_bytes=int(ev.slots_used[i]) * int(g.replica_bytes[i]),
            memory_capacity_bytes=spec.memory_bytes, tokens=float(ev.layer_tokens[:, i].sum()),
            busy_s=float(ev.layer_time_s[:, i].sum()), energy_j=energy,
            avg_power_w=energy / latency if latency > 0 else 0.0, powered=bool(ev.powered[i]),
            power_budget_w=spec.power_budget_w,
        ))
    return PlacementSummary(
        energy_j_per_token=ev.energy_j_per_token, energy_j_per_batch=ev.energy_j,
        latency_s=latency, imbalance=ev.imbalance,
        tokens_per_batch=problem.loads.tokens_per_batch,
        transfer_energy_j=ev.transfer_energy_j, objective=ev.objective,
        redundant_replicas=int(ev.replicas.sum() - ev.replicas.size),
        devices=tuple(devices), cost_sources=dict(g.cost_sources),
        violations=ev.violations,
    )


@dataclass(frozen=True, eq=False)
class Placement:
    """Experts of every MoE layer mapped to devices.

    Attributes:
        device_names: [D] devices, in the cluster's order.
        assignment: [L, E, D] bool, read-only: True where the device hosts a replica.
        expert_bytes: weight memory of one replica (for migration costs: the weights that
            move; a GPU running the fused int4 kernels derives their copy itself).
        solver: the solver that produced it.
        objective: the objective it was solved for.
        status: 'optimal', 'time-limit', 'heuristic' or 'baseline'.
        solve_time_s: wall time of the solver.
        cluster: the cluster's name.
        summary: predicted cost, or None.
        meta: free-form provenance (preset, loads source, cost model, options).
        objective_lower_bound: a proven lower bound on the optimum's objective value, on
            `summary.objective`'s scale: HiGHS's for the MILP (optimal or stopped at its
            time limit); None where the solver proves none (the heuristic, the baselines).
            `gap_above_bound` says how far above it this placement is.
    """

    device_names: tuple[str, ...]
    assignment: np.ndarray
    expert_bytes: int
    solver: str = ""
    objective: str = ""
    status: str = ""
    solve_time_s: float = 0.0
    cluster: str = ""
    summary: PlacementSummary | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    objective_lower_bound: float | None = None

    def __post_init__(self) -> None:
        a = np.array(self.assignment, dtype=bool)
        if a.ndim != 3 or a.shape[2] != len(self.device_names):
            raise PlacementError(f"assignment must be [layers, experts, {len(self.device_names)}"
                                 f" devices], got shape {a.shape}")
        lb = self.objective_lower_bound
        if lb is not None and not is_finite_real(lb):
            raise PlacementError(f"objective_lower_bound must be a finite number or None, got "
                                 f"{lb!r}")
        a.setflags(write=False)
        object.__setattr__(self, "assignment", a)
        object.__setattr__(self, "device_names", tuple(self.device_names))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return (self.device_names == other.device_names
                and np.array_equal(self.assignment, other.assignment)
                and self.expert_bytes == other.expert_bytes)

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_layers(self) -> int:
        return int(self.assignment.shape[0])

    @property
    def num_experts(self) -> int:
        return int(self.assignment.shape[1])

    @property
    def gap_above_bound(self) -> float | None:
        """How far this placement's objective is above `objective_lower_bound`, as a fraction
        of the bound (0.953: 95.3% above it; so at most that far above the optimum). About 0
        when the MILP proved it optimal (within HiGHS's tolerance, either sign). None without
        a bound or a summary, or with a bound <= 0 (no share of it means anything)."""
        lb = self.objective_lower_bound
        if lb is None or self.summary is None or lb <= 0:
            return None
        return (self.summary.objective - lb) / lb

    @property
    def replica_counts(self) -> np.ndarray:
        """[L, E] replicas per expert."""
        return self.assignment.sum(axis=2)

    def _layer(self, layer: object) -> int:
        """`layer` as an index of `assignment` (negative ones count from the end).

        Raises:
            PlacementError: not an integer, or no such layer (was numpy's IndexError).
        """
        n = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer) \
                or not -n <= layer < n:
            raise PlacementError(f"no layer {layer!r} in this placement: it has {n} layer"
                                 f"{'s' if n != 1 else ''} (0..{n - 1})")
        return int(layer)

    def expert_to_devices(self, layer: int) -> list[tuple[str, ...]]:
        """For each expert of `layer`, the devices hosting it."""
        names = self.device_names
        return [tuple(names[d] for d in np.flatnonzero(row))
                for row in self.assignment[self._layer(layer)]]

    def device_to_experts(self, layer: int) -> dict[str, tuple[int, ...]]:
        """For each device, the experts of `layer` it hosts."""
        layer = self._layer(layer)
        return {name: tuple(int(e) for e in np.flatnonzero(self.assignment[layer, :, d]))
                for d, name in enumerate(self.device_names)}

    def physical_to_logical(self, layer: int) -> list[int]:
        """EPLB's phy2log for `layer`: replicas listed device by device, each as its expert."""
        layer = self._layer(layer)
        return [e for d in range(len(self.device_names))
                for e in np.flatnonzero(self.assignment[layer, :, d]).tolist()]

    # --- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": SCHEMA_VERSION,
            "cluster": self.cluster,
            "devices": list(self.device_names),
            "expert_bytes": self.expert_bytes,
            "solver": self.solver,
            "objective": self.objective,
            "status": self.status,
            "solve_time_s": self.solve_time_s,
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "layers": [
                {"expert_to_devices": [list(t) for t in self.expert_to_devices(layer)],
                 "device_to_experts": {k: list(v) for k, v in
                                       self.device_to_experts(layer).items()}}
                for layer in range(self.num_layers)
            ],
            "replica_counts": self.replica_counts.tolist(),
            "summary": self.summary.to_dict() if self.summary else None,
            "meta": self.meta,
            "objective_lower_bound": self.objective_lower_bound,
            "gap_above_bound": self.gap_above_bound,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> Placement:
        """Reads `to_dict` output back, checking its fields' types and that its maps agree.

        Raises:
            PlacementError: not a placement, another schema version, a field missing or of
                the wrong type (named), or inconsistent maps.
        """
        where = f"placement {source}"
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PlacementError(f"{where} is not a wattmoe placement (format != {FORMAT!r})")
        if d.get("version") != SCHEMA_VERSION:
            raise PlacementError(f"{where} has schema version {d.get('version')!r}; this "
                                 f"wattmoe reads version {SCHEMA_VERSION}")
        v = _checked_fields(d, where, _PLACEMENT_FIELDS, _PLACEMENT_REQUIRED)
        names = tuple(v["devices"])
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise PlacementError(f"{where}: field 'devices' must be a list of device "
                                     f"names, got {_shown(name)} at devices[{i}]")
            if name in names[:i]:
                raise PlacementError(f"{where}: field 'devices' lists {name!r} twice")
        layers = v["layers"]
        if v.get("num_layers", len(layers)) != len(layers):
            raise PlacementError(f"{where}: field 'num_layers' is {v['num_layers']}, but "
                                 f"field 'layers' lists {len(layers)} layers")
        a = np.zeros((len(layers), v["num_experts"], len(names)), dtype=bool)
        for layer, entry in enumerate(layers):
            a[layer] = _read_layer(entry, f"{where}: layer {layer}", names, v["num_experts"])
        counts = v.get("replica_counts")
        if counts is not None and counts != a.sum(axis=2).tolist():
            raise PlacementError(f"{where}: replica_counts disagree with expert_to_devices")
        summary = (PlacementSummary.from_dict(d["summary"], f"{where}: summary")
                   if d.get("summary") is not None else None)
        # (files from before the bound was recorded have neither field)
        p = cls(names, a, v["expert_bytes"], solver=v.get("solver", ""),
                objective=v.get("objective", ""), status=v.get("status", ""),
                solve_time_s=v.get("solve_time_s", 0.0), cluster=v.get("cluster", ""),
                summary=summary, meta=v.get("meta") or {},
                objective_lower_bound=v.get("objective_lower_bound"))
        if v.get("gap_above_bound") is not None and (
                p.gap_above_bound is None
                or not math.isclose(v["gap_above_bound"], p.gap_above_bound, rel_tol=1e-9,
                                    abs_tol=1e-12)):
            raise PlacementError(
                f"{where}: field 'gap_above_bound' is {v['gap_above_bound']!r}, but the "
                f"objective {summary.objective if summary else None!r} and the "
                f"objective_lower_bound {p.objective_lower_bound!r} make it "
                f"{p.gap_above_bound!r}")
        return p

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> Placement:
        try:
            data = json.loads(text, parse_int=_json_int)
        except ValueError as exc:
            raise PlacementError(f"placement {source} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source)


def _json_int(text: str) -> int | float:
    """A JSON integer; one beyond float64's range as inf, which every field's check refuses
    by name (math.isfinite and float() raised OverflowError on it: a traceback)."""
    v = int(text)
    return v if abs(v) <= sys.float_info.max else float(text)


def _read_layer(entry: object, where: str, names: tuple[str, ...], num_experts: int
                ) -> np.ndarray:
    """One layer of a placement file as [experts, devices] bool, its maps checked.

    Raises:
        PlacementError: `where`: a field missing or of the wrong type, an unknown device or
            expert, or maps that disagree.
    """
    if not isinstance(entry, dict):
        raise PlacementError(f"{where} must be an object (expert_to_devices, "
                             f"device_to_experts), got {_shown(entry)}")
    if "expert_to_devices" not in entry:
        raise PlacementError(f"{where}: missing field 'expert_to_devices'")
    index = {n: i for i, n in enumerate(names)}
    e2d = entry["expert_to_devices"]
    if not isinstance(e2d, list):
        raise PlacementError(f"{where}: field 'expert_to_devices' must be a list (each "
                             f"expert's devices), got {_shown(e2d)}")
    if len(e2d) != num_experts:
        raise PlacementError(f"{where} lists {len(e2d)} experts, expected {num_experts}")
    a = np.zeros((num_experts, len(names)), dtype=bool)
    for e, devs in enumerate(e2d):
        if not isinstance(devs, list):
            raise PlacementError(f"{where} expert {e}: its devices must be a list of device "
                                 f"names, got {_shown(devs)}")
        for name in devs:
            if not isinstance(name, str) or name not in index:
                raise PlacementError(f"{where} expert {e} is on unknown device {name!r} "
                                     f"(devices: {', '.join(names)})")
            if a[e, index[name]]:  # one replica per device: a second would be read as none
                raise PlacementError(f"{where} expert {e} lists device {name!r} twice (a "
                                     "device holds at most one replica of an expert)")
            a[e, index[name]] = True
    d2e = entry.get("device_to_experts")
    if d2e is None:
        return a
    if not isinstance(d2e, dict):
        raise PlacementError(f"{where}: field 'device_to_experts' must be an object (device "
                             f"-> its experts), got {_shown(d2e)}")
    b = np.zeros_like(a)
    for name, experts in d2e.items():
        if name not in index:
            raise PlacementError(f"{where}: device_to_experts names unknown device {name!r} "
                                 f"(devices: {', '.join(names)})")
        bad = ([_shown(experts)] if not isinstance(experts, list) else
               [repr(x) for x in experts if not (is_int(x) and 0 <= x < num_experts)])
        if bad:
            raise PlacementError(f"{where}: device_to_experts[{name!r}] must be a list of "
                                 f"experts 0..{num_experts - 1}, got {bad[0]}")
        b[experts, index[name]] = True
    if not np.array_equal(a, b):
        raise PlacementError(f"{where}: expert_to_devices and device_to_experts disagree")
    return a


@dataclass(frozen=True)
class PlacementDiff:
    """What it takes to go from placement `a` to placement `b`.

    Attributes:
        experts_moved: (layer, expert) pairs whose set of devices changed.
        replicas_added: replicas in b that a does not have (each must be copied).
        replicas_removed: replicas in a that b drops.
        bytes_to_migrate: replicas_added x expert bytes.
        moved_per_layer: [L] experts moved per layer.
        bytes_in: device -> bytes it receives.
        bytes_freed: device -> bytes it frees.
    """

    experts_moved: int
    replicas_added: int
    replicas_removed: int
    bytes_to_migrate: int
    moved_per_layer: tuple[int, ...]
    bytes_in: dict[str, int]
    bytes_freed: dict[str, int]


def diff_placements(a: Placement, b: Placement) -> PlacementDiff:
    """Experts moved and bytes to migrate from `a` to `b` (devices matched by name).

    Raises:
        PlacementError: different numbers of layers/experts or expert sizes.
    """
    if a.assignment.shape[:2] != b.assignment.shape[:2]:
        raise PlacementError(f"cannot diff placements of {a.assignment.shape[:2]} and "
                             f"{b.assignment.shape[:2]} (layers, experts)")
    if a.expert_bytes != b.expert_bytes:
        raise PlacementError(f"cannot diff placements of different expert sizes "
                             f"({a.expert_bytes} and {b.expert_bytes} bytes)")
    names = list(dict.fromkeys([*a.device_names, *b.device_names]))

    def widen(p: Placement) -> np.ndarray:
        out = np.zeros((*p.assignment.shape[:2], len(names)), dtype=bool)
        for i, n in enumerate(p.device_names):
            out[:, :, names.index(n)] = p.assignment[:, :, i]
        return out

    wa, wb = widen(a), widen(b)
    added = wb & ~wa
    removed = wa & ~wb
    moved = (added | removed).any(axis=2)
    return PlacementDiff(
        experts_moved=int(moved.sum()), replicas_added=int(added.sum()),
        replicas_removed=int(removed.sum()),
        bytes_to_migrate=int(added.sum()) * a.expert_bytes,
        moved_per_layer=tuple(int(x) for x in moved.sum(axis=1)),
        bytes_in={n: int(added[:, :, i].sum()) * a.expert_bytes for i, n in enumerate(names)},
        bytes_freed={n: int(removed[:, :, i].sum()) * a.expert_bytes
                     for i, n in enumerate(names)},
    )
