#!/usr/bin/env bash
# run 99 (session 14): K halves against the shipped nibble halves on w128t128fpx where run 98 did
# not look: DeepSeek-V3 at 4096 tokens and OLMoE at 16384 (kernel_diag, two NVML windows per
# variant, the second round reversed)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
mkdir -p /tmp/r; nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu.txt
for s in olmoe-1b-7b:16384:80 deepseek-v3:4096:140; do
  n=${s%%:*}; rest=${s#*:}; t=${rest%%:*}; lim=${rest##*:}
  timeout $lim python3 benchmarks/gpu/kernel_diag.py --shape $n --tokens $t \
    --variants table,khalves --energy 1.5 --out /tmp/r/diag_$n.json > /tmp/r/diag_$n.txt 2>&1
  echo "rc $?" >> /tmp/r/diag_$n.txt; grep -E "us  \(|mJ per|^rc" /tmp/r/diag_$n.txt | cut -c1-150
  tar czf $OUT/r.tgz -C /tmp r
done
