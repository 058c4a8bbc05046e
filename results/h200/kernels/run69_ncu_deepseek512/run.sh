#!/usr/bin/env bash
# run 69: ncu of the DeepSeek-V3 int4 launches at 512 tokens (the table's w64t16r16fp, fp32
# dequantization, dequantization skipped) and the bf16 table launches: DRAM throughput, L2
# hit rate, occupancy and stall reasons. Question: the int4 launches read HBM at ~2.1-2.7 TB/s
# (runs 53, 68) where bf16's read it at ~96% of the stream rate; what binds them?
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
M='dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sector_hit_rate.pct,lts__t_sectors_srcunit_tex_op_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active,regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
timeout 480 ncu --clock-control none --kernel-name regex:moe_gemm --launch-count 24 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section SchedulerStats \
  --section WarpStateStats --section LaunchStats --metrics "$M" \
  python3 benchmarks/gpu/kernel_diag.py --ncu --shape deepseek-v3 --tokens 512 --out /tmp/d.json > $OUT/ncu_ds512.txt 2>&1
echo "rc=$?"
grep -E "moe_gemm|Duration|DRAM Throughput|dram__|lts__t_sector_hit|Registers Per|Achieved Occ|Theoretical Occ|Block Limit|Issued Ipc|No Eligible|Warp Cycles Per Issued|pipe_(alu|fma|tensor|lsu|uniform).*pct|stalled_(long|barrier|wait|math|short|mio|lg|dispatch|not_sel|selected|no_inst|sleep|branch|membar|drain|tex|imc|misc).*ratio" $OUT/ncu_ds512.txt \
  | awk '$NF+0 > 0.05 || /moe_gemm|Duration|Registers|Eligible|Occ|Ipc|Cycles|Limit|DRAM|dram|hit/' | cut -c1-150 | head -400
