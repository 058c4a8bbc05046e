#!/usr/bin/env bash
# run 73: the shipped table with session 10's int4 entries (tile-order words and pairs), no
# user table: layer steps at 64 and 512 tokens with grouped in each process (DeepSeek-V3 eager;
# OLMoE and Qwen3 captured and eager), then a check of every backend at 64 and 512 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
lay() {  # shape graph-variants
  timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e_$1 --shapes $1 --tokens 64,512 \
    --variants grouped,fused_int4 --sections energy --window 2 --graph-variants "$2" --graph-tokens 64,512 > /tmp/r/e_$1_log.txt 2>&1
  echo "$1 rc=$?"; grep -E "^ +(grouped|fused)" /tmp/r/e_$1_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay deepseek-v3 ""
lay qwen3-30b-a3b grouped+step_graph,fused_int4+step_graph
lay olmoe-1b-7b grouped+step_graph,fused_int4+step_graph
timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512 \
  --sections check --check-cases uniform:64,skewed:64,uniform:512,skewed:512,hot:512,capacity:512 > /tmp/r/k_log.txt 2>&1
echo "check rc=$?"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -8
tar czf $OUT/r.tgz -C /tmp r
