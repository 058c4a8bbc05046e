from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

from wattmoe.placement import (
    AnalyticCostProvider,
    ExpertShape,
    Placement,
    PlacementError,
    diff_placements,
    load_cluster,
    make_problem,
    solve,
    synthetic_loads,
)
from wattmoe.placement.result import _summary_fields

SHAPE = ExpertShape(2048, 1024)


@pytest.fixture(scope="module")
def two_placements() -> tuple[Placement, Placement]:
    loads = synthetic_loads(2, 16, 4, 512, "zipf:1.2", seed=0)
    problem = make_problem(load_cluster("8xh200-2node"), loads, SHAPE, AnalyticCostProvider(),
                           "balance")
    return solve(problem, "round-robin"), solve(problem, "heuristic")


def test_json_round_trip(two_placements) -> None:
    for p in two_placements:
        back = Placement.from_json(p.to_json())
        assert back == p
        assert back.summary == p.summary
        assert back.solver == p.solver and back.meta == p.meta
        assert back.expert_to_devices(1) == p.expert_to_devices(1)
    d = json.loads(two_placements[1].to_json())
    assert d["layers"][0]["device_to_experts"]["gpu0"] == list(
        two_placements[1].device_to_experts(0)["gpu0"])
    assert d["summary"]["energy_source"] == "estimated"


def test_inconsistent_or_foreign_json_is_rejected(two_placements) -> None:
    d = two_placements[0].to_dict()
    d["layers"][0]["device_to_experts"]["gpu0"] = [5]
    with pytest.raises(PlacementError, match="disagree"):
        Placement.from_dict(d)
    d = two_placements[0].to_dict()
    d["layers"][0]["expert_to_devices"][0] = ["gpu42"]
    with pytest.raises(PlacementError, match="unknown device 'gpu42'"):
        Placement.from_dict(d)
    with pytest.raises(PlacementError, match="not a wattmoe placement"):
        Placement.from_dict({"format": "other"})
    with pytest.raises(PlacementError, match="not valid JSON"):
        Placement.from_json("{")
    with pytest.raises(PlacementError, match="schema version"):
        Placement.from_dict({**two_placements[0].to_dict(), "version": 99})


def test_diff(two_placements) -> None:
    a, b = two_placements
    same = diff_placements(a, a)
    assert (same.experts_moved, same.replicas_added, same.bytes_to_migrate) == (0, 0, 0)
    d = diff_placements(a, b)
    added = b.assignment & ~a.assignment
    removed = a.assignment & ~b.assignment
    assert d.replicas_added == added.sum()
    assert d.replicas_removed == removed.sum()
    assert d.bytes_to_migrate == added.sum() * SHAPE.weight_bytes
    assert d.experts_moved == (added | removed).any(axis=2).sum()
    assert sum(d.moved_per_layer) == d.experts_moved
    assert sum(d.bytes_in.values()) == d.bytes_to_migrate
    assert sum(d.bytes_freed.values()) == removed.sum() * SHAPE.weight_bytes
    # moving one replica of one expert: 1 moved, 1 copy
    c = a.assignment.copy()
    c[0, 3] = np.roll(c[0, 3], 1)
    one = diff_placements(a, Placement(a.device_names, c, a.expert_bytes))
    assert (one.experts_moved, one.replicas_added, one.replicas_removed) == (1, 1, 1)


def test_diff_rejects_different_models(two_placements) -> None:
    a = two_placements[0]
    other = Placement(a.device_names, a.assignment[:, :8], a.expert_bytes)
    with pytest.raises(PlacementError, match="cannot diff"):
        diff_placements(a, other)


@pytest.mark.parametrize(("mutate", "message"), [
    # was: "is malformed: KeyError: 'layers'"
    (lambda d: d.pop("layers"), "missing field 'layers'"),
    (lambda d: d.pop("devices"), "missing field 'devices'"),
    (lambda d: d.pop("num_experts"), "missing field 'num_experts'"),
    (lambda d: d.pop("expert_bytes"), "missing field 'expert_bytes'"),
    (lambda d: d["layers"][1].pop("expert_to_devices"),
     "layer 1: missing field 'expert_to_devices'"),
    # was: "is malformed: TypeError: object of type 'int' has no len()"
    (lambda d: d.update(layers=5), "field 'layers' must be a list, got 5"),
    # was: "is malformed: ValueError: invalid literal for int() with base 10: 'x'"
    (lambda d: d.update(num_experts="x"), "field 'num_experts' must be an integer >= 1, got 'x'"),
    # was: read as 2, then "layer 0 lists 16 experts, expected 2"
    (lambda d: d.update(num_experts=2.5), "field 'num_experts' must be an integer >= 1, got 2.5"),
    # was: "is malformed: ValueError: could not convert string to float: 'fast'"
    (lambda d: d.update(solve_time_s="fast"), "field 'solve_time_s' must be a number, got 'fast'"),
    # was: accepted as the solver '5' and the cluster '[]'
    (lambda d: d.update(solver=5, cluster=[]),
     "field 'cluster' must be a string, got list; field 'solver' must be a string, got 5"),
    # was: "is malformed: TypeError: cannot convert dictionary update sequence element #0 ..."
    (lambda d: d.update(meta=[1, 2]), "field 'meta' must be an object or null, got list"),
    (lambda d: d.update(replica_counts="x"), "field 'replica_counts' must be a list or null, "
                                             "got 'x'"),
    # was: accepted, the file saying 7 layers and holding 2
    (lambda d: d.update(num_layers=7), "field 'num_layers' is 7, but field 'layers' lists 2 "
                                       "layers"),
    # was: "layer 0 expert 0 is on unknown device 'gpu0'" (the names read as '1', '2', ...)
    (lambda d: d["devices"].__setitem__(1, 2),
     "field 'devices' must be a list of device names, got 2 at devices[1]"),
    # was: "layer 0 expert 1 is on unknown device 'gpu1'"
    (lambda d: d["devices"].__setitem__(1, "gpu0"), "field 'devices' lists 'gpu0' twice"),
    # was: "is malformed: TypeError: object of type 'int' has no len()"
    (lambda d: d["layers"][0].update(expert_to_devices=5),
     "layer 0: field 'expert_to_devices' must be a list (each expert's devices), got 5"),
    # was: "layer 1 expert 2 is on unknown device 'g'" (the string's letters)
    (lambda d: d["layers"][1]["expert_to_devices"].__setitem__(2, "gpu0"),
     "layer 1 expert 2: its devices must be a list of device names, got 'gpu0'"),
    # was: a traceback, "AttributeError: 'list' object has no attribute 'items'"
    (lambda d: d["layers"][0].update(device_to_experts=[1]),
     "layer 0: field 'device_to_experts' must be an object (device -> its experts), got list"),
    # was: "is malformed: KeyError: 'gpu9'"
    (lambda d: d["layers"][0]["device_to_experts"].update(gpu9=[0]),
     "layer 0: device_to_experts names unknown device 'gpu9' (devices: gpu0, gpu1, gpu2, "
     "gpu3, gpu4, gpu5, gpu6, gpu7)"),
    # was: "is malformed: IndexError: only integers, slices (`:`), ellipsis (`...`), ..."
    (lambda d: d["layers"][0]["device_to_experts"].update(gpu0=[0, 1.5]),
     "layer 0: device_to_experts['gpu0'] must be a list of experts 0..15, got 1.5"),
    # was: "is malformed: IndexError: index 99 is out of bounds for axis 0 with size 16"
    (lambda d: d["layers"][0]["device_to_experts"].update(gpu0=[99]),
     "layer 0: device_to_experts['gpu0'] must be a list of experts 0..15, got 99"),
    # was: "is malformed: ValueError: setting an array element with a sequence. ..."
    (lambda d: d["replica_counts"][0].pop(), "replica_counts disagree with expert_to_devices"),
    # was: accepted as a placement without a summary
    (lambda d: d.update(summary=0), "summary must be an object of named fields, got int"),
    # (a review) was: "layer 0: missing field 'expert_to_devices'"
    (lambda d: d["layers"].__setitem__(0, 5),
     "layer 0 must be an object (expert_to_devices, device_to_experts), got 5"),
    # (a review) was: read as one replica on gpu0
    (lambda d: d["layers"][0]["expert_to_devices"][0].extend(
        d["layers"][0]["expert_to_devices"][0]),
     "layer 0 expert 0 lists device 'gpu0' twice (a device holds at most one replica of an "
     "expert)"),
])
def test_a_missing_or_mistyped_field_is_named(two_placements, mutate, message) -> None:
    d = two_placements[0].to_dict()
    mutate(d)
    with pytest.raises(PlacementError, match=f"^{re.escape('placement p.json: ' + message)}$"):
        Placement.from_dict(d, source="p.json")


@pytest.mark.parametrize(("summary", "message"), [
    # was: "is malformed: TypeError: PlacementSummary.__init__() missing 7 required positional
    # arguments: ..."
    ({"energy_j_per_token": "x"},
     "placement p.json: summary: missing fields 'energy_j_per_batch', 'latency_s', "
     "'imbalance', 'tokens_per_batch', 'transfer_energy_j', 'objective', "
     "'redundant_replicas', 'devices'; field 'energy_j_per_token' must be a number, got 'x'"),
    ([1, 2], "placement p.json: summary must be an object of named fields, got list"),
])
def test_a_malformed_summary_names_its_fields(two_placements, summary, message) -> None:
    d = two_placements[0].to_dict()
    d["summary"] = summary
    with pytest.raises(PlacementError, match=f"^{re.escape(message)}$"):
        Placement.from_dict(d, source="p.json")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda s: s.update(redundant_replicas=1.5),
     "field 'redundant_replicas' must be an integer, got 1.5"),
    (lambda s: s.update(devices=3), "field 'devices' must be a list, got 3"),
    (lambda s: s["devices"][1].pop("energy_j"), "devices[1]: missing field 'energy_j'"),
    (lambda s: s["devices"][0].update(powered="yes"),
     "devices[0]: field 'powered' must be true or false, got 'yes'"),
    (lambda s: s.update(violations="none"), "field 'violations' must be a list, got 'none'"),
])
def test_a_bad_summary_field_is_named(two_placements, mutate, message) -> None:
    d = two_placements[1].to_dict()
    mutate(d["summary"])
    with pytest.raises(PlacementError,
                       match=f"^placement p.json: summary: .*{re.escape(message)}$"):
        Placement.from_dict(d, source="p.json")


@pytest.mark.parametrize("value", [-5, 0, 1.5, True, "12", float("nan")])
def test_bad_expert_bytes_is_rejected(two_placements, value) -> None:
    # was: accepted (-5 -> negative bytes to migrate; 1.5 and true read as 1 byte)
    d = two_placements[0].to_dict()
    d["expert_bytes"] = value
    with pytest.raises(PlacementError, match=r"^placement p.json: field 'expert_bytes' must be a "
                       r"positive integer \(bytes of one expert's weights\), got "):
        Placement.from_dict(d, source="p.json")
    d["expert_bytes"] = 12582912.0  # integral: fine
    assert Placement.from_dict(d).expert_bytes == 12582912


@pytest.mark.parametrize("method", ["expert_to_devices", "device_to_experts",
                                    "physical_to_logical"])
def test_a_layer_that_is_not_there_is_one_error(two_placements, method: str) -> None:
    # was numpy's "IndexError: index 5 is out of bounds for axis 0 with size 2"
    p, _ = two_placements
    lookup = getattr(p, method)
    for bad in (p.num_layers, -p.num_layers - 1, 0.5, "0"):
        with pytest.raises(PlacementError, match=f"no layer {bad!r} in this placement"):
            lookup(bad)
    assert lookup(-1) == lookup(p.num_layers - 1)  # negative layers count from the end


@dataclass(frozen=True)
class _Fields:
    count: int | None
    label: Optional[str]  # noqa: UP045 (this spelling too: str | None once resolved)
    rates: dict[str, float]
    sizes: tuple[int, ...] = ()


def test_summary_fields_are_checked_by_their_resolved_types() -> None:
    # was: KeyError 'int | None' (kinds were looked up by the annotation's text)
    got = _summary_fields(_Fields, {"count": None, "label": "a", "rates": {"x": 1.0},
                                    "sizes": [1, 2]}, "s")
    assert got == {"count": None, "label": "a", "rates": {"x": 1.0}, "sizes": [1, 2]}
    assert _summary_fields(_Fields, {"count": 3.0, "label": None, "rates": {}}, "s") == {
        "count": 3, "label": None, "rates": {}}
    with pytest.raises(PlacementError, match=r"^s: field 'count' must be an integer or null, "
                       r"got 1\.5; field 'label' must be a string or null, got 2$"):
        _summary_fields(_Fields, {"count": 1.5, "label": 2, "rates": {}}, "s")


@dataclass(frozen=True)
class _Unchecked:
    name: str
    tags: frozenset[str]


def test_a_summary_field_type_without_a_check_is_named() -> None:
    # was: KeyError: 'frozenset[str]', naming neither the class nor the field
    with pytest.raises(TypeError, match=r"^_Unchecked\.tags: no JSON check for a field of type "
                       r"frozenset\[str\]; add one to placement\.result\._FIELD_KINDS$"):
        _summary_fields(_Unchecked, {"name": "a", "tags": ["x"]}, "s")


@pytest.mark.parametrize(("text", "name"), [
    ("energy", "energy"), ("latency=1", "latency"), ("latency=0.5", "latency=0.5"),
    ("balance=2", "balance=2"), ("energy=1,latency=0.5", "energy=1,latency=0.5"),
    ("energy=0,latency=0.25", "latency=0.25"),
])
def test_objective_name_keeps_weights(text: str, name: str) -> None:
    # was: 'latency=0.5' named 'latency' (a single term dropped its weight)
    from wattmoe.placement import Objective

    assert Objective.parse(text).name == name
    assert Objective.parse(name) == Objective.parse(text)


def test_objective_name_reads_back_exactly() -> None:
    from wattmoe.placement import Objective

    o = Objective(energy=1 / 3, latency=0.1)
    assert Objective.parse(o.name) == o


@pytest.fixture(scope="module")
def milp_placement() -> Placement:
    loads = synthetic_loads(1, 12, 2, 400, "zipf:1.1", seed=5)
    problem = make_problem(load_cluster("laptop"), loads, SHAPE, AnalyticCostProvider(),
                           "energy")
    return solve(problem, "milp")


def test_the_milp_bound_round_trips_exactly(milp_placement) -> None:
    p = milp_placement
    assert p.objective_lower_bound is not None and p.gap_above_bound is not None
    d = json.loads(p.to_json())
    assert d["objective_lower_bound"] == p.objective_lower_bound
    assert d["gap_above_bound"] == p.gap_above_bound
    back = Placement.from_json(p.to_json())
    assert back.objective_lower_bound == p.objective_lower_bound  # exactly, not approx
    assert back.gap_above_bound == p.gap_above_bound
    assert back.to_dict() == p.to_dict()


def test_a_file_without_the_bound_loads(two_placements, milp_placement) -> None:
    # files written before the bound was recorded have neither field
    for p in (two_placements[1], milp_placement):
        d = p.to_dict()
        del d["objective_lower_bound"], d["gap_above_bound"]
        back = Placement.from_dict(d)
        assert back == p and back.objective_lower_bound is None and back.gap_above_bound is None
    # the heuristic proves none: written as null, read back as None
    assert two_placements[1].to_dict()["objective_lower_bound"] is None
    assert Placement.from_json(two_placements[1].to_json()).objective_lower_bound is None


@pytest.mark.parametrize(("field_", "value", "message"), [
    ("objective_lower_bound", "0.5",
     "field 'objective_lower_bound' must be a finite number or null, got '0.5'"),
    ("objective_lower_bound", True,
     "field 'objective_lower_bound' must be a finite number or null, got True"),
    ("objective_lower_bound", float("nan"),
     "field 'objective_lower_bound' must be a finite number or null, got nan"),
    ("gap_above_bound", [0.1], "field 'gap_above_bound' must be a finite number or null, got "
                               "list"),
])
def test_a_bad_bound_is_one_error_naming_it(milp_placement, field_, value, message) -> None:
    d = milp_placement.to_dict()
    d[field_] = value
    with pytest.raises(PlacementError, match=f"^{re.escape('placement p.json: ' + message)}$"):
        Placement.from_dict(d, source="p.json")


def test_a_gap_that_disagrees_with_the_bound_is_rejected(milp_placement) -> None:
    # the gap is derived from the bound and the summary's objective, and checked against them
    # as replica_counts are against the maps
    d = milp_placement.to_dict()
    d["gap_above_bound"] = 0.5
    with pytest.raises(PlacementError, match=r"^placement p.json: field 'gap_above_bound' is "
                                             r"0.5, but the objective .* make it "):
        Placement.from_dict(d, source="p.json")
    d["objective_lower_bound"] = d["summary"]["objective"] / 1.5
    assert Placement.from_dict(d).gap_above_bound == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5"])
def test_a_placement_refuses_a_bound_that_is_no_finite_number(milp_placement, value) -> None:
    # (it would be written as NaN or Infinity: not JSON)
    p = milp_placement
    with pytest.raises(PlacementError, match=r"^objective_lower_bound must be a finite number "
                                             r"or None, got "):
        Placement(p.device_names, p.assignment, p.expert_bytes, summary=p.summary,
                  objective_lower_bound=value)


@pytest.mark.parametrize(("field_", "message"), [
    ("expert_bytes", "field 'expert_bytes' must be a positive integer (bytes of one expert's "
                     "weights), got inf"),
    ("num_layers", "field 'num_layers' must be an integer, got inf"),
    ("solve_time_s", None),  # a number: inf is one
])
def test_an_integer_beyond_float_range_in_a_file_is_one_error(two_placements, field_,
                                                              message) -> None:
    # was: OverflowError 'int too large to convert to float' (math.isfinite, float()) for a
    # JSON integer of 400 digits, a traceback from place-diff
    text = two_placements[0].to_json()
    d = json.loads(text)
    d[field_] = "HUGE"
    text = json.dumps(d).replace('"HUGE"', "1" + "0" * 400)
    if message is None:
        assert Placement.from_json(text, source="p.json").solve_time_s == float("inf")
        return
    with pytest.raises(PlacementError, match=f"^placement p.json: {re.escape(message)}$"):
        Placement.from_json(text, source="p.json")
