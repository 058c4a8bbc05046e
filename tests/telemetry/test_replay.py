from __future__ import annotations

import csv
import time
from dataclasses import replace
from pathlib import Path

import pytest

from wattmoe.telemetry import (
    CSV_COLUMNS,
    GpuSystemMonitor,
    ReplayBackend,
    SimPowerModel,
    SimulatedBackend,
    read_samples_csv,
)
from wattmoe.telemetry.base import BackendUnavailable, UnknownDeviceError
from wattmoe.telemetry.csvlog import SampleCsvWriter

DATA = Path(__file__).parent / "data"


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


#: Recordings made by the monitor's CSV streaming: (file, device, source it recorded).
RECORDINGS = [
    ("sim_recorded.csv", "sim:0", "simulated"),
    # 11 s of the H200 validation run (results/h200/telemetry/samples.csv): idle, then GEMMs
    # at the 700 W power cap
    ("h200_recorded.csv", "cuda:0", "measured"),
]


@pytest.mark.parametrize(("name", "device", "source"), RECORDINGS)
def test_recorded_csv_columns_and_contents(name: str, device: str, source: str) -> None:
    path = DATA / name
    with path.open() as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    samples = read_samples_csv(path)[device]
    assert len(samples) > 20
    assert all(s.source == source for s in samples)
    energies = [s.energy_j for s in samples if not s.missing]
    assert energies == sorted(energies)  # a counter never goes back


@pytest.mark.parametrize(("name", "device", "source"), RECORDINGS)
def test_replay_plays_the_recording_against_a_clock(name: str, device: str, source: str) -> None:
    clock = Clock()
    path = DATA / name
    rec = read_samples_csv(path)[device]
    b = ReplayBackend(path, clock=clock)
    assert b.devices() == [device] and b.recorded_source(device) == source
    assert b.counter_period_s == pytest.approx(0.1, rel=0.3)
    assert b.sample(device) == rec[0].__class__(**{**rec[0].__dict__, "source": "replayed"})
    t0 = rec[0].timestamp_s
    mid = len(rec) // 2
    clock.t += rec[mid].timestamp_s - t0
    s = b.sample(device)
    assert s.timestamp_s == rec[mid].timestamp_s and s.source == "replayed"
    assert b.energy_j(device) == pytest.approx(rec[mid].energy_j)
    # half-way between two rows the counter is interpolated
    clock.t += (rec[mid + 1].timestamp_s - rec[mid].timestamp_s) / 2
    assert b.energy_j(device) == pytest.approx((rec[mid].energy_j + rec[mid + 1].energy_j) / 2)
    clock.t += 1e6
    assert b.finished and b.sample(device).timestamp_s == rec[-1].timestamp_s
    b.rewind()
    assert not b.finished
    with pytest.raises(UnknownDeviceError, match=device):
        b.sample("nope:1")


def test_window_over_the_h200_recording() -> None:
    """A window over the replayed H200 recording measures what the counter recorded."""
    clock = Clock()
    path = DATA / "h200_recorded.csv"
    rec = read_samples_csv(path)["cuda:0"]
    # the monitor times windows on the real clock (~0 s here): accept any duration
    replay = ReplayBackend(path, clock=clock, counter_period_s=0.0)
    mon = GpuSystemMonitor(backends={"cuda:0": replay})
    loaded = [s for s in rec if s.power_w and s.power_w > 600]
    a, b = loaded[5], loaded[-5]
    clock.t += a.timestamp_s - rec[0].timestamp_s
    mon.begin_window("gemm")
    clock.t += b.timestamp_s - a.timestamp_s
    m = mon.end_window("gemm")
    d = m.devices["cuda:0"]
    assert d.source == "replayed"
    assert d.energy_j == pytest.approx(b.energy_j - a.energy_j)
    assert "sw_power_cap" in {r for s in loaded for r in s.clock_event_reasons}


def test_record_then_replay_round_trip(tmp_path: Path) -> None:
    """The monitor's CSV streaming, replayed through a monitor, gives the same window energy."""
    sim = SimulatedBackend({"sim:0": SimPowerModel(idle_w=100, dynamic_w=300)})
    sim.set_utilization("sim:0", 1.0)  # 400 W
    path = tmp_path / "rec.csv"
    with GpuSystemMonitor(interval_s=0.01, csv_path=path, backends={"sim:0": sim}) as mon:
        time.sleep(0.3)
    rows = read_samples_csv(path)["sim:0"]
    assert len(rows) >= 10 and all(r.source == "simulated" for r in rows)
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    replay = ReplayBackend(path)
    mon = GpuSystemMonitor(backends={"sim:0": replay})
    mon.begin_window("w")
    time.sleep(0.15)
    d = mon.end_window("w").devices["sim:0"]
    assert d.source == "replayed"
    assert d.mean_power_w == pytest.approx(400.0, rel=0.02)


def test_csv_appends_without_a_second_header(tmp_path: Path) -> None:
    sim = SimulatedBackend({"sim:0": SimPowerModel(10, 0)})
    path = tmp_path / "rec.csv"
    mon = GpuSystemMonitor(interval_s=0.01, csv_path=path, backends={"sim:0": sim})
    mon.start()
    mon.start()  # idempotent
    time.sleep(0.05)
    mon.stop()
    mon.stop()
    n = len(path.read_text().splitlines())
    mon.start()
    time.sleep(0.05)
    mon.close()
    lines = path.read_text().splitlines()
    assert len(lines) > n and sum(line.startswith("time_s,") for line in lines) == 1


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read telemetry CSV"),
    ("", "lacks column"),
    ("a,b\n1,2\n", "lacks column"),
    ("time_s,device,energy_j\n", "no samples"),
    ("time_s,device,energy_j\n1.0,cuda:0,12\n1.1,cuda:0,abc\n",
     "line 3, column 'energy_j': 'abc' is not a number"),
    ("time_s,device\n1.0,cuda:0,7\n", "line 2: 3 cells for 2 columns"),
    ("time_s,device,source\n1.0,cuda:0,guessed\n", "'guessed' is not one of"),
    ("time_s,device\n,cuda:0\n", "line 2: empty 'time_s'"),
    # was: accepted; the recording then lasted for ever ("over 15.2 s of the recording",
    # 0 J after 3 s of playback)
    ("time_s,device,energy_j\n0,cuda:0,0\ninf,cuda:0,10\n",
     "line 3, column 'time_s': 'inf' is not a finite number"),
    ("time_s,device,energy_j\n0,cuda:0,0\n1,cuda:0,-Infinity\n",
     "line 3, column 'energy_j': '-Infinity' is not a finite number"),
    # was: "empty 'time_s'" for a cell that is not empty
    ("time_s,device\nnan,cuda:0\n", "line 2: 'time_s' is 'nan', not a time"),
])
def test_unreadable_or_malformed_files_give_one_clear_message(
        tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BackendUnavailable, match=message.replace("(", r"\(")):
        ReplayBackend(path)


def test_writer_refuses_a_foreign_csv(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("x,y\n1,2\n")
    sim = SimulatedBackend()
    mon = GpuSystemMonitor(csv_path=path, backends={"sim:0": sim})
    with pytest.raises(BackendUnavailable, match="other columns"):
        mon.start()


def test_replay_window_takes_peak_and_reasons_from_the_recorded_rows() -> None:
    """A window over a replay played faster than the sampler polls (here: no sampler at all)
    reports the recording's own peak, throttle reasons and missing count over the window, not
    what a poller happened to see (was: no peak, or a peak below the mean at --speed 10)."""
    clock = Clock()
    path = DATA / "h200_recorded.csv"
    rec = read_samples_csv(path)["cuda:0"]
    replay = ReplayBackend(path, clock=clock, counter_period_s=0.0, speed=10.0)
    mon = GpuSystemMonitor(backends={"cuda:0": replay})
    a, b = rec[3], rec[-3]
    clock.t += (a.timestamp_s - rec[0].timestamp_s) / 10
    mon.begin_window("w")
    clock.t += (b.timestamp_s - a.timestamp_s) / 10
    d = mon.end_window("w").devices["cuda:0"]
    inside = [s for s in rec if a.timestamp_s <= s.timestamp_s <= b.timestamp_s]
    assert d.peak_power_w == max(s.power_w for s in inside if not s.missing and s.power_w)
    assert d.peak_power_w >= d.mean_power_w
    assert set(d.clock_event_reasons) >= {r for s in inside for r in s.clock_event_reasons}
    assert "sampler not running" not in d.note


def test_replay_window_before_a_devices_first_row_counts_it_missing(tmp_path: Path) -> None:
    """Devices of one recording can start at different times: a window before a device's
    first row is missing samples there, as `sample()` says, not a complete window of 0 J with
    no note (review of session 11)."""
    clock = Clock()
    sim = SimulatedBackend({d: SimPowerModel(100.0, 200.0) for d in ("sim:0", "sim:1")})
    path = tmp_path / "two.csv"
    writer = SampleCsvWriter(path)
    for t in range(6):  # sim:0 recorded from 0 s, sim:1 from 3 s
        for dev in ("sim:0", "sim:1") if t >= 3 else ("sim:0",):
            writer.write(replace(sim.sample(dev), timestamp_s=float(t),
                                 energy_j=10.0 * t), "sim")
    writer.close()
    replay = ReplayBackend(path, clock=clock, counter_period_s=0.0)
    assert replay.sample("sim:1").missing
    mon = GpuSystemMonitor(backends={"sim:0": replay, "sim:1": replay})
    mon.begin_window("w")
    clock.t += 2.0
    d = mon.end_window("w").devices["sim:1"]
    assert "missing" in d.note and d.energy_j is None  # was 0.0 J, as if measured


def test_replay_window_across_a_counter_reset_is_not_the_counters_delta(tmp_path: Path) -> None:
    """A recording whose counter restarts mid-window (a driver reload, or two `monitor --csv`
    sessions in one file): the counter's edges differ by 102 J, the device drew 100 W for 6 s.
    Was: 102 J and 17 W, with no note."""
    path = tmp_path / "reset.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for i in range(101):
            t = i * 0.1
            e = 100 * t if i < 50 else 100 * (t - 5) + 2.0  # falls from 490 J to 2 J at 5 s
            w.writerow({"time_s": f"{t:.3f}", "device": "cuda:0", "source": "measured",
                        "missing": "0", "energy_j": f"{e:.3f}", "power_w": "100"})
    clock = Clock()
    replay = ReplayBackend(path, clock=clock)
    mon = GpuSystemMonitor(backends={"cuda:0": replay})
    clock.t += 2.0
    mon.begin_window("w")
    clock.t += 6.0
    d = mon.end_window("w").devices["cuda:0"]
    assert "energy counter went backwards" in d.note
    assert d.energy_j == pytest.approx(600.0)  # the recorded power x the window
    assert d.mean_power_w == pytest.approx(100.0)
    # a window that does not span the reset still reads the counter
    replay.rewind(6.0)
    mon.begin_window("after")
    clock.t += 2.0
    d = mon.end_window("after").devices["cuda:0"]
    assert d.energy_j == pytest.approx(200.0) and "backwards" not in d.note


def test_replay_without_a_counter_weights_uneven_rows_by_time(tmp_path: Path) -> None:
    """A recording of power only, logged every 1 s while idle (50 W, 10 s) and every 0.1 s
    under load (300 W, 1 s): 800 J. Was: the mean of the 21 rows (181 W) x 11 s = 1990 J."""
    path = tmp_path / "uneven.csv"
    rows = [(float(i), 50.0) for i in range(10)] + [(10 + 0.1 * i, 300.0) for i in range(11)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["time_s", "device", "power_w"])
        w.writeheader()
        for t, p in rows:
            w.writerow({"time_s": f"{t:.3f}", "device": "cpu", "power_w": p})
    clock = Clock()
    mon = GpuSystemMonitor(backends={"cpu": ReplayBackend(path, clock=clock)})
    mon.begin_window("w")
    clock.t += 11.0
    d = mon.end_window("w").devices["cpu"]
    assert d.energy_j == pytest.approx(800.0)
    assert d.mean_power_w == pytest.approx(800.0 / 11)
    assert d.peak_power_w == 300.0 and "time-weighted" in d.note


@pytest.mark.parametrize("header", ["\ufefftime_s,device,energy_j", "time_s, device , energy_j"])
def test_a_spreadsheet_saved_header_is_read(tmp_path: Path, header: str) -> None:
    """A byte-order mark (a CSV saved by a spreadsheet) or spaces around the names. Was:
    "lacks column(s) time_s" / "lacks column(s) device"."""
    path = tmp_path / "rec.csv"
    path.write_text(f"{header}\n0,cpu,0\n1,cpu,10\n", encoding="utf-8")
    (row0, row1) = read_samples_csv(path)["cpu"]
    assert (row0.timestamp_s, row1.energy_j) == (0.0, 10.0)
