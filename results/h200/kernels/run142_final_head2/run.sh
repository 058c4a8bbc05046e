#!/usr/bin/env bash
# run 142 (session 20): the final HEAD after the second review's mends (auto's routing timer
# inside the calibration, routed decisions keyed apart, no timing with a strategy's own bias or
# router hooks): step_graphs_check.py; every backend against fp32; auto's decisions (-v) at
# 64/1024 tokens; wattmoe demo on the GPU with every default, bf16 and --int4
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/c /tmp/r/p
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 110 python3 benchmarks/gpu/step_graphs_check.py --out /tmp/r/check.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600 > /tmp/r/check_log.txt 2>&1
echo "step check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "FAIL|check:|rror" | cut -c1-200
timeout 90 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c/c_log.txt 2>&1
echo "backend check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c/c_log.txt | grep -E "^check:|rror|FAIL" | cut -c1-200 | tail -3
timeout 60 python3 -m wattmoe -v profile --devices cuda:0 --shapes tiny,olmoe-1b-7b --dtypes bf16 \
  --ops moe_layer:auto,moe_layer_int4:auto --tokens 64,1024 --out /tmp/r/p/auto.json --deadline 55 > /tmp/r/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -E "auto:|wrote|rror" /tmp/r/p/log.txt | cut -c1-300
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
for V in bf16 int4; do
  F=""; [ $V = int4 ] && F="--int4"
  timeout 60 $D --steps 8000 $F > /tmp/r/demo_$V.txt 2>&1; echo "demo $V rc=$? at $((SECONDS-T0)) s"
  grep -E "experts|median step|energy per token|mean power" /tmp/r/demo_$V.txt | cut -c1-200
done
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
