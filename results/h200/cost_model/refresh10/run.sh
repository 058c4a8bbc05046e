#!/usr/bin/env bash
# run 139 (session 20): cost-model refresh 10: the default backend's layer steps
# (moe_layer:auto, moe_layer_int4:auto: `auto` with its whole-step CUDA graphs, what a user's
# layer runs; never profiled before) and the bf16 fused layer steps (moe_layer:fused,
# moe_layer:fused_graph; last measured in refresh 4-5, sessions 5-6, before sessions 7-20's
# kernels and routing), tiny / OLMoE / Mixtral@0.5, 1-8192 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/p
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 560 python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer:auto,moe_layer_int4:auto,moe_layer:fused_graph,moe_layer:fused \
  --tokens 1,64,1024,8192 --out /tmp/r/p/h200_refresh10.json --deadline 540 > /tmp/r/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/p/log.txt | grep -E "wrote|rror|skip|deadline" | tail -5
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
