#!/usr/bin/env bash
# run 130 (session 19): the full table at HEAD with every default, the int4 layers with the
# layout policy they get by default ('auto': codes in tile order from the first fused step on
# sm_90; run 109's table had them row-major with one tile-order copy): kernels_bench check +
# energy (3 shapes x 64/512/4096/16384 tokens, loop/grouped/fused/int4, graphs at 64 and 512),
# as run 109
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/k
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 560 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --sections check,energy --check-step-graph fused \
  --int4-layout auto --variants loop,grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > /tmp/r/k/k_log.txt 2>&1
echo "rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k/k_log.txt | grep -E "check:|T=  512|rror|copies" | cut -c1-160
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
