#!/usr/bin/env bash
# run 141 (session 20): time per call of the default layer at 1 and 8 tokens, this code (A) and
# 6edda69's (B: prev/, git archive of that commit, with this script copied in), alternating in
# separate processes A B A B A B (run 140's energy A B A at 1 token moved up to 44% between
# windows of the same code)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
for T in 1 8; do for i in 1 2 3; do
  timeout 60 python3 benchmarks/gpu/step_call_time.py --out /tmp/r/A_t${T}_$i.json --tokens $T > /tmp/r/A_t${T}_$i.txt 2>&1
  echo "A T=$T $i rc=$? at $((SECONDS-T0)) s"; grep -E " us|rror" /tmp/r/A_t${T}_$i.txt
  PYTHONPATH=$PWD/prev timeout 60 python3 prev/benchmarks/gpu/step_call_time.py --out /tmp/r/B_t${T}_$i.json --tokens $T > /tmp/r/B_t${T}_$i.txt 2>&1
  echo "B T=$T $i rc=$? at $((SECONDS-T0)) s"; grep -E " us|rror" /tmp/r/B_t${T}_$i.txt
done; done
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
