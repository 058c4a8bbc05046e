#!/usr/bin/env bash
# run 115 (session 16): the int4 group size against the kernels' scale pairs. Run 114: the
# gpt-oss-120b-like shape (H=F=2880) quantizes with groups of 64 (the largest power of two
# dividing both widths), so a row's halves (1440 columns) are not whole groups: no scale pairs,
# no tile order, and its int4 step at 4096 tokens spent 605.6 uJ/token against 390.3 for fused
# bf16. Groups of 32 make the halves whole. Likewise Qwen1.5-MoE's down rows (F=1408: halves of
# 704 columns) with groups of 128 against 64. Layer steps, int4 fused, eager at 512 and 4096
# tokens and captured at 512, old (default group) / new / new / old in one lease; the new
# groups checked against fp32 once
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
for spec in "h2880_f2880_swiglu_e128_k4 64 32" "qwen1.5-moe-a2.7b 128 64"; do
  set -- $spec; shape=$1; old=$2; new=$3
  timeout 100 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c_${shape}_g$new --shapes $shape \
    --int4-group $new --sections check --check-backends fused,fused_graph > /tmp/r/c_${shape}_g${new}_log.txt 2>&1
  echo "$shape check g$new rc=$? at $((SECONDS-T0)) s: $(grep -h 'check:' /tmp/r/c_${shape}_g${new}_log.txt | tail -1)"
  i=0
  for g in $old $new $new $old; do
    i=$((i+1))
    timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_${shape}_${i}_g$g --shapes $shape \
      --int4-group $g --tokens 512,4096 --sections energy --variants fused_int4 \
      --graph-variants fused_int4+step_graph --graph-tokens 512 --window 1.5 > /tmp/r/e_${shape}_${i}_g${g}_log.txt 2>&1
    echo "$shape $i g$g rc=$? at $((SECONDS-T0)) s"; grep -E "^ +fused_int4|copies" /tmp/r/e_${shape}_${i}_g${g}_log.txt | cut -c1-110
    tar czf $OUT/r.tgz -C /tmp r
  done
done
