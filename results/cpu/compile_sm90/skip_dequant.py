"""Compiles the table's OLMoE 512-token int4 launches for sm_90 with and without the
dequantization (MODE 5, `int4_skip_dequant`), no GPU; prints the compiler's report as JSON lines.

    PYTHONPATH=. python results/cpu/compile_sm90/skip_dequant.py > skip_dequant_triton36.jsonl
"""

import dataclasses
import json
import sys

sys.path.insert(0, "benchmarks/gpu")
sys.path.insert(0, "benchmarks")

import compile_check as cc

from wattmoe.moe import fused_triton as ft

for which, name in (("gate_up", "w64t64r16fp"), ("down", "w64t64k32r16fp")):
    gated = which == "gate_up"
    for skip in (False, True):
        cfg = dataclasses.replace(ft.INT4_CANDIDATES[name][0 if gated else 1],
                                  int4_skip_dequant=skip)
        r = cc.compile_one(True, cfg, dtype="bf16", int4=True, gated=gated,
                           combine=0 if gated else 2, n_out=2048,
                           k_dim=2048 if gated else 1024, qgroup=128, arch=90, num_experts=64)
        print(json.dumps({"kernel": which, "skip_dequant": skip, "config": name, **r}))
