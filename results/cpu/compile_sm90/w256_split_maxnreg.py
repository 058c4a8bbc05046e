"""The 256-row int4 down launch (`w256t32s3w8fpx`, OLMoE's down shape) with the tile unpacked whole
(and a wait per K step) or in halves, with and without a register cap (`maxnreg`), compiled for
sm_90 on a machine without a GPU: registers, stack bytes (spills), K-loop instructions and
writes to in-flight MMA registers. Session 13, the kernels of commit b43c677, Triton 3.6.0:

    PYTHONPATH=.:<triton 3.6 site-packages> python results/cpu/compile_sm90/w256_split_maxnreg.py
"""

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "gpu")]
import compile_check as cc  # noqa: E402

from wattmoe.moe import fused_triton as ft  # noqa: E402

CAP = None
_compile = cc.triton.compile


def capped(src, target=None, options=None):
    return _compile(src, target=target, options={**options, "maxnreg": CAP} if CAP else options)


cc.triton.compile = capped
for CAP in (None, 168, 128):
    for split in (False, True):
        c = dataclasses.replace(ft.INT4_CANDIDATES["w256t32s3w8fpx"][1], int4_split_dequant=split)
        c = ft._fit(c, 2048, 1024, 128)
        r = cc.compile_one(True, c, dtype="bf16", int4=True, gated=False, combine=2, n_out=2048,
                           k_dim=1024, qgroup=128, arch=90, num_experts=64)
        print(f"maxnreg {CAP} split {split}:", {k: r[k] for k in (
            "registers", "stack_bytes", "k_loop_instructions", "inflight_a_writes")}, flush=True)
