#!/usr/bin/env bash
# run 39: the committed table at the end of session 6: check (every backend against the fp32
# reference, poisoned outputs) and the energy table, 3 shapes x 64/512/4096 tokens, graphs at 64/512
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --sections check,energy --check-step-graph fused \
  --variants grouped,fused,fused_int4 --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --tokens 64,512,4096 --graph-tokens 64,512 --graph-max-experts 128 --window 2 > $OUT/k_log.txt 2>&1
tar czf $OUT/k.tgz -C /tmp k
grep -v Warn $OUT/k_log.txt | tail -14
