#!/usr/bin/env bash
# run 66: the table's new DeepSeek-V3 bf16 entry at 4096 tokens (w128t128dr16/m128n256d, runs 64-65)
# through kernels_bench's check (every backend against the fp32 reference, uniform and skewed
# routing, outputs poisoned first)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 170 python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --shapes deepseek-v3 --tokens 4096 \
  --sections check --check-cases uniform:4096,skewed:4096 > /tmp/k_log.txt 2>&1
mkdir -p /tmp/k; cp /tmp/k_log.txt /tmp/k/; tar czf $OUT/k.tgz -C /tmp k
grep -v Warn /tmp/k_log.txt | tail -12
