#!/usr/bin/env bash
# run 47: int4 gate/up with stacked gate|up tiles over two warp groups ("...g"): matrix check
# pinned to w64t64r16fpg; int4 tuned by GPU time with and without (OLMoE, Qwen3; 64, 512, 4096
# tokens); energy with that table; the captured int4 step's timeline at 512 OLMoE tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/fused_matrix_check.py --int4-config w64t64r16fpg --out $OUT/m.json > $OUT/m_log.txt 2>&1
tail -2 $OUT/m_log.txt
I4=w64t16fp,w64t16fpg,w64t32fp,w64t32fpg,w64t64k32r16fp,w64t64k32r16fpg,w64t64r16fp,w64t64r16fpg,w64t64fpg,w64t64r32fpg,w64t128k32fpg,w128t128f,w128t128fp
python3 benchmarks/gpu/kernels_bench.py --out /tmp/t --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512 \
  --tune-tokens 64,512,4096 --sections tune --tune-by gpu --tune-weights int4 --tune-candidates $I4 > /tmp/t_log.txt 2>&1
grep "tune T" /tmp/t_log.txt | cut -c1-1600
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json python3 benchmarks/gpu/kernels_bench.py --out /tmp/e \
  --shapes olmoe-1b-7b,qwen3-30b-a3b --tokens 64,512,4096 --sections check,energy --check-step-graph fused --variants grouped,fused_int4 \
  --graph-variants grouped+step_graph,fused_int4+step_graph --graph-tokens 64,512 --window 2 > /tmp/e_log.txt 2>&1
mkdir -p /tmp/p
WATTMOE_KERNEL_CONFIGS=/tmp/t/tuned_configs.json python3 benchmarks/gpu/step_profile.py --graph --tokens 512 --variants fused_int4 --out /tmp/p/olmoe_512_fused_int4.json > /tmp/p/log_fused_int4.txt 2>&1
cp /tmp/t_log.txt /tmp/e_log.txt $OUT/
tar czf $OUT/tep.tgz -C /tmp t e p
grep -v Warn /tmp/e_log.txt | tail -9; tail -9 /tmp/p/log_fused_int4.txt
