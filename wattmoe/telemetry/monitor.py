"""`GpuSystemMonitor`: a background sampler, named measurement windows and pressure signals.

    mon = GpuSystemMonitor(["cuda:0", "cpu"])       # or devices=None: everything found
    with mon:                                       # start() ... close()
        with mon.window("expert-3") as w:
            run_kernels(); torch.cuda.synchronize()
        w.measurement.devices["cuda:0"].energy_j

Energy of a window is the difference of each device's energy counter read directly when the
window begins and ends (not taken from the sampler), so it does not depend on the sampling
interval. Mean power is that energy over the window's duration; peak power, throttle reasons
and the count of missing samples come from the sampler's readings that fall inside the
window (each open window keeps running sums, so windows may overlap and may be longer than
the ring buffer); over a replay that is not looping they come from the recorded rows of the
window instead (`ReplayBackend.recorded_samples`), which a poller misses when the recording
plays faster than it polls. A window shorter than a device's counter period is not measurable: its
energy is None, never 0 J.

The sampler is one daemon thread reading every device each `interval_s`, keeping the last
`buffer_size` samples per device in a ring buffer and optionally appending each to a CSV
(flushed per row; format in csvlog.py). A failed reading becomes a sample marked missing;
the first failure of each kind on each device is logged as a warning, the rest at debug.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wattmoe.checks import is_finite_real
from wattmoe.errors import ConfigError, MeasurementError
from wattmoe.telemetry.base import (
    DeviceMeasurement,
    DeviceSample,
    Measurement,
    Pressure,
    TelemetryBackend,
    TelemetryError,
    UnknownDeviceError,
)
from wattmoe.telemetry.csvlog import SampleCsvWriter
from wattmoe.telemetry.nvml import POWER_REASONS, THERMAL_REASONS

logger = logging.getLogger(__name__)

#: Samples kept per device (5 minutes at 10 Hz).
DEFAULT_BUFFER_SIZE = 3000
#: Bounds on the default sampling interval (the slowest counter's update period).
MIN_DEFAULT_INTERVAL_S = 0.05
MAX_DEFAULT_INTERVAL_S = 1.0
#: Thermal pressure is 0 at or below this temperature and 1 at the slowdown threshold.
THERMAL_FLOOR_C = 30.0
#: Slowdown threshold used when the backend does not know one.
DEFAULT_SLOWDOWN_C = 85.0
#: A measured counter delta can be off by up to one counter period over the window's duration
#: (confirmed on an H200: results/h200/telemetry); windows where that bound exceeds this get a
#: note. 2 % needs >= 50 periods, 5 s on NVML.
QUANTIZATION_NOTE_ERROR = 0.02


@dataclass(frozen=True)
class SamplerStats:
    """What the sampler thread did since `start()`.

    Attributes:
        ticks: sampling rounds (each reads every device).
        samples: readings taken, missing ones included.
        missing: readings that failed.
        overruns: rounds skipped because a round took longer than the interval.
        cpu_s: CPU time of the sampler thread (time.thread_time).
        wall_s: wall time the thread has been running.
    """

    ticks: int = 0
    samples: int = 0
    missing: int = 0
    overruns: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def cpu_fraction(self) -> float:
        """CPU time per wall second (1.0 = one core busy)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Acc:
    """Running sums of one device's samples inside one window."""

    total: int = 0
    missing: int = 0
    n_power: int = 0
    power_sum: float = 0.0
    peak_w: float | None = None
    reasons: dict[str, None] = field(default_factory=dict)
    last_energy_j: float | None = None
    drops: int = 0  # times the energy counter fell from one sample to the next

    def add(self, s: DeviceSample) -> None:
        self.total += 1
        if s.missing:
            self.missing += 1
            return
        if s.energy_j is not None:
            if self.last_energy_j is not None and s.energy_j < self.last_energy_j:
                self.drops += 1
            self.last_energy_j = s.energy_j
        if s.power_w is not None:
            self.n_power += 1
            self.power_sum += s.power_w
            self.peak_w = s.power_w if self.peak_w is None else max(self.peak_w, s.power_w)
        for r in s.clock_event_reasons:
            self.reasons[r] = None


@dataclass
class _Edge:
    """A device's reading at a window edge."""

    t: float
    energy_j: float | None
    temperature_c: float | None
    reasons: tuple[str, ...]
    error: str = ""
    recorded_s: float | None = None  # a replay's recorded time at the edge


@dataclass
class _Window:
    name: str
    t_begin: float
    edges: dict[str, _Edge]
    acc: dict[str, _Acc]
    t_end: float | None = None


class WindowHandle:
    """What `GpuSystemMonitor.window()` yields; `measurement` is set when the block exits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.measurement: Measurement | None = None

    def __repr__(self) -> str:
        return f"WindowHandle({self.name!r}, measurement={self.measurement!r})"


def _held_mean_power_w(rows: Sequence[DeviceSample], start_s: float, end_s: float
                       ) -> float | None:
    """Mean power over recorded times [start_s, end_s] of `rows` (sorted by time, the first
    at or before start_s), each row's power in effect until the next row: the time-weighted
    mean over the time covered by rows with a power reading; None where none is."""
    energy = covered = 0.0
    for i, r in enumerate(rows):
        t0 = max(r.timestamp_s, start_s)
        t1 = min(rows[i + 1].timestamp_s if i + 1 < len(rows) else end_s, end_s)
        if r.missing or r.power_w is None or not t1 > t0:
            continue
        energy += r.power_w * (t1 - t0)
        covered += t1 - t0
    return energy / covered if covered > 0 else None


def _clamp01(x: float) -> float:
    return 0.0 if not math.isfinite(x) or x < 0 else min(x, 1.0)


class GpuSystemMonitor:
    """Samples GPUs and CPUs in the background and measures named windows.

    Args:
        devices: device names (`cuda:N`, `GPU-<uuid>`, `cpu`, `sim:N`); None = every device
            found (each GPU CUDA sees, matched to NVML by UUID, plus `cpu`).
        interval_s: sampling interval; None = the slowest backend's counter update period
            (NVML: 0.1 s), kept within [0.05, 1] s.
        csv_path: also append every sample to this CSV (see csvlog.py), flushed per row.
        buffer_size: samples kept per device in the ring buffer.
        backends: device -> backend to use instead of `make_backends` (replay, simulation,
            tests). The monitor does not close backends it was given.

    Raises:
        UnknownDeviceError: a device name no backend knows.
        ConfigError: a non-positive interval or buffer size.
    """

    def __init__(
        self,
        devices: Sequence[str] | None = None,
        interval_s: float | None = None,
        csv_path: str | Path | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        *,
        backends: Mapping[str, TelemetryBackend] | None = None,
    ) -> None:
        if interval_s is not None and (not is_finite_real(interval_s) or interval_s <= 0):
            raise ConfigError(f"interval_s must be a finite number > 0, got {interval_s!r}")
        if not isinstance(buffer_size, int) or buffer_size < 1:
            raise ConfigError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if backends is None:
            from wattmoe.telemetry.factory import make_backends

            self._backends: dict[str, TelemetryBackend] = make_backends(devices)
            self._owns_backends = True
        else:
            chosen = dict(backends)
            if devices is not None:
                unknown = [d for d in devices if d not in chosen]
                if unknown:
                    raise UnknownDeviceError(
                        f"no backend given for {', '.join(map(repr, unknown))}; given: "
                        f"{', '.join(chosen)}")
                chosen = {d: chosen[d] for d in devices}
            self._backends = chosen
            self._owns_backends = False
        if not self._backends:
            raise UnknownDeviceError("no device to monitor")
        if interval_s is None:
            slowest = max(b.counter_period_s for b in self._backends.values())
            interval_s = min(max(slowest, MIN_DEFAULT_INTERVAL_S), MAX_DEFAULT_INTERVAL_S)
        self.interval_s = float(interval_s)
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.buffer_size = buffer_size
        self._buffers: dict[str, deque[DeviceSample]] = {
            d: deque(maxlen=buffer_size) for d in self._backends}
        self._latest: dict[str, DeviceSample] = {}
        self._latest_t: dict[str, float] = {}  # monitor time of each latest sample
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._writer: SampleCsvWriter | None = None
        self._stats = SamplerStats()
        self._logged: set[tuple[str, str]] = set()
        self._failing: dict[str, int] = {}
        self._slowdown_c: dict[str, float] = {}
        self._closed = False

    # --- devices ------------------------------------------------------------------------------

    @property
    def devices(self) -> list[str]:
        return list(self._backends)

    def backend_for(self, device: str) -> TelemetryBackend:
        """The backend reading `device` (its `.name` and `.source` say which was picked)."""
        try:
            return self._backends[device]
        except KeyError:
            raise UnknownDeviceError(
                f"unknown device {device!r}; this monitor has {', '.join(self._backends)}"
            ) from None

    def counter_period_s(self, device: str) -> float:
        """How often the device's energy counter updates; shorter windows are not measurable."""
        return float(self.backend_for(device).counter_period_s)

    # --- sampler ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> GpuSystemMonitor:
        """Starts the sampler thread (no-op when running)."""
        if self._closed:
            raise MeasurementError("this monitor is closed; make a new one")
        if self.running:
            return self
        if self.csv_path is not None and self._writer is None:
            self._writer = SampleCsvWriter(self.csv_path)
        self._stop.clear()
        self._stats = SamplerStats()
        self._thread = threading.Thread(target=self._run, name="wattmoe-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the sampler and closes the CSV (no-op when stopped). Windows stay open."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=min(max(5.0, 10 * self.interval_s), threading.TIMEOUT_MAX))
            if thread.is_alive():
                logger.warning("telemetry sampler did not stop within its timeout")
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Stops, and closes the backends the monitor made."""
        self.stop()
        if self._owns_backends and not self._closed:
            for backend in {id(b): b for b in self._backends.values()}.values():
                backend.close()
        self._closed = True

    def __enter__(self) -> GpuSystemMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sampler_stats(self) -> SamplerStats:
        return self._stats

    def _run(self) -> None:
        cpu0 = time.thread_time()
        wall0 = next_t = time.monotonic()
        ticks = overruns = 0
        while not self._stop.is_set():
            self.sample_once()
            ticks += 1
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:
                skipped = math.ceil((now - next_t) / self.interval_s)
                overruns += skipped
                next_t += skipped * self.interval_s
            s = self._stats
            self._stats = SamplerStats(ticks, s.samples, s.missing, overruns,
                                       time.thread_time() - cpu0, now - wall0)
            self._stop.wait(min(max(0.0, next_t - now), threading.TIMEOUT_MAX))

    def sample_once(self) -> dict[str, DeviceSample]:
        """Reads every device now, as one sampler round does (buffer, windows, CSV)."""
        out = {}
        missing = 0
        for device, backend in self._backends.items():
            t_taken = time.monotonic()
            sample = self._read(device, backend, t_taken)
            missing += sample.missing
            out[device] = sample
            with self._lock:
                self._buffers[device].append(sample)
                if not sample.missing:
                    self._latest[device] = sample
                    self._latest_t[device] = t_taken
                for w in self._windows.values():
                    if w.t_begin <= t_taken and (w.t_end is None or t_taken <= w.t_end):
                        w.acc[device].add(sample)
            writer = self._writer
            if writer is not None:
                writer.write(sample, backend.name)
        s = self._stats
        self._stats = SamplerStats(s.ticks, s.samples + len(out), s.missing + missing,
                                   s.overruns, s.cpu_s, s.wall_s)
        return out

    def _read(self, device: str, backend: TelemetryBackend, t: float) -> DeviceSample:
        try:
            sample = backend.sample(device)
        except Exception as exc:
            key = (device, type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                if isinstance(exc, TelemetryError):
                    logger.warning("%s: reading failed, sample marked missing (%s); further "
                                   "failures of this kind are logged at debug level", device, exc)
                else:
                    logger.exception("%s: unexpected error in %s backend; sample marked missing",
                                     device, backend.name)
            else:
                logger.debug("%s: reading failed: %s", device, exc)
            self._failing[device] = self._failing.get(device, 0) + 1
            return DeviceSample(device=device, timestamp_s=t, source=backend.source, missing=True)
        if self._failing.get(device):
            logger.info("%s: readings back after %d missing sample(s)", device,
                        self._failing.pop(device))
        return sample

    # --- history ------------------------------------------------------------------------------

    def latest(self, device: str) -> DeviceSample | None:
        """The newest successful sample of `device`, or None before the first one."""
        self.backend_for(device)
        with self._lock:
            return self._latest.get(device)

    def history(self, device: str, seconds: float | None = None) -> list[DeviceSample]:
        """Buffered samples of `device` (missing ones included), oldest first; only those of
        the last `seconds` when given."""
        self.backend_for(device)
        with self._lock:
            samples = list(self._buffers[device])
        if seconds is not None and samples:
            cutoff = samples[-1].timestamp_s - seconds
            samples = [s for s in samples if s.timestamp_s >= cutoff]
        return samples

    # --- windows ------------------------------------------------------------------------------

    @property
    def open_windows(self) -> list[str]:
        with self._lock:
            return list(self._windows)

    def _synchronize(self) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if torch.cuda.is_initialized():
                for d in self._backends:
                    if d.startswith("cuda:"):
                        torch.cuda.synchronize(int(d.split(":", 1)[1]))
        except (RuntimeError, ValueError) as exc:
            logger.debug("CUDA synchronize before a window edge failed: %s", exc)

    def _read_edges(self) -> dict[str, _Edge]:
        edges = {}
        for device, backend in self._backends.items():
            error = ""
            t0 = time.monotonic()
            try:
                read = getattr(backend, "energy_j", None)
                energy = read(device) if read is not None else backend.sample(device).energy_j
            except TelemetryError as exc:
                energy, error = None, f"energy read failed: {exc}"
            position = getattr(backend, "recorded_position_s", None)
            recorded = position() if callable(position) else None
            t1 = time.monotonic()
            temp, reasons = None, ()
            latest = self._latest.get(device)
            fresh = t1 - self._latest_t.get(device, -math.inf) <= 2 * self.interval_s
            if self.running and fresh and latest is not None:
                temp, reasons = latest.temperature_c, latest.clock_event_reasons
            elif not self.running:
                try:
                    s = backend.sample(device)
                    temp, reasons = s.temperature_c, s.clock_event_reasons
                except TelemetryError:
                    pass
            edges[device] = _Edge((t0 + t1) / 2, energy, temp, reasons, error, recorded)
        return edges

    def begin_window(self, name: str, *, sync: bool = False) -> None:
        """Opens a named window: reads every device's energy counter now.

        Args:
            name: the window's name; windows of different names may overlap.
            sync: first wait for the CUDA devices monitored (torch.cuda.synchronize), when
                torch is loaded and CUDA initialized.

        Raises:
            MeasurementError: a window of that name is already open.
        """
        with self._lock:
            if name in self._windows:
                raise MeasurementError(f"window {name!r} is already open")
        if sync:
            self._synchronize()
        t_begin = time.monotonic()
        edges = self._read_edges()
        with self._lock:
            if name in self._windows:
                raise MeasurementError(f"window {name!r} is already open")
            self._windows[name] = _Window(name, t_begin, edges,
                                          {d: _Acc() for d in self._backends})

    def end_window(self, name: str, *, sync: bool = False) -> Measurement:
        """Closes a window and returns what every device did during it.

        Raises:
            MeasurementError: no window of that name is open.
        """
        if sync:
            self._synchronize()
        t_end = time.monotonic()
        with self._lock:
            win = self._windows.get(name)
            if win is None:
                open_ = ", ".join(map(repr, self._windows)) or "none"
                raise MeasurementError(f"no open window {name!r} (open: {open_})")
            win.t_end = t_end
        edges = self._read_edges()
        with self._lock:
            self._windows.pop(name, None)
        running = self.running
        devices = {
            d: self._device_result(d, self._backends[d], win.edges[d], edges[d], win.acc[d],
                                   running)
            for d in self._backends
        }
        return Measurement(name=name, start_s=win.t_begin, duration_s=t_end - win.t_begin,
                           devices=devices)


    @contextlib.contextmanager
    def window(self, name: str, *, sync: bool = False) -> Iterator[WindowHandle]:
        """`with mon.window(name) as w:` ... `w.measurement` (set on exit, errors included)."""
        handle = WindowHandle(name)
        self.begin_window(name, sync=sync)
        try:
            yield handle
        finally:
            handle.measurement = self.end_window(name, sync=sync)

    def _device_result(self, device: str, backend: TelemetryBackend, b: _Edge, e: _Edge,
                       acc: _Acc, running: bool) -> DeviceMeasurement:
        period = float(backend.counter_period_s)
        # a replay played faster than real time covers `time_scale` recorded s per second,
        # and none once its recording has ended: its own recorded times at the edges say
        if b.recorded_s is not None and e.recorded_s is not None:
            duration = e.recorded_s - b.recorded_s
        else:
            duration = (e.t - b.t) * float(getattr(backend, "time_scale", 1.0))
        notes = [x for x in (b.error and f"begin: {b.error}", e.error and f"end: {e.error}") if x]
        recorded_rows = getattr(backend, "recorded_samples", None)
        from_recording = (callable(recorded_rows) and b.recorded_s is not None
                          and e.recorded_s is not None)
        held_mean = None
        if from_recording:
            acc = _Acc()
            rows = recorded_rows(device, b.recorded_s, e.recorded_s)
            for s in rows:
                acc.add(s)
            held_mean = _held_mean_power_w(rows, b.recorded_s, e.recorded_s)
        # a recording's rows need not be evenly spaced (gaps, a logger slower while idle):
        # their power is weighted by the recorded time each is in effect, as `sample()` plays
        # them; a live sampler's rounds are evenly spaced
        sampled_mean = (held_mean if held_mean is not None
                        else acc.power_sum / acc.n_power if acc.n_power else None)
        how = (f"time-weighted mean of {acc.n_power} recorded power rows" if held_mean is not None
               else f"mean of {acc.n_power} polled power samples")
        energy: float | None = None
        mean: float | None = None
        measurable = True
        if duration < period:
            measurable = False
            mean = sampled_mean
            notes.append(
                f"window of {duration * 1e3:.1f} ms is shorter than the {period * 1e3:.0f} ms "
                "counter update period: not measurable (repeat the work so that the window "
                "spans at least ~1 s)")
        elif b.energy_j is not None and e.energy_j is not None:
            delta = e.energy_j - b.energy_j
            # a counter that fell and grew again inside the window (a driver reload, a
            # replayed recording of two sessions) leaves a delta that is not the energy: the
            # samples in the window, and the end edge after the last of them, say so
            fell = acc.drops or (acc.last_energy_j is not None
                                 and e.energy_j < acc.last_energy_j)
            if delta < 0 or fell:
                notes.append("energy counter went backwards (driver reloaded?)")
            else:
                energy, mean = delta, delta / duration if duration > 0 else None
                bound = period / duration if duration > 0 else 1.0
                if backend.source == "measured" and bound > QUANTIZATION_NOTE_ERROR:
                    notes.append(
                        f"counter updates every {period * 1e3:.0f} ms: energy may be off by up "
                        f"to {min(bound, 1.0):.0%} (2% needs >= {period / 0.02:.0f} s)")
        if measurable and energy is None:
            if sampled_mean is not None:
                energy, mean = sampled_mean * duration, sampled_mean
                notes.append(f"no energy counter reading: {how} x duration")
            else:
                notes.append("no energy: no counter reading and no power sample")
        if not running and not from_recording:
            notes.append("sampler not running: no peak power, throttle reasons from the edges")
        if acc.missing:
            notes.append(f"{acc.missing} of {acc.total} samples missing")
        reasons = dict.fromkeys(b.reasons)
        reasons.update(acc.reasons)
        reasons.update(dict.fromkeys(e.reasons))
        return DeviceMeasurement(
            device=device, energy_j=energy, mean_power_w=mean, peak_power_w=acc.peak_w,
            start_temperature_c=b.temperature_c, end_temperature_c=e.temperature_c,
            clock_event_reasons=tuple(reasons), source=backend.source, measurable=measurable,
            note="; ".join(notes),
        )

    # --- pressure -----------------------------------------------------------------------------

    def _slowdown(self, device: str) -> float:
        if device not in self._slowdown_c:
            fn = getattr(self.backend_for(device), "slowdown_temperature_c", None)
            value = None
            if fn is not None:
                try:
                    value = fn(device)
                except TelemetryError as exc:
                    logger.debug("%s: no slowdown threshold: %s", device, exc)
            self._slowdown_c[device] = float(value) if value else DEFAULT_SLOWDOWN_C
        return self._slowdown_c[device]

    def pressure(self, device: str, power_budget_w: float | None = None) -> Pressure:
        """Thermal and power pressure of a device from its newest sample, each in [0, 1].

        thermal = (T - 30 C) / (slowdown threshold - 30 C), 1 while a thermal clock-event
        reason is active. power = power / (power_budget_w or the enforced limit), 1 while
        power-capped (when no budget is given). Unknown readings give 0. Reads the device
        directly when the sampler has no sample yet.

        Raises:
            ConfigError: a power budget that is not > 0.
        """
        if power_budget_w is not None and not (
                isinstance(power_budget_w, int | float) and power_budget_w > 0):
            raise ConfigError(f"power_budget_w must be > 0 W, got {power_budget_w!r}")
        sample = self.latest(device)
        if sample is None:
            try:
                sample = self.backend_for(device).sample(device)
            except TelemetryError as exc:
                logger.debug("%s: no reading for pressure: %s", device, exc)
                return Pressure(0.0, 0.0)
        reasons = set(sample.clock_event_reasons)
        thermal = 0.0
        if reasons & THERMAL_REASONS:
            thermal = 1.0
        elif sample.temperature_c is not None:
            slow = self._slowdown(device)
            span = slow - THERMAL_FLOOR_C
            thermal = _clamp01((sample.temperature_c - THERMAL_FLOOR_C) / span) if span > 0 else 1.0
        power = 0.0
        limit = power_budget_w or sample.power_limit_w
        if power_budget_w is None and reasons & POWER_REASONS:
            power = 1.0
        elif sample.power_w is not None and limit:
            power = _clamp01(sample.power_w / limit)
        return Pressure(thermal=thermal, power=power)

    def __repr__(self) -> str:
        parts = ", ".join(f"{d}: {b.name}" for d, b in self._backends.items())
        return f"GpuSystemMonitor({parts}, interval_s={self.interval_s})"
