#!/usr/bin/env bash
# Run 89 (session 13): the fix for runs 86-88's non-finite outputs (int4 K loops wait for their
# last MMA before the next step's dequantization rewrites its A registers), checked against the
# previous K loop in the same process, and what it costs in energy.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
timeout 170 python3 benchmarks/gpu/nan_probe.py --shape mixtral-8x7b --weights int4 --tokens 4096 \
    --config w64t16fpx:inflight,w64t16fpx,w64t16fp,w64t32r16fpx,w128t128fpx --repeats 12 \
    --poison-mb 2048 --out $OUT/nan.json > $OUT/nan.txt 2>&1
echo "rc $?" >> $OUT/nan.txt
for s in olmoe-1b-7b qwen3-30b-a3b deepseek-v3; do
  timeout 150 python3 benchmarks/gpu/kernel_diag.py --shape $s --tokens 64,512,4096 \
      --variants table,inflight --energy 1.5 --out $OUT/diag_$s.json > $OUT/diag_$s.txt 2>&1
  echo "rc $?" >> $OUT/diag_$s.txt
done
