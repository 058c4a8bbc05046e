from __future__ import annotations

from pathlib import Path

import pytest

from wattmoe.cli import main
from wattmoe.telemetry import read_samples_csv

DATA = Path(__file__).parent / "data"


def test_monitor_records_the_cpu_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    path = tmp_path / "mon.csv"
    assert main(["monitor", "--devices", "cpu", "--seconds", "0.4", "--interval", "0.05",
                 "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cpu-estimate" in out and "estimated" in out
    rows = read_samples_csv(path)["cpu"]
    assert len(rows) >= 4 and {r.source for r in rows} == {"estimated"}


def test_monitor_replays_a_recording(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--replay", str(DATA / "sim_recorded.csv"), "--seconds", "0.3",
                 "--speed", "4"]) == 0
    out = capsys.readouterr().out
    assert "replayed" in out and "sim:0" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--devices", "tpu:0"], "unknown device 'tpu:0'"),
    (["--replay", "/nonexistent/rec.csv"], "cannot read telemetry CSV"),
    (["--seconds", "0"], "argument --seconds: must be > 0, got 0"),
    (["--interval", "-1", "--devices", "cpu"], "argument --interval: must be > 0, got -1"),
    (["--interval", "inf", "--devices", "cpu"],
     "argument --interval: a finite number expected, got 'inf'"),
    (["--speed", "0", "--replay", "x.csv"], "argument --speed: must be > 0, got 0"),
    (["--speed", "5", "--devices", "cpu", "--seconds", "0.1"], "--speed 5 needs --replay"),
    # was: the default devices, silently
    (["--devices", "", "--seconds", "0.1"], "--devices '' names no device"),
    (["--devices", " , ", "--seconds", "0.1"], "--devices ' , ' names no device"),
    (["--devices", "cpu,,sim:0", "--seconds", "0.1"], "--devices 'cpu,,sim:0': item 2 is empty"),
    # was: "no backend given for 'cuda:0'; given: sim:0", the monitor's own wording
    (["--replay", str(DATA / "sim_recorded.csv"), "--devices", "sim:0,cuda:0"],
     f"--devices 'sim:0,cuda:0': 'cuda:0' is not in the recording {DATA / 'sim_recorded.csv'} "
     "(recorded: sim:0)"),
])
def test_bad_input_is_one_line(argv: list[str], message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = main(["monitor", *argv])
    except SystemExit as exc:  # argparse's: the flags' own checks (`commands.argtypes`)
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_csv_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the CSV's folder should be
    assert main(["monitor", "--devices", "sim:0", "--seconds", "0.2",
                 "--csv", str(blocker / "sub" / "mon.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot write telemetry CSV" in err and "Traceback" not in err


def test_monitor_replay_ends_with_the_recording() -> None:
    # was: played the 4 s recording, then held its last row until Ctrl-C (a hang without
    # --seconds), and the summary divided the recording's energy by the wall time watched:
    # with --seconds 10 at speed 4, "over 10.0 s" and a quarter of the recorded mean power
    import re
    import subprocess
    import sys

    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    for extra in ([], ["--seconds", "10"]):
        proc = subprocess.run(
            [sys.executable, "-c", entry, "monitor", "--replay", str(DATA / "sim_recorded.csv"),
             "--speed", "4", *extra], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        row = next(line for line in proc.stdout.splitlines() if "replayed" in line
                   and "->" in line)
        energy, mean = (float(x) for x in re.findall(r"[\d.]+", row.split("│")[2] + " "
                                                      + row.split("│")[3]))
        # the recording: 1451.9 J over 4.0 s, 363 W on average
        assert 1300 < energy <= 1452 and 330 < mean < 400, row
        assert "over 4.0 s of the recording" in proc.stdout


def test_monitor_replay_of_two_devices_has_both_start_temperatures(tmp_path) -> None:
    # `monitor --csv` writes a round's devices one after another (a few ms apart); the replay
    # opened its window at the first device's first row, before the second had any: its start
    # temperature was '-' ('- -> 36'), and at times its energy a 'mean of polled power samples'
    # with 'samples missing'
    import subprocess
    import sys

    header = ("time_s,unix_time_s,device,backend,source,missing,energy_j,power_w,"
              "power_average_w,temperature_c,memory_temperature_c,power_limit_w,utilization,"
              "clock_event_reasons")
    rows = [header]
    for i in range(21):
        t = 100.0 + 0.1 * i
        rows.append(f"{t:.4f},{t:.4f},sim:0,simulated,simulated,0,{80 * 0.1 * i:.3f},80,80,"
                    "40,,700,0,")
        rows.append(f"{t + 0.002:.4f},{t + 0.002:.4f},sim:1,simulated,simulated,0,"
                    f"{90 * 0.1 * i:.3f},90,90,50,,700,0,")
    rec = tmp_path / "two.csv"
    rec.write_text("\n".join(rows) + "\n")
    entry = "import sys; from wattmoe.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", entry, "monitor", "--replay", str(rec),
                           "--speed", "20"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("of the recording")[1]
    (row1,) = [x for x in summary.splitlines() if "sim:1" in x]
    assert "50 -> 50" in row1 and "missing" not in row1 and "polled" not in row1, row1


def test_monitor_replay_refuses_a_recording_of_two_sessions(tmp_path, capsys) -> None:
    # `monitor --csv` appends: a second session's rows follow the first's, its counter from 0.
    # The replay took the counters at the edges: 3.4 J and a mean of 0.0 W "over 1342.4 s of
    # the recording" for a CPU that drew 7 W throughout (42 J in the 6 s recorded)
    header = ("time_s,unix_time_s,device,backend,source,missing,energy_j,power_w,"
              "power_average_w,temperature_c,memory_temperature_c,power_limit_w,utilization,"
              "clock_event_reasons")
    rows = [header]
    for start, n in ((100.0, 40), (1500.0, 10)):
        rows += [f"{start + 0.1 * i:.1f},{start + 0.1 * i:.1f},cpu,cpu-estimate,estimated,0,"
                 f"{0.7 * i:.2f},7,,,,7,1," for i in range(n)]
    rec = tmp_path / "two_sessions.csv"
    rec.write_text("\n".join(rows) + "\n")
    assert main(["monitor", "--replay", str(rec), "--speed", "1000"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{rec}: the energy counter of cpu falls from 27.3 J to 0 J at time_s 1500" in err
    assert "more than one session" in err and "Traceback" not in err


def test_the_last_live_table_agrees_with_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    # a new user's trial (session 14): a fast replay ended with the live table's energy (from
    # its first look to its last refresh: 1.4 J) above a summary of the whole window (3.2 J)
    assert main(["monitor", "--replay", str(DATA / "sim_recorded.csv"), "--speed", "20"]) == 0
    rows = [line.split("│") for line in capsys.readouterr().out.splitlines()
            if line.startswith("│ sim:0")]
    live, summary = rows[-2], rows[-1]
    assert len(live) > len(summary)  # the live table has more columns
    assert float(live[6]) == float(summary[2]) > 0, (live, summary)


def test_monitor_replay_title_rounds_the_recorded_interval(tmp_path, capsys) -> None:
    # was: "wattmoe monitor: 0.5 s, every 0.099999 s" (the recording's median counter period,
    # printed with six significant digits)
    header = ("time_s,unix_time_s,device,backend,source,missing,energy_j,power_w,"
              "power_average_w,temperature_c,memory_temperature_c,power_limit_w,utilization,"
              "clock_event_reasons\n")
    rows = [f"{100 + i * 0.099999:.6f},{1.7e9 + i * 0.099999:.6f},cpu,cpu-estimate,estimated,0,"
            f"{0.7 * i:.6f},7,,,,7,1,\n" for i in range(8)]
    path = tmp_path / "rec.csv"
    path.write_text(header + "".join(rows))
    assert main(["monitor", "--replay", str(path), "--speed", "4"]) == 0
    out = capsys.readouterr().out
    assert "every 0.1 s" in out and "0.099999" not in out


def test_live_and_replayed_peaks_agree(tmp_path, monkeypatch, capsys) -> None:
    # a new user's trial: the live summary's window opened after the sampler's
    # first round, and its peak power left that round out; a replay of the same recording
    # includes it (the row in effect when its window opens): peak 290 W live, 300 W replayed
    import itertools
    import time

    import wattmoe.telemetry.factory as factory
    from wattmoe.telemetry import DeviceSample

    class Cooling:
        """A device whose power falls 10 W a reading (a job ending as the monitor starts)."""

        name, source, counter_period_s = "cooling", "measured", 0.05

        def __init__(self) -> None:
            self.reads = itertools.count()
            self.e = 0.0

        def devices(self) -> list[str]:
            return ["cpu"]

        def sample(self, device: str) -> DeviceSample:
            time.sleep(0.01)  # a reading takes time: the sampler's first round is not instant
            power = 300.0 - 10 * next(self.reads)
            self.e += power * 0.05
            return DeviceSample(device=device, timestamp_s=time.monotonic(), energy_j=self.e,
                                power_w=power, source="measured")

        def energy_j(self, device: str) -> float:
            return self.e

        def slowdown_temperature_c(self, device: str) -> None:
            return None

        def close(self) -> None:
            pass

    monkeypatch.setattr(factory, "make_backends", lambda devices=None, **kw: {"cpu": Cooling()})
    path = tmp_path / "cooling.csv"
    assert main(["monitor", "--devices", "cpu", "--seconds", "0.3", "--interval", "0.05",
                 "--csv", str(path)]) == 0
    live = capsys.readouterr().out
    recorded_peak = max(r.power_w for r in read_samples_csv(path)["cpu"])
    assert main(["monitor", "--replay", str(path), "--speed", "4"]) == 0
    replayed = capsys.readouterr().out

    def peak(out: str) -> float:
        (row,) = [line for line in out.splitlines()[-4:] if line.startswith("│ cpu")]
        return float(row.split("│")[4])

    assert peak(live) == peak(replayed) == recorded_peak, (live, replayed)


def test_live_summary_has_every_start_temperature(capsys) -> None:
    # was: "- -> 36" for sim:0, the second device of the sampler's first round, not yet read
    # when the window opened (a replay of the same recording showed 36 -> 36)
    assert main(["monitor", "--devices", "cpu,sim:0", "--seconds", "0.3"]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines()[-4:]
              if line.startswith("│ sim:0")]
    assert "36 -> 36" in row, row
