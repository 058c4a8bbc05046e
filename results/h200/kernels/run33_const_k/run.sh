#!/usr/bin/env bash
# run 33: K as a compile-time constant (no serialized register-operand wgmma in the int4
# launches): int4 re-tuned by GPU time (OLMoE, Qwen3; 64, 512, 1024, 4096 tokens); energy and
# checks with that table
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64k32r16f --out /tmp/m.json > $OUT/m_log.txt 2>&1
I4=w64t16f,w64t16df,w64t32f,w64t64k32f,w64t64k32r16f,w64t64k32r32f,w64t64k32dr16f,w64t128f,w64t128k32f,w128t128f,w64t16k128f,w64t64f,w64t64r16f,w64t64k32dr16
python3 benchmarks/gpu/kernels_bench.py --out $OUT/t --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512,1024,4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > $OUT/t_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=$OUT/t/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/e \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512,4096 --sections energy --variants grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph --graph-tokens 64,512 --window 2 > $OUT/e_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=$OUT/t/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out /tmp/c \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --sections check --check-step-graph fused > $OUT/c_log.txt 2>&1
tail -3 $OUT/m_log.txt; grep "tune T" $OUT/t_log.txt | cut -c1-900; grep -v Warn $OUT/e_log.txt | tail -9; tail -1 $OUT/c_log.txt
