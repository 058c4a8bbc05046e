#!/usr/bin/env bash
# run 70: int4 at 512 tokens, new candidates timed (CUPTI) and the 4 fastest windowed (NVML,
# two alternating 1.5 s windows each): words and scale pairs in tile order ("...x",
# int4_tiles) and 128-row tiles on 16/32-token tiles (w128t16, w128t32), against the table's
# entries; DeepSeek-V3 first (run 69: its int4 launches read HBM at ~51% of peak)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
tune() {  # name shape candidates limit
  timeout $4 python3 benchmarks/gpu/kernels_bench.py --out /tmp/$1 --shapes $2 --sections tune --tokens 512 \
    --tune-weights int4 --tune-by energy --tune-energy-top 4 --tune-window 1.5 --tune-energy-rounds 2 \
    --tune-candidates $3 > /tmp/$1_log.txt 2>&1
  echo "== $1 rc=$?"; grep -E "tune T=|energy|FAIL|rror" /tmp/$1_log.txt | cut -c1-900
  mkdir -p /tmp/$1; cp /tmp/$1_log.txt /tmp/$1/; tar czf $OUT/$1.tgz -C /tmp $1
}
tune t_ds deepseek-v3 w64t16r16fp,w64t16r16fpx,w64t16fpx,w128t32fp,w128t32fpx,w128t32s3fpx,w128t16r16fpx,w64t32r16fpx 300
tune t_qw qwen3-30b-a3b w64t32r16fp,w64t32r16fpx,w64t32k32r16fpx,w128t32fpx,w128t32s3fpx,w64t16r16fpx 130
tune t_ol olmoe-1b-7b w64t64r16fp,w64t64k32r16fp,w64t64r16fpx,w64t64k32r16fpx,w128t32fpx 110
