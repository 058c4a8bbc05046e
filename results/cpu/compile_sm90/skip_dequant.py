"""Compiles the table's OLMoE 512-token int4 launches for sm_90 with and without the
dequantization (MODE 5, `int4_skip_dequant`), no GPU; prints the compiler's report as JSON lines.

    PYTHONPATH=. python results/cpu/compile_sm90/skip_dequant.py > skip_dequant_triton36.jsonl
"""
import json
import sys, dataclasses
sys.path.insert(0, "benchmarks/gpu"); sys.path.insert(0, "benchmarks")
import compile_check as cc
from wattmoe.moe import fused_triton as ft
for which in ("gate_up", "down"):
    for skip in (False, True):
        cfg_name = "w64t64r16fp" if which == "gate_up" else "w64t64k32r16fp"
        pair = ft.INT4_CANDIDATES[cfg_name]
        cfg = pair[0] if which == "gate_up" else pair[1]
        cfg = dataclasses.replace(cfg, int4_skip_dequant=skip)
        gated = which == "gate_up"
        r = cc.compile_one(True, cfg, dtype="bf16", int4=True, gated=gated, combine=0 if gated else 2, n_out=2048 if gated else 2048, k_dim=2048 if gated else 1024, qgroup=128, arch=90, num_experts=64)
        print(json.dumps({"kernel": which, "skip_dequant": skip, "config": cfg_name, **r}))
