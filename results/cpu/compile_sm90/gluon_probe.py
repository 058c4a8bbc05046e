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
from triton.experimental.gluon.language.nvidia.ampere import async_copy


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


@gluon.jit
def pipelined_kernel(w_ptr, x_ptr, c_ptr, K: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                     BK: gl.constexpr, STAGES: gl.constexpr):
    """The overlap the int4 launches lack: activation tiles copied ahead into a ring of shared
    buffers (cp.async), each step's wgmma issued asynchronously, and the next step's codes
    converted in registers while it runs (wait for at most one wgmma in flight)."""
    blk: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BN, 16])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, BN], gl.bfloat16)
    ring = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BK, BN], b_sl)
    rm = gl.arange(0, BM, layout=gl.SliceLayout(1, blk))
    rk = gl.arange(0, BK, layout=gl.SliceLayout(0, blk))
    rkb = gl.arange(0, BK, layout=gl.SliceLayout(1, blk))
    rn = gl.arange(0, BN, layout=gl.SliceLayout(0, blk))
    for s in gl.static_range(STAGES - 1):  # prologue: the first tiles in flight
        async_copy.async_copy_global_to_shared(
            ring.index(s), x_ptr + (s * BK + rkb)[:, None] * BN + rn[None, :])
        async_copy.commit_group()
    acc = gl.zeros([BM, BN], gl.float32, mma)
    q = gl.load(w_ptr + rm[:, None] * K + rk[None, :])
    a = gl.convert_layout(((q & 15).to(gl.float32) - 8.0).to(gl.bfloat16), a_l)
    for i in range(K // BK):
        nxt = i + STAGES - 1
        if nxt < K // BK:
            async_copy.async_copy_global_to_shared(
                ring.index(nxt % STAGES), x_ptr + (nxt * BK + rkb)[:, None] * BN + rn[None, :])
        async_copy.commit_group()
        async_copy.wait_group(STAGES - 1)
        gl.thread_barrier()  # every thread's copies of this tile landed
        hopper.fence_async_shared()  # and are visible to the wgmma (async proxy)
        tok = hopper.warpgroup_mma(a, ring.index(i % STAGES), acc, is_async=True)
        if i + 1 < K // BK:  # the next step's operand, converted while this step's MMA runs
            q = gl.load(w_ptr + rm[:, None] * K + ((i + 1) * BK + rk)[None, :])
            a = gl.convert_layout(((q & 15).to(gl.float32) - 8.0).to(gl.bfloat16), a_l)
        acc = hopper.warpgroup_mma_wait(num_outstanding=0, deps=[tok])
    gl.store(c_ptr + rm[:, None] * BN + rn[None, :], gl.convert_layout(acc, blk))


src = GluonASTSource(fn=pipelined_kernel,
                     signature={"w_ptr": "*u8", "x_ptr": "*bf16", "c_ptr": "*fp32",
                                "K": "constexpr", "BM": "constexpr", "BN": "constexpr",
                                "BK": "constexpr", "STAGES": "constexpr"},
                     constexprs={"K": 1024, "BM": 64, "BN": 64, "BK": 64, "STAGES": 3},
                     attrs={(i,): [["tt.divisibility", 16]] for i in range(3)})  # 16-byte aligned
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = k.asm["ptx"]
print(f"pipelined: {ptx.count('wgmma.mma_async')} wgmma.mma_async, "
      f"{ptx.count('cp.async.cg') + ptx.count('cp.async.ca')} cp.async, "
      f"{ptx.count('wgmma.wait_group')} wgmma.wait_group in the PTX")
