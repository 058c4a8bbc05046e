#!/usr/bin/env bash
# run 138 (session 20): the step-graph replay's short path (GraphedLayer._replay_held: one key,
# one weights signature) and fresh outputs packed into one byte buffer (one clone at 1 token,
# was 3): (1) step_graphs_check.py; (2) the host probe at 1 and 8 tokens (host and step time per
# call, batches of 64); (3) energy of the default (auto, auto_int4) and a bare GraphedLayer at
# 1/8/32/512 tokens, then the previous HEAD 6edda69's default (prev/, git archive of that
# commit), then this code's default again (A B A, one lease)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r/kA /tmp/r/kB /tmp/r/kA2
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 130 python3 benchmarks/gpu/step_graphs_check.py --out /tmp/r/check.json \
  --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 1,8,32,512,600 > /tmp/r/check_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/check_log.txt | grep -E "FAIL|check:|rror" | cut -c1-200
for T in 1 8; do
  timeout 60 python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/r/host_t$T.json --tokens $T --calls 640 > /tmp/r/host_t${T}_log.txt 2>&1
  echo "host probe T=$T rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/host_t${T}_log.txt | grep -E "policy|bare|held|shipped|replay alone|rror" | cut -c1-140
done
S="--sections energy --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 1,8,32,512 --int4-layout auto --window 1.5"
timeout 130 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/kA $S --variants auto,auto_int4 \
  --graph-variants fused+step_graph,fused_int4+step_graph --graph-tokens 1,8,32,512 > /tmp/r/kA/k_log.txt 2>&1
echo "bench A rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kA/k_log.txt | grep -E "T=|rror" | cut -c1-130
PYTHONPATH=$PWD/prev timeout 90 python3 prev/benchmarks/gpu/kernels_bench.py --out /tmp/r/kB $S --variants auto,auto_int4 \
  --graph-variants "" > /tmp/r/kB/k_log.txt 2>&1
echo "bench B (6edda69) rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kB/k_log.txt | grep -E "T=|rror" | cut -c1-130
timeout 90 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/kA2 $S --variants auto,auto_int4 \
  --graph-variants "" > /tmp/r/kA2/k_log.txt 2>&1
echo "bench A2 rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/kA2/k_log.txt | grep -E "T=|rror" | cut -c1-130
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_end.csv
tar czf $OUT/r.tgz -C /tmp r
