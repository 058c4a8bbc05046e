#!/usr/bin/env bash
# run 112 (session 16): the diagnostics changed by session 16's clean-ups, run on the H200: the
# matrix check with the table and with --int4-config (now forced through fused_triton.set_tuned),
# nan_probe with the K-loop modifiers now named once (nan_probe.INT4_LOOP_FORMS), kernel_diag's
# variants built from them, and a bad kernel setting refused before any launch
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS WATTMOE_INT4_TILE_COPIES
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 120 python3 benchmarks/gpu/fused_matrix_check.py --out /tmp/r/m.json > /tmp/r/m_log.txt 2>&1
echo "matrix rc=$? at $((SECONDS-T0)) s: $(tail -1 /tmp/r/m_log.txt)"
timeout 120 python3 benchmarks/gpu/fused_matrix_check.py --int4-config w128t128fpx --out /tmp/r/m_w128.json > /tmp/r/m_w128_log.txt 2>&1
echo "matrix w128t128fpx rc=$? at $((SECONDS-T0)) s: $(tail -1 /tmp/r/m_w128_log.txt)"
tar czf $OUT/r.tgz -C /tmp r
timeout 90 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --weights int4 --tokens 4096 \
  --config w128t128fpx,w128t128fpx:nibbles,w128t128fpx:whole,w64t16fpx:khalves --repeats 4 \
  --out /tmp/r/nan.json > /tmp/r/nan_log.txt 2>&1
echo "nan rc=$? at $((SECONDS-T0)) s: $(grep -h 'bad of' /tmp/r/nan_log.txt | tr '\n' ' ')"
timeout 120 python3 benchmarks/gpu/kernel_diag.py --shape qwen3-30b-a3b --tokens 512,4096 \
  --variants table,whole,nibbles,khalves --out /tmp/r/diag.json > /tmp/r/diag_log.txt 2>&1
echo "diag rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/diag_log.txt | tail -12 | cut -c1-130
WATTMOE_INT4_TILE_ROWS=48 timeout 60 python3 benchmarks/gpu/nan_probe.py --shape qwen3-30b-a3b --repeats 1 > /tmp/r/bad_setting.txt 2>&1
echo "bad setting rc=$?: $(tail -1 /tmp/r/bad_setting.txt)"
tar czf $OUT/r.tgz -C /tmp r
