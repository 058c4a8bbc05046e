#!/usr/bin/env bash
# run 120 (session 17): codes stored row-major against codes in tile order in ONE process
# (tile_copies_probe.py --compare storage: two layers of the same weights, alternating
# windows, host CPU time per step recorded), OLMoE and Qwen3 at 64 and 512 tokens, eager and
# captured. Run 119 ran each layout in its own process; its eager steps at 64 and 512 tokens
# (host-bound) moved up to 2x between processes of the same layout.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
timeout 400 python3 benchmarks/gpu/tile_copies_probe.py --out /tmp/r/storage.json --compare storage \
  --graph --rounds 4 --window 1.0 > /tmp/r/storage_log.txt 2>&1
echo "probe rc=$?"; grep -v Warn /tmp/r/storage_log.txt | cut -c1-170
tar czf $OUT/r.tgz -C /tmp r
