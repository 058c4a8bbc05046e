#!/usr/bin/env bash
# run 56: tuning by energy (kernels_bench --tune-by energy: the 4 fastest candidates by GPU
# time, one 1 s NVML window each on the captured experts step) for int4 at 512 tokens on all
# three shapes; then the 512-token layer steps with the shipped table and with the one tuned
# by energy, same lease (run 54: DeepSeek-V3's fastest launches spent 1-2% more per step)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
I4=w64t64r16fp,w64t64k32r16fp,w64t32r16fp,w64t32k32r16fp,w64t32fp,w64t32f,w64t16r16fp,w64t16fp,w64t32r32fp
timeout 200 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 \
  --tokens 512 --sections tune --tune-by energy --tune-weights int4 --tune-candidates $I4 > /tmp/t_log.txt 2>&1
grep "tune T" /tmp/t_log.txt | cut -c1-400
cp /tmp/t_log.txt /tmp/t/; tar czf $OUT/t.tgz -C /tmp t
E="--shapes olmoe-1b-7b,qwen3-30b-a3b,deepseek-v3 --sections energy --tokens 512 --variants fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 512 --window 2"
for v in old new; do
  if [ $v = new ]; then export WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json; fi
  timeout 120 python3 benchmarks/gpu/kernels_bench.py --out /tmp/t/e_$v $E > /tmp/t/e_${v}_log.txt 2>&1
  tail -6 /tmp/t/e_${v}_log.txt
  tar czf $OUT/t.tgz -C /tmp t
done
