# ruff: noqa  (a helper's experiment script, kept as it ran)
"""Full-memory medium instances: time, objective, assignment hash (one JSON line each)."""
import hashlib
import json
import sys
import time

from wattmoe.placement import (
    AnalyticCostProvider,
    ExpertShape,
    cluster_from_dict,
    load_cluster,
    make_problem,
    solve,
    synthetic_loads,
)

tag = sys.argv[1]
cases = sys.argv[2].split(",") if len(sys.argv) > 2 else ["16", "48"]
for L, E, shape in ((16, 64, ExpertShape(2048, 1024)), (48, 128, ExpertShape(2048, 768))):
    if str(L) not in cases:
        continue
    spec = load_cluster("8xh200-2node").to_dict()
    for d in spec["devices"]:
        d["memory_bytes"] = (L * E // 8) * shape.weight_bytes
    cl = cluster_from_dict(spec)
    for obj in ("energy", "balance", "latency"):
        for seed in range(2):
            p = make_problem(cl, synthetic_loads(L, E, 8, 4096, "zipf:1.0", seed), shape,
                             AnalyticCostProvider(), obj)
            t0 = time.perf_counter(); r = solve(p, "heuristic"); t = time.perf_counter() - t0
            h = hashlib.sha1(r.assignment.tobytes()).hexdigest()[:10]
            print(json.dumps({"tag": tag, "case": f"{L}x{E}", "obj": obj, "seed": seed, "t": t,
                              "objective": r.summary.objective, "hash": h}), flush=True)
