#!/usr/bin/env bash
# run 82: the bf16 heuristic on untuned shapes. Mixtral-8x7B (8 experts, top-2) and a
# Qwen1.5-MoE-A2.7B-like shape (h2048_f1408_swiglu_e60_k4) have no tuned entry: tune each by
# energy at 512 and 4096 tokens over the heuristic's picks and the families that won the three
# H200 shapes' bf16 tunings; then layer steps (grouped and fused, eager; captured at 512) with
# the heuristic (no table) and with the tuned entries (a user table), same lease
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
T0=$SECONDS
C=m32,m64,m64d,m64n128,m128,m128d,m128n256,m128n256d,w64t64s3d,w64t64s3dr16,w64t64dr16,w128t64dr16,w64t128dr16,w128t128d,w128t128dr16
for s in mixtral-8x7b h2048_f1408_swiglu_e60_k4; do
  timeout 200 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/tune_$s --shapes $s --sections tune \
    --tokens 512,4096 --tune-weights bf16 --tune-by energy --tune-window 1.5 --tune-candidates $C \
    > /tmp/r/tune_${s}_log.txt 2>&1
  echo "tune $s rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/tune_${s}_log.txt | grep "tune T=" | cut -c1-600
  tar czf $OUT/r.tgz -C /tmp r
done
python3 - <<'PY'
import json, glob
from wattmoe.moe import fused_triton as ft
keys = {"E=8,H=4096,F=14336,swiglu,bfloat16", "E=60,H=2048,F=1408,swiglu,bfloat16"}
configs = {}
for f in glob.glob("/tmp/r/tune_*/tuned_configs.json"):
    for k, v in json.load(open(f))["configs"].items():
        if k in keys:
            configs.setdefault(k, {}).update(v)
print("tuned:", configs)
json.dump({"device": "nvidia_h200", "source": "run 82 tunes", "configs": configs},
          open("/tmp/r/tuned.json", "w"), indent=1)
PY
lay() {  # i heur|tuned
  if [ $2 = tuned ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/tuned.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  [ $((SECONDS-T0)) -gt 540 ] && { echo "skip $1 $2"; return; }
  timeout $((590-(SECONDS-T0))) python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e$1_$2 \
    --shapes mixtral-8x7b,h2048_f1408_swiglu_e60_k4 --tokens 512,4096 --variants grouped,fused \
    --sections energy --window 2 --graph-variants grouped+step_graph,fused+step_graph \
    --graph-tokens 512 > /tmp/r/e$1_$2_log.txt 2>&1
  echo "$1 $2 rc=$? at $((SECONDS-T0)) s"; grep -E "^ +(grouped|fused)|^==" /tmp/r/e$1_$2_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay 1 heur; lay 2 tuned
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > $OUT/gpu_end.csv
