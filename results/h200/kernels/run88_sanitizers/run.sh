#!/usr/bin/env bash
# Run 88 (session 13): the sanitizers on the failing launch itself (run 87: the tile-order int4
# down launch of w64t16fpx on full Mixtral-8x7B, 4096 tokens), the card's ECC state, and the
# kernels as the device's Triton compiled them.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu.txt
nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER >> $OUT/gpu.txt 2>&1
P=benchmarks/gpu/nan_probe.py
C=w64t16fp/w64t16fpx
( PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool memcheck --print-limit 30 \
    python3 $P --shape mixtral-8x7b --tokens 4096 --config $C --repeats 2 --poison-mb 0 \
    > $OUT/memcheck.txt 2>&1; echo "rc $?" >> $OUT/memcheck.txt ) &
( PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool initcheck --print-limit 30 \
    python3 $P --shape mixtral-8x7b --tokens 4096 --config $C --repeats 2 --poison-mb 0 \
    > $OUT/initcheck.txt 2>&1; echo "rc $?" >> $OUT/initcheck.txt ) &
( timeout 200 compute-sanitizer --tool racecheck --racecheck-report all --print-limit 30 \
    python3 $P --shape mixtral-8x7b --tokens 16 --routing hot --config $C --repeats 1 --poison-mb 0 \
    > $OUT/racecheck.txt 2>&1; echo "rc $?" >> $OUT/racecheck.txt ) &
( timeout 200 compute-sanitizer --tool synccheck --print-limit 30 \
    python3 $P --shape mixtral-8x7b --tokens 16 --routing hot --config $C --repeats 1 --poison-mb 0 \
    > $OUT/synccheck.txt 2>&1; echo "rc $?" >> $OUT/synccheck.txt ) &
wait
find ~/.triton/cache -name "moe_gemm_wt*" | head -50 > $OUT/cache_files.txt
tar czf $OUT/triton_cache.tgz $(dirname $(find ~/.triton/cache -name "moe_gemm_wt.json") | sort -u) 2>/dev/null
