#!/usr/bin/env bash
# run 61: tuning by energy with two windows per candidate in alternating order
# (--tune-energy-rounds 2, first run on the GPU) where the table was picked by time: int4 at
# 4096 tokens (three shapes) and DeepSeek-V3 bf16 at 16384 tokens (700 W limit); then each
# layer step with the shipped table and with the energy-tuned one, same lease
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
I4=w64t64r16fp,w64t64k32r16fp,w64t32r16fp,w64t16r16fp,w64t64fp,w128t64fp,w64t128fp,w64t128f,w64t128k32f,w128t128fp,w128t128f
B=m128n256d,w64t128dr16,w128t128dr16,w128t128d,m128d,w64t128d,w64t128dr32
mkdir -p /tmp/t
timeout 170 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/i4 --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 \
  --tokens 4096 --sections tune --tune-by energy --tune-weights int4 --tune-candidates $I4 > /tmp/t/i4_log.txt 2>&1
echo "i4 rc=$?"; grep "tune T" /tmp/t/i4_log.txt | cut -c1-400; tar czf $OUT/t.tgz -C /tmp t
timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/b16 --shapes deepseek-v3 \
  --tokens 16384 --sections tune --tune-by energy --tune-weights bf16 --tune-candidates $B > /tmp/t/b16_log.txt 2>&1
echo "b16 rc=$?"; grep "tune T" /tmp/t/b16_log.txt | cut -c1-400; tar czf $OUT/t.tgz -C /tmp t
for v in old new; do
  for s in i4 b16; do
    if [ $s = i4 ]; then E="--shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --tokens 4096 --variants fused_int4"
    else E="--shapes deepseek-v3 --tokens 16384 --variants fused"; fi
    if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/t/$s/tuned_configs.json; else unset WATTMOE_KERNEL_CONFIGS; fi
    timeout 60 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/e_${s}_$v $E --sections energy --graph-variants "" --window 2 > /tmp/t/e_${s}_${v}_log.txt 2>&1
    echo "$s $v rc=$?"; grep -v Warn /tmp/t/e_${s}_${v}_log.txt | tail -4 | cut -c1-300
    tar czf $OUT/t.tgz -C /tmp t
  done
done
