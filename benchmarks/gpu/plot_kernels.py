"""Plots of committed kernel results (no GPU needed): energy per token per backend, and the
streaming-power sweep.

    python benchmarks/gpu/plot_kernels.py \
        --bench results/h200/kernels/run18_final/k/kernels_bench.json \
        --stream results/h200/kernels/run15_retune/s/stream_sm_power.json \
        --out results/h200/kernels/plots

Every figure is drawn from the JSON's measured numbers (NVML energy counter, CUDA events) and
says which file it came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def energy_plot(bench: Path, out: Path) -> Path:
    """uJ/token vs tokens per step, one panel per shape, one line per backend."""
    payload = json.loads(bench.read_text())
    rows = payload["energy"]
    if not rows:
        raise ValueError("no energy rows")
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    labels = [*STYLE, *(b for b in dict.fromkeys(r["backend"] for r in rows) if b not in STYLE)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        for label in labels:  # backends without a style of their own: default colors, dash-dot
            color, ls = STYLE.get(label, (None, "-."))
            pts = sorted((r["tokens"], r["uj_per_token"]) for r in rows
                         if r["shape"] == shape and r["backend"] == label)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, ls=ls, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per step")
        ax.set_ylabel("uJ per token (measured, NVML)")
        ax.set_title(shape)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    gpu = payload["machine"].get("gpu_nvml", {}).get("name", "GPU")
    fig.suptitle(f"whole MoE layer step on {gpu} (commit {str(payload['commit'])[:7]}; {bench})",
                 fontsize=9)
    fig.tight_layout()
    path = out / "energy_per_token.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stream_plot(stream: Path, out: Path) -> Path:
    """Read rate, power and energy per pass vs programs per SM."""
    payload = json.loads(stream.read_text())
    rows = [r for r in payload["rows"] if r["programs"]]
    sms = payload["sms"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for blk in sorted({r["block"] for r in rows}):
        pts = sorted(((r["programs"] / sms, r) for r in rows if r["block"] == blk),
                     key=lambda t: t[0])
        x = [p for p, _ in pts]
        kb = blk * 2 // 1024
        for ax, field in zip(axes, ("read_tb_s", "power_w", "energy_mj_per_pass"), strict=True):
            ax.plot(x, [r[field] for _, r in pts], marker="o", label=f"{kb} KB per load")
    for ax, label in zip(axes, ("read rate, TB/s (CUDA events)", "mean power, W (NVML)",
                                "energy per 805 MB pass, mJ (NVML)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"programs per SM ({sms} SMs)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"streaming the expert weights with part of the GPU ({stream}; idle "
                 f"{payload['idle_w']:.0f} W)", fontsize=9)
    fig.tight_layout()
    path = out / "stream_sm_power.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="a kernels_bench.json")
    ap.add_argument("--stream", type=Path, help="a stream_sm_power.json")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not args.bench and not args.stream:
        ap.error("give --bench and/or --stream")
    for p in (args.bench, args.stream):
        if p is not None and not p.is_file():
            ap.error(f"{p}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    for path, plot, kind in ((args.bench, energy_plot, "kernels_bench.json"),
                             (args.stream, stream_plot, "stream_sm_power.json")):
        if path is None:
            continue
        try:
            print(plot(path, args.out))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            ap.error(f"{path}: not a {kind} with rows to plot ({exc!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
