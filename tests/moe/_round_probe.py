"""A kernel that applies the fused gate's rounding (`_round_like_x`) to given fp32 values, for
tests/moe/test_fused_route.py. Imports Triton: import it only once Triton runs interpreted."""

from __future__ import annotations

import triton
import triton.language as tl

from wattmoe.moe._route_kernel import _round_like_x


@triton.jit
def round_kernel(src, dst, x_ptr, N: tl.constexpr):
    """dst[:N] = src[:N] rounded as `F.linear(x, w).float()` rounds for x of x_ptr's dtype."""
    offs = tl.arange(0, N)
    tl.store(dst + offs, _round_like_x(tl.load(src + offs), x_ptr))
