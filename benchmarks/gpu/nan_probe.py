"""Hunts intermittent wrong or non-finite outputs of fused configurations (run 85: one of three
identical Mixtral-8x7B int4 4096-token tunes got NaN from `w64t16fpx`; runs 86-88 traced it to
int4 MMAs left in flight while their register operand was rewritten, fixed since).

Each repeat draws fresh tokens and routing and runs every configuration given on them; before
each step it poisons the caching allocator's free memory (blocks filled with a byte pattern:
0xFF is NaN in bf16, fp16 and fp32; the patterns rotate over repeats and configurations) and
drops the stack's int4 copies, so that they are made again in poisoned memory; then it compares
the step with the fp32 reference of the same weights. A read of memory the launches did not
write, or a race, shows as a non-finite or wrong output in some steps and not others, and the
record says which tokens and 64-column blocks went wrong (one program's tile, for a race inside
a launch). Pairs 'A/B' (A's gate/up launch, B's down launch) and modifiers (':sN' stages,
':inflight', ':whole', ':split', ':nibbles', ':khalves') tell the launches and K loops apart.
Under `compute-sanitizer --tool initcheck` (with PYTORCH_NO_CUDA_MEMORY_CACHING=1) it names an
uninitialized read.

    python3 benchmarks/gpu/nan_probe.py --shape mixtral-8x7b --weights int4 --tokens 4096 \\
        --config w64t16fpx,w64t16fpx:inflight --repeats 12 --out $OUT/nan_probe.json

Writes the JSON record of every step after each step, so that a run stopped early keeps its
steps. On a machine without a GPU it runs in Triton's interpreter (slowly: use a tiny shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _meta import provenance, write_json
from kernels_bench import poison, reference, routing

from wattmoe.errors import ConfigError
from wattmoe.moe import SimpleMoELayer, resolve_shape
from wattmoe.moe import fused_triton as ft
from wattmoe.moe.quant import int4_group_size
from wattmoe.moe.stacked import stacked_experts

# 0xFF: NaN in every float type; 0x7F: the largest finite values (inf once multiplied); zeros;
# 0xA5: tiny negative values
PATTERNS = (0xFF, 0x7F, 0x00, 0xA5)

# the int4 K loops that `KernelConfig` fields select, by the names of this probe's modifiers
# (':inflight', ...) and of kernel_diag.py's variants: the last MMA of a K step left in flight
# across the back edge (as before run 89: `int4_inflight_mma`), the tile unpacked at once with a
# wait per step or in halves (`int4_split_dequant`), in nibble or K halves whatever the tile's
# rows (`int4_split_form`)
INT4_LOOP_FORMS: dict[str, dict[str, object]] = {
    "inflight": {"int4_inflight_mma": True},
    "whole": {"int4_split_dequant": False},
    "split": {"int4_split_dequant": True},
    "nibbles": {"int4_split_dequant": True, "int4_split_form": 1},
    "khalves": {"int4_split_dequant": True, "int4_split_form": 2},
}


def with_changes(pair: ft.ConfigPair, changes: dict[str, object]) -> ft.ConfigPair:
    """pair with `changes` (`KernelConfig` fields) in both launches' configs."""
    return tuple(dataclasses.replace(c, **changes) for c in pair)  # type: ignore[return-value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="mixtral-8x7b", help="a preset, preset@scale or shape key")
    ap.add_argument("--weights", choices=("bf16", "int4"), default="int4")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--config", default="w64t16fpx",
                    help="fused candidate names or 'A/B' pairs, comma-separated; each may end "
                         "in ':sN' (both launches with N pipeline stages), ':inflight' (int4: "
                         "the last MMA of a K step left in flight, as before run 89), ':whole' "
                         "or ':split' (int4 dequantization at once or in halves), ':nibbles' "
                         "or ':khalves' (int4: in nibble or K halves on any tile); "
                         "every repeat runs each of them on the same tokens and routing")
    ap.add_argument("--routing", default="uniform",
                    choices=("uniform", "skewed", "hot", "capacity", "single"))
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--poison-mb", type=int, default=4096,
                    help="MB of the caching allocator poisoned before each step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.tokens < 1 or args.poison_mb < 0:
        ap.error("--repeats and --tokens must be >= 1, --poison-mb >= 0")
    return args


def resolve(spec: str, quantized: bool) -> ft.ConfigPair:
    """The (gate/up, down) configs of 'NAME' or 'A/B', each optionally followed by ':sN' (N
    pipeline stages in both launches), ':inflight' (int4: the K loop's last MMA left in
    flight across the back edge, as before run 89: `KernelConfig.int4_inflight_mma`), ':whole'
    or ':split' (int4: the tile unpacked at once with a wait per step, or in halves:
    `KernelConfig.int4_split_dequant`), ':nibbles' or ':khalves' (int4: in nibble halves or K
    halves whatever the tile's rows: `KernelConfig.int4_split_form`)."""
    name, *mods = spec.split(":")
    kind = "int4" if quantized else "bf16"
    pair = ft.resolve_config(name, quantized)
    if pair is None:
        raise SystemExit(f"error: unknown {kind} config {name!r} in {spec!r}")
    changes: dict[str, object] = {}
    for mod in mods:
        if mod[:1] == "s" and mod[1:].isdigit() and int(mod[1:]) >= 1:
            changes["num_stages"] = int(mod[1:])
        elif mod in INT4_LOOP_FORMS and quantized:
            changes |= INT4_LOOP_FORMS[mod]
        else:
            *first, last = (f":{m}" for m in INT4_LOOP_FORMS)
            raise SystemExit(f"error: {spec!r}: modifier {mod!r} is not one of :sN (N >= 1)"
                             + (f", {', '.join([*first, last])}" if quantized else
                                f" ({', '.join(first)} and {last} are for --weights int4)"))
    if changes.get("int4_inflight_mma") and changes.get("int4_split_dequant"):
        raise SystemExit(f"error: {spec!r}: :inflight is the whole-tile loop without its wait; "
                         "it does not go with :split")
    return with_changes(pair, changes)


def wrong_entries(out: torch.Tensor, ref: torch.Tensor) -> dict[str, object]:
    """Where out is non-finite or wild (off the reference by more than its largest value):
    counts, the first tokens and output columns, and the 64-column blocks they fall in."""
    o = out.float()
    bad = ~torch.isfinite(o)
    bad |= (o - ref).abs() > ref.abs().max()
    where = bad.nonzero()
    cols = where[:, 1].unique()
    return {"wrong": int(bad.sum()), "wrong_tokens": int(where[:, 0].unique().numel()),
            "first_tokens": where[:, 0].unique()[:16].tolist(),
            "columns": cols[:32].tolist(), "column_blocks64": (cols // 64).unique()[:16].tolist()}


def main(argv: list[str] | None = None) -> int:
    """Returns the number of bad steps (non-finite or relative error over 2e-2)."""
    args = parse_args(argv)
    dev = torch.device(args.device)
    try:
        cfg = resolve_shape(args.shape)
    except ConfigError as exc:
        raise SystemExit(f"error: --shape: {exc}") from None
    try:  # before any launch: a bad $WATTMOE_* kernel setting is one error, not one per step
        ft.check_settings(dev)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    quantized = args.weights == "int4"
    specs = [c.strip() for c in args.config.split(",") if c.strip()]
    pairs = {c: resolve(c, quantized) for c in specs}
    if not pairs:
        raise SystemExit("error: --config names no configuration")
    dtype = "bf16" if dev.type == "cuda" else "fp32"
    layer = SimpleMoELayer(cfg, dtype=dtype, device=dev).eval()
    if quantized:
        layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    st = stacked_experts(layer.experts)
    gen = torch.Generator(device=dev).manual_seed(0)
    payload: dict[str, object] = {**provenance(), "args": vars(args) | {"out": str(args.out)},
                                  "repeats": []}
    bad: dict[str, int] = dict.fromkeys(pairs, 0)
    for i in range(args.repeats):
        d = routing(args.routing, args.tokens, cfg.num_experts, cfg.top_k, dev, gen)
        x = torch.randn(args.tokens, cfg.hidden_size, generator=gen, device=dev).to(
            torch.bfloat16 if dev.type == "cuda" else torch.float32)
        with torch.inference_mode():
            ref = reference(layer.experts, x, d)
        for j, (spec, pair) in enumerate(pairs.items()):
            # each configuration meets every pattern over the repeats, however many there are
            pattern = PATTERNS[(i + j) % len(PATTERNS)]
            # the copies are made again in the poisoned memory, and h, y and the output land
            # there
            for key in [k for k in st.kernel_cache if isinstance(k, tuple)]:
                del st.kernel_cache[key]
            if dev.type == "cuda":  # 64 MB blocks, which the step's buffers can be cut from
                torch.cuda.synchronize()
                poison(dev, [1 << 26] * (args.poison_mb // 64), pattern)
            else:  # no caching allocator to poison: a token amount, for the code path
                poison(dev, [min(args.poison_mb, 16) << 20], pattern)
            with torch.inference_mode():
                out = ft.fused_forward(st, x, d, pair)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            finite = torch.isfinite(out)
            nonfinite = int((~finite).sum())
            err = (((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                   if nonfinite == 0 else float("nan"))
            ok = nonfinite == 0 and err <= 2e-2
            bad[spec] += not ok
            rec = {"repeat": i, "config": spec, "pattern": f"0x{pattern:02X}", "rel_err": err,
                   "nonfinite": nonfinite, "ok": ok, "t": time.time()}
            if not ok:
                rec |= wrong_entries(out, ref)
            payload["repeats"].append(rec)  # type: ignore[union-attr]
            print(f"repeat {i:3d} {spec:28s} poison 0x{pattern:02X}: "
                  + (f"rel err {err:.2e}" if nonfinite == 0 else f"{nonfinite} non-finite")
                  + ("" if ok else f"  BAD: {rec['wrong']} wrong values in "
                     f"{rec['wrong_tokens']} tokens, column blocks {rec['column_blocks64']}"),
                  flush=True)
            if args.out is not None:
                write_json(args.out, payload)
    for spec, b in bad.items():
        print(f"{b} bad of {args.repeats} repeats ({args.shape} {args.weights} "
              f"{args.tokens} tokens, {spec})")
    return sum(bad.values())


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
