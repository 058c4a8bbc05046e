#!/usr/bin/env bash
# run 117 (session 16): the int4 heuristic's 64-row pick above 96 rows per expert where the
# widths are not whole 128-row tiles but scale pairs allow tile order (after run 116): the
# gpt-oss-like shape with groups of 32 checked against fp32 (fused, fused_graph, default cases
# 64-4096 tokens, poisoned outputs) and the layer step at 4096 tokens
# (run 115: 596.5 uJ/token with w128t128fpx)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c --shapes h2880_f2880_swiglu_e128_k4 \
  --int4-group 32 --sections check,energy --check-backends fused,fused_graph --tokens 4096 \
  --variants fused_int4 --graph-variants "" --window 2 > /tmp/r/c_log.txt 2>&1
echo "check+energy rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_log.txt | grep -E "check:|T=|copies" | cut -c1-120
tar czf $OUT/r.tgz -C /tmp r
