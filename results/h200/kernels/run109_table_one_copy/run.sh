#!/usr/bin/env bash
# run 109 (session 16): the full table with the shipped kernels at e058d41 (one int4 tile-order copy per stack, facbe44; the int4 heuristic's 128-row pick; run 108's 1024-token entries),
# re-measured as runs 93, 90 and 80: kernels_bench check + the full energy table (3 shapes x
# 64/512/4096/16384 tokens, loop/grouped/fused/int4, graphs at 64 and 512)
# (the matrix check ran in runs 102, 104)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p $OUT/k
timeout 540 python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --sections check,energy --check-step-graph fused \
  --variants loop,grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > $OUT/k/k_log.txt 2>&1
echo "rc=$?"; grep -v Warn $OUT/k/k_log.txt | grep -E "check:|T=  512|error" | cut -c1-120
