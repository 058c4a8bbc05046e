"""The cost-model CLI: real runs on this CPU, and one clear line per bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cost_model.conftest import SHAPE_A, synthetic_db, synthetic_point
from tests.cost_model.test_nsys import build_export
from wattmoe.cli import main
from wattmoe.cost_model import OpShape, op_work, save_profile


@pytest.fixture
def profile(tmp_path: Path, linear_db) -> Path:
    return save_profile(linear_db, tmp_path / "p.json")


def test_profile_runs_a_small_cpu_sweep(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cpu.json"
    rc = main(["profile", "--devices", "cpu", "--shapes", "tiny", "--dtypes", "fp32",
               "--ops", "expert,activation", "--tokens", "1,8,64", "--cpu-window", "0.05",
               "--reps", "5", "--cooldown-max", "0", "--no-torch-profiler", "--out", str(out),
               "--plot", str(tmp_path / "plots")])
    assert rc == 0
    raw = json.loads(out.read_text())
    assert len(raw["points"]) == 6
    assert raw["devices"]["cpu"]["source"] in ("estimated", "measured")
    assert raw["provenance"]["command"]  # (under pytest, argv is pytest's)
    assert raw["provenance"]["commit"] and raw["provenance"]["machine"]["cpu_count"]
    assert {p["source"] for p in raw["points"]} == {raw["devices"]["cpu"]["source"]}
    assert out.with_suffix(".jsonl").exists()
    assert len(list((tmp_path / "plots").glob("*.png"))) == 2
    assert "energy models" in capsys.readouterr().out


def test_profile_with_too_few_points_says_why_no_energy_model(tmp_path: Path, capsys) -> None:
    # two token sizes of one op: no energy model (three points needed); the table was printed
    # empty, its header alone, with no word of why
    rc = main(["profile", "--devices", "cpu", "--shapes", "tiny", "--dtypes", "fp32",
               "--ops", "expert", "--tokens", "1,8", "--cpu-window", "0.05", "--reps", "3",
               "--cooldown-max", "0", "--no-torch-profiler", "--out", str(tmp_path / "p.json")])
    assert rc == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "energy models: none fitted (a device and dtype needs three or more points" in out
    assert "least squares on relative error" not in out


def test_profile_measures_int4_layer_steps(tmp_path: Path, capsys) -> None:
    out = tmp_path / "int4.json"
    assert main(["profile", "--devices", "cpu", "--shapes", "tiny", "--dtypes", "fp32",
                 "--ops", "moe_layer_int4:loop", "--tokens", "1,8", "--cpu-window", "0.05",
                 "--reps", "3", "--cooldown-max", "0", "--no-torch-profiler",
                 "--out", str(out)]) == 0
    raw = json.loads(out.read_text())
    assert [p["op"] for p in raw["points"]] == ["moe_layer_int4:loop"] * 2
    # each point records the group it was quantized with: tiny's default, 32 (session 17)
    assert [p["shape"]["int4_group"] for p in raw["points"]] == [32, 32]
    # the loop dequantizes each expert that runs into an fp32 copy: more bytes than the dense
    # layer, which reads its fp32 weights once
    dense = [op_work("moe_layer:loop", p["tokens"], OpShape(**p["shape"]), "fp32")[1]
             for p in raw["points"]]
    assert all(p["bytes_moved"] > d for p, d in zip(raw["points"], dense))
    assert [p["bytes_moved"] for p in raw["points"]] == [
        op_work("moe_layer_int4:loop", p["tokens"], OpShape(**p["shape"]), "fp32")[1]
        for p in raw["points"]]
    capsys.readouterr()
    assert main(["cost", "--profile", str(out), "--op", "moe_layer_int4:loop", "--device",
                 "cpu", "--dtype", "fp32", "--tokens", "4", "--json"]) == 0
    by_op = json.loads(capsys.readouterr().out)
    # "(monotone)" where the 8-token step measured faster than the 1-token one (noise)
    assert by_op[0]["method"] in ("interpolated", "interpolated (monotone)")
    # --backend NAME --int4 is the same query as --op moe_layer_int4:NAME
    assert main(["cost", "--profile", str(out), "--backend", "loop", "--int4", "--device",
                 "cpu", "--dtype", "fp32", "--tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_op
    # measured with the default group: the preset's query reads these points as its own
    assert main(["cost", "--profile", str(out), "--backend", "loop", "--int4", "--device",
                 "cpu", "--dtype", "fp32", "--tokens", "4", "--shape", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == by_op


def test_cost_prints_a_table(profile: Path, capsys) -> None:
    assert main(["cost", "--profile", str(profile), "--op", "expert", "--tokens", "1,100,5000",
                 "--device", "cuda:0", "--dtype", "bf16", "--shape", SHAPE_A.key]) == 0
    out = capsys.readouterr().out
    for word in ("profiled", "interpolated", "extrapolated", "measured"):
        assert word in out
    # a new user's trial (session 14): a prediction from a measured profile was shown as
    # 'measured'; only a profiled point as measured is, the rest are estimates made from it
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "│ measured " in rows["1"] and "estimated" not in rows["1"], rows["1"]
    for n in ("100", "5000"):
        assert "estimated (from measured)" in rows[n], rows[n]
    assert main(["cost", "--profile", str(profile), "--op", "expert", "--tokens", "64",
                 "--device", "cuda:0", "--dtype", "bf16", "--shape", SHAPE_A.key,
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["method"] == "profiled"
    assert main(["cost", "--profile", str(profile), "--list"]) == 0
    assert main(["cost", "--profile", str(profile), "--report"]) == 0


def test_cost_json_never_labels_an_estimate_measured(profile: Path, capsys) -> None:
    # a new user's trial (session 16): --json said "source": "measured" for interpolated and
    # extrapolated answers and for an empty call; the profile's source is its own field
    assert main(["cost", "--profile", str(profile), "--op", "expert", "--tokens",
                 "0,1,100,5000", "--device", "cuda:0", "--dtype", "bf16", "--shape",
                 SHAPE_A.key, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    got = [(r["tokens"], r["method"], r["source"], r["profile_source"]) for r in rows]
    assert got == [(0, "empty", "estimated", "measured"),
                   (1, "profiled", "measured", "measured"),
                   (100, "interpolated", "estimated", "measured"),
                   (5000, "extrapolated", "estimated", "measured")]
    assert main(["cost", "--profile", str(profile), "--op", "expert", "--tokens", "0",
                 "--device", "cuda:0", "--dtype", "bf16", "--shape", SHAPE_A.key]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    assert "│ estimated " in row and "measured" not in row, row


def test_plot_and_eval(profile: Path, tmp_path: Path, capsys) -> None:
    assert main(["profile-plot", "--profile", str(profile), "--out", str(tmp_path / "pl")]) == 0
    assert sorted(p.name for p in (tmp_path / "pl").glob("*.png")) == ["cuda0_expert.png"]
    held = save_profile(synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (2, 8)]),
                        tmp_path / "held.json")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(held),
                 "--out", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv")]) == 0
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["summary"]["batch"]["latency"]["n"] == 2
    assert (tmp_path / "e.csv").read_text().count("\n") == 3


def _run_into_a_closed_pipe(*argv: str) -> None:
    """`wattmoe ARGV | head -0`: the reader is gone before the first line."""
    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", entry, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    proc.wait(timeout=120)
    assert "Traceback" not in proc.stderr.read().decode()


def test_output_files_are_written_before_the_tables(profile: Path, tmp_path: Path) -> None:
    # a new user's trial: `wattmoe cost-eval ... --out e.json --csv e.csv | head` wrote e.json
    # and no e.csv (rich exits at a closed pipe, here at the line saying e.json was written),
    # and `nsys-import ... --json k.json | head` wrote no file
    held = save_profile(synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (2, 8)]),
                        tmp_path / "held.json")
    _run_into_a_closed_pipe("cost-eval", "--profile", str(profile), "--measured", str(held),
                            "--out", str(tmp_path / "e.json"), "--csv", str(tmp_path / "e.csv"))
    assert json.loads((tmp_path / "e.json").read_text())["summary"]["batch"]["latency"]["n"] == 2
    assert (tmp_path / "e.csv").read_text().count("\n") == 3
    _run_into_a_closed_pipe("nsys-import", str(build_export(tmp_path / "r.sqlite")), "--json",
                            str(tmp_path / "k.json"))
    assert json.loads((tmp_path / "k.json").read_text())["kernels"][0]["calls"] == 2


def test_cost_eval_csv_interrupted_while_written_keeps_the_last_one(
        profile: Path, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while --csv is written. Was: the CSV opened in place and left with its header
    and one row; now it is written atomically, as --out is."""
    from wattmoe.cost_model.evaluate import EvalRow

    held = save_profile(synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (2, 8)]),
                        tmp_path / "held.json")
    out = tmp_path / "e.csv"
    out.write_text("the last run's rows\n")
    calls = []
    to_dict = EvalRow.to_dict

    def interrupted(self):  # the header's names, row 1, then Ctrl-C at row 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return to_dict(self)

    monkeypatch.setattr(EvalRow, "to_dict", interrupted)
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(held),
                 "--csv", str(out)]) == 130
    assert len(calls) == 3
    assert out.read_text() == "the last run's rows\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("e.csv")] == ["e.csv"]


def test_cost_eval_a_held_out_point_of_zero_joules(profile: Path, tmp_path: Path,
                                                  capsys) -> None:
    """A held-out point whose window measured 0 J (a counter that did not move; the loader
    takes energy_j >= 0). Was: a ZeroDivisionError traceback."""
    held = [synthetic_point("expert", n, SHAPE_A) for n in (2, 8)]
    held[0].energy_j = 0.0
    path = save_profile(synthetic_db(held), tmp_path / "held.json")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(path),
                 "--out", str(tmp_path / "e.json")]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert rows[0]["energy_rel_err"] is None and rows[0]["energy_model_rel_err"] is None
    assert rows[1]["energy_rel_err"] is not None
    summary = json.loads((tmp_path / "e.json").read_text())["summary"]
    assert summary["all"]["energy"]["n"] == 1 and summary["all"]["latency"]["n"] == 2


def test_cost_eval_checks_its_outputs_before_the_work(profile: Path, tmp_path: Path,
                                                     capsys) -> None:
    # a new user's trial (session 16): --out naming a folder failed only after the table
    held = save_profile(synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (2, 8)]),
                        tmp_path / "held.json")
    (tmp_path / "file").write_text("")
    for option, path, why in (
            ("--out", tmp_path, "Is a directory"),
            ("--csv", tmp_path / "file" / "e.csv", "Not a directory")):
        assert main(["cost-eval", "--profile", str(profile), "--measured", str(held),
                     option, str(path)]) == 2
        got = capsys.readouterr()
        assert got.out == ""  # no table: refused before the evaluation
        assert got.err.strip() == (f"error: {option}: cannot write {str(path)!r}: {why}"
                                   + (f" ({str(tmp_path / 'file')!r} is a file)"
                                      if option == "--csv" else ""))


def test_cost_eval_skips_points_the_profile_cannot_answer(profile: Path, tmp_path: Path,
                                                          capsys) -> None:
    # was: exit 2 at the first such point, with no evaluation of the others
    held = save_profile(synthetic_db([
        synthetic_point("expert", 2, SHAPE_A), synthetic_point("expert", 8, SHAPE_A),
        synthetic_point("activation", 8, SHAPE_A), synthetic_point("expert", 8, SHAPE_A,
                                                                   device="cuda:1")]),
        tmp_path / "held.json")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(held),
                 "--out", str(tmp_path / "e.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(2 points; 2 skipped: the profile cannot predict them)" in out
    assert ("skipped 1 point of activation cuda:0 bf16: op 'activation' was not profiled on "
            "cuda:0 (profiled: expert)") in out
    assert "skipped 1 point of expert cuda:1 bf16: unknown device 'cuda:1'" in out
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["summary"]["all"]["latency"]["n"] == 2
    assert [(s["op"], s["device"], s["tokens"]) for s in rep["skipped"]] == [
        ("activation", "cuda:0", 8), ("expert", "cuda:1", 8)]
    assert all(s["reason"] for s in rep["skipped"])
    # none the profile can answer: one line, exit 2
    only = save_profile(synthetic_db([synthetic_point("activation", 8, SHAPE_A)]),
                        tmp_path / "only.json")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(only)]) == 2
    assert "the profile cannot predict any of the 1 measured points" in capsys.readouterr().err
    # a file that is no measurement names the flag it came from (it was called 'profile')
    empty = tmp_path / "held.yaml"
    empty.write_text("\n")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(empty)]) == 2
    assert f"--measured '{empty}' is not a held-out profile JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["cost"], ["profile-plot", "--out", "{tmp}/pl"]])
def test_a_missing_default_profile_says_to_pass_profile(tmp_path: Path, capsys, monkeypatch,
                                                        command) -> None:
    import wattmoe.commands.cost_model as cli

    missing = tmp_path / "profiles" / "thishost.json"
    monkeypatch.setattr(cli, "default_profile_path", lambda: missing)
    # was: "cannot read profile '.../thishost.json': No such file or directory", no way out
    assert main([a.replace("{tmp}", str(tmp_path)) for a in command]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"no profile of this machine at {str(missing)!r}: pass --profile PATH (a profile "
            "JSON, e.g. one in data/profiles/) or make one with `wattmoe profile`") in err
    assert not (tmp_path / "pl").exists()


def test_nsys_import(tmp_path: Path, capsys) -> None:
    db = build_export(tmp_path / "r.sqlite")
    assert main(["nsys-import", str(db), "--json", str(tmp_path / "k.json")]) == 0
    assert "cutlass" in capsys.readouterr().out
    assert json.loads((tmp_path / "k.json").read_text())["kernels"][0]["calls"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cost", "--op", "nope"], "unknown op 'nope'"),
        (["cost", "--op", "moe_layer_int4:"], "unknown op 'moe_layer_int4:'"),
        (["cost", "--device", "cuda:9"], "unknown device 'cuda:9'"),
        (["cost", "--tokens", "-3"], "--tokens: batch size must be >= 0 tokens, got -3"),
        (["cost", "--tokens", "abc"], "--tokens: a batch size must be an integer, got 'abc'"),
        (["cost", "--tokens", "1e9"], "--tokens: a batch size must be an integer, got '1e9'"),
        (["cost", "--tokens", ""], "--tokens: no batch size in ''"),  # was: exit 0, no rows
        # was: the empty item dropped without a word (a typo for 1,16,2 went unnoticed)
        (["cost", "--tokens", "1,,2"], "--tokens '1,,2': item 2 is empty"),
        (["cost", "--tokens", "1,2,"], "--tokens '1,2,': item 3 is empty"),
        (["cost", "--backend", "fused", "--op", "expert"], "give --op or --backend, not both"),
        (["cost", "--int4"], "--int4 goes with --backend"),
        (["cost", "--backend", " "], "--backend: a backend name"),
        (["cost", "--backend", "nope"], "op 'moe_layer:nope' was not profiled on cuda:0"),
    ],
)
def test_bad_queries_print_one_line(profile: Path, capsys, args, message) -> None:
    base = ["--device", "cuda:0", "--dtype", "bf16", "--shape", SHAPE_A.key]
    assert main([*args[:1], "--profile", str(profile), *base, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_dtype_not_profiled_names_the_profiled_ones(tmp_path: Path, capsys) -> None:
    # a new user's trial (session 16): 'cost --backend fused' without --dtype said only "not
    # profiled on cuda:0 in fp32", a dtype never asked for (it is --dtype's default)
    db = synthetic_db([synthetic_point("expert", n, SHAPE_A, dt) for n in (1, 8)
                       for dt in ("bf16", "fp32")]
                      + [synthetic_point("activation", n, SHAPE_A, "bf16") for n in (1, 8)])
    path = save_profile(db, tmp_path / "p.json")
    base = ["cost", "--profile", str(path), "--op", "activation", "--device", "cuda:0"]
    assert main(base) == 2
    assert capsys.readouterr().err.strip() == (
        "error: op 'activation' was profiled on cuda:0 in bf16, not in fp32 (the default of "
        "--dtype): give --dtype bf16")
    assert main([*base, "--dtype", "fp32"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: op 'activation' was not profiled on cuda:0 in fp32 (profiled in: bf16)")
    assert main([*base, "--dtype", "bf16", "--tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["method"] == "profiled"
    # the default still answers where the op was profiled in it
    assert main(["cost", "--profile", str(path), "--device", "cuda:0", "--tokens", "8",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["method"] == "profiled"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is corrupt: not valid JSON"),
        (json.dumps({"format": "wattmoe.cost_model.profile", "schema_version": 0}),
         "schema version 0 is not supported"),
    ],
)
def test_bad_profile_files_print_one_line(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    proc = subprocess.run(
        # (not `-m wattmoe.cli`: run as __main__, cli.py does not see the command modules)
        [sys.executable, "-c", "import sys; from wattmoe.cli import main; sys.exit(main())",
         "cost", "--profile", str(bad)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or len(proc.stderr) < 400


def test_profile_rejects_negative_batch_sizes(capsys) -> None:
    assert main(["profile", "--tokens", "1,-8"]) == 2
    assert "--tokens must all be >= 1" in capsys.readouterr().err


def test_profile_rejects_an_empty_batch_size(tmp_path: Path, capsys) -> None:
    # was: swept 1 and 8 (a small sweep into tmp_path, should the check ever go)
    assert main(["profile", "--tokens", "1,,8", "--devices", "cpu", "--shapes", "tiny",
                 "--dtypes", "fp32", "--ops", "activation", "--cpu-window", "0.01", "--reps",
                 "1", "--cooldown-max", "0", "--no-torch-profiler",
                 "--out", str(tmp_path / "p.json")]) == 2
    assert "--tokens '1,,8': item 2 is empty" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_profile_refuses_a_folder_out_and_a_negative_ncu_before_the_sweep(
        tmp_path: Path, capsys, monkeypatch) -> None:
    import wattmoe.cost_model.runner as runner

    def no_sweep(*args, **kwargs):  # pragma: no cover - reached only by the old code
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(runner, "run_profile", no_sweep)
    # was: the whole sweep, then an IsADirectoryError traceback when saving the JSON
    assert main(["profile", "--out", str(tmp_path)]) == 2
    assert f"--out {str(tmp_path)!r} is a folder" in capsys.readouterr().err
    # was: accepted; on a GPU, cands[:-1] collected counters for all scenarios but one
    assert main(["profile", "--ncu", "-1", "--out", str(tmp_path / "p.json")]) == 2
    assert "--ncu must be >= 0, got -1" in capsys.readouterr().err
    # was: the whole sweep, then "cannot write (File exists)" for the plots
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for plot in (blocker, blocker / "plots"):
        assert main(["profile", "--out", str(tmp_path / "p.json"), "--plot", str(plot)]) == 2
        err = capsys.readouterr().err
        assert f"--plot {str(plot)!r}: {str(blocker)!r} is a file, not a folder" in err
    # a folder above it that cannot be searched: one line, not a PermissionError traceback
    real_exists = Path.exists

    def no_search(self: Path, *args, **kwargs) -> bool:
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", no_search)
    locked = tmp_path / "locked" / "plots"
    assert main(["profile", "--out", str(tmp_path / "p.json"), "--plot", str(locked)]) == 2
    assert f"--plot {str(locked)!r}: Permission denied" in capsys.readouterr().err


def test_profile_refuses_a_deadline_that_lets_nothing_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.json"
    out.write_text("{}")
    # was (0): every scenario 'not run', then an empty profile written over the file, exit 0
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as exc:
            main(["profile", "--deadline", bad, "--out", str(out)])
        assert exc.value.code == 2
        assert f"argument --deadline: must be > 0, got {bad}" in capsys.readouterr().err
    assert out.read_text() == "{}"


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--sample-interval", "0", "argument --sample-interval: must be > 0, got 0"),
    ("--sample-interval", "nan", "argument --sample-interval: a finite number expected"),
    ("--cooldown-tolerance", "-1", "argument --cooldown-tolerance: must be >= 0, got -1"),
    ("--deadline", "nan", "argument --deadline: a finite number expected, got 'nan'"),
])
def test_profile_names_the_flag_of_a_bad_number(tmp_path: Path, capsys, flag: str, value: str,
                                                message: str) -> None:
    # was: 'interval_s must be ...', 'profiler cooldown_tolerance_c must be ...' and
    # 'deadline_s must be ...', the Python fields these flags fill
    with pytest.raises(SystemExit) as exc:
        main(["profile", flag, value, "--out", str(tmp_path / "p.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_profile_refuses_a_missing_gpu_before_the_monitor_and_the_bar(
        tmp_path: Path, capsys, monkeypatch) -> None:
    import wattmoe.commands.cost_model as commands

    def no_monitor(*args, **kwargs):  # pragma: no cover - reached only by the old code
        raise AssertionError("the telemetry monitor was started")

    # was: NVML's fallback warning and a drawn 'profiling 0/?' bar above the error
    monkeypatch.setattr(commands, "_make_monitor", no_monitor)
    assert main(["profile", "--devices", "cpu,cuda:99", "--shapes", "tiny", "--out",
                 str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device 'cuda:99' is not available here: torch sees")
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_interrupted_profile_says_where_its_points_are(tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    import wattmoe.cost_model.runner as runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_profile", interrupted)
    out = tmp_path / "p.json"
    assert main(["profile", "--devices", "cpu", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert str(out.with_suffix(".jsonl")) in err and "--resume" in err
    assert "interrupted" in err and "Traceback" not in err


def test_profile_that_cannot_be_saved_is_one_line_naming_the_jsonl(
        tmp_path: Path, capsys, monkeypatch) -> None:
    import wattmoe.cost_model.runner as runner

    def full(db, out):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner, "save_profile", full)
    out = tmp_path / "cpu.json"
    assert main(["profile", "--devices", "cpu", "--shapes", "tiny", "--dtypes", "fp32",
                 "--ops", "activation", "--tokens", "1", "--cpu-window", "0.01", "--reps", "1",
                 "--cooldown-max", "0", "--no-torch-profiler", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write profile {str(out)!r}" in err and "No space left on device" in err
    assert "--resume" in err and "Traceback" not in err
    assert '"record": "point"' in out.with_suffix(".jsonl").read_text()  # kept


@pytest.mark.parametrize(
    ("measured", "content", "message"),
    [
        ("missing.jsonl", None, "cannot read sweep log"),
        # (the profile loader's checks name the field; was "line 1 is not a sweep 'point' record")
        ("rec.jsonl", '{"a": 1}\n{"b": 2}\n', "line 1: missing field 'op'"),
        ("list.jsonl", "[1, 2]\n{}\n", "line 1 is not a JSON object"),
        ("empty.jsonl", "", "holds no measured points"),
    ],
)
def test_cost_eval_bad_measurements_print_one_line(profile: Path, tmp_path: Path, capsys,
                                                   measured, content, message) -> None:
    path = tmp_path / measured
    if content is not None:
        path.write_text(content)
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # was: both accepted, and scored as if they were good measurements
        ({"tokens": 0}, "bad.jsonl: line 2: tokens must be >= 1, got 0"),
        ({"source": "guessed"}, "bad.jsonl: line 2: source must be one of measured, estimated, "
         "simulated, replayed, got 'guessed'"),
        ({"latency_s": -1.0}, "bad.jsonl: line 2: latency_s must be > 0, got -1.0"),
    ],
)
def test_cost_eval_checks_sweep_points_like_the_profile_loader(
        profile: Path, linear_db, tmp_path: Path, capsys, change, message) -> None:
    good, bad = (json.dumps({"record": "point", **p.to_dict()}) for p in linear_db.points[:2])
    bad = json.dumps({**json.loads(bad), **change})
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n{bad}\n")
    assert main(["cost-eval", "--profile", str(profile), "--measured", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err


@pytest.mark.parametrize(
    ("command", "option"),
    [("cost-eval", "--csv"), ("cost-eval", "--out"), ("profile-plot", "--out")],
)
def test_unwritable_outputs_print_one_line(profile: Path, tmp_path: Path, capsys, command,
                                           option) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder is needed
    target = str(blocker / "sub" / "x.out")
    args = [command, "--profile", str(profile)]
    if command == "cost-eval":
        args += ["--measured", str(profile)]
    assert main([*args, option, target]) == 2
    err = capsys.readouterr().err
    # cost-eval's are checked before its evaluation (check_out: "--out: cannot write ...")
    assert err.startswith(f"error: {option}") and "cannot write" in err


def test_cost_eval_rejects_a_nan_split(profile: Path, capsys) -> None:
    # checked where argparse reads it, as every other number of the CLI (commands/argtypes.py)
    with pytest.raises(SystemExit) as exc:
        main(["cost-eval", "--profile", str(profile), "--measured", str(profile),
              "--split-latency", "nan"])
    assert exc.value.code == 2
    assert ("argument --split-latency: a finite number expected, got 'nan'"
            in capsys.readouterr().err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "cuda:99"], "cuda:99"),
        (["--max-memory-gb", "nan"], "--max-memory-gb must be a finite number > 0, got nan"),
        (["--max-memory-gb", "-1"], "--max-memory-gb must be a finite number > 0, got -1.0"),
        (["--out", "{blocker}/sub/p.json"], "cannot write sweep log"),
    ],
)
def test_bad_profile_options_print_one_line(tmp_path: Path, capsys, args, message) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [a.replace("{blocker}", str(blocker)) for a in args]
    base = ["profile", "--shapes", "tiny", "--ops", "expert", "--dtypes", "fp32", "--tokens",
            "1", "--reps", "2", "--cpu-window", "0.02", "--cooldown-max", "0",
            "--no-torch-profiler", "--out", str(tmp_path / "p.json")]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_a_missing_cuda_device_is_refused_before_the_sweep(monkeypatch) -> None:
    import torch

    from wattmoe.cost_model import CostModelError
    from wattmoe.cost_model.scenarios import SweepConfig, build_sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CostModelError, match="torch sees 0 CUDA device"):
        build_sweep(SweepConfig(shapes=("tiny",), dtypes=("fp32",), devices=("cuda:0",),
                                ops=("expert",), tokens=(1,)))


def test_report_without_interior_batch_sizes_says_so(tmp_path: Path, capsys) -> None:
    # two batch sizes per op: nothing to predict from neighbours (was: an empty table with
    # only its header)
    db = synthetic_db([synthetic_point("expert", n, SHAPE_A) for n in (1, 16)])
    path = save_profile(db, tmp_path / "two.json")
    assert main(["cost", "--profile", str(path), "--report"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("interpolation, leave-one-out: no interior batch size (an op needs three or more "
            "profiled batch sizes)") in out
    assert "latency median" not in out


def test_profile_says_which_scenarios_it_skipped_for_memory(tmp_path: Path, capsys) -> None:
    # a layer op over --max-memory-gb was left out of the sweep with only a log line at INFO:
    # the output read "1 points, 0 errors, 0 not run", as if everything asked for had run
    out = tmp_path / "mem.json"
    assert main(["profile", "--devices", "cpu", "--shapes", "h256_f512_swiglu_e64_k4",
                 "--dtypes", "fp32", "--ops", "expert,moe_layer:loop", "--tokens", "4",
                 "--cpu-window", "0.05", "--reps", "3", "--cooldown-max", "0",
                 "--no-torch-profiler", "--max-memory-gb", "0.01", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(1 points, 0 errors, 1 not run)" in text
    assert ("skipped moe_layer:loop h256_f512_swiglu_e64_k4 fp32 cpu n=4: ~0.101 GB > 0.01 GB "
            "allowed (--max-memory-gb)") in text


def test_profile_with_every_scenario_over_the_memory_limit_says_why(tmp_path: Path,
                                                                    capsys) -> None:
    # was: "error: no scenario was measured (0 not run)"
    out = tmp_path / "none.json"
    assert main(["profile", "--devices", "cpu", "--shapes", "tiny", "--dtypes", "fp32",
                 "--ops", "moe_layer:loop", "--tokens", "4", "--cpu-window", "0.05",
                 "--no-torch-profiler", "--max-memory-gb", "1e-6", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no scenario was measured (1 not run: skipped moe_layer:loop tiny fp32 cpu n=4: " in err
    assert "GB allowed" in err and not out.exists()


def test_cost_without_shape_names_the_profiled_shape(tmp_path: Path, capsys) -> None:
    # the profile holds one shape of the op: the title named none ("shape profiled")
    db = synthetic_db([synthetic_point("expert", n, SHAPE_A, preset="h1024_f512_swiglu_e8_k2")
                       for n in (1, 16, 64)])
    path = save_profile(db, tmp_path / "one.json")
    assert main(["cost", "--profile", str(path), "--device", "cuda:0", "--dtype", "bf16",
                 "--tokens", "16"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "expert on cuda:0 (bf16, shape h1024_f512_swiglu_e8_k2)" in out
