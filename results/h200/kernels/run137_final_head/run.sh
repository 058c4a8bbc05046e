#!/usr/bin/env bash
# run 137 (session 19): the final HEAD after the second review's mends (the layer's own
# GraphedLayer runs forward; routing path and auto resets in the weights signature; quantize
# and device moves drop the graphs): step_graphs_check.py, wattmoe demo with every default
# (bf16, --int4), and the host-time probe at 1 token
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 100 python3 benchmarks/gpu/step_graphs_check.py --out /tmp/r/check.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600 > /tmp/r/check_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "FAIL|check:|rror" | cut -c1-200
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
for V in bf16 int4; do
  F=""; [ $V = int4 ] && F="--int4"
  timeout 45 $D --steps 8000 $F > /tmp/r/demo_$V.txt 2>&1; echo "demo $V rc=$? at $((SECONDS-T0)) s"
  grep -E "experts|median step|energy per token|mean power|heuristic" /tmp/r/demo_$V.txt | cut -c1-200
done
timeout 60 python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/r/host.json --tokens 1 > /tmp/r/host_log.txt 2>&1
echo "host probe rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/host_log.txt | grep -E "policy|bare|as shipped|rror" | cut -c1-120
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
