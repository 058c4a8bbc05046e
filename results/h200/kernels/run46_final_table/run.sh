#!/usr/bin/env bash
# run 46: the full table with the committed kernels and tuned configs at the end of session 7:
# check (the matrix of backends x shapes x routings vs the fp32 reference), then energy for
# 3 shapes x 64/512/4096/16384 tokens, loop/grouped/fused/int4 and the graph variants at 64, 512
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --sections check,energy --check-step-graph fused \
  --variants loop,grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > $OUT/k_log.txt 2>&1
tar czf $OUT/k.tgz -C /tmp k
grep -v Warn $OUT/k_log.txt | tail -18
