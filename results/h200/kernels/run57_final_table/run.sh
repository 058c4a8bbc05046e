#!/usr/bin/env bash
# run 57: the committed kernels and table at the end of session 8: the matrix check
# (fused_matrix_check, the table's configs), kernels_bench check + the full energy table (3
# shapes x 64/512/4096/16384 tokens, loop/grouped/fused/int4, graphs at 64 and 512), then the
# floors at 512 tokens against this run's layer steps (floor_probe --layer-json)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 100 python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
tail -1 $OUT/m_log.txt
timeout 300 python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --sections check,energy --check-step-graph fused \
  --variants loop,grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > /tmp/k_log.txt 2>&1
mkdir -p /tmp/k; cp /tmp/k_log.txt /tmp/k/; tar czf $OUT/k.tgz -C /tmp k
grep -v Warn /tmp/k_log.txt | tail -17
timeout 185 python3 benchmarks/gpu/floor_probe.py --out /tmp/k/floor.json --layer-json /tmp/k/kernels_bench.json \
  > /tmp/k/floor_log.txt 2>&1
tar czf $OUT/k.tgz -C /tmp k
tail -6 /tmp/k/floor_log.txt
