#!/usr/bin/env bash
# run 113 (session 16): K halves on 64-row gate/up tiles of the 512- and 1024-token int4 entries
# (run 112's kernel_diag: Qwen3 512 gate/up w64t32r16fpx 102.7 us in K halves against 106.5 in
# nibble halves; run 102 had K halves on the 64-token entries' w64t16fpx +2.7-3.2%): captured
# experts steps, two NVML windows per variant in alternating order (kernel_diag --energy)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 200 python3 benchmarks/gpu/kernel_diag.py --shape qwen3-30b-a3b --tokens 512,1024 \
  --variants table,khalves_up,khalves --energy 1.5 --out /tmp/r/diag_qwen3.json > /tmp/r/diag_qwen3_log.txt 2>&1
echo "qwen3 rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/diag_qwen3_log.txt | grep -E "^T=|mJ" | cut -c1-140
tar czf $OUT/r.tgz -C /tmp r
timeout 200 python3 benchmarks/gpu/kernel_diag.py --shape olmoe-1b-7b --tokens 512,1024 \
  --variants table,khalves_up --energy 1.5 --out /tmp/r/diag_olmoe.json > /tmp/r/diag_olmoe_log.txt 2>&1
echo "olmoe rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/diag_olmoe_log.txt | grep -E "^T=|mJ" | cut -c1-140
tar czf $OUT/r.tgz -C /tmp r
