#!/usr/bin/env bash
# run 95 (session 14): DeepSeek-V3 int4 at 16384 tokens, the shipped entry (w128t128f/w64t128k32f)
# against run 94's energy pick (w128t128fpx, table.json), layer steps with grouped in each process,
# in the order old, new, new, old (a drift falls on both alike), as run 65
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/e
i=0
for v in old new new old; do
  i=$((i+1))
  if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=$PWD/results/h200/kernels/run95_ds16k_pick/table.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  timeout 130 python3 benchmarks/gpu/kernels_bench.py --out /tmp/e/${i}_$v --shapes deepseek-v3 --tokens 16384 \
    --variants grouped,fused_int4 --sections energy --graph-variants "" --window 2 > /tmp/e/${i}_${v}_log.txt 2>&1
  echo "$i $v rc=$?"; grep -E "^ +(grouped|fused_int4) |config|chose" /tmp/e/${i}_${v}_log.txt | cut -c1-140
  tar czf $OUT/e.tgz -C /tmp e
done
