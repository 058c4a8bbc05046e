#!/usr/bin/env bash
# run 100 (session 15): the shipped 128-row int4 tiles in K halves (w128t128fpx: every shape's 4096- and
# 16384-token entry, shipped in dd81f82 after runs 98-99's in-process A/Bs) checked on the H200:
# (1) kernels_bench --sections check, fused and fused_graph, uniform/skewed/hot routing at 4096 and
# uniform/skewed at 16384 tokens, three shapes (bf16 and int4); (2) nan_probe on w128t128fpx for each
# shape at 4096 and 16384 tokens (fresh tokens/routing, int4 copies remade in poisoned memory each repeat);
# (3) fused_matrix_check with every int4 layer forced to w128t128fpx (groups 32-128, fp16, odd shapes),
# then with the table's entries
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
unset WATTMOE_KERNEL_CONFIGS WATTMOE_INT4_TILE_ROWS
rm -rf /tmp/r; mkdir -p /tmp/r
nvidia-smi --query-gpu=name,driver_version,power.limit,temperature.gpu,clocks.sm --format=csv > /tmp/r/gpu_start.csv
T0=$SECONDS
timeout 150 python3 benchmarks/gpu/kernels_bench.py --out /tmp/r/k --sections check \
  --check-backends fused,fused_graph \
  --check-cases uniform:4096,skewed:4096,hot:4096,uniform:16384,skewed:16384 > /tmp/r/k_log.txt 2>&1
echo "check rc=$? at $((SECONDS-T0)) s"; grep -v Warn /tmp/r/k_log.txt | grep -E "check:|FAIL|rror" | tail -6
tar czf $OUT/r.tgz -C /tmp r
for s in olmoe-1b-7b qwen3-30b-a3b deepseek-v3; do
  for t in 4096 16384; do
    timeout 60 python3 benchmarks/gpu/nan_probe.py --shape $s --weights int4 --tokens $t \
      --config w128t128fpx --repeats 4 --out /tmp/r/nan_${s}_$t.json > /tmp/r/nan_${s}_$t.txt 2>&1
    echo "nan $s $t rc=$? at $((SECONDS-T0)) s: $(grep -h 'bad of' /tmp/r/nan_${s}_$t.txt)"
  done
  tar czf $OUT/r.tgz -C /tmp r
done
timeout 110 python3 benchmarks/gpu/fused_matrix_check.py --int4-config w128t128fpx --out /tmp/r/m_w128.json > /tmp/r/m_w128_log.txt 2>&1
echo "matrix w128t128fpx rc=$? at $((SECONDS-T0)) s"; tail -1 /tmp/r/m_w128_log.txt
tar czf $OUT/r.tgz -C /tmp r
timeout $((570-(SECONDS-T0))) python3 benchmarks/gpu/fused_matrix_check.py --out /tmp/r/m.json > /tmp/r/m_log.txt 2>&1
echo "matrix table rc=$? at $((SECONDS-T0)) s"; tail -1 /tmp/r/m_log.txt
tar czf $OUT/r.tgz -C /tmp r
