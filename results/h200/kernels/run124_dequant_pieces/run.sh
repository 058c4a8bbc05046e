#!/usr/bin/env bash
# run 124 (session 18): (1) an int4 stack dequantized whole or a few experts at a time (what
# `grouped` int4 steps and `auto`'s calibration run), peak and time, both in one process;
# (2) the default backend's memory after int4 steps (reserved: graph pools included) at HEAD
# and with `--keep-loser-graphs` (as before `auto` dropped the graphs its calibration captured
# for losing candidates); (3) every backend against fp32 at HEAD with the default int4 policy
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 benchmarks/gpu/dequant_pieces_probe.py --out /tmp/r/pieces.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512 > /tmp/r/pieces_log.txt 2>&1
echo "pieces rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/pieces_log.txt | cut -c1-200
M="benchmarks/gpu/int4_layout_memory.py --layouts auto --backend auto --shapes deepseek-v3,olmoe-1b-7b --tokens 64,512,4096"
timeout 150 python3 $M --out /tmp/r/memory_head.json > /tmp/r/memory_head_log.txt 2>&1
echo "memory HEAD rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_head_log.txt | cut -c1-260
timeout 150 python3 $M --keep-loser-graphs --out /tmp/r/memory_keep.json > /tmp/r/memory_keep_log.txt 2>&1
echo "memory keep-loser-graphs rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_keep_log.txt | cut -c1-260
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_auto --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c_auto_log.txt 2>&1
echo "check auto rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_auto_log.txt | grep -E "check|rror|copies" | cut -c1-200
tar czf $OUT/r.tgz -C /tmp r
