#!/usr/bin/env bash
# run 105 (session 15): the int4 heuristic's new large-step pick on shapes no tuning has seen: w128t128fpx
# (now sharing the 64-row picks' tile-order copy) against the previous pick w64t128fpx, forced through a
# table (WATTMOE_KERNEL_CONFIGS) holding the old picks for those shapes; Mixtral-8x7B at 1024 and 4096
# tokens (256 and 1024 rows per expert), Qwen1.5-MoE-A2.7B (60 experts, top-4) at 4096 and 16384
# tokens (273 and 1092 rows per expert); layer steps, grouped and int4, order old, new, new, old
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/old_table
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
python3 - <<'PY'
import json
from pathlib import Path
t = json.loads(Path("wattmoe/moe/kernel_configs/nvidia_h200.json").read_text())
t["configs"]["E=8,H=4096,F=14336,swiglu,int4g128"] = {"2048": "w64t128fpx", "8192": "w64t128fpx"}
t["configs"]["E=60,H=2048,F=1408,swiglu,int4g128"] = {"16384": "w64t128fpx", "65536": "w64t128fpx"}
t["source"] = "run 105: the shipped table with the previous heuristic's int4 pick for two untuned shapes"
Path("/tmp/r/old_table/nvidia_h200.json").write_text(json.dumps(t, indent=1))
PY
T0=$SECONDS
i=0
for v in old new new old; do
  i=$((i+1))
  if [ $v = old ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/old_table; else unset WATTMOE_KERNEL_CONFIGS; fi
  for s in mixtral-8x7b:1024,4096 qwen1.5-moe-a2.7b:4096,16384; do
    n=${s%%:*}; t=${s#*:}
    timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_${i}_${v}_$n --shapes $n --tokens $t \
      --sections energy --variants grouped,fused_int4 --graph-variants "" --window 2 > /tmp/r/e_${i}_${v}_${n}_log.txt 2>&1
    echo "$i $v $n rc=$? at $((SECONDS-T0)) s"; grep -E "^ +(grouped|fused_int4) |chose|config" /tmp/r/e_${i}_${v}_${n}_log.txt | cut -c1-110
  done
  tar czf $OUT/r.tgz -C /tmp r
done
