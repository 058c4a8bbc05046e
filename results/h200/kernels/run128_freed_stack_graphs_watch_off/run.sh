#!/usr/bin/env bash
# run 128 (session 18): run 127's deleted-layer probe with the graphed backends' watch off
# (`GraphedBackend._watch` a no-op: as before 994e194), for the comparison
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 - > /tmp/r/kept_log.txt 2>&1 <<'PY'
import gc, json, torch
from wattmoe.moe.graphs import GraphedBackend
GraphedBackend._watch = lambda self, st: None  # as before 994e194: graphs of freed stacks kept
from wattmoe.moe.backends import get_backend
from wattmoe.moe.layer import SimpleMoELayer
from wattmoe.moe.presets import resolve_shape
dev = torch.device("cuda")
def held():
    gc.collect(); torch.cuda.synchronize(); torch.cuda.empty_cache()
    return {"allocated_gb": round(torch.cuda.memory_allocated() / 1e9, 3),
            "reserved_gb": round(torch.cuda.memory_reserved() / 1e9, 3),
            "graphs": {n: len(get_backend(n)._graphs) for n in ("fused_graph", "grouped_graph")}}
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
json.dump(rows, open("/tmp/r/kept.json", "w"), indent=1)
PY
echo "kept rc=$? at $((SECONDS-T0)) s"; cat /tmp/r/kept_log.txt | grep -v Warn | cut -c1-400
tar czf $OUT/r.tgz -C /tmp r
