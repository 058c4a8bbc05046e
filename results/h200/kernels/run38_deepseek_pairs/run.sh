#!/usr/bin/env bash
# run 38: the cost model's layer steps of the fused backends with int4 experts (new ops
# moe_layer_int4:<backend>) and bf16 (refresh 4, after runs 30-37), and DeepSeek-V3 int4
# tuned with scale pair words
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
mkdir -p $OUT/p
python3 -m wattmoe profile --devices cuda:0 --shapes tiny,olmoe-1b-7b,mixtral-8x7b@0.5 --dtypes bf16 \
  --ops moe_layer_int4:fused_graph,moe_layer_int4:fused,moe_layer_int4:grouped,moe_layer:fused_graph,moe_layer:fused \
  --tokens 1,64,1024,8192 --out $OUT/p/h200_layer_refresh.json --deadline 330 > $OUT/p/log.txt 2>&1
I4=w64t16f,w64t16fp,w64t16df,w64t16dfp,w64t32f,w64t32fp,w128t128f,w128t128fp
python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes deepseek-v3 --tokens 64,512 \
  --tune-tokens 64,512,4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > $OUT/t_log.txt 2>&1
tar czf $OUT/t.tgz -C /tmp t
tail -3 $OUT/p/log.txt; grep "tune T" $OUT/t_log.txt | cut -c1-900
