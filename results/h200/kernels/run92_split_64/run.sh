#!/usr/bin/env bash
# Run 92 (session 13): int4 tiles unpacked in halves at 64 tokens (the table's w64t16fpx down
# launch: 96 registers instead of 71) and DeepSeek-V3 at 4096 tokens (run 91's timed out), against
# the whole-tile K loop with its wait (run 89); 256-row tiles now keep the whole-tile loop.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
for s in olmoe-1b-7b:64 qwen3-30b-a3b:64 deepseek-v3:64,4096; do
  timeout 110 python3 benchmarks/gpu/kernel_diag.py --shape ${s%%:*} --tokens ${s##*:} \
      --variants table,whole --energy 1.5 --out $OUT/diag_${s%%:*}.json > $OUT/diag_${s%%:*}.txt 2>&1
  echo "rc $?" >> $OUT/diag_${s%%:*}.txt; grep "mJ per" $OUT/diag_${s%%:*}.txt
done
