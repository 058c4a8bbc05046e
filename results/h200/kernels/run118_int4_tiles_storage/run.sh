#!/usr/bin/env bash
# run 118 (session 17): int4 codes stored in the fused kernels' tile order
# (SimpleMoELayer.set_int4_layout('tiles'), read in place instead of a copy): GPU memory of the
# three table shapes in both layouts (caching allocator, after fused steps at 64-4096 tokens),
# then every backend checked against fp32 with the codes in tile order (default cases,
# poisoned outputs, the whole step captured too)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 200 python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 64,512,4096 > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-200
timeout 330 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c --sections check \
  --int4-layout tiles --check-step-graph fused > /tmp/r/c_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_log.txt | grep -E "check|FAIL|rror|copies" | cut -c1-160 | tail -30
tar czf $OUT/r.tgz -C /tmp r
