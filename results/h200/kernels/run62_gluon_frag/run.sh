#!/usr/bin/env bash
# run 62: the fragment-word Gluon int4 gate/up kernel (the table's bit-operation asm, words of
# step i + 2 in registers while step i's MMAs run and step i + 1 is dequantized) against the
# table's launch, OLMoE and Qwen3 at 512 tokens; ncu of both launches (Qwen3)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 200 python3 benchmarks/gpu/gluon_int4_probe.py --out $OUT/gluon.json > $OUT/gluon_log.txt 2>&1
echo "rc=$?"; grep -v Warn $OUT/gluon_log.txt | grep -E "^\{|Error|error" | cut -c1-200 | tail -40
M='regex:sm__pipe_.*_cycles_active\.avg\.pct_of_peak_sustained_active,regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,regex:sm__inst_executed_pipe_.*\.avg\.pct_of_peak_sustained_active'
for k in gate_up_int4_frag moe_gemm; do
  if [ $k = moe_gemm ]; then o=table; else o="gluon frag bt32 bk64 s2"; fi
  timeout 150 ncu --clock-control none --kernel-name regex:$k --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats --metrics "$M" \
    python3 benchmarks/gpu/gluon_int4_probe.py --shapes qwen3-30b-a3b --only "$o" --out /tmp/g_$k.json > $OUT/ncu_$k.txt 2>&1
  echo "== $k rc=$?"; grep -E "gate_up_int4|moe_gemm|Duration|Registers Per|Warp Cycles Per Issued|Issued Ipc|No Eligible|Achieved Occ|pipe_(alu|fma|xu|tensor|lsu|shared)_cycles.*pct|stalled_.*ratio" $OUT/ncu_$k.txt | awk '$NF+0 > 0.1 || /gate_up|moe_gemm|Duration|Registers|Eligible|Occ|Ipc|Cycles/' | head -40
done
