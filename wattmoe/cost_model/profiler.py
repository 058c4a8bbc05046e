"""The kernel profiler: runs each scenario in isolation and measures time, energy and heat.

Per scenario: build the op's weights and inputs, warm up, estimate the call time, then open
one telemetry window and run the op back to back until the window spans at least the
shortest accurate energy window (synchronizing before it closes). `reps` calls spread over
the window (every k-th) are timed one by one (CUDA events on a GPU, perf_counter on a CPU)
for the median and spread; the window's energy divided by its calls is the energy per call,
and its wall time divided by its calls the time per call that goes with that energy. torch.profiler
then records the kernels of a few more calls. Between scenarios the device cools down to
within a few degrees of its pre-sweep temperature (or for at most `cooldown_max_s`).

The telemetry monitor is injected (`EnergyMonitor`: `wattmoe.telemetry.GpuSystemMonitor`
satisfies it), so tests run with a fake monitor and no hardware.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from wattmoe.cost_model.base import CostModelError, DeviceInfo, ProfileFormatError, ProfilePoint
from wattmoe.cost_model.database import parse_point
from wattmoe.cost_model.scenarios import Scenario, build_runner
from wattmoe.cost_model.traces import capture_kernels
from wattmoe.errors import os_error_as
from wattmoe.telemetry.base import Measurement

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 1.0
TELEMETRY_SUMMARY = Path("results/h200/telemetry/summary.json")


class EnergyMonitor(Protocol):
    """What the profiler needs from telemetry (GpuSystemMonitor provides it)."""

    def begin_window(self, name: str) -> None: ...

    def end_window(self, name: str) -> Measurement: ...

    def counter_period_s(self, device: str) -> float: ...

    def backend_for(self, device: str) -> Any: ...


def shortest_accurate_window_s(path: str | Path = TELEMETRY_SUMMARY) -> float:
    """The telemetry validation's shortest accurate NVML window; 1.0 s when not recorded."""
    try:
        v = json.loads(Path(path).read_text()).get("shortest_accurate_window_s")
        if v is not None and float(v) > 0:
            return float(v)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return DEFAULT_WINDOW_S


@dataclass(frozen=True)
class ProfilerConfig:
    """How each scenario is measured.

    Attributes:
        warmup: untimed calls first.
        reps: timed calls for the latency median and spread (at most).
        min_reps: timed calls at least, even for slow ops.
        latency_budget_s: time the timed calls may take before `reps` is cut (>= min_reps).
        min_window_s: energy window length for every device; None = GPUs use the telemetry
            validation's shortest accurate window (default 1 s), CPUs `cpu_min_window_s`.
        cpu_min_window_s: CPU window (also >= 3 counter periods of the CPU backend).
        cooldown_max_s / cooldown_tolerance_c / cooldown_min_s: before each scenario wait
            until the device is within tolerance of its pre-sweep temperature, for at least
            min and at most max seconds.
        torch_profiler / profiler_reps / tensorboard_dir: kernel capture per scenario.
        spread_timed_calls: time every k-th call of the window, so that the `reps` timed
            calls span it (False: the window's first `reps` calls, as in profiles made
            before this option existed).
        idle_window: measure each device's idle power before the sweep.
        deadline_s: start no scenario after this many seconds of sweep (None: no limit).
        seed: seed of weights and inputs.
    """

    warmup: int = 3
    reps: int = 50
    min_reps: int = 5
    latency_budget_s: float = 0.5
    min_window_s: float | None = None
    cpu_min_window_s: float = 0.5
    telemetry_summary: str = str(TELEMETRY_SUMMARY)
    cooldown_max_s: float = 3.0
    cooldown_tolerance_c: float = 3.0
    cooldown_min_s: float = 0.0
    cooldown_poll_s: float = 0.1
    torch_profiler: bool = True
    profiler_reps: int = 3
    tensorboard_dir: str | None = None
    spread_timed_calls: bool = True
    idle_window: bool = True
    deadline_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("warmup", "reps", "min_reps", "profiler_reps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise CostModelError(f"profiler {name} must be an integer >= 0, got {v!r}")
        if self.reps < 1 or self.min_reps < 1 or self.min_reps > self.reps:
            raise CostModelError(f"need 1 <= min_reps <= reps, got {self.min_reps}, {self.reps}")
        for name in ("latency_budget_s", "cpu_min_window_s", "cooldown_max_s",
                     "cooldown_tolerance_c", "cooldown_min_s", "cooldown_poll_s"):
            if not getattr(self, name) >= 0:
                raise CostModelError(f"profiler {name} must be >= 0, got {getattr(self, name)}")
        if self.min_window_s is not None and not self.min_window_s > 0:
            raise CostModelError(f"min_window_s must be > 0, got {self.min_window_s}")
        if self.deadline_s is not None and not (math.isfinite(self.deadline_s)
                                                and self.deadline_s > 0):
            # 0 would start no scenario at all
            raise CostModelError(f"deadline_s must be a finite number > 0, got {self.deadline_s}")


@dataclass
class SweepResult:
    points: list[ProfilePoint] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    wall_s: float = 0.0


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return device


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class JsonlWriter:
    """Appends one JSON record per line, flushed and fsynced (an interrupted sweep keeps it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with os_error_as(CostModelError, f"cannot write sweep log {str(self.path)!r}"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._end_torn_tail()
            self._fh = self.path.open("a", encoding="utf-8")

    def _end_torn_tail(self) -> None:
        """An interrupted write can leave a last line without its newline: appending after it
        would glue the next record onto it. A complete record gets its newline; a torn one
        is cut off (`read_jsonl` ignores it anyway)."""
        if not self.path.is_file():
            return
        with self.path.open("rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return  # the usual case: one byte read, not the whole log
            cut = 0  # the start of the last line, looked for backwards in blocks
            pos = end
            while pos > 0:
                size = min(1 << 16, pos)
                pos -= size
                fh.seek(pos)
                i = fh.read(size).rfind(b"\n")
                if i >= 0:
                    cut = pos + i + 1
                    break
            fh.seek(cut)
            try:
                json.loads(fh.read())
            except ValueError:
                log.warning("%s: cutting off a truncated last line (an interrupted write)",
                            self.path)
                fh.truncate(cut)
            else:
                fh.write(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


@dataclass
class SweepLog:
    """Everything a sweep's JSONL holds."""

    points: list[ProfilePoint] = field(default_factory=list)
    devices: dict[str, DeviceInfo] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)


def read_jsonl(path: str | Path) -> SweepLog:
    """Reads a sweep's JSONL. A truncated last line (an interrupted write) is ignored.

    Raises:
        CostModelError: the file cannot be read, a line other than the last is not JSON, or a
            record is not one a sweep writes (the message names the line).
    """
    out = SweepLog()
    with os_error_as(CostModelError, f"cannot read sweep log {str(path)!r}",
                     also=(UnicodeDecodeError,)):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: ignoring a truncated last line", path)
                continue
            raise CostModelError(f"{path}: line {i + 1} is not JSON") from None
        if not isinstance(rec, dict):
            raise CostModelError(f"{path}: line {i + 1} is not a JSON object")
        kind = rec.pop("record", "point")
        try:
            if kind == "device":
                out.devices[rec["device"]] = DeviceInfo(**rec)
            elif kind == "error":
                out.errors.append(rec)
            elif kind == "run":
                out.runs.append(rec)
            else:  # the profile loader's checks, so that cost-eval takes what it takes
                out.points.append(parse_point(rec, f"{path}: line {i + 1}"))
        except ProfileFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CostModelError(
                f"{path}: line {i + 1} is not a sweep {kind!r} record ({type(exc).__name__}: "
                f"{exc})"
            ) from None
    return out


class KernelProfiler:
    """Measures scenarios with an injected telemetry monitor.

    Args:
        monitor: a started telemetry monitor covering every device profiled.
        config: measurement settings.
    """

    def __init__(self, monitor: EnergyMonitor, config: ProfilerConfig | None = None) -> None:
        self.monitor = monitor
        self.config = config or ProfilerConfig()
        self._baseline_c: dict[str, float | None] = {}
        self._n = 0

    # --- device state -------------------------------------------------------------------

    def min_window_s(self, device: str) -> float:
        cfg = self.config
        if cfg.min_window_s is not None:
            return cfg.min_window_s
        if device.startswith("cuda"):
            return shortest_accurate_window_s(cfg.telemetry_summary)
        try:
            period = float(self.monitor.counter_period_s(device))
        except Exception:  # a backend without a period
            period = 0.0
        return max(cfg.cpu_min_window_s, 3 * period)

    def _sample(self, device: str) -> Any | None:
        # prefer the monitor's own latest sample: a backend read from this thread could
        # disturb a stateful backend (the CPU estimate differences utilization counters)
        latest = getattr(self.monitor, "latest", None)
        if latest is not None and getattr(self.monitor, "running", False):
            s = latest(device)
            if s is not None and not getattr(s, "missing", False):
                return s
        try:
            return self.monitor.backend_for(device).sample(device)
        except Exception as exc:  # telemetry must not stop a sweep
            log.debug("sample of %s failed: %s", device, exc)
            return None

    def _temperature(self, device: str) -> float | None:
        s = self._sample(device)
        return None if s is None else s.temperature_c

    def device_info(self, device: str) -> DeviceInfo:
        """Records the device's name, energy source and, optionally, its idle power."""
        try:
            backend = self.monitor.backend_for(device)
            source = str(backend.source)
        except Exception:
            source = "unknown"
        try:
            period = float(self.monitor.counter_period_s(device))
        except Exception:
            period = None
        info = DeviceInfo(device, device_name(device), source, period, self.min_window_s(device))
        sample = self._sample(device)
        if sample is not None:
            info.power_limit_w = sample.power_limit_w
        if self.config.idle_window:
            _sync(device)()
            name = f"idle:{device}"
            self.monitor.begin_window(name)
            time.sleep(info.min_window_s)
            m = self.monitor.end_window(name)
            dm = m.devices.get(device)
            if dm is not None:
                info.idle_power_w = dm.mean_power_w
                if dm.energy_j is not None and m.duration_s > 0:
                    info.idle_power_w = dm.energy_j / m.duration_s
                info.idle_temperature_c = dm.end_temperature_c
        if info.idle_temperature_c is None:
            info.idle_temperature_c = self._temperature(device)
        self._baseline_c[device] = info.idle_temperature_c
        return info

    def cooldown(self, device: str) -> float:
        """Waits until `device` is near its baseline temperature; returns the seconds waited."""
        cfg = self.config
        t0 = time.monotonic()
        if cfg.cooldown_min_s:
            time.sleep(cfg.cooldown_min_s)
        base = self._baseline_c.get(device)
        if base is None:
            if device not in self._baseline_c:
                self._baseline_c[device] = base = self._temperature(device)
            if base is None:
                return time.monotonic() - t0
        while time.monotonic() - t0 < cfg.cooldown_max_s:
            temp = self._temperature(device)
            if temp is None or temp <= base + cfg.cooldown_tolerance_c:
                break
            time.sleep(cfg.cooldown_poll_s)
        return time.monotonic() - t0

    def _tick_reader(self, device: str) -> tuple[Callable[[], float | None], float] | None:
        """The device's raw energy counter when it is a measured, coarsely updated one.

        NVML's counter updates about every 100 ms; a window whose edges fall between two
        updates is off by up to one period of power at each edge (10% of a 1 s window).
        Opening and closing windows right after an update removes that error.
        """
        try:
            backend = self.monitor.backend_for(device)
            period = float(backend.counter_period_s)
        except Exception:
            return None
        read = getattr(backend, "energy_j", None)
        if read is None or backend.source != "measured" or period < 0.02:
            return None
        return (lambda: read(device)), period

    @staticmethod
    def _until_tick(tick: tuple[Callable[[], float | None], float], work: Callable[[], Any],
                    sync: Callable[[], None]) -> bool:
        """Runs `work` until the counter changes (at most ~3 periods); True when it did."""
        read, period = tick
        try:
            v0 = read()
            if v0 is None:
                return False
            t0 = time.perf_counter()
            limit = 3 * period
            while time.perf_counter() - t0 < limit:
                work()  # launched asynchronously: the device works while the counter is read
                v = read()
                sync()
                if v != v0:
                    return True
        except Exception as exc:  # alignment is a refinement; never fail a scenario on it
            log.debug("counter alignment failed: %s", exc)
        return False

    # --- one scenario -------------------------------------------------------------------

    def measure(self, sc: Scenario, cooldown_s: float = 0.0) -> ProfilePoint:
        """Measures one scenario (see the module docstring)."""
        cfg = self.config
        fn = build_runner(sc, seed=cfg.seed)
        sync = _sync(sc.device)
        cuda = sc.device.startswith("cuda")
        with torch.inference_mode():
            for _ in range(cfg.warmup):
                fn()
            sync()
            # estimate the call time with a few synchronized calls (>= ~5 ms in all)
            k, t0 = 0, time.perf_counter()
            while True:
                fn()
                k += 1
                sync()
                el = time.perf_counter() - t0
                if el >= 5e-3 or k >= cfg.reps:
                    break
            est = max(el / k, 1e-7)
            reps = int(min(cfg.reps, max(cfg.min_reps, math.ceil(cfg.latency_budget_s / est))))
            window = self.min_window_s(sc.device)
            chunk = max(1, int(0.05 / est))  # synchronize about every 50 ms
            tick = self._tick_reader(sc.device)
            tick_chunk = max(1, int(0.01 / est))  # ~10 ms of work per counter poll
            if cuda:
                starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
                ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            lat: list[float] = []
            calls = timed = 0
            # time every `stride`-th call, so that the timed calls span the whole window
            stride = max(1, int(window / est / reps)) if cfg.spread_timed_calls else 1

            def run(k: int) -> None:
                nonlocal calls, timed
                for _ in range(k):
                    if timed < reps and calls % stride == 0:
                        if cuda:
                            starts[timed].record()
                            fn()
                            ends[timed].record()
                        else:
                            c0 = time.perf_counter()
                            fn()
                            lat.append(time.perf_counter() - c0)
                        timed += 1
                    else:
                        fn()
                    calls += 1

            name = f"scenario:{self._n}"
            self._n += 1
            aligned = False
            if tick is not None:  # lead-in: open the window right after a counter update
                aligned = self._until_tick(tick, lambda: [fn() for _ in range(tick_chunk)], sync)
            self.monitor.begin_window(name)
            w0 = time.perf_counter()
            while True:
                run(chunk)
                sync()
                if timed >= reps and time.perf_counter() - w0 >= window:
                    break
            if aligned:  # and close it right after a counter update, the device still busy
                aligned = self._until_tick(tick, lambda: run(tick_chunk), sync)
            sync()
            wall = time.perf_counter() - w0
            m = self.monitor.end_window(name)
            if cuda:
                lat = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
            kernels = []
            if cfg.torch_profiler:
                try:
                    trace = f"{sc.op}-{sc.shape.key}-{sc.dtype}-n{sc.tokens}".replace(":", "_")
                    kernels = capture_kernels(fn, sc.device, reps=cfg.profiler_reps,
                                              tensorboard_dir=cfg.tensorboard_dir,
                                              trace_name=trace)
                except Exception as exc:  # the profiler is optional evidence, not the measure
                    log.warning("torch.profiler failed on %s: %s", sc.describe(), exc)
        fn = None  # drop the weights before emptying the cache
        if cuda:
            torch.cuda.empty_cache()
        return self._point(sc, lat, calls, wall, m, kernels, cooldown_s, aligned)

    def _point(self, sc: Scenario, lat: list[float], calls: int, wall: float, m: Measurement,
               kernels: list, cooldown_s: float, aligned: bool = False) -> ProfilePoint:
        dm = m.devices.get(sc.device)
        flops, byts = sc.work()
        energy = avg_p = peak = t_start = t_end = None
        reasons: list[str] = []
        source, measurable, note = "estimated", False, "device not in the telemetry window"
        if dm is not None:
            source, measurable, note = dm.source, dm.measurable, dm.note
            if dm.energy_j is not None and dm.measurable:
                energy = dm.energy_j / calls
            avg_p, peak = dm.mean_power_w, dm.peak_power_w
            t_start, t_end = dm.start_temperature_c, dm.end_temperature_c
            reasons = list(dm.clock_event_reasons)
        if energy is not None and avg_p is None and m.duration_s > 0:
            avg_p = energy * calls / m.duration_s
        return ProfilePoint(
            op=sc.op, device=sc.device, dtype=sc.dtype, shape=sc.shape, tokens=sc.tokens,
            preset=sc.preset, latency_s=statistics.median(lat),
            latency_p10_s=_quantile(lat, 0.1), latency_p90_s=_quantile(lat, 0.9),
            latency_iqr_s=_quantile(lat, 0.75) - _quantile(lat, 0.25), reps=len(lat),
            energy_j=energy, source=source, window_s=m.duration_s or wall, window_calls=calls,
            window_mean_latency_s=wall / calls,
            avg_power_w=avg_p, peak_power_w=peak, start_temperature_c=t_start,
            end_temperature_c=t_end, clock_event_reasons=reasons, flops=flops, bytes_moved=byts,
            kernels=kernels, cooldown_s=cooldown_s, measurable=measurable, note=note,
            edges_aligned=aligned,
        )

    # --- a sweep ------------------------------------------------------------------------

    def run_sweep(
        self,
        scenarios: Iterable[Scenario],
        jsonl_path: str | Path | None = None,
        progress: Callable[[Scenario, ProfilePoint | None, str], None] | None = None,
        resume: bool = False,
    ) -> SweepResult:
        """Measures every scenario in turn, appending each result to `jsonl_path`.

        With `resume`, scenarios already in the JSONL are skipped and their points kept.
        `progress(scenario, point_or_None, message)` is called after each scenario.
        """
        t_start = time.monotonic()
        scenarios = list(scenarios)
        res = SweepResult()
        done: set[tuple] = set()
        if resume and jsonl_path is not None and Path(jsonl_path).exists():
            prev = read_jsonl(jsonl_path)
            res.points, res.devices, res.errors = prev.points, prev.devices, prev.errors
            done = {(p.op, p.device, p.dtype, p.shape.key, p.tokens) for p in prev.points}
            for d in prev.devices.values():
                self._baseline_c.setdefault(d.device, d.idle_temperature_c)
        writer = JsonlWriter(jsonl_path) if jsonl_path is not None else None
        try:
            for dev in dict.fromkeys(s.device for s in scenarios):
                if dev not in res.devices:
                    info = self.device_info(dev)
                    res.devices[dev] = info
                    if writer:
                        writer.write({"record": "device", **asdict(info)})
            first = True
            for sc in scenarios:
                if sc.key in done:
                    if progress:
                        progress(sc, None, "already measured (resume)")
                    continue
                if self.config.deadline_s is not None and (
                    time.monotonic() - t_start > self.config.deadline_s
                ):
                    res.skipped.append(sc.describe())
                    if progress:
                        progress(sc, None, "not run: sweep deadline reached")
                    continue
                waited = 0.0 if first else self.cooldown(sc.device)
                first = False
                try:
                    p = self.measure(sc, cooldown_s=waited)
                except Exception as exc:  # one failing scenario must not end a sweep
                    if isinstance(exc, KeyboardInterrupt):
                        raise
                    msg = f"{type(exc).__name__}: {exc}"
                    log.warning("%s failed: %s", sc.describe(), msg)
                    err = {"scenario": sc.describe(), "error": msg[:500]}
                    res.errors.append(err)
                    if writer:
                        writer.write({"record": "error", **err})
                    if progress:
                        progress(sc, None, f"failed: {msg[:120]}")
                    if sc.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                    continue
                res.points.append(p)
                if writer:
                    writer.write({"record": "point", **p.to_dict()})
                if progress:
                    progress(sc, p, "")
        finally:
            if writer:
                writer.close()
            res.wall_s = time.monotonic() - t_start
        return res
