"""What limits the fused MoE kernels: timed variants that leave one stage out.

For one shape and step size, on uniform random routing, times (CUDA events, median) and
splits per launch (CUPTI):

- int4: the tuned configuration; the same with dequantization through fp32; the same with
  dequantization skipped (diagnostic mode: the bytes reinterpreted as bf16, wrong values), so
  the difference is what unpacking and scaling cost inside the kernel;
- bf16 down launch: with the weighted atomic combine into the fp32 output (what the backend
  does) and with a plain store of each assignment's row, so the difference is the atomics'.

    PYTHONPATH=$PWD python3 benchmarks/gpu/kernel_diag.py --out $OUT/diag.json

--variants picks which of these to run (and "inflight": the int4 entry with the last MMA of
each K step left in flight across the loop's back edge, as the kernels did before run 89; what
waiting for it costs). With --ncu, runs each variant a few times only, for
`ncu --clock-control none` to profile.
With --energy S, also measures each int4 and bf16 variant's experts step captured in a CUDA
graph over NVML windows of S seconds (two each, in alternating order): the joules per step of
the same work with dequantization as shipped, through fp32 and skipped. The skipped variant
multiplies reinterpreted bits (its values, and how much its MMAs toggle, are not the real
weights'), so its energy is an estimate of a dequantization-free launch, not a measurement of one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import (  # noqa: E402
    Energy,
    alternating_windows,
    bench_ms,
    bf16_and_int4_stacks,
    graphed,
    launch_times,
    window_mj,
)
from nan_probe import INT4_LOOP_FORMS, with_changes  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import build_dispatch, get_preset  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402

# the int4 variants of the table's entry: what their labels add to its name, and the
# `KernelConfig` changes of both launches
INT4_VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "table": ("", {}),
    "fp32": (" fp32 dequant", {"int4_asm": False}),
    "skipped": (" dequant skipped", {"int4_skip_dequant": True}),
    "inflight": (" last MMA in flight (before run 89)", INT4_LOOP_FORMS["inflight"]),
    "whole": (" unpacked whole, waits (run 89)", INT4_LOOP_FORMS["whole"]),
    "nibbles": (" in nibble halves (run 91)", INT4_LOOP_FORMS["nibbles"]),
    "khalves": (" in K halves (session 14)", INT4_LOOP_FORMS["khalves"]),
    # the gate/up launch alone in K halves (a tuple: the changes of each launch)
    "khalves_up": (" gate/up in K halves", (INT4_LOOP_FORMS["khalves"], {})),
}
VARIANTS = (*INT4_VARIANTS, "bf16")


def per_launch(pair: ft.ConfigPair, changes: dict[str, object] | tuple[dict, dict]
               ) -> ft.ConfigPair:
    """pair with `changes` in both launches, or, given a tuple, each launch's own."""
    if isinstance(changes, dict):
        return with_changes(pair, changes)
    return tuple(dataclasses.replace(c, **ch) for c, ch in zip(pair, changes))  # type: ignore


def run(fn: Callable[[], object], title: str, rec: dict[str, object],
        rows: list[dict[str, object]], ncu: bool, split: bool) -> None:
    """Times fn (or, for ncu, just runs it 3 times) and records the result."""
    if ncu:
        for _ in range(3):
            fn()
        return
    ms = bench_ms(fn)
    parts = launch_times(fn) if split else None
    rows.append({**rec, "ms": ms, "gate_up_ms": parts[0] if parts else None,
                 "down_ms": parts[1] if parts else None})
    extra = f"  (gate/up {parts[0] * 1e3:.1f}, down {parts[1] * 1e3:.1f})" if parts else ""
    print(f"{title:60s} {ms * 1e3:8.1f} us{extra}", flush=True)


def energy_rows(variants: dict[str, tuple], x: torch.Tensor, d, tokens: int, seconds: float,
                dev: torch.device, rows: list[dict[str, object]]) -> None:
    """mJ per captured experts step of each variant: the mean of two NVML windows, the second
    round in reverse order, so that a drift during the run falls on every variant alike."""
    nrg = Energy(dev.index or 0)
    steps = {label: graphed(functools.partial(ft.fused_forward, stack, x, d, pair), dev)
             for label, (stack, pair) in variants.items()}
    for label, ws in alternating_windows(nrg, steps, seconds, 2).items():
        mj = window_mj(ws)
        watts = sum(w["energy_j"] for w in ws) / sum(w["seconds"] for w in ws)
        rows.append({"tokens": tokens, "variant": label, "energy_mj": sum(mj) / len(mj),
                     "energy_mj_windows": mj, "power_w": watts,
                     "energy_source": nrg.source + (
                         "; an estimate of a dequantization-free step (wrong values)"
                         if "skipped" in label else ""),
                     "graph": True})
        print(f"T={tokens:5d} {label:55s} {sum(mj) / len(mj):8.2f} mJ per captured experts "
              f"step ({watts:.0f} W)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-1b-7b")
    ap.add_argument("--tokens", default="512,4096")
    ap.add_argument("--out", default="diag.json")
    ap.add_argument("--ncu", action="store_true", help="run each variant 3 times, no timing")
    ap.add_argument("--device", default="cuda", help="cpu: smoke test (TRITON_INTERPRET=1)")
    ap.add_argument("--scale", type=float, default=1.0, help="width scale of the shape")
    ap.add_argument("--variants", default="table,fp32,skipped,bf16",
                    help="comma list of: table (the int4 table entry), fp32 (its "
                         "dequantization through fp32), skipped (dequantization skipped), "
                         "inflight (its K loops' last MMA left in flight, as before run 89), "
                         "whole (the tile unpacked at once and a wait per K step: run 89), "
                         "nibbles, khalves (non-gated int4 tiles in nibble halves or K halves "
                         "whatever their rows: `int4_split_form`), khalves_up (the gate/up "
                         "launch alone in K halves), "
                         "bf16 (the bf16 table entry and its down launch's combines)")
    ap.add_argument("--energy", type=float, default=0.0,
                    help="seconds per NVML window on each variant's captured experts step "
                         "(0: no energy; needs a GPU)")
    args = ap.parse_args(argv)
    if args.energy < 0 or (args.energy and (args.ncu or args.device == "cpu")):
        ap.error("--energy: seconds >= 0, on a GPU, without --ncu")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        ap.error(f"--variants: {', '.join(unknown) or 'none given'} (known: "
                 f"{', '.join(VARIANTS)})")
    try:
        cfg = get_preset(args.shape, args.scale)
        tokens_list = [int(t) for t in args.tokens.split(",")]
    except (ConfigError, ValueError) as exc:
        ap.error(f"--shape/--scale/--tokens: {exc}")
    if min(tokens_list) < 1:
        ap.error(f"--tokens: step sizes >= 1, got {args.tokens!r}")
    dev = torch.device(args.device)
    st, qst = bf16_and_int4_stacks(cfg, dev)
    rows: list[dict[str, object]] = []
    try:
        _diagnose(args, cfg, st, qst, tokens_list, dev, rows)
    finally:  # an interrupted or failed run keeps the rows it measured
        if not args.ncu and rows:
            write_json(Path(args.out), {**provenance(), "args": vars(args), "rows": rows})
    return 0


def _diagnose(args: argparse.Namespace, cfg, st, qst, tokens_list: list[int],
              dev: torch.device, rows: list[dict[str, object]]) -> None:
    """The variants of every step size, their rows appended to `rows` as they are measured."""
    h_dim, f_dim = cfg.hidden_size, cfg.expert_inner_size
    for tokens in tokens_list:
        idx = torch.rand(tokens, cfg.num_experts, device=dev).topk(cfg.top_k, dim=1).indices
        wgt = torch.rand(tokens, cfg.top_k, device=dev)
        d = build_dispatch(idx, wgt / wgt.sum(1, keepdim=True), cfg.num_experts,
                           with_rowof=True)  # as the layer routes for the fused backends
        x = torch.randn(tokens, h_dim, device=dev).bfloat16()
        n = d.token_idx.numel()
        q_name = ft.choose_config(qst, n, dev)
        q_pair = ft.resolve_config(q_name, True)
        b_name = ft.choose_config(st, n, dev)
        b_pair = ft.resolve_config(b_name, False)
        assert q_pair is not None and b_pair is not None
        every: dict[str, tuple[str, tuple]] = {
            v: (f"int4 {q_name}{label}", (qst, per_launch(q_pair, changes)))
            for v, (label, changes) in INT4_VARIANTS.items()}
        every["bf16"] = (f"bf16 {b_name}", (st, b_pair))
        variants = dict(every[v] for v in args.variants)
        with torch.inference_mode():
            for label, (stack, pair) in variants.items():
                fn = functools.partial(ft.fused_forward, stack, x, d, pair)
                run(fn, f"T={tokens:5d} {label}", {"tokens": tokens, "variant": label},
                    rows, args.ncu, split=True)
            if args.energy:
                energy_rows(variants, x, d, tokens, args.energy, dev, rows)
            if "bf16" not in args.variants:
                continue
            # the down launch alone: atomic weighted combine vs a plain store per assignment
            cfg_dn = ft._fit(b_pair[1], h_dim, f_dim, None)
            assert cfg_dn is not None and st.w2 is not None
            hmid = torch.randn(n, f_dim, device=dev).bfloat16()
            out32 = torch.zeros(tokens, h_dim, device=dev)
            ybuf = torch.empty(n, h_dim, device=dev, dtype=torch.bfloat16)
            for label, combine, c in (("down, atomic combine", True, out32),
                                      ("down, plain store", False, ybuf)):
                fn = functools.partial(
                    ft._launch, hmid, d.token_idx, d.weight, d.counts, st.w2, None, c, h_dim,
                    f_dim, 0, cfg_dn, gather=False, gated=False, act=0, combine=combine,
                    qgroup=None, ieee=False)
                name = f"bf16 {b_name} {label}"
                run(fn, f"T={tokens:5d} {name}", {"tokens": tokens, "variant": name}, rows,
                    args.ncu, split=False)


if __name__ == "__main__":
    sys.exit(main())
