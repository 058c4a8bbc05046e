"""Benchmark: host time of the checks that run before every captured-step replay.

A `GraphedLayer` replay is one graph launch, so the Python that decides whether the captured
graph is still valid is most of the host's work per decode step: `weights_signature()` (did any
tensor the graph reads move?) and, inside fused steps run eagerly, `stacked_experts()` (is the
expert stack still the experts' one?). The `auto` backend keys every step twice (the layer asks
which backend was decided before routing); its key from the stack (`stacked_experts`, as
before) and from the first expert (`stack_signature`, now) are timed in the same run. All on
CPU modules (no GPU needed: only Python and torch attribute access are timed). Measured, wall
clock, best of --repeats.

    python benchmarks/graph_replay_overhead.py --out results/cpu/graph_replay_overhead.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import provenance, write_json
from fused_host_overhead import best_us

from wattmoe.errors import ConfigError
from wattmoe.moe import SimpleMoELayer, resolve_shape
from wattmoe.moe.graphs import GraphedLayer
from wattmoe.moe.stacked import stack_signature, stacked_experts


def key_from_stack(experts) -> tuple[object, ...]:
    """The `auto` key's expert part as computed before `stack_signature`."""
    st = stacked_experts(experts)
    weights = f"int4g{st.group_size}" if st.quantized else str(st.dtype)
    return (st.num_experts, st.hidden_size, st.inner_size, st.form, weights)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="olmoe-1b-7b@0.0625,deepseek-v3@0.015625")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        ap.error("--calls and --repeats must be >= 1")
    try:  # all shapes first: a bad one later must not cost the rows measured before it
        cfgs = {spec: resolve_shape(spec) for spec in args.shapes.split(",") if spec}
    except ConfigError as exc:
        ap.error(f"--shapes: {exc}")
    if not cfgs:
        ap.error("--shapes: no shape given")
    rows = []
    meta = provenance() if args.out else {}
    for spec, cfg in cfgs.items():
        layer = SimpleMoELayer(cfg, dtype="bf16").eval()
        graphed = GraphedLayer(layer)
        stacked_experts(layer.experts)  # built once; later calls only check it
        row = {"shape": spec,
               "weights_signature_us": best_us(graphed.weights_signature, args.calls,
                                               args.repeats),
               "stacked_experts_check_us": best_us(lambda lay=layer: stacked_experts(lay.experts),
                                                   args.calls, args.repeats),
               "auto_key_from_stack_us": best_us(lambda lay=layer: key_from_stack(lay.experts),
                                                 args.calls, args.repeats),
               "auto_key_from_first_expert_us": best_us(
                   lambda lay=layer: stack_signature(lay.experts), args.calls, args.repeats)}
        rows.append(row)
        print(f"{spec:28s} weights_signature {row['weights_signature_us']:6.1f} us, "
              f"stacked_experts (cached) {row['stacked_experts_check_us']:6.1f} us; auto key "
              f"from the stack {row['auto_key_from_stack_us']:6.1f} us, from the first expert "
              f"{row['auto_key_from_first_expert_us']:6.1f} us", flush=True)
        if args.out:  # after every shape: an interrupted run keeps what it measured
            write_json(Path(args.out), {**meta, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
