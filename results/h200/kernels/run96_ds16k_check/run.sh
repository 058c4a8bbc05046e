#!/usr/bin/env bash
# run 96 (session 14): (1) the shipped table's new DeepSeek-V3 int4 16384-token entry (w128t128fpx,
# runs 94-95) checked against the fp32 reference, fused and fused_graph, uniform and skewed routing;
# (2) nan_probe on that entry (fresh poisoned memory, int4 copies remade each repeat); (3) the cost
# model's int4 fused layer points re-measured with the shipped kernels (refresh 8:
# moe_layer_int4:fused_graph, moe_layer_int4:fused; tiny, OLMoE, Mixtral@0.5; 1-8192 tokens)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r $OUT/p
T0=$SECONDS
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes deepseek-v3 --tokens 16384 \
  --sections check --check-backends fused,fused_graph --check-cases uniform:16384,skewed:16384 > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -6
tar czf $OUT/r.tgz -C /tmp r
timeout 100 python3 benchmarks/gpu/nan_probe.py --shape deepseek-v3 --weights int4 --tokens 16384 \
  --config w128t128fpx --repeats 8 --out /tmp/r/nan_probe.json > /tmp/r/nan_log.txt 2>&1
echo "nan_probe rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/nan_log.txt | tail -4 | cut -c1-200
tar czf $OUT/r.tgz -C /tmp r
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer_int4:fused_graph,moe_layer_int4:fused --tokens 1,64,1024,8192 \
  --out $OUT/p/h200_int4_refresh.json --deadline $((420-(SECONDS-T0))) > $OUT/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -v Warn $OUT/p/log.txt | grep -E "wrote|rror" | tail -3
