"""A Triton kernel that runs the fused kernels' block layout alone (imported by the tests only
once Triton's interpreter is set up: importing it imports Triton)."""

from __future__ import annotations

import triton
import triton.language as tl

from wattmoe.moe._fused_kernel import _expert_block, _has_tail, _rows


@triton.jit
def layout_hits(cnt_ptr, out_ptr, prog_ptr, num_experts, BLOCK: tl.constexpr, TAIL: tl.constexpr,
                TAIL_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """Adds 1 at every dispatch row that program `pid` computes, its tail included (the rule of
    `moe_gemm_wt`), and 1 at prog_ptr per valid program."""
    pid = tl.program_id(0)
    valid, _, blk, nblk_e, cnt_e, row0 = _expert_block(pid, cnt_ptr, num_experts, BLOCK, TAIL,
                                                       BLOCK_E)
    if valid:
        tl.atomic_add(prog_ptr, 1)
        rows, rmask, _ = _rows(row0, blk * BLOCK, cnt_e, cnt_ptr, BLOCK)
        tl.atomic_add(out_ptr + rows, 1, mask=rmask)
        if (TAIL > 0) & _has_tail(blk, nblk_e, cnt_e, BLOCK):
            trows, tmask, _ = _rows(row0, (blk + 1) * BLOCK, cnt_e, cnt_ptr, TAIL_T)
            tl.atomic_add(out_ptr + trows, 1, mask=tmask)
