#!/usr/bin/env bash
# run 28: GPU verification of session 4's untested commits + int4 two-warp-group tiles
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" > $OUT/versions.txt
python3 benchmarks/gpu/fused_matrix_check.py --out $OUT/m/matrix.json > $OUT/m_log.txt 2>&1
python3 benchmarks/gpu/kernels_bench.py --out $OUT/c --sections check --check-step-graph fused > $OUT/c_log.txt 2>&1
I4=w64t64k32,w64t64k32d,w64t64k32r16,w64t64k32dr16,w64t16k128,w64t128,w64t128k32,w128t64k32,w128t64k32d,w128t64k32s3,w128t64k32s3d,w128t32k32,w128t128k32,w128t128k32d
python3 benchmarks/gpu/kernels_bench.py --out $OUT/k --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 512 --tune-tokens 512,1024 \
  --sections tune,energy --tune-weights int4 --tune-candidates $I4 --variants fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph --graph-tokens 512 --window 2 > $OUT/k_log.txt 2>&1
tail -3 $OUT/m_log.txt; tail -3 $OUT/c_log.txt; tail -40 $OUT/k_log.txt
