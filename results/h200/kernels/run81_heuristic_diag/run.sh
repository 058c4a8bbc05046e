#!/usr/bin/env bash
# run 81: (1) Qwen3 int4 at 512 tokens with the tile-order entry: what free dequantization would
# give (kernel_diag --energy: the experts step captured, table vs skipped dequantization);
# (2) the sm_90 int4 heuristic for untuned shapes, measured on Mixtral-8x7B (no tuned entry):
# tune section by energy over the heuristic's picks and the plain tiles at 64/512/4096 tokens,
# then layer steps (grouped and fused_int4) with no table (heuristic) against a user table
# naming the plain tiles (what untuned shapes got before session 11), order plain, heur, heur, plain
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
T0=$SECONDS
timeout 150 python3 benchmarks/gpu/kernel_diag.py --shape qwen3-30b-a3b --tokens 512 --energy 1.5 \
  --out $OUT/diag_qwen3.json > $OUT/diag_qwen3.txt 2>&1
echo "diag rc=$? at $((SECONDS-T0)) s"; grep -v Warn $OUT/diag_qwen3.txt | grep "T=" | cut -c1-220
timeout 170 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/tune --shapes mixtral-8x7b --sections tune \
  --tokens 64,512,4096 --tune-weights int4 --tune-by energy --tune-window 1.5 --tune-energy-top 6 \
  --tune-candidates w64t16,w64t16fpx,w64t128,w64t128fpx,w128t128,w128t128fpx > /tmp/r/tune_log.txt 2>&1
echo "tune rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/tune_log.txt | tail -25 | cut -c1-200
tar czf $OUT/r.tgz -C /tmp r
python3 - <<'PY'
import json
t = {"device": "nvidia_h200", "source": "run 81: the plain int4 tiles that untuned shapes got before session 11",
     "configs": {"E=8,H=4096,F=14336,swiglu,int4g128": {"128": "w64t16", "1024": "w128t128", "8192": "w128t128"}}}
json.dump(t, open("/tmp/r/plain.json", "w"), indent=1)
PY
lay() {  # i plain|heur
  if [ $2 = plain ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/r/plain.json; else unset WATTMOE_KERNEL_CONFIGS; fi
  [ $((SECONDS-T0)) -gt 520 ] && { echo "skip $1 $2"; return; }
  timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e$1_$2 --shapes mixtral-8x7b --tokens 512,4096 \
    --variants grouped,fused_int4 --sections energy --window 2 --graph-variants grouped+step_graph,fused_int4+step_graph \
    --graph-tokens 64 > /tmp/r/e$1_$2_log.txt 2>&1
  echo "$1 $2 rc=$? at $((SECONDS-T0)) s"; grep -E "^ +(grouped|fused)" /tmp/r/e$1_$2_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay 1 plain; lay 2 heur; lay 3 heur; lay 4 plain
nvidia-smi --query-gpu=temperature.gpu,clocks.sm --format=csv > $OUT/gpu_end.csv
