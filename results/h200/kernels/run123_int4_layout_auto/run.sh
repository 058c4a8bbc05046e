#!/usr/bin/env bash
# run 123 (session 18): the int4 layout policy 'auto' (the new default: codes stored in the
# fused kernels' tile order at a layer's first fused step on sm_90): every backend against fp32
# with the default policy (whole step captured too); GPU memory with the default backend and
# policy against codes pinned row-major; `wattmoe demo --int4` with every default; then the
# cost model's `tiny` int4 layer points re-measured with the new default group (32; the
# committed ones are groups of 64, session 17) for all five backends
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/p
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_auto --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c_auto_log.txt 2>&1
echo "check auto rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_auto_log.txt | grep -E "check|rror|copies" | cut -c1-200
timeout 240 python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory.json --layouts rows,auto --backend auto \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 64,512,4096 > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-220
D="python3 -m wattmoe.cli -v demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
timeout 90 $D --steps 8000 --int4 > /tmp/r/demo_int4.txt 2>&1; echo "demo int4 rc=$? at $((SECONDS-T0)) s"
grep -E "int4 layout|experts|median step|energy per token|mean power|memory of one|heuristic" /tmp/r/demo_int4.txt | cut -c1-220
timeout 300 python3 -m wattmoe profile --devices cuda:0 --shapes tiny --dtypes bf16 \
  --ops moe_layer_int4:loop,moe_layer_int4:grouped,moe_layer_int4:grouped_graph,moe_layer_int4:fused,moe_layer_int4:fused_graph \
  --tokens 1,64,1024,8192 --out /tmp/r/p/h200_tiny_int4_g32.json --deadline 270 > /tmp/r/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/p/log.txt | grep -E "wrote|rror" | tail -3
tar czf $OUT/r.tgz -C /tmp r
