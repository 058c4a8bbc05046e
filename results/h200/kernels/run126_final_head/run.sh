#!/usr/bin/env bash
# run 126 (session 18): the final HEAD after the review mends: every backend against fp32 with
# the default int4 layout policy (whole step captured too), fused_matrix_check (its int4 rows
# record the layout), the default backend's int4 memory on DeepSeek-V3 and OLMoE, and
# `wattmoe demo` with every default on the GPU, bf16 and --int4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_auto --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c_auto_log.txt 2>&1
echo "check auto rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_auto_log.txt | grep -E "check:|rror" | cut -c1-200
timeout 240 python3 benchmarks/gpu/fused_matrix_check.py --out /tmp/r/matrix.json > /tmp/r/matrix_log.txt 2>&1
echo "matrix rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/matrix_log.txt | grep -E "ok|FAIL|rror" | tail -6 | cut -c1-200
timeout 120 python3 benchmarks/gpu/int4_layout_memory.py --layouts auto --backend auto --shapes deepseek-v3,olmoe-1b-7b \
  --tokens 64,512,4096 --out /tmp/r/memory.json > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-300
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
for V in bf16 int4; do
  F=""; [ $V = int4 ] && F="--int4"
  timeout 90 $D --steps 8000 $F > /tmp/r/demo_$V.txt 2>&1; echo "demo $V rc=$? at $((SECONDS-T0)) s"
  grep -E "experts|median step|energy per token|mean power|heuristic" /tmp/r/demo_$V.txt | cut -c1-200
done
tar czf $OUT/r.tgz -C /tmp r
