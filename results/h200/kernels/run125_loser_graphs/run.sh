#!/usr/bin/env bash
# run 125 (session 18): run 124's memory comparison again, reading reserved memory after
# torch.cuda.empty_cache() (run 124 read it with the first steps' peak still cached): the
# default backend after int4 steps, with and without `auto` dropping the graphs its
# calibration captured for the candidates it did not choose
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
M="benchmarks/gpu/int4_layout_memory.py --layouts auto --backend auto --shapes deepseek-v3,olmoe-1b-7b --tokens 64,512,4096"
for V in head keep; do
  F=""; [ $V = keep ] && F="--keep-loser-graphs"
  timeout 150 python3 $M $F --out /tmp/r/memory_$V.json > /tmp/r/memory_${V}_log.txt 2>&1
  echo "memory $V rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_${V}_log.txt | cut -c1-300
done
tar czf $OUT/r.tgz -C /tmp r
