#!/usr/bin/env bash
# run 30: tail rows on 128-token tiles, tuned where experts get ~128-256 rows; energy at 4096
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --shapes deepseek-v3,qwen3-30b-a3b,olmoe-1b-7b \
  --tokens 4096 --sections tune,energy --tune-weights bf16 --variants grouped,fused --window 2 > $OUT/k_log.txt 2>&1
python3 benchmarks/gpu/kernels_bench.py --out $OUT/o --shapes olmoe-1b-7b --tokens 1024 \
  --sections tune --tune-weights bf16 > $OUT/o_log.txt 2>&1
grep -v Warn $OUT/k_log.txt | tail -16; grep "tune" $OUT/o_log.txt
