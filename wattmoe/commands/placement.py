"""`wattmoe place` and `wattmoe place-diff`: the placement optimizer's CLI (the edge: files)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from wattmoe.cli import command, console, err_console
from wattmoe.commands.argtypes import nonnegative_int, positive_float, positive_int
from wattmoe.commands.outputs import check_out
from wattmoe.errors import ConfigError, os_error_as
from wattmoe.int4_layout import INT4_LAYOUTS
from wattmoe.units import fmt_bytes, fmt_power

SOLVER_NAMES = ("heuristic", "milp", "eplb", "round-robin", "fill")
# the solvers that search, and so stop at `--time-limit`; the baselines compute their placement
# in one pass and have nothing to stop
TIME_LIMITED_SOLVERS = ("heuristic", "milp")


def _place_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True,
                   help="a shipped cluster (h200-cpu, 8xh200-2node, laptop) or a YAML/JSON spec")
    p.add_argument("--preset", default="olmoe-1b-7b",
                   help="MoE shape: a preset (`wattmoe models`) or a shape key "
                        "h<H>_f<F>_<swiglu|relu>_e<E>_k<k> for any other model")
    p.add_argument("--scale", type=float, default=None,
                   help="width scale factor of the shape (default 1; or give it as SHAPE@SCALE)")
    p.add_argument("--dtype", default="bf16",
                   help="expert dtype: bf16 | fp16 | fp32 | fp8 | int4 (default bf16)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--loads", help="[layers, experts] token counts per batch: .npy, .csv "
                                     "(comma-separated; .txt is read as CSV) or .json")
    src.add_argument("--skew", default="zipf:1.2",
                     help="synthetic loads: 'uniform' or 'zipf:S' (default zipf:1.2)")
    # (None = not given: with --loads these would do nothing, and that is refused)
    p.add_argument("--seed", type=nonnegative_int,
                   help="seed of the synthetic loads (default 0)")
    p.add_argument("--tokens", type=positive_int,
                   help="tokens per batch: of the synthetic loads (default 4096), or the batch "
                        "that --loads counted (default: its counts' sum / top_k, as if no "
                        "assignment was dropped)")
    p.add_argument("--layers", type=positive_int,
                   help="MoE layers of the synthetic loads (default: the preset's; 1 for a "
                        "shape key)")
    p.add_argument("--objective", default="energy",
                   help="energy | latency | balance | a mix like 'energy=1,latency=0.5'")
    p.add_argument("--solver", default="heuristic", choices=SOLVER_NAMES)
    p.add_argument("--cost-model", metavar="PATH",
                   help="measured profile JSON (wattmoe.cost_model) for the devices it covers; "
                        "analytic roofline estimates for the rest (default: estimates only)")
    p.add_argument("--backend", metavar="NAME",
                   help="expert backend (loop, grouped, fused, fused_graph, ...): price each "
                        "expert as its share of that backend's profiled MoE layer steps "
                        "(moe_layer:NAME; moe_layer_int4:NAME for --dtype int4) instead of one "
                        "expert called alone; needs --cost-model")
    p.add_argument("--int4-layout", choices=INT4_LAYOUTS, default="rows",
                   help="how the GPUs store int4 codes with a fused --backend: rows (beside "
                        "which the fused kernels keep a copy in their order) or tiles "
                        "(read in place, about half the memory: what a layer stores by "
                        "default on an sm_90 GPU, H100 or H200, running the fused kernels; "
                        "SimpleMoELayer.set_int4_layout; default rows)")
    p.add_argument("--slo-ms", type=positive_float, help="latency SLO per batch, in milliseconds")
    p.add_argument("--max-replicas", type=positive_int, default=4,
                   help="replicas per expert at most")
    p.add_argument("--redundant", type=nonnegative_int, help="extra replicas per layer at most")
    p.add_argument("--time-limit", type=positive_float,
                   help="solver time limit in seconds (--solver heuristic or milp; milp "
                        "default 60)")
    p.add_argument("--compare", action="store_true",
                   help="also score the round-robin, EPLB-style and fill baselines")
    p.add_argument("--out", help="write the placement JSON here")


def build_cost_provider(path: str | None, backend: str | None = None) -> tuple[Any, str]:
    """The cost provider for `--cost-model` (and `--backend`) and a description of it.

    Raises:
        ConfigError: `backend` without `path`; no such file; a backend the profile lacks.
    """
    from wattmoe.placement import AnalyticCostProvider, profile_cost_provider

    if backend is not None and not path:
        raise ConfigError(f"--backend {backend!r} needs --cost-model: a profile with that "
                          "backend's layer steps (wattmoe profile --ops moe_layer)")
    if not path:
        return AnalyticCostProvider(), "analytic roofline (estimates)"
    if not Path(path).is_file():
        what = "a folder, not a profile file" if Path(path).is_dir() else "no such file"
        raise ConfigError(f"--cost-model {path!r}: {what}")
    try:
        from wattmoe.cost_model import KernelCostModel
    except ImportError as exc:  # pragma: no cover - the package ships with wattmoe
        raise ConfigError(f"--cost-model needs wattmoe.cost_model: {exc}") from None
    model = KernelCostModel.load(path)
    # where the profile's energy came from: 'estimated' on a device without a counter (a CPU
    # without RAPL), never labelled measured
    source = "/".join(sorted({info.source for info in model.db.devices.values()})) or "measured"
    if backend is None:
        return profile_cost_provider(model, label=f"profile {path} ({source})"), f"profile {path}"
    label = (f"profile {path} backend {backend} ({source} layer steps, amortized per expert: "
             "estimate)")
    return (profile_cost_provider(model, label=label, backend=backend),
            f"profile {path}, backend {backend}")


def _check_profile_covers(provider: Any, cluster: Any, path: str, backend: str | None) -> None:
    """Raises ConfigError when `--cost-model` (with `--backend`: that backend's layer steps)
    would price no device of the cluster (every device would fall back to the analytic
    estimates, and the flag would change nothing but the summary's label)."""
    profiled = provider.providers[0].devices()
    wanted = sorted({d.cost_device for d in cluster.devices})
    if set(profiled) & set(wanted):
        return
    if backend is not None:
        raise ConfigError(
            f"--backend {backend!r}: no device of cluster {cluster.name!r} has layer steps of "
            f"that backend in the profile (cluster cost devices: {', '.join(wanted)}; "
            f"profiled with {backend}: {', '.join(profiled) or 'none'})")
    raise ConfigError(
        f"--cost-model {path!r}: no device of cluster {cluster.name!r} is in the profile "
        f"(cluster cost devices: {', '.join(wanted)}; profiled: {', '.join(profiled) or 'none'}"
        "); name a profiled device as a device's cost_device, or leave --cost-model out")


def _fmt_j(x: float) -> str:
    if x == 0:
        return "0 J"
    for unit, f in (("J", 1.0), ("mJ", 1e-3), ("µJ", 1e-6)):
        if abs(x) >= f:
            return f"{x / f:,.3f} {unit}"
    return f"{x * 1e9:,.3f} nJ"


@command("place", "place experts on a cluster's GPUs and CPUs (energy-aware)", _place_args)
def cmd_place(args: argparse.Namespace) -> int:
    from wattmoe.moe import resolve_shape_at
    from wattmoe.placement import (
        Constraints,
        ExpertShape,
        HeuristicOptions,
        MilpOptions,
        load_cluster,
        make_problem,
        read_loads,
        solve,
        synthetic_loads,
    )
    from wattmoe.placement.base import FUSED_BACKENDS

    if args.time_limit is not None and args.solver not in TIME_LIMITED_SOLVERS:
        # (--compare's baselines are not limited either: only the solver named here is)
        raise ConfigError(f"--time-limit applies to --solver {' and '.join(TIME_LIMITED_SOLVERS)}"
                          f" (the solvers that search); --solver {args.solver} computes its "
                          "placement in one pass and has no time limit: leave --time-limit out")
    if args.out:  # before the solve (a MILP may take its whole --time-limit)
        check_out("--out", args.out)
    cfg = resolve_shape_at(args.preset, args.scale)
    cluster = load_cluster(args.cluster)
    layers = cfg.num_layers if args.layers is None else args.layers
    synthetic_only = [opt for opt, v in (("--layers", args.layers), ("--seed", args.seed))
                      if v is not None]
    if args.loads and synthetic_only:
        raise ConfigError(f"{' and '.join(synthetic_only)} set the synthetic loads and do "
                          f"nothing with --loads {args.loads!r}: the file's counts give the "
                          "layers")
    if args.loads:
        loads = read_loads(args.loads, top_k=cfg.top_k, tokens_per_batch=args.tokens)
        if loads.num_experts != cfg.num_experts:
            raise ConfigError(f"loads file {args.loads!r} has {loads.num_experts} experts per "
                              f"layer; shape {cfg.name!r} has {cfg.num_experts}")
    else:
        loads = synthetic_loads(layers, cfg.num_experts, cfg.top_k,
                                4096 if args.tokens is None else args.tokens, args.skew,
                                0 if args.seed is None else args.seed)
    if args.int4_layout != "rows" and (args.dtype.strip().lower() != "int4"
                                       or args.backend not in FUSED_BACKENDS):
        raise ConfigError(f"--int4-layout {args.int4_layout} sizes int4 replicas on GPUs whose "
                          "fused kernels read their codes: it needs --dtype int4 and --backend "
                          f"{' or '.join(sorted(FUSED_BACKENDS))} (got --dtype {args.dtype}, "
                          f"--backend {args.backend})")
    provider, provider_txt = build_cost_provider(args.cost_model, args.backend)
    if args.cost_model:
        _check_profile_covers(provider, cluster, args.cost_model, args.backend)
    constraints = Constraints(
        latency_slo_s=None if args.slo_ms is None else args.slo_ms / 1e3,
        max_replicas=args.max_replicas, redundant_per_layer=args.redundant)
    problem = make_problem(cluster, loads, ExpertShape.from_config(cfg, args.dtype), provider,
                           args.objective, constraints, backend=args.backend,
                           int4_layout=args.int4_layout)
    options: dict[str, Any] = {}
    if args.solver == "heuristic" and args.time_limit is not None:
        options["options"] = HeuristicOptions(time_limit_s=args.time_limit)
    elif args.solver == "milp":
        options["options"] = MilpOptions(
            time_limit_s=60.0 if args.time_limit is None else args.time_limit)
    meta = {"preset": cfg.name, "cost_model": provider_txt, "cluster_spec": str(args.cluster)}
    if args.backend:
        meta["backend"] = args.backend
    if args.int4_layout != "rows":
        meta["int4_layout"] = args.int4_layout
    limit = getattr(options.get("options"), "time_limit_s", None)
    with _solving(args.solver, limit):
        placement = solve(problem, args.solver, meta=meta, **options)
    if args.out:  # before the tables and the baselines: a Ctrl-C, SIGTERM or closed pipe
        _write(args.out, placement.to_json())  # (`| head`) there kept no file of the solve
    try:
        _print_placement(placement, cfg.name, loads.source, provider_txt)
        _print_replica_memory(problem)
        if args.compare:
            _print_comparison(problem, placement)
    finally:
        if args.out:
            console.print(f"wrote {args.out}")
    return 0


@contextlib.contextmanager
def _solving(solver: str, time_limit_s: float | None) -> Iterator[None]:
    """A line on a terminal's stderr while the solver runs, gone when it returns: a MILP runs
    up to its time limit (60 s by default) and the command said nothing meanwhile. Log lines
    (the MILP's time-limit warning) go above it, not into it."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    limit = f" (time limit {time_limit_s:g} s)" if time_limit_s is not None else ""
    bar = Progress(SpinnerColumn(), TextColumn(f"[bold]solving[/]: {solver}{limit}"),
                   TimeElapsedColumn(), console=err_console, transient=True,
                   disable=not err_console.is_terminal)
    bar.add_task("solve", total=None)
    with bar:
        handlers = [h for h in logging.getLogger().handlers if not bar.disable
                    and type(h) is logging.StreamHandler and h.stream is sys.__stderr__]
        for h in handlers:  # (sys.stderr is rich's proxy while the line is shown)
            h.setStream(sys.stderr)
        try:
            yield
        finally:
            for h in handlers:
                h.setStream(sys.__stderr__)


def _print_placement(placement: Any, preset: str, loads_src: str, provider: str) -> None:
    from wattmoe.placement import Objective

    s = placement.summary
    t = Table(title=f"{preset} on {placement.cluster}: {placement.solver}, objective "
                    f"{placement.objective} ({placement.status}, {placement.solve_time_s:.2f} s)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("energy per token (estimated)", _fmt_j(s.energy_j_per_token))
    t.add_row("energy per batch (estimated)", _fmt_j(s.energy_j_per_batch))
    t.add_row("  of which transfers", _fmt_j(s.transfer_energy_j))
    t.add_row("MoE latency per batch", f"{s.latency_s * 1e3:,.3f} ms")
    t.add_row("imbalance (max/mean tokens)", f"{s.imbalance:.3f}")
    # (inferred from a loads file: sum / top_k, which need not be whole)
    n = s.tokens_per_batch
    t.add_row("tokens per batch", f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}")
    t.add_row("redundant replicas", f"{s.redundant_replicas:,}")
    # each term is divided by round-robin's value: round-robin scores the sum of the weights
    w = Objective.parse(placement.objective)
    t.add_row(f"objective (round-robin = {w.energy + w.latency + w.balance:g})",
              f"{s.objective:.4f}")
    lb = placement.objective_lower_bound
    if lb is not None:  # a solver that proves one (the MILP)
        gap = placement.gap_above_bound
        # (proven optimal, the answer may sit a rounding error below the bound: shown as 0)
        above = "an unknown share" if gap is None else f"{100 * max(gap, 0.0):.2f}%"
        t.add_row("proven lower bound", f"{lb:.4f} (objective {above} above it)")
    t.add_row("loads", loads_src)
    t.add_row("cost model", provider)
    console.print(t)
    d = Table(title="per device, per batch")
    src = s.energy_source
    for col in ("device", "kind", "experts", "memory", "tokens", "busy", f"energy ({src})",
                f"avg power ({src})", "powered"):
        d.add_column(col, justify="left" if col in ("device", "kind") else "right")
    for x in s.devices:
        budget = f" / {fmt_power(x.power_budget_w, ',g')}" if x.power_budget_w else ""
        d.add_row(x.name, x.kind, f"{x.replicas:,}",
                  f"{fmt_bytes(x.memory_bytes)} / {fmt_bytes(x.memory_capacity_bytes)}",
                  f"{x.tokens:,.0f}", f"{x.busy_s * 1e3:,.3f} ms", _fmt_j(x.energy_j),
                  f"{fmt_power(x.avg_power_w)}{budget}", "yes" if x.powered else "no")
    console.print(d)
    # where each device's figures come from: a profile covers some devices, the analytic
    # roofline the others (the "cost model" row names only what was asked for)
    for name, src in s.cost_sources.items():
        console.print(f"costs of {name}: {src}", markup=False, highlight=False, soft_wrap=True)
    for v in s.violations:
        console.print(f"[yellow]constraint violated:[/] {v}", highlight=False)


def _print_replica_memory(problem: Any) -> None:
    """Says what one replica's memory is where it is more than its weights: int4 experts on
    GPUs with a fused backend count the fused kernels' copy of the weights."""
    from wattmoe.placement import replica_text

    g = problem.graph
    if (g.replica_bytes != g.shape.weight_bytes).any():
        console.print(f"memory of one replica: {replica_text(g)}", markup=False,
                      highlight=False, soft_wrap=True)


def _print_comparison(problem: Any, placement: Any) -> None:
    from wattmoe.placement import InfeasibleError, solve

    t = Table(title="against the baselines (same loads, same cost model)")
    for col in ("solver", f"energy/token ({placement.summary.energy_source})", "latency",
                "imbalance", "objective", "vs this"):
        t.add_column(col, justify="left" if col == "solver" else "right")
    rows = [placement]
    for name in ("round-robin", "eplb", "fill"):
        if name != placement.solver:
            try:
                rows.append(solve(problem, name))
            except InfeasibleError as exc:
                console.print(f"[yellow]{name}: {exc}[/]", highlight=False)
    base = placement.summary.objective
    for p in rows:
        s = p.summary
        # a baseline that breaks a constraint (an SLO, the replica caps) is no alternative
        t.add_row(p.solver + (" (constraint violated)" if s.violations else ""),
                  _fmt_j(s.energy_j_per_token), f"{s.latency_s * 1e3:,.3f} ms",
                  f"{s.imbalance:.3f}", f"{s.objective:.4f}",
                  f"{(s.objective / base - 1) * 100:+.1f}%" if base > 0 else "-")
    console.print(t)
    for p in rows[1:]:  # the placement's own violations are printed under its tables
        for v in p.summary.violations:
            console.print(f"[yellow]{p.solver}: constraint violated:[/] {v}", highlight=False)


def _write(path: str, text: str) -> None:
    from wattmoe.provenance import write_text_atomic

    with os_error_as(ConfigError, f"cannot write {path!r}"):
        write_text_atomic(path, text, fsync=False)


def _read_placement(path: str) -> Any:
    from wattmoe.placement import Placement

    with os_error_as(ConfigError, f"cannot read placement {path!r}"):
        try:
            text = Path(path).read_text(encoding="utf-8")  # (what `place --out` writes)
        except UnicodeDecodeError as exc:  # a ValueError, not an OSError: was a traceback
            raise ConfigError(f"cannot read placement {path!r}: not UTF-8 text (byte "
                              f"{exc.object[exc.start]:#04x} at position {exc.start}); give "
                              "a placement JSON from wattmoe place --out") from None
    return Placement.from_json(text, source=path)


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="placement JSON (from)")
    p.add_argument("b", help="placement JSON (to)")


@command("place-diff", "experts moved and bytes to migrate between two placements", _diff_args)
def cmd_place_diff(args: argparse.Namespace) -> int:
    from wattmoe.placement import diff_placements

    a, b = _read_placement(args.a), _read_placement(args.b)
    d = diff_placements(a, b)
    if a.cluster != b.cluster:  # legal (a cluster renamed or resized), but say so
        err_console.print(f"note: the placements are of different clusters ({a.cluster!r} and "
                          f"{b.cluster!r}); devices are matched by name", highlight=False)
    t = Table(title=f"{args.a} -> {args.b}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("experts moved", f"{d.experts_moved:,} of {a.num_layers * a.num_experts:,}")
    t.add_row("replicas added", f"{d.replicas_added:,}")
    t.add_row("replicas removed", f"{d.replicas_removed:,}")
    t.add_row("bytes to migrate", fmt_bytes(d.bytes_to_migrate))
    for label, p in (("a", a), ("b", b)):
        if p.summary:
            t.add_row(f"energy per token ({label}, estimated)",
                      _fmt_j(p.summary.energy_j_per_token))
    console.print(t)
    dev = Table(title="per device")
    for col in ("device", "receives", "frees"):
        dev.add_column(col, justify="left" if col == "device" else "right")
    for name in d.bytes_in:
        dev.add_row(name, fmt_bytes(d.bytes_in[name]), fmt_bytes(d.bytes_freed[name]))
    console.print(dev)
    return 0
