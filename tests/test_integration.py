"""One chain across packages: profile real kernels (telemetry windows) -> KernelCostModel ->
placement. Each package has its own tests; this checks that their contracts meet."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattmoe.cost_model import KernelCostModel
from wattmoe.cost_model.profiler import ProfilerConfig, device_name
from wattmoe.cost_model.runner import run_profile
from wattmoe.cost_model.scenarios import SweepConfig
from wattmoe.moe import get_preset
from wattmoe.placement import (
    ExpertShape,
    cluster_from_dict,
    make_problem,
    profile_cost_provider,
    solve,
    synthetic_loads,
)
from wattmoe.placement.analytic import device_slug
from wattmoe.telemetry import GpuSystemMonitor


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "cpu.json"
    sweep = SweepConfig(shapes=("tiny",), dtypes=("fp32",), devices=("cpu",), ops=("expert",),
                        tokens=(1, 16, 256))
    cfg = ProfilerConfig(min_window_s=0.3, cpu_min_window_s=0.3, cooldown_max_s=0.0,
                         torch_profiler=False, reps=10, idle_window=True)
    with GpuSystemMonitor(devices=["cpu"]) as mon:
        run_profile(sweep, cfg, mon, out, command="tests/test_integration.py")
    return out


def test_profile_to_cost_model_to_placement(cpu_profile: Path) -> None:
    model = KernelCostModel.load(cpu_profile)
    tiny = get_preset("tiny")
    lat, energy = model.expert_cost("cpu", 16, tiny.hidden_size, tiny.expert_inner_size,
                                    "swiglu", "fp32")
    cost = model.get_cost("expert", 16, "cpu", "fp32", shape="tiny")
    assert lat == pytest.approx(cost.latency_s) and energy == pytest.approx(cost.energy_j)
    # a point measured here may fall below a smaller batch's (noise): made monotone, it says so
    assert cost.method in ("profiled", "profiled (monotone)") and lat > 0 and energy > 0
    # no RAPL on CI machines: the CPU's energy is an estimate and says so
    assert cost.source in ("estimated", "measured")

    cost_device = device_slug(device_name("cpu"))
    cluster = cluster_from_dict({
        "name": "one-cpu",
        "nodes": [{"name": "n0"}],
        "devices": [{"name": "cpu0", "kind": "cpu", "node": "n0", "cost_device": cost_device,
                     "memory_bytes": 1e9, "always_on": True}],
        "links": [],
        "token_home": ["cpu0"],
    })
    loads = synthetic_loads(1, tiny.num_experts, top_k=tiny.top_k, tokens_per_batch=16,
                            skew="zipf:1.0", seed=0)
    problem = make_problem(cluster, loads, ExpertShape(tiny.hidden_size, tiny.expert_inner_size,
                                                       "swiglu", "fp32"),
                           profile_cost_provider(model, label=str(cpu_profile)))
    placement = solve(problem, "heuristic")
    s = placement.summary
    assert s.energy_source == "estimated"  # a placement's energy is always a prediction
    assert str(cpu_profile) in s.cost_sources["cpu0"]  # the profile answered, not the roofline
    assert sorted(placement.device_to_experts(0)["cpu0"]) == list(range(tiny.num_experts))
    assert s.energy_j_per_token > 0 and s.latency_s > 0
