"""One int4 tile-order copy per stack or one per program size: the same layer steps, in one
process, in alternating windows.

`$WATTMOE_INT4_TILE_COPIES` is read once per process, so an A/B through it runs each layout in
its own process (run 104, run 110), and the eager steps of 64 and 512 tokens, which the host
bounds, moved by up to 2x between processes. Here both layouts run in one process: each step
sets the layout (`fused_triton.TILE_SHARED`) before it runs, both layouts' copies are made
before the first window, and the windows alternate (`kernels_bench.alternating_windows`).
Each window records energy (NVML counter), wall time, host CPU time and the SM clock after it,
so that a difference in the eager steps can be told apart as host work, GPU work or clocks.

    PYTHONPATH=$PWD python3 benchmarks/gpu/tile_copies_probe.py --out $OUT/tiles.json

With `--compare storage` the two layouts are how the layer stores its int4 codes instead
(`SimpleMoELayer.set_int4_layout`): two layers of the same weights in one process, one with
row-major codes (the kernels read their tile-order copy) and one with the codes in tile order
(read in place), their steps in alternating windows.

On a machine without a GPU it runs the same steps through Triton's interpreter with no energy
(`kernels_bench.ClockOnly`), for the smoke test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import ClockOnly, Energy, alternating_windows, resolve_shapes  # noqa: E402

from wattmoe.commands.argtypes import positive_float, positive_int  # noqa: E402
from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.int4_layout import INT4_LAYOUTS  # noqa: E402
from wattmoe.moe import SimpleMoELayer, int4_group_size  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.graphs import GraphedLayer  # noqa: E402

LAYOUTS = {"shared": True, "per-program": False}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON to write")
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b",
                    help="presets, presets at a width scale ('olmoe-1b-7b@0.25') or shape keys")
    ap.add_argument("--tokens", default="64,512")
    ap.add_argument("--graph", action="store_true",
                    help="also the steps captured in a CUDA graph (GPU only)")
    ap.add_argument("--compare", choices=("copies", "storage"), default="copies",
                    help="copies: one tile-order copy per stack or per program size; storage: "
                         "codes stored row-major or in tile order (set_int4_layout)")
    ap.add_argument("--rounds", type=positive_int, default=4)
    ap.add_argument("--window", type=positive_float, default=1.0, help="seconds per window")
    args = ap.parse_args(argv)
    try:
        args.token_list = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        ap.error(f"--tokens: comma-separated integers, got {args.tokens!r}")
    if not args.token_list or min(args.token_list) < 1:
        ap.error(f"--tokens: one or more sizes >= 1, got {args.tokens!r}")
    return args


def layout_step(layer, x: torch.Tensor, shared: bool):
    """A step of `layer` on x with the given tile layout."""
    def step() -> object:
        ft.TILE_SHARED = shared
        return layer(x)
    return step


def timed_window(nrg, step, seconds: float) -> dict[str, float]:
    """nrg's window of `step`, with the host CPU time it took per step and the SM clock after."""
    c0 = time.process_time()
    w = nrg.window(step, seconds)
    w["cpu_ms_per_step"] = (time.process_time() - c0) / w["steps"] * 1e3
    w["ms_per_step"] = w["seconds"] / w["steps"] * 1e3
    w["mj_per_step"] = w["energy_j"] / w["steps"] * 1e3
    w["sm_clock_mhz_after"] = nrg.info().get("sm_clock_mhz")
    return w


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        shapes = resolve_shapes(args.shapes)
    except ConfigError as exc:
        print(f"error: --shapes: {exc}", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:  # the tile rows and the tuned table (the probe sets the copies' layout itself)
        ft.check_settings(dev)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    nrg = Energy() if dev.type == "cuda" else ClockOnly()
    payload: dict[str, object] = {**provenance(), "args": vars(args) | {"out": str(args.out)},
                                  "source": nrg.source, "rows": []}
    payload["args"].pop("token_list")
    was = ft.TILE_SHARED
    try:
        for shape, cfg in shapes:
            layers = {}
            for storage in INT4_LAYOUTS if args.compare == "storage" else ("rows",):
                torch.manual_seed(0)
                layer = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
                layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
                layer.set_backend("fused")
                layers[storage] = layer.set_int4_layout(storage)
            # (label, layer, tile copies shared) of each side of the comparison
            sides = ([(name, layers["rows"], shared) for name, shared in LAYOUTS.items()]
                     if args.compare == "copies" else
                     [(name, lay, True) for name, lay in layers.items()])
            for tokens in args.token_list:
                x = torch.randn(tokens, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
                steps = {}
                with torch.inference_mode():
                    for name, lay, shared in sides:
                        layout_step(lay, x, shared)()  # both sides' copies, first
                        steps[f"{name} eager"] = layout_step(lay, x, shared)
                    if args.graph and dev.type == "cuda":
                        for name, lay, shared in sides:
                            ft.TILE_SHARED = shared
                            g = GraphedLayer(lay)
                            g(x)  # captured under this layout
                            steps[f"{name} graph"] = layout_step(g, x, shared)
                    windows = alternating_windows(
                        _Timed(nrg), steps, args.window, args.rounds)
                for label, ws in windows.items():
                    row = {"shape": shape, "tokens": tokens, "step": label, "windows": ws,
                           **{k: statistics.median(w[k] for w in ws) for k in
                              ("mj_per_step", "ms_per_step", "cpu_ms_per_step")}}
                    payload["rows"].append(row)
                    print(f"{shape:15s} T={tokens:5d} {label:20s} "
                          f"{row['mj_per_step']:9.3f} mJ/step "
                          f"{row['ms_per_step']:7.3f} ms/step  cpu {row['cpu_ms_per_step']:7.3f} ms"
                          f"  (windows: " + " ".join(f"{w['mj_per_step']:.2f}" for w in ws) + ")",
                          flush=True)
                write_json(args.out, payload)
    finally:
        ft.TILE_SHARED = was
        write_json(args.out, payload)
    return 0


class _Timed:
    """nrg with `timed_window` as its window (for `alternating_windows`)."""

    def __init__(self, nrg) -> None:
        self.nrg = nrg

    def window(self, step, seconds: float) -> dict[str, float]:
        return timed_window(self.nrg, step, seconds)


if __name__ == "__main__":
    sys.exit(main())
