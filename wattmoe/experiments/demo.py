"""A short end-to-end step on the local machine: build a preset's MoE block and time it."""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from wattmoe.errors import ConfigError, DeviceError
from wattmoe.moe import MoETransformerBlock, dtype_name, resolve_dtype, resolve_shape_at
from wattmoe.moe.autoselect import AutoBackend
from wattmoe.moe.backends import available_backends
from wattmoe.moe.fused_triton import interpreting
from wattmoe.moe.quant import int4_group_size
from wattmoe.placement.spec import ClusterSpec, load_cluster
from wattmoe.telemetry import GpuSystemMonitor

DEFAULT_SCALE = 0.25  # the demo's width scale where neither --scale nor SHAPE@SCALE gives one


@dataclass(frozen=True)
class PlacementRow:
    """One solver's placement of the measured expert loads (a model's prediction)."""

    solver: str
    energy_j_per_token: float
    latency_s: float
    imbalance: float
    experts_per_device: dict[str, int]  # expert replicas hosted per device
    energy_source: str = "estimated"


@dataclass(frozen=True)
class DemoResult:
    """Timing and routing statistics of `steps` forward passes of one MoE block."""

    preset: str
    hidden_size: int
    expert_inner_size: int
    num_experts: int
    top_k: int
    tokens_per_step: int
    steps: int
    device: str
    dtype: str
    median_step_s: float
    p90_step_s: float
    tokens_per_s: float
    expert_counts: list[int]
    mean_aux_loss: float
    dropped: int
    energy_j: float | None
    energy_source: str
    energy_backend: str
    mean_power_w: float | None
    energy_note: str
    backend: str = "loop"
    weights: str = ""
    cluster: str = ""
    cost_model: str = ""
    placements: tuple[PlacementRow, ...] = ()
    steps_requested: int = 0  # more than `steps` when Ctrl-C stopped the timed steps early

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C stopped the timed steps before `steps_requested`."""
        return self.steps < self.steps_requested

    @property
    def energy_per_token_j(self) -> float | None:
        if self.energy_j is None:
            return None
        return self.energy_j / (self.tokens_per_step * self.steps)

    @property
    def imbalance(self) -> float:
        """max / mean tokens per expert (EPLB's balancedness measure inverted)."""
        mean = sum(self.expert_counts) / len(self.expert_counts)
        return max(self.expert_counts) / mean if mean else float("nan")


class _Step(NamedTuple):
    """One finished timed step, and the expert counts and `auto`'s choices so far (kept as one
    record, appended whole: a Ctrl-C leaves a step in or out, never half of it)."""

    seconds: float
    aux_loss: float
    dropped: int
    counts: torch.Tensor
    auto_counts: Counter
    replays: int  # the layer's whole-step graph replays so far (`step_graphs`)


def _graph_count(block: MoETransformerBlock, what: str) -> int:
    """The block's whole-step graphs' `what` so far ('replays', 'captures';
    `SimpleMoELayer.step_graphs`)."""
    graphs = block.moe.step_graphs
    return getattr(graphs, what) if graphs is not None else 0


def place_measured_loads(
    layer: object, tokens_per_batch: int, cluster: str | ClusterSpec, dtype: str,
    solvers: tuple[str, ...] = ("heuristic", "eplb", "round-robin"),
    steps: int = 1, backend: str | None = None, int4_layout: str = "rows",
) -> tuple[str, tuple[PlacementRow, ...]]:
    """Places the experts of `layer` by the loads its router produced (its utilization counts,
    added up over `steps` steps of `tokens_per_batch` tokens: the loads are their mean per
    step) on `cluster` with the analytic cost model, once per solver. `backend`: the expert
    backend the experts ran, for the memory of a replica on a GPU (int4 with a fused backend
    counts the kernels' copy: `ExpertShape.replica_bytes`), which `int4_layout` 'tiles' (how
    the layer stored its codes, `SimpleMoELayer.int4_layout`) makes smaller."""
    from wattmoe.placement import loads_from_layers, solve

    spec = cluster if isinstance(cluster, ClusterSpec) else load_cluster(cluster)
    loads = loads_from_layers([layer], tokens_per_batch=tokens_per_batch, steps=steps)
    problem = _analytic_problem(spec, layer.config, loads, dtype,  # type: ignore[attr-defined]
                                backend, int4_layout)
    rows = []
    for name in solvers:
        s = solve(problem, name).summary
        rows.append(PlacementRow(
            solver=name, energy_j_per_token=s.energy_j_per_token, latency_s=s.latency_s,
            imbalance=s.imbalance, energy_source=s.energy_source,
            experts_per_device={d.name: d.replicas for d in s.devices},
        ))
    return "analytic roofline (estimates)", tuple(rows)


def _check_placeable(spec: ClusterSpec, cfg: object, tokens_per_batch: int, dtype: str,
                     backend: str | None = None) -> None:
    """Raises PlacementError where `place_measured_loads` would fail whatever the loads: a
    device whose cost_device the analytic model does not know, or experts that do not fit
    (checked with uniform loads), so that the timed run is not lost to it."""
    from wattmoe.placement import AnalyticCostProvider, PlacementError, synthetic_loads

    known = AnalyticCostProvider().devices()
    for d in spec.devices:
        if d.cost_device not in known:
            raise PlacementError(
                f"cluster {spec.name!r}: device {d.name} has cost_device {d.cost_device!r}, "
                f"which the demo's analytic cost model does not price (known: "
                f"{', '.join(known)}); name one of those, or place with a profile "
                "(`wattmoe place --cost-model`), or pass --cluster none")
    loads = synthetic_loads(1, cfg.num_experts, cfg.top_k,  # type: ignore[attr-defined]
                            tokens_per_batch, "uniform", 0)
    _analytic_problem(spec, cfg, loads, dtype, backend)


def _analytic_problem(spec: ClusterSpec, cfg: object, loads: object, dtype: str,
                      backend: str | None = None, int4_layout: str = "rows") -> object:
    """The demo's placement problem: `cfg`'s experts in `dtype` on `spec`, priced by the
    analytic cost model, with the energy objective; `backend` and `int4_layout` size a GPU
    replica."""
    from wattmoe.placement import AnalyticCostProvider, ExpertShape, make_problem

    return make_problem(spec, loads, ExpertShape.from_config(cfg, dtype),  # type: ignore[arg-type]
                        AnalyticCostProvider(), objective="energy", backend=backend,
                        int4_layout=int4_layout)


def _check_device(device: str) -> None:
    """Raises ConfigError for a name other than 'cpu' or 'cuda:N', DeviceError for a GPU that
    torch cannot use here (before torch fails on it with a traceback)."""
    m = re.fullmatch(r"cuda:(\d+)", device)
    if device != "cpu" and m is None:
        raise ConfigError(f"unknown device {device!r}; use 'cpu' or 'cuda:N'")
    if m is not None:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(m.group(1)) >= n:
            raise DeviceError(f"device {device!r} is not available here: torch sees {n} CUDA "
                              "device(s)" + ("" if n else " (a CPU-only torch build or no GPU)"))


def run_demo(
    preset: str = "olmoe-1b-7b",
    scale: float | None = None,
    batch: int = 4,
    seq: int = 128,
    steps: int = 10,
    warmup: int = 3,
    dtype: str = "fp32",
    device: str = "cpu",
    seed: int = 0,
    cluster: str | None = "h200-cpu",
    backend: str = "auto",
    int4: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Runs `steps` timed forward passes of one `MoETransformerBlock` on random tokens.

    `preset` is a preset or a shape key (`wattmoe.moe.resolve_shape`); its width scale is
    `scale` or the spec's own '@SCALE', not both (`DEFAULT_SCALE` where neither gives one).

    The timed passes run inside one telemetry window on `device`: energy is measured where
    the device has a counter (NVML, RAPL) and estimated otherwise; the result says which.
    Then the expert loads the router produced are placed on `cluster` (None: skip) by the
    energy-aware heuristic and by the EPLB-style and round-robin baselines (predictions).

    `backend` is the expert execution backend (`wattmoe.moe.backends`: loop, grouped, fused,
    ...). The default, auto as for the layer, decides in the first step (a warm-up step unless
    `warmup` is 0); the result says what it ran and why, and `energy_note` says so when it
    calibrated in the timed steps, whose time and energy then include that. On a GPU its
    fused steps are captured whole at their second step after that (`SimpleMoELayer.
    set_step_graphs`): the third warm-up step, and the result says how many timed steps
    replayed the graph. `int4` quantizes
    the routed experts to packed int4 first (the default group size, `int4_group_size`: one
    whose halves of a row are whole where one exists, for the fused kernels' scale pairs).

    `progress(done, steps)` is called after each finished timed step (outside the step's
    timing, inside the energy window: keep it cheap).

    Raises:
        ConfigError: a bad count, preset, scale, dtype, backend or device name.
        DeviceError: a 'cuda:N' that torch cannot use here.
        KeyboardInterrupt: Ctrl-C before the first timed step finished. Later, the timed
            steps stop and the result covers those that finished (`steps` < `steps_requested`).
    """
    if steps <= 0 or batch <= 0 or seq <= 0 or warmup < 0:
        raise ConfigError(
            f"steps, batch and seq must be positive and warmup >= 0 "
            f"(got steps={steps}, batch={batch}, seq={seq}, warmup={warmup})"
        )
    _check_device(device)
    requested_backend = backend  # `backend` becomes the result's description of what ran
    # a bad cluster name or spec is an error now, not after the timed run
    spec = load_cluster(cluster) if cluster is not None else None
    cfg = resolve_shape_at(preset, scale, DEFAULT_SCALE)
    dt = resolve_dtype(dtype)
    if spec is not None:  # and so is one the placement cannot price or fit the experts on
        _check_placeable(spec, cfg, batch * seq, "int4" if int4 else dtype_name(dt), backend)
    # an unknown backend name is one ConfigError here (the layer looks it up first)
    block = MoETransformerBlock(cfg, dtype=dt, device=device, seed=seed,
                                backend=backend).eval()
    weights = dtype_name(dt)
    if backend in ("fused", "fused_graph") and device == "cpu" and interpreting():
        backend = f"{backend} (Triton's interpreter on cpu: TRITON_INTERPRET=1)"
    elif backend != "auto" and backend not in available_backends(device, dt):
        backend = f"{backend} (runs a fallback on {device}: see `available_backends`)"
    if int4:
        group = int4_group_size(cfg.hidden_size, cfg.expert_inner_size)
        block.moe.quantize(group)
        weights = f"int4 (group {group}), {weights} compute"
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, seq, cfg.hidden_size, generator=gen).to(device=device, dtype=dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    done: list[_Step] = []
    interrupted = False
    monitor = GpuSystemMonitor(devices=[device])
    meter = monitor.backend_for(device)
    auto = block.moe.expert_backend
    auto = auto if isinstance(auto, AutoBackend) else None
    with torch.inference_mode(), monitor:
        for _ in range(warmup):
            block(x)
        block.moe.reset_utilization()
        ran_before = Counter(auto.counts) if auto is not None else Counter()
        replays_before = _graph_count(block, "replays")
        captures_before = _graph_count(block, "captures")
        deciding_before = auto.deciding_s if auto is not None else 0.0
        with monitor.window("demo", sync=True) as window:
            try:
                for _ in range(steps):
                    sync()
                    t0 = time.perf_counter()
                    out = block(x)
                    sync()
                    done.append(_Step(time.perf_counter() - t0, float(out.aux_loss),
                                      int(out.dropped), block.moe.tokens_per_expert.clone(),
                                      Counter(auto.counts) if auto is not None else Counter(),
                                      _graph_count(block, "replays")))
                    if progress is not None:
                        progress(len(done), steps)
            except KeyboardInterrupt:
                # Ctrl-C: keep the steps that finished; a step cut off after its routing
                # counted its tokens must not reach the placed loads
                if not done:
                    raise
                interrupted = True
                block.moe.tokens_per_expert.copy_(done[-1].counts)
    requested, steps = steps, len(done)
    times = [s.seconds for s in done]
    aux = [s.aux_loss for s in done]
    dropped = sum(s.dropped for s in done)
    energy = window.measurement.devices[device]
    energy_j, note = energy.energy_j, energy.note
    if interrupted:
        # the window also covers the step cut off, whose tokens did not finish: its joules
        # per finished token would be too high, so none is reported; the window's total and
        # mean power are still what was measured
        total = "" if energy_j is None else f": {energy_j:.3g} J in all"
        note = "; ".join(x for x in (
            f"interrupted after {steps} of {requested} timed steps; the energy window also "
            f"covers the step cut off{total}, so no energy per token", note) if x)
        energy_j = None
    placed_backend = requested_backend  # what the GPUs' replicas are sized for
    if auto is not None:  # what `auto` chose for the timed steps, and how
        ran = done[-1].auto_counts - ran_before
        # steps that replayed the whole-step graph ran the experts on the backend chosen
        # for them, `auto.last` (one step size here)
        replayed = done[-1].replays - replays_before
        graphed = auto.last.backend if replayed and auto.last is not None else None
        steps_of = ran + Counter({graphed: replayed} if graphed else {})
        if steps_of:  # the backend most timed steps ran (a fused one holds int4 copies)
            placed_backend = steps_of.most_common(1)[0][0]
        why = f"{auto.last.reason}; " if auto.last is not None else ""
        backend = "auto: " + ", ".join(
            [f"{n} ({why}{c} of {steps} steps)" for n, c in ran.most_common()]
            + ([f"{graphed} in a whole-step CUDA graph ({why}{replayed} of {steps} steps)"]
               if graphed else []))
        if _graph_count(block, "captures") > captures_before:  # warmup < 3: the capture was timed
            note = "; ".join(x for x in (
                "a whole-step CUDA graph was captured in the timed steps (two warm-up runs "
                "and the recording are in their time and energy); three warm-up steps keep "
                "that out", note) if x)
        deciding = auto.deciding_s - deciding_before
        if deciding > 0:  # warmup=0 (the CLI warms up): the calibration was timed
            note = "; ".join(x for x in (
                f"auto calibrated in the timed steps ({deciding:.3g} s of them: every "
                "candidate backend timed on the first step of a size); warm-up steps keep "
                "that out", note) if x)
    times.sort()
    med = statistics.median(times)
    cost_model, placements = ("", ())
    if spec is not None:
        # int4 experts are placed as int4 weights (their memory and the bytes they read)
        cost_model, placements = place_measured_loads(
            block.moe, batch * seq, spec, "int4" if int4 else dtype_name(dt), steps=steps,
            backend=placed_backend, int4_layout=block.moe.int4_layout or "rows")
    return DemoResult(
        preset=cfg.name, hidden_size=cfg.hidden_size, expert_inner_size=cfg.expert_inner_size,
        num_experts=cfg.num_experts, top_k=cfg.top_k, tokens_per_step=batch * seq, steps=steps,
        device=device, dtype=dtype, median_step_s=med,
        p90_step_s=times[min(len(times) - 1, int(0.9 * len(times)))],
        tokens_per_s=batch * seq / med, expert_counts=block.moe.tokens_per_expert.tolist(),
        mean_aux_loss=statistics.fmean(aux), dropped=dropped,
        energy_j=energy_j, energy_source=energy.source, energy_backend=meter.name,
        mean_power_w=energy.mean_power_w, energy_note=note,
        backend=backend, weights=weights,
        cluster=cluster or "", cost_model=cost_model, placements=placements,
        steps_requested=requested,
    )
