#!/usr/bin/env bash
# run 114 (session 16): shapes no table entry or tuning has seen, as a new user would bring them
# (the fused kernels on heuristic configs): gpt-oss-120b-like (H=F=2880, 128 experts, top-4, int4
# groups of 64), DBRX-like (H=6144, F=10752, 16 experts, top-4) and Qwen2-57B-A14B-like (H=3584,
# F=2560, 64 experts, top-8): kernels_bench check (fused, fused_graph, grouped; default cases) and
# the energy table (grouped, fused bf16, fused int4 at 64/512/4096 tokens; graphs at 64 and 512)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
timeout 540 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k \
  --shapes h2880_f2880_swiglu_e128_k4,h6144_f10752_swiglu_e16_k4,h3584_f2560_swiglu_e64_k8 \
  --sections check,energy --check-backends grouped,fused,fused_graph --tokens 64,512,4096 \
  --variants grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 64,512 --graph-max-experts 128 --window 2 > /tmp/r/k_log.txt 2>&1
echo "rc=$?"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|T=|error|FAIL|copies" | cut -c1-120
tar czf $OUT/r.tgz -C /tmp r
