#!/usr/bin/env bash
# run 55: int4 128-row tiles over two warp groups on 32-token tiles (w128t32r16fp,
# w128t32k32s3r16fp, ...) for Qwen3-30B-A3B at 512 tokens (32 +- 6 rows per expert): the
# activation tile read once per 128 weight rows at two CTAs per SM. Matrix check pinned to
# w128t32k32s3r16fp; tuned by GPU time against run 54's picks; the 512-token layer steps with
# the shipped table and the tuned one, same lease
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 110 python3 benchmarks/gpu/fused_matrix_check.py --int4-config w128t32k32s3r16fp --out $OUT/m.json > $OUT/m_log.txt 2>&1
tail -2 $OUT/m_log.txt
I4=w64t32r16fp,w64t32k32r16fp,w128t32r16fp,w128t32k32s3r16fp,w128t32fp,w128t32k32s3fp,w128t32r16f,w128t32k32s3r16f
timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes qwen3-30b-a3b --tokens 512 \
  --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > /tmp/t_log.txt 2>&1
grep "tune T" /tmp/t_log.txt | cut -c1-600
cp /tmp/t_log.txt /tmp/t/; tar czf $OUT/t.tgz -C /tmp t
E="--shapes qwen3-30b-a3b --sections energy --tokens 512 --variants fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 512 --window 2"
for v in old new; do
  if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json; fi
  timeout 70 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/e_$v $E > /tmp/t/e_${v}_log.txt 2>&1
  tail -4 /tmp/t/e_${v}_log.txt
  tar czf $OUT/t.tgz -C /tmp t
done
