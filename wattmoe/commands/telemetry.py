"""CLI of telemetry: `wattmoe monitor`, a live table of every device's power and temperature."""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any

from wattmoe.cli import command, console
from wattmoe.commands.argtypes import positive_float
from wattmoe.errors import ConfigError


def _monitor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default=None,
                   help="comma-separated cuda:N, GPU-<uuid>, cpu, sim:N (default: every device "
                        "found: each GPU CUDA sees, plus cpu)")
    p.add_argument("--interval", type=positive_float, default=None,
                   help="seconds between samples (default: the energy counter's update period, "
                        "0.1 s on NVML)")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--csv", default=None, metavar="PATH",
                   help="append every sample to this CSV (columns: wattmoe/telemetry/csvlog.py; "
                        "replay it with --replay)")
    p.add_argument("--replay", default=None, metavar="PATH",
                   help="play back a recorded telemetry CSV instead of reading devices (ends with "
                        "the recording)")
    p.add_argument("--speed", type=positive_float, default=None,
                   help="replay speed factor (default 1; with --replay only)")


def _f(v: float | None, fmt: str = ".1f", unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:{fmt}}{unit}"


def _table(mon: Any, first_energy: dict[str, float | None], elapsed_s: float,
           last_energy: dict[str, float] | None = None, final: Any = None) -> Any:
    """`last_energy`: the newest counter reading per device (samples between counter reads,
    e.g. NVML's 1 Hz `energy_period_s`, carry no energy). `final`: the closed window's
    `Measurement`, whose energies the last table shows, so that it agrees with the summary
    (the table's own readings start at its first look and end at its last refresh)."""
    from rich.table import Table

    t = Table(title=f"wattmoe monitor: {elapsed_s:.1f} s, every {mon.interval_s:.3g} s")
    for col, justify in (("device", "left"), ("backend", "left"), ("source", "left"),
                         ("power W", "right"), ("avg W", "right"), ("energy J", "right"),
                         ("temp C", "right"), ("mem C", "right"), ("limit W", "right"),
                         ("util", "right"), ("pressure T/P", "right"), ("clock events", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for d in mon.devices:
        b = mon.backend_for(d)
        s = mon.latest(d)
        if s is None:
            t.add_row(d, b.name, b.source, *["-"] * 9)
            continue
        e0 = first_energy.get(d)
        e1 = (last_energy or {}).get(d, s.energy_j)
        energy = e1 - e0 if e1 is not None and e0 is not None else None
        if final is not None and d in final.devices:
            energy = final.devices[d].energy_j
        p = mon.pressure(d)
        missing = mon.sampler_stats().missing
        t.add_row(
            d, b.name, b.source, _f(s.power_w), _f(s.power_average_w), _f(energy, ".1f"),
            _f(s.temperature_c, ".0f"), _f(s.memory_temperature_c, ".0f"),
            _f(s.power_limit_w, ".0f"), _f(None if s.utilization is None else 100 * s.utilization,
                                           ".0f", "%"),
            f"{p.thermal:.2f}/{p.power:.2f}",
            ", ".join(s.clock_event_reasons) + (f" ({missing} missing)" if missing else ""),
        )
    return t


@command("monitor", "live table of every device's power, energy and temperature", _monitor_args)
def cmd_monitor(args: argparse.Namespace) -> int:
    from rich.live import Live
    from rich.table import Table

    from wattmoe.telemetry import GpuSystemMonitor, ReplayBackend

    if args.speed is not None and not args.replay:  # was: silently ignored
        raise ConfigError(f"--speed {args.speed:g} needs --replay: live devices run in real time")
    devices = None
    if args.devices is not None:  # was: '' silently meant every device found
        devices = [d.strip() for d in args.devices.split(",")]
        if not any(devices):
            raise ConfigError(f"--devices {args.devices!r} names no device; give e.g. cpu or "
                              "cuda:0, or leave --devices out to monitor every device found")
        if "" in devices:
            raise ConfigError(f"--devices {args.devices!r}: item {devices.index('') + 1} is "
                              "empty; separate the names with single commas")
    backends = None
    replay = None
    if args.replay:
        replay = ReplayBackend(args.replay, speed=1.0 if args.speed is None else args.speed)
        drops = replay.counter_drops()
        if drops:  # its energy over the whole recording would be the counters' edges' delta
            device, ta, ea, tb, eb = drops[0]
            raise ConfigError(
                f"telemetry CSV {args.replay}: the energy counter of {device} falls from "
                f"{ea:.3g} J to {eb:.3g} J at time_s {tb:g} ({tb - ta:.1f} s after the row "
                "before): the recording holds more than one session (`monitor --csv` appends "
                "to an existing file) or the driver reloaded; replay one session at a time "
                "(cut the file there)")
        backends = {d: replay for d in replay.devices()}
        missing = [d for d in devices or () if d not in backends]
        if missing:  # (the monitor's own error says 'no backend given')
            raise ConfigError(
                f"--devices {args.devices!r}: {', '.join(map(repr, missing))} "
                f"{'is' if len(missing) == 1 else 'are'} not in the recording {args.replay} "
                f"(recorded: {', '.join(backends)})")
    mon = GpuSystemMonitor(devices, interval_s=args.interval, csv_path=args.csv,
                           backends=backends)
    first: dict[str, float | None] = {}
    last: dict[str, float] = {}
    t0 = time.monotonic()
    with contextlib.closing(mon):
        if replay is not None:
            # play the recording from its start, in the window: from the end of its first
            # sampling round (before it, a device would open the window with no reading)
            replay.rewind(replay.first_round_s)
        recorded0 = None if replay is None else replay.recorded_position_s()
        # the window opens before the sampler starts, so that its first round (the first rows
        # of --csv, which a replay of it includes) falls in it: opened after, the live
        # summary's peak power left out the first sample, and a device not yet read in that
        # round had no start temperature
        mon.begin_window("monitor")
        mon.start()
        m: Any = None
        try:
            with Live(_table(mon, first, 0.0), console=console, refresh_per_second=4) as live:
                try:
                    while args.seconds is None or time.monotonic() - t0 < args.seconds:
                        if replay is not None and replay.finished:
                            break  # the recording has ended: nothing more to play
                        time.sleep(min(0.25, mon.interval_s))
                        for d in mon.devices:
                            s = mon.latest(d)
                            if s is not None and s.energy_j is not None:
                                first.setdefault(d, s.energy_j)
                                last[d] = s.energy_j
                        live.update(_table(mon, first, time.monotonic() - t0, last))
                except KeyboardInterrupt:
                    pass
                m = mon.end_window("monitor")
                # the last table shows the window's energies, as the summary below does
                live.update(_table(mon, first, time.monotonic() - t0, last, final=m))
        except KeyboardInterrupt:  # a second Ctrl-C while the table closes
            pass
        if m is None:
            m = mon.end_window("monitor")
        recorded1 = None if replay is None else replay.recorded_position_s()
    console.print()
    title = f"over {m.duration_s:.1f} s"
    if recorded0 is not None and recorded1 is not None:
        title = (f"over {recorded1 - recorded0:.1f} s of the recording (played in "
                 f"{m.duration_s:.1f} s)")
    summary = Table(title=title)
    for col in ("device", "energy J", "mean W", "peak W", "temp C start -> end", "source", "note"):
        summary.add_column(col, justify="left" if col in ("device", "source", "note") else "right")
    for d, r in m.devices.items():
        summary.add_row(d, _f(r.energy_j), _f(r.mean_power_w), _f(r.peak_power_w),
                        f"{_f(r.start_temperature_c, '.0f')} -> {_f(r.end_temperature_c, '.0f')}",
                        r.source, r.note)
    console.print(summary)
    if args.csv:
        console.print(f"samples recorded in {args.csv}")
    return 0
