#!/usr/bin/env bash
# run 63: what a dequantization-free int4 step would spend (kernel_diag --energy: the experts
# step captured, table vs fp32 vs skipped dequantization, NVML windows), and the 512-token
# layer steps of the same lease (grouped and int4, captured), OLMoE and Qwen3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
for s in qwen3-30b-a3b olmoe-1b-7b; do
  timeout 150 python3 benchmarks/gpu/kernel_diag.py --shape $s --tokens 512 --energy 1.5 --out $OUT/diag_$s.json > $OUT/diag_$s.txt 2>&1
  echo "$s rc=$?"; grep -v Warn $OUT/diag_$s.txt | grep "T=" | cut -c1-200
done
E="--shapes olmoe-1b-7b,qwen3-30b-a3b --sections energy --tokens 512 --variants fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 512 --window 2"
timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/e $E > /tmp/e_log.txt 2>&1
echo "energy rc=$?"; grep -v Warn /tmp/e_log.txt | tail -5
mkdir -p /tmp/e; cp /tmp/e_log.txt /tmp/e/; tar czf $OUT/e.tgz -C /tmp e
