#!/usr/bin/env bash
# run 36: GPU verification of session 5's review fixes (fragment words refreshed before every
# graph replay, int4 stacks outside inference mode, capture guard; fused_matrix_check's
# in-place-write step), the check/energy table with the committed configs, and ncu stall
# reasons of the int4 launches at 512 OLMoE tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" > $OUT/versions.txt
python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64k32r16f --out $OUT/mf.json > $OUT/mf_log.txt 2>&1
python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --sections check,energy --check-step-graph fused \
  --variants grouped,fused,fused_int4 --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --tokens 64,512,4096 --graph-tokens 64,512 --graph-max-experts 128 --window 2 > $OUT/k_log.txt 2>&1
timeout 150 ncu --clock-control none --kernel-name regex:moe_gemm --launch-skip 4 --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section SchedulerStats \
  --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio \
  python3 benchmarks/gpu/step_profile.py --ncu --tokens 512 --variants fused_int4 > $OUT/ncu_stalls.txt 2>&1
tail -3 $OUT/m_log.txt; tail -3 $OUT/mf_log.txt; grep -v Warn $OUT/k_log.txt | tail -14
grep -E "moe_gemm_wt|Duration|stalled_.*ratio" $OUT/ncu_stalls.txt | awk '$NF+0 > 0.05 || /moe_gemm|Duration/'
