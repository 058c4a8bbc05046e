#!/usr/bin/env bash
# run 79 (shipped table = runs 76-78's picks): (1) Qwen3 int4 at 512 tokens, the previous entry
# (w64t32r16fpx, a user table) against the shipped w64t32r16fpx/w256t32s3w8fpx in the order old,
# new, new, old, eager and captured, grouped in each process; (2) check of the shipped table at
# 512 and 16384 tokens (fused, fused_graph); (3) the cost model's int4 fused layer points
# re-measured (moe_layer_int4:fused_graph, moe_layer_int4:fused) for data/profiles/h200.json
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r $OUT/p
T0=$SECONDS
python3 - <<'PY'
import json
t = json.load(open("wattmoe/moe/kernel_configs/nvidia_h200.json"))
t["configs"] = {"E=128,H=2048,F=768,swiglu,int4g128": {"4096": "w64t32r16fpx"}}
t["source"] = "run 79: Qwen3 int4 at 512 tokens, the entry before run 78"
json.dump(t, open("/tmp/r/old.json", "w"), indent=1)
PY
lay() {  # i old|new
  if [ $2 = old ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/old.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e$1_$2 --shapes qwen3-30b-a3b --tokens 512 \
    --variants grouped,fused_int4 --sections energy --window 2 --graph-variants grouped+step_graph,fused_int4+step_graph \
    --graph-tokens 512 > /tmp/r/e$1_$2_log.txt 2>&1
  echo "$1 $2 rc=$? at $((SECONDS-T0)) s"; grep -E "^ +(grouped|fused)" /tmp/r/e$1_$2_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay 1 old; lay 2 new; lay 3 new; lay 4 old
unset WATTMOE_KERNEL_CONFIGS
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512,16384 \
  --sections check --check-backends fused,fused_graph \
  --check-cases uniform:512,skewed:512,hot:512,capacity:512,uniform:16384,skewed:16384 > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -12
tar czf $OUT/r.tgz -C /tmp r
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer_int4:fused_graph,moe_layer_int4:fused --tokens 1,64,1024,8192 \
  --out $OUT/p/h200_int4_refresh.json --deadline $((560-(SECONDS-T0))) > $OUT/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; tail -4 $OUT/p/log.txt
