"""The profiler with a fake telemetry monitor: energy accounting, JSONL, resume, cooldown."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cost_model.conftest import FakeBackend, FakeMonitor
from wattmoe.cost_model import scenarios as scenarios_mod
from wattmoe.cost_model.base import CostModelError
from wattmoe.cost_model.profiler import (
    KernelProfiler,
    ProfilerConfig,
    read_jsonl,
    shortest_accurate_window_s,
)
from wattmoe.cost_model.runner import run_profile
from wattmoe.cost_model.scenarios import Scenario, SweepConfig, build_sweep
from wattmoe.moe import resolve_shape

FAST = {"min_window_s": 0.03, "cooldown_max_s": 0.0, "torch_profiler": False, "reps": 10,
        "idle_window": False}


def tiny(op: str = "expert", n: int = 8, dtype: str = "fp32") -> Scenario:
    return Scenario(op, resolve_shape("tiny"), dtype, "cpu", n)


def test_energy_is_window_energy_over_calls(fake_monitor) -> None:
    prof = KernelProfiler(fake_monitor, ProfilerConfig(**FAST))
    p = prof.measure(tiny())
    assert p.window_calls >= p.reps == 10
    assert p.window_s >= 0.03
    # the fake device draws 50 W: energy per call = 50 W x window / calls
    assert p.energy_j == pytest.approx(50.0 * p.window_s / p.window_calls, rel=0.05)
    assert p.source == "estimated" and p.measurable
    assert p.latency_p10_s <= p.latency_s <= p.latency_p90_s
    assert p.flops == 2 * 8 * 3 * 64 * 128 + 5 * 8 * 128
    assert p.peak_power_w == pytest.approx(55.0)
    assert not p.edges_aligned  # the CPU estimate has no coarse counter to align to


def test_unmeasurable_window_keeps_latency_without_energy() -> None:
    mon = FakeMonitor(measurable=False)
    p = KernelProfiler(mon, ProfilerConfig(**FAST)).measure(tiny())
    assert p.energy_j is None and not p.measurable and p.note == "too short"
    assert p.latency_s > 0


def test_windows_align_to_a_coarse_measured_counter() -> None:
    class TickBackend(FakeBackend):
        def energy_j(self, device: str) -> float:
            return round(time.monotonic() / 0.02) * 0.02 * self.power_w  # updates every 20 ms

    mon = FakeMonitor(backend=TickBackend(source="measured", counter_period_s=0.02))
    p = KernelProfiler(mon, ProfilerConfig(**FAST)).measure(tiny())
    assert p.edges_aligned
    assert p.source == "measured"


def test_torch_profiler_names_the_ops(fake_monitor) -> None:
    cfg = ProfilerConfig(**{**FAST, "torch_profiler": True})
    p = KernelProfiler(fake_monitor, cfg).measure(tiny())
    names = {k.name for k in p.kernels}
    assert "aten::mm" in names or "aten::addmm" in names
    assert all(k.device_time_s > 0 for k in p.kernels)


def test_cooldown_waits_for_the_baseline_temperature() -> None:
    @dataclass
    class Cooling(FakeBackend):
        t_hot_until: float = 0.0

        def sample(self, device):
            self.temperature_c = 60.0 if time.monotonic() < self.t_hot_until else 40.0
            return super().sample(device)

    be = Cooling()
    prof = KernelProfiler(FakeMonitor(backend=be),
                          ProfilerConfig(cooldown_max_s=2.0, cooldown_poll_s=0.01,
                                         cooldown_tolerance_c=3.0, idle_window=False))
    prof.device_info("cpu")  # baseline 40 C
    be.t_hot_until = time.monotonic() + 0.2
    waited = prof.cooldown("cpu")
    assert 0.15 < waited < 1.0
    be.t_hot_until = time.monotonic() + 10
    assert prof.cooldown("cpu") == pytest.approx(2.0, abs=0.2)  # capped by cooldown_max_s


def test_idle_window_records_idle_power(fake_monitor) -> None:
    prof = KernelProfiler(fake_monitor, ProfilerConfig(min_window_s=0.02))
    info = prof.device_info("cpu")
    assert info.idle_power_w == pytest.approx(50.0, rel=0.05)
    assert info.source == "estimated" and info.min_window_s == 0.02


def test_sweep_writes_jsonl_incrementally_and_resumes(tmp_path: Path, fake_monitor) -> None:
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert", "activation"),
                        tokens=(1, 16))
    out = tmp_path / "p.json"
    seen_lines = []

    def progress(sc, p, msg):
        seen_lines.append(len(out.with_suffix(".jsonl").read_text().splitlines()))

    db, res = run_profile(sweep, ProfilerConfig(**FAST), fake_monitor, out, progress=progress)
    assert len(db.points) == 4 and not res.errors
    # every scenario was on disk before the next one started
    assert seen_lines == [3, 4, 5, 6]  # run + device records, then one line per point
    # an interrupted write leaves a truncated last line: it is ignored
    jl = out.with_suffix(".jsonl")
    jl.write_text(jl.read_text() + '{"record": "point", "op": "exp')
    assert len(read_jsonl(jl).points) == 4
    bigger = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert", "activation"),
                         tokens=(1, 16, 64))
    jl.write_text("\n".join(jl.read_text().splitlines()[:-1]) + "\n")
    db2, res2 = run_profile(bigger, ProfilerConfig(**FAST), fake_monitor, out, resume=True,
                            command="second run")
    assert len(db2.points) == 6
    assert len(res2.points) == 6
    assert "second run" in db2.provenance["command"] and " ; " in db2.provenance["command"]
    saved = json.loads(out.read_text())
    assert len(saved["points"]) == 6


def test_resume_after_a_torn_last_line(tmp_path: Path, fake_monitor) -> None:
    # an interrupted write leaves a last line without its newline; --resume used to append
    # after it, gluing its first record onto the torn one: the sweep then measured everything
    # left and failed at the end ("line N is not JSON"), and every later --resume did too
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert",), tokens=(1, 16))
    out = tmp_path / "p.json"
    run_profile(sweep, ProfilerConfig(**FAST), fake_monitor, out)
    jl = out.with_suffix(".jsonl")
    jl.write_text(jl.read_text() + '{"record": "point", "op": "exp')
    bigger = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert",), tokens=(1, 16, 64))
    db, _ = run_profile(bigger, ProfilerConfig(**FAST), fake_monitor, out, resume=True)
    assert sorted(p.tokens for p in db.points) == [1, 16, 64]
    assert all(json.loads(line) for line in jl.read_text().splitlines())
    assert len(read_jsonl(jl).runs) == 2


def test_a_new_sweep_keeps_the_previous_jsonl_aside(tmp_path: Path, fake_monitor) -> None:
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert",), tokens=(1,))
    out = tmp_path / "p.json"
    run_profile(sweep, ProfilerConfig(**FAST), fake_monitor, out)
    first = out.with_suffix(".jsonl").read_text()
    run_profile(sweep, ProfilerConfig(**FAST), fake_monitor, out)  # no --resume
    kept = list(tmp_path.glob("p.jsonl.*.bak"))
    assert len(kept) == 1 and kept[0].read_text() == first
    assert len(read_jsonl(out.with_suffix(".jsonl")).points) == 1


def test_a_sweep_that_measures_nothing_leaves_the_profile_as_it_was(tmp_path: Path,
                                                                    fake_monitor) -> None:
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert",), tokens=(1, 4))
    out = tmp_path / "p.json"
    out.write_text('{"points": []}')
    # a deadline past before the first scenario would start: no scenario runs
    with pytest.raises(CostModelError, match=r"no scenario was measured \(2 not run\); .* "
                                             r"was not written and is left as it was"):
        run_profile(sweep, ProfilerConfig(**{**FAST, "deadline_s": 1e-12}), fake_monitor, out)
    assert out.read_text() == '{"points": []}'


def test_a_failing_scenario_is_recorded_and_the_sweep_goes_on(tmp_path: Path, fake_monitor,
                                                              monkeypatch) -> None:
    real = scenarios_mod.build_runner

    def flaky(sc, seed=0):
        if sc.op == "activation":
            raise RuntimeError("boom")
        return real(sc, seed)

    monkeypatch.setattr("wattmoe.cost_model.profiler.build_runner", flaky)
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("activation", "expert"),
                        tokens=(4,))
    db, res = run_profile(sweep, ProfilerConfig(**FAST), fake_monitor, tmp_path / "p.json")
    assert [p.op for p in db.points] == ["expert"]
    assert res.errors == [{"scenario": "activation tiny fp32 cpu n=4",
                           "error": "RuntimeError: boom"}]
    assert db.errors == res.errors


def test_deadline_stops_starting_scenarios(fake_monitor) -> None:
    scs, _ = build_sweep(SweepConfig(shapes=("tiny",), dtypes=("fp32",), ops=("expert",),
                                     tokens=(1, 2, 4, 8)))
    cfg = ProfilerConfig(**{**FAST, "deadline_s": 1e-12})  # past before the first scenario
    res = KernelProfiler(fake_monitor, cfg).run_sweep(scs)
    assert res.points == [] and len(res.skipped) == 4


def test_shortest_accurate_window(tmp_path: Path) -> None:
    assert shortest_accurate_window_s(tmp_path / "absent.json") == 1.0
    p = tmp_path / "summary.json"
    p.write_text(json.dumps({"shortest_accurate_window_s": 0.6}))
    assert shortest_accurate_window_s(p) == 0.6
    p.write_text("garbage")
    assert shortest_accurate_window_s(p) == 1.0


def test_profiler_config_is_validated() -> None:
    from wattmoe.errors import ConfigError

    with pytest.raises(ConfigError, match="min_reps <= reps"):
        ProfilerConfig(reps=3, min_reps=5)
    with pytest.raises(ConfigError, match="min_window_s must be > 0"):
        ProfilerConfig(min_window_s=0)
