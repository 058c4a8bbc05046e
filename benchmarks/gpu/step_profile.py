"""Where the GPU time of one MoE layer step goes: every kernel of the step, in launch order.

Runs `SimpleMoELayer` steps under `torch.profiler` (CUDA activity: kernel start/end times
from CUPTI) and reports, per variant, each kernel's median duration over the profiled steps,
the sum (GPU busy time per step) and the step's wall time. Kernels of one Triton function show
under one name, so they are listed by position in the step ("moe_gemm #1", "moe_gemm #2").

    PYTHONPATH=$PWD python3 benchmarks/gpu/step_profile.py --out $OUT/profile.json \\
        --shape olmoe-1b-7b --tokens 512,4096 --variants grouped,fused,fused_int4

Times are measured (CUPTI kernel timestamps); no energy here (see kernels_bench.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402
from kernels_bench import shape_config  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import SimpleMoELayer  # noqa: E402
from wattmoe.moe import fused_route as fr  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.graphs import GraphedLayer  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402
from wattmoe.moe.stacked import stacked_experts  # noqa: E402

# label -> (int4 weights, backend)
VARIANTS = {"grouped": (False, "grouped"), "fused": (False, "fused"),
            "fused_int4": (True, "fused"), "loop": (False, "loop"),
            # fused routing with the router's gate GEMM in torch (cuBLAS + cast)
            "fused+torch_gate": (False, "fused")}


def profile_steps(layer: object, x: torch.Tensor, steps: int) -> dict[str, object]:
    """Kernel table of `steps` layer steps (after a warm-up).

    Besides each kernel's duration: the step's span on the GPU (first kernel start to last
    kernel end, median over steps) and the idle time inside it (span minus busy time), which
    for a CUDA-graph replay is what launch gaps and dependencies cost (negative if kernels
    overlap). For a `GraphedLayer` that could not capture the step, "replays" stays 0.
    """
    with torch.inference_mode():
        for _ in range(5):
            layer(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            layer(x)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t) / steps * 1e3
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                layer(x)
            torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"),
                     key=lambda e: e.time_range.start)
    per_step = len(kernels) // steps
    if per_step == 0 or len(kernels) % steps:
        return {"error": f"{len(kernels)} kernels over {steps} steps", "wall_ms": wall_ms}
    rows = []
    seen: dict[str, int] = {}
    for i in range(per_step):
        name = kernels[i].name
        seen[name] = seen.get(name, 0) + 1
        durs = [kernels[s * per_step + i].time_range.elapsed_us() for s in range(steps)]
        starts = [kernels[s * per_step + i].time_range.start
                  - kernels[s * per_step].time_range.start for s in range(steps)]
        rows.append({"kernel": f"{name[:60]} #{seen[name]}", "us": statistics.median(durs),
                     "start_us": statistics.median(starts)})
    spans = [kernels[s * per_step + per_step - 1].time_range.end
             - kernels[s * per_step].time_range.start for s in range(steps)]
    busy = sum(r["us"] for r in rows)
    span = statistics.median(spans)
    return {"kernels": rows, "gpu_us": busy, "span_us": span, "idle_us": span - busy,
            "launches": per_step, "wall_ms": wall_ms,
            "replays": getattr(layer, "replays", None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-1b-7b",
                    help="one shape spec, as kernels_bench.py --shapes reads them: a preset "
                         "(olmoe-1b-7b), a preset at a width scale (olmoe-1b-7b@0.25) or a "
                         "shape key (h2048_f1408_swiglu_e60_k4)")
    ap.add_argument("--tokens", default="512,4096")
    ap.add_argument("--variants", default="grouped,fused,fused_int4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ncu", action="store_true",
                    help="only run each variant's step 3 times (eager, no timing, no profiler): "
                         "for ncu; with one variant, `--kernel-name regex:moe_gemm "
                         "--launch-skip 4 --launch-count 2` profiles the third step's two "
                         "expert launches (launches count across variants)")
    ap.add_argument("--graph", action="store_true",
                    help="profile replays of the whole step captured in a CUDA graph")
    ap.add_argument("--out", default="profile.json")
    args = ap.parse_args(argv)
    try:
        cfg = shape_config(args.shape)
    except ConfigError as exc:
        ap.error(f"--shape: {exc}")
    try:
        token_sizes = [int(t) for t in args.tokens.split(",") if t]
        if not token_sizes or min(token_sizes) < 1 or args.steps < 1:
            raise ValueError("--tokens: positive integers; --steps >= 1")
    except ValueError as exc:
        ap.error(str(exc))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    dense = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
    quant = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
    quant.router.load_state_dict(dense.router.state_dict())
    quant.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    payload: dict[str, object] = {**provenance(), "args": vars(args), "profiles": []}
    for tokens in token_sizes:
        x = torch.randn(tokens, cfg.hidden_size, device=dev).bfloat16()
        for label in args.variants.split(","):
            int4, backend = VARIANTS[label]
            layer = quant if int4 else dense
            layer.set_backend(backend)
            fr.FUSE_GATE = "+torch_gate" not in label
            if args.ncu:
                with torch.inference_mode():
                    for _ in range(3):
                        layer(x)
                torch.cuda.synchronize()
                continue
            res = profile_steps(GraphedLayer(layer, max_tokens=tokens) if args.graph else layer,
                                x, args.steps)
            conf = (ft.choose_config(stacked_experts(layer.experts), tokens * cfg.top_k, dev)
                    if backend == "fused" else None)
            payload["profiles"].append({"shape": args.shape, "tokens": tokens,  # type: ignore[union-attr]
                                        "variant": label, "fused_config": conf, **res})
            print(f"== {args.shape} T={tokens} {label} ({conf}): GPU "
                  f"{res.get('gpu_us', float('nan')):.1f} us in {res.get('launches')} "
                  f"kernels, span {res.get('span_us', float('nan')):.1f} us; "
                  f"{'graph' if res.get('replays') else 'eager'} wall "
                  f"{res['wall_ms'] * 1e3:.1f} us/step", flush=True)
            for r in res.get("kernels", []):  # type: ignore[union-attr]
                print(f"   {r['start_us']:8.1f} +{r['us']:7.1f} us  {r['kernel']}", flush=True)
            write_json(Path(args.out), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
