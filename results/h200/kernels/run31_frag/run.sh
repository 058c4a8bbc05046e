#!/usr/bin/env bash
# run 31: int4 fragment-ordered words ("...f" candidates): correctness (matrix check pinned to
# a frag candidate, fp16 included), tuning against the current picks, energy; check with the
# tuned table
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64k32dr16f --out $OUT/m.json > $OUT/m_log.txt 2>&1
I4=w64t64k32dr16,w64t64k32dr16f,w64t64k32r16,w64t64k32r16f,w64t64k32d,w64t64k32df,w64t64k32,w64t64k32f,w64t64k32dr32f,w64t128k32f,w64t16k128,w64t16k128f,w64t16d,w64t16df,w64t16f,w64t32f,w64t128,w64t128f,w64t128k32
python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512,1024 --sections tune,energy --tune-weights int4 --tune-candidates $I4 \
  --variants fused_int4 --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --window 2 > $OUT/k_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=$OUT/k/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out /tmp/c \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --sections check --check-step-graph fused > $OUT/c_log.txt 2>&1
tail -6 $OUT/m_log.txt; grep -v Warn $OUT/k_log.txt | grep "tune\|uJ\|T=" | cut -c1-900; tail -2 $OUT/c_log.txt
