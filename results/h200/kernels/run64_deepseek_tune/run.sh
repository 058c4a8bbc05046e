#!/usr/bin/env bash
# run 64: DeepSeek-V3 tuned by energy (two alternating windows per candidate) where run 61 ran
# out of time: int4 and bf16 at 4096 and 16384 tokens (700 W limit); then the layer steps with
# the shipped table and the tuned one, same lease
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
C=w128t128fp,w128t128f,w64t128fp,w64t128f,w64t128k32f,w64t128k32fp,w128t64fp,m128n256d,w64t128dr16,w128t128dr16,w128t128d,m128d,w64t128d
mkdir -p /tmp/t
timeout 330 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/tune --shapes deepseek-v3 --tokens 4096,16384 \
  --sections tune --tune-by energy --tune-weights bf16,int4 --tune-candidates $C > /tmp/t/tune_log.txt 2>&1
echo "tune rc=$?"; grep "tune T" /tmp/t/tune_log.txt | cut -c1-420; tar czf $OUT/t.tgz -C /tmp t
for v in old new; do
  if [ $v = new ]; then
    [ -f /tmp/t/tune/tuned_configs.json ] || break
    export WATTMOE_KERNEL_CONFIGS=/tmp/t/tune/tuned_configs.json
  fi
  timeout 110 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/e_$v --shapes deepseek-v3 --tokens 4096,16384 \
    --variants fused,fused_int4 --sections energy --graph-variants "" --window 2 > /tmp/t/e_${v}_log.txt 2>&1
  echo "$v rc=$?"; grep -v Warn /tmp/t/e_${v}_log.txt | tail -4 | cut -c1-200
  tar czf $OUT/t.tgz -C /tmp t
done
