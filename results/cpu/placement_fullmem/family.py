# ruff: noqa  (a helper's experiment script, kept as it ran)
"""The e8b7e22 family: 30 random small full-memory instances; heuristic (and MILP) per instance."""
import hashlib
import json
import sys
import time

import numpy as np

from wattmoe.placement import (
    AnalyticCostProvider,
    Constraints,
    ExpertShape,
    InfeasibleError,
    MilpOptions,
    cluster_from_dict,
    make_problem,
    solve,
    synthetic_loads,
)

POOL = ("nvidia-h200", "laptop-gpu", "cpu-16core", "laptop-cpu-8core")
OBJ = ("balance", "latency", "energy", "energy=1,latency=1")
shape = ExpertShape(512, 256)
tag = sys.argv[1]; milp = sys.argv[2] == "milp"; n = 30
rng = np.random.default_rng(7)
i = done = 0
while done < n:
    L = int(rng.integers(2, 5)); E = int(rng.integers(4, 11)); D = int(rng.integers(2, 4))
    slots = rng.multinomial(L * E - D, np.ones(D) / D) + 1 + (rng.random(D) < 0.3)
    devs = [{"name": f"d{j}", "kind": "gpu", "cost_device": POOL[int(rng.integers(4))],
             "memory_bytes": int(s) * shape.weight_bytes} for j, s in enumerate(slots)]
    links = [{"a": "d0", "b": f"d{j}", "bandwidth_bytes_per_s": 2e10, "energy_j_per_byte": 5e-11,
              "latency_s": 1e-5} for j in range(1, D)]
    cl = cluster_from_dict({"name": "r", "devices": devs, "links": links, "token_home": ["d0"]})
    loads = synthetic_loads(L, E, 2, int(rng.integers(100, 3000)), f"zipf:{rng.uniform(0,1.5):.2f}", int(rng.integers(1e6)))
    obj = OBJ[i % 4]; i += 1
    try:
        p = make_problem(cl, loads, shape, AnalyticCostProvider(), obj, Constraints(max_replicas=int(rng.integers(1, 3))))
    except InfeasibleError:
        continue
    t0 = time.perf_counter()
    h = solve(p, "heuristic")
    t = time.perf_counter() - t0
    rec = {"tag": tag, "i": done, "dims": [L, E, D], "obj": obj, "t": t, "h": h.summary.objective,
           "hash": hashlib.sha1(h.assignment.tobytes()).hexdigest()[:10]}
    if milp:
        m = solve(p, "milp", options=MilpOptions(time_limit_s=20))
        rec.update(m=m.summary.objective, status=m.status, gap=h.summary.objective / m.summary.objective - 1)
    print(json.dumps(rec), flush=True)
    done += 1
