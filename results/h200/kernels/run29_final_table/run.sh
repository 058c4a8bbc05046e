#!/usr/bin/env bash
# run 29: cost model's moe_layer:fused* points re-measured with the current tuned table and
# fused routing; then the full energy table (3 shapes x 4 step sizes) at the session's end
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer:fused,moe_layer:fused_graph --tokens 1,64,1024,8192 \
  --out $OUT/p/h200_fused_refresh.json --deadline 200 > $OUT/p_log.txt 2>&1
python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --sections energy \
  --variants loop,grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > $OUT/k_log.txt 2>&1
tail -4 $OUT/p_log.txt; tail -30 $OUT/k_log.txt
