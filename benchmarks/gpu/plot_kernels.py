"""Plots of committed kernel results (no GPU needed): energy per token per backend, the
streaming-power sweep, and the floors of one step's experts.

    python benchmarks/gpu/plot_kernels.py \
        --bench results/h200/kernels/run18_final/k/kernels_bench.json \
        --stream results/h200/kernels/run15_retune/s/stream_sm_power.json \
        --floor results/h200/kernels/run57_final_table/k/floor.json \
        --out results/h200/kernels/plots

Every figure is drawn from the JSON's measured numbers (NVML energy counter, CUDA events) and
says which file it came from. An input file that cannot be read, or lacks what a figure needs,
is one usage error; an error while drawing is a bug and shows as one (a traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {  # backend label -> (color, line style)
    "loop": ("tab:gray", ":"),
    "grouped": ("tab:blue", "-"),
    "grouped+step_graph": ("tab:blue", "--"),
    "fused": ("tab:red", "-"),
    "fused+step_graph": ("tab:red", "--"),
    "fused_int4": ("tab:green", "-"),
    "fused_int4+step_graph": ("tab:green", "--"),
}


class InputError(Exception):
    """An input file cannot be read, or is not the results file it was given as."""


@dataclass(frozen=True)
class EnergyRow:
    """One energy measurement of a kernels_bench.json: a backend's layer step at one size."""

    shape: str
    backend: str
    tokens: int
    uj_per_token: float


@dataclass(frozen=True)
class BenchFile:
    """What the energy figure needs from a kernels_bench.json."""

    rows: list[EnergyRow]
    gpu: str  # NVML's name of the GPU, "GPU" where the run recorded none
    commit: str


@dataclass(frozen=True)
class StreamRow:
    """One grid of a stream_sm_power.json: `programs` programs reading `block` elements each."""

    programs: int
    block: int
    read_tb_s: float
    power_w: float
    energy_mj_per_pass: float


@dataclass(frozen=True)
class StreamFile:
    """What the streaming figure needs from a stream_sm_power.json."""

    rows: list[StreamRow]  # the Triton grids (rows without programs, e.g. torch's copy, left out)
    sms: int
    idle_w: float


def _measured(value: Any) -> float:
    """A measured number of a results file: null is NaN (write_json writes NaN as null), which
    the figures leave out as a gap."""
    return float("nan") if value is None else float(value)


def _load(path: Path, kind: str) -> dict[str, Any]:
    """The JSON object in `path`.

    Raises:
        InputError: the file cannot be read, is not JSON, or holds no JSON object.
    """
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError: ValueErrors
        raise InputError(f"{path}: cannot read a {kind} ({exc})") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: not a {kind} (no JSON object)")
    return payload


def read_bench(path: Path) -> BenchFile:
    """The energy rows, GPU name and commit of a kernels_bench.json.

    Raises:
        InputError: unreadable, a field missing or of the wrong type, or no energy rows.
    """
    payload = _load(path, "kernels_bench.json")
    try:  # only reads and converts the file's fields: any error here is the file's
        rows = [EnergyRow(str(r["shape"]), str(r["backend"]), int(r["tokens"]),
                          _measured(r["uj_per_token"])) for r in payload["energy"]]
        gpu = str(dict(payload["machine"].get("gpu_nvml") or {}).get("name", "GPU"))
        commit = str(payload["commit"])
    # a field missing, or of the wrong kind (a list where an object belongs: AttributeError;
    # a string or null where a number does: ValueError, TypeError; Infinity: OverflowError)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"{path}: not a kernels_bench.json with rows to plot ({exc!r})") from None
    if not rows:
        raise InputError(f"{path}: no energy rows to plot")
    return BenchFile(rows, gpu, commit)


def read_stream(path: Path) -> StreamFile:
    """The Triton grids' rows, SM count and idle power of a stream_sm_power.json.

    Raises:
        InputError: unreadable, a field missing or of the wrong type, or no SMs.
    """
    payload = _load(path, "stream_sm_power.json")
    try:  # only reads and converts the file's fields: any error here is the file's
        rows = [StreamRow(int(r["programs"]), int(r["block"]), _measured(r["read_tb_s"]),
                          _measured(r["power_w"]), _measured(r["energy_mj_per_pass"]))
                for r in payload["rows"] if r["programs"]]
        sms, idle_w = int(payload["sms"]), _measured(payload["idle_w"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # as in read_bench
        raise InputError(f"{path}: not a stream_sm_power.json with rows to plot ({exc!r})"
                         ) from None
    if sms < 1:
        raise InputError(f"{path}: sms must be >= 1, got {sms}")
    return StreamFile(rows, sms, idle_w)


@dataclass(frozen=True)
class FloorRow:
    """One measurement of a floor_probe.json: the experts of one step in one form."""

    shape: str
    tokens: int
    variant: str
    energy_mj: float


def read_floor(path: Path) -> list[FloorRow]:
    """The rows of a floor_probe.json.

    Raises:
        InputError: unreadable, a field missing or of the wrong type, or no rows.
    """
    payload = _load(path, "floor_probe.json")
    try:  # only reads and converts the file's fields: any error here is the file's
        rows = [FloorRow(str(r["shape"]), int(r["tokens"]), str(r["variant"]),
                         _measured(r["energy_mj"])) for r in payload["rows"]]
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # as in read_bench
        raise InputError(f"{path}: not a floor_probe.json with rows to plot ({exc!r})") from None
    if not rows:
        raise InputError(f"{path}: no rows to plot")
    return rows


def floor_plot(floor: Path, out: Path) -> Path:
    """Energy per step of each form of the experts, one panel per (shape, step size), as a
    fraction of the grouped experts on random routing where the file has them.

    Raises:
        InputError: `floor` is not a readable floor_probe.json with rows.
    """
    rows = read_floor(floor)
    cases = list(dict.fromkeys((r.shape, r.tokens) for r in rows))
    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 4.6), squeeze=False)
    for ax, (shape, tokens) in zip(axes[0], cases, strict=True):
        mine = [r for r in rows if (r.shape, r.tokens) == (shape, tokens)]
        ref = next((r.energy_mj for r in mine
                    if r.variant == "grouped bf16 experts, random routing"), None)
        if ref is not None and not ref > 0:  # null (NaN) or 0 J (the CPU smoke test)
            ref = None
        colors = ["tab:gray" if r.variant.startswith(("stream", "bmm")) else
                  "tab:blue" if r.variant.startswith("grouped") else
                  "tab:green" if "int4" in r.variant else "tab:red" for r in mine]
        y = range(len(mine))
        ax.barh(list(y), [r.energy_mj for r in mine], color=colors)
        ax.set_yticks(list(y), [r.variant for r in mine], fontsize=7)
        ax.invert_yaxis()
        for i, r in enumerate(mine):
            note = f" {r.energy_mj:.1f}" + (f" ({r.energy_mj / ref:.2f})" if ref else "")
            ax.text(r.energy_mj, i, note, va="center", fontsize=7)
        ax.set_xlabel("mJ per step (measured, NVML); in brackets: / grouped, random routing")
        ax.set_title(f"{shape}, {tokens} tokens per step", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        top = max((r.energy_mj for r in mine if math.isfinite(r.energy_mj)), default=0.0)
        ax.set_xlim(0, top * 1.35 if top > 0 else 1.0)  # null rows are gaps
    fig.suptitle(f"the experts of one step: floors (gray) against the fused (red bf16, green "
                 f"int4) and grouped (blue) kernels ({floor})", fontsize=9)
    fig.tight_layout()
    path = out / "floors.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_plot(bench: Path, out: Path) -> Path:
    """uJ/token vs tokens per step, one panel per shape, one line per backend.

    Raises:
        InputError: `bench` is not a readable kernels_bench.json with energy rows.
    """
    data = read_bench(bench)
    rows = data.rows
    shapes = list(dict.fromkeys(r.shape for r in rows))
    labels = [*STYLE, *(b for b in dict.fromkeys(r.backend for r in rows) if b not in STYLE)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        for label in labels:  # backends without a style of their own: default colors, dash-dot
            color, ls = STYLE.get(label, (None, "-."))
            pts = sorted((r.tokens, r.uj_per_token) for r in rows
                         if r.shape == shape and r.backend == label)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, ls=ls, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per step")
        ax.set_ylabel("uJ per token (measured, NVML)")
        ax.set_title(shape)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"whole MoE layer step on {data.gpu} (commit {data.commit[:7]}; {bench})",
                 fontsize=9)
    fig.tight_layout()
    path = out / "energy_per_token.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stream_plot(stream: Path, out: Path) -> Path:
    """Read rate, power and energy per pass vs programs per SM.

    Raises:
        InputError: `stream` is not a readable stream_sm_power.json.
    """
    data = read_stream(stream)
    rows, sms = data.rows, data.sms
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for blk in sorted({r.block for r in rows}):
        pts = sorted(((r.programs / sms, r) for r in rows if r.block == blk),
                     key=lambda t: t[0])
        x = [p for p, _ in pts]
        kb = blk * 2 // 1024
        for ax, field in zip(axes, ("read_tb_s", "power_w", "energy_mj_per_pass"), strict=True):
            ax.plot(x, [getattr(r, field) for _, r in pts], marker="o",
                    label=f"{kb} KB per load")
    for ax, label in zip(axes, ("read rate, TB/s (CUDA events)", "mean power, W (NVML)",
                                "energy per 805 MB pass, mJ (NVML)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"programs per SM ({sms} SMs)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"streaming the expert weights with part of the GPU ({stream}; idle "
                 f"{data.idle_w:.0f} W)", fontsize=9)
    fig.tight_layout()
    path = out / "stream_sm_power.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="a kernels_bench.json")
    ap.add_argument("--stream", type=Path, help="a stream_sm_power.json")
    ap.add_argument("--floor", type=Path, help="a floor_probe.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not args.bench and not args.stream and not args.floor:
        ap.error("give --bench, --stream and/or --floor")
    for p in (args.bench, args.stream, args.floor):
        if p is not None and not p.is_file():
            ap.error(f"{p}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    for path, plot in ((args.bench, energy_plot), (args.stream, stream_plot),
                       (args.floor, floor_plot)):
        if path is None:
            continue
        try:
            print(plot(path, args.out))
        except InputError as exc:  # the file's fault; anything else raised here is a bug
            ap.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
