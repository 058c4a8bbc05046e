#!/usr/bin/env bash
# run 108 (session 15): the 1024-token int4 entries (8192 assignments) of OLMoE (w64t64r16fp/w64t128fp) and
# Qwen3 (w64t64r16fp/w64t64k32dr16f) read row-major words, so a stack used there keeps copies beside the
# tile-order one; tile-order pairs of 64-column K steps (OLMoE w64t64r16fpx/w64t128fpx, Qwen3
# w64t64r16fpx/w64t64r16fpx) would share it. Layer steps at 1024 tokens (eager and captured), shipped
# table (old) against a table with those entries (new), order old, new, new, old; then the new pairs'
# fp32 check
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/new_table
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
python3 - <<'PY'
import json
from pathlib import Path
t = json.loads(Path("wattmoe/moe/kernel_configs/nvidia_h200.json").read_text())
t["configs"]["E=64,H=2048,F=1024,swiglu,int4g128"]["8192"] = "w64t64r16fpx/w64t128fpx"
t["configs"]["E=128,H=2048,F=768,swiglu,int4g128"]["8192"] = "w64t64r16fpx/w64t64r16fpx"
t["source"] = "run 108: the shipped table with tile-order 8192-assignment int4 entries for OLMoE and Qwen3"
Path("/tmp/r/new_table/nvidia_h200.json").write_text(json.dumps(t, indent=1))
PY
T0=$SECONDS
i=0
for v in old new new old; do
  i=$((i+1))
  if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/new_table; else unset WATTMOE_KERNEL_CONFIGS; fi
  timeout 45 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_${i}_$v --shapes olmoe-1b-7b,qwen3-30b-a3b \
    --tokens 1024 --sections energy --variants fused_int4 --graph-variants fused_int4+step_graph \
    --graph-tokens 1024 --window 1.5 > /tmp/r/e_${i}_${v}_log.txt 2>&1
  echo "$i $v rc=$? at $((SECONDS-T0)) s"; grep -E "^ +fused_int4|kernel copies" /tmp/r/e_${i}_${v}_log.txt | cut -c1-110
  tar czf $OUT/r.tgz -C /tmp r
done
export WATTMOE_KERNEL_CONFIGS=/tmp/r/new_table
timeout 40 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes olmoe-1b-7b,qwen3-30b-a3b --sections check \
  --check-backends fused,fused_graph --check-cases uniform:1024,skewed:1024,hot:1024 > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -E "check:|FAIL" /tmp/r/k_log.txt | tail -3
tar czf $OUT/r.tgz -C /tmp r
