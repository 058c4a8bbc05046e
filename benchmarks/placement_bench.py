"""Placement optimizer benchmarks (CPU only), written to results/cpu/placement/*.json.

(a) heuristic vs the exact MILP on random instances (<= 32 experts, 4 devices);
(b) 58 layers x 256 experts x 64 devices: wall time of the heuristic (must be < 1 s);
(c) balance objective: imbalance of the heuristic vs the EPLB-style baseline, same loads,
    same redundancy budget and replica cap;
(d) energy objective on the H200 + 16-core CPU cluster: predicted energy per token of the
    heuristic vs the EPLB-style, round-robin and fill-first baselines; `--cost-model PATH`
    uses a measured profile for the H200 (the CPU stays an analytic estimate).

    python benchmarks/placement_bench.py                       # all four, analytic costs
    python benchmarks/placement_bench.py --only d --cost-model data/profiles/h200.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import provenance, write_json

from wattmoe.placement import (
    AnalyticCostProvider,
    Constraints,
    ExpertShape,
    InfeasibleError,
    MilpOptions,
    cluster_from_dict,
    gpu_cluster,
    load_cluster,
    make_problem,
    profile_cost_provider,
    solve,
    synthetic_loads,
)
from wattmoe.placement.solvers import default_redundant, milp_result

OUT = Path("results/cpu/placement")
POOL = ("nvidia-h200", "laptop-gpu", "cpu-16core", "laptop-cpu-8core")
OBJECTIVES = ("energy", "latency", "balance", "energy=1,latency=1")


def _q(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {"min": float(a.min()), "median": float(np.median(a)),
            "p90": float(np.quantile(a, 0.9)), "max": float(a.max()), "mean": float(a.mean())}


def random_cluster(rng: np.random.Generator, shape: ExpertShape, experts: int):
    """4 devices: an H200 home plus three drawn from POOL, random memory, random links."""
    devices, links = [], []
    for i in range(4):
        kind = "nvidia-h200" if i == 0 else POOL[int(rng.integers(len(POOL)))]
        slots = int(rng.integers(max(2, experts // 4), experts + 1))
        devices.append({"name": f"d{i}", "kind": "cpu" if "cpu" in kind else "gpu",
                        "cost_device": kind, "memory_bytes": slots * shape.weight_bytes,
                        "always_on": bool(rng.random() < 0.3)})
        if i:
            links.append({"a": "d0", "b": f"d{i}",
                          "bandwidth_bytes_per_s": float(rng.choice([1.4e10, 5.5e10, 4.5e11])),
                          "energy_j_per_byte": float(rng.uniform(1e-11, 1.5e-10)),
                          "latency_s": float(rng.uniform(3e-6, 2e-5))})
    return cluster_from_dict({"name": "random-4", "devices": devices, "links": links,
                              "token_home": ["d0"]})


def bench_a(n: int, time_limit_s: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shape = ExpertShape(2048, 1024)
    rows = []
    provider = AnalyticCostProvider()
    while len(rows) < n:
        experts = int(rng.integers(8, 33))
        loads = synthetic_loads(1, experts, 2, int(rng.integers(64, 4096)),
                                f"zipf:{rng.uniform(0.0, 1.5):.2f}", int(rng.integers(2**31)))
        objective = OBJECTIVES[len(rows) % len(OBJECTIVES)]
        try:
            problem = make_problem(random_cluster(rng, shape, experts), loads, shape, provider,
                                   objective, Constraints(max_replicas=2))
        except InfeasibleError:  # the random devices cannot hold the experts: draw again
            continue
        t0 = time.perf_counter()
        m = milp_result(problem, MilpOptions(time_limit_s=time_limit_s))
        t_milp = time.perf_counter() - t0
        h = solve(problem, "heuristic")
        rr = solve(problem, "round-robin")
        hv = h.summary.objective
        rows.append({
            "experts": experts, "objective": objective, "loads": loads.source,
            "devices": [d.cost_device for d in problem.graph.cluster.devices],
            "milp_status": m.status, "milp_objective": m.objective,
            "milp_lower_bound": m.lower_bound, "milp_time_s": t_milp,
            "heuristic_objective": hv, "heuristic_time_s": h.solve_time_s,
            "round_robin_objective": rr.summary.objective,
            "gap_vs_milp": hv / m.objective - 1,
            "gap_vs_bound": hv / m.lower_bound - 1 if m.lower_bound > 0 else None,
        })
        r = rows[-1]
        print(f"  (a) {len(rows):2d}/{n} E={experts:2d} {objective:20s} milp {m.objective:.5f} "
              f"({m.status}, {t_milp:5.1f} s) heuristic {hv:.5f} ({h.solve_time_s:.2f} s) "
              f"gap {r['gap_vs_milp']:+.3%}", flush=True)
    gaps = [r["gap_vs_milp"] for r in rows]
    bound_gaps = [r["gap_vs_bound"] for r in rows if r["gap_vs_bound"] is not None]
    return {
        "what": "heuristic objective / MILP objective - 1 on random instances: 1 layer, 8-32 "
                "experts, 4 devices (H200 home + 3 of H200/laptop GPU/16-core CPU/laptop CPU, "
                "random memory and links), max 2 replicas, objectives cycling energy, latency, "
                "balance, energy+latency; analytic cost model (estimates)",
        "instances": len(rows), "milp_time_limit_s": time_limit_s,
        "milp_optimal": sum(r["milp_status"] == "optimal" for r in rows),
        "gap_vs_milp": _q(gaps), "gap_vs_milp_lower_bound": _q(bound_gaps),
        "within_2pct_of_milp": sum(g <= 0.02 for g in gaps),
        "within_2pct_of_bound": sum(g <= 0.02 for g in bound_gaps),
        "heuristic_time_s": _q([r["heuristic_time_s"] for r in rows]),
        "milp_time_s": _q([r["milp_time_s"] for r in rows]),
        "rows": rows,
    }


def big_problem(objective: str, seed: int, constraints: Constraints | None = None):
    shape = ExpertShape(7168, 2048, "swiglu", "fp8")  # DeepSeek-V3's routed experts, FP8
    loads = synthetic_loads(58, 256, 8, 8192, "zipf:1.2", seed)
    return shape, loads, lambda: make_problem(gpu_cluster(8, 8), loads, shape,
                                              AnalyticCostProvider(), objective, constraints)


def bench_b(repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "what": "58 layers x 256 experts (DeepSeek-V3 shape, fp8) x 64 H200 (8 nodes x 8, "
                "NVLink + network), zipf:1.2 loads of 8192 tokens (top-8); wall time of "
                "make_problem (cost graph + round-robin reference) and of the heuristic",
        "cases": {},
    }
    for objective in ("energy", "balance", "latency"):
        setup, solve_s, total = [], [], []
        for rep in range(repeats):
            _, _, build = big_problem(objective, seed=rep)
            t0 = time.perf_counter()
            problem = build()
            t1 = time.perf_counter()
            p = solve(problem, "heuristic")
            t2 = time.perf_counter()
            setup.append(t1 - t0)
            solve_s.append(t2 - t1)
            total.append(t2 - t0)
        eplb = solve(problem, "eplb")
        rr = solve(problem, "round-robin")
        out["cases"][objective] = {
            "setup_s": _q(setup), "solve_s": _q(solve_s), "total_s": _q(total),
            "under_1s": sum(t < 1.0 for t in total), "repeats": repeats,
            "objective": {"heuristic": p.summary.objective, "eplb": eplb.summary.objective,
                          "round_robin": rr.summary.objective},
        }
        print(f"  (b) {objective:8s} total median {statistics.median(total):.3f} s "
              f"(max {max(total):.3f}), solve median {statistics.median(solve_s):.3f} s; "
              f"objective heuristic {p.summary.objective:.4f} eplb {eplb.summary.objective:.4f}",
              flush=True)
    return out


def bench_c(seeds: int) -> dict[str, Any]:
    cases = []
    settings = [("58x256 on 64 GPUs", lambda s: big_problem("balance", s)[2]()),
                ("16x64 olmoe on 8xh200-2node", lambda s: make_problem(
                    load_cluster("8xh200-2node"),
                    synthetic_loads(16, 64, 8, 4096, "zipf:1.0", s), ExpertShape(2048, 1024),
                    AnalyticCostProvider(), "balance")),
                ("48x128 qwen3 on 8xh200-2node, skew 0.6", lambda s: make_problem(
                    load_cluster("8xh200-2node"),
                    synthetic_loads(48, 128, 8, 2048, "zipf:0.6", s), ExpertShape(2048, 768),
                    AnalyticCostProvider(), "balance"))]
    for name, build in settings:
        for seed in range(seeds):
            problem = build(seed)
            _, E, D = problem.dims
            redundant = default_redundant(E, D)
            problem = problem.with_constraints(Constraints(max_replicas=4,
                                                           redundant_per_layer=redundant))
            eplb = solve(problem, "eplb")
            h = solve(problem, "heuristic")
            cases.append({"case": name, "seed": seed, "redundant_per_layer": redundant,
                          "max_replicas": 4, "eplb_imbalance": eplb.summary.imbalance,
                          "heuristic_imbalance": h.summary.imbalance,
                          "heuristic_redundant": h.summary.redundant_replicas,
                          "eplb_redundant": eplb.summary.redundant_replicas,
                          "heuristic_time_s": h.solve_time_s,
                          "no_worse": h.summary.imbalance <= eplb.summary.imbalance + 1e-9})
            c = cases[-1]
            print(f"  (c) {name:40s} seed {seed}: imbalance heuristic "
                  f"{c['heuristic_imbalance']:.4f} vs EPLB-style {c['eplb_imbalance']:.4f}",
                  flush=True)
    return {"what": "balance objective: EPLB imbalance (max/mean tokens per device, averaged "
                    "over layers); both solvers get the same loads, the same redundant replicas "
                    "per layer (EPLB default: one per device) and at most 4 replicas per expert",
            "no_worse": sum(c["no_worse"] for c in cases), "cases_total": len(cases),
            "cases": cases}


def bench_d(cost_model: str | None) -> dict[str, Any]:
    if cost_model:
        from wattmoe.cost_model import KernelCostModel

        provider: Any = profile_cost_provider(KernelCostModel.load(cost_model),
                                              label=f"profile {cost_model} (measured)")
    else:
        provider = AnalyticCostProvider()
    cluster = load_cluster("h200-cpu")
    cases = []
    for preset, shape, layers, experts, top_k, tokens in (
        ("olmoe-1b-7b", ExpertShape(2048, 1024), 16, 64, 8, 4096),
        ("mixtral-8x22b", ExpertShape(6144, 16384), 56, 8, 2, 512),
        ("mixtral-8x22b", ExpertShape(6144, 16384), 56, 8, 2, 4096),
    ):
        for seed in range(3):
            loads = synthetic_loads(layers, experts, top_k, tokens, "zipf:1.2", seed)
            problem = make_problem(cluster, loads, shape, provider, "energy")
            res = {name: solve(problem, name) for name in
                   ("heuristic", "eplb", "round-robin", "fill")}
            row = {"preset": preset, "tokens_per_batch": tokens, "seed": seed,
                   "gpu_fits_all": bool(problem.graph.slots[0] >= layers * experts),
                   "cost_sources": problem.graph.cost_sources}
            for name, p in res.items():
                s = p.summary
                row[name] = {"energy_j_per_token": s.energy_j_per_token,
                             "latency_s": s.latency_s, "imbalance": s.imbalance,
                             "experts_on_cpu": s.devices[1].replicas,
                             "solve_time_s": p.solve_time_s}
            h = row["heuristic"]["energy_j_per_token"]
            for name in ("eplb", "round-robin", "fill"):
                row[f"saving_vs_{name}"] = 1 - h / row[name]["energy_j_per_token"]
            cases.append(row)
            print(f"  (d) {preset:14s} T={tokens:5d} seed {seed}: energy/token heuristic "
                  f"{h * 1e3:.4f} mJ, EPLB-style {row['eplb']['energy_j_per_token'] * 1e3:.4f} "
                  f"mJ ({row['saving_vs_eplb']:+.1%} saved), fill "
                  f"{row['fill']['energy_j_per_token'] * 1e3:.4f} mJ "
                  f"({row['saving_vs_fill']:+.1%})", flush=True)
    return {"what": "energy objective on h200-cpu (one H200 + 16-core CPU over PCIe); "
                    "predicted energy per token (source: estimated, from the cost model)",
            "cost_model": cost_model or "analytic roofline (estimates)",
            "cases": cases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    ap.add_argument("--instances", type=int, default=24, help="(a) random instances")
    ap.add_argument("--milp-time-limit", type=float, default=20.0, help="(a) seconds")
    ap.add_argument("--repeats", type=int, default=5, help="(b) timed repeats")
    ap.add_argument("--seeds", type=int, default=3, help="(c) seeds per case")
    ap.add_argument("--cost-model", help="(d) measured profile for the H200")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(OUT))
    args = ap.parse_args(argv)
    out = Path(args.out_dir)
    parts = set(args.only.split(","))
    meta = provenance()
    if "a" in parts:
        print("(a) heuristic vs MILP", flush=True)
        write_json(out / "a_heuristic_vs_milp.json",
                   {**meta, **bench_a(args.instances, args.milp_time_limit, args.seed)})
    if "b" in parts:
        print("(b) 58 x 256 x 64", flush=True)
        write_json(out / "b_scale.json", {**meta, **bench_b(args.repeats)})
    if "c" in parts:
        print("(c) balance vs EPLB-style", flush=True)
        write_json(out / "c_balance_vs_eplb.json", {**meta, **bench_c(args.seeds)})
    if "d" in parts:
        print("(d) energy on h200-cpu", flush=True)
        name = "d_energy_profile.json" if args.cost_model else "d_energy_analytic.json"
        write_json(out / name, {**meta, **bench_d(args.cost_model)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
