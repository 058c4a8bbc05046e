#!/usr/bin/env bash
# run 110 (session 16): $WATTMOE_INT4_TILE_COPIES=per-program (each tile size its own int4 tile-order
# copy, as before facbe44) on the GPU itself for the first time (run 104 compared the layouts
# through $WATTMOE_INT4_TILE_ROWS=64 on 64-row steps only): (1) kernels_bench check (fused,
# fused_graph, default cases, three shapes, bf16 and int4) with the copies' bytes; (2) nan_probe on
# w64t16fpx (Qwen3, 64 tokens); (3) layer steps whose programs are all 64-row (OLMoE 64 and 512
# tokens, Qwen3 64; eager and captured): shared (default) against per-program, order old, new, new, old
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
export WATTMOE_INT4_TILE_COPIES=per-program
timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --sections check --check-backends fused,fused_graph \
  > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror|kernel copies" | tail -8
timeout 40 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --weights int4 --tokens 64 \
  --config w64t16fpx --repeats 6 --out /tmp/r/nan_qwen3_64.json > /tmp/r/nan_qwen3_64.txt 2>&1
echo "nan rc=$? at $((SECONDS-T0)) s: $(grep -h 'bad of' /tmp/r/nan_qwen3_64.txt)"
tar czf $OUT/r.tgz -C /tmp r
i=0
for v in old new new old; do
  i=$((i+1))
  if [ $v = old ]; then unset WATTMOE_INT4_TILE_COPIES; else export WATTMOE_INT4_TILE_COPIES=per-program; fi
  timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_${i}_$v --shapes olmoe-1b-7b,qwen3-30b-a3b \
    --tokens 64,512 --sections energy --variants fused_int4 --graph-variants fused_int4+step_graph \
    --graph-tokens 64,512 --window 1.5 > /tmp/r/e_${i}_${v}_log.txt 2>&1
  echo "$i $v rc=$? at $((SECONDS-T0)) s"; grep -E "^ +fused_int4" /tmp/r/e_${i}_${v}_log.txt | cut -c1-110
  tar czf $OUT/r.tgz -C /tmp r
done
