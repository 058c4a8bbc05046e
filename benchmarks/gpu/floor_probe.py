"""How few joules could any kernel spend on the experts of one layer step? Measured floors.

The issue's 512-token targets ask the fused step to spend 2x (bf16) and 3x (int4) less energy
than the `torch._grouped_mm` step. Whether a kernel can get there is a question about the card,
not about one kernel, so this script measures, on the same lease, what the expert part of such
a step costs in the cheapest forms there are (every row: NVML total-energy counter over a
>= --window s window of CUDA-graph replays, the streams' launches eager; time by CUDA events):

- `stream bf16` / `stream int4`: one read of the step's weight bytes (bf16; int4 codes plus
  fp16 scales) by a Triton streaming kernel at the grid that read fastest in run 15 (4 programs
  per SM). Any kernel must read these bytes once per step (they do not fit in L2).
- `bmm`: cuBLAS batched GEMMs on the ideal version of the work: every expert gets exactly
  tokens * k / E rows, already gathered (no routing, gather, scatter or combine), the same SwiGLU
  in between.
- `bmm, weights from L2`: the same with one expert's weights standing in for all (stride 0), so
  the weights come from L2 where one expert's weights fit there (not DeepSeek-V3's 88 MB): the
  multiply-accumulate work of these tile shapes with cuBLAS, with little weight traffic from HBM.
- the project's fused kernels (bf16 and int4, the tuned table's configurations) and the grouped
  experts (`grouped_forward`) on the same balanced routing and on uniform random routing, experts
  only (no router), each captured in a graph.

With --layer-json (a `kernels_bench.py` JSON of the same lease with the layer steps at the same
sizes) it also prints bounds: the rest of the captured fused step (routing, dispatch, combine,
copies: the step's energy minus its experts' energy on random routing, a difference of two
measurements) plus a floor for the experts, against the grouped step. The floor for the experts
is the larger of the byte stream and the L2-resident cuBLAS GEMMs: a kernel must do both, and
is assumed to be no cheaper than either alone. These are bounds with stated assumptions
(cuBLAS's efficiency on these tiles; streaming at the best measured rate), labeled estimates.

    PYTHONPATH=$PWD python3 benchmarks/gpu/floor_probe.py --out $OUT/floor.json \
        --layer-json $OUT/k/kernels_bench.json

--device cpu is a smoke test (host clock, 0 J, no streaming kernel, no graphs).
"""

from __future__ import annotations

import argparse
import json
import math
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
    ClockOnly,
    Energy,
    bench_ms,
    bf16_and_int4_stacks,
    expert_flops,
    graphed,
    resolve_shapes,
    routing,
)
from padding_probe import balanced_idx  # noqa: E402

from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import build_dispatch  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.grouped import activation, grouped_forward  # noqa: E402

STREAM_BLOCK = 8192  # bf16 elements per program and loop step: run 15's fastest grid
STREAM_PER_SM = 4
CHUNK = 1 << 30  # elements per streaming launch (the kernel's offsets are 32-bit)


def _stream_fn(buf: torch.Tensor, sms: int) -> Callable[[], None]:
    """One read of buf (bf16 view, length a multiple of STREAM_BLOCK) by `_stream_sum`."""
    from stream_sm_power import _stream_sum

    grid = STREAM_PER_SM * sms
    out = torch.empty(grid, device=buf.device, dtype=torch.float32)
    chunks = [buf[i:i + CHUNK] for i in range(0, buf.numel(), CHUNK)]

    def fn() -> None:
        for c in chunks:
            _stream_sum[(grid,)](c, out, c.numel() // STREAM_BLOCK, BLOCK=STREAM_BLOCK,
                                 num_warps=8)
    return fn


def stream_buffer(nbytes: int, dev: torch.device) -> torch.Tensor:
    """A bf16 buffer of at least nbytes, rounded up to whole stream blocks."""
    n = -(-nbytes // 2 // STREAM_BLOCK) * STREAM_BLOCK
    return torch.empty(n, device=dev, dtype=torch.bfloat16).normal_()


def probe_shape(spec: str, cfg, stacks: tuple, tokens: int, args, nrg, dev: torch.device,
                record: Callable[[dict[str, object]], None]) -> None:
    """Every floor row of one shape at one step size; stacks: its (bf16, int4) experts."""
    e_num, k, h_dim = cfg.num_experts, cfg.top_k, cfg.hidden_size
    m = tokens * k // e_num  # main() checked that tokens x k is a multiple of e_num
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    st, qst = stacks
    w13, w2 = st.dense(torch.bfloat16)
    bytes_bf16, bytes_int4 = st.weight_bytes(), qst.weight_bytes()
    flops = expert_flops(cfg, tokens * k)
    base = {"shape": spec, "tokens": tokens, "rows_per_expert": m,
            "weight_bytes_bf16": bytes_bf16, "weight_bytes_int4": bytes_int4, "flops": flops}

    def measure(variant: str, fn: Callable[[], object], graph: bool = True,
                **extra: object) -> None:
        run = graphed(fn, dev) if graph else fn
        t = bench_ms(run) * 1e3  # us: median by CUDA events (triton's do_bench) on a GPU
        w = nrg.window(run, args.window)
        mj = w["energy_j"] / w["steps"] * 1e3
        row = {**base, "variant": variant, "us": t, "energy_mj": mj,
               "power_w": w["energy_j"] / w["seconds"] if w["seconds"] else 0.0,
               "steps": w["steps"], "window_s": w["seconds"], "source": nrg.source,
               "time_source": "CUDA events" if dev.type == "cuda" else "host clock", **extra}
        record(row)
        print(f"{spec:>14} T={tokens:<5} {variant:44s} {t:9.1f} us {mj:9.2f} mJ "
              f"{row['power_w']:6.0f} W", flush=True)

    if dev.type == "cuda":
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        for name, nbytes in (("stream bf16 weight bytes", bytes_bf16),
                             ("stream int4 weight bytes", bytes_int4)):
            buf = stream_buffer(nbytes, dev)
            measure(name, _stream_fn(buf, sms), graph=False, bytes=buf.numel() * 2)
            del buf
    # cuBLAS on the ideal work: exactly m rows per expert, gathered, no routing or combine
    x3 = torch.randn(e_num, m, h_dim, device=dev, generator=gen).bfloat16()
    w13t, w2t = w13.transpose(1, 2), w2.transpose(1, 2)

    def bmm(a13: torch.Tensor, a2: torch.Tensor) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            hmid = torch.bmm(x3, a13)
            act = activation(hmid.view(-1, hmid.shape[-1]), st.gated).view(e_num, m, -1)
            return torch.bmm(act, a2)
        return fn

    measure("bmm (cuBLAS), balanced, no routing", bmm(w13t, w2t))
    one13, one2 = w13t[:1].expand_as(w13t), w2t[:1].expand_as(w2t)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        bmm(one13, one2)()
        torch.cuda.synchronize()
        extra_mb = (torch.cuda.max_memory_allocated(dev) - before) / 1e6
    else:
        extra_mb = 0.0
    # a copy of the expanded weights would show as ~E x one expert's bytes of extra memory
    measure("bmm (cuBLAS), weights from L2 (one expert)", bmm(one13, one2),
            peak_extra_mb=extra_mb, one_expert_mb=bytes_bf16 / e_num / 1e6)

    x = torch.randn(tokens, h_dim, device=dev, generator=gen).bfloat16()
    w = torch.rand(tokens, k, device=dev, generator=gen) + 0.05
    dispatches = {
        "balanced": build_dispatch(balanced_idx(tokens, e_num, k, dev), w / w.sum(1, True),
                                   e_num, with_rowof=True),
        "random": routing("uniform", tokens, e_num, k, dev, gen),
    }
    with torch.inference_mode():
        for rname, d in dispatches.items():
            n = d.token_idx.numel()
            for wname, stack in (("bf16", st), ("int4", qst)):
                cfg_name = ft.choose_config(stack, n, dev)
                pair = ft.resolve_config(cfg_name, stack.quantized)
                measure(f"fused {wname} experts, {rname} routing",
                        lambda stack=stack, d=d, pair=pair: ft.fused_forward(stack, x, d, pair),
                        config=cfg_name)
            measure(f"grouped bf16 experts, {rname} routing",
                    lambda d=d: grouped_forward(st, x, d))


def _layer_rows(path: Path) -> list[dict[str, object]]:
    """The 'energy' rows of a kernels_bench.py JSON.

    Raises:
        ValueError: the file cannot be read, is not such a JSON, or a row's uj_per_token is
            neither null nor a number (checked here, before any measurement, so that a bad
            file does not end a GPU run in a traceback).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read it ({exc.__class__.__name__}: {exc})") from None
    rows = data.get("energy") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ValueError("not a kernels_bench.py result with an 'energy' list")
    rows = [r for r in rows if isinstance(r, dict)]
    for r in rows:
        v = r.get("uj_per_token")
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"uj_per_token {v!r} is not a number ({r.get('shape')}, "
                             f"{r.get('tokens')} tokens, {r.get('backend')})")
    return rows


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is not a positive number (a missing part, or no counter: 0 J)."""
    return a / b if b > 0 else math.nan


def bounds(rows: list[dict[str, object]], layer: list[dict[str, object]]
           ) -> list[dict[str, object]]:
    """Per (shape, tokens): the grouped step against floors for the fused step (estimates).

    The layer steps are the captured ones ("+step_graph") where the run has both the grouped
    and the fused step captured, else the eager ones: a ratio never sets a captured step
    against an eager one. rest = fused step - fused experts on random routing (the same
    weights' kind); the floor of the experts is max(stream of the weight bytes, cuBLAS GEMMs
    with L2-resident weights), NaN where either was not measured.
    """
    out = []
    keys = sorted({(r["shape"], r["tokens"]) for r in rows},
                  key=lambda k: (str(k[0]), float(k[1])))  # type: ignore[arg-type]
    for shape, tokens in keys:
        mine = {r["variant"]: r["energy_mj"] for r in rows
                if r["shape"] == shape and r["tokens"] == tokens}

        def step_mj(backend: str, mine_shape=shape, mine_tokens=tokens) -> float:
            for r in layer:
                if (r.get("shape") == mine_shape and r.get("tokens") == mine_tokens
                        and r.get("backend") == backend and r.get("uj_per_token")):
                    return float(r["uj_per_token"]) * mine_tokens / 1e3
            return math.nan

        def pair(fused_backend: str) -> tuple[float, str, float, str]:
            """(grouped mJ, its backend, fused mJ, its backend), both captured or both eager."""
            for suffix in ("+step_graph", ""):
                g, f = step_mj("grouped" + suffix), step_mj(fused_backend + suffix)
                if g == g and f == f:
                    return g, "grouped" + suffix, f, fused_backend + suffix
            return math.nan, "", math.nan, ""

        l2 = mine.get("bmm (cuBLAS), weights from L2 (one expert)", math.nan)
        grouped, g_name, _, _ = pair("fused")
        rec: dict[str, object] = {"shape": shape, "tokens": tokens,
                                  "grouped_step_mj": grouped, "grouped_step": g_name,
                                  "source": "estimate: sums and differences of measured "
                                            "energies (floor_probe.py, bounds())"}
        for wname, fused_backend in (("bf16", "fused"), ("int4", "fused_int4")):
            grouped, g_name, step, s_name = pair(fused_backend)
            experts = mine.get(f"fused {wname} experts, random routing", math.nan)
            rest = step - experts
            stream = mine.get(f"stream {wname} weight bytes", math.nan)
            floor = max(stream, l2) if stream == stream and l2 == l2 else math.nan
            cublas = mine.get("bmm (cuBLAS), balanced, no routing", math.nan)
            rec[wname] = {
                "grouped_step": g_name, "grouped_step_mj": grouped,
                "fused_step": s_name, "fused_step_mj": step,
                "ratio_now": _ratio(grouped, step),
                "rest_mj": rest,
                "experts_floor_mj": floor,
                "ratio_ceiling": _ratio(grouped, floor + rest),
                "ratio_ceiling_no_rest": _ratio(grouped, floor),
                **({"ratio_cublas_bmm": _ratio(grouped, cublas + rest)}
                   if wname == "bf16" else {}),
            }
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3")
    ap.add_argument("--tokens", default="512", help="comma-separated step sizes")
    ap.add_argument("--window", type=float, default=2.0, help="seconds per energy window")
    ap.add_argument("--layer-json", default=None,
                    help="kernels_bench.py JSON of the same lease, for the bounds")
    ap.add_argument("--out", default="floor.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cpu: smoke test (0 J, host clock)")
    ap.add_argument("--scale", type=float, default=1.0, help="width scale of every shape")
    args = ap.parse_args(argv)
    try:
        tokens_list = [int(t) for t in args.tokens.split(",") if t]
    except ValueError:
        ap.error(f"--tokens: comma-separated integers, got {args.tokens!r}")
    if not tokens_list or min(tokens_list) < 1:
        ap.error("--tokens: at least one step size, each >= 1")
    if not 0 < args.window < math.inf:
        ap.error("--window: seconds > 0, finite")
    try:
        shapes = resolve_shapes(args.shapes, args.scale)
    except ConfigError as exc:
        ap.error(f"--shapes: {exc}")
    for spec, cfg in shapes:  # before any measurement: no run ends half-way on this
        for t in tokens_list:
            if (t * cfg.top_k) % cfg.num_experts:
                ap.error(f"--tokens: {spec} at {t} tokens: tokens x k = {t * cfg.top_k} is not "
                         f"a multiple of {cfg.num_experts} experts, so no routing is exactly "
                         "balanced")
    layer = None
    if args.layer_json:
        try:
            layer = _layer_rows(Path(args.layer_json))
        except ValueError as exc:
            ap.error(f"--layer-json {args.layer_json}: {exc}")
        if not any((r.get("shape"), r.get("tokens")) == (spec, t)
                   for r in layer for spec, _ in shapes for t in tokens_list):
            ap.error(f"--layer-json {args.layer_json}: no layer step of these shapes at these "
                     "token counts")
    try:
        dev = torch.device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device: {exc}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here (--device cpu is the smoke test)")
    nrg = Energy() if dev.type == "cuda" else ClockOnly()
    out_path = Path(args.out)
    payload: dict[str, object] = {**provenance(), "args": vars(args), "gpu": nrg.info(),
                                  "rows": []}
    rows: list[dict[str, object]] = payload["rows"]  # type: ignore[assignment]

    def record(row: dict[str, object]) -> None:
        rows.append(row)
        write_json(out_path, payload)  # after every row: an interrupted run keeps it

    for spec, cfg in shapes:
        stacks = bf16_and_int4_stacks(cfg, dev, seed=args.seed)  # once per shape
        for tokens in tokens_list:
            probe_shape(spec, cfg, stacks, tokens, args, nrg, dev, record)
        del stacks
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if layer is not None:
        payload["bounds"] = bounds(rows, layer)
        for b in payload["bounds"]:  # type: ignore[union-attr]
            for wname in ("bf16", "int4"):
                r = b[wname]
                print(f"{b['shape']:>14} T={b['tokens']:<5} {wname}: now {r['ratio_now']:.2f}x; "
                      f"ceiling {r['ratio_ceiling']:.2f}x (experts floor "
                      f"{r['experts_floor_mj']:.1f} mJ + rest {r['rest_mj']:.1f} mJ vs grouped "
                      f"{r['grouped_step_mj']:.1f} mJ; {r['ratio_ceiling_no_rest']:.2f}x with "
                      f"no rest)" + (f"; cuBLAS bmm {r['ratio_cublas_bmm']:.2f}x"
                                     if "ratio_cublas_bmm" in r else ""), flush=True)
    write_json(out_path, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
