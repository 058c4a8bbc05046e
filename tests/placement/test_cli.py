from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import pytest

from wattmoe.cli import main
from wattmoe.placement import Placement


def test_place_writes_json_and_prints_summary(tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    assert main(["place", "--cluster", "h200-cpu", "--preset", "olmoe-1b-7b", "--layers", "2",
                 "--skew", "zipf:1.2", "--seed", "0", "--objective", "energy", "--solver",
                 "heuristic", "--compare", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "energy per token (estimated)" in text and "gpu0" in text and "eplb" in text
    p = Placement.from_json(out.read_text())
    assert p.num_layers == 2 and p.num_experts == 64
    assert p.meta["preset"] == "olmoe-1b-7b"
    assert p.meta["loads"] == "zipf:1.2 seed=0 tokens=4096"


def test_place_diff(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, solver in ((a, "round-robin"), (b, "heuristic")):
        assert main(["place", "--cluster", "8xh200-2node", "--layers", "1", "--solver", solver,
                     "--objective", "balance", "--out", str(path)]) == 0
    capsys.readouterr()
    assert main(["place-diff", str(a), str(b)]) == 0
    out = capsys.readouterr()
    assert "experts moved" in out.out and "bytes to migrate" in out.out
    assert "different clusters" not in out.err


def test_place_diff_says_when_the_clusters_differ(tmp_path, capsys) -> None:
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["place", "--cluster", "8xh200-2node", "--layers", "1", "--objective",
                 "balance", "--out", str(a)]) == 0
    d = json.loads(a.read_text())
    d["cluster"] = "renamed"  # the same devices under another cluster name
    b.write_text(json.dumps(d))
    capsys.readouterr()
    assert main(["place-diff", str(a), str(b)]) == 0
    err = capsys.readouterr().err
    assert "different clusters ('8xh200-2node' and 'renamed')" in " ".join(err.split())


def test_place_with_loads_file(tmp_path, capsys) -> None:
    loads = tmp_path / "loads.csv"
    loads.write_text("\n".join(",".join(str(i + j) for i in range(8)) for j in range(2)))
    assert main(["place", "--cluster", "laptop", "--preset", "switch-base-8",
                 "--loads", str(loads), "--solver", "milp"]) == 0
    assert "optimal" in capsys.readouterr().out


def test_place_shows_the_milps_proven_lower_bound(tmp_path, capsys) -> None:
    # was: the bound and gap were only in the time-limit warning; now a row of the summary
    # (and fields of the file) for the MILP, and no row for a solver that proves no bound
    loads = tmp_path / "loads.csv"
    loads.write_text("\n".join(",".join(str(i + j) for i in range(8)) for j in range(2)))
    out = tmp_path / "m.json"
    assert main(["place", "--cluster", "laptop", "--preset", "switch-base-8", "--loads",
                 str(loads), "--solver", "milp", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    p = Placement.from_json(out.read_text())
    assert p.status == "optimal" and p.objective_lower_bound is not None
    row = rf"proven lower bound +│ +{p.objective_lower_bound:.4f} \(objective 0.00% above it\)"
    assert re.search(row, text), text
    assert main(["place", "--cluster", "laptop", "--preset", "switch-base-8", "--loads",
                 str(loads), "--solver", "heuristic"]) == 0
    assert "proven lower bound" not in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "nope"], "unknown cluster 'nope'"),
    (["--cluster", "laptop", "--objective", "speed"], "cannot read objective 'speed'"),
    (["--cluster", "laptop", "--skew", "zipf:-1"], "cannot read skew"),
    (["--cluster", "laptop", "--preset", "deepseek-v3"], "but all devices together hold 345"),
    # was: the last weight won (energy=2) without a word
    (["--cluster", "laptop", "--objective", "energy=1,latency=1,energy=2"],
     "objective 'energy=1,latency=1,energy=2' weighs energy more than once"),
])
def test_bad_input_is_one_line(args, message, capsys) -> None:
    assert main(["place", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    # numbers are checked where argparse reads them, naming the flag (was: the Python field,
    # 'max_replicas', 'num_layers', 'time_limit_s', ...)
    (["--max-replicas", "0"], "argument --max-replicas: must be an integer >= 1, got 0"),
    (["--layers", "0"], "argument --layers: must be an integer >= 1, got 0"),
    (["--tokens", "-5"], "argument --tokens: must be an integer >= 1, got -5"),
    (["--time-limit", "-1"], "argument --time-limit: must be > 0, got -1"),
    (["--time-limit", "nan"], "argument --time-limit: a finite number expected, got 'nan'"),
    (["--solver", "milp", "--time-limit", "0"], "argument --time-limit: must be > 0, got 0"),
    (["--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["--redundant", "-2"], "argument --redundant: must be an integer >= 0, got -2"),
    (["--redundant", "1.5"], "argument --redundant: an integer expected, got '1.5'"),
])
def test_bad_number_is_one_line_naming_the_flag(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["place", "--cluster", "laptop", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_nan_loads_from_the_command_line(tmp_path) -> None:
    loads = tmp_path / "bad.csv"
    loads.write_text("1,2,nan,4,5,6,7,8\n")
    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", entry, "place", "--cluster", "laptop",
                           "--preset", "switch-base-8", "--loads", str(loads)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "layer 0, expert 2 has nan tokens" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def layer_profile(tmp_path):
    """A saved profile of fused layer steps of the 'tiny' preset on an 'NVIDIA H200' (the
    h200-cpu cluster's GPU), bf16 only."""
    from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
    from wattmoe.cost_model import OpShape, save_profile

    layer = OpShape(64, 128, "swiglu", 8, 2)  # tiny
    pts = [synthetic_point(op, n, s) for n in TOKENS for op, s in (
        ("moe_layer:fused", layer), ("router_gate", layer.for_op("router_gate")))]
    db = synthetic_db(pts)
    db.devices["cuda:0"].name = "NVIDIA H200"
    return save_profile(db, tmp_path / "layers.json")


def test_a_profile_of_estimated_energy_is_not_labelled_measured(tmp_path, capsys) -> None:
    # a profile taken where the device had no energy counter (a CPU without RAPL, like
    # data/profiles/cpu.json): its costs were labelled "profile PATH (measured)"
    import dataclasses

    from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
    from wattmoe.cost_model import OpShape, save_profile

    pts = [dataclasses.replace(synthetic_point("expert", n, OpShape(64, 128)),
                               source="estimated") for n in TOKENS]
    db = synthetic_db(pts)
    db.devices["cuda:0"].name = "NVIDIA H200"
    db.devices["cuda:0"].source = "estimated"
    path = save_profile(db, tmp_path / "est.json")
    out = tmp_path / "p.json"
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--cost-model",
                 str(path), "--out", str(out)]) == 0
    assert Placement.from_json(out.read_text()).summary.cost_sources["gpu0"] == (
        f"profile {path} (estimated): cuda:0 as nvidia-h200")


def test_place_with_a_backend_records_it(layer_profile, tmp_path, capsys) -> None:
    out = tmp_path / "p.json"
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--cost-model",
                 str(layer_profile), "--backend", "fused", "--out", str(out)]) == 0
    assert f"profile {layer_profile}, backend fused" in capsys.readouterr().out
    p = Placement.from_json(out.read_text())
    assert p.meta["backend"] == "fused"
    assert p.summary.cost_sources["gpu0"] == (
        f"profile {layer_profile} backend fused (measured layer steps, amortized per expert: "
        "estimate): cuda:0 as nvidia-h200")
    assert p.summary.cost_sources["cpu0"].startswith("analytic roofline")


def tiny_int4_fused_profile(tmp_path):
    """A profile (synthetic points) of the int4 `tiny` layer's steps with the fused backend on
    an H200, for `place --dtype int4 --backend fused`."""
    from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
    from wattmoe.cost_model import OpShape, save_profile

    layer = OpShape(64, 128, "swiglu", 8, 2)  # tiny
    db = synthetic_db([synthetic_point("moe_layer_int4:fused", n, layer) for n in TOKENS])
    db.devices["cuda:0"].name = "NVIDIA H200"
    return save_profile(db, tmp_path / "int4.json")


def test_place_int4_with_the_fused_backend_counts_its_copy(tmp_path, capsys) -> None:
    # was: the GPU, with room for 6 int4 'tiny' experts by codes and scales, took 6; the fused
    # kernels also hold a copy of the weights in their order, and 3 fit
    import json

    from wattmoe.placement import ExpertShape

    profile = tiny_int4_fused_profile(tmp_path)
    int4 = ExpertShape(64, 128, dtype="int4")
    w, copy = int4.weight_bytes, int4.fused_copy_bytes  # 13.5 KiB each (groups of 32)
    spec = load_cluster_dict("h200-cpu")
    spec["devices"][0]["memory_bytes"] = 6 * w
    cluster = tmp_path / "c.json"
    cluster.write_text(json.dumps(spec))
    out = tmp_path / "p.json"
    assert main(["place", "--cluster", str(cluster), "--preset", "tiny", "--layers", "1",
                 "--dtype", "int4", "--cost-model", str(profile), "--backend", "fused",
                 "--solver", "fill", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("memory of one replica: 13.5 KiB; 27.0 KiB on a GPU with backend fused (the fused "
            "kernels' copy of the int4 weights)") in text
    gpu, cpu = Placement.from_json(out.read_text()).summary.devices
    assert (gpu.replicas, gpu.memory_bytes) == (3, 3 * (w + copy))
    assert cpu.memory_bytes == cpu.replicas * w
    # without an int4 fused backend, no such line
    assert main(["place", "--cluster", str(cluster), "--preset", "tiny", "--layers", "1",
                 "--dtype", "int4", "--solver", "fill", "--out", str(out)]) == 0
    assert "memory of one replica" not in capsys.readouterr().out
    assert Placement.from_json(out.read_text()).summary.devices[0].replicas == 6


def load_cluster_dict(name: str) -> dict:
    from wattmoe.placement import load_cluster

    return load_cluster(name).to_dict()


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "h200-cpu", "--backend", "fused"], "--backend 'fused' needs --cost-model"),
    (["--cluster", "h200-cpu", "--preset", "tiny", "--backend", "grouped", "--cost-model",
      "PROFILE"], "backend 'grouped' was not profiled: no moe_layer:grouped"),
    (["--cluster", "laptop", "--preset", "tiny", "--backend", "fused", "--cost-model",
      "PROFILE"], "--backend 'fused': no device of cluster 'laptop' has layer steps"),
    # was: accepted, every device priced by the analytic estimates, and the summary's
    # "cost model" row said "profile PROFILE" all the same
    (["--cluster", "laptop", "--preset", "tiny", "--cost-model", "PROFILE"],
     "no device of cluster 'laptop' is in the profile (cluster cost devices: laptop-cpu-8core, "
     "laptop-gpu; profiled: nvidia-h200)"),
    (["--cluster", "h200-cpu", "--preset", "tiny", "--backend", "fused", "--dtype", "int4",
      "--cost-model", "PROFILE"], "backend 'fused' with int4 experts was not profiled on cuda:0"),
    (["--cluster", "h200-cpu", "--preset", "switch-base-8", "--layers", "1", "--backend",
      "fused", "--cost-model", "PROFILE"], "was not profiled at hidden=768"),
])
def test_bad_backend_input_is_one_error(layer_profile, args, message, capsys) -> None:
    args = [str(layer_profile) if a == "PROFILE" else a for a in args]
    assert main(["place", *args]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())  # (the console wraps long lines)
    assert "Traceback" not in err and err.count("error:") == 1


def test_cost_model_folder_or_missing_file_is_named(tmp_path, capsys) -> None:
    # was: "no such file" for a folder too
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--cost-model",
                 str(tmp_path)]) == 2
    assert "a folder, not a profile file" in capsys.readouterr().err
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--cost-model",
                 str(tmp_path / "absent.json")]) == 2
    assert "absent.json': no such file" in capsys.readouterr().err


def test_backend_without_a_profile_is_one_line(capsys) -> None:
    assert main(["place", "--cluster", "h200-cpu", "--backend", "fused"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_place_out_to_a_stream_keeps_it(tmp_path, capsys) -> None:
    import os
    import threading

    # `--out /dev/stdout` (or /dev/null): was replaced by a regular file through the rename
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--out", str(fifo)]) == 0
    reader.join(10)
    assert fifo.is_fifo() and Placement.from_json(got[0]).cluster == "h200-cpu"
    capsys.readouterr()
    (tmp_path / "f.json").write_text("{}")
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny",
                 "--out", str(tmp_path / "f.json" / "p.json")]) == 2
    assert "f.json/p.json': Not a directory" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.tmp"))


def test_place_diff_names_a_missing_field(tmp_path, capsys) -> None:
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["place", "--cluster", "laptop", "--preset", "tiny", "--out", str(a)]) == 0
    d = json.loads(a.read_text())
    del d["layers"]
    b.write_text(json.dumps(d))
    capsys.readouterr()
    assert main(["place-diff", str(a), str(b)]) == 2  # was: "malformed: KeyError: 'layers'"
    err = capsys.readouterr().err
    assert f"placement {b}: missing field 'layers'" in " ".join(err.split())
    assert "Traceback" not in err and "KeyError" not in err
    # was: "malformed: TypeError: PlacementSummary.__init__() missing 7 required ..."
    d = json.loads(a.read_text())
    d["summary"] = {**d["summary"], "energy_j_per_token": "x"}
    b.write_text(json.dumps(d))
    assert main(["place-diff", str(a), str(b)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"placement {b}: summary: field 'energy_j_per_token' must be a number, got 'x'"
            in err) and "TypeError" not in err


@pytest.mark.parametrize("extra", [["--layers", "5"], ["--seed", "3"],
                                   ["--tokens", "4096", "--layers", "2", "--seed", "1"]])
def test_place_loads_file_refuses_synthetic_load_options(tmp_path, capsys, extra) -> None:
    loads = tmp_path / "loads.csv"  # was: the options were ignored without a word
    loads.write_text("\n".join(",".join(str(i + j) for i in range(8)) for j in range(2)))
    assert main(["place", "--cluster", "laptop", "--preset", "switch-base-8",
                 "--loads", str(loads), *extra]) == 2
    err = " ".join(capsys.readouterr().err.split())
    given = " and ".join(a for a in extra if a in ("--layers", "--seed"))
    assert f"{given} set the synthetic loads and do nothing with --loads" in err
    assert "Traceback" not in err


def test_place_objective_label_gives_round_robins_value(capsys, tmp_path) -> None:
    # a mix whose weights do not add up to 1 puts round-robin at their sum: the summary said
    # 'objective (round-robin = 1)' above a comparison whose round-robin row read 3.0000
    assert main(["place", "--cluster", "laptop", "--preset", "h64_f64_relu_e8_k2", "--layers",
                 "2", "--tokens", "64", "--objective", "energy=1,latency=2", "--compare"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "objective (round-robin = 3)" in out and "│ round-robin │" in out
    assert "round-robin = 1)" not in out
    rr = out.split("│ round-robin │")[1].split("│")
    assert float(rr[3]) == 3.0  # the comparison's objective column
    assert main(["place", "--cluster", "laptop", "--preset", "h64_f64_relu_e8_k2", "--layers",
                 "2", "--tokens", "64"]) == 0
    assert "objective (round-robin = 1)" in " ".join(capsys.readouterr().out.split())
    # one term with a weight: the objective's name kept it (was: 'latency' in the title and
    # the JSON, while the values were of latency=0.5)
    assert main(["place", "--cluster", "laptop", "--preset", "h64_f64_relu_e8_k2", "--layers",
                 "2", "--tokens", "64", "--objective", "latency=0.5", "--compare",
                 "--out", str(tmp_path / "p.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "objective latency=0.5 (" in out
    assert "objective (round-robin = 0.5)" in out
    assert float(out.split("│ round-robin │")[1].split("│")[3]) == 0.5
    assert json.loads((tmp_path / "p.json").read_text())["objective"] == "latency=0.5"


def test_place_compare_says_which_baselines_break_the_constraints(capsys) -> None:
    # was: fill-first at 8.7 ms listed beside the heuristic under a 2.5 ms SLO with nothing
    # said, as if it were an alternative (its own `--solver fill` run says the SLO is broken)
    assert main(["place", "--cluster", "8xh200-2node", "--preset", "qwen3-30b-a3b",
                 "--layers", "2", "--tokens", "4096", "--slo-ms", "2.5", "--compare"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "│ fill (constraint violated) │" in out
    assert "fill: constraint violated: latency" in out and "exceeds the SLO 2.500 ms" in out
    assert "│ heuristic │" in out  # the answer itself keeps the SLO


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_place_checks_out_before_solving(tmp_path, capsys, where) -> None:
    # was: the solve (a MILP: up to --time-limit, 60 s by default) and its tables first, then
    # "cannot write ...: Is a directory"
    (tmp_path / "f.json").write_text("{}")
    out = tmp_path if where == "folder" else tmp_path / "f.json" / "p.json"
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--out", str(out)]) == 2
    got = capsys.readouterr()
    assert "--out" in got.err and str(out) in got.err and "Traceback" not in got.err
    assert "energy per token" not in got.out  # nothing solved


def test_place_takes_a_shape_key(tmp_path, capsys) -> None:
    # a model that is no preset (was: "unknown preset 'h2048_f1408_swiglu_e60_k4'")
    out = tmp_path / "p.json"
    assert main(["place", "--cluster", "h200-cpu", "--preset", "h2048_f1408_swiglu_e60_k4",
                 "--layers", "2", "--tokens", "512", "--out", str(out)]) == 0
    p = Placement.from_json(out.read_text())
    assert p.num_layers == 2 and p.num_experts == 60
    assert p.meta["preset"] == "h2048_f1408_swiglu_e60_k4"
    assert (p.meta["shape"]["hidden"], p.meta["shape"]["inner"], p.meta["top_k"]) == (2048,
                                                                                     1408, 4)
    assert "h2048_f1408_swiglu_e60_k4 on h200-cpu" in capsys.readouterr().out


def test_place_says_where_each_devices_costs_come_from(tmp_path, capsys) -> None:
    # a profile that covers the GPU only: the CPU is priced by the analytic roofline, and the
    # output must say so per device (was: one row, "cost model: profile PATH", as if every
    # device's figures came from the profile; the sources were only in the --out JSON)
    from tests.cost_model.conftest import TOKENS, synthetic_db, synthetic_point
    from wattmoe.cost_model import OpShape, save_profile

    db = synthetic_db([synthetic_point("expert", n, OpShape(64, 128)) for n in TOKENS])
    db.devices["cuda:0"].name = "NVIDIA H200"
    path = save_profile(db, tmp_path / "gpu.json")
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--cost-model",
                 str(path)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"costs of gpu0: profile {path} (measured): cuda:0 as nvidia-h200" in text
    assert "costs of cpu0: analytic roofline (estimate" in text


def test_place_tables_label_every_energy_column_with_its_source(capsys) -> None:
    # the summary said "(estimated)", the per-device "energy" and the baselines'
    # "energy/token" columns did not
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--layers", "1",
                 "--compare"]) == 0
    text = capsys.readouterr().out
    assert "energy (estimated)" in text and "avg power (estimated)" in text
    assert "energy/token (estimated)" in text


def test_place_writes_micro_joules_as_cost_does(capsys) -> None:
    # was: "1.756 uJ" where `wattmoe cost` writes "µJ"
    assert main(["place", "--cluster", "laptop", "--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"energy per token \(estimated\) +│ +1\.756 µJ", text), text
    assert "uJ" not in text


def test_place_does_not_round_a_fractional_tokens_per_batch_to_zero(tmp_path, capsys) -> None:
    # was: "tokens per batch 0" for one assignment of a top-2 shape (0.5 tokens), next to an
    # energy per token of twice the batch's energy; such loads are refused since (a count
    # above the tokens they imply), so here 5 assignments of a top-2 shape: 2.5 tokens
    loads = tmp_path / "few.csv"
    loads.write_text("2,1,1,1,0,0,0,0\n")
    assert main(["place", "--cluster", "h200-cpu", "--preset", "tiny", "--loads",
                 str(loads)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if "tokens per batch" in line)
    assert "2.5" in row


def test_ctrl_c_stops_the_exact_solver_at_once(tmp_path) -> None:
    # a new user's trial (session 14): Ctrl-C at 20 s of a 300 s MILP was seen only when HiGHS
    # returned at its time limit. The solve now runs in a thread the CLI waits on in short
    # joins, so the interrupt ends the command (status 130) long before the limit. The signal
    # is sent once the solver has been handed the model (its debug line), not after a guess
    import queue
    import signal
    import threading
    import time

    out = tmp_path / "m.json"
    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", entry, "-vv", "place", "--cluster",
                             "8xh200-2node", "--preset", "olmoe-1b-7b", "--layers", "2",
                             "--solver", "milp", "--time-limit", "600", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C's default action in the child even where this runner was
                            # started with SIGINT ignored (a non-interactive shell's `cmd &`),
                            # which the child would inherit: Python raises no KeyboardInterrupt
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
    reader.start()
    err: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while not any("MILP:" in x for x in err):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(err)
            with contextlib.suppress(queue.Empty):
                err.append(lines.get(timeout=1))
        time.sleep(1)  # into HiGHS (minutes on this instance)
        assert proc.poll() is None, "".join(err)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        proc.kill()
    while not lines.empty():
        err.append(lines.get())
    text = "".join(err)
    assert time.monotonic() - t0 < 120, "the interrupt waited for the solver's time limit"
    assert proc.returncode == 130, text
    assert "MILP interrupted" in text and "interrupted" in text and "Traceback" not in text
    assert not out.exists()


def test_place_writes_out_before_its_tables(tmp_path) -> None:
    # a new user's trial: `wattmoe place ... --out p.json | head` exited 1 with no file and
    # nothing said (the file was written after the tables, and rich exits at a closed pipe);
    # so did a Ctrl-C or SIGTERM during --compare's baselines, after the solve was printed
    out = tmp_path / "p.json"
    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", entry, "place", "--cluster", "h200-cpu",
                             "--preset", "olmoe-1b-7b", "--compare", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head -0`: the reader is gone before the first table
    proc.wait(timeout=120)
    assert "Traceback" not in proc.stderr.read().decode()
    assert Placement.from_json(out.read_text()).num_experts == 64


def test_place_says_it_is_solving_on_a_terminal(monkeypatch, capsys) -> None:
    # a new user's trial: a MILP ran its whole --time-limit (60 s by default) with nothing on
    # the screen; on a terminal a line now says what runs, for how long so far (gone after)
    import io

    from rich.console import Console

    import wattmoe.commands.placement as cli_place

    tty = Console(file=io.StringIO(), force_terminal=True, color_system=None, width=120)
    monkeypatch.setattr(cli_place, "err_console", tty)
    assert main(["place", "--cluster", "8xh200-2node", "--preset", "olmoe-1b-7b", "--layers",
                 "1", "--solver", "milp", "--time-limit", "1"]) == 0
    assert "solving: milp (time limit 1 s)" in tty.file.getvalue()
    assert "solving" not in capsys.readouterr().err  # not off a terminal


@pytest.mark.parametrize("solver", ["eplb", "round-robin", "fill"])
def test_time_limit_with_a_baseline_is_refused(solver, capsys) -> None:
    # was: the baselines ignored --time-limit without a word
    assert main(["place", "--cluster", "laptop", "--layers", "1", "--solver", solver,
                 "--time-limit", "5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("--time-limit applies to --solver heuristic and milp (the solvers that search); "
            f"--solver {solver} computes its placement in one pass") in err
    assert "Traceback" not in err


def test_time_limit_with_a_search_and_compare_still_runs(capsys) -> None:
    assert main(["place", "--cluster", "laptop", "--layers", "1", "--solver", "heuristic",
                 "--time-limit", "5", "--compare"]) == 0
    assert "against the baselines" in capsys.readouterr().out


def test_place_loads_file_takes_the_batchs_tokens(tmp_path, capsys) -> None:
    # was: the error for a count above sum / top_k asked for --tokens, and --tokens with
    # --loads was refused ("set the synthetic loads")
    loads = tmp_path / "dropped.csv"  # top-2, assignments dropped: 100,007 of 200,000
    loads.write_text("100000,1,1,1,1,1,1,1\n")
    argv = ["place", "--cluster", "laptop", "--preset", "tiny", "--loads", str(loads)]
    assert main(argv) == 2
    assert "give the batch's tokens (--tokens" in " ".join(capsys.readouterr().err.split())
    assert main([*argv, "--tokens", "100000"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if "tokens per batch" in line)
    assert "100,000" in row
    assert main([*argv, "--tokens", "99999"]) == 2  # the hot expert is more than the batch
    assert "more than tokens_per_batch = 99999" in " ".join(capsys.readouterr().err.split())


def test_place_help_says_how_a_loads_file_is_read(capsys) -> None:
    # a new user's trial (session 16): .txt is read as CSV, and the help did not say so
    with pytest.raises(SystemExit):
        main(["place", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".npy, .csv (comma-separated; .txt is read as CSV) or .json" in text


def test_place_summary_scales_large_memory_and_power(tmp_path, capsys) -> None:
    # a new user's trial (session 16): a 1e18-byte host and a 1e9 W budget printed as
    # '931,322,574.6 GiB' and '1e+09 W'
    import yaml

    from wattmoe.placement import load_cluster

    spec = load_cluster("h200-cpu").to_dict()
    spec["devices"][1].update(memory_bytes=1e18, power_budget_w=1e9)
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["place", "--cluster", str(path), "--preset", "olmoe-1b-7b", "--layers", "1",
                 "--solver", "heuristic"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 B / 888.2 PiB" in text and "45.0 W / 1 GW" in text
    assert "GiB /" not in text.split("cpu0")[1] and "e+" not in text


def test_place_int4_layout_tiles_counts_no_copy_of_the_codes(tmp_path, capsys) -> None:
    # codes stored in the fused kernels' tile order (SimpleMoELayer.set_int4_layout): the
    # GPU keeps no copy of the codes of the matrices they read so, and more experts fit
    import json

    from wattmoe.placement import ExpertShape

    profile = tiny_int4_fused_profile(tmp_path)
    int4 = ExpertShape(64, 128, dtype="int4")
    rows, tiles = int4.replica_bytes("gpu", "fused"), int4.replica_bytes("gpu", "fused", "tiles")
    assert tiles < rows
    spec = load_cluster_dict("h200-cpu")
    spec["devices"][0]["memory_bytes"] = 4 * tiles
    cluster = tmp_path / "c.json"
    cluster.write_text(json.dumps(spec))
    out = tmp_path / "p.json"
    args = ["place", "--cluster", str(cluster), "--preset", "tiny", "--layers", "1", "--dtype",
            "int4", "--cost-model", str(profile), "--backend", "fused", "--solver", "fill",
            "--out", str(out)]
    assert main(args) == 0
    assert Placement.from_json(out.read_text()).summary.devices[0].replicas == 4 * tiles // rows
    assert main([*args, "--int4-layout", "tiles"]) == 0
    placed = Placement.from_json(out.read_text())
    assert placed.summary.devices[0].replicas == 4
    assert placed.meta["int4_layout"] == "tiles"
    assert "codes of any matrix" in " ".join(capsys.readouterr().out.split())
    # where it would change nothing, an error
    assert main(["place", "--cluster", str(cluster), "--preset", "tiny", "--dtype", "int4",
                 "--int4-layout", "tiles"]) == 2
    assert "needs --dtype int4 and --backend" in capsys.readouterr().err


def test_place_diff_of_a_file_that_is_not_text_is_one_line(tmp_path, capsys) -> None:
    # was: a UnicodeDecodeError traceback (a .npy or another binary file given by mistake)
    a, b = tmp_path / "a.json", tmp_path / "b.npy"
    assert main(["place", "--cluster", "laptop", "--preset", "tiny", "--out", str(a)]) == 0
    b.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}")
    capsys.readouterr()
    assert main(["place-diff", str(a), str(b)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"cannot read placement '{b}': not UTF-8 text (byte 0x93 at position 0)" in err
    assert "Traceback" not in err
