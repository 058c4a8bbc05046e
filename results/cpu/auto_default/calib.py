# ruff: noqa  (a helper's measurement script, kept as it ran)
"""First-step cost of the default `auto` layer on this CPU: fresh decisions each trial."""
import statistics, sys, time, torch
from collections import Counter
from wattmoe.moe import SimpleMoELayer, get_preset, resolve_shape_at
from wattmoe.moe import autoselect
cases = [("tiny (tests)", get_preset("tiny"), 37, "fp32"),
         ("olmoe@1/16 (tests)", get_preset("olmoe-1b-7b", 1/16), 40, "fp32"),
         ("demo olmoe@0.25", resolve_shape_at("olmoe-1b-7b", None, 0.25), 512, "fp32"),
         ("demo olmoe@0.25 bf16", resolve_shape_at("olmoe-1b-7b", None, 0.25), 512, "bf16")]
trials = int(sys.argv[1]) if len(sys.argv) > 1 else 3
print(torch.__version__, "threads", torch.get_num_threads())
for name, cfg, t, dt in cases:
    firsts, calib, later, chosen, sc = [], [], [], Counter(), []
    for trial in range(trials):
        autoselect.SHARED_DECISIONS.clear()
        layer = SimpleMoELayer(cfg, dtype=dt, seed=trial).eval()
        x = torch.randn(t, cfg.hidden_size).to(layer.router.gate.weight.dtype)
        with torch.inference_mode():
            t0 = time.perf_counter(); layer(x); firsts.append(time.perf_counter() - t0)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter(); layer(x); ts.append(time.perf_counter() - t0)
        later.append(statistics.median(ts))
        d = layer.expert_backend.decisions[0]
        calib.append(d.seconds); chosen[d.backend] += 1
        sc.append({k: round(v * 1e3, 2) for k, v in d.scores.items()})
    m = statistics.median
    print(f"{name}: T={t} ({t*cfg.top_k} assignments) {dt} H={cfg.hidden_size} F={cfg.expert_inner_size} E={cfg.num_experts} k={cfg.top_k}: "
          f"chose {dict(chosen)}; first step {m(firsts)*1e3:.1f} ms (calibration {m(calib)*1e3:.1f} ms), "
          f"later steps {m(later)*1e3:.2f} ms -> first = {m(firsts)/m(later):.1f} steps; scores ms {sc}")
