#!/usr/bin/env bash
# run 107 (session 15): the cost model's int4 fused layer points re-measured (refresh 9) with session 15's
# kernels: OLMoE's 4096+-token entry in K halves (runs 98-100), the int4 heuristic's 128-row pick above 96
# rows per expert (Mixtral@0.5 and tiny at 1024-8192 tokens; run 105), one tile-order copy per stack
# (run 104); the same 24 points as refresh 8 (run 96): moe_layer_int4:fused_graph and :fused, tiny,
# OLMoE, Mixtral@0.5, 1-8192 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
mkdir -p $OUT/p
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
T0=$SECONDS
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer_int4:fused_graph,moe_layer_int4:fused --tokens 1,64,1024,8192 \
  --out $OUT/p/h200_int4_refresh.json --deadline 330 > $OUT/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -v Warn $OUT/p/log.txt | grep -E "wrote|rror" | tail -3
