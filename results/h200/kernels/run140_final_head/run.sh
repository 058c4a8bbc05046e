#!/usr/bin/env bash
# run 140 (session 20): the final HEAD after the step-graph review mends (small outputs packed at
# 16-byte boundaries, only tensors up to 1 KiB; the routers' settings in the weights signature),
# int4 codes quantized straight into the stack (the first build adopts them), auto's
# calibration counting each candidate's routing, cheaper per-step checks:
# (1) step_graphs_check.py; (2) every backend against fp32 (kernels_bench check, whole step
# captured too); (3) GPU memory of an int4 layer's first fused steps, this code and 6edda69's
# (prev/: git archive of that commit); (4) host probe at 1 token; (5) energy of the default at
# 1 and 8 tokens, this code, 6edda69's, this code (A B A); (6) auto's decisions at 1024 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/c /tmp/r/kA /tmp/r/kB /tmp/r/kA2 /tmp/r/p
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 110 python3 benchmarks/gpu/step_graphs_check.py --out /tmp/r/check.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600 > /tmp/r/check_log.txt 2>&1
echo "step check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "FAIL|check:|rror" | cut -c1-200
timeout 90 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/c --sections check --int4-layout auto \
  --check-step-graph fused > /tmp/r/c/c_log.txt 2>&1
echo "backend check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/c/c_log.txt | grep -E "check:|rror|FAIL" | cut -c1-200 | tail -4
M="--layouts auto --backend fused --shapes olmoe-1b-7b,deepseek-v3 --tokens 64"
timeout 70 python3 benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory.json $M > /tmp/r/memory_log.txt 2>&1
echo "memory rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_log.txt | cut -c1-220
PYTHONPATH=$PWD/prev timeout 70 python3 prev/benchmarks/gpu/int4_layout_memory.py --out /tmp/r/memory_prev.json $M > /tmp/r/memory_prev_log.txt 2>&1
echo "memory 6edda69 rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/memory_prev_log.txt | cut -c1-220
timeout 40 python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/r/host_t1.json --tokens 1 --calls 640 > /tmp/r/host_t1_log.txt 2>&1
echo "host probe rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/host_t1_log.txt | grep -E "policy|bare|held|shipped|rror" | cut -c1-140
S="--sections energy --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 1,8 --int4-layout auto --window 1.5 --variants auto,auto_int4 --graph-variants"
timeout 50 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/kA $S "" > /tmp/r/kA/k_log.txt 2>&1
echo "bench A rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kA/k_log.txt | grep -E "T=|rror" | cut -c1-110
PYTHONPATH=$PWD/prev timeout 50 python3 prev/benchmarks/gpu/kernels_bench.py --out /tmp/r/kB $S "" > /tmp/r/kB/k_log.txt 2>&1
echo "bench B (6edda69) rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kB/k_log.txt | grep -E "T=|rror" | cut -c1-110
timeout 50 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/kA2 $S "" > /tmp/r/kA2/k_log.txt 2>&1
echo "bench A2 rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kA2/k_log.txt | grep -E "T=|rror" | cut -c1-110
timeout 45 python3 -m wattmoe -v profile --devices cuda:0 --shapes tiny,olmoe-1b-7b --dtypes bf16 --ops moe_layer:auto \
  --tokens 1024 --out /tmp/r/p/auto1024.json --deadline 40 > /tmp/r/p/log.txt 2>&1
echo "profile rc=$? at $((SECONDS-T0)) s"; grep -E "auto:|wrote|rror" /tmp/r/p/log.txt | cut -c1-260
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
