#!/usr/bin/env bash
# run 60: the Gluon int4 gate/up probe (cp.async ring, async register-operand wgmma, next K
# step dequantized while the MMAs run) against Triton's same-tile launch and the table's, then
# ncu of both launches (Qwen3 at 512 tokens): pipe use and stall reasons
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -c "import triton; print('triton', triton.__version__)"
timeout 200 python3 benchmarks/gpu/gluon_int4_probe.py --out $OUT/gluon.json > $OUT/gluon_log.txt 2>&1
echo "rc=$?"; grep -v Warn $OUT/gluon_log.txt | tail -30
M='regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active'
for k in gate_up_int4 moe_gemm; do
  timeout 150 ncu --clock-control none --kernel-name regex:$k --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --metrics "$M" \
    python3 benchmarks/gpu/gluon_int4_probe.py --shapes qwen3-30b-a3b --out /tmp/g_$k.json > $OUT/ncu_$k.txt 2>&1
  echo "== $k rc=$?"; grep -E "gate_up_int4|moe_gemm|Duration|Registers Per|Warp Cycles Per Issued|Issued Ipc|No Eligible|Achieved Occ|pipe_.*pct|stalled_.*ratio" $OUT/ncu_$k.txt | awk '$NF+0 > 0.1 || /gate_up|moe_gemm|Duration|Registers|Eligible|Occ|Ipc|Cycles/' | head -60
done
