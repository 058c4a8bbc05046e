"""Host time of a replayed whole-step graph: the default step-graph policy against a bare
`GraphedLayer`, and the parts of the policy's path (no energy). Per call, medians over
batches of 64 calls: the host's time (the GPU runs behind, the batch too small to fill the
launch queue) and the step's (until the GPU finished too).

For each shape and weights: one layer with the default backend and policy, a few steps of
one size (captured), then `--calls` calls each of: the layer (the policy's path), a bare
`GraphedLayer` of the same layer (static outputs), the layer's GraphedLayer (its short path
for held shapes, and its call), and the parts (`weights_signature`, the fresh outputs as
shipped, and other ways of making them: a tensor of its own each with one `_foreach_copy_`
(run 134), a clone per tensor, one clone per dtype with every tensor a view (run 133), the
small ones a clone per dtype and the large each (run 136)), then a cProfile of the policy's
path. Writes one JSON.

    python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/host.json --tokens 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from _meta import provenance, write_json  # noqa: E402
from step_call_time import BATCH, batch_times  # noqa: E402

from wattmoe.moe.graphs import GraphedLayer, output_tensors  # noqa: E402
from wattmoe.moe.layer import SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402


def per_call_us(fn, calls: int, dev: torch.device) -> tuple[float, float]:
    """(host, step) microseconds per call, medians over batches of `BATCH` calls
    (`step_call_time.batch_times`): host, the time the calls took to return (the GPU runs
    behind them: batches small enough that the launch queue never fills and blocks the host);
    step, until the GPU finished the batch too (the larger of the host's and the GPU's time
    per call)."""
    for _ in range(50):
        fn()
    host, step = batch_times(fn, max(1, calls // BATCH), dev)
    return statistics.median(host), statistics.median(step)


def probe(spec: str, weights: str, tokens: int, calls: int, dev: torch.device
          ) -> dict[str, object]:
    cfg = resolve_shape(spec)
    torch.manual_seed(0)
    layer = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
    if weights == "int4":
        layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    x = torch.randn(tokens, cfg.hidden_size, device=dev, dtype=torch.bfloat16)
    row: dict[str, object] = {"shape": spec, "weights": weights, "tokens": tokens}
    with torch.inference_mode():
        for _ in range(4):
            layer(x)
        runner = layer.step_graphs
        assert runner is not None and runner.replays > 0, "the step was not captured"
        bare = GraphedLayer(layer)
        for _ in range(3):
            bare(x)
        entry = runner._graphs[runner._key(x)]
        fresh = entry[2]

        statics = list({id(t): t for t in output_tensors(fresh.fresh()).values()}.values())
        groups: dict[torch.dtype, int] = {}
        for t in statics:
            groups[t.dtype] = groups.get(t.dtype, 0) + t.numel()
        packs = {dt: torch.empty(n, dtype=dt, device=dev) for dt, n in groups.items()}
        views = [(t.dtype, tuple(t.shape), t.contiguous().stride()) for t in statics]

        def packed_views() -> None:  # run 133's fresh outputs: a clone per dtype and views
            copies = {dt: p.clone() for dt, p in packs.items()}
            for dt, shape, stride in views:
                copies[dt].as_strided(shape, stride, 0)

        def own_each() -> None:  # run 134's fresh outputs
            copies = [torch.empty_like(t) for t in statics]
            torch._foreach_copy_(copies, statics)

        large = [t for t in statics if t.numel() * t.element_size() > 1024]
        small: dict[torch.dtype, int] = {}
        for t in statics:
            if t.numel() * t.element_size() <= 1024:
                small[t.dtype] = small.get(t.dtype, 0) + t.numel()
        small_packs = [torch.empty(n, dtype=dt, device=dev) for dt, n in small.items()]
        small_views = [(list(small).index(t.dtype), tuple(t.shape),
                        t.contiguous().stride()) for t in statics
                       if t.numel() * t.element_size() <= 1024]

        def per_dtype_clones() -> None:  # run 136's fresh outputs: a clone per dtype of the
            # small tensors (1 KB or less), one of each large tensor, a view of each small one
            copies = [p.clone() for p in small_packs]
            [t.clone() for t in large]
            for i, shape, stride in small_views:
                copies[i].as_strided(shape, stride, 0)

        parts = {
            "policy (layer call)": lambda: layer(x),
            "bare GraphedLayer": lambda: bare(x),
            "layer's held replay (_replay_held)": lambda: runner._replay_held(x),
            "layer's GraphedLayer call": lambda: runner(x),
            "weights_signature": runner.weights_signature,
            "fresh outputs (as shipped)": fresh.fresh,
            "a tensor of its own each (empty_like + _foreach_copy_)": own_each,
            "a clone per tensor": lambda: [t.clone() for t in statics],
            "a clone per dtype + views (run 133)": packed_views,
            "small ones a clone per dtype, large each (run 136)": per_dtype_clones,
            "replay alone": entry[0].replay,
        }
        timed = {k: per_call_us(f, calls, dev) for k, f in parts.items()}
        row["host_us"] = {k: v[0] for k, v in timed.items()}
        row["step_us"] = {k: v[1] for k, v in timed.items()}
        row["tensors"] = len(statics)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            layer(x)
        prof.disable()
        torch.cuda.synchronize(dev)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
        row["cprofile_policy"] = text.getvalue()
    for k, v in row["host_us"].items():  # type: ignore[union-attr]
        print(f"{spec:14s} {weights} T={tokens}: {k:52s} host {v:7.1f} us, step "
              f"{row['step_us'][k]:7.1f} us", flush=True)  # type: ignore[index]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.calls < 1:
        ap.error("--tokens and --calls must be >= 1")
    dev = torch.device("cuda")
    rows = []
    for spec in args.shapes.split(","):
        for weights in ("bf16", "int4"):
            rows.append(probe(spec, weights, args.tokens, args.calls, dev))
            write_json(Path(args.out), {**provenance(), "args": vars(args), "rows": rows})
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
