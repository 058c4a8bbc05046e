#!/usr/bin/env bash
# Run 87 (session 13): where run 86's non-finite outputs come from. Every repeat runs each
# configuration on the same tokens and routing, each step in poisoned memory with the int4
# copies made again (nan_probe.py).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
P=benchmarks/gpu/nan_probe.py
C=w64t16fpx,w64t16fpx/w64t16fp,w64t16fp/w64t16fpx,w64t16f,w64t16fpx:s2,w128t128fpx,w64t128fpx,w64t32r16fpx
timeout 300 python3 $P --shape mixtral-8x7b --weights int4 --tokens 4096 --config $C \
    --repeats 10 --poison-mb 2048 --out $OUT/mixtral.json > $OUT/mixtral.txt 2>&1
echo "rc $?" >> $OUT/mixtral.txt
timeout 60 python3 $P --shape mixtral-8x7b@0.25 --weights int4 --tokens 4096 --config w64t16fpx \
    --repeats 20 --poison-mb 2048 --out $OUT/mixtral_q.json > $OUT/small.txt 2>&1
echo "rc $?" >> $OUT/small.txt
timeout 80 python3 $P --shape qwen3-30b-a3b --weights int4 --tokens 16384 --config w64t16fpx \
    --repeats 20 --poison-mb 2048 --out $OUT/qwen3_16k.json >> $OUT/small.txt 2>&1
echo "rc $?" >> $OUT/small.txt
