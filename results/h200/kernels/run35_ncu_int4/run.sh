#!/usr/bin/env bash
# run 35: ncu on the int4 launches at 512 OLMoE tokens with fragment words and K constant
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
timeout 200 ncu --clock-control none --kernel-name regex:moe_gemm --launch-skip 4 --launch-count 2 \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
  --section LaunchStats --section SchedulerStats \
  python3 benchmarks/gpu/step_profile.py --ncu --tokens 512 --variants fused_int4 > $OUT/ncu_int4_512.txt 2>&1
grep -E "moe_gemm_wt|Duration|DRAM Throughput|Issued Warp|No Eligible|Active Warps Per|Registers Per|Achieved Occupancy|Warp Cycles Per Issued|Block Limit Reg" $OUT/ncu_int4_512.txt
