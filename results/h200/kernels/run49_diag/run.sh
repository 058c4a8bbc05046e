#!/usr/bin/env bash
# run 49: what the dequantization costs in the table's int4 launches now (fragment words, scale
# pairs): kernel_diag's leave-one-stage-out variants (dequantization skipped: MODE 5, the words
# copied into the operand registers) at 512 and 4096 tokens, OLMoE and Qwen3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
for s in olmoe-1b-7b qwen3-30b-a3b; do
  python3 benchmarks/gpu/kernel_diag.py --shape $s --tokens 64,512,4096 --out $OUT/diag_$s.json > $OUT/diag_$s.txt 2>&1
  grep -v Warn $OUT/diag_$s.txt | tail -16
done
