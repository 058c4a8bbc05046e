"""The `wattmoe` command. Thin: every subcommand calls one library function and prints."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wattmoe.commands.argtypes import positive_int
from wattmoe.errors import ConfigError, WattmoeError
from wattmoe.units import fmt_bytes

# Piped output (CI logs, README examples) gets a fixed width instead of the 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Handler]] = []


def command(name: str, help: str, args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Registers a subcommand: `args` adds its options, the decorated function runs it."""

    def deco(fn: Handler) -> Handler:
        _COMMANDS.append((name, help, args, fn))
        return fn

    return deco


# --- models ---------------------------------------------------------------------------------


def _fmt_params(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


@command("models", "list the MoE shape presets")
def cmd_models(args: argparse.Namespace) -> int:
    from wattmoe.moe import PRESETS

    t = Table(title="MoE presets (MoE layers only)")
    for col in ("preset", "hidden", "expert inner", "experts", "top-k", "shared", "layers",
                "form", "score", "params/expert", "expert (bf16)"):
        t.add_column(col, justify="left" if col in ("preset", "form", "score") else "right")
    for p in PRESETS.values():
        t.add_row(
            p.name, str(p.hidden_size), str(p.expert_inner_size), str(p.num_experts),
            str(p.top_k), str(p.num_shared_experts), str(p.num_layers), p.expert_form,
            p.score_func, _fmt_params(p.expert_params), fmt_bytes(p.expert_bytes(2)),
        )
    console.print(t)
    return 0


# --- demo -----------------------------------------------------------------------------------


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="olmoe-1b-7b",
                   help="MoE shape: a preset (see `wattmoe models`) or a shape key "
                        "h<H>_f<F>_<swiglu|relu>_e<E>_k<k> for any other model")
    p.add_argument("--scale", type=float, default=None,
                   help="width scale factor of the shape (default 0.25; or give it as "
                        "SHAPE@SCALE; widths are rounded to multiples of 64, at least 64; 1 runs "
                        "it at its own widths)")
    p.add_argument("--batch", type=positive_int, default=4, help="sequences per step (default 4)")
    p.add_argument("--seq", type=positive_int, default=128,
                   help="tokens per sequence (default 128)")
    p.add_argument("--steps", type=positive_int, default=10,
                   help="timed forward passes (default 10)")
    p.add_argument("--dtype", default="fp32",
                   help="compute dtype: fp32 | bf16 | fp16 (default fp32); for packed-int4 "
                        "experts add --int4")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto",
                   help="expert execution backend (default auto: the fastest here for the "
                        "step size, timed once in the warm-up steps, shown under 'experts'; "
                        "-v logs its choice); loop (the reference), grouped, fused, "
                        "fused_graph, ...")
    p.add_argument("--int4", action="store_true", help="quantize the experts to packed int4")
    p.add_argument("--cluster", default="h200-cpu",
                   help="place the measured expert loads on this cluster (name or spec file; "
                        "'none' to skip)")


@command("demo", "run one MoE block of a shape here, measure it, and place its experts",
         _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from wattmoe.experiments.demo import run_demo

    if args.dtype.strip().lower() == "int4":  # was: "unknown dtype 'int4'; use one of ..."
        raise ConfigError("--dtype int4: int4 experts are --int4 (packed int4 weights, "
                          "computed in --dtype fp32, bf16 or fp16)")
    cluster = None if args.cluster.lower() == "none" else args.cluster
    # a bar on stderr for the timed steps, redrawn at most 4 times a second and by this thread
    # alone (no refresh thread: on a CPU the window's energy estimate counts every busy core);
    # only on a terminal: elsewhere rich leaves an empty line where the transient bar was
    bar = Progress(TextColumn("[bold]timed steps"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=err_console, auto_refresh=False, transient=True,
                   disable=not err_console.is_terminal)
    task = bar.add_task("steps", total=args.steps)
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - shown[0] >= 0.25:
            shown[0] = now
            bar.update(task, completed=done, refresh=True)

    try:
        with bar:
            r = run_demo(args.preset, args.scale, args.batch, args.seq, args.steps,
                         dtype=args.dtype, device=args.device, seed=args.seed,
                         cluster=cluster, backend=args.backend, int4=args.int4,
                         progress=progress)
    except RuntimeError as exc:
        # torch.OutOfMemoryError (a GPU) or the CPU allocator's RuntimeError: too big a block
        # or batch for this machine is the user's choice, not a bug
        text = str(exc)
        if type(exc).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
            raise
        tried = re.search(r"tried to allocate [^.(;]+", text)
        raise ConfigError(
            f"out of memory on {args.device}{': ' + tried.group(0).strip() if tried else ''}; "
            f"lower the width scale (--scale or SHAPE@SCALE), --batch ({args.batch}) or "
            f"--seq ({args.seq})"
        ) from None
    # the shape that ran: a scale's widths are rounded to multiples of 64, at least 64
    t = Table(title=f"{r.preset} (H={r.hidden_size} F={r.expert_inner_size}): one MoE block, "
                    f"{r.tokens_per_step} tokens/step on {r.device}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("shape", f"H={r.hidden_size} F={r.expert_inner_size} E={r.num_experts} k={r.top_k}")
    t.add_row("experts", f"{r.backend}, {r.weights}")
    if r.interrupted:
        t.add_row("timed steps", f"{r.steps} of {r.steps_requested} (interrupted)")
    t.add_row("median step (measured)", f"{r.median_step_s * 1e3:.2f} ms")
    t.add_row("p90 step (measured)", f"{r.p90_step_s * 1e3:.2f} ms")
    t.add_row("throughput (median step)", f"{r.tokens_per_s:,.0f} tokens/s")
    t.add_row("aux loss (mean)", f"{r.mean_aux_loss:.4f}")
    t.add_row("expert imbalance (max/mean)", f"{r.imbalance:.2f}")
    t.add_row("dropped assignments", str(r.dropped))
    if r.energy_j is None:
        t.add_row(f"energy per token ({r.energy_source})",
                  "not reported (interrupted)" if r.interrupted else "not measurable")
    else:
        t.add_row(f"energy per token ({r.energy_source}, {r.energy_backend})",
                  f"{r.energy_per_token_j * 1e3:.3f} mJ")
    if r.mean_power_w is not None:
        t.add_row(f"mean power ({r.energy_source})", f"{r.mean_power_w:.1f} W")
    console.print(t)
    if r.energy_note:
        console.print(f"[dim]energy note: {r.energy_note}[/]")
    if r.placements:
        pt = Table(title=f"its measured expert loads placed on {r.cluster} "
                         f"(predicted with the {r.cost_model})")
        for col in ("solver", "energy/token", "MoE latency/batch", "imbalance",
                    "experts per device"):
            pt.add_column(col, justify="left" if col in ("solver", "experts per device")
                          else "right")
        for row in r.placements:
            pt.add_row(
                row.solver, f"{row.energy_j_per_token * 1e3:.3f} mJ ({row.energy_source})",
                f"{row.latency_s * 1e3:.3f} ms", f"{row.imbalance:.2f}",
                ", ".join(f"{d}: {n}" for d, n in row.experts_per_device.items()),
            )
        console.print(pt)
    return 130 if r.interrupted else 0  # Ctrl-C's status, as `main` gives it


# --- entry point ----------------------------------------------------------------------------


def _load_command_modules() -> None:
    """Imports every module of `wattmoe.commands`; each registers its subcommands with
    `@command`. Packages add their CLI there, one module each, without editing this file."""
    import importlib
    import pkgutil

    import wattmoe.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        importlib.import_module(f"wattmoe.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(
        prog="wattmoe",
        description="Energy of MoE expert kernels: profile them, query the cost model, place "
                    "experts on GPUs and CPUs, and measure power.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_, add_args, fn in _COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


class _Terminated:
    """SIGTERM (a scheduler's or `timeout`'s stop) as Ctrl-C: the command stops the same way,
    keeping and printing what it measured, instead of dying with nothing said."""

    def __init__(self) -> None:
        self.seen = False
        self.previous: object = None

    def __enter__(self) -> _Terminated:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)  # type: ignore[arg-type]

    def _raise(self, signum: int, frame: object) -> None:
        self.seen = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; user errors print one line on stderr and return 2. Ctrl-C returns 130,
    SIGTERM (handled as Ctrl-C) 143."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    with _Terminated() as term:
        try:
            rc = int(args.func(args) or 0)
        except WattmoeError as exc:
            # escape: messages quote shapes like [layers, experts], which rich would eat as
            # markup; soft_wrap: one line however long (a terminal wraps it; piped stderr
            # keeps it whole)
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            return 2
        except KeyboardInterrupt:
            err_console.print("[yellow]terminated (SIGTERM)[/]" if term.seen
                              else "[yellow]interrupted[/]")
            rc = 130
    return 143 if term.seen and rc == 130 else rc


if __name__ == "__main__":
    # Run through the importable module so that `wattmoe.commands` register into the same
    # `_COMMANDS` list that `main` reads (under -m this file is `__main__`, a second copy).
    from wattmoe.cli import main as _main

    sys.exit(_main())
