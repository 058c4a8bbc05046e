"""The 256-row int4 down launches with each K step's tile unpacked whole (and a wait per step),
in nibble halves (`int4_split_form` 1, session 13's split) or in K halves (form 2, session 14),
compiled for sm_90 on a machine without a GPU: registers, stack bytes (spills), K-loop
instructions, full MMA waits in the loop and writes to in-flight MMA registers. DeepSeek-V3's
and Qwen3-30B-A3B's down shapes (`w256t32s3w8fpx` is their 512-token down launch), Triton 3.6:

    PYTHONPATH=.:<triton 3.6 site-packages> python results/cpu/compile_sm90/w256_split_k.py
"""

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "gpu")]
import compile_check as cc  # noqa: E402

from wattmoe.moe import fused_triton as ft  # noqa: E402
from wattmoe.moe.presets import get_preset  # noqa: E402

FORMS = {"wait": dict(int4_split_dequant=False), "nibble halves": dict(int4_split_form=1),
         "K halves": dict(int4_split_form=2)}
for shape in ("deepseek-v3", "qwen3-30b-a3b"):
    p = get_preset(shape)
    for name in ("w256t32s3w8fpx", "w256t16s3w8fpx", "w256t32s3fpx"):
        for form, changes in FORMS.items():
            c = dataclasses.replace(ft.INT4_CANDIDATES[name][1], **changes)
            c = ft._fit(c, p.hidden_size, p.expert_inner_size, 128)
            r = cc.compile_one(True, c, dtype="bf16", int4=True, gated=False, combine=2,
                               n_out=p.hidden_size, k_dim=p.expert_inner_size, qgroup=128,
                               arch=90, num_experts=p.num_experts)
            print(f"{shape} {name} down, {form}:", {k: r[k] for k in (
                "registers", "stack_bytes", "k_loop_instructions", "wgmma_waits",
                "inflight_a_writes")}, flush=True)
