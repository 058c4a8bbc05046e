#!/usr/bin/env bash
# run 68: run 63 for DeepSeek-V3 (512 tokens): what a dequantization-free int4 experts step
# would spend (kernel_diag --energy), and the layer steps of the same lease (eager, as the
# table's DeepSeek-V3 512-token ratios are)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 190 python3 benchmarks/gpu/kernel_diag.py --shape deepseek-v3 --tokens 512 --energy 1.5 --out $OUT/diag_deepseek-v3.json > $OUT/diag_deepseek-v3.txt 2>&1
echo "diag rc=$?"; grep "T=" $OUT/diag_deepseek-v3.txt | cut -c1-200
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/e --shapes deepseek-v3 --sections energy --tokens 512 \
  --variants grouped,fused_int4 --graph-variants "" --window 2 > /tmp/e_log.txt 2>&1
echo "energy rc=$?"; grep -E "^ +(grouped|fused)" /tmp/e_log.txt
mkdir -p /tmp/e; cp /tmp/e_log.txt /tmp/e/; tar czf $OUT/e.tgz -C /tmp e
