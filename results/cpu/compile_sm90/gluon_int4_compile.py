"""Compiles benchmarks/gpu/gluon_int4_probe.py's Gluon gate/up kernel for sm_90 without a GPU
and prints what came out (registers, spills, shared memory, wgmma, the K loop's SASS length):

    /path/to/venv-triton-3.6/bin/python results/cpu/compile_sm90/gluon_int4_compile.py \
        H F BT STAGES [H F BT STAGES ...]
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

ROOT = Path(__file__).resolve().parents[3]
for _p in (ROOT, ROOT / "benchmarks" / "gpu", ROOT / "benchmarks"):
    sys.path.insert(0, str(_p))
import compile_check as cc  # noqa: E402

SIGNATURE = {"x_ptr": "*bf16", "tok_ptr": "*i64", "q_ptr": "*u8", "s_ptr": "*fp16",
             "h_ptr": "*bf16", "blk_e_ptr": "*i32", "blk_r0_ptr": "*i32", "blk_n_ptr": "*i32",
             "n_ftiles": "i32", "H": "constexpr", "F": "constexpr", "G": "constexpr",
             "BF": "constexpr", "BT": "constexpr", "BK": "constexpr", "STAGES": "constexpr"}


def _probe():
    spec = importlib.util.spec_from_file_location(
        "gluon_int4_probe", ROOT / "benchmarks" / "gpu" / "gluon_int4_probe.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def report(kernel, h: int, f: int, bt: int, stages: int) -> dict[str, object]:
    consts = {"H": h, "F": f, "G": 128, "BF": 64, "BT": bt, "BK": 64, "STAGES": stages}
    src = GluonASTSource(fn=kernel, signature=SIGNATURE, constexprs=consts,
                         attrs={(i,): [["tt.divisibility", 16]] for i in range(8)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = k.asm["ptx"]
    mma = [line for line in ptx.splitlines() if "wgmma.mma_async" in line]
    return {"H": h, "F": f, "BT": bt, "STAGES": stages, "wgmma": len(mma),
            "wgmma_a_from_registers": sum(1 for line in mma if "}, {%r" in line),
            "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
            "shared_bytes": k.metadata.shared, **cc._resource_report(k.asm["cubin"]),
            **cc._sass_report(k.asm["cubin"])}


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    if not args or len(args) % 4:
        sys.exit("usage: gluon_int4_compile.py H F BT STAGES [H F BT STAGES ...]")
    kernel = _probe().gate_up_int4_kernel
    print(f"# triton {triton.__version__}")
    for i in range(0, len(args), 4):
        print(json.dumps(report(kernel, *args[i:i + 4])), flush=True)
