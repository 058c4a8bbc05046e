#!/usr/bin/env bash
# run 45: the cost model's int4 layer steps not yet profiled: moe_layer_int4:loop (per-expert
# Python loop, each expert dequantized per call) and moe_layer_int4:grouped_graph (grouped in a
# captured CUDA graph), the shapes and token counts of refresh 4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer_int4:grouped_graph,moe_layer_int4:loop \
  --tokens 1,64,1024,8192 --out $OUT/h200_int4_rest.json --deadline 320 > $OUT/log.txt 2>&1
tail -12 $OUT/log.txt
