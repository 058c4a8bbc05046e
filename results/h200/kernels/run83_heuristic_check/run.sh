#!/usr/bin/env bash
# run 83: the sm_90 bf16 heuristic (session 12, from run 82's tunes) on two shapes that no
# tuning has seen: a Phi-3.5-MoE-like h4096_f6400_swiglu_e16_k2 and a gpt-oss-120b-like
# h2880_f2880_swiglu_e128_k4. (1) check of the fused backends with the heuristic's picks
# (bf16 and int4); (2) layer steps at 512 and 4096 tokens (grouped, fused, fused_int4 eager;
# captured at 512) with the previous bf16 heuristic's picks (a user table) and with the new
# heuristic (no table), order old, new, new, old; (3) what time is left: DeepSeek-V3 int4 at
# 16384 tokens tuned by energy over the tile-order candidates
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
T0=$SECONDS
S=h4096_f6400_swiglu_e16_k2,h2880_f2880_swiglu_e128_k4
timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/check --shapes $S --tokens 512,4096 \
  --sections check --check-backends fused,fused_graph \
  --check-cases uniform:512,skewed:512,hot:512,uniform:4096,skewed:4096 > /tmp/r/check_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "check:|FAIL|rror" | tail -8
python3 - <<'PY'
import json
t = {"device": "nvidia_h200", "source": "run 83: the bf16 heuristic's picks before session 12",
     "configs": {"E=16,H=4096,F=6400,swiglu,bfloat16": {"1024": "m64", "8192": "m64n128"},
                 "E=128,H=2880,F=2880,swiglu,bfloat16": {"2048": "m16", "16384": "m64"}}}
json.dump(t, open("/tmp/r/old.json", "w"), indent=1)
PY
tar czf $OUT/r.tgz -C /tmp r
lay() {  # i old|new
  if [ $2 = old ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/old.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  [ $((SECONDS-T0)) -gt 450 ] && { echo "skip $1 $2"; return; }
  timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e$1_$2 --shapes $S --tokens 512,4096 \
    --variants grouped,fused,fused_int4 --sections energy --window 2 \
    --graph-variants grouped+step_graph,fused+step_graph --graph-tokens 512 > /tmp/r/e$1_$2_log.txt 2>&1
  echo "$1 $2 rc=$? at $((SECONDS-T0)) s"; grep -E "^ +(grouped|fused)|^==" /tmp/r/e$1_$2_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay 1 old; lay 2 new; lay 3 new; lay 4 old
unset WATTMOE_KERNEL_CONFIGS
L=$((585-(SECONDS-T0)))
if [ $L -gt 120 ]; then
  timeout $L python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/ds16k --shapes deepseek-v3 --sections tune \
    --tokens 16384 --tune-weights int4 --tune-by energy --tune-window 1.5 \
    --tune-candidates w128t128f,w128t128fpx,w64t128k32f,w64t128k32fpx > /tmp/r/ds16k_log.txt 2>&1
  echo "ds16k rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/ds16k_log.txt | grep -E "tune T=|ERROR|interrupted" | cut -c1-500
fi
tar czf $OUT/r.tgz -C /tmp r
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > $OUT/gpu_end.csv
