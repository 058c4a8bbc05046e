"""Time per call of a SimpleMoELayer with every default (the `auto` backend and its whole-step
CUDA graphs) at a decode size: for comparing two versions of the code, run alternately in
separate processes (this script imports only what every version since session 19 has).

Per shape and weights: a fresh bf16 layer (int4: quantized), four steps (decided, captured,
replayed), then `--batches` batches of 64 calls: the host's time per call (until the calls
returned; the GPU runs behind, and 64 calls do not fill CUDA's launch queue) and the step's
(until the GPU finished too), medians over the batches. Writes one JSON.

    python3 benchmarks/gpu/step_call_time.py --out /tmp/t.json --tokens 1
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
from _meta import provenance, write_json  # noqa: E402

from wattmoe.moe.layer import SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402

BATCH = 64  # calls between synchronizations: their launches fit CUDA's launch queue


def batch_times(fn, batches: int, dev: torch.device) -> tuple[list[float], list[float]]:
    """Microseconds per call of each of `batches` batches of `BATCH` calls: (host: until the
    calls returned, the GPU running behind them; step: until the GPU finished the batch too).
    Also used by step_graph_host_probe.py."""
    torch.cuda.synchronize(dev)
    host, step = [], []
    for _ in range(batches):
        t = time.perf_counter()
        for _ in range(BATCH):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        host.append((t1 - t) / BATCH * 1e6)
        step.append((t2 - t) / BATCH * 1e6)
    return host, step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.batches < 1:
        ap.error("--tokens and --batches must be >= 1")
    dev = torch.device("cuda")
    rows = []
    for spec in args.shapes.split(","):
        for weights in ("bf16", "int4"):
            cfg = resolve_shape(spec)
            torch.manual_seed(0)
            layer = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
            if weights == "int4":
                layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
            x = torch.randn(args.tokens, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
            with torch.inference_mode():
                for _ in range(4 + BATCH):
                    layer(x)
                host, step = batch_times(lambda lay=layer, x=x: lay(x), args.batches, dev)
            runner = layer.step_graphs
            row = {"shape": spec, "weights": weights, "tokens": args.tokens,
                   "host_us": statistics.median(host), "step_us": statistics.median(step),
                   "host_us_p10_p90": [statistics.quantiles(host, n=10)[0],
                                       statistics.quantiles(host, n=10)[-1]],
                   "replays": getattr(runner, "replays", None)}
            rows.append(row)
            print(f"{spec:14s} {weights} T={args.tokens}: host {row['host_us']:6.1f} us, "
                  f"step {row['step_us']:6.1f} us, replays {row['replays']}", flush=True)
            del layer, runner
            torch.cuda.empty_cache()
    write_json(Path(args.out), {**provenance(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
