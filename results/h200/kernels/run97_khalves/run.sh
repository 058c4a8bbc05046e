#!/usr/bin/env bash
# run 97 (session 14): 256-row int4 down tiles unpacked in K halves (int4_split_form 2, 128
# registers, no wait; the table's w256t32s3w8fpx down launch of Qwen3 512 and DeepSeek-V3 512/4096)
# against the per-step wait (':whole' / 'whole') and the broken loop ('inflight', a timing floor
# only): nan_probe with fresh poisoned memory, then kernel_diag's captured experts step energy
# (two NVML windows per variant, the second round in reverse order)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
mkdir -p /tmp/r; nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu.txt
timeout 70 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --weights int4 --tokens 512 \
  --config w64t32r16fpx/w256t32s3w8fpx,w64t32r16fpx/w256t32s3w8fpx:whole --repeats 8 \
  --out /tmp/r/nan_qwen3.json > /tmp/r/nan_qwen3.txt 2>&1
timeout 90 python3 benchmarks/gpu/nan_probe.py --shape deepseek-v3 --weights int4 --tokens 512 \
  --config w128t32s3fpx/w256t32s3w8fpx --repeats 4 --poison-mb 2048 \
  --out /tmp/r/nan_dsv3.json > /tmp/r/nan_dsv3.txt 2>&1
grep -h "bad of" /tmp/r/nan_*.txt; tar czf $OUT/r.tgz -C /tmp r
for s in qwen3-30b-a3b:512:110 deepseek-v3:512,4096:150; do
  n=${s%%:*}; rest=${s#*:}; t=${rest%%:*}; lim=${rest##*:}
  timeout $lim python3 benchmarks/gpu/kernel_diag.py --shape $n --tokens $t \
    --variants table,whole,inflight --energy 2 --out /tmp/r/diag_$n.json > /tmp/r/diag_$n.txt 2>&1
  echo "rc $?" >> /tmp/r/diag_$n.txt; grep -E "us  \(|mJ per|^rc" /tmp/r/diag_$n.txt | cut -c1-150
  tar czf $OUT/r.tgz -C /tmp r
done
