#!/usr/bin/env bash
# run 72: (1) tune by energy, int4: DeepSeek-V3 at 64 and 512 tokens with 256-row tile-order
# candidates (w256t*: the activation tile read once per 256 weight rows) and the 64-token
# tile-order ones; OLMoE and Qwen3 at 64 tokens; (2) a table: run 71's with these picks;
# (3) layer steps at 64 and 512 tokens with grouped in each process (DeepSeek-V3 eager, new
# then run 71's table; OLMoE and Qwen3 captured and eager, new); (4) check
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p /tmp/r
S64=w64t16fp,w64t16dfp,w64t16fpx,w128t16fpx,w128t16s3fpx,w256t16s3fpx
tune() {  # name shape tokens candidates limit
  timeout $5 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/$1 --shapes $2 --sections tune --tokens $3 \
    --tune-weights int4 --tune-by energy --tune-energy-top 4 --tune-window 1.5 --tune-energy-rounds 2 \
    --tune-candidates $4 > /tmp/r/$1_log.txt 2>&1
  echo "== $1 rc=$?"; grep -E "tune T=|FAIL|rror" /tmp/r/$1_log.txt | cut -c1-700
  tar czf $OUT/r.tgz -C /tmp r
}
tune t_ds deepseek-v3 64,512 w128t32s3fpx,w256t32s3fpx,w256t32s2fpx,w256t16s3fpx,$S64 170
tune t_qw qwen3-30b-a3b 64 $S64 60
tune t_ol olmoe-1b-7b 64 $S64 60
cp results/h200/kernels/run71_int4_512/table.json /tmp/r/table71.json
python3 - <<'PY'
import json
t = json.load(open("/tmp/r/table71.json"))
c = t["configs"]
for name in ("t_ds", "t_qw", "t_ol"):
    try:
        tuned = json.load(open(f"/tmp/r/{name}/tuned_configs.json"))["configs"]
    except Exception as e:
        print(name, "no picks:", e); continue
    for shape, sizes in tuned.items():
        c.setdefault(shape, {}).update(sizes); print(name, shape, sizes)
t["source"] = "run 72: run 71's table with run 72's int4 picks (64 tokens; DeepSeek-V3 also 512)"
json.dump(t, open("/tmp/r/table.json", "w"), indent=1)
PY
lay() {  # i table shape tokens graph-variants
  export WATTMOE_KERNEL_CONFIGS=/tmp/r/$2.json
  timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/e$1_$2_$3 --shapes $3 --tokens $4 \
    --variants grouped,fused_int4 --sections energy --window 2 --graph-variants "$5" --graph-tokens 64,512 > /tmp/r/e$1_$2_$3_log.txt 2>&1
  echo "$1 $2 $3 rc=$?"; grep -E "^ +(grouped|fused)" /tmp/r/e$1_$2_$3_log.txt | cut -c1-130
  tar czf $OUT/r.tgz -C /tmp r
}
lay 1 table deepseek-v3 512,64 ""
lay 2 table71 deepseek-v3 512 ""
lay 4 table qwen3-30b-a3b 64,512 grouped+step_graph,fused_int4+step_graph
lay 5 table olmoe-1b-7b 64,512 grouped+step_graph,fused_int4+step_graph
export WATTMOE_KERNEL_CONFIGS=/tmp/r/table.json
timeout 60 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 512 \
  --sections check --check-cases uniform:64,skewed:64,uniform:512,skewed:512,hot:512 > /tmp/r/k_log.txt 2>&1
echo "check rc=$?"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -8
tar czf $OUT/r.tgz -C /tmp r
