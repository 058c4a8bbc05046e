"""Plots of a profile: latency, energy per token and power against batch size, per op/device."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from wattmoe.cost_model.database import ProfileDatabase


def plot_profile(db: ProfileDatabase, out_dir: str | Path) -> list[Path]:
    """Writes one PNG per (device, op) with three panels; returns the paths.

    Each line is one (shape, dtype); energy and power are labelled with their source
    (measured / estimated). Points whose window was not measurable are left out of the
    energy and power panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], dict[tuple[str, str], list]] = defaultdict(
        lambda: defaultdict(list))
    for p in db.points:
        groups[(p.device, p.op)][(p.preset, p.dtype)].append(p)
    paths = []
    for (device, op), lines in sorted(groups.items()):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        sources = set()
        for (preset, dtype), pts in sorted(lines.items()):
            pts.sort(key=lambda p: p.tokens)
            n = [p.tokens for p in pts]
            label = f"{preset} {dtype}"
            axes[0].errorbar(n, [p.latency_s * 1e3 for p in pts],
                             yerr=[[max(p.latency_s - p.latency_p10_s, 0) * 1e3 for p in pts],
                                   [max(p.latency_p90_s - p.latency_s, 0) * 1e3 for p in pts]],
                             marker="o", ms=3, capsize=2, label=label)
            ep = [(p.tokens, p.energy_j / p.tokens, p.avg_power_w, p.peak_power_w)
                  for p in pts if p.energy_j is not None]
            sources |= {p.source for p in pts if p.energy_j is not None}
            if ep:
                axes[1].plot([e[0] for e in ep], [e[1] * 1e3 for e in ep], marker="o", ms=3,
                             label=label)
                line = axes[2].plot([e[0] for e in ep], [e[2] for e in ep], marker="o", ms=3,
                                    label=f"{label} mean")
                peaks = [(e[0], e[3]) for e in ep if e[3] is not None]
                if peaks:
                    axes[2].plot([x for x, _ in peaks], [y for _, y in peaks], ls=":",
                                 color=line[0].get_color(), label=f"{label} peak")
        src = "/".join(sorted(sources)) or "none"
        idle = db.devices[device].idle_power_w if device in db.devices else None
        if idle:
            axes[2].axhline(idle, color="grey", lw=0.8, ls="--", label=f"idle {idle:.0f} W")
        for ax, title, unit in (
            (axes[0], "latency per call (median, p10-p90)", "ms"),
            (axes[1], f"energy per token ({src})", "mJ / token"),
            (axes[2], f"power while running ({src})", "W"),
        ):
            ax.set_xscale("log", base=2)
            if ax is not axes[2]:
                ax.set_yscale("log")
            ax.set_xlabel("batch size (tokens)")
            ax.set_ylabel(unit)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        axes[2].legend(fontsize=6)
        name = db.devices[device].name if device in db.devices else device
        fig.suptitle(f"{op} on {device} ({name})", fontsize=11)
        fig.tight_layout()
        path = out / f"{device.replace(':', '')}_{op.replace(':', '-')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
