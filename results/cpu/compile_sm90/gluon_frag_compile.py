"""Compiles benchmarks/gpu/gluon_int4_probe.py's fragment-word Gluon gate/up kernel
(`gate_up_int4_frag_kernel`) for sm_90 without a GPU and prints what came out (registers,
spills, shared memory, wgmma, the K loop's SASS length):

    /path/to/venv-triton-3.6/bin/python results/cpu/compile_sm90/gluon_frag_compile.py \
        H F BT BK STAGES [H F BT BK STAGES ...]
"""

from __future__ import annotations

import json
import sys

import triton
from gluon_int4_compile import _probe, cc
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

SIGNATURE = {"x_ptr": "*bf16", "tok_ptr": "*i64", "w_ptr": "*i32", "sp_ptr": "*i32",
             "h_ptr": "*bf16", "blk_e_ptr": "*i32", "blk_r0_ptr": "*i32", "blk_n_ptr": "*i32",
             "n_ftiles": "i32", "H": "constexpr", "F": "constexpr", "G": "constexpr",
             "BT": "constexpr", "BK": "constexpr", "STAGES": "constexpr", "W_L": "constexpr"}


def report(probe, h: int, f: int, bt: int, bk: int, stages: int) -> dict[str, object]:
    consts = {"H": h, "F": f, "G": 128, "BT": bt, "BK": bk, "STAGES": stages,
              "W_L": probe.frag_word_layout(bk)}
    src = GluonASTSource(fn=probe.gate_up_int4_frag_kernel, signature=SIGNATURE, constexprs=consts,
                         attrs={(i,): [["tt.divisibility", 16]] for i in range(8)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = k.asm["ptx"]
    mma = [line for line in ptx.splitlines() if "wgmma.mma_async" in line]
    return {"H": h, "F": f, "BT": bt, "BK": bk, "STAGES": stages, "wgmma": len(mma),
            "wgmma_a_from_registers": sum(1 for line in mma if "}, {%r" in line),
            "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
            "prmt": ptx.count("prmt.b32"), "shared_bytes": k.metadata.shared,
            **cc._resource_report(k.asm["cubin"]), **cc._sass_report(k.asm["cubin"])}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    if not args or len(args) % 5:
        sys.exit("usage: gluon_frag_compile.py H F BT BK STAGES [H F BT BK STAGES ...]")
    probe = _probe()
    print(f"# triton {triton.__version__}")
    for i in range(0, len(args), 5):
        print(json.dumps(report(probe, *args[i:i + 5])), flush=True)
