"""Does a Gluon Hopper kernel with a register-A wgmma (int4 codes turned into bf16 in registers)
compile for sm_90 here (Triton 3.6, no GPU)? A toolchain probe for KERNEL_NOTES version 8, item
1, not a kernel of the project: it has never run on a GPU.

    /path/to/venv-with-triton-3.6/bin/python results/cpu/compile_sm90/gluon_probe.py
"""
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia import hopper


@gluon.jit
def mm_kernel(w_ptr, x_ptr, c_ptr, K: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
              BK: gl.constexpr):
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BN, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, BN], gl.bfloat16)
    b_smem = gl.allocate_shared_memory(gl.bfloat16, [BK, BN], b_sl)
    acc = gl.zeros([BM, BN], gl.float32, mma)
    rm = gl.arange(0, BM, layout=gl.SliceLayout(1, blk))
    rk = gl.arange(0, BK, layout=gl.SliceLayout(0, blk))
    rkb = gl.arange(0, BK, layout=gl.SliceLayout(1, blk))
    rn = gl.arange(0, BN, layout=gl.SliceLayout(0, blk))
    for k0 in range(0, K, BK):
        # int4 codes, one per byte here (the probe is about layouts, not packing)
        q = gl.load(w_ptr + rm[:, None] * K + (k0 + rk)[None, :])
        w = ((q & 15).to(gl.float32) - 8.0).to(gl.bfloat16)
        a = gl.convert_layout(w, a_l)
        xb = gl.load(x_ptr + (k0 + rkb)[:, None] * BN + rn[None, :])
        b_smem.store(xb)
        hopper.fence_async_shared()
        acc = hopper.warpgroup_mma(a, b_smem, acc)
    out = gl.convert_layout(acc, blk)
    gl.store(c_ptr + rm[:, None] * BN + rn[None, :], out)


src = GluonASTSource(fn=mm_kernel, signature={"w_ptr": "*u8", "x_ptr": "*bf16", "c_ptr": "*fp32",
                                              "K": "constexpr", "BM": "constexpr",
                                              "BN": "constexpr", "BK": "constexpr"},
                     constexprs={"K": 256, "BM": 64, "BN": 64, "BK": 64})
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = k.asm["ptx"]
mma = [line.strip() for line in ptx.splitlines() if "wgmma.mma_async" in line]
print(f"triton {triton.__version__}: compiled for sm_90; {len(mma)} wgmma.mma_async in the PTX")
print(mma[0])
