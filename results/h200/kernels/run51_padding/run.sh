#!/usr/bin/env bash
# run 51: do tails and padded tiles bound the int4 launches at 512 OLMoE tokens now? padding_probe
# on random routing and exactly balanced routing (64 per expert: every 64-token tile full, no
# tails), the table's int4 pick, the same tiles without tails, and the bf16 pick
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > $OUT/gpu_start.csv
python3 benchmarks/gpu/padding_probe.py --int4 w64t64r16fp/w64t64k32r16fp,w64t64fp,w64t64k32fp,w64t64fp/w64t64k32fp \
  --bf16 w64t64s3dr16/w128t64dr16 --out $OUT/padding.json > $OUT/padding_log.txt 2>&1
grep -v Warn $OUT/padding_log.txt | tail -30
