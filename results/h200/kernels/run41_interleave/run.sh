#!/usr/bin/env bash
# run 41: interleaved gate/up rows ("...i"): matrix check pinned to w64t64k32r16fpi (with the
# in-place weight swap), int4 tuned by GPU time with and without interleaving (OLMoE, Qwen3;
# 64, 512, 1024, 4096 tokens), energy at 64 and 512 with that table
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64k32r16fpi --out $OUT/m.json > $OUT/m_log.txt 2>&1
I4=w64t16fp,w64t16fpi,w64t32fp,w64t32fpi,w64t64k32r16fp,w64t64k32r16fpi,w64t64k32dr16fpi,w64t64r16fp,w64t64r16fpi,w64t64s3r16fpi,w64t128fp,w64t128fpi,w128t128fp,w128t128fpi
python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512,1024,4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > $OUT/t_log.txt 2>&1
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out /tmp/e \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 --sections energy --variants grouped,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph --graph-tokens 64,512 --window 2 > $OUT/e_log.txt 2>&1
tar czf $OUT/te.tgz -C /tmp t e
tail -3 $OUT/m_log.txt; grep "tune T" $OUT/t_log.txt | cut -c1-1300; grep -v Warn $OUT/e_log.txt | tail -6
