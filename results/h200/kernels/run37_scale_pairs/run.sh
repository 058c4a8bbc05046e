#!/usr/bin/env bash
# run 37: int4 scale pair words ("...fp"): matrix check pinned to w64t64k32r16fp (with the
# in-place weight swap: pairs refreshed), int4 tuned by GPU time with and without pairs
# (OLMoE, Qwen3; 64, 512, 1024, 4096 tokens), energy with that table, ncu stall reasons
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64k32r16fp --out $OUT/m.json > $OUT/m_log.txt 2>&1
I4=w64t16f,w64t16fp,w64t32f,w64t32fp,w64t64k32r16f,w64t64k32r16fp,w64t64k32dr16f,w64t64k32dr16fp,w64t64r16f,w64t64r16fp,w64t128f,w64t128fp,w128t128f,w128t128fp
python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512,1024,4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > $OUT/t_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out /tmp/e \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512,4096 --sections energy --variants grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph --graph-tokens 64,512 --window 2 > $OUT/e_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json timeout 150 ncu --clock-control none --kernel-name regex:moe_gemm --launch-skip 4 --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section SchedulerStats \
  --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio \
  python3 benchmarks/gpu/step_profile.py --ncu --tokens 512 --variants fused_int4 > $OUT/ncu_stalls.txt 2>&1
tar czf $OUT/te.tgz -C /tmp t e
tail -3 $OUT/m_log.txt; grep "tune T" $OUT/t_log.txt | cut -c1-1200; grep -v Warn $OUT/e_log.txt | tail -9
grep -E "moe_gemm_wt|Duration|Registers Per|stalled_.*ratio" $OUT/ncu_stalls.txt | awk '$NF+0 > 0.1 || /moe_gemm|Duration|Registers/'
