#!/usr/bin/env bash
# run 122 (session 17): the final HEAD after the review mends (whole-step graphs' signature now
# has the expert modules and int4 layout changes; stacks check every member's layout once per
# layout change): every backend against fp32, rows and tiles, the whole step captured too, and
# `wattmoe demo` with the default backend on the GPU (as run 121)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
for L in rows tiles; do
  timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_$L --sections check --int4-layout $L \
    --check-step-graph fused > /tmp/r/c_${L}_log.txt 2>&1
  echo "check $L rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_${L}_log.txt | grep -E "check|rror" | cut -c1-160
done
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
timeout 60 $D --steps 8000 --int4 > /tmp/r/demo_int4.txt 2>&1; echo "demo int4 rc=$? at $((SECONDS-T0)) s"
grep -E "experts|median step|energy per token|mean power|memory of one|heuristic" /tmp/r/demo_int4.txt
tar czf $OUT/r.tgz -C /tmp r
