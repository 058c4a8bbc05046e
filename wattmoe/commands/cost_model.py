"""CLI of the cost model: `profile`, `cost`, `profile-plot`, `cost-eval`, `nsys-import`."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import platform
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wattmoe.cli import command, console, err_console
from wattmoe.commands.argtypes import nonnegative_float, positive_float
from wattmoe.commands.outputs import check_out
from wattmoe.errors import ConfigError, WattmoeError

log = logging.getLogger(__name__)

#: `wattmoe cost --dtype` left out
DEFAULT_DTYPE = "fp32"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _items(option: str, text: str) -> tuple[str, ...]:
    """The comma-separated items of `option`'s value; an empty item ('1,,2', '1,2,') is an
    error (it was dropped without a word)."""
    items = tuple(t.strip() for t in text.split(","))
    if text.strip() and "" in items:
        raise ConfigError(f"{option} {text!r}: item {items.index('') + 1} is empty; separate "
                          "the values with single commas")
    return tuple(t for t in items if t)


def _ints(text: str, option: str = "--tokens") -> tuple[int, ...]:
    items = _items(option, text)
    try:
        return tuple(int(t) for t in items)
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


@contextlib.contextmanager
def _writing(option: str, path: str) -> Iterator[None]:
    """Turns an OSError while writing `path` into one ConfigError naming the option."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{option} {path!r}: cannot write ({exc.strerror or exc})") from None


def _check_folder(option: str, path: str) -> None:
    """Refuses a folder `path` that cannot be made because it, or a folder above it, is an
    existing file (found before a long run, not when writing into it afterwards)."""
    p = Path(path)
    try:
        for q in (p, *p.parents):
            if q.exists():
                if not q.is_dir():
                    raise ConfigError(f"{option} {path!r}: {str(q)!r} is a file, not a folder")
                return
    except OSError as exc:  # a folder above it that cannot be searched
        raise ConfigError(f"{option} {path!r}: {exc.strerror or exc}") from None


def _fmt_s(v: float) -> str:
    if v >= 1:
        return f"{v:.3f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.3f} ms"
    return f"{v * 1e6:.1f} µs"


def _fmt_j(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1:
        return f"{v:.3f} J"
    if v >= 1e-3:
        return f"{v * 1e3:.3f} mJ"
    return f"{v * 1e6:.2f} µJ"


# --- profile ----------------------------------------------------------------------------


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default="cpu",
                   help="comma list of cpu, cuda:N, or 'auto' (cpu and every visible GPU); "
                        "default cpu")
    p.add_argument("--shapes", default="tiny,olmoe-1b-7b@0.25,mixtral-8x7b@0.0625",
                   help="presets NAME[@SCALE] or shape keys "
                        "h<H>_f<F>_<swiglu|relu>_e<E>_k<k>[@SCALE]")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16, fp16")
    p.add_argument("--ops", default="expert,moe_layer,expert_int4,up_gate_proj,down_proj,"
                   "activation,router_gate,d2h_copy,h2d_copy",
                   help="ops in priority order; 'moe_layer' = one layer step per expert "
                        "backend available on the device (moe_layer:<backend>), "
                        "'moe_layer_int4' = the same with packed int4 experts "
                        "(moe_layer_int4:<backend>; not in the default list), or one such op")
    p.add_argument("--tokens", default="1,4,16,64,256,1024,4096,8192",
                   help="batch sizes, comma-separated (default 1,4,16,64,256,1024,4096,8192)")
    p.add_argument("--out", default=None,
                   help="profile JSON (default data/profiles/<host>.json); a .jsonl of every "
                        "scenario is written beside it as the sweep runs")
    p.add_argument("--resume", action="store_true",
                   help="keep the scenarios already in the .jsonl and measure the rest")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=50, help="timed calls per scenario (at most)")
    p.add_argument("--latency-budget", type=nonnegative_float, default=0.5,
                   help="seconds the timed calls may take before --reps is cut")
    p.add_argument("--min-window", type=positive_float, default=None,
                   help="energy window in s (default: GPUs the telemetry validation's shortest "
                        "accurate window or 1 s; CPUs --cpu-window)")
    p.add_argument("--cpu-window", type=nonnegative_float, default=0.5,
                   help="shortest energy window on the CPU, seconds (default 0.5)")
    p.add_argument("--cooldown-max", type=nonnegative_float, default=3.0,
                   help="max seconds to wait for the device to cool between scenarios")
    p.add_argument("--cooldown-tolerance", type=nonnegative_float, default=3.0,
                   help="degrees C above the pre-sweep temperature that count as cool")
    p.add_argument("--sample-interval", type=positive_float, default=0.05,
                   help="telemetry sampling period in s (peak power)")
    p.add_argument("--no-torch-profiler", action="store_true", help="skip the kernel capture")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also write a TensorBoard trace per scenario to DIR")
    p.add_argument("--ncu", type=int, default=0, metavar="N",
                   help="collect ncu hardware counters for the N largest expert scenarios")
    p.add_argument("--deadline", type=positive_float, default=None,
                   help="start no scenario after this many seconds")
    p.add_argument("--max-memory-gb", type=float, default=8.0)
    p.add_argument("--plot", default=None, metavar="DIR", help="write plots to DIR afterwards")
    p.add_argument("--seed", type=int, default=0)


def _devices(spec: str) -> tuple[str, ...]:
    if spec != "auto":
        return _csv(spec)
    import torch

    return ("cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count())))


def _make_monitor(devices: tuple[str, ...], interval_s: float | None) -> Any:
    from wattmoe.telemetry import GpuSystemMonitor

    mon = GpuSystemMonitor(devices=list(devices), interval_s=interval_s)
    mon.start()
    return mon


def default_profile_path() -> Path:
    return Path("data/profiles") / f"{platform.node() or 'machine'}.json"


def _profile_to_read(given: str | None) -> Path:
    """`--profile`, or this machine's default profile, which must exist (a missing one was
    "cannot read profile ...: No such file or directory", without saying what to do)."""
    if given is not None:
        return Path(given)
    path = default_profile_path()
    if not path.exists():
        raise ConfigError(f"no profile of this machine at {str(path)!r}: pass --profile PATH "
                          "(a profile JSON, e.g. one in data/profiles/) or make one with "
                          "`wattmoe profile`")
    return path


@command("profile", "run the kernel profiling sweep and write the versioned cost-model JSON",
         _profile_args)
def cmd_profile(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wattmoe.cost_model.database import save_profile
    from wattmoe.cost_model.model import KernelCostModel
    from wattmoe.cost_model.profiler import ProfilerConfig
    from wattmoe.cost_model.runner import jsonl_path_for, run_profile
    from wattmoe.cost_model.scenarios import SweepConfig, check_devices_present, is_memory_skip

    if args.reps < 1 or args.warmup < 0:
        raise ConfigError(f"--reps must be >= 1 and --warmup >= 0, got {args.reps}, {args.warmup}")
    if any(t < 1 for t in _ints(args.tokens)):
        raise ConfigError(f"--tokens must all be >= 1, got {args.tokens!r}")
    if not (math.isfinite(args.max_memory_gb) and args.max_memory_gb > 0):
        raise ConfigError(f"--max-memory-gb must be a finite number > 0, got "
                          f"{args.max_memory_gb}")
    if args.ncu < 0:  # a negative N sliced off the last scenarios instead of taking none
        raise ConfigError(f"--ncu must be >= 0, got {args.ncu}")
    if args.out and Path(args.out).is_dir():  # found before the sweep, not when saving it
        raise ConfigError(f"--out {args.out!r} is a folder; give the profile's file name, "
                          f"e.g. {str(Path(args.out) / default_profile_path().name)!r}")
    if args.plot:
        _check_folder("--plot", args.plot)
    sweep = SweepConfig(shapes=_csv(args.shapes), dtypes=_csv(args.dtypes),
                        devices=_devices(args.devices), ops=_csv(args.ops),
                        tokens=_ints(args.tokens), max_memory_bytes=args.max_memory_gb * 1e9)
    pcfg = ProfilerConfig(
        warmup=args.warmup, reps=args.reps, min_reps=min(5, args.reps),
        latency_budget_s=args.latency_budget, min_window_s=args.min_window,
        cpu_min_window_s=args.cpu_window, cooldown_max_s=args.cooldown_max,
        cooldown_tolerance_c=args.cooldown_tolerance, torch_profiler=not args.no_torch_profiler,
        tensorboard_dir=args.tensorboard, deadline_s=args.deadline, seed=args.seed,
    )
    # a GPU this process cannot use fails here, before the telemetry monitor (which would
    # warn that NVML is missing and fall back to a simulated GPU) and the progress bar
    check_devices_present(sweep.devices)
    out = Path(args.out) if args.out else default_profile_path()
    monitor = _make_monitor(sweep.devices, args.sample_interval)
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[last]}"),
                      console=err_console, transient=False) as bar:
            task = bar.add_task("profiling", total=None, last="")

            def progress(sc: Any, p: Any, msg: str) -> None:
                if p is not None:
                    msg = f"{_fmt_s(p.latency_s)}, {_fmt_j(p.energy_j)} ({p.source})"
                bar.update(task, advance=1, last=f"{sc.describe()}: {msg}"[:100])

            db, res = run_profile(sweep, pcfg, monitor, out, resume=args.resume,
                                  progress=progress,
                                  on_start=lambda n: bar.update(task, total=n))
    except KeyboardInterrupt:
        err_console.print(f"the scenarios measured so far are in {jsonl_path_for(out)}; "
                          f"the same command with --resume measures the rest and writes {out}",
                          highlight=False)
        raise
    finally:
        monitor.stop()
    if args.ncu and _ncu_subset(db.points, args.ncu):
        save_profile(db, out)
    # scenarios left out before the sweep for --max-memory-gb count as not run, and each says
    # why (they were only logged at INFO, and "0 not run" was printed)
    notes = db.sweep.get("skipped_notes", [])
    too_big = sum(map(is_memory_skip, notes))
    console.print(f"wrote {out} ({len(db.points)} points, {len(db.errors)} errors, "
                  f"{len(res.skipped) + too_big} not run) in {res.wall_s:.0f} s; every "
                  f"scenario also in {jsonl_path_for(out)}")
    for note in notes:
        hint = " (--max-memory-gb)" if is_memory_skip(note) else ""
        console.print(f"  {note}{hint}", highlight=False, markup=False)
    if len(db.points) >= 2:
        _print_report(KernelCostModel(db))
    if args.plot:
        from wattmoe.cost_model.plots import plot_profile

        with _writing("--plot", args.plot):
            paths = plot_profile(db, args.plot)
        console.print(f"wrote {len(paths)} plots to {args.plot}")
    return 0


def _ncu_subset(points: list[Any], n: int) -> bool:
    """Hardware counters for the n largest GPU expert scenarios (where ncu exists)."""
    from wattmoe.cost_model.ncu import collect_ncu, ncu_path

    if ncu_path() is None:
        err_console.print("ncu is not on PATH: no hardware counters collected")
        return False
    cands = sorted((p for p in points if p.device.startswith("cuda") and p.op == "expert"),
                   key=lambda p: p.flops, reverse=True)
    done = False
    for p in cands[:n]:
        spec = {"op": p.op, "shape": p.preset, "dtype": p.dtype, "device": p.device,
                "tokens": p.tokens}
        try:
            p.hw_counters = collect_ncu(spec)
            done = True
            console.print(f"ncu {p.op} {p.preset} {p.dtype} n={p.tokens}: {p.hw_counters}")
        except ConfigError as exc:
            err_console.print(f"ncu failed on {spec}: {exc}")
    return done


def _print_report(model: Any) -> None:
    from rich.table import Table

    rep = model.fit_report()
    if not model.energy_models:  # was: an empty table with only its header
        console.print("energy models: none fitted (a device and dtype needs three or more "
                      "points with measured or estimated energy)", highlight=False)
    t = Table(title="energy models (per device and dtype; least squares on relative error)")
    for col in ("device/dtype", "source", "idle W", "static W", "pJ/FLOP", "pJ/byte",
                "n", "median err", "p90 err"):
        t.add_column(col, justify="left" if col in ("device/dtype", "source") else "right")
    for (dev, dt), m in sorted(model.energy_models.items()):
        t.add_row(f"{dev}/{dt}", m.source, f"{m.idle_power_w:.1f}" if m.idle_power_w else "-",
                  f"{m.static_power_w:.1f}", f"{m.j_per_flop * 1e12:.3f}",
                  f"{m.j_per_byte * 1e12:.2f}", str(m.error.n),
                  f"{m.error.median_abs_rel * 100:.1f}%", f"{m.error.p90_abs_rel * 100:.1f}%")
    if model.energy_models:
        console.print(t)
    if not rep.interpolation_loo_latency:  # was: an empty table with only its header
        console.print("interpolation, leave-one-out: no interior batch size (an op needs "
                      "three or more profiled batch sizes)", highlight=False)
        return
    t2 = Table(title="interpolation, leave-one-out (each interior batch size predicted from "
                     "its neighbours)")
    for col in ("device", "latency n", "latency median", "latency p90", "energy n",
                "energy median", "energy p90"):
        t2.add_column(col, justify="left" if col == "device" else "right")
    for dev, el in rep.interpolation_loo_latency.items():
        ee = rep.interpolation_loo_energy[dev]
        t2.add_row(dev, str(el.n), f"{el.median_abs_rel * 100:.1f}%",
                   f"{el.p90_abs_rel * 100:.1f}%", str(ee.n),
                   f"{ee.median_abs_rel * 100:.1f}%" if ee.n else "-",
                   f"{ee.p90_abs_rel * 100:.1f}%" if ee.n else "-")
    console.print(t2)


# --- cost -------------------------------------------------------------------------------


def _cost_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None,
                   help="profile JSON (default data/profiles/<host>.json)")
    p.add_argument("--op", default=None,
                   help="op to price (see `wattmoe cost --list`; default expert)")
    p.add_argument("--backend", metavar="NAME", default=None,
                   help="price one MoE layer step with this expert backend (loop, grouped, "
                        "fused, fused_graph, ...): the op moe_layer:NAME, or "
                        "moe_layer_int4:NAME with --int4")
    p.add_argument("--int4", action="store_true", help="with --backend: packed-int4 experts")
    p.add_argument("--tokens", default="1,64,1024",
                   help="batch sizes, comma-separated (default 1,64,1024)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--dtype", default=None,
                   help=f"compute dtype (fp32, bf16, ...; default {DEFAULT_DTYPE})")
    p.add_argument("--shape", default=None,
                   help="preset NAME[@SCALE] or shape key h<H>_f<F>_<swiglu|relu>_e<E>_k<k>"
                        "[@SCALE]")
    p.add_argument("--list", action="store_true", help="list what the profile holds")
    p.add_argument("--report", action="store_true", help="print the fit-error report")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--latency", default="window", choices=("window", "median"),
                   help="latency basis: time per call in the energy window (consistent with "
                        "the energy) or the median of single timed calls")


def _tokens_arg(text: str) -> list[int]:
    from wattmoe.cost_model.base import CostModelError, check_tokens

    out = []
    for t in _items("--tokens", text):
        try:
            n = int(t)
        except ValueError:
            raise ConfigError(f"--tokens: a batch size must be an integer, got {t!r}") from None
        try:
            out.append(check_tokens(n))
        except CostModelError as exc:  # (the option named: the error is the user's input)
            raise ConfigError(f"--tokens: {exc}") from None
    if not out:  # was: an empty table and exit 0
        raise ConfigError(f"--tokens: no batch size in {text!r}")
    return out


def _cost_op(args: argparse.Namespace) -> str:
    """The op `wattmoe cost` prices: --op, or the layer op of --backend [--int4]."""
    from wattmoe.cost_model.base import layer_op_name

    if args.backend is not None:
        if args.op is not None:
            raise ConfigError("give --op or --backend, not both (--backend NAME prices the op "
                              "moe_layer:NAME)")
        if not args.backend.strip():
            raise ConfigError("--backend: a backend name (loop, grouped, fused, ...), got ''")
        return layer_op_name(args.backend.strip(), args.int4)
    if args.int4:
        raise ConfigError("--int4 goes with --backend (or give --op moe_layer_int4:NAME)")
    return args.op if args.op is not None else "expert"


def _cost_dtype(model: Any, args: argparse.Namespace) -> str:
    """--dtype, or its default where the profile holds the op on the device in that dtype.

    Raises:
        ConfigError: --dtype left out and the op profiled on the device in other dtypes only
            (the model's error said 'not profiled ... in fp32', a dtype never asked for).
    """
    if args.dtype is not None:
        return args.dtype
    profiled = model.dtypes(args.device, args.op) if args.device in model.devices() else []
    if profiled and DEFAULT_DTYPE not in profiled:
        raise ConfigError(f"op {args.op!r} was profiled on {args.device} in "
                          f"{', '.join(profiled)}, not in {DEFAULT_DTYPE} (the default of "
                          f"--dtype): give --dtype {profiled[0]}")
    return DEFAULT_DTYPE


@command("cost", "query the cost model: latency, energy and power of an op", _cost_args)
def cmd_cost(args: argparse.Namespace) -> int:
    from rich.table import Table

    from wattmoe.cost_model.model import KernelCostModel

    tokens = _tokens_arg(args.tokens)
    args.op = _cost_op(args)
    model = KernelCostModel.load(_profile_to_read(args.profile), args.latency)
    if args.list:
        t = Table(title="profiled (op, device, dtype): shapes")
        for col in ("device", "dtype", "op", "shapes", "batch sizes"):
            t.add_column(col)
        for (op, dev, dt, _), c in sorted(model.curves.items()):
            t.add_row(dev, dt, op, _curve_name(c), ",".join(str(int(x)) for x in c.tokens))
        console.print(t)
        return 0
    if args.report:
        _print_report(model)
        return 0
    args.dtype = _cost_dtype(model, args)
    costs = [model.get_cost(args.op, n, args.device, args.dtype, shape=args.shape)
             for n in tokens]
    if args.json:
        console.print_json(json.dumps([{"tokens": n, **c.to_dict()}
                                       for n, c in zip(tokens, costs)]))
        return 0
    shape = args.shape
    if shape is None:  # get_cost took the op's one profiled shape: name it
        (curve,) = model.shapes(args.op, args.device, args.dtype)
        shape = _curve_name(curve)
    t = Table(title=f"{args.op} on {args.device} ({args.dtype}, shape {shape})")
    for col in ("tokens", "latency", "energy", "energy/token", "avg W", "peak W", "source",
                "method"):
        t.add_column(col, justify="left" if col in ("source", "method") else "right")
    for n, c in zip(tokens, costs):
        t.add_row(str(n), _fmt_s(c.latency_s), _fmt_j(c.energy_j),
                  _fmt_j(c.energy_j / n) if n else "-", f"{c.avg_power_w:.1f}",
                  f"{c.peak_power_w:.1f}", _origin(c), c.method)
    console.print(t)
    return 0


def _curve_name(c: Any) -> str:
    """A curve's presets (else its shape key), with its int4 group where that is not the
    shape's default: 'tiny (int4 groups of 64)' is not what `--shape tiny` asks for."""
    name = ", ".join(sorted(c.presets)) or c.shape.key
    g = c.shape.int4_group
    return name if g is None or name == c.shape.key else f"{name} (int4 groups of {g})"


def _origin(c: Any) -> str:
    """Where a shown figure comes from: `KernelCost.source` ('measured' only for a profiled
    point as measured), with the profile's source where that differs ('estimated (from
    measured)': interpolated, extrapolated, a shape model, a point moved to keep the curve
    monotone); an empty call (no tokens) was estimated from nothing."""
    if c.source == c.profile_source or c.method == "empty":
        return c.source
    return f"{c.source} (from {c.profile_source})"


# --- profile-plot -----------------------------------------------------------------------


def _plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default=None,
                   help="profile JSON (default data/profiles/<host>.json)")
    p.add_argument("--out", default="results/cost_model_plots",
                   help="folder for the PNGs (default: results/cost_model_plots under the "
                        "current folder)")


@command("profile-plot", "plot latency, energy per token and power vs batch size", _plot_args)
def cmd_profile_plot(args: argparse.Namespace) -> int:
    from wattmoe.cost_model.database import load_profile
    from wattmoe.cost_model.plots import plot_profile

    db = load_profile(_profile_to_read(args.profile))
    with _writing("--out", args.out):
        paths = plot_profile(db, args.out)
    console.print(f"wrote {len(paths)} plots to {args.out}")
    return 0


# --- cost-eval --------------------------------------------------------------------------


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", required=True, help="profile JSON the model is built from")
    p.add_argument("--measured", required=True, nargs="+",
                   help="held-out measurements (.json profiles or .jsonl sweeps); points the "
                        "profile cannot predict (e.g. an op it lacks) are skipped and listed "
                        "with the reason")
    p.add_argument("--out", default=None, help="write rows and summary JSON here")
    p.add_argument("--csv", default=None, help="write the rows as CSV here")
    p.add_argument("--split-latency", type=positive_float, default=None, metavar="S",
                   help="also summarize points measured below/above S seconds")
    p.add_argument("--latency", default="window", choices=("window", "median"),
                   help="latency basis of the model and of the measurements compared")


@command("cost-eval", "compare the cost model's predictions with held-out measurements",
         _eval_args)
def cmd_cost_eval(args: argparse.Namespace) -> int:
    import csv
    import io

    from rich.table import Table

    from wattmoe.cost_model.database import load_profile, provenance, save_json
    from wattmoe.cost_model.evaluate import evaluate, summarize
    from wattmoe.cost_model.model import KernelCostModel
    from wattmoe.cost_model.profiler import read_jsonl
    from wattmoe.provenance import write_text_atomic

    for option, path in (("--out", args.out), ("--csv", args.csv)):
        if path:  # before the evaluation and its table (was: an error after them)
            check_out(option, path)
    model = KernelCostModel.load(args.profile, args.latency)
    pts = []
    for m in args.measured:
        try:
            got = read_jsonl(m).points if m.endswith(".jsonl") else load_profile(m).points
        except WattmoeError as exc:  # the loaders call the file a profile: say which flag
            raise ConfigError(f"--measured {m!r} is not a held-out profile JSON or a profiler "
                              f".jsonl that can be read: {exc}") from None
        if not got:
            raise ConfigError(f"--measured {m!r} holds no measured points")
        pts += got
    rows, skipped = evaluate(model, pts)
    if not rows:
        raise ConfigError(f"the profile cannot predict any of the {len(pts)} measured points "
                          f"(first: {skipped[0].describe()}: {skipped[0].reason})")
    summary = summarize(rows, args.split_latency)
    # both files before anything is printed: a closed pipe (`| head`) or Ctrl-C during the
    # table left one written and the other not
    if args.out:
        with _writing("--out", args.out):
            save_json(args.out, {"provenance": provenance(), "profile": args.profile,
                                 "latency_basis": args.latency,
                                 "measured": args.measured, "summary": summary,
                                 "rows": [r.to_dict() for r in rows],
                                 "skipped": [sk.to_dict() for sk in skipped]})
    if args.csv:
        # made in memory and written atomically, as --out is: an interrupted write left a
        # truncated CSV in place of the last one
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0].to_dict()) if rows else ["op"])
        w.writeheader()
        for r in rows:
            w.writerow(r.to_dict())
        with _writing("--csv", args.csv):
            write_text_atomic(args.csv, buf.getvalue())
    for path in (args.out, args.csv):
        if path:
            console.print(f"wrote {path}")
    note = f"; {len(skipped)} skipped: the profile cannot predict them" if skipped else ""
    t = Table(title=f"held-out accuracy of {args.profile} ({len(rows)} points{note})")
    for col in ("kind", "n", "latency median |err|", "latency p90", "energy median |err|",
                "energy p90", "energy model alone, median"):
        t.add_column(col, justify="left" if col == "kind" else "right")

    def pct(d: dict, k: str) -> str:
        return f"{d[k]:.1f}%" if d.get("n") else "-"

    for kind, s in summary.items():
        t.add_row(kind, str(s["latency"].get("n", 0)), pct(s["latency"], "median_abs_pct"),
                  pct(s["latency"], "p90_abs_pct"), pct(s["energy"], "median_abs_pct"),
                  pct(s["energy"], "p90_abs_pct"),
                  pct(s["energy_model_only"], "median_abs_pct"))
    console.print(t)
    groups = Counter((sk.op, sk.device, sk.dtype, sk.reason) for sk in skipped)
    for (op, device, dtype, reason), n in groups.items():
        console.print(f"skipped {n} point{'s' if n != 1 else ''} of {op} {device} {dtype}: "
                      f"{reason}", highlight=False)
    return 0


# --- nsys-import ------------------------------------------------------------------------


def _nsys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sqlite", help="an Nsight Systems SQLite export (nsys export -t sqlite)")
    p.add_argument("--top", type=int, default=15, help="kernels to show (default 15)")
    p.add_argument("--json", default=None, help="write kernels summary and metrics JSON here")


@command("nsys-import", "read kernels and GPU metrics from an Nsight Systems SQLite export",
         _nsys_args)
def cmd_nsys_import(args: argparse.Namespace) -> int:
    from rich.table import Table

    from wattmoe.cost_model.database import save_json
    from wattmoe.cost_model.nsys import import_nsys_sqlite

    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    rep = import_nsys_sqlite(args.sqlite)
    summary = rep.kernel_summary()
    means = rep.metric_means_during_kernels()
    if args.json:  # before the table (a closed pipe, `| head`, there left no file)
        with _writing("--json", args.json):
            save_json(args.json, {"kernels": summary, "metric_means_during_kernels": means})
        console.print(f"wrote {args.json}")
    t = Table(title=f"{args.sqlite}: {len(rep.kernels)} kernel executions, "
                    f"{len(rep.metrics)} GPU metrics")
    metric_cols = sorted(rep.metrics)[:3]
    for col in ("kernel", "calls", "total", "mean", *metric_cols):
        t.add_column(col, justify="left" if col == "kernel" else "right")
    for r in summary[: args.top]:
        m = means.get(r["name"], {})
        t.add_row(r["name"][:70], str(r["calls"]), _fmt_s(r["total_s"]), _fmt_s(r["mean_s"]),
                  *(f"{m[c]:.1f}" if c in m else "-" for c in metric_cols))
    console.print(t)
    return 0
