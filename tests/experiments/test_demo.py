from __future__ import annotations

import numpy as np
import pytest

from wattmoe.errors import ConfigError, DeviceError
from wattmoe.experiments.demo import run_demo


def test_demo_measures_and_places_the_measured_loads() -> None:
    r = run_demo("tiny", 1.0, batch=2, seq=16, steps=3, warmup=1, cluster="h200-cpu")
    assert r.tokens_per_step == 32 and r.steps == 3
    # every token goes to top_k experts in every timed step
    assert sum(r.expert_counts) == 3 * 32 * r.top_k
    assert r.energy_source in ("measured", "estimated")
    assert r.energy_j is None or r.energy_j > 0
    by = {p.solver: p for p in r.placements}
    assert set(by) == {"heuristic", "eplb", "round-robin"}
    for p in r.placements:
        assert p.energy_source == "estimated"
        assert sum(p.experts_per_device.values()) >= r.num_experts  # replicas count
    # the energy-aware heuristic is never worse than the baselines on its own objective
    assert by["heuristic"].energy_j_per_token <= by["round-robin"].energy_j_per_token + 1e-12
    assert by["heuristic"].energy_j_per_token <= by["eplb"].energy_j_per_token + 1e-12


def test_demo_without_cluster_skips_placement() -> None:
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=None)
    assert r.placements == () and r.cluster == ""


def test_demo_bad_input() -> None:
    with pytest.raises(ConfigError, match="steps, batch and seq must be positive"):
        run_demo("tiny", steps=0)


def test_demo_other_backend_and_int4() -> None:
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=2, warmup=1, cluster=None,
                 backend="grouped", int4=True)
    # tiny's default group: 32 since session 17 (64 before), whose halves of a row are whole
    assert r.backend == "grouped" and r.weights.startswith("int4 (group 32)")
    assert sum(r.expert_counts) == 2 * 8 * r.top_k
    # fused_graph captures CUDA graphs: on a CPU it runs a fallback, or its kernels eagerly in
    # Triton's interpreter where the tests imported Triton under TRITON_INTERPRET=1; the
    # result says which
    from wattmoe.experiments.demo import interpreting

    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=None,
                 backend="fused_graph")
    assert r.backend.startswith("fused_graph (Triton's interpreter on cpu" if interpreting()
                                else "fused_graph (runs a fallback on cpu")


def test_demo_auto_says_what_it_ran() -> None:
    # the choice is recorded: which backend auto ran in the timed steps, and why
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=2, warmup=1, cluster=None, backend="auto")
    assert r.backend.startswith("auto: ") and "of 2 steps" in r.backend
    ran = r.backend.removeprefix("auto: ").split(" (")[0]
    from wattmoe.moe.backends import EXPERT_BACKENDS

    assert ran in EXPERT_BACKENDS and ran != "auto"


def test_demo_runs_auto_by_default_and_says_when_it_calibrated(fresh_auto: dict) -> None:
    # was: loop by default, the costliest backend, and nothing said about it
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=2, warmup=1, cluster=None)
    assert r.backend.startswith("auto: ") and "(calibrated; 2 of 2 steps)" in r.backend
    assert "calibrated in the timed steps" not in r.energy_note  # the warm-up step decided
    # with no warm-up step the first timed step calibrates, in the time and energy measured
    fresh_auto.clear()
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=2, warmup=0, cluster=None)
    assert "auto calibrated in the timed steps (" in r.energy_note
    assert "warm-up steps keep that out" in r.energy_note


def test_demo_labels_the_fused_kernels_under_the_interpreter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # under TRITON_INTERPRET=1 the fused backend runs its Triton kernels on the CPU (no
    # fallback); whether Triton interprets is decided when it is first imported
    import wattmoe.experiments.demo as demo

    monkeypatch.setattr(demo, "interpreting", lambda: True)
    r = demo.run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=None,
                      backend="fused")
    assert r.backend == "fused (Triton's interpreter on cpu: TRITON_INTERPRET=1)"
    monkeypatch.setattr(demo, "interpreting", lambda: False)
    r = demo.run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=None,
                      backend="fused")
    assert "runs a fallback on cpu" in r.backend


def test_demo_unknown_backend_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown expert backend 'fusd'"):
        run_demo("tiny", steps=1, backend="fusd")


def test_int4_group_size() -> None:
    from wattmoe.experiments.demo import int4_group_size

    assert int4_group_size(2048, 1408) == 64  # Qwen1.5-MoE: pairs need 64 (128 before)
    assert int4_group_size(768, 96) == 32  # no pair group (halves of 48): the old rule
    with pytest.raises(ConfigError, match="no int4 group size"):
        int4_group_size(63, 128)

@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", "cuda"])
def test_demo_unknown_device_is_one_clear_error(device: str) -> None:
    # was: a RuntimeError/AssertionError traceback from torch (or, for 'cuda', a KeyError
    # after the run: the monitor names it cuda:0)
    with pytest.raises(ConfigError, match=f"unknown device '{device}'; use 'cpu' or 'cuda:N'"):
        run_demo("tiny", steps=1, device=device)


def test_demo_absent_gpu_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda:0' is not available here: torch sees 0"):
        run_demo("tiny", steps=1, device="cuda:0")


def test_demo_unknown_cluster_fails_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # was: the whole timed run first (a minute at --steps 30), then the cluster's error
    import wattmoe.experiments.demo as demo

    def no_block(*args, **kwargs):
        raise AssertionError("the block was built before the cluster was checked")

    monkeypatch.setattr(demo, "MoETransformerBlock", no_block)
    with pytest.raises(ConfigError, match="unknown cluster 'nope'"):
        run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster="nope")


def test_demo_int4_places_int4_experts(monkeypatch: pytest.MonkeyPatch) -> None:
    # the experts measured are packed int4: the placement must price int4 weights (memory and
    # bytes read), not the fp32 compute dtype's (was: dtype_name(dt), 'fp32')
    import wattmoe.experiments.demo as demo

    seen: list[str] = []
    real = demo.place_measured_loads

    def spy(layer, tokens, cluster, dtype, *args, **kwargs):
        seen.append(dtype)
        return real(layer, tokens, cluster, dtype, *args, **kwargs)

    monkeypatch.setattr(demo, "place_measured_loads", spy)
    run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster="h200-cpu", int4=True)
    run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster="h200-cpu")
    assert seen == ["int4", "fp32"]


def test_demo_places_with_the_backend_its_experts_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    # int4 experts run by the fused kernels hold a copy of their weights on a GPU: the
    # placement of their loads must size a GPU replica with it (was: no backend, weights only)
    import wattmoe.placement as placement

    seen: list[tuple[str | None, object]] = []
    real = placement.make_problem

    def spy(cluster, loads, *args, **kwargs):
        problem = real(cluster, loads, *args, **kwargs)
        seen.append((kwargs.get("backend"), problem))
        return problem

    monkeypatch.setattr(placement, "make_problem", spy)
    run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster="h200-cpu", int4=True,
             backend="fused")
    assert [b for b, _ in seen] == ["fused", "fused"]  # the check, then the placement
    graph = seen[-1][1].graph
    gpu = list(graph.device_names).index("gpu0")
    shape = graph.shape
    assert graph.replica_bytes[gpu] == shape.weight_bytes + shape.fused_copy_bytes
    assert shape.fused_copy_bytes > 0


def test_demo_places_the_loads_of_one_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # the layer's counts add up over the timed steps; the placement's batch is one step of
    # batch x seq tokens, so its loads are the counts / steps (was: the sum over 3 steps with
    # the tokens of one, 3x the work per token: inflated energy per token)
    import wattmoe.placement as placement

    seen = []
    real = placement.make_problem

    def spy(cluster, loads, *args, **kwargs):
        seen.append(loads)
        return real(cluster, loads, *args, **kwargs)

    monkeypatch.setattr(placement, "make_problem", spy)
    r = run_demo("tiny", 1.0, batch=2, seq=16, steps=3, warmup=1, cluster="h200-cpu")
    check, loads = seen  # the first: the check before the timed run, with uniform loads
    assert check.source.startswith("uniform")
    assert loads.tokens_per_batch == 32
    assert loads.tokens.sum() == pytest.approx(32 * r.top_k)
    np.testing.assert_allclose(loads.tokens[0], np.array(r.expert_counts) / 3)


def test_demo_interrupted_keeps_the_steps_it_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C during the timed steps: was a bare "interrupted" and nothing of what was measured
    # (demo --steps 1000, stopped after a minute). Now the finished steps are reported, and
    # a step cut off after its routing counted does not leak into the placed loads.
    from wattmoe.moe import SimpleMoELayer

    real = SimpleMoELayer.forward
    calls: list[int] = []

    def stop_in_the_fourth_call(self, *args, **kwargs):
        calls.append(1)
        out = real(self, *args, **kwargs)  # routing counted this step's tokens
        if len(calls) == 4:  # 1 warm-up, 2 timed steps, then Ctrl-C mid-step
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(SimpleMoELayer, "forward", stop_in_the_fourth_call)
    r = run_demo("tiny", 1.0, batch=2, seq=16, steps=10, warmup=1, cluster="h200-cpu")
    assert (r.steps, r.steps_requested) == (2, 10)
    assert sum(r.expert_counts) == 2 * 32 * r.top_k
    assert {p.solver for p in r.placements} == {"heuristic", "eplb", "round-robin"}
    assert "interrupted after 2 of 10 timed steps" in r.energy_note
    # the window also covers the step cut off: joules over the finished tokens would be too
    # high (41% with the step cut off late), so none are reported
    assert r.energy_j is None and r.energy_per_token_j is None
    assert "no energy per token" in r.energy_note
    # auto's choices: those of the finished steps only (was "3 of 2 steps")
    calls.clear()
    r = run_demo("tiny", 1.0, batch=2, seq=16, steps=10, warmup=1, cluster=None,
                 backend="auto")
    ran = [int(part.split(" of ")[0].rsplit(" ", 1)[-1])
           for part in r.backend.removeprefix("auto: ").split("), ")]
    assert r.steps == 2 and sum(ran) == 2, r.backend
    # interrupted before any timed step finished: nothing to report, the interrupt goes on
    def stop_at_once(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SimpleMoELayer, "forward", stop_at_once)
    with pytest.raises(KeyboardInterrupt):
        run_demo("tiny", 1.0, batch=1, seq=8, steps=3, warmup=0, cluster=None)


def test_demo_runs_a_shape_key() -> None:
    # a model that is no preset, named as `wattmoe profile --shapes` names it (was: "unknown
    # preset 'h96_f200_relu_e6_k3'")
    r = run_demo("h96_f200_relu_e6_k3", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=None)
    assert (r.hidden_size, r.expert_inner_size, r.num_experts, r.top_k) == (96, 200, 6, 3)
    assert sum(r.expert_counts) == 8 * 3
    r = run_demo("h96_f200_relu_e6_k3", 0.5, batch=1, seq=8, steps=1, warmup=0, cluster=None)
    assert (r.hidden_size, r.expert_inner_size, r.preset) == (64, 128, "h96_f200_relu_e6_k3@0.5")


def test_demo_refuses_a_cluster_it_cannot_price_before_the_timed_run(tmp_path, monkeypatch) -> None:
    # a spec whose cost_device the analytic model does not know (a profiled CPU's name):
    # the timed steps ran to the end and then the placement failed, losing what they measured
    from wattmoe.experiments import demo
    from wattmoe.placement import PlacementError

    spec = tmp_path / "box.yaml"
    spec.write_text(
        "name: box\nnodes: [{name: node0}]\ndevices:\n"
        "  - {name: gpu0, kind: gpu, node: node0, cost_device: nvidia-h200, memory_bytes: 8.0e10}\n"
        "  - {name: cpu0, kind: cpu, node: node0, cost_device: my-cpu, memory_bytes: 5.0e11}\n"
        "links:\n  - {a: gpu0, b: cpu0, bandwidth_bytes_per_s: 5.5e10, energy_j_per_byte: 6.0e-11,"
        " latency_s: 1.0e-5}\n")

    def no_block(*args, **kwargs):
        raise AssertionError("the block was built: the cluster was checked too late")

    monkeypatch.setattr(demo, "MoETransformerBlock", no_block)
    with pytest.raises(PlacementError, match=r"cluster 'box': device cpu0 has cost_device "
                                             r"'my-cpu'.*known: cpu-16core"):
        run_demo("tiny", 1.0, batch=1, seq=8, steps=1, warmup=0, cluster=str(spec))


def test_demo_reports_progress_after_each_timed_step() -> None:
    # was: no progress at all during the timed steps (a long --steps ran silent)
    seen: list[tuple[int, int]] = []
    r = run_demo("tiny", 1.0, batch=1, seq=8, steps=4, warmup=0, cluster=None,
                 progress=lambda done, total: seen.append((done, total)))
    assert r.steps == 4
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
