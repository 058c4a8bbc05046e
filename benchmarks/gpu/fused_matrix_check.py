"""The fused path on shapes, dtypes and options that the kernel benchmark does not cover.

`kernels_bench.py` checks bf16 on three large presets with int4 groups of 128. This runs whole
`SimpleMoELayer` steps with the `fused` and `fused_graph` backends (and the whole step in a
CUDA graph) over: presets with 60 experts (not a power of two), top-1 ReLU experts with a
capacity factor, sigmoid routing with a shared expert; bf16 and fp16; dense and int4 experts
with each case's group size (`int4_group_size`, the default: 64 on the default cases but
OLMoE's 128 since session 17, whose rule takes groups with whole halves of a row; 128 on all
four before; the fp16 inline-PTX dequantization included); 1, 37 and 512 tokens.
Each output is compared with an fp32 reference computed from the same (dequantized) weights on
the step's own routing; the routing is checked to be a valid top-k. Then the weights of the
step's most used expert are swapped in place with another's and the step runs again: its
output must change and match the reference of the new weights (a captured graph reads them;
for int4 the kernels' fragment-word copies are refreshed before the replay).

    PYTHONPATH=$PWD python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/matrix.json
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import layer_reference, rel_err, topk_violations  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import (  # noqa: E402
    MoEConfig,
    SimpleMoELayer,
    build_dispatch,
    resolve_shape,
)
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.graphs import GraphedLayer  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402
from wattmoe.moe.stacked import stacked_experts  # noqa: E402

CASES = ["qwen1.5-moe-a2.7b@0.25", "switch-base-8@0.5", "deepseek-v3@0.125", "olmoe-1b-7b@1"]
TOL = 1e-2


def checked_step(step, layer: SimpleMoELayer, x: torch.Tensor):
    """(output, relative error against the fp32 reference on the step's own routing)."""
    o = step(x)
    r = o.routing
    d = build_dispatch(r.topk_idx, r.topk_weight, layer.config.num_experts,
                       layer.config.capacity_factor)
    return o, rel_err(o.hidden_states, layer_reference(layer, x, d))


def swap_used_experts_in_place(layer: SimpleMoELayer, topk_idx: torch.Tensor) -> None:
    """Swaps every weight (int4: codes and scales) of the step's most used expert with another
    expert's (the second most used, or the next one), in place: the tensors keep their
    addresses, as with `load_state_dict`, and the step's output must change."""
    used = torch.bincount(topk_idx.reshape(-1), minlength=len(layer.experts)).argsort(
        descending=True).tolist()
    a, b = layer.experts[used[0]], layer.experts[used[1]]
    for ta, tb in zip(a.buffers() if hasattr(a.up_proj, "packed") else a.parameters(),
                      b.buffers() if hasattr(b.up_proj, "packed") else b.parameters()):
        tmp = ta.clone()
        ta.copy_(tb)
        tb.copy_(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="matrix.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tokens", default="1,37,512")
    ap.add_argument("--int4-config", default="",
                    help="int4 layers run this candidate at every size (default: the table's)")
    args = ap.parse_args(argv)
    if args.int4_config and ft.resolve_config(args.int4_config, True) is None:
        ap.error(f"--int4-config: {args.int4_config!r} is not an int4 candidate or 'A/B' pair")
    cases: list[tuple[str, MoEConfig]] = []
    for case in (c for c in args.cases.split(",") if c):
        try:
            cases.append((case, resolve_shape(case)))
        except (ConfigError, ValueError) as exc:
            ap.error(f"--cases: {case!r}: {exc}")
    try:
        token_counts = [int(t) for t in args.tokens.split(",") if t]
        dev = torch.device(args.device)
    except (ValueError, RuntimeError) as exc:
        ap.error(f"--tokens/--device: {exc}")
    if not cases or not token_counts or min(token_counts) < 1:
        ap.error("--cases and --tokens need at least one entry, tokens >= 1")
    try:  # before any launch: a bad $WATTMOE_* kernel setting is one error, not one per row
        ft.check_settings(dev)
    except ConfigError as exc:
        ap.error(str(exc))
    rows: list[dict[str, object]] = []
    meta = provenance()
    for case, cfg in cases:
        for dtype in ("bf16", "fp16"):
            for int4 in (False, True):
                torch.manual_seed(0)
                layer = SimpleMoELayer(cfg, dtype=dtype, device=dev).eval()
                group = None
                if int4:
                    group = int4_group_size(cfg.hidden_size, cfg.expert_inner_size)
                    layer.quantize(group)
                    if args.int4_config:  # this shape's table entry, in this process only:
                        # every power of two, so that each step's nearest size is within
                        # TUNED_REACH (one entry at "1" reached steps of <= 8 assignments only).
                        # Through the table, not a backend pinned to the config
                        # (`make_fused_backend`): the layer's `fused` and `fused_graph` steps
                        # route with `fused_route` by those names, and `choose_config` below
                        # then names what the step ran
                        key = ft.shape_key(stacked_experts(layer.experts))
                        ft.set_tuned(dev, {**ft.load_tuned(dev), key: {
                            str(1 << i): args.int4_config for i in range(25)}})
                for backend in ("fused", "fused_graph", "fused+step_graph"):
                    layer.set_backend(backend.split("+")[0])
                    step = GraphedLayer(layer) if backend.endswith("step_graph") else layer
                    for tokens in token_counts:
                        x = torch.randn(tokens, cfg.hidden_size, device=dev)
                        x = x.to(layer.router.gate.weight.dtype)
                        rec = {"case": case, "dtype": dtype, "int4_group": group,
                               "backend": backend, "tokens": tokens}
                        if int4:  # what the step's experts run (a capacity factor aside)
                            rec["config"] = ft.choose_config(stacked_experts(layer.experts),
                                                             tokens * cfg.top_k, dev)
                        try:
                            with torch.inference_mode():
                                step(x)  # a graph step: capture, then replay
                                o, err = checked_step(step, layer, x)
                                bad = topk_violations(layer, x, o.routing.topk_idx)
                                fused_route = layer.uses_fused_route(x)
                                # weights written in place: graphs must read the new ones
                                # (int4: the fused kernels' fragment-word copies refreshed)
                                before = o.hidden_states.clone()
                                swap_used_experts_in_place(layer, o.routing.topk_idx)
                                o, err_w = checked_step(step, layer, x)
                                changed = not torch.equal(o.hidden_states, before)
                            rec.update(rel_err=err, topk_violations=bad,
                                       fused_route=fused_route, rel_err_after_write=err_w,
                                       changed_after_write=changed,
                                       int4_layout=layer.int4_layout,  # 'auto': tiles on sm_90
                                       ok=err == err and err <= TOL and bad == 0
                                       and err_w == err_w and err_w <= TOL and changed)
                        except Exception as exc:
                            rec.update(ok=False, error=traceback.format_exc()[-2000:])
                            print(f"ERROR {rec}: {exc!r}", flush=True)
                        rows.append(rec)
                        # after every row: an interrupted run keeps what it checked
                        write_json(Path(args.out), {**meta, "args": vars(args), "rows": rows})
                        if not rec["ok"]:
                            print(f"FAIL {rec}", flush=True)
                del layer
        print(f"{case}: {sum(r['ok'] for r in rows if r['case'] == case)} of "
              f"{sum(r['case'] == case for r in rows)} ok; worst rel err "
              f"{max((r.get('rel_err', 0) for r in rows if r['case'] == case), default=0):.2e}",
              flush=True)
    print(f"{sum(r['ok'] for r in rows)} of {len(rows)} ok", flush=True)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
