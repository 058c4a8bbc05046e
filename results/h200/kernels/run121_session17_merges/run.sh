#!/usr/bin/env bash
# run 121 (session 17): after the merges of session 17 (default int4 group = the pair group
# where one exists; `auto` the default expert backend; codes in tile order):
# 1. fused_matrix_check with the new default groups (its scaled-down cases now use 64 on three
#    of four shapes); 2. every backend against fp32 with the codes in tile order at HEAD (the
#    copies made from tile-order codes are now decoded an expert at a time), plus the
#    gpt-oss-like shape (default group now 32: 64-row tiles of 32-byte K steps, read in place);
# 3. its memory in both layouts; 4. `wattmoe demo` on the GPU, full OLMoE width, 512 tokens a
#    step, bf16: the default backend (auto) against loop, and int4 with the default
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/m
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 benchmarks/gpu/fused_matrix_check.py --out /tmp/r/m/matrix.json > /tmp/r/m_log.txt 2>&1
echo "matrix rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/m_log.txt | tail -4 | cut -c1-160
timeout 170 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c --sections check --int4-layout tiles \
  --check-step-graph fused --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3,h2880_f2880_swiglu_e128_k4 \
  > /tmp/r/c_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c_log.txt | grep -E "check|rror|copies" | cut -c1-160
timeout 60 python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory_gptoss.json \
  --shapes h2880_f2880_swiglu_e128_k4 > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-200
D="python3 -m wattmoe.cli demo --preset olmoe-1b-7b --scale 1 --batch 4 --seq 128 --device cuda:0 --dtype bf16"
timeout 60 $D --steps 8000 > /tmp/r/demo_default.txt 2>&1; echo "demo default rc=$? at $((SECONDS-T0)) s"
timeout 60 $D --steps 1500 --backend loop > /tmp/r/demo_loop.txt 2>&1; echo "demo loop rc=$? at $((SECONDS-T0)) s"
timeout 60 $D --steps 8000 --int4 > /tmp/r/demo_int4.txt 2>&1; echo "demo int4 rc=$? at $((SECONDS-T0)) s"
for f in default loop int4; do grep -E "experts|median step|energy per token|mean power|timed" /tmp/r/demo_$f.txt; done
tar czf $OUT/r.tgz -C /tmp r
