"""The GPU benchmarks' command lines (benchmarks/gpu/): shape specs and checks, no GPU needed."""

from __future__ import annotations

import pytest
import torch

from tests.scripts import load_script
from wattmoe.moe import get_preset

KERNELS_BENCH = "benchmarks/gpu/kernels_bench.py"
STEP_PROFILE = "benchmarks/gpu/step_profile.py"


def test_kernels_bench_shapes_default_to_full_size_on_a_gpu() -> None:
    kb = load_script(KERNELS_BENCH)
    args = kb.parse_args(["--device", "cuda"])  # parsing only: no GPU needed
    assert args.shapes == "olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3"
    assert [cfg for _, cfg in kb.resolve_shapes(args.shapes)] == [
        get_preset(n) for n in ("olmoe-1b-7b", "qwen3-30b-a3b", "deepseek-v3")]


def test_kernels_bench_on_a_cpu_runs_the_presets_at_1_32_width() -> None:
    # at full size DeepSeek-V3's experts alone are 22.5 GB of bf16: a CPU smoke run ran out
    kb = load_script(KERNELS_BENCH)
    args = kb.parse_args(["--device", "cpu"])
    assert args.shapes == "olmoe-1b-7b@0.03125,qwen3-30b-a3b@0.03125,deepseek-v3@0.03125"
    shapes = kb.resolve_shapes(args.shapes, args.scale)
    assert [(label, c.hidden_size, c.expert_inner_size, c.num_experts, c.top_k)
            for label, c in shapes] == [
        ("olmoe-1b-7b@0.03125", 64, 64, 64, 8),
        ("qwen3-30b-a3b@0.03125", 64, 64, 128, 8),
        ("deepseek-v3@0.03125", 256, 64, 256, 8),
    ]
    assert shapes[2][1].num_shared_experts == 1  # the rest of the preset is kept


def test_kernels_bench_reads_specs_as_written_and_scale_on_top() -> None:
    kb = load_script(KERNELS_BENCH)
    args = kb.parse_args(["--device", "cpu", "--shapes", "olmoe-1b-7b@0.25, tiny,,"
                          "h2048_f1408_swiglu_e60_k4", "--scale", "0.5"])
    shapes = kb.resolve_shapes(args.shapes, args.scale)
    assert [(label, c.hidden_size, c.expert_inner_size) for label, c in shapes] == [
        ("olmoe-1b-7b@0.25", 256, 128), ("tiny", 64, 64),
        ("h2048_f1408_swiglu_e60_k4", 1024, 704)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--shapes", "olmoe"], "--shapes: unknown preset 'olmoe'"),
    (["--shapes", "nope@2"], "--shapes: shape 'nope@2': unknown preset 'nope'"),
    (["--shapes", "tiny@x"], "bad scale in shape spec 'tiny@x'"),
    (["--shapes", "tiny@0"], "shape 'tiny@0': scale must be > 0"),
    (["--shapes", "tiny@inf"], "shape 'tiny@inf': scale must be > 0 and finite"),
    (["--shapes", "tiny@1e308"], "shape 'tiny@1e308': scale 1e+308 is too large"),
    (["--shapes", "h12_fx"], "cannot read shape 'h12_fx'"),
    (["--shapes", ","], "--shapes: no shape in ','"),
    (["--scale", "0"], "--scale: a positive number"),
    (["--device", "gpu"], "--device: "),
])
def test_kernels_bench_refuses_a_bad_value_in_one_line(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(KERNELS_BENCH).parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("spec", ["olmoe-1b-7b", "olmoe-1b-7b@0.25", "h2048_f1408_swiglu_e60_k4"])
def test_step_profile_takes_the_specs_kernels_bench_takes(
        spec: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # accepted: the run goes on to its next check, the GPU (made absent here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        load_script(STEP_PROFILE).main(["--shape", spec])
    assert exc.value.code == 2
    assert "error: needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize(("spec", "message"), [
    ("olmoe", "--shape: unknown preset 'olmoe'; did you mean 'olmoe-1b-7b'?"),
    ("olmoe-1b-7b@x", "--shape: bad scale in shape spec 'olmoe-1b-7b@x'"),
    ("olmoe-1b-7b@-1", "--shape: shape 'olmoe-1b-7b@-1': scale must be > 0"),
])
def test_step_profile_refuses_an_unknown_spec_in_one_line(
        spec: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(STEP_PROFILE).main(["--shape", spec])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _bench_with_fake_counter(tmp_path, monkeypatch, joules: dict[str, float]):
    kb = load_script(KERNELS_BENCH)
    args = kb.parse_args(["--device", "cpu", "--shapes", "tiny", "--out", str(tmp_path),
                          "--tune-by", "energy", "--tune-energy-top", "2"])
    bench = kb.Bench(args)
    ran: list[str] = []
    monkeypatch.setattr(kb.ft, "fused_forward", lambda st, x, d, cand: ran.append(cand))

    class Counter:  # the joules of a window follow the candidate its step ran
        source = "test counter"

        def window(self, step, seconds: float) -> dict[str, float]:
            step()
            return {"energy_j": joules[ran[-1]], "seconds": seconds, "steps": 1000}

        def info(self) -> dict[str, object]:
            return {}

    bench.nrg = Counter()
    bench.payload["tune"] = [{"shape": "tiny", "tokens": 8, "weights": "int4",
                              "impl": f"fused:{c}"} for c in joules]
    return bench


def test_tune_by_energy_takes_the_fewest_joules_among_the_fastest(tmp_path, monkeypatch) -> None:
    bench = _bench_with_fake_counter(tmp_path, monkeypatch, {"a": 3.0, "b": 2.0, "c": 1.0})
    gpu_ms = {"a": 1.0, "b": 2.0, "c": 3.0}  # c spends least but is not among the 2 fastest
    assert bench._tune_energy(None, None, None, gpu_ms, "a", "tiny", 8, "int4") == "b"
    assert [r.get("energy_mj") for r in bench.payload["tune"]] == [3.0, 2.0, None]
    assert bench.payload["tune"][0]["energy_mj_windows"] == [3.0, 3.0]  # 2 rounds by default


def test_tune_by_energy_alternates_the_order_and_averages_the_rounds(tmp_path,
                                                                     monkeypatch) -> None:
    # a counter that drifts up by 1 J per window: in a fixed order the first candidate would
    # always look cheapest; alternating rounds give both the same mean drift
    bench = _bench_with_fake_counter(tmp_path, monkeypatch, {"a": 2.0, "b": 1.9})
    done = [0]  # windows measured so far
    window = bench.nrg.window

    def drifting(step, seconds: float) -> dict[str, float]:
        w = window(step, seconds)
        w["energy_j"] += done[0]
        done[0] += 1
        return w

    bench.nrg.window = drifting
    assert bench._tune_energy(None, None, None, {"a": 1.0, "b": 2.0}, "a", "tiny", 8,
                              "int4") == "b"
    a, b = (r["energy_mj_windows"] for r in bench.payload["tune"])
    assert a == [2.0, 5.0] and b == [2.9, 3.9]  # order a b | b a


def test_tune_by_energy_without_a_counter_keeps_the_fastest(tmp_path, monkeypatch) -> None:
    bench = _bench_with_fake_counter(tmp_path, monkeypatch, {"a": 0.0, "b": 0.0})
    assert bench._tune_energy(None, None, None, {"a": 2.0, "b": 1.0}, "b", "tiny", 8,
                              "int4") == "b"


@pytest.mark.parametrize(("argv", "message"), [
    (["--tune-energy-top", "0"], "--tune-energy-top: at least 1, got 0"),
    (["--tune-energy-rounds", "0"], "--tune-energy-rounds: at least 1, got 0"),
    (["--tune-window", "0"], "--tune-window: seconds > 0, finite, got 0.0"),
    (["--tune-window", "inf"], "--tune-window: seconds > 0, finite, got inf"),
    (["--tune-candidates", "w64t16f/nope"], "--tune-candidates: unknown candidate(s) w64t16f/nope"),
    (["--sections", "tune", "--tune-weights", "bf16", "--tune-candidates", "w64t16f/w64t32f"],
     "--tune-candidates: none is a bf16 candidate"),
])
def test_tune_by_energy_options_are_checked(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        load_script(KERNELS_BENCH).parse_args(["--device", "cpu", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_default_tune_candidates_can_find_every_shipped_pick() -> None:
    # `kernels_bench --sections tune` without --tune-candidates (what a user tuning a table
    # for their own GPU or shape runs) must time the families of the shipped table's entries:
    # its int4 default had no scale-pair or tile-order variant, so it could not find any
    # int4 entry shipped since session 6
    import json
    from pathlib import Path

    from wattmoe.moe import fused_triton as ft

    kb = load_script(KERNELS_BENCH)
    table = json.loads(Path(ft.__file__).with_name("kernel_configs").joinpath(
        "nvidia_h200.json").read_text())["configs"]
    missing = []
    for shape, entries in table.items():
        experts = int(shape.split(",")[0].removeprefix("E="))
        int4 = "int4" in shape
        for size, name in entries.items():
            cands = kb.tune_candidates(int(size), experts, int4)
            missing += [f"{shape} {size}: {half}" for half in name.split("/")
                        if half not in cands]
    assert missing == []


@pytest.mark.parametrize(("env", "value", "message"), [
    ("WATTMOE_INT4_TILE_ROWS", "48", "$WATTMOE_INT4_TILE_ROWS='48': a power of two >= 16"),
    ("WATTMOE_INT4_TILE_COPIES", "both",
     "$WATTMOE_INT4_TILE_COPIES='both': 'shared' (one int4 tile-order copy"),
    ("WATTMOE_KERNEL_CONFIGS", "/nonexistent/tuned.json",
     "WATTMOE_KERNEL_CONFIGS=/nonexistent/tuned.json: no such file or directory"),
])
def test_kernels_bench_refuses_a_bad_kernel_setting_before_it_starts(
        env: str, value: str, message: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the library reads these at the first launch that uses them: the run recorded a bad tile
    # setting as one error per int4 candidate and exited 0, and a bad table path was a traceback
    from wattmoe.moe import fused_triton as ft
    monkeypatch.setattr(ft, "_TUNED", {})  # a table already loaded in this process
    monkeypatch.setenv(env, value)
    kb = load_script(KERNELS_BENCH)
    with pytest.raises(SystemExit) as exc:
        kb.main(["--device", "cpu", "--shapes", "tiny", "--sections", "check",
                 "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_fused_matrix_check_int4_config_reaches_every_step_size(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --int4-config runs the int4 layers' steps with one candidate at every size (a table
    # entry of this process; the dense layers keep theirs), and each int4 row names it
    import json

    from wattmoe.moe import fused_triton as ft
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the torch math on CPU: quick
    monkeypatch.setattr(ft, "_TUNED", {})
    check = load_script("benchmarks/gpu/fused_matrix_check.py")
    out = tmp_path / "matrix.json"
    # (the rows' errors are not asserted: on the CPU, bf16 and fp16 steps against the fp32
    # reference are not what this checks)
    check.main(["--device", "cpu", "--cases", "tiny", "--tokens", "1,100",
                "--int4-config", "w64t32r16fpx", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 * 2 * 3 * 2  # dtypes x weights x backends x step sizes
    assert not any("error" in r for r in rows)
    assert {(r["int4_group"] is not None, r.get("config")) for r in rows} == {
        (True, "w64t32r16fpx"), (False, None)}
    stack_key = "E=8,H=64,F=128,swiglu,int4g32"  # tiny: the default group, 32 (64 before)
    assert set(ft.load_tuned(torch.device("cpu"))) == {stack_key}


def test_kernel_diag_variants_are_the_nan_probes_modifiers() -> None:
    # the two diagnostics name the int4 K loops alike (nan_probe.INT4_LOOP_FORMS): a variant
    # of kernel_diag runs what the modifier of that name runs in nan_probe
    from wattmoe.moe import fused_triton as ft
    kd = load_script("benchmarks/gpu/kernel_diag.py")
    probe = load_script("benchmarks/gpu/nan_probe.py")
    pair = ft.INT4_CANDIDATES["w64t32r16fpx"]
    for v in ("inflight", "whole", "nibbles", "khalves"):
        assert kd.with_changes(pair, kd.INT4_VARIANTS[v][1]) == probe.resolve(
            f"w64t32r16fpx:{v}", True), v
    assert kd.with_changes(pair, kd.INT4_VARIANTS["table"][1]) == pair
    up, down = kd.per_launch(pair, kd.INT4_VARIANTS["khalves_up"][1])
    assert up == probe.resolve("w64t32r16fpx:khalves", True)[0] and down == pair[1]
    assert kd.VARIANTS == ("table", "fp32", "skipped", "inflight", "whole", "nibbles",
                           "khalves", "khalves_up", "bf16")


@pytest.mark.parametrize("script", ["nan_probe", "fused_matrix_check", "tile_copies_probe"])
def test_gpu_probes_refuse_a_bad_kernel_setting_before_any_launch(
        script: str, tmp_path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # as kernels_bench: the library reads its settings at the first launch, so the probes
    # recorded a bad one once per step or row (or stopped with a traceback)
    from wattmoe.moe import fused_triton as ft
    monkeypatch.setattr(ft, "_TUNED", {})
    monkeypatch.setenv("WATTMOE_INT4_TILE_ROWS", "48")
    mod = load_script(f"benchmarks/gpu/{script}.py")
    out = tmp_path / "out.json"
    argv = {"nan_probe": ["--device", "cpu", "--shape", "tiny", "--out", str(out)],
            "fused_matrix_check": ["--device", "cpu", "--cases", "tiny", "--out", str(out)],
            "tile_copies_probe": ["--shapes", "tiny", "--out", str(out)]}[script]
    try:
        code = mod.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err + (code if isinstance(code, str) else "")
    assert code not in (0, None) and "$WATTMOE_INT4_TILE_ROWS='48'" in err
    assert "Traceback" not in err and not out.exists()


def test_kernels_bench_int4_group_is_checked_against_every_shape(capsys) -> None:
    # --int4-group quantizes every shape's int4 layer with that group (a new user's shape whose
    # default group rules out scale pairs: run 114); one that does not tile a width is refused
    kb = load_script(KERNELS_BENCH)
    args = kb.parse_args(["--device", "cpu", "--shapes", "tiny", "--int4-group", "32"])
    assert args.int4_group == 32
    for bad in ("48", "0", "256"):
        with pytest.raises(SystemExit):
            kb.parse_args(["--device", "cpu", "--shapes", "tiny", "--int4-group", bad])
        assert "--int4-group: a power of two >= 2 dividing every shape's widths" in (
            capsys.readouterr().err)
