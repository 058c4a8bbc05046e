"""The default 'auto' step-graph policy against eager steps, on a GPU (`SimpleMoELayer.
set_step_graphs`): every tensor of every output, the layer's loads, and outputs kept across
steps.

For each shape, weights (bf16, int4) and step size: one layer with the default backend
(`auto`); after one step of the size (in which `auto` decides), `--steps` random inputs run
first with the policy 'off' (the references, eager) and then with 'auto' (the first step of
the shape eagerly, then captured and replayed). Each 'auto' output must equal its reference:
the hidden states within `--tol` and the routing's fp32 scores and losses within `FP32_TOL`
(relative to the reference's largest magnitude), the chosen experts and counts exactly. The
first 'auto' output is compared again after the last step (an output kept must not change
when later steps replay), and `tokens_per_expert` must have grown by the same counts in both
passes. Sizes above the policy's limit run eagerly in both passes (a row says whether the
step was captured). Writes one JSON after each shape.

    python3 benchmarks/gpu/step_graphs_check.py --out /tmp/sg.json \\
        --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe.graphs import output_tensors  # noqa: E402
from wattmoe.moe.layer import SimpleMoELayer  # noqa: E402
from wattmoe.moe.presets import resolve_shape  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402

FP32_TOL = 1e-4


tensors = output_tensors  # every tensor of an output, by its path


def compare(got: object, want: object, tol: float) -> list[str]:
    """What differs between two outputs (empty: equal)."""
    bad = []
    g, w = tensors(got), tensors(want)
    if g.keys() != w.keys():
        return [f"fields {sorted(g)} != {sorted(w)}"]
    for name, ref in w.items():
        out = g[name]
        if out.shape != ref.shape or out.dtype != ref.dtype:
            bad.append(f"{name}: {tuple(out.shape)} {out.dtype} != {tuple(ref.shape)} {ref.dtype}")
        elif out.is_floating_point():
            # the hidden states within bf16 bounds; the routing's fp32 scores and losses
            # within fp32 reduction order (fused routing sums the aux loss with atomics:
            # two eager steps on the same tokens differ there too)
            bound = tol if name == "hidden_states" else FP32_TOL
            scale = ref.float().abs().max().clamp_min(1e-6)
            err = ((out.float() - ref.float()).abs().max() / scale).item() if ref.numel() else 0
            if not err <= bound:
                bad.append(f"{name}: relative error {err:.3g} > {bound:g}")
        elif not torch.equal(out, ref):
            bad.append(f"{name}: differs")
    if getattr(got, "dropped", None) != getattr(want, "dropped", None):
        bad.append("dropped differs")
    return bad


def run_case(layer: SimpleMoELayer, tokens: int, steps: int, tol: float,
             dev: torch.device) -> dict[str, object]:
    h = layer.config.hidden_size
    gen = torch.Generator(device="cpu").manual_seed(tokens)
    xs = [torch.randn(tokens, h, generator=gen).to(dev, torch.bfloat16) for _ in range(steps)]
    layer.set_step_graphs("off")
    with torch.inference_mode():
        # a first step of the size: `auto` decides (its deciding step routes with torch's
        # kernels, the later ones with fused routing, which rounds the gate differently)
        layer(xs[0])
    before = layer.tokens_per_expert.clone()
    with torch.inference_mode():
        refs = [layer(x) for x in xs]
    eager_counts = layer.tokens_per_expert - before
    layer.set_step_graphs("auto")  # (a new GraphedLayer: 'off' dropped the last one)
    before = layer.tokens_per_expert.clone()
    with torch.inference_mode():
        outs = [layer(x) for x in xs]
        kept = {k: v.clone() for k, v in tensors(outs[0]).items()}
        layer(xs[-1])  # one more step: a replay that must not touch the outputs kept
    graph_counts = layer.tokens_per_expert - before
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    problems = []
    for i, (out, ref) in enumerate(zip(outs, refs)):
        problems += [f"step {i}: {p}" for p in compare(out, ref, tol)]
    for name, t in tensors(outs[0]).items():
        if not torch.equal(t, kept[name]):
            problems.append(f"step 0's {name} changed after later steps")
    # the 'auto' pass ran steps + 1 steps, the last on the last input
    last = refs[-1].expert_counts
    if not torch.equal(graph_counts, eager_counts + last):
        problems.append("tokens_per_expert grew by other counts than the eager steps'")
    runner = layer.step_graphs
    return {"tokens": tokens, "steps": steps, "ok": not problems, "problems": problems[:8],
            "captures": runner.captures if runner is not None else 0,
            "replays": runner.replays if runner is not None else 0,
            "experts_backend": (layer.expert_backend.last.backend
                                if getattr(layer.expert_backend, "last", None) else None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3")
    ap.add_argument("--tokens", default="1,8,32,512,600")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    try:
        shapes = [(s, resolve_shape(s)) for s in args.shapes.split(",") if s]
        tokens = [int(t) for t in args.tokens.split(",") if t]
        if not shapes or not tokens or min(tokens) < 1 or args.steps < 2:
            raise ConfigError("--shapes and --tokens need at least one entry, tokens >= 1, "
                              "--steps >= 2")
    except (ConfigError, ValueError) as exc:
        ap.error(str(exc))
    dev = torch.device(args.device)
    payload: dict[str, object] = {**provenance(), "args": vars(args), "rows": []}
    rows: list[dict[str, object]] = payload["rows"]  # type: ignore[assignment]
    for spec, cfg in shapes:
        for weights in ("bf16", "int4"):
            torch.manual_seed(0)
            layer = SimpleMoELayer(cfg, dtype="bf16", device=dev).eval()
            if weights == "int4":
                layer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
            for t in tokens:
                row = {"shape": spec, "weights": weights, **run_case(layer, t, args.steps,
                                                                      args.tol, dev)}
                rows.append(row)
                print(f"{spec:16s} {weights} T={t:4d}: {'ok' if row['ok'] else 'FAIL'} "
                      f"captures {row['captures']} replays {row['replays']} "
                      f"experts {row['experts_backend']} {row['problems'][:2]}", flush=True)
            del layer
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        write_json(Path(args.out), payload)
    bad = sum(not r["ok"] for r in rows)
    print(f"step graphs check: {len(rows) - bad} of {len(rows)} ok")
    write_json(Path(args.out), payload)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
