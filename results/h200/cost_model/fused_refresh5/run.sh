#!/usr/bin/env bash
# run 40: the cost model's eager moe_layer:fused points not reached before run 38's deadline
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer:fused --tokens 1,64,1024,8192 --out $OUT/h200_fused_refresh.json --deadline 200 > $OUT/log.txt 2>&1
grep -E "wrote" $OUT/log.txt
