#!/usr/bin/env bash
# run 32: int4 fragment words tuned for DeepSeek-V3 (64, 512 tokens) and at 4096 tokens (three
# shapes), by GPU time; then energy (64, 512, 4096 tokens) and the check with that table
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
A=w64t16d,w64t16df,w64t16f,w64t16,w64t32,w64t32f,w64t16k128f
python3 benchmarks/gpu/kernels_bench.py --out $OUT/a --shapes deepseek-v3 --tokens 64,512 \
  --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $A > $OUT/tune_log.txt 2>&1
B=w128t128,w128t128f,w128t128df,w64t128,w64t128f,w64t128k32,w64t128k32f,w64t64k32r16f
WATTMOE_KERNEL_CONFIGS=$OUT/a/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/b \
  --tokens 4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $B >> $OUT/tune_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=$OUT/b/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/e \
  --tokens 64,512,4096 --sections energy --variants grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph --graph-tokens 64,512 \
  --graph-max-experts 128 --window 2 > $OUT/e_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=$OUT/b/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out $OUT/c \
  --sections check --check-step-graph fused > $OUT/c_log.txt 2>&1
tar czf $OUT/a_c.tgz -C $OUT a c && rm -rf $OUT/a $OUT/c
grep "tune T" $OUT/tune_log.txt | cut -c1-700; grep -v Warn $OUT/e_log.txt | tail -14; tail -1 $OUT/c_log.txt
