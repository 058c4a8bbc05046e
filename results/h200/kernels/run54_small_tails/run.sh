#!/usr/bin/env bash
# run 54: int4 tails on 16- and 32-token tiles (w64t16r16fp, w64t32r16fp, w64t32k32r16fp,
# w64t32r32fp, w64t32k32r32fp) for Qwen3-30B-A3B (32 +- 6 rows per expert at 512 tokens) and
# DeepSeek-V3 (16 +- 4): matrix check pinned to the two new tile kinds, tuning by GPU time at
# 512 tokens against the table's picks, then the 512-token layer steps with the shipped table
# and with the tuned one, same lease
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
for c in w64t32r16fp/w64t32k32r32fp w64t16r16fp; do
  n=${c%%/*}
  timeout 110 python3 benchmarks/gpu/fused_matrix_check.py --int4-config $c --out $OUT/m_$n.json > /tmp/m_$n.log 2>&1
  tail -2 /tmp/m_$n.log
done
cat /tmp/m_*.log > $OUT/m_log.txt
I4=w64t64r16fp,w64t32f,w64t32fp,w64t16fp,w64t32r16fp,w64t32k32r16fp,w64t32r32fp,w64t32k32r32fp,w64t16r16fp,w64t32r16f
timeout 190 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes qwen3-30b-a3b,deepseek-v3 --tokens 512 \
  --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > /tmp/t_log.txt 2>&1
grep -E "tune|pick|best" /tmp/t_log.txt | cut -c1-300 | tail -30
cp /tmp/t_log.txt /tmp/t/; tar czf $OUT/t.tgz -C /tmp t
E="--shapes qwen3-30b-a3b,deepseek-v3 --sections energy --tokens 512 --variants fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 512 --window 2"
timeout 85 python3 benchmarks/gpu/kernels_bench.py --out /tmp/e_old $E > /tmp/e_old_log.txt 2>&1
tail -6 /tmp/e_old_log.txt
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json timeout 85 python3 benchmarks/gpu/kernels_bench.py \
  --out /tmp/e_new $E > /tmp/e_new_log.txt 2>&1
tail -6 /tmp/e_new_log.txt
cp /tmp/t_log.txt /tmp/e_old_log.txt /tmp/e_new_log.txt /tmp/t/ 2>/dev/null
mkdir -p /tmp/t/e_old /tmp/t/e_new; cp /tmp/e_old/*.json /tmp/t/e_old/; cp /tmp/e_new/*.json /tmp/t/e_new/
tar czf $OUT/t.tgz -C /tmp t
