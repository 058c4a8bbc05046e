#!/usr/bin/env bash
# run 65: DeepSeek-V3 bf16 at 4096 tokens, the shipped entry (w64t128dr16/m128n256d) against
# run 64's energy pick (w128t128dr16/m128n256d, table.json), layer steps with grouped in each
# process, in the order old, new, new, old (a drift falls on both alike)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/e
i=0
for v in old new new old; do
  i=$((i+1))
  if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=$PWD/results/h200/kernels/run65_ds4096_pick/table.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/e/${i}_$v --shapes deepseek-v3 --tokens 4096 \
    --variants grouped,fused --sections energy --graph-variants "" --window 2 > /tmp/e/${i}_${v}_log.txt 2>&1
  echo "$i $v rc=$?"; grep -E "^ +(grouped|fused) " /tmp/e/${i}_${v}_log.txt | cut -c1-120
  tar czf $OUT/e.tgz -C /tmp e
done
