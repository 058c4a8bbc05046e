"""The versioned JSON: round trip, atomic write, and one clear error per bad file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cost_model.conftest import SHAPE_A, synthetic_db, synthetic_point
from wattmoe.cost_model import (
    SCHEMA_VERSION,
    KernelCostModel,
    KernelTime,
    ProfileFormatError,
    load_profile,
    save_profile,
)


def test_round_trip_keeps_every_field(tmp_path: Path, linear_db) -> None:
    linear_db.points[0].kernels = [KernelTime("sm90_xmma_gemm_bf16", 2.0, 1.5e-5)]
    linear_db.points[0].hw_counters = {"dram_bytes": 1.0e6}
    linear_db.points[0].clock_event_reasons = ["sw_power_cap"]
    path = save_profile(linear_db, tmp_path / "p.json")
    back = load_profile(path)
    assert back.points == linear_db.points
    assert back.devices == linear_db.devices
    assert back.provenance == linear_db.provenance
    assert back.schema_version == SCHEMA_VERSION
    raw = json.loads(path.read_text())
    assert raw["format"] == "wattmoe.cost_model.profile"
    assert {"machine", "commit", "command"} <= set(raw["provenance"])
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away
    m = KernelCostModel.load(path)
    assert m.get_cost("expert", 64, "cuda:0", "bf16", shape=SHAPE_A).method == "profiled"


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    db = synthetic_db([synthetic_point("expert", 1, SHAPE_A)])
    db.points[0].peak_power_w = float("nan")
    back = load_profile(save_profile(db, tmp_path / "p.json"))
    assert back.points[0].peak_power_w is None


def _write(tmp_path: Path, payload) -> Path:
    p = tmp_path / "bad.json"
    p.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return p


def _valid(tmp_path: Path) -> dict:
    db = synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (1, 4)])
    return json.loads(save_profile(db, tmp_path / "ok.json").read_text())


def test_corrupt_json(tmp_path: Path) -> None:
    p = _write(tmp_path, '{"format": "wattmoe.cost_model.profile", "points": [')
    with pytest.raises(ProfileFormatError, match=r"is corrupt: not valid JSON"):
        KernelCostModel.load(p)


def test_a_sweep_log_is_not_called_corrupt(tmp_path: Path) -> None:
    # a new user's trial: `wattmoe cost --profile x.jsonl` (all an interrupted `wattmoe
    # profile` leaves) said "profile 'x.jsonl' is corrupt: not valid JSON (Extra data at line
    # 2)"; the file is a sound sweep log
    log = tmp_path / "x.jsonl"
    log.write_text('{"kind": "point"}\n{"kind": "point"}\n')
    with pytest.raises(ProfileFormatError) as err:
        KernelCostModel.load(log)
    assert str(err.value) == (
        f"{str(log)!r} is a sweep log (.jsonl, one scenario a line), not a profile JSON: the "
        f"same `wattmoe profile` command with --resume writes the profile "
        f"{str(tmp_path / 'x.json')!r} from it")


def test_wrong_version(tmp_path: Path) -> None:
    raw = _valid(tmp_path)
    raw["schema_version"] = 99
    with pytest.raises(ProfileFormatError, match=r"schema version 99 is not supported; this "
                                                 r"wattmoe reads version 1"):
        KernelCostModel.load(_write(tmp_path, raw))


def test_not_a_profile(tmp_path: Path) -> None:
    with pytest.raises(ProfileFormatError, match="not a wattmoe profile"):
        load_profile(_write(tmp_path, {"hello": 1}))
    with pytest.raises(ProfileFormatError, match="top level is not an object"):
        load_profile(_write(tmp_path, [1, 2]))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileFormatError, match="cannot read profile"):
        load_profile(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("provenance"), "missing field 'provenance'"),
        (lambda r: r["provenance"].pop("commit"), "missing field 'commit'"),
        (lambda r: r["points"][0].pop("latency_s"), "point 0: missing field 'latency_s'"),
        (lambda r: r["points"][1].update(latency_s=-1.0), "point 1: latency_s must be > 0"),
        (lambda r: r["points"][0].update(device="cuda:3"), "device 'cuda:3' is not in 'devices'"),
        (lambda r: r["points"][0].update(tokens="8"), "field 'tokens' has the wrong type"),
        (lambda r: r["points"][0].update(energy_j=-2.0), "energy_j must be >= 0"),
        # was: accepted, then log(-4) warnings and "no energy was measured for expert"
        (lambda r: r["points"][0].update(tokens=-4), "point 0: tokens must be >= 1, got -4"),
        # was: accepted, and every figure the profile answered said it was 'guessed'
        (lambda r: r["points"][0].update(source="guessed"),
         "point 0: source must be one of measured, estimated, simulated, replayed, got "
         "'guessed'"),
        # was: "point 1: ProfilePoint.__init__() missing 1 required positional argument: ..."
        (lambda r: r["points"][1].pop("energy_j"), "point 1: missing field 'energy_j'"),
        (lambda r: r["points"][0].pop("reps"), "point 0: missing field 'reps'"),
        (lambda r: r["points"][0]["shape"].pop("hidden"), "point 0: shape: missing field "
         "'hidden'"),
        # was: a TypeError traceback ('>=' not supported between 'str' and 'int')
        (lambda r: r["points"][0].update(energy_j="5"), "point 0: field 'energy_j' has the "
         "wrong type \\(str\\)"),
        # was: accepted as 1 token / 1 second
        (lambda r: r["points"][0].update(tokens=True), "point 0: field 'tokens' has the wrong "
         "type \\(bool\\)"),
        # was: accepted; a NaN or negative idle power then went into every energy answer
        (lambda r: r["devices"]["cuda:0"].update(idle_power_w=float("nan")),
         "device 'cuda:0': idle_power_w must be a number >= 0 or null, got nan"),
        (lambda r: r["devices"]["cuda:0"].update(idle_power_w=-5.0),
         "device 'cuda:0': idle_power_w must be a number >= 0 or null, got -5.0"),
        (lambda r: r["devices"]["cuda:0"].update(idle_power_w="80"),
         "device 'cuda:0': idle_power_w must be a number >= 0 or null, got '80'"),
        # was: accepted; the first query then ended in a TypeError traceback ('>' not
        # supported between 'float' and 'str') where a prediction is capped at the limit
        (lambda r: r["devices"]["cuda:0"].update(power_limit_w="700"),
         "device 'cuda:0': power_limit_w must be a number >= 0 or null, got '700'"),
        (lambda r: r["devices"]["cuda:0"].update(min_window_s=None),
         "device 'cuda:0': min_window_s must be a number >= 0, got None"),
        (lambda r: r["devices"]["cuda:0"].update(counter_period_s=float("nan")),
         "device 'cuda:0': counter_period_s must be a number >= 0 or null, got nan"),
        (lambda r: r["devices"].update({"cuda:0": [1, 2]}), "device 'cuda:0' is not an object"),
        # was: accepted; the model then raised a ValueError traceback (could not convert
        # string to float) or read a negative time per call as the point's latency
        (lambda r: r["points"][0].update(avg_power_w="300"),
         "point 0: avg_power_w must be a number >= 0 or null, got '300'"),
        (lambda r: r["points"][1].update(window_mean_latency_s=-1e-3),
         "point 1: window_mean_latency_s must be a number > 0 or null, got -0.001"),
        (lambda r: r["points"][0].update(flops=None), "point 0: flops must be a number >= 0, "
         "got None"),
        (lambda r: r["points"][0].update(peak_power_w=float("inf")),
         "point 0: peak_power_w must be a number >= 0 or null, got inf"),
        (lambda r: r["points"][0].update(window_calls="many"),
         "point 0: window_calls must be an integer >= 0, got 'many'"),
        (lambda r: r["points"][0].update(energy_j=float("inf")), "point 0: energy_j must be "
         ">= 0, got inf"),
    ],
)
def test_invalid_fields_name_the_field(tmp_path: Path, mutate, message) -> None:
    raw = _valid(tmp_path)
    mutate(raw)
    with pytest.raises(ProfileFormatError, match=message):
        load_profile(_write(tmp_path, raw))
