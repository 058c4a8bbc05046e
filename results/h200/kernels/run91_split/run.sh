#!/usr/bin/env bash
# Run 91 (session 13): int4 tiles unpacked in halves (the high half's MMA left in flight legally,
# no wait per K step; KernelConfig.int4_split_dequant, the new default) against run 89's fix
# (whole tile, a wait per step) and the K loop before it: correctness (nan_probe on full
# Mixtral, the matrix check) and energy per captured experts step.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
timeout 150 python3 benchmarks/gpu/nan_probe.py --shape mixtral-8x7b --weights int4 --tokens 4096 \
    --config w64t16fpx:inflight,w64t16fpx,w64t32r16fpx,w128t128fpx,w64t64k32dr16f,w64t128k32f \
    --repeats 8 --poison-mb 2048 --out $OUT/nan.json > $OUT/nan.txt 2>&1
echo "rc $?" >> $OUT/nan.txt; grep "bad of" $OUT/nan.txt
for s in olmoe-1b-7b qwen3-30b-a3b deepseek-v3; do
  timeout 110 python3 benchmarks/gpu/kernel_diag.py --shape $s --tokens 512,4096 \
      --variants table,whole,inflight --energy 1.5 --out $OUT/diag_$s.json > $OUT/diag_$s.txt 2>&1
  echo "rc $?" >> $OUT/diag_$s.txt; grep "mJ per" $OUT/diag_$s.txt
done
timeout 110 python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
echo "rc $?" >> $OUT/m_log.txt; tail -2 $OUT/m_log.txt
