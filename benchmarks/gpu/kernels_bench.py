"""MoE expert kernels on one GPU: correctness, tuning, and energy per token per backend.

Usage (on the GPU machine, from the project root):

    PYTHONPATH=$PWD python3 benchmarks/gpu/kernels_bench.py --out $OUT

Sections, in this order, per expert shape (OLMoE, Qwen3-30B-A3B, DeepSeek-V3 by default; with
`--device cpu`, a smoke test, the same presets at 1/32 of their widths unless --shapes says
otherwise):

1. check: every backend (bf16 and int4 experts) against an fp32 reference computed from the
   same weights, on fresh random tokens and routings (uniform, Zipf-skewed with many empty
   experts, all tokens on the same k experts, capacity drops, one token), with the caching
   allocator poisoned with NaN before every run; relative error ||out - ref|| / ||ref||.
2. tune: each `fused` launch configuration that fits the step size, timed with CUDA events
   (median of triton.testing.do_bench), its error checked; the fastest is recorded per
   (shape, weights, assignments) and used by section 3. `grouped` and `loop` are timed too.
3. energy: one SimpleMoELayer step (router + dispatch + experts + combine) repeated for a
   window of >= --window seconds, read from NVML's total-energy counter (mJ, updates about
   every 100 ms: the window starts and ends on a counter update). Energy per token, time per
   step and mean power per (shape, tokens per step, backend).

Writes <out>/kernels_bench.json (everything, with provenance) and <out>/tuned_configs.json; the
last lines printed are a table.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import math
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _meta import provenance, write_json  # noqa: E402

from wattmoe.cost_model.work import int4_weight_bytes  # noqa: E402
from wattmoe.errors import ConfigError  # noqa: E402
from wattmoe.moe import (  # noqa: E402
    MoEConfig,
    SimpleMoELayer,
    build_dispatch,
    dequantize_int4,
    resolve_shape,
)
from wattmoe.moe import fused_route as fr  # noqa: E402
from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.autoselect import AUTO  # noqa: E402
from wattmoe.moe.backends import get_backend  # noqa: E402
from wattmoe.moe.dispatch import Dispatch  # noqa: E402
from wattmoe.moe.graphs import GraphedLayer, _warm_and_capture  # noqa: E402
from wattmoe.moe.layer import INT4_LAYOUT_POLICIES  # noqa: E402
from wattmoe.moe.quant import int4_group_size  # noqa: E402
from wattmoe.moe.stacked import existing_stack, stacked_experts  # noqa: E402

SHAPES = ["olmoe-1b-7b", "qwen3-30b-a3b", "deepseek-v3"]
# widths of SHAPES off the GPU (smoke test): DeepSeek-V3 becomes H=256, F=64 with its 256
# experts, top-8 (at full size its experts alone are 22.5 GB of bf16 weights, twice over)
CPU_SCALE = 1 / 32
TOL = 1e-2  # bf16 operands: relative error between 1e-3 and 1e-2 (METHOD.md)


def default_shapes(device: torch.device) -> str:
    """The --shapes of a run that names none: SHAPES at full size on a GPU; on any other device
    (a smoke test, `--device cpu`) the same presets at CPU_SCALE of their widths, which keeps
    the numbers of experts and top-k and runs on a CPU in a few minutes."""
    if device.type == "cuda":
        return ",".join(SHAPES)
    return ",".join(f"{name}@{CPU_SCALE:g}" for name in SHAPES)


def shape_config(spec: str, scale: float = 1.0) -> MoEConfig:
    """The config of one shape spec, its widths also multiplied by `scale`.

    A spec is what `resolve_shape` reads, as in the sibling benchmarks: a preset
    ('olmoe-1b-7b'), a preset at a width scale ('olmoe-1b-7b@0.25') or a shape key
    ('h2048_f1408_swiglu_e60_k4'). step_profile.py reads its --shape with this function too.

    Raises:
        ConfigError: unknown preset, unreadable shape key, or a scale that is not a positive
            number or overflows a width (the message starts with the spec).
    """
    try:
        cfg = resolve_shape(spec)
        return cfg if scale == 1 else cfg.scaled(scale)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if repr(spec) in msg else f"shape {spec!r}: {msg}") from None
    except OverflowError:  # float('inf') or a width beyond it: round() cannot make it an int
        raise ConfigError(f"shape {spec!r}: scale too large") from None


def resolve_shapes(specs: str, scale: float = 1.0) -> list[tuple[str, MoEConfig]]:
    """(spec, config) of each comma-separated spec (see `shape_config`), empty ones skipped.

    The spec as written is the shape's label in the results and the summary table.

    Raises:
        ConfigError: a spec `shape_config` refuses, or no spec at all.
    """
    shapes = [(spec, shape_config(spec, scale))
              for spec in (s.strip() for s in specs.split(",")) if spec]
    if not shapes:
        raise ConfigError(f"no shape in {specs!r}")
    return shapes


def log(msg: str) -> None:
    print(msg, flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def graphed(fn: Callable[[], object], dev: torch.device) -> Callable[[], object]:
    """fn captured in a CUDA graph (warmed up on a side stream, as the graph backends do); fn
    itself off CUDA."""
    if dev.type != "cuda":
        return fn
    graph, _ = _warm_and_capture(fn, dev, None)
    return graph.replay


def bench_ms(fn: Callable[[], object]) -> float:
    """Median time of fn in ms: triton.testing.do_bench (CUDA events) on a GPU, else a timer."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=40, return_mode="median")
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[1]


# ---------------------------------------------------------------------------------------------
# Reference and routings


def _w32(lin: torch.nn.Module) -> torch.Tensor:
    if hasattr(lin, "packed"):  # the half-split codes, in whichever layout they are stored
        return dequantize_int4(lin.codes(), lin.scales, torch.float32)
    return lin.weight.float()


def reference(experts, x: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """fp32 sum_k w_k * expert_k(x) from the same (dequantized) weights, one expert at a time."""
    xf = x.float()
    out = torch.zeros_like(xf)
    bounds = d.offsets.tolist()
    for e, ex in enumerate(experts):
        lo, hi = bounds[e], bounds[e + 1]
        if hi == lo:
            continue
        idx = d.token_idx[lo:hi]
        xs = xf[idx]
        if ex.gate_proj is not None:
            a = F.silu(xs @ _w32(ex.gate_proj).T) * (xs @ _w32(ex.up_proj).T)
        else:
            a = F.relu(xs @ _w32(ex.up_proj).T)
        out.index_add_(0, idx, (a @ _w32(ex.down_proj).T) * d.weight[lo:hi, None].float())
    return out


def layer_reference(layer: SimpleMoELayer, x: torch.Tensor, d: Dispatch) -> torch.Tensor:
    """fp32 reference of a whole layer step: routed experts plus the shared expert, if any."""
    out = reference(layer.experts, x, d)
    sh = layer.shared_expert
    if sh is not None:
        xf = x.float()
        a = F.silu(xf @ _w32(sh.gate_proj).T) * (xf @ _w32(sh.up_proj).T) \
            if sh.gate_proj is not None else F.relu(xf @ _w32(sh.up_proj).T)
        out += a @ _w32(sh.down_proj).T
    return out


def routing(kind: str, tokens: int, num_experts: int, top_k: int, dev: torch.device,
            gen: torch.Generator) -> Dispatch:
    if kind in ("uniform", "capacity", "single"):
        idx = torch.rand(tokens, num_experts, generator=gen, device=dev).topk(top_k, -1).indices
    elif kind == "skewed":  # Zipf(1.5) over a random order of experts
        p = 1.0 / torch.arange(1, num_experts + 1, device=dev, dtype=torch.float32) ** 1.5
        p = p[torch.randperm(num_experts, generator=gen, device=dev)]
        idx = torch.multinomial(p.expand(tokens, -1).contiguous(), top_k, generator=gen)
    elif kind == "hot":  # every token on the same k experts
        hot = torch.randperm(num_experts, generator=gen, device=dev)[:top_k]
        idx = hot.expand(tokens, -1).contiguous()
    else:
        raise ValueError(kind)
    w = torch.rand(tokens, top_k, generator=gen, device=dev) + 0.05
    w = w / w.sum(-1, keepdim=True)
    cf = 0.5 if kind == "capacity" else None
    return build_dispatch(idx, w, num_experts, cf, with_rowof=True)  # as the layer routes


def launch_times(fn: Callable[[], object], reps: int = 10) -> tuple[float, float] | None:
    """Median CUPTI times (ms) of the gate/up and the down launch of `fn` (one fused call),
    or None where there is no GPU or the launches cannot be told apart."""
    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        sync()
    ks = sorted((e for e in prof.events()
                 if e.device_type.name == "CUDA" and e.name.startswith("moe_gemm")),
                key=lambda e: e.time_range.start)
    if len(ks) != 2 * reps:
        return None
    med = [sorted(e.time_range.elapsed_us() for e in ks[i::2])[reps // 2] / 1e3 for i in (0, 1)]
    return med[0], med[1]


def bf16_and_int4_stacks(cfg, dev: torch.device, seed: int = 0):
    """The experts of `cfg` on `dev`, stacked: bf16 weights, and int4 of the same weights (group
    size of `int4_group_size`); for the kernel probes (kernel_diag.py, padding_probe.py)."""
    layer = SimpleMoELayer(cfg, dtype="bf16", device=dev, seed=seed).eval()
    qlayer = SimpleMoELayer(cfg, dtype="bf16", device=dev, seed=seed).eval()
    qlayer.quantize(int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
    return stacked_experts(layer.experts), stacked_experts(qlayer.experts)


def split_us(split: tuple[float, float] | None) -> str:
    return f"({split[0] * 1e3:.0f}+{split[1] * 1e3:.0f})" if split else ""


def topk_violations(layer: SimpleMoELayer, x: torch.Tensor, topk_idx: torch.Tensor) -> int:
    """Tokens whose chosen experts are not a top-k of the router's logits (duplicates, or an
    unchosen expert scoring strictly higher than a chosen one)."""
    logits = torch.nn.functional.linear(x, layer.router.gate.weight).float()
    chosen = logits.gather(1, topk_idx)
    mask = torch.ones_like(logits, dtype=torch.bool).scatter_(1, topk_idx, False)
    best_other = logits.masked_fill(~mask, float("-inf")).amax(1)
    dup = (topk_idx.sort(1).values.diff(dim=1) == 0).any(1)
    return int(((chosen.amin(1) < best_other) | dup).sum())


def poison(dev: torch.device, sizes: list[int], pattern: int = 0xFF) -> None:
    """Fills blocks of the caching allocator with a byte pattern (0xFF: NaN in every float
    type) and frees them again."""
    blocks = [torch.empty(n, dtype=torch.uint8, device=dev).fill_(pattern) for n in sizes]
    del blocks


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------------------------------------
# NVML energy windows


class ClockOnly:
    """Stands in for NVML on a machine without a GPU (smoke tests): no energy, 0 J."""

    source = "not measured (no GPU)"

    def info(self) -> dict[str, object]:
        return {}

    def window(self, step: Callable[[], object], seconds: float) -> dict[str, float]:
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds or n == 0:
            step()
            n += 1
        return {"energy_j": 0.0, "seconds": time.perf_counter() - t0, "steps": n}


class Energy:
    source = "measured (NVML total energy counter)"

    def __init__(self, index: int = 0) -> None:
        import pynvml

        self.nv = pynvml
        pynvml.nvmlInit()
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)

    def mj(self) -> int:
        return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)

    def info(self) -> dict[str, object]:
        nv, h = self.nv, self.h
        out: dict[str, object] = {}
        for name, fn in [
            ("name", lambda: nv.nvmlDeviceGetName(h)),
            ("driver", nv.nvmlSystemGetDriverVersion),
            ("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
            ("temperature_c", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            ("mem_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000),
        ]:
            try:
                v = fn()
                out[name] = v.decode() if isinstance(v, bytes) else v
            except Exception as exc:
                out[name] = f"n/a ({exc.__class__.__name__})"
        return out

    def wait_tick(self, step: Callable[[], object] | None = None) -> tuple[int, float]:
        """Runs `step` (or spins) until the counter changes; returns (mJ, perf_counter)."""
        e0 = self.mj()
        while True:
            if step is not None:
                step()
                sync()
            e = self.mj()
            if e != e0:
                return e, time.perf_counter()

    def window(self, step: Callable[[], object], seconds: float, warm_s: float = 0.15
               ) -> dict[str, float]:
        t = time.perf_counter()
        while time.perf_counter() - t < warm_s:
            step()
        sync()
        e0, t0 = self.wait_tick(step)  # stepping, so the window starts under load
        n = 0
        while True:
            step()
            n += 1
            if time.perf_counter() - t0 >= seconds:
                sync()
                if time.perf_counter() - t0 >= seconds:
                    break
        # keep stepping until the counter ticks, so both ends sit on counter updates
        e_last = self.mj()
        while True:
            step()
            n += 1
            sync()
            e1 = self.mj()
            if e1 != e_last:
                t1 = time.perf_counter()
                break
        return {"energy_j": (e1 - e0) / 1000, "seconds": t1 - t0, "steps": n}


def alternating_windows(nrg, steps: dict[str, Callable[[], object]], seconds: float,
                        rounds: int, on_error: Callable[[str, Exception], None] | None = None,
                        ) -> dict[str, list[dict[str, float]]]:
    """`rounds` energy windows of `seconds` on each of `steps` (label -> step), every other
    round in reverse order, so that a drift of the card's temperature or clocks during the
    measurement falls on every step alike. A step whose window raises is handed to `on_error`
    and dropped from the result and the later rounds (without `on_error` the error
    propagates)."""
    windows: dict[str, list[dict[str, float]]] = {label: [] for label in steps}
    for r in range(rounds):
        for label in (list(windows) if r % 2 == 0 else list(windows)[::-1]):
            try:
                windows[label].append(nrg.window(steps[label], seconds))
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(label, exc)
                del windows[label]
    return windows


def window_mj(windows: list[dict[str, float]]) -> list[float]:
    """mJ per step of each energy window."""
    return [w["energy_j"] / w["steps"] * 1e3 for w in windows]


# ---------------------------------------------------------------------------------------------


def expert_flops(cfg: MoEConfig, rows: int) -> float:
    """Multiply-adds x 2 of the expert GEMMs for `rows` assignments (3 matrices for SwiGLU
    experts, 2 for ReLU ones)."""
    mats = 3 if cfg.expert_form == "swiglu" else 2
    return 2.0 * rows * mats * cfg.hidden_size * cfg.expert_inner_size


def floors(cfg, tokens: int, bytes_per_weight: float, peak_tflops: float, peak_tbs: float
           ) -> dict[str, float]:
    """FLOPs and fewest bytes of one step's experts; their times at the measured ceilings."""
    h, f, e, k = cfg.hidden_size, cfg.expert_inner_size, cfg.num_experts, cfg.top_k
    flops = expert_flops(cfg, tokens * k)
    mats = 3 if cfg.expert_form == "swiglu" else 2
    touched = e * (1 - (1 - k / e) ** tokens)  # expected experts with >= 1 token
    wbytes = touched * mats * h * f * bytes_per_weight
    act_bytes = 2 * tokens * h * 2  # x read once, out written once (bf16)
    nbytes = wbytes + act_bytes
    return {"flops": flops, "bytes": nbytes, "experts_touched": touched,
            "t_flops_s": flops / (peak_tflops * 1e12), "t_bytes_s": nbytes / (peak_tbs * 1e12)}


def ceilings(dev: torch.device) -> dict[str, float]:
    a = torch.empty(2 << 30, dtype=torch.uint8, device=dev).fill_(1)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    for _ in range(10):
        b.copy_(a)
    ev[1].record()
    torch.cuda.synchronize()
    tbs = 2 * a.numel() * 10 / (ev[0].elapsed_time(ev[1]) / 1e3) / 1e12
    del a, b
    m = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        m @ m
    torch.cuda.synchronize()
    ev[0].record()
    for _ in range(10):
        m @ m
    ev[1].record()
    torch.cuda.synchronize()
    tf = 2 * 8192**3 * 10 / (ev[0].elapsed_time(ev[1]) / 1e3) / 1e12
    return {"copy_tb_s": tbs, "bf16_gemm_tflop_s": tf}


def _gpu_ms(cand: str, parts: dict[str, tuple[float, float]]) -> float | None:
    """GPU time in ms (gate/up + down launch) of a candidate or an "A/B" pair, from the CUPTI
    split of single candidates; None where a part was not measured."""
    gu, _, dn = cand.partition("/")
    dn = dn or gu
    if gu not in parts or dn not in parts:
        return None
    return parts[gu][0] + parts[dn][1]


def tune_candidates(num_assign: int, num_experts: int, int4: bool = False) -> list[str]:
    """Candidates worth timing for this many rows per expert (both kernels for bf16), each
    followed, where the table has them, by its TMA variant ("<name>d") for bf16, and for
    int4 by its fragment-word variant ("<name>f"), with scale pairs ("<name>fp") and in tile
    order ("<name>fpx"): every entry of the shipped H200 table is among them
    (tests/moe/test_bench_args.py). int4 TMA tiles are named as bases where they won
    ("w64t64k32dr16"); as a variant of every base they never did."""
    table = ft.INT4_CANDIDATES if int4 else ft.CANDIDATES
    suffixes = ("", "f", "fp", "fpx") if int4 else ("", "d")
    return [n + v for n in _tune_base_names(num_assign, num_experts, int4) if n in table
            for v in suffixes if n + v in table]


def _tune_base_names(num_assign: int, num_experts: int, int4: bool) -> list[str]:
    m = num_assign / num_experts
    if int4:  # with the tails and 128/256-row tiles of the shipped 512-token entries
        if m <= 16:
            names = ["w64t16", "w64t16k128", "w64t32", "w64t16r16", "w128t16r16", "w128t32s3",
                     "w256t32s3w8"]
        elif m <= 80:
            names = ["w64t32", "w64t64", "w128t64", "w64t64k128", "w64t32s6", "w64t128",
                     "w64t64k32", "w64t128k32", "w64t32k32", "w64t64k32r16", "w64t64k32dr16",
                     "w64t64k32r32", "w64t64k32dr32", "w64t32r16", "w64t64r16", "w128t32s3",
                     "w256t32s3w8"]
        elif m <= 300:
            names = ["w64t64", "w128t64", "w128t128", "w64t128", "w64t64k32", "w64t128k32",
                     "w64t64r16"]
        else:
            names = ["w128t64", "w128t128", "w64t128", "w64t128k32"]
        return names
    if m <= 16:
        names = ["m16", "m32", "w64t16", "w64t32"]
    elif m <= 80:
        names = ["m64", "m64n64", "m64s6", "w64t64", "w64t64s6", "w128t64", "w64t128",
                 "w64t64r16", "w64t64dr16", "w64t64r32", "w64t64dr32", "w128t64s3",
                 "w128t64dr16", "w128t64dr32", "w128t64s3dr16", "w128t64s3dr32", "w64t64s3",
                 "w64t64s3dr16", "w64t64s3dr32"]
    elif m <= 300:
        names = ["m64", "m64n128", "m128", "w128t64", "w128t128", "w64t128", "w64t128dr16",
                 "w64t128dr32", "w128t128dr16", "w128t128dr32", "m128n256"]
    else:
        names = ["m64n128", "m128", "m128n256", "w128t128", "m64n64"]
    return names


# energy variants: label -> (weights, backend, whole layer step captured as a CUDA graph)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "loop": ("bf16", "loop", False),
    "grouped": ("bf16", "grouped", False),
    "fused": ("bf16", "fused", False),
    "fused_int4": ("int4", "fused", False),
    "fused_graph": ("bf16", "fused_graph", False),  # experts only captured (backend level)
    "grouped+step_graph": ("bf16", "grouped", True),
    "fused+step_graph": ("bf16", "fused", True),
    "fused+torch_route": ("bf16", "fused", False),  # fused experts, routing by torch kernels
    # fused routing with the router's gate GEMM in torch (cuBLAS + cast), not in route_topk
    "fused+torch_gate+step_graph": ("bf16", "fused", True),
    "fused_int4+step_graph": ("int4", "fused", True),
    # the default backend: what `auto` chose for this size (its calibration runs in the
    # window's warm-up; `auto_chose` in each row: the steps each backend ran), with the
    # layer's default step-graph policy (its fused steps of <= 512 tokens captured whole:
    # `whole_step_replays` in each row) or with that policy off
    "auto": ("bf16", "auto", False),
    "auto_int4": ("int4", "auto", False),
    "auto_eager": ("bf16", "auto", False),
    "auto_int4_eager": ("int4", "auto", False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: a bad value ends the run here with one usage error.

    --shapes, when not given, is filled in from --device (`default_shapes`).
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None,
                    help="comma-separated shape specs: presets (olmoe-1b-7b), presets at a "
                         "width scale (olmoe-1b-7b@0.25) or shape keys "
                         f"(h2048_f1408_swiglu_e60_k4); default: {','.join(SHAPES)} on cuda, "
                         f"the same at @{CPU_SCALE:g} on any other device")
    ap.add_argument("--tokens", default="64,512,4096,16384")
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--variants", default="loop,grouped,fused,fused_int4",
                    help=f"energy variants at every size, of {', '.join(VARIANTS)}")
    ap.add_argument("--graph-variants", default="fused_graph",
                    help="energy variants run only at --graph-tokens")
    ap.add_argument("--graph-tokens", default="64", help="step sizes of --graph-variants")
    ap.add_argument("--graph-max-experts", type=int, default=1 << 30,
                    help="shapes with more experts run --graph-variants at the smallest size only")
    ap.add_argument("--sections", default="check,tune,energy",
                    help="of check, tune, energy; run in this order")
    ap.add_argument("--tune-weights", default="bf16,int4")
    ap.add_argument("--tune-tokens", default="", help="default: --tokens")
    ap.add_argument("--tune-by", choices=("eager", "gpu", "energy"), default="eager",
                    help="pick the candidate with the shortest eager step (host launch cost "
                         "included), the shortest GPU time of its two launches (CUPTI; what "
                         "a captured step runs), or the fewest joules per captured experts "
                         "step (NVML counter) among the --tune-energy-top fastest by GPU time")
    ap.add_argument("--tune-energy-top", type=int, default=4,
                    help="--tune-by energy: how many of the fastest candidates (GPU time, "
                         "the composite pair included) get an energy window each")
    ap.add_argument("--tune-window", type=float, default=1.0,
                    help="--tune-by energy: seconds per candidate's energy window")
    ap.add_argument("--tune-energy-rounds", type=int, default=2,
                    help="--tune-by energy: windows per candidate, in alternating order")
    ap.add_argument("--tune-candidates", default="",
                    help="candidate names or 'A/B' pairs (e.g. a shipped entry, to time beside "
                    "them) to time at every size (default: by rows per expert)")
    ap.add_argument("--check-cases", default="uniform:64,uniform:4096,skewed:512,skewed:4096,"
                    "hot:512,capacity:512,single:1")
    ap.add_argument("--check-backends", default="loop,grouped,fused,fused_graph,grouped_graph,auto")
    ap.add_argument("--check-step-graph", default="",
                    help="backends whose whole-step graph (GraphedLayer) is checked at 64, 512")
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds: stop at the first check, tune candidate, energy window or "
                         "size started after this long, saving what was measured (a run under "
                         "`timeout` may be killed inside a CUDA call before it can save)")
    ap.add_argument("--out", default="results/h200/kernels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda",
                    help="'cpu' (any device but cuda) = smoke test: by default the shapes at "
                         f"1/{1 / CPU_SCALE:g} of their widths (see --shapes), timed on the host "
                         "clock, no energy (0 J: no NVML) and no measured ceilings")
    ap.add_argument("--int4-group", type=int, default=None,
                    help="int4 group size of every shape (default: int4_group_size's, the "
                         "largest group whose halves of a row are whole where one exists, "
                         "else the largest power of two <= 128 dividing both widths)")
    ap.add_argument("--int4-layout", choices=INT4_LAYOUT_POLICIES, default="rows",
                    help="how the int4 layers store their codes (SimpleMoELayer."
                         "set_int4_layout): rows (half-split, the fused kernels keep a copy in "
                         "their order), tiles (their tile order, read in place) or auto (the "
                         "layer's default: tiles from the first fused step on sm_90)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="width scale of every shape, on top of a spec's own @SCALE")
    args = ap.parse_args(argv)
    try:
        dev = torch.device(args.device)
    except RuntimeError as exc:
        ap.error(f"--device: {exc}")
    if not 0 < args.scale < math.inf:
        ap.error(f"--scale: a positive number, got {args.scale}")
    if args.tune_energy_top < 1:
        ap.error(f"--tune-energy-top: at least 1, got {args.tune_energy_top}")
    if args.tune_energy_rounds < 1:
        ap.error(f"--tune-energy-rounds: at least 1, got {args.tune_energy_rounds}")
    if not 0 < args.tune_window < math.inf:
        ap.error(f"--tune-window: seconds > 0, finite, got {args.tune_window}")
    if args.shapes is None:
        args.shapes = default_shapes(dev)
    try:
        shapes = resolve_shapes(args.shapes, args.scale)
    except ConfigError as exc:
        ap.error(f"--shapes: {exc}")
    g = args.int4_group
    if g is not None:
        bad_g = [s for s, c in shapes if g < 2 or c.hidden_size % g or c.expert_inner_size % g]
        if g < 2 or g & (g - 1) or bad_g:
            ap.error(f"--int4-group: a power of two >= 2 dividing every shape's widths, got {g}"
                     + (f" (not {', '.join(bad_g)})" if bad_g and g >= 2 else ""))
    bad = [x for x in args.sections.split(",") if x not in ("check", "tune", "energy")]
    bad += [x for x in args.tune_weights.split(",") if x not in ("bf16", "int4")]
    if bad:
        ap.error(f"--sections / --tune-weights: unknown {', '.join(bad)}")
    names = [c for c in args.tune_candidates.split(",") if c]
    unknown = [c for c in names if ft.resolve_config(c, False) is None
               and ft.resolve_config(c, True) is None]
    if unknown:
        ap.error(f"--tune-candidates: unknown candidate(s) {', '.join(unknown)}")
    if names and "tune" in args.sections.split(","):
        for wname in args.tune_weights.split(","):
            if not any(ft.resolve_config(c, wname == "int4") for c in names):
                ap.error(f"--tune-candidates: none is a {wname} candidate (drop {wname} from "
                         "--tune-weights or name one)")
    return args


class Bench:
    """One run: the sections over the shapes, everything recorded in `payload`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shapes = resolve_shapes(args.shapes, args.scale)
        self.out_dir = Path(args.out)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = [int(t) for t in args.tokens.split(",")]
        self.dev = torch.device(args.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        self.gen = torch.Generator(device=self.dev).manual_seed(args.seed)
        self.nrg = Energy() if self.dev.type == "cuda" else ClockOnly()
        import triton

        meta = provenance()
        if os.environ.get("WATTMOE_COMMIT"):
            meta["commit"] = os.environ["WATTMOE_COMMIT"]
        meta["machine"].update(  # type: ignore[union-attr]
            {"gpu_nvml": self.nrg.info(), "triton": triton.__version__,
             "node": platform.node()})
        self.commit = meta["commit"]
        self.payload: dict[str, Any] = {**meta, "args": vars(args), "check": [], "tune": [],
                                        "energy": [], "errors": []}
        self.t_start = time.perf_counter()
        self.ceil = (ceilings(self.dev) if self.dev.type == "cuda"
                     else {"copy_tb_s": 0.1, "bf16_gemm_tflop_s": 1.0})
        self.payload["ceilings"] = self.ceil
        log(f"ceilings: copy {self.ceil['copy_tb_s']:.2f} TB/s, bf16 GEMM "
            f"{self.ceil['bf16_gemm_tflop_s']:.0f} TFLOP/s; gpu {meta['machine']['gpu_nvml']}")  # type: ignore[index]
        # start from the committed table (kernel_configs/<device>.json); tuning overrides it
        self.tuned: dict[str, dict[str, str]] = copy.deepcopy(ft.load_tuned(self.dev))
        self.payload["tuned_table_at_start"] = copy.deepcopy(self.tuned)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def check_deadline(self) -> None:
        """Ends the run (`_Deadline`, caught in `run`) once --deadline has passed."""
        if self.args.deadline is not None and self.elapsed() > self.args.deadline:
            raise _Deadline(f"--deadline {self.args.deadline:g} s passed")

    def error(self, where: str, exc: BaseException) -> None:
        self.payload["errors"].append({"where": where, "error": traceback.format_exc()})
        log(f"   ERROR {where}: {exc!r}")

    def save(self) -> None:
        self.payload["wall_s"] = self.elapsed()
        self.payload["auto_decisions"] = AUTO.records()
        write_json(self.out_dir / "kernels_bench.json", self.payload)
        write_json(self.out_dir / "tuned_configs.json",
                   ft.config_table_payload(self.tuned, device=ft.device_key(self.dev),
                                           commit=self.commit, source="kernels_bench.py tune"))

    def randn(self, tokens: int, width: int) -> torch.Tensor:
        return torch.randn(tokens, width, generator=self.gen, device=self.dev).bfloat16()

    # -- sections ------------------------------------------------------------------------------

    def check(self, shape: str, cfg, variants: dict[str, SimpleMoELayer]) -> None:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in self.args.check_cases.split(",")]
        bf16_names = self.args.check_backends.split(",")
        for kind, tokens in cases:
            self.check_deadline()
            d = routing(kind, tokens, cfg.num_experts, cfg.top_k, self.dev, self.gen)
            x = self.randn(tokens, cfg.hidden_size)
            for wname, lay in variants.items():
                with torch.inference_mode():
                    ref = reference(lay.experts, x, d)
                names = bf16_names if wname == "bf16" else [
                    n for n in bf16_names if n not in ("auto", "grouped_graph")]
                for name in names:
                    try:
                        errs = []
                        for _ in range(2):  # twice: a race shows as a moving error
                            poison(self.dev, [64 << 20, 8 << 20, 1 << 20, 256 << 10])
                            with torch.inference_mode():
                                y = get_backend(name)(lay.experts, x, d)
                            sync()
                            errs.append(rel_err(y, ref))
                        err = max(errs) if all(v == v for v in errs) else float("nan")
                    except Exception as exc:
                        err = float("nan")
                        self.error(f"check {shape} {kind} {tokens} {wname} {name}", exc)
                    self.record_check(shape, kind, tokens, d, wname, name, err)
        for name in filter(None, self.args.check_step_graph.split(",")):
            for wname, lay in variants.items():
                lay.set_backend(name)
                whole = GraphedLayer(lay)
                for mode, step in (("layer", lay), ("step_graph", whole)):
                    for tokens in (64, 512):
                        for _ in range(2):  # the second input replays the captured graph
                            x = self.randn(tokens, cfg.hidden_size)
                            try:
                                poison(self.dev, [64 << 20, 8 << 20, 1 << 20, 256 << 10])
                                with torch.inference_mode():
                                    o = step(x)
                                    # the step's own routing (fused routing breaks exact ties
                                    # its own way); checked to be a valid top-k separately
                                    r = o.routing
                                    d = build_dispatch(r.topk_idx, r.topk_weight,
                                                       cfg.num_experts)
                                    err = rel_err(o.hidden_states, layer_reference(lay, x, d))
                                    bad = topk_violations(lay, x, r.topk_idx)
                            except Exception as exc:
                                err, d, bad = float("nan"), None, -1
                                self.error(f"check {mode} {shape} {tokens} {wname} {name}", exc)
                            self.record_check(shape, "router", tokens, d, wname,
                                              f"{name}+{mode}", err if bad == 0 else float("nan"))
                            if bad:
                                log(f"   FAIL {name}+{mode}: {bad} tokens with an invalid top-k")
                self.payload.setdefault("step_graph_counts", []).append(
                    {"shape": shape, "weights": wname, "backend": name,
                     "captures": whole.captures, "replays": whole.replays})
                lay.set_backend("loop")
        rows = [r for r in self.payload["check"] if r["shape"] == shape]
        worst = max((r["rel_err"] for r in rows if r["rel_err"] == r["rel_err"]),
                    default=float("nan"))
        log(f"   check: {sum(not r['ok'] for r in rows)} failures of {len(rows)}, worst rel err "
            f"{worst:.2e}  (t={self.elapsed():.0f}s)")
        self.save()

    def record_check(self, shape: str, kind: str, tokens: int, d: Dispatch | None, wname: str,
                     name: str, err: float) -> None:
        ok = err == err and err <= TOL
        self.payload["check"].append({
            "shape": shape, "routing": kind, "tokens": tokens,
            "assignments": d.token_idx.numel() if d is not None else None,
            "empty_experts": int((d.counts == 0).sum()) if d is not None else None,
            "max_expert_rows": int(d.counts.max()) if d is not None else None,
            "weights": wname, "backend": name, "rel_err": err, "ok": ok})
        if not ok:
            log(f"   FAIL {shape} {kind} T={tokens} {wname} {name}: {err:.3g}")

    def tune(self, shape: str, cfg, variants: dict[str, SimpleMoELayer]) -> None:
        tokens_list = ([int(t) for t in self.args.tune_tokens.split(",")]
                       if self.args.tune_tokens else self.tokens)
        for tokens in tokens_list:
            d = routing("uniform", tokens, cfg.num_experts, cfg.top_k, self.dev, self.gen)
            x = self.randn(tokens, cfg.hidden_size)
            n_assign = d.token_idx.numel()
            for wname in self.args.tune_weights.split(","):
                lay = variants[wname]
                stk = stacked_experts(lay.experts)
                with torch.inference_mode():
                    ref = reference(lay.experts, x, d)
                times: dict[str, float] = {}
                parts: dict[str, tuple[float, float]] = {}
                cands = tune_candidates(n_assign, cfg.num_experts, wname == "int4")
                if self.args.tune_candidates:
                    # parse_args made sure each --tune-weights kind has one
                    cands = [c for c in self.args.tune_candidates.split(",")
                             if ft.resolve_config(c, wname == "int4")]
                for cand in [*cands, "composite"]:
                    self.check_deadline()
                    if cand == "composite":  # best gate/up launch with the best down launch
                        if len(parts) < 2:
                            break
                        gu = min(parts, key=lambda c: parts[c][0])
                        dn = min(parts, key=lambda c: parts[c][1])
                        if gu == dn:
                            break
                        cand = f"{gu}/{dn}"
                    try:
                        with torch.inference_mode():
                            poison(self.dev, [64 << 20, 8 << 20])
                            err = rel_err(ft.fused_forward(stk, x, d, cand), ref)
                            ms = bench_ms(lambda c=cand, s=stk, x=x, d=d:
                                          ft.fused_forward(s, x, d, c))
                            split = launch_times(lambda c=cand, s=stk, x=x, d=d:
                                                 ft.fused_forward(s, x, d, c))
                    except Exception as exc:
                        self.error(f"tune {shape} {tokens} {wname} {cand}", exc)
                        continue
                    rec = {"shape": shape, "tokens": tokens, "assignments": n_assign,
                           "weights": wname, "impl": f"fused:{cand}", "ms": ms,
                           "gate_up_ms": split[0] if split else None,
                           "down_ms": split[1] if split else None,
                           "rel_err": err, "ok": err == err and err <= TOL}
                    self.payload["tune"].append(rec)
                    self.save()  # each candidate: a DeepSeek-V3 candidate can take a minute
                    if rec["ok"]:
                        times[cand] = ms
                        if split and "/" not in cand:
                            parts[cand] = split
                    else:
                        log(f"   FAIL tune {cand} {wname} T={tokens}: {err:.3g}")
                g = float("nan")
                try:
                    with torch.inference_mode():
                        g = bench_ms(lambda e=lay.experts, x=x, d=d:
                                     get_backend("grouped")(e, x, d))
                    self.payload["tune"].append({"shape": shape, "tokens": tokens,
                                                 "assignments": n_assign, "weights": wname,
                                                 "impl": "grouped", "ms": g})
                except Exception as exc:
                    self.error(f"tune {shape} {tokens} {wname} grouped", exc)
                if times:
                    best = min(times, key=times.__getitem__)
                    gpu = {c: _gpu_ms(c, parts) for c in times}
                    gpu = {c: t for c, t in gpu.items() if t is not None}
                    if self.args.tune_by in ("gpu", "energy") and gpu:
                        best = min(gpu, key=gpu.__getitem__)
                    elif self.args.tune_by in ("gpu", "energy"):
                        log(f"   --tune-by {self.args.tune_by}: no CUPTI split at T={tokens} "
                            f"{wname}; picked by eager time")
                    if self.args.tune_by == "energy":
                        best = self._tune_energy(stk, x, d, gpu or times, best, shape, tokens,
                                                 wname)
                    self.tuned.setdefault(ft.shape_key(stk), {})[str(n_assign)] = best
                    log(f"   tune T={tokens:5d} {wname}: " + " ".join(
                        f"{c}={t * 1e3:.0f}us" + split_us(parts.get(c)) for c, t in times.items())
                        + f" -> {best}; grouped {g * 1e3:.0f}us")
                self.save()  # each size's tuning survives a run stopped at a later one
        ft.set_tuned(self.dev, self.tuned)
        self.save()

    def _tune_energy(self, stk, x: torch.Tensor, d: Dispatch, times: dict[str, float],
                     best: str, shape: str, tokens: int, wname: str) -> str:
        """The candidate, of the --tune-energy-top fastest, whose experts step (captured in a
        CUDA graph where there is one) spends the fewest joules: the mean of --tune-energy-rounds
        NVML windows each, the rounds in alternating order (fastest first, then last first) so
        that a drift of the card's temperature or clocks during tuning falls on every
        candidate alike; `best` where no window measured anything. The windows' energies go
        into the candidates' tune records."""
        fastest = sorted(times, key=times.__getitem__)[:self.args.tune_energy_top]

        def failed(cand: str, exc: Exception) -> None:
            self.error(f"tune energy {shape} {tokens} {wname} {cand}", exc)

        runs: dict[str, Callable[[], object]] = {}
        with torch.inference_mode():
            for cand in fastest:
                try:
                    runs[cand] = graphed(lambda c=cand: ft.fused_forward(stk, x, d, c), self.dev)
                except Exception as exc:
                    failed(cand, exc)
            windows = alternating_windows(self.nrg, runs, self.args.tune_window,
                                          self.args.tune_energy_rounds, failed)
        mj = {c: sum(window_mj(ws)) / len(ws) for c, ws in windows.items()}
        for rec in self.payload["tune"]:
            cand = rec["impl"].removeprefix("fused:")
            if (rec["shape"], rec["tokens"], rec["weights"]) == (shape, tokens, wname) and (
                    cand in mj):
                ws = windows[cand]
                rec.update(energy_mj=mj[cand], energy_mj_windows=window_mj(ws),
                           energy_power_w=sum(w["energy_j"] for w in ws)
                           / sum(w["seconds"] for w in ws) if any(w["seconds"] for w in ws)
                           else None, energy_source=self.nrg.source)
        if not any(mj.values()):  # no counter (smoke test) or nothing measured
            return best
        pick = min(mj, key=mj.__getitem__)
        log(f"   tune T={tokens:5d} {wname} by energy: " + " ".join(
            f"{c}={e:.2f}mJ" for c, e in mj.items()) + f" -> {pick}")
        return pick

    def energy(self, shape: str, cfg, variants: dict[str, SimpleMoELayer]) -> None:
        a = self.args
        graph_tokens = [int(t) for t in a.graph_tokens.split(",") if t]
        if cfg.num_experts > a.graph_max_experts:
            graph_tokens = graph_tokens[:1]
        for tokens in self.tokens:
            x = self.randn(tokens, cfg.hidden_size)
            labels = [v for v in a.variants.split(",") if v]
            if tokens in graph_tokens:
                labels += [v for v in a.graph_variants.split(",") if v]
            for label in labels:
                self.check_deadline()
                wname, backend, step_graph = VARIANTS[label]
                lay = variants[wname]
                lay.set_backend(backend)
                # the layer's own whole-step graphs only where the row measures the default
                lay.set_step_graphs("auto" if label in ("auto", "auto_int4") else "off")
                lay.fused_routing = not label.endswith("+torch_route")
                fr.FUSE_GATE = "+torch_gate" not in label
                step: Callable[[torch.Tensor], object] = GraphedLayer(lay) if step_graph else lay
                try:
                    with torch.inference_mode():
                        w = self.nrg.window(lambda s=step, x=x: s(x), a.window)
                except Exception as exc:
                    self.error(f"energy {shape} {tokens} {label}", exc)
                    continue
                finally:
                    fr.FUSE_GATE = True
                info = self.nrg.info()
                rec = {"shape": shape, "tokens": tokens, "backend": label, "weights": wname,
                       **w, "uj_per_token": w["energy_j"] / (w["steps"] * tokens) * 1e6,
                       "ms_per_step": w["seconds"] / w["steps"] * 1e3,
                       "mean_power_w": w["energy_j"] / w["seconds"],
                       "temperature_c_after": info.get("temperature_c"),
                       "sm_clock_mhz_after": info.get("sm_clock_mhz"),
                       "floors": floors(cfg, tokens, 2.0 if wname == "bf16" else
                                        int4_weight_bytes(cfg.hidden_size,
                                                          cfg.expert_inner_size),
                                        self.ceil["bf16_gemm_tflop_s"], self.ceil["copy_tb_s"]),
                       "fused_config": (ft.choose_config(stacked_experts(lay.experts),
                                                         tokens * cfg.top_k, self.dev)
                                        if backend.startswith("fused") else None),
                       "step_graph": (step.replays if isinstance(step, GraphedLayer) else None),
                       # what the layer's own `AutoBackend` ran, warm-up included (a fresh
                       # one per set_backend: this size's steps only)
                       "auto_chose": (dict(lay.expert_backend.counts) if backend == "auto"
                                      else None),
                       "whole_step_replays": (lay.step_graphs.replays
                                              if lay.step_graphs is not None else None),
                       "source": self.nrg.source}
                self.payload["energy"].append(rec)
                chose = f" -> {rec['auto_chose']}" if rec["auto_chose"] else ""
                if rec["whole_step_replays"]:
                    chose += f", {rec['whole_step_replays']} whole-step replays"
                log(f"   {label:22s} T={tokens:5d}: {rec['uj_per_token']:9.1f} uJ/token "
                    f"{rec['ms_per_step']:8.3f} ms/step {rec['mean_power_w']:6.0f} W "
                    f"({w['steps']} steps, {w['seconds']:.2f} s){chose}")
                lay.set_backend("loop")
            self.save()

    def run(self) -> None:
        """Every section on every shape; what was measured is saved when the run is stopped
        (Ctrl-C, or SIGTERM from `timeout`) as when it ends."""
        try:
            self._run_shapes()
        except _Deadline as stop:
            self.payload["stopped"] = str(stop)
            log(f"   {stop} at t={self.elapsed():.0f}s: saving what was measured")
            self.save()
            return
        except KeyboardInterrupt:
            self.payload["interrupted"] = True
            log(f"   interrupted at t={self.elapsed():.0f}s: saving what was measured")
            self.save()
            raise
        self.save()
        self.summary()

    def _run_shapes(self) -> None:
        for shape, cfg in self.shapes:
            log(f"== {shape}: H={cfg.hidden_size} F={cfg.expert_inner_size} "
                f"E={cfg.num_experts} k={cfg.top_k}")
            torch.manual_seed(self.args.seed)
            layer = SimpleMoELayer(cfg, dtype="bf16", device=self.dev).eval()
            qlayer = SimpleMoELayer(cfg, dtype="bf16", device=self.dev).eval()
            qlayer.router.load_state_dict(layer.router.state_dict())
            qlayer.quantize(self.args.int4_group
                            or int4_group_size(cfg.hidden_size, cfg.expert_inner_size))
            qlayer.set_int4_layout(self.args.int4_layout)
            log(f"   weights: bf16 {stacked_experts(layer.experts).weight_bytes() / 1e9:.2f} GB, "
                f"int4 {stacked_experts(qlayer.experts).weight_bytes() / 1e9:.2f} GB")
            variants = {"bf16": layer, "int4": qlayer}
            for section in self.args.sections.split(","):
                getattr(self, section)(shape, cfg, variants)
            self.record_copies(shape, qlayer)
            del layer, qlayer, variants
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()

    def record_copies(self, shape: str, qlayer: SimpleMoELayer) -> None:
        """What the int4 stack's kernel copies held after the sections ran (every program size
        they used), against its packed codes and scales."""
        st = existing_stack(qlayer.experts)
        if st is None:
            return
        copies = ft.copy_bytes(st.kernel_cache)
        self.payload.setdefault("int4_copies", []).append(
            {"shape": shape, "weight_bytes": st.weight_bytes(), "copy_bytes": copies,
             "int4_layout": qlayer.int4_layout, "layouts": [st.layout13, st.layout2]})
        if copies:
            log(f"   int4 kernel copies: {sum(copies.values()) / 1e9:.2f} GB ("
                + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in sorted(copies.items()))
                + f") besides {st.weight_bytes() / 1e9:.2f} GB of codes and scales")

    def summary(self) -> None:
        rows = self.payload["energy"]
        labels = list(dict.fromkeys(r["backend"] for r in rows))
        log("\nuJ/token (NVML counter, whole layer step: router + dispatch + experts + combine)")
        w = max(14, *(len(shape) for shape, _ in self.shapes))  # labels like "olmoe-1b-7b@0.25"
        log(f"{'shape':{w}s} {'tokens':>6s} " + " ".join(f"{lb[:13]:>13s}" for lb in labels)
            + "  g/fused g/int4")
        for shape, _ in self.shapes:
            for tokens in self.tokens:
                row = {r["backend"]: r["uj_per_token"] for r in rows
                       if r["shape"] == shape and r["tokens"] == tokens}
                if not row:
                    continue
                g, f, q = row.get("grouped"), row.get("fused"), row.get("fused_int4")
                rat = f"{g / f:6.2f}x {g / q:5.2f}x" if g and f and q else ""
                log(f"{shape:{w}s} {tokens:6d} " + " ".join(
                    f"{row.get(lb, float('nan')):13.1f}" for lb in labels) + f"  {rat}")
        nfail = sum(1 for r in self.payload["check"] if not r["ok"])
        log(f"check: {len(self.payload['check'])} runs, {nfail} failed; "
            f"errors: {len(self.payload['errors'])}; wall {self.elapsed():.0f}s")


class _Deadline(BaseException):
    """--deadline passed: not an Exception, so that the sections' per-item error handlers
    (which record an error and go on) let it through to `Bench.run`."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    # `timeout` stops a run with SIGTERM: end it as Ctrl-C would, keeping what was measured.
    # Python runs the handler only between bytecodes of the main thread, so a main thread in a
    # long CUDA call (a synchronize after queued graph replays) takes it late: run 83 and a
    # later probe on the H200 ended under `timeout` with no save and no Python output, cause
    # not found. --deadline stops cooperatively; faulthandler writes every thread's stack to
    # stderr when SIGTERM arrives (then chains to the handler) and on a fatal signal.
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:  # stderr without a file descriptor (a captured one): no stacks, the rest as usual
        if not faulthandler.is_enabled():
            faulthandler.enable()
        faulthandler.register(signal.SIGTERM, chain=True)
    except (AttributeError, ValueError, OSError):
        pass
    try:
        args = parse_args(argv)
        # the library reads its $WATTMOE_* kernel settings at the first launch that uses
        # them, which in this run is inside a check or tune candidate: the run would record
        # the same error once per candidate and go on (a bad table path ended it with a
        # traceback)
        try:
            ft.check_settings(torch.device(args.device))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        Bench(args).run()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        faulthandler.unregister(signal.SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    main()
