#!/usr/bin/env bash
# cost-model refresh 7 (session 12, run 84): the fused layer points of the profile's untuned
# shapes (tiny, mixtral-8x7b@0.5), bf16 and int4, eager and captured, re-measured with the sm_90
# heuristics that now pick their kernels (session 11 int4, session 12 bf16); the table's shapes
# are unchanged
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer:fused,moe_layer:fused_graph,moe_layer_int4:fused,moe_layer_int4:fused_graph \
  --tokens 1,64,1024,8192 --out $OUT/h200_heuristic_refresh.json --deadline 330 > $OUT/log.txt 2>&1
echo "profile rc=$?"; grep -v Warn $OUT/log.txt | grep -E "wrote|rror" | tail -3
