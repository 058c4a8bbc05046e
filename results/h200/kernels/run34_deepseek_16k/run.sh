#!/usr/bin/env bash
# run 34: with K constant: int4 fragment words for DeepSeek-V3 (64, 512, 4096 tokens) and at
# 16384 tokens (three shapes), tuned by GPU time; energy for those; check DeepSeek-V3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 110 python3 benchmarks/gpu/kernels_bench.py --out /tmp/a --shapes deepseek-v3 --tokens 64 \
  --tune-tokens 64,512,4096 --sections tune --tune-by gpu --tune-weights int4 \
  --tune-candidates w64t16f,w64t16df,w64t32f,w64t16k128f,w64t64k32f,w128t128f,w64t128f,w64t128k32f > $OUT/t_log.txt 2>&1
timeout 90 env WATTMOE_KERNEL_CONFIGS=/tmp/a/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/b \
  --tokens 16384 --sections tune --tune-by gpu --tune-weights int4 \
  --tune-candidates w128t128,w128t128f,w64t128f,w64t128k32f >> $OUT/t_log.txt 2>&1
timeout 120 env WATTMOE_KERNEL_CONFIGS=$OUT/b/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/e \
  --shapes deepseek-v3 --tokens 64,512,4096 --sections energy --variants grouped,fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 64 --window 2 > $OUT/e_log.txt 2>&1
grep "tune T" $OUT/t_log.txt | cut -c1-700; grep -v Warn $OUT/e_log.txt | tail -5
