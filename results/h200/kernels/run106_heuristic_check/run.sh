#!/usr/bin/env bash
# run 106 (session 15): the int4 heuristic's new pick (w128t128fpx, run 105) checked against the fp32
# reference on the two untuned shapes run 105 measured (Mixtral-8x7B: tile order both launches;
# Qwen1.5-MoE-A2.7B: its down launch in row-major fragment words, K/2 = 704), fused and fused_graph,
# and nan_probe (fresh tokens and routing, copies remade in poisoned memory) on each
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes mixtral-8x7b,qwen1.5-moe-a2.7b \
  --sections check --check-backends fused,fused_graph \
  --check-cases uniform:1024,skewed:1024,uniform:4096,skewed:4096,hot:4096,uniform:16384 > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -6
tar czf $OUT/r.tgz -C /tmp r
for s in mixtral-8x7b:4096 qwen1.5-moe-a2.7b:16384; do
  n=${s%%:*}; t=${s#*:}
  timeout 60 python3 benchmarks/gpu/nan_probe.py --shape $n --weights int4 --tokens $t --config w128t128fpx \
    --repeats 6 --out /tmp/r/nan_$n.json > /tmp/r/nan_$n.txt 2>&1
  echo "nan $n rc=$? at $((SECONDS-T0)) s: $(grep -h 'bad of' /tmp/r/nan_$n.txt)"
  tar czf $OUT/r.tgz -C /tmp r
done
