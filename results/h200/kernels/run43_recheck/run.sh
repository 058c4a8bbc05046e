#!/usr/bin/env bash
# run 43: GPU re-check of what was committed after run 42 and ran on the CPU only (fused_route
# if/else, KW constexpr, graph wrappers' recapture rules, route_gate_bench capture, _launch
# descriptor in one place): matrix check with the table's configs, kernels_bench check with the
# step graph, and the captured step's timeline at 512 OLMoE tokens (bf16 and int4 fused)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" > $OUT/versions.txt
python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m.json > $OUT/m_log.txt 2>&1
python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --sections check --check-step-graph fused \
  --variants grouped,fused,fused_int4 --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --tokens 64,512,4096 --graph-tokens 64,512 --graph-max-experts 128 > /tmp/k_log.txt 2>&1
mkdir -p /tmp/p
for v in fused fused_int4; do
  python3 benchmarks/gpu/step_profile.py --graph --tokens 512 --variants $v --out /tmp/p/olmoe_512_$v.json > /tmp/p/log_$v.txt 2>&1
  python3 benchmarks/gpu/step_profile.py --graph --tokens 64 --variants $v --out /tmp/p/olmoe_64_$v.json > /tmp/p/log64_$v.txt 2>&1
done
python3 benchmarks/gpu/route_gate_bench.py --out /tmp/p/route_gate.json > /tmp/p/route_gate_log.txt 2>&1
cp /tmp/k_log.txt $OUT/k_log.txt
tar czf $OUT/kp.tgz -C /tmp k p
tail -3 $OUT/m_log.txt; grep -v Warn $OUT/k_log.txt | tail -6; for f in /tmp/p/log*.txt; do echo "== $f"; tail -25 $f; done; tail -8 /tmp/p/route_gate_log.txt
