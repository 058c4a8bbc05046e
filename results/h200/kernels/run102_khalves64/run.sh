#!/usr/bin/env bash
# run 102 (session 15): (1) fused_matrix_check with every int4 layer forced to w128t128fpx at every size
# (run 100's forced run reached 1-token steps only: fixed in the script) ; (2) K halves on the 64-row
# down tiles of the 64-token entries (w64t16fpx; CPU compile, Triton 3.6: 71 registers against 96 in
# nibble halves, 246-248 K-loop instructions against 227): nan_probe on Qwen3, then kernel_diag's
# captured experts step energy, table (nibble halves) against K halves, three shapes at 64 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 benchmarks/gpu/fused_matrix_check.py --int4-config w128t128fpx --out /tmp/r/m_w128.json > /tmp/r/m_w128_log.txt 2>&1
echo "matrix w128t128fpx rc=$? at $((SECONDS-T0)) s"; tail -1 /tmp/r/m_w128_log.txt
tar czf $OUT/r.tgz -C /tmp r
timeout 60 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --weights int4 --tokens 64 \
  --config w64t16fpx,w64t16fpx:khalves --repeats 6 --out /tmp/r/nan_qwen3_64.json > /tmp/r/nan_qwen3_64.txt 2>&1
echo "nan rc=$? at $((SECONDS-T0)) s"; grep -h "bad of" /tmp/r/nan_qwen3_64.txt
tar czf $OUT/r.tgz -C /tmp r
for s in olmoe-1b-7b qwen3-30b-a3b deepseek-v3; do
  timeout 100 python3 benchmarks/gpu/kernel_diag.py --shape $s --tokens 64 \
    --variants table,khalves --energy 2 --out /tmp/r/diag_$s.json > /tmp/r/diag_$s.txt 2>&1
  echo "rc $? at $((SECONDS-T0)) s" >> /tmp/r/diag_$s.txt; grep -E "us  \(|mJ per|^rc" /tmp/r/diag_$s.txt | cut -c1-150
  tar czf $OUT/r.tgz -C /tmp r
done
