#!/usr/bin/env bash
# run 119 (session 17): the int4 layer steps with codes stored row-major (the fused kernels read
# their tile-order copy) and in tile order (read in place, SimpleMoELayer.set_int4_layout), the
# three table shapes at 64, 512 and 4096 tokens (eager) and 64, 512 (captured), in the order
# rows/tiles/tiles/rows, each in its own process (the same kernels on the same bytes: expected
# equal within the windows' spread); first the memory probe of run 118 again, after the layout
# change stopped rebuilding the stack (run 118's tiles peak held the codes twice)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 100 python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 64,512,4096 > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-200
i=0
for L in rows tiles tiles rows; do
  i=$((i+1))
  timeout 115 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e${i}_$L --sections energy \
    --int4-layout $L --variants fused_int4 --graph-variants fused_int4+step_graph \
    --graph-tokens 64,512 --tokens 64,512,4096 --window 2 > /tmp/r/e${i}_${L}_log.txt 2>&1
  echo "energy $i $L rc=$? at $((SECONDS-T0)) s"
  grep -v Warn /tmp/r/e${i}_${L}_log.txt | grep -E "copies|rror" | cut -c1-160
done
tar czf $OUT/r.tgz -C /tmp r
