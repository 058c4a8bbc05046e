#!/usr/bin/env bash
# run 131 (session 19): decode-sized steps (1, 8 and 32 tokens per step), which the table
# (64-16384) does not cover: energy per token of every backend, the whole step in a CUDA graph
# too (all three shapes, DeepSeek-V3 included), and the default backend (`auto`, bf16 and
# int4; each row records what it ran). Int4 with the default layout policy.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/k
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 540 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --sections energy --tokens 1,8,32 \
  --int4-layout auto --variants loop,grouped,fused,fused_int4,auto,auto_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 1,8,32 --window 1.5 > /tmp/r/k/k_log.txt 2>&1
echo "rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k/k_log.txt | grep -E "T=|rror|==" | cut -c1-150
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
