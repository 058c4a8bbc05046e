from __future__ import annotations

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
    text = capsys.readouterr().out
    assert "experts moved" in text and "bytes to migrate" in text


def test_place_with_loads_file(tmp_path, capsys) -> None:
    loads = tmp_path / "loads.csv"
    loads.write_text("\n".join(",".join(str(i + j) for i in range(8)) for j in range(2)))
    assert main(["place", "--cluster", "laptop", "--preset", "switch-base-8",
                 "--loads", str(loads), "--solver", "milp"]) == 0
    assert "optimal" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--cluster", "nope"], "unknown cluster 'nope'"),
    (["--cluster", "laptop", "--objective", "speed"], "cannot read objective 'speed'"),
    (["--cluster", "laptop", "--skew", "zipf:-1"], "cannot read skew"),
    (["--cluster", "laptop", "--preset", "deepseek-v3"], "but all devices together hold 345"),
    (["--cluster", "laptop", "--max-replicas", "0"], "max_replicas must be an integer >= 1"),
    (["--cluster", "laptop", "--layers", "0"], "num_layers must be a positive integer, got 0"),
    (["--cluster", "laptop", "--time-limit", "-1"], "time_limit_s must be a finite number > 0"),
    (["--cluster", "laptop", "--time-limit", "nan"], "time_limit_s must be a finite number > 0"),
    (["--cluster", "laptop", "--solver", "milp", "--time-limit", "0"],
     "time_limit_s must be a finite number > 0"),
])
def test_bad_input_is_one_line(args, message, capsys) -> None:
    assert main(["place", *args]) == 2
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
