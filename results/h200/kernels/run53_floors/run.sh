#!/usr/bin/env bash
# run 53: what could any kernel reach at 512 tokens per step? floor_probe.py (weight-byte
# streams, cuBLAS bmm on balanced pre-gathered work, the same GEMMs with L2-resident weights,
# fused/grouped experts on balanced and random routing) next to the layer steps of the same
# lease (kernels_bench energy at 512: eager and captured), and the bounds they put on the
# issue's 512-token targets
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/kernels_bench.py --out /tmp/k --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 \
  --sections energy --tokens 512 --variants grouped,fused,fused_int4 \
  --graph-variants grouped+step_graph,fused+step_graph,fused_int4+step_graph \
  --graph-tokens 512 --graph-max-experts 128 --window 2 > $OUT/k_log.txt 2>&1
tar czf $OUT/k.tgz -C /tmp k
tail -12 $OUT/k_log.txt
python3 benchmarks/gpu/floor_probe.py --out $OUT/floor.json --layer-json /tmp/k/kernels_bench.json \
  > $OUT/floor_log.txt 2>&1
cat $OUT/floor_log.txt | tail -40
