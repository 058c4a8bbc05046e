#!/usr/bin/env bash
# run 98 (session 14): K halves (int4_split_form 2) on the 128-row down tiles of the 4096-token
# entries (w128t128fpx: 127 registers against 166 in nibble halves, CPU compile) against the
# shipped nibble halves, OLMoE and Qwen3 at 4096 tokens: nan_probe, then kernel_diag's captured
# experts step energy (two NVML windows per variant, the second round in reverse order)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
mkdir -p /tmp/r; nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu.txt
timeout 60 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --weights int4 --tokens 4096 \
  --config w128t128fpx:khalves --repeats 6 --out /tmp/r/nan_qwen3.json > /tmp/r/nan_qwen3.txt 2>&1
grep -h "bad of" /tmp/r/nan_*.txt; tar czf $OUT/r.tgz -C /tmp r
for n in qwen3-30b-a3b olmoe-1b-7b; do
  timeout 100 python3 benchmarks/gpu/kernel_diag.py --shape $n --tokens 4096 \
    --variants table,khalves --energy 2 --out /tmp/r/diag_$n.json > /tmp/r/diag_$n.txt 2>&1
  echo "rc $?" >> /tmp/r/diag_$n.txt; grep -E "us  \(|mJ per|^rc" /tmp/r/diag_$n.txt | cut -c1-150
  tar czf $OUT/r.tgz -C /tmp r
done
