#!/usr/bin/env bash
# run 74: one 64-row tile-order copy per stack (TILE_ROWS; 128-row programs read two tiles'
# runs per K step): the shipped table again, as in run 73 (layer steps at 64 and 512 tokens,
# check at 64 and 512 tokens), and the CUPTI times of DeepSeek-V3's 512-token entry
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_ds --shapes deepseek-v3 --sections energy --tokens 512,64 \
  --variants grouped,fused_int4 --graph-variants "" --window 2 > /tmp/r/e_ds_log.txt 2>&1
echo "ds rc=$?"; grep -E "^ +(grouped|fused)|rror" /tmp/r/e_ds_log.txt | cut -c1-300
tar czf $OUT/r.tgz -C /tmp r
timeout 80 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/t_ds --shapes deepseek-v3 --sections tune --tokens 512 \
  --tune-weights int4 --tune-by gpu --tune-candidates w128t32s3fpx > /tmp/r/t_ds_log.txt 2>&1
echo "ds tune rc=$?"; grep -E "tune T=|FAIL|rror" /tmp/r/t_ds_log.txt | cut -c1-300
tar czf $OUT/r.tgz -C /tmp r
for sh in qwen3-30b-a3b olmoe-1b-7b; do
  timeout 60 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_$sh --shapes $sh --tokens 512 \
    --variants grouped,fused_int4 --sections energy --window 2 --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 512 > /tmp/r/e_${sh}_log.txt 2>&1
  echo "$sh rc=$?"; grep -E "^ +(grouped|fused)" /tmp/r/e_${sh}_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
done
timeout 60 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512 \
  --sections check --check-cases uniform:64,skewed:64,uniform:512,skewed:512,hot:512,capacity:512 > /tmp/r/k_log.txt 2>&1
echo "check rc=$?"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -8
tar czf $OUT/r.tgz -C /tmp r
