#!/usr/bin/env bash
# run 75: DeepSeek-V3 int4 at 512 tokens, the shipped table, tile-order copies of 64-row tiles
# (default: one copy per stack, the 128-row program reads two runs per K step) against 128-row
# tiles (WATTMOE_INT4_TILE_ROWS=128: run 73's layout), layer steps in the order 64, 128, 64, 128
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
i=0
for tr in 64 128 64 128; do
  i=$((i+1))
  if [ $tr = 128 ]; then export WATTMOE_INT4_TILE_ROWS=128; else unset WATTMOE_INT4_TILE_ROWS; fi
  timeout 45 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e${i}_$tr --shapes deepseek-v3 --sections energy --tokens 512 \
    --variants fused_int4 --graph-variants "" --window 2 > /tmp/r/e${i}_${tr}_log.txt 2>&1
  echo "$i tile rows $tr rc=$?"; grep -E "^ +fused|rror" /tmp/r/e${i}_${tr}_log.txt | cut -c1-200
  tar czf $OUT/r.tgz -C /tmp r
done
