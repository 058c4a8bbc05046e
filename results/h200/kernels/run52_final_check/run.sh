#!/usr/bin/env bash
# run 52: the final commit of session 7 re-checked: matrix with the table's configs and the
# kernels_bench check with the step graph (the kernels are run 46's; MODE 5 and the review's
# cost-model fixes were added since)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
tail -2 $OUT/m_log.txt
python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --sections check --check-step-graph fused \
  --variants grouped,fused,fused_int4 --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --tokens 64,512,4096 --graph-tokens 64,512 --graph-max-experts 128 > $OUT/k_log.txt 2>&1
tar czf $OUT/k.tgz -C /tmp k
grep -v Warn $OUT/k_log.txt | tail -3
