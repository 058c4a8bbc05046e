#!/usr/bin/env bash
# run 42: the up scales loaded next to the up dequantization (a5412dc): matrix check with the
# table's configs, and the GPU time of the table's int4 picks at 64 and 512 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
I4=w64t16f,w64t16fp,w64t32fp,w64t64k32r16fp,w64t64r16fp
python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > $OUT/t_log.txt 2>&1
tar czf $OUT/t.tgz -C /tmp t
tail -3 $OUT/m_log.txt; grep "tune T" $OUT/t_log.txt | cut -c1-700
