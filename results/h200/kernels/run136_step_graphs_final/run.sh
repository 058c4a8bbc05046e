#!/usr/bin/env bash
# run 136 (session 19): the final step-graph default (fresh outputs: tensors over 1 KB cloned
# each, the small ones of a dtype packed in the graph and cloned once; run 134's review mends:
# no replay in grad mode or under autocast, the layer held weakly, auto's counts of real steps,
# routing path and auto resets in the key): (1) step_graphs_check.py; (2) energy of the
# default with the policy, off, and a bare GraphedLayer at 1/8/32/512 tokens; (3) wattmoe demo
# on the GPU with every default, bf16 and --int4; (4) the host-time probe at 1 token
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/k
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 140 python3 benchmarks/gpu/step_graphs_check.py --out /tmp/r/check.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600 > /tmp/r/check_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "FAIL|check:|rror" | cut -c1-200
timeout 250 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --sections energy --tokens 1,8,32,512 \
  --int4-layout auto --variants auto,auto_int4,auto_eager,auto_int4_eager \
  --graph-variants fused+step_graph,fused_int4+step_graph --graph-tokens 1,8,32,512 --window 1.5 \
  > /tmp/r/k/k_log.txt 2>&1
echo "bench rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k/k_log.txt | grep -E "T=|rror|==" | cut -c1-130
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
for V in bf16 int4; do
  F=""; [ $V = int4 ] && F="--int4"
  timeout 60 $D --steps 8000 $F > /tmp/r/demo_$V.txt 2>&1; echo "demo $V rc=$? at $((SECONDS-T0)) s"
  grep -E "experts|median step|energy per token|mean power|heuristic" /tmp/r/demo_$V.txt | cut -c1-200
done
timeout 100 python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/r/host.json --tokens 1 > /tmp/r/host_log.txt 2>&1
echo "host probe rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/host_log.txt | grep -E " us$|rror" | cut -c1-120
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
