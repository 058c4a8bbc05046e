#!/usr/bin/env bash
# run 94 (session 14): DeepSeek-V3 int4 at 16384 tokens tuned by energy (version 13 next 1), a call of
# its own; the JSON is written to $OUT after each candidate
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 560 python3 benchmarks/gpu/kernels_bench.py --out $OUT/t --shapes deepseek-v3 \
    --sections tune --tokens 16384 --tune-weights int4 --tune-by energy --tune-window 1.5 \
    --tune-energy-top 4 --tune-candidates w128t128f,w128t128fpx,w64t128k32f,w64t128k32fpx > $OUT/t_log.txt 2>&1
echo "rc=$?"; grep -v Warn $OUT/t_log.txt | tail -30 | cut -c1-160
