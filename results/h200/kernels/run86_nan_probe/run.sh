#!/usr/bin/env bash
# Run 86 (session 13): the non-finite output of run 85 (KERNEL_NOTES version 12, next 0).
# 1) nan_probe on the full Mixtral-8x7B int4 at 4096 tokens and Qwen3 at 64 tokens, w64t16fpx,
#    each repeat in poisoned memory with the int4 copies made again;
# 2) compute-sanitizer (initcheck and memcheck with the caching allocator off, so that each
#    buffer is a fresh cudaMalloc; racecheck) on Mixtral at quarter width, 1024 tokens.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $OUT/gpu.txt
P=benchmarks/gpu/nan_probe.py
timeout 150 python3 $P --shape mixtral-8x7b --weights int4 --tokens 4096 --config w64t16fpx \
    --repeats 24 --out $OUT/nan_mixtral.json > $OUT/probe.txt 2>&1
echo "rc $?" >> $OUT/probe.txt
timeout 40 python3 $P --shape qwen3-30b-a3b --weights int4 --tokens 64 --config w64t16fpx \
    --repeats 24 --out $OUT/nan_qwen3_64.json >> $OUT/probe.txt 2>&1
echo "rc $?" >> $OUT/probe.txt
S="--shape mixtral-8x7b@0.25 --weights int4 --tokens 1024 --config w64t16fpx --repeats 2 --poison-mb 0"
for tool in initcheck memcheck racecheck; do
  echo "== $tool" >> $OUT/sanitizer.txt
  lim=$([ $tool = initcheck ] && echo 100 || echo 60)
  if [ $tool = racecheck ]; then unset PYTORCH_NO_CUDA_MEMORY_CACHING
  else export PYTORCH_NO_CUDA_MEMORY_CACHING=1; fi
  timeout $lim compute-sanitizer --tool $tool --print-limit 20 python3 $P $S >> $OUT/sanitizer.txt 2>&1
  echo "rc $?" >> $OUT/sanitizer.txt
done
