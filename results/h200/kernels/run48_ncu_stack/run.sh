#!/usr/bin/env bash
# run 48: ncu of the int4 launches at 512 OLMoE tokens, the table's pick (w64t64r16fp gate/up,
# 8 warps per SM) and the stacked gate|up tile (w64t64r16fpg, 16 warps per SM, same time in
# run 47): pipe utilization and stall reasons, to see what bounds a program's K step
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
M='regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active'
for c in table stack; do
  if [ $c = stack ]; then export WATTMOE_KERNEL_CONFIGS=results/h200/kernels/run47_stack/t/tuned_configs.json; fi
  timeout 200 ncu --clock-control none --kernel-name regex:moe_gemm --launch-skip 4 --launch-count 2 \
    --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --metrics "$M" \
    python3 benchmarks/gpu/step_profile.py --ncu --tokens 512 --variants fused_int4 > $OUT/ncu_$c.txt 2>&1
  echo "== $c"; grep -E "moe_gemm_wt|Duration|Registers Per|Warp Cycles Per Issued|Issued Ipc|No Eligible|Achieved Occ|pipe_.*pct|stalled_.*ratio" $OUT/ncu_$c.txt | awk '$NF+0 > 0.1 || /moe_gemm|Duration|Registers|Eligible|Occ|Ipc|Cycles/' | head -60
done
