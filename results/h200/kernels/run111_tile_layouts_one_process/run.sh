#!/usr/bin/env bash
# run 111 (session 16): shared against per-program int4 tile copies in ONE process
# (benchmarks/gpu/tile_copies_probe.py: each step sets the layout, windows alternate), OLMoE and
# Qwen3 int4 at 64 and 512 tokens, eager and captured, with host CPU time per step and the SM
# clock after each window. Runs 104 and 110 ran each layout in its own process, and the eager
# OLMoE 512-token step took 0.51-0.74 ms with shared copies against 0.36-0.40 per-program in both
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
timeout 300 python3 benchmarks/gpu/tile_copies_probe.py --out /tmp/r/tiles.json --graph --rounds 4 --window 1.0 \
  > /tmp/r/tiles_log.txt 2>&1
echo "probe rc=$?"; grep -v Warn /tmp/r/tiles_log.txt | cut -c1-160
tar czf $OUT/r.tgz -C /tmp r
