#!/usr/bin/env bash
# run 129 (session 18): run 127 again at the final HEAD (the finalizer now only notes a freed
# build, dropped at the next call): graphed backends drop the graphs of a freed stack:
# OLMoE and DeepSeek-V3 int4 layers with the default backend, steps at 64 and 512 tokens,
# then the layer deleted: graphs held and memory reserved after empty_cache, before and after;
# then every backend against fp32 at this commit (default int4 policy, step graphs too)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 - > /tmp/r/freed_log.txt 2>&1 <<'PY'
import gc, json, torch
from wattmoe.moe.backends import get_backend
from wattmoe.moe.layer import SimpleMoELayer
from wattmoe.moe.presets import resolve_shape
dev = torch.device("cuda")
def held():
    gc.collect()
    g = {n: len(get_backend(n).captured()) for n in ("fused_graph", "grouped_graph")}  # (drops freed builds, as a call does)
    torch.cuda.synchronize(); torch.cuda.empty_cache()
    return {"allocated_gb": round(torch.cuda.memory_allocated() / 1e9, 3),
            "reserved_gb": round(torch.cuda.memory_reserved() / 1e9, 3),
            "graphs": g}
rows = []
for spec in ("olmoe-1b-7b", "deepseek-v3"):
    start = held()
    layer = SimpleMoELayer(resolve_shape(spec), dtype="bf16", device=dev).eval()
    layer.quantize()
    with torch.inference_mode():
        for n in (64, 512):
            layer(torch.randn(n, layer.config.hidden_size, device=dev, dtype=torch.bfloat16))
    with_layer = held()
    ran = dict(layer.expert_backend.counts)
    del layer
    after = held()
    rows.append({"shape": spec, "ran": ran, "start": start, "with_layer": with_layer, "deleted": after})
    print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open("/tmp/r/freed.json", "w"), indent=1)
PY
echo "freed rc=$? at $((SECONDS-T0)) s"; cat /tmp/r/freed_log.txt | grep -v Warn | cut -c1-400
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_auto --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c_auto_log.txt 2>&1
echo "check auto rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_auto_log.txt | grep -E "check:|rror" | cut -c1-200
tar czf $OUT/r.tgz -C /tmp r
