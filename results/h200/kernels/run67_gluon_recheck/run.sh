#!/usr/bin/env bash
# run 67: gluon_int4_probe after its kernels were refactored into shared helpers (_block,
# _x_tiles, _ring_step, _copy_x, _swiglu_store; the sm_90 compile unchanged): the checks
# against the fp32 reference and the times again, OLMoE and Qwen3 at 512 tokens
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
timeout 200 python3 benchmarks/gpu/gluon_int4_probe.py --out $OUT/gluon.json > $OUT/gluon_log.txt 2>&1
echo "rc=$?"; grep -E "^\{|Error" $OUT/gluon_log.txt | cut -c1-160
