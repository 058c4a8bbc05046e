#!/usr/bin/env bash
# run 116 (session 16): the gpt-oss-like int4 layer at 4096 tokens with groups of 32 (run 115:
# 596 uJ/token against 390 for fused bf16): its 2880-row down launch cannot be whole 128-row
# tiles, so the heuristic's w128t128fpx reads a row-major copy there. Tuned by energy (captured
# experts steps): the heuristic's pick against pairs whose down launch has 64-row tiles
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
timeout 300 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/t --shapes h2880_f2880_swiglu_e128_k4 \
  --int4-group 32 --sections tune --tokens 4096 --tune-weights int4 --tune-by energy --tune-window 1.5 \
  --tune-energy-top 4 --tune-candidates w128t128fpx,w128t128fpx/w64t128fpx,w64t128fpx,w128t128fpx/w64t64r16fpx \
  > /tmp/r/t_log.txt 2>&1
echo "rc=$?"; grep -v Warn /tmp/r/t_log.txt | grep -iE "mJ|tune|best|pick|error" | cut -c1-140 | tail -20
tar czf $OUT/r.tgz -C /tmp r
