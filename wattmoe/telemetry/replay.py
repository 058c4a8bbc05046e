"""Replay of a recorded telemetry CSV (`source = 'replayed'`), for tests and re-analysis.

The file format is the monitor's (wattmoe/telemetry/csvlog.py documents the columns). The
recording plays back against a clock: at playback time `p` (seconds since the backend was made
or `rewind()`, times `speed`), `sample(device)` returns the last recorded row at or before
`p` and `energy_j(device)` interpolates the recorded energy counter linearly, so a monitor
window over a replay measures what the recording saw over the same stretch of time.
Recorded rows are also available as they are through `samples(device)`, and those in effect
over a stretch of recorded time through `recorded_samples(device, start_s, end_s)`: the monitor
takes a window's peak power, throttle reasons and missing count from them, since a poller
misses rows when the recording plays faster than it polls.
"""

from __future__ import annotations

import bisect
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from wattmoe.errors import ConfigError
from wattmoe.telemetry.base import DeviceSample, Source, UnknownDeviceError
from wattmoe.telemetry.csvlog import read_samples_csv
from wattmoe.telemetry.nvml import NVML_COUNTER_PERIOD_S


def infer_counter_period_s(samples: list[DeviceSample], default: float = NVML_COUNTER_PERIOD_S
                           ) -> float:
    """Median time between changes of the recorded energy counter (`default` if unknown)."""
    changes = []
    last = None
    for s in samples:
        if s.missing or s.energy_j is None:
            continue
        if last is not None and s.energy_j != last.energy_j:
            changes.append(s.timestamp_s)
        if last is None or s.energy_j != last.energy_j:
            last = s
    gaps = [b - a for a, b in itertools.pairwise(changes) if b > a]
    return statistics.median(gaps) if gaps else default


class ReplayBackend:
    """Plays back a telemetry CSV.

    Args:
        path: the CSV file.
        speed: recorded seconds per playback second (2.0 = twice as fast).
        loop: start over at the end instead of holding the last row.
        counter_period_s: None = inferred from the recording (see `infer_counter_period_s`).
        clock: time source for playback (tests inject a fake one).

    Raises:
        BackendUnavailable: unreadable or malformed file (one message naming line and column).
    """

    name = "replay"
    source: Source = "replayed"

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float = 1.0,
        loop: bool = False,
        counter_period_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"ReplayBackend speed must be > 0, got {speed!r}")
        self.path = Path(path)
        self._rows = read_samples_csv(self.path)
        self._times = {d: [s.timestamp_s for s in rows] for d, rows in self._rows.items()}
        self._energy = {
            d: [(s.timestamp_s, s.energy_j) for s in rows
                if not s.missing and s.energy_j is not None]
            for d, rows in self._rows.items()
        }
        self._t0 = min(t[0] for t in self._times.values())
        self._t1 = max(t[-1] for t in self._times.values())
        self.speed = float(speed)
        self.loop = loop
        self._clock = clock
        self._origin = clock()
        self.counter_period_s = float(
            counter_period_s if counter_period_s is not None
            else max(infer_counter_period_s(rows) for rows in self._rows.values()))

    def devices(self) -> list[str]:
        return list(self._rows)

    def samples(self, device: str) -> list[DeviceSample]:
        """The recorded rows of a device, as recorded (their own `source`)."""
        return list(self._check(device))

    def recorded_source(self, device: str) -> str:
        """The source the recording says (measured, estimated ...)."""
        return self._check(device)[0].source

    @property
    def time_scale(self) -> float:
        """Recorded seconds per second of playback (the monitor scales window durations)."""
        return self.speed

    @property
    def duration_s(self) -> float:
        return self._t1 - self._t0

    def _check(self, device: str) -> list[DeviceSample]:
        try:
            return self._rows[device]
        except KeyError:
            raise UnknownDeviceError(
                f"device {device!r} is not in {self.path}; it has {', '.join(self._rows)}"
            ) from None

    def rewind(self, to_s: float | None = None) -> None:
        """Plays from recorded time `to_s` (default: the recording's first row) on."""
        start = self._t0 if to_s is None else min(max(float(to_s), self._t0), self._t1)
        self._origin = self._clock() - (start - self._t0) / self.speed

    def counter_drops(self) -> list[tuple[str, float, float, float, float]]:
        """Where a device's recorded energy counter falls: (device, time_s before, energy_j
        before, time_s after, energy_j after), in recording order. A recording of more than
        one session (`monitor --csv` appends to an existing file; each session's counter
        starts anew) or a driver reload in it; a window across one has no true energy."""
        drops = []
        for device, pts in self._energy.items():
            drops += [(device, ta, ea, tb, eb)
                      for (ta, ea), (tb, eb) in itertools.pairwise(pts) if eb < ea]
        return sorted(drops, key=lambda d: d[3])

    @property
    def first_round_s(self) -> float:
        """The recorded time of the first sampling round's last row: the sampler writes a
        round's devices one after another, ms apart, and from there on every device has a
        reading. The recording's start where a device's first row comes more than a counter
        period after it (a device recorded later than the others)."""
        last_first = max(t[0] for t in self._times.values())
        return last_first if last_first - self._t0 <= self.counter_period_s else self._t0

    def position_s(self) -> float:
        """The recorded time being played now."""
        elapsed = (self._clock() - self._origin) * self.speed
        span = self._t1 - self._t0
        if self.loop and span > 0:
            elapsed %= span
        return self._t0 + elapsed

    def recorded_position_s(self) -> float | None:
        """The recorded time played now, held at the recording's end (None when looping: the
        recorded time covered between two moments is then not a difference of positions)."""
        return None if self.loop else min(self.position_s(), self._t1)

    @property
    def finished(self) -> bool:
        return not self.loop and self.position_s() >= self._t1

    def sample(self, device: str) -> DeviceSample:
        rows = self._check(device)
        pos = self.position_s()
        i = bisect.bisect_right(self._times[device], pos) - 1
        if i < 0:
            return DeviceSample(device=device, timestamp_s=pos, missing=True, source="replayed")
        return replace(rows[i], source="replayed")

    def recorded_samples(self, device: str, start_s: float, end_s: float
                         ) -> list[DeviceSample]:
        """The rows in effect between recorded times `start_s` and `end_s`, as `sample()` would
        return them: the last row at or before `start_s`, then every row up to `end_s`."""
        rows = self._check(device)
        times = self._times[device]
        first = bisect.bisect_right(times, start_s) - 1
        last = bisect.bisect_right(times, end_s)
        out = [replace(r, source="replayed") for r in rows[max(first, 0):last]]
        if first < 0:  # the window opens before the device's first row: missing, as sample()
            out.insert(0, DeviceSample(device=device, timestamp_s=start_s, missing=True,
                                       source="replayed"))
        return out

    def energy_j(self, device: str) -> float | None:
        """The recorded counter at the playback position, linearly interpolated; None before
        the device's first recorded reading."""
        self._check(device)
        pts = self._energy[device]
        if not pts:
            return None
        pos = self.position_s()
        i = bisect.bisect_right(pts, (pos, float("inf")))
        if i == 0:  # before this device's recording began: no reading, as sample() says
            return None
        if i == len(pts):
            return pts[-1][1]
        (ta, ea), (tb, eb) = pts[i - 1], pts[i]
        return ea + (eb - ea) * (pos - ta) / (tb - ta) if tb > ta else eb

    def slowdown_temperature_c(self, device: str) -> float | None:
        self._check(device)
        return None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"ReplayBackend({str(self.path)!r}, devices={self.devices()}, speed={self.speed})"
