"""`fused`: the experts of one device in two Triton kernels, bf16/fp16/fp32 or int4 weights.

Two launches of one of two kernels, then a combine:

1. gather + gate/up + activation: each program takes a block of assignments of one expert
   (rows of the expert-sorted dispatch, tokens gathered through `token_idx` while loading) and a
   block of the inner width; it accumulates the gate and up projections from one load of the
   activations and writes silu(gate) * up (or relu(up)) to h [N, F] in dispatch order.
2. down + weighted combine: h times the down projection for a block of rows, times the routing
   weight. With `Dispatch.rowof` (both routing paths of `SimpleMoELayer` provide it for the
   fused backends) the weighted rows are stored in dispatch order, in the compute dtype, and a
   third small kernel, `moe_combine`, adds each token's k rows in fp32 and in slot order
   (deterministic); without it they are added atomically into an fp32 [T, H] output (order not
   fixed) and cast.

The two kernels differ in which operand comes first in the MMA:

- `moe_gemm` ("m..." candidates): tokens x weights^T, [BLOCK_M tokens, BLOCK_N outputs] tiles.
- `moe_gemm_wt` ("w..." candidates, ``swap=True``): weights x tokens^T, [BLOCK_N outputs,
  BLOCK_M tokens] tiles. Wgmma's first operand may come from registers, so int4 weights are
  dequantized in registers and go straight into the MMA; all int4 candidates use this kernel.
  int4 stacks use the half-split packing of `wattmoe.moe.quant` (column j and j + K/2 in one
  byte): a mask and a shift give two tiles of whole columns. On an NVIDIA GPU with bf16/fp16
  compute, inline PTX does it with bit operations and two 16-bit fmas (the scale rounded to the
  compute dtype first, as `dequantize_int4` does in that dtype); in the interpreter, for fp32
  compute and with `int4_asm=False`, through fp32 (code - 8) * scale. No dequantized copy of
  the weights is written to memory.

Blocks are laid out expert after expert; every program finds its expert from `counts` by a
cumulative sum in registers, so there is no alignment kernel and no host sync: the grid is an
upper bound computed from N and E alone, which also makes the path capturable by CUDA graphs.
Experts with zero tokens get no blocks. Programs are ordered GROUP_M token blocks at a time over
the output columns (L2 reuse of weight and activation tiles).

Where Triton cannot run (no Triton, or CPU tensors without ``TRITON_INTERPRET=1``) the same
function is computed by `grouped.grouped_forward`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wattmoe.checks import check_positive_int, is_finite_real, is_int, is_power_of_two
from wattmoe.errors import ConfigError, ShapeError
from wattmoe.int4_layout import DEFAULT_TILE_ROWS, FRAGMENT_BYTES, halves_whole
from wattmoe.moe.backends import loop_backend, needs_autograd, register_backend
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.grouped import grouped_forward
from wattmoe.moe.quant import Layout, fragment_words, from_layout, scale_pairs, tile_rows
from wattmoe.moe.stacked import ExpertStack, stacked_experts

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("kernel_configs")
MIN_BLOCK_E = 256  # counts are read in one vector of at least this width (fewer compiles)


@functools.cache
def _triton() -> Any:
    try:
        import triton
        import triton.language
    except ImportError:
        return None
    return triton


@functools.cache
def triton_available() -> bool:
    """True if Triton is installed (checked without importing it: see `interpreting`)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True if CPU tensors run through Triton's interpreter.

    That needs TRITON_INTERPRET=1 both now and when Triton was first imported (Triton decides
    at import whether its own library functions are interpreted).
    """
    if os.environ.get("TRITON_INTERPRET", "0") != "1" or not triton_available():
        return False
    import triton.language as tl

    return type(tl.cdiv).__name__ == "InterpretedFunction"


def triton_runs_on(x: torch.Tensor) -> bool:
    """True if this module's kernels (and fused routing's) can run on x's device: CUDA with
    Triton, or CPU tensors under Triton's interpreter."""
    return triton_available() and (x.is_cuda or (x.device.type == "cpu" and interpreting()))


def checked_triton(interpret: bool, need: str, purpose: str) -> Any:
    """The triton module, once Triton is installed and its mode matches `interpret`.

    Raises:
        ConfigError: "<need> `pip install triton`", or the interpreter was not chosen at
            Triton's import (needed to <purpose> on CPU tensors).
    """
    triton = _triton()
    if triton is None:
        raise ConfigError(f"{need} `pip install triton`")
    if interpret != interpreting():
        raise ConfigError(
            "Triton's interpreter is chosen when Triton is imported: set TRITON_INTERPRET=1 "
            f"before the first import to {purpose} on CPU tensors"
        )
    return triton


@functools.cache
def _kernel(interpret: bool, swap: bool = False) -> Any:
    """A Triton kernel (`moe_gemm`, or `moe_gemm_wt` if swap): compiled for the GPU, or run by
    Triton's interpreter."""
    triton = checked_triton(interpret, "the fused backend's Triton kernels need",
                            "run the fused kernels")
    from wattmoe.moe._fused_kernel import moe_gemm, moe_gemm_wt

    # the block count changes with every step size: no recompiles for its divisibility by 16
    if swap:
        return triton.jit(moe_gemm_wt, do_not_specialize=["num_pid_t"])
    return triton.jit(moe_gemm, do_not_specialize=["num_pid_m"])


@functools.cache
def _combine_kernel(interpret: bool) -> Any:
    """`moe_combine` (sums each token's weighted rows), compiled or interpreted."""
    triton = checked_triton(interpret, "the fused backend's Triton kernels need",
                            "run the fused kernels")
    from wattmoe.moe._fused_kernel import moe_combine

    return triton.jit(moe_combine, do_not_specialize=["num_tokens", "num_rows"])


COMBINE_BLOCK_T, COMBINE_BLOCK_H = 16, 256


# ---------------------------------------------------------------------------------------------
# Launch configurations.


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one kernel launch.

    block_m is the token tile and block_n the output tile in both kernels; ``swap`` selects
    `moe_gemm_wt` (weights first in the MMA). For int4 weights, one K step covers block_k packed
    columns, i.e. 2 * block_k of the activations' columns.
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    swap: bool = False
    int4_asm: bool = True  # int4: dequantize by bit operations (GPU, bf16/fp16), not via fp32
    # diagnostic only (`benchmarks/gpu/kernel_diag.py`): skip int4 unpacking and scaling, so
    # the results are wrong; measures what dequantization costs. No candidate sets it.
    int4_skip_dequant: bool = False
    # diagnostic only (`benchmarks/gpu/kernel_diag.py`): leave the last MMA of a non-gated int4
    # K step in flight across the loop's back edge, as Triton pipelines it. Its A operand is
    # in registers, which the next step's dequantization rewrites before the wait: ptxas
    # reuses them, and the MMA then reads other values (wrong, at times non-finite outputs:
    # results/h200/kernels/run86-run88). The launches wait for it (`moe_gemm_wt`, INT4_WAIT)
    # or unpack the tile in halves (`int4_split_dequant`, which this turns off).
    int4_inflight_mma: bool = False
    # int4 fragment words (on a GPU, and through fp32 in Triton's interpreter), non-gated
    # launches: unpack the low half of each K step's tile, run its MMAs, then unpack the high
    # half (`_fused_kernel._dequant_frag_low/high`). The high half's MMA stays in flight across
    # the back edge while the next step unpacks its low half into other registers, so the step
    # needs no wait (INT4_WAIT). False: the whole tile unpacked at once, and the wait; so are
    # tiles of more than INT4_SPLIT_MAX_ROWS rows (`int4_split_form` 0)
    int4_split_dequant: bool = True
    # how `int4_split_dequant` splits the tile: 0 by its rows (`launch_meta`: nibble halves up
    # to INT4_NIBBLE_MAX_ROWS rows, K halves up to INT4_SPLIT_MAX_ROWS, larger tiles wait; each
    # the cheapest measured there), 1 nibble halves (the low nibbles' columns,
    # then the high ones'), 2 K halves (the first half of the step's packed columns, both
    # nibbles, then the second half: `_fused_kernel._wt_accumulate`, INT4_SPLIT 2; needs
    # block_k >= 64, else the wait). A field to compare the forms on one tile
    int4_split_form: int = 0
    # weight tiles through a tensor descriptor (TMA on Hopper and newer; the interpreter runs
    # it too); plain loads where Triton has no descriptors or the weights are not aligned
    tma: bool = False
    # `moe_gemm_wt` only: an expert's rows past its last full token tile, up to `tail` of them
    # (a power of two >= 16, or 0 = off), ride on that tile's program as a second MMA
    tail: int = 0
    # int4: the kernel reads a copy of the packed weights as fragment-ordered 32-bit words
    # (`quant.fragment_words`, kept in the stack's kernel cache) and dequantizes straight into
    # wgmma's register layout; ignored where a row or K tile is not a multiple of 32 bytes
    int4_frag: bool = False
    # int4 with fragment words on a GPU: the scales as pair words in the compute dtype
    # (`quant.scale_pairs`, cached like the words), one 32-bit load per row and K step that
    # Triton's pipeliner copies ahead, instead of two 16-bit loads and conversions in the loop;
    # ignored where the halves of a row are not whole groups
    int4_pairs: bool = False
    # int4 with fragment words and scale pairs: both as copies in which each K step's
    # [rows, block_k / 4 words] tile, and each group's scale words of those rows, are
    # contiguous (`quant.tile_rows`, cached like the words; rows = TILE_ROWS,
    # $WATTMOE_INT4_TILE_ROWS, of which smaller programs read a part): a 4 KB run per step and
    # 64 rows instead of 64 pieces of 64 bytes; ignored with TMA, and where the program's rows
    # do not divide the output rows or no tile divides the stack's rows and the up rows'
    # offset (`_tile_rows`)
    int4_tiles: bool = False

    def __post_init__(self) -> None:
        """Raises ConfigError for a value no launch can use (Triton tiles and warp counts are
        powers of two; a zero or negative count ran wrong or crashed the interpreter)."""
        for name in ("block_m", "block_n", "block_k", "num_warps"):
            v = getattr(self, name)
            if not is_power_of_two(v):
                raise ConfigError(f"kernel config {name} must be a power of two, got {v!r}")
        for name in ("group_m", "num_stages"):
            check_positive_int(f"kernel config {name}", getattr(self, name))
        if not is_int(self.tail) or self.tail < 0:  # which tails fit a tile: `_fit`
            raise ConfigError(f"kernel config tail must be an integer >= 0, got {self.tail!r}")
        if self.int4_split_form not in (0, 1, 2):  # `launch_meta`
            raise ConfigError("kernel config int4_split_form must be 0 (by the tile's rows), 1 "
                              f"(nibble halves) or 2 (K halves), got {self.int4_split_form!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelConfig:
        """The config a dict of its fields describes (`dataclasses.asdict`'s form: integers,
        and True/False or 1/0 for the flags).

        Raises:
            ConfigError: not a dict, an unknown or missing field, or a value of the wrong kind.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a kernel config is an object of its fields, got {d!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise ConfigError(f"kernel config: unknown field {unknown[0]!r} (known: "
                              f"{', '.join(fields)})")
        missing = [k for k, f in fields.items() if k not in d
                   and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"kernel config: missing field(s) {', '.join(missing)}")
        values: dict[str, Any] = {}
        for k, v in d.items():
            if fields[k].type == "bool":
                if v not in (True, False) or not isinstance(v, bool | int):
                    raise ConfigError(f"kernel config {k} must be true or false, got {v!r}")
                values[k] = bool(v)
            elif is_finite_real(v) and v == int(v):  # JSON may write 64 as 64.0
                values[k] = int(v)
            else:
                raise ConfigError(f"kernel config {k} must be an integer, got {v!r}")
        return cls(**values)


ConfigPair = tuple[KernelConfig, KernelConfig]  # (gate/up kernel, down kernel)


def _wt(block_n: int, block_m: int, block_k: int, group_m: int, warps: int,
        stages: int) -> KernelConfig:
    return KernelConfig(block_m, block_n, block_k, group_m, warps, stages, swap=True)


def _variants(table: dict[str, ConfigPair], names: Sequence[str], suffix: str,
              **changes: Any) -> dict[str, ConfigPair]:
    """"<name><suffix>": candidate <name> with `changes` in both launches' configs."""
    return {f"{n}{suffix}": (dataclasses.replace(table[n][0], **changes),
                             dataclasses.replace(table[n][1], **changes)) for n in names}


def _with_tail(table: dict[str, ConfigPair], names: Sequence[str],
               tail: int) -> dict[str, ConfigPair]:
    """"<name>r<tail>": candidate <name> (weights first) with tails of up to `tail` rows."""
    return _variants(table, names, f"r{tail}", tail=tail)


def _with_frag(table: dict[str, ConfigPair], names: Sequence[str]) -> dict[str, ConfigPair]:
    """"<name>f": int4 candidate <name> reading fragment-ordered words (`int4_frag`)."""
    return _variants(table, names, "f", int4_frag=True)


def _with_tma(table: dict[str, ConfigPair], names: Sequence[str]) -> dict[str, ConfigPair]:
    """"<name>d": candidate <name> with its weight tiles loaded through tensor descriptors."""
    return _variants(table, names, "d", tma=True)


# Candidates (the benchmark tunes among these on the device); names are what tables record.
# "m<T>[n<N>]": tokens x weights^T with T-token tiles; "w<N>t<T>": weights x tokens^T with
# N-output, T-token tiles (wgmma's M is 64 per warp group: N >= 64 keeps it on the tensor
# cores' widest instruction, and decode-size token tiles cost no padding).
CANDIDATES: dict[str, ConfigPair] = {
    "m16": (KernelConfig(16, 64, 128, 1, 4, 4), KernelConfig(16, 64, 128, 1, 4, 4)),
    "m32": (KernelConfig(32, 64, 128, 4, 4, 4), KernelConfig(32, 64, 128, 4, 4, 4)),
    "m64": (KernelConfig(64, 64, 64, 8, 4, 4), KernelConfig(64, 128, 64, 8, 4, 4)),
    "m64n128": (KernelConfig(64, 128, 64, 8, 4, 3), KernelConfig(64, 128, 64, 8, 4, 4)),
    "m128": (KernelConfig(128, 128, 64, 8, 8, 3), KernelConfig(128, 128, 64, 8, 8, 4)),
    "w64t16": (_wt(64, 16, 128, 1, 4, 4), _wt(64, 16, 128, 1, 4, 4)),
    "w64t32": (_wt(64, 32, 128, 4, 4, 4), _wt(64, 32, 128, 4, 4, 4)),
    "w64t64": (_wt(64, 64, 64, 8, 4, 4), _wt(64, 64, 64, 8, 4, 4)),
    "w128t64": (_wt(128, 64, 64, 8, 8, 4), _wt(128, 64, 64, 8, 8, 4)),
    "w128t128": (_wt(128, 128, 64, 8, 8, 3), _wt(128, 128, 64, 8, 8, 3)),
    "w64t64k128": (_wt(64, 64, 128, 8, 4, 3), _wt(64, 64, 128, 8, 4, 3)),
    "w64t128": (_wt(64, 128, 64, 8, 4, 3), _wt(64, 128, 64, 8, 4, 3)),
    "m128n256": (KernelConfig(128, 128, 64, 8, 8, 3), KernelConfig(128, 256, 64, 8, 8, 3)),
    # deeper pipelines and longer K runs per weight row, for steps bound by reading weights
    "m64n64": (KernelConfig(64, 64, 64, 8, 4, 4), KernelConfig(64, 64, 64, 8, 4, 4)),
    "m64s6": (KernelConfig(64, 64, 64, 8, 4, 6), KernelConfig(64, 128, 64, 8, 4, 5)),
    "w64t64s6": (_wt(64, 64, 64, 8, 4, 6), _wt(64, 64, 64, 8, 4, 6)),
    # 128 weight rows per program: the gathered activations are read from L2 half as often
    # (ncu, results/h200/kernels/run23_ncu_tune16k: L2 is the busiest unit at 512 tokens)
    "w128t64s3": (_wt(128, 64, 64, 8, 8, 3), _wt(128, 64, 64, 8, 8, 3)),
    # and 3 stages on 64-row tiles: more programs per SM (down: 4 instead of 3)
    "w64t64s3": (_wt(64, 64, 64, 8, 4, 3), _wt(64, 64, 64, 8, 4, 3)),
}
# TMA weight loads for the tiles that won tuning runs (results/h200/kernels/run15_retune) and
# the session-4 tiles above
CANDIDATES.update(_with_tma(CANDIDATES, ["m16", "m64", "m128", "m128n256", "w64t32", "w64t64",
                                         "w64t128", "w128t128", "w128t64", "w128t64s3",
                                         "w64t64s3"]))
# tails (results/h200/kernels/run19_padding: with 64-token tiles, experts just over 64 rows
# cost a second program that reads the weights again)
# and around 128-token tiles (steps with ~100-300 rows per expert, e.g. DeepSeek-V3 at 4096
# tokens: 128 +- 11 rows, so about half the experts read their weights twice without a tail)
for _t in (16, 32):
    CANDIDATES.update(_with_tail(CANDIDATES, ["w64t64", "w64t64d", "w128t64d", "w128t64s3d",
                                              "w64t64s3d", "w64t128d", "w128t128d"], _t))
# int4: always weights first (dequantized in registers). K steps cover 2 * block_k columns.
INT4_CANDIDATES: dict[str, ConfigPair] = {
    "w64t16": (_wt(64, 16, 64, 1, 4, 4), _wt(64, 16, 64, 1, 4, 4)),
    "w64t16k128": (_wt(64, 16, 128, 1, 4, 3), _wt(64, 16, 128, 1, 4, 3)),
    "w64t32": (_wt(64, 32, 64, 4, 4, 4), _wt(64, 32, 64, 4, 4, 4)),
    "w64t64": (_wt(64, 64, 64, 8, 4, 4), _wt(64, 64, 64, 8, 4, 4)),
    "w128t64": (_wt(128, 64, 64, 8, 8, 4), _wt(128, 64, 64, 8, 8, 4)),
    "w128t128": (_wt(128, 128, 64, 8, 8, 3), _wt(128, 128, 64, 8, 8, 3)),
    "w64t64k128": (_wt(64, 64, 128, 8, 4, 3), _wt(64, 64, 128, 8, 4, 3)),
    "w64t32s6": (_wt(64, 32, 64, 4, 4, 6), _wt(64, 32, 64, 4, 4, 6)),
    # K tiles of 32 packed columns: half the dequantized registers, more CTAs per SM
    "w64t64k32": (_wt(64, 64, 32, 8, 4, 4), _wt(64, 64, 32, 8, 4, 4)),
    "w64t128k32": (_wt(64, 128, 32, 8, 4, 3), _wt(64, 128, 32, 8, 4, 3)),
    "w64t32k32": (_wt(64, 32, 32, 4, 4, 4), _wt(64, 32, 32, 4, 4, 4)),
    "w64t128": (_wt(64, 128, 64, 8, 4, 3), _wt(64, 128, 64, 8, 4, 3)),
    # 128 weight rows over two warp groups on 16-token tiles: DeepSeek-V3 at 512 tokens (16 +- 4
    # rows per expert) reads as many activation bytes from L2 as weight bytes with 64-row tiles
    # (ncu, results/h200/kernels/run69_ncu_deepseek512: L2 77% busy, DRAM 56%, dequantization
    # skipped); 128 rows read them once per twice the weights
    "w128t16": (_wt(128, 16, 64, 1, 8, 4), _wt(128, 16, 64, 1, 8, 4)),
    "w128t16s3": (_wt(128, 16, 64, 1, 8, 3), _wt(128, 16, 64, 1, 8, 3)),
    "w128t32": (_wt(128, 32, 64, 1, 8, 4), _wt(128, 32, 64, 1, 8, 4)),
    "w128t32s3": (_wt(128, 32, 64, 1, 8, 3), _wt(128, 32, 64, 1, 8, 3)),
    "w128t32k128s3": (_wt(128, 32, 128, 1, 8, 3), _wt(128, 32, 128, 1, 8, 3)),
    "w128t32k128": (_wt(128, 32, 128, 1, 8, 2), _wt(128, 32, 128, 1, 8, 2)),
    "w256t32s3": (_wt(256, 32, 64, 1, 16, 3), _wt(256, 32, 64, 1, 16, 3)),
    "w256t32s2": (_wt(256, 32, 64, 1, 16, 2), _wt(256, 32, 64, 1, 16, 2)),
    "w256t16s3": (_wt(256, 16, 64, 1, 16, 3), _wt(256, 16, 64, 1, 16, 3)),
    # 256 rows over two warp groups (two m64 MMAs each): sm_90 down at 127-128 registers, 2
    # CTAs per SM (the 16-warp w256 tiles: 1); as the down launch of the 512-token int4
    # entries of DeepSeek-V3 and Qwen3 since runs 76-79 (results/h200/kernels: 3.5% and 5.7%
    # less energy per captured experts step); 512 rows over four warp groups spilled in
    # gate/up: not a candidate
    "w256t32s3w8": (_wt(256, 32, 64, 1, 8, 3), _wt(256, 32, 64, 1, 8, 3)),
    "w256t16s3w8": (_wt(256, 16, 64, 1, 8, 3), _wt(256, 16, 64, 1, 8, 3)),
}
INT4_CANDIDATES.update(_with_tma(INT4_CANDIDATES, ["w64t16", "w64t64", "w64t128", "w64t64k32",
                                                   "w64t128k32", "w128t128"]))
for _t in (16, 32):
    INT4_CANDIDATES.update(_with_tail(INT4_CANDIDATES, ["w64t64k32", "w64t64k32d", "w64t64"],
                                      _t))
# and on 16- and 32-token tiles, for steps with ~16-48 rows per expert (512 tokens: Qwen3-30B-A3B
# 32 +- 6, DeepSeek-V3 16 +- 4): run 53 (results/h200/kernels/run53_floors) had the table's
# 64- and 32-token tiles there, half of whose MMA columns are padding
INT4_CANDIDATES.update(_with_tail(INT4_CANDIDATES, ["w64t32", "w64t32k32", "w64t16", "w128t16",
                                                   "w128t16s3"], 16))
INT4_CANDIDATES.update(_with_tail(INT4_CANDIDATES, ["w64t32", "w64t32k32"], 32))
# every int4 tile also with fragment-ordered words: compiled for sm_90, the K loop of the
# `w64t64k32` gate/up launch has 279 instead of 345 instructions (no byte loads and byte
# packing before the dequantization), and the int4 launches are bound by issuing them (ncu,
# results/h200/kernels/run23_ncu_tune16k: an instruction every 2.2 cycles per scheduler)
INT4_CANDIDATES.update(_with_frag(INT4_CANDIDATES, list(INT4_CANDIDATES)))
# and with scale pair words ("...p", `int4_pairs`): ncu of the table's OLMoE 512-token int4
# launches (results/h200/kernels/run36_verify) has them waiting on global loads 0.56 (gate/up)
# and 1.31 (down) cycles per issued instruction; the 16-bit scale loads are the K loop's only
# global loads that the pipeliner leaves in the loop (sm_90 SASS: 8 LDG.U16 + 8 F2F per step)
INT4_CANDIDATES.update(_variants(INT4_CANDIDATES, [n for n in INT4_CANDIDATES
                                                   if n.endswith("f")], "p", int4_pairs=True))
# and with words and scale pairs in tile order ("...x", `int4_tiles`), for the tiles of steps
# bound by reading weights (16-64 tokens): ncu of DeepSeek-V3's table launch at 512 tokens
# (results/h200/kernels/run69_ncu_deepseek512) has it reading HBM at ~51% of peak, where the bf16
# launch (128-byte row pieces, no scales) reads at 95%; each K step reads 64-byte pieces of 64
# rows, and one 4-byte scale word per row
# (and on the 128-token tiles of 4096 tokens and more: `w128t128fpx` is the table's 4096- and
# 16384-token entry since runs 76-78, 3-7% less energy per layer step than the row-major words)
INT4_CANDIDATES.update(_variants(INT4_CANDIDATES, [
    n for n in INT4_CANDIDATES if n.endswith("fp") and "d" not in n], "x", int4_tiles=True))
# Candidates that lost every tuning run on the H200 were dropped (their timings are in
# results/h200/kernels/run5-run11): m64k128, m32n128, w128t64k128 (over the shared memory),
# w64t64w8, and the fp32-dequantizing "...c" int4 tiles (`int4_asm=False`, still used by
# benchmarks/gpu/kernel_diag.py to measure the inline-PTX dequantization); int4 128-row tiles
# over two warp groups with 32-column K steps (w128t64k32, w128t64k32s3, w128t32k32,
# w128t128k32 and their TMA variants; results/h200/kernels/run28_verify_int4: at OLMoE 512
# tokens the best, w128t64k32s3d, took 285 us per step against 264 for the table's pick);
# and with tail rows (w128t64r16fp, w128t64r32fp; results/h200/kernels/run50_w128: OLMoE 512
# gate/up 117 vs 104 us); on 32-token tiles (w128t32, w128t32k32s3, with 16-row tails;
# results/h200/kernels/run55_w128t32: Qwen3 512 gate/up 133 vs 108 us, down 83 vs 85). Kernel
# variants measured and reverted: block-split words (run44),
# gate and up rows stacked over two warp groups (run47), interleaved gate/up rows (run41).


def heuristic_config(num_assign: int, num_experts: int, quantized: bool = False,
                     sm90: bool = False, elem_size: int = 2, tiles128: bool = True) -> str:
    """Candidate name for N assignments over E experts, by rows per expert (no tuning);
    elem_size: bytes per element of a dense stack (2: bf16/fp16, 4: fp32); tiles128: whether
    128-row programs can read the stack's int4 words in tile order (`choose_config`).

    int4 on sm_90 (`sm90`): the families that won every int4 tuning of the three H200 shapes
    (kernel_configs/nvidia_h200.json, runs 70-78, 94): fragment words and scale pairs in tile
    order, with tail rows on 32- and 64-token tiles, and above ~96 rows per expert the
    128-row `w128t128fpx` that every shape's 4096- and 16384-token entry holds (it spent
    3.6-4.8% less than `w64t128fpx` at 4096 tokens on Qwen3 and DeepSeek-V3, run 77, before
    its K halves); they fall back to row-major words, or to half-split codes, where a
    shape's tiles or groups are not whole. All have 64-column K steps, so they share one
    tile-order copy of a stack's int4 weights (64-row programs read halves of its 128-row
    tiles; until session 15 the 128-row pick would have kept a second copy, and the
    heuristic took `w64t128fpx` instead). Where 128-row tiles are not whole in the stack
    (`tiles128` False: a width not a multiple of 128) while 64-row ones are in tile order,
    `w64t128fpx`: on a gpt-oss-120b-like shape (H = F = 2880, groups of 32) at 4096 tokens
    it spent 1718 mJ per captured experts step against 2369 for `w128t128fpx`, which read
    its words row-major there (results/h200/kernels/run116_w64_rows).
    bf16 on sm_90: the entries that won the bf16 tunings of five shapes by rows per expert (the
    three of the table and two untuned ones, Mixtral-8x7B and a 60-expert top-4 shape, run 82:
    the previous heuristic's picks spent 18-30% more energy per layer step than the tuned ones
    there, and at 4096 tokens on Mixtral more than grouped; on two shapes outside that choice,
    run 83, these picks spent 8-27% less than the previous ones): 16-token tiles up to ~12 rows,
    weights-first 32-token tiles up to ~24, weights-first tiles with TMA loads and 16-row
    tails up to ~96, 128-row tiles with a
    128 x 256 down launch up to ~384, then 128 x 256 tiles. fp32 stacks keep the plain tiles
    without `m32`: in fp32 its gate/up launch (and `w64t32`'s, and `m128n256d`'s down) needs
    more shared memory than an sm_90 SM has (245,760 bytes against 232,448; compiled with
    Triton 3.6: results/cpu/compile_sm90/fp32_smem.md).
    Elsewhere the plain tiles, which no GPU of another kind has measured against."""
    m = num_assign / max(num_experts, 1)
    if quantized and sm90:
        return ("w64t16fpx" if m <= 16 else "w64t32r16fpx" if m <= 48 else "w64t64r16fpx"
                if m <= 96 else "w128t128fpx" if tiles128 else "w64t128fpx")
    if quantized:
        return "w64t16" if m <= 16 else "w64t32" if m <= 32 else "w64t64" if m <= 96 else (
            "w128t128")
    if elem_size > 2:
        return "m16" if m <= 16 else "m64" if m <= 160 else "m64n128" if m <= 640 else "m128"
    if sm90:
        return ("m16" if m <= 12 else "w64t32" if m <= 24 else "w64t64dr16/m64d" if m <= 48
                else "w64t64dr16/w128t64dr16" if m <= 96 else "w128t128dr16/m128n256d"
                if m <= 384 else "m128n256d")
    if m <= 16:
        return "m16"
    if m <= 48:
        return "m32"
    if m <= 160:
        return "m64"
    if m <= 640:
        return "m64n128"
    return "m128"


# every key `shape_key` can give (the weights: torch's dtype name, or int4 with its group)
_TABLE_KEY = re.compile(r"E=[1-9]\d*,H=[1-9]\d*,F=[1-9]\d*,(swiglu|relu),"
                        r"(float32|bfloat16|float16|int4g[1-9]\d*)")


def shape_key(st: ExpertStack) -> str:
    """Key of a stack's shape in tuned tables: 'E=64,H=2048,F=1024,swiglu,bfloat16' (int4
    stacks: '...,int4g128', the group size)."""
    q = f"int4g{st.group_size}" if st.quantized else str(st.dtype).removeprefix("torch.")
    return f"E={st.num_experts},H={st.hidden_size},F={st.inner_size},{st.form},{q}"


def device_key(device: torch.device) -> str:
    """File stem of a device's tuned table: 'nvidia_h200'."""
    if device.type != "cuda":
        return device.type
    return _cuda_key(_cuda_index(device))


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _cuda_key(index: int) -> str:
    name = torch.cuda.get_device_name(index).lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


# Tuned tables: {device key: {shape key: {assignments (str): candidate name}}}.
_TUNED: dict[str, dict[str, dict[str, str]]] = {}


CONFIG_ENV = "WATTMOE_KERNEL_CONFIGS"


def load_tuned(device: torch.device) -> dict[str, dict[str, str]]:
    """The tuned table of `device`, or an empty one.

    Looked up in $WATTMOE_KERNEL_CONFIGS first (a directory holding <device key>.json, or one
    table file, as `kernels_bench.py` writes them: `tuned_configs.json`), then in the shipped
    kernel_configs/<device key>.json. Entries of a user table override shipped ones of the same
    shape. Raises ConfigError if the variable names nothing or an unreadable table, or the
    table has an entry the launcher cannot use (a shape key no stack has, a size that is not a
    positive integer, a name that is not a candidate: `_check_entries`).
    """
    key = device_key(device)
    if key not in _TUNED:
        table: dict[str, dict[str, str]] = {}
        shipped = CONFIG_DIR / f"{key}.json"
        if shipped.is_file():
            table = json.loads(shipped.read_text()).get("configs", {})
        user = os.environ.get(CONFIG_ENV, "").strip()
        if user:
            table = {**table, **_user_table(Path(user), key)}
        _TUNED[key] = table
    return _TUNED[key]


def _user_table(path: Path, key: str) -> dict[str, dict[str, str]]:
    if path.is_dir():
        path = path / f"{key}.json"
        if not path.is_file():
            return {}  # no table for this device there
    elif not path.is_file():
        raise ConfigError(f"{CONFIG_ENV}={path}: no such file or directory")
    try:
        payload = json.loads(path.read_text())
        configs = payload["configs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{CONFIG_ENV}: {path} is not a tuned table ({exc!r}; "
                          "expected JSON with a 'configs' object)") from None
    device = payload.get("device")
    if device not in (None, key):
        log.warning("%s: %s was tuned on %s, used for %s", CONFIG_ENV, path, device, key)
    if not isinstance(configs, dict) or not all(isinstance(v, dict) for v in configs.values()):
        raise ConfigError(f"{CONFIG_ENV}: {path}: 'configs' must map shape keys to "
                          "{assignments: candidate} objects")
    for shape, entries in configs.items():
        _check_entries(path, shape, entries)
    return configs


def _check_entries(path: Path, shape: str, entries: dict[str, Any]) -> None:
    """Raises ConfigError for a user table's entry that `choose_config` could not use (it
    would fall back to the heuristic without a word): a shape key that no stack has (see
    `shape_key`), a size that is not a positive integer, or a name that is not a candidate
    (or "A/B" of two) of the shape's kind (int4 or not)."""
    if _TABLE_KEY.fullmatch(shape) is None:
        raise ConfigError(
            f"{CONFIG_ENV}: {path}: shape key {shape!r} matches no expert stack; write it like "
            "'E=64,H=2048,F=1024,swiglu,bfloat16' (experts, hidden, inner, swiglu|relu, and "
            "the weights: float32|bfloat16|float16, or int4g<group size>; "
            "`fused_triton.shape_key(stack)`)")
    quantized = shape.rsplit(",", 1)[-1].startswith("int4g")
    for size, name in entries.items():
        where = f"{CONFIG_ENV}: {path}: {shape!r} at {size!r}"
        try:
            ok = int(size) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{where}: the key must be the assignments per step (a "
                              "positive integer: tokens x top-k)")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: {name!r} is not a candidate name (a string)")
        if resolve_config(name, quantized) is None:
            raise ConfigError(f"{where}: unknown {'int4 ' if quantized else ''}fused kernel "
                              f"config {name!r} (not in {'INT4_' if quantized else ''}"
                              "CANDIDATES of this version; 'A/B' names two of them)")


def set_tuned(device: torch.device, table: dict[str, dict[str, str]]) -> None:
    """Replaces the in-process tuned table of `device` (what the benchmark's tuning found)."""
    _TUNED[device_key(device)] = table


def resolve_config(name: str, quantized: bool) -> ConfigPair | None:
    """The (gate/up, down) pair of a candidate name, or of "A/B" (A's gate/up launch with B's
    down launch, what per-launch tuning records); None if a name is unknown."""
    table = INT4_CANDIDATES if quantized else CANDIDATES
    first, slash, second = name.partition("/")
    if not slash:
        second = first
    if first not in table or second not in table:  # "A/" and "/B" name nothing
        return None
    return table[first][0], table[second][1]


# a tuned entry serves steps up to this factor away from its size (assignments per step);
# further away the heuristic by rows per expert: a table tuned only at 4096 tokens (128-token
# tiles for ~500 rows per expert) would run 1-token decode steps in tiles 99% empty. 8 keeps
# the shipped table's picks from 8 to 131072 tokens per step (its sizes are 64 to 16384), and
# below 8 tokens too, where the heuristic does not tell the sizes apart
TUNED_REACH = 8


def choose_config(st: ExpertStack, num_assign: int, device: torch.device) -> str:
    """Candidate for this stack and step: the tuned table's nearest size where that is within
    `TUNED_REACH` times the step's assignments, or where the heuristic picks the same for both
    sizes (decode steps below a table's smallest size); else the heuristic."""
    # 128-row programs read int4 words in tile order where the widths are whole 128-row tiles;
    # where they are not but scale pairs (each half of a row whole groups) let 64-row
    # programs read tile order, those are the heuristic's pick (run 116)
    g = st.group_size
    pairs = g is not None and halves_whole(st.hidden_size, st.inner_size, g)
    tiles128 = not pairs or (st.hidden_size % 128 == 0 and st.inner_size % 128 == 0)

    def heuristic(n: int) -> str:  # off the path of a step that its table serves
        return heuristic_config(n, st.num_experts, st.quantized, _is_sm90(device),
                                st.dtype.itemsize, tiles128)

    entries = load_tuned(device).get(shape_key(st))
    if entries:
        dist = {n: abs(math.log2(max(int(n), 1) / max(num_assign, 1))) for n in entries}
        near = min(dist, key=dist.__getitem__)
        name = entries[near]
        if ((dist[near] <= math.log2(TUNED_REACH) or heuristic(int(near)) == heuristic(num_assign))
                and resolve_config(name, st.quantized) is not None):
            return name
    return heuristic(num_assign)


def _is_sm90(device: torch.device) -> bool:
    """Whether `device` is an NVIDIA GPU of compute capability 9.0 (H100, H200)."""
    if device.type != "cuda" or torch.version.hip is not None:
        return False
    return _cuda_sm90(_cuda_index(device))


@functools.cache
def _cuda_sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


@functools.lru_cache(maxsize=4096)  # once per (config, shape): it runs on every step
def _fit(cfg: KernelConfig, n_out: int, k_dim: int, qgroup: int | None) -> KernelConfig | None:
    """Shrinks tiles to the problem; None if no Triton tile fits (tiny or odd widths).

    int4 K tiles (in packed columns) must divide both the group size and K/2, so that each
    dequantized tile lies in one quantization group.
    """
    if cfg.tail:
        if cfg.tail < 16 or not is_power_of_two(cfg.tail) or cfg.tail > cfg.block_m:
            raise ConfigError(f"kernel config tail={cfg.tail}: a power of two from 16 to the "
                              f"token tile ({cfg.block_m}), or 0 (off)")
        if not (cfg.swap or qgroup is not None):
            raise ConfigError("kernel config tail: only the weights-first kernel (swap=True, "
                              "'w...' candidates) has tail rows")
    bn = min(cfg.block_n, max(16, 1 << (n_out - 1).bit_length()))
    if qgroup is not None:
        if k_dim % 2:
            return None
        bk = 1 << (min(cfg.block_k, qgroup).bit_length() - 1)  # Triton tiles: powers of two
        while bk >= 16 and ((k_dim // 2) % bk or qgroup % bk):
            bk //= 2
    else:
        bk = min(cfg.block_k, 1 << (k_dim.bit_length() - 1)) if k_dim >= 16 else 0
    if bk < 16:
        return None
    frag = (cfg.int4_frag and qgroup is not None and bk % FRAGMENT_BYTES == 0
            and (k_dim // 2) % FRAGMENT_BYTES == 0)
    return dataclasses.replace(cfg, block_n=bn, block_k=bk, int4_frag=frag)


# ---------------------------------------------------------------------------------------------
# Launcher.


def _launch(
    a: torch.Tensor, tok: torch.Tensor, wt: torch.Tensor, counts: torch.Tensor,
    w: torch.Tensor, s: torch.Tensor | None, c: torch.Tensor, n_out: int, k_dim: int,
    up_rows: int, cfg: KernelConfig, *, gather: bool, gated: bool, act: int, combine: int,
    qgroup: int | None, ieee: bool, cache: dict | None = None, w_layout: Layout = None,
) -> None:
    """One launch; combine: 0 store rows, 1 weighted atomic add at the rows' tokens, 2 store
    weighted rows. cache: where to keep weight descriptors of `w` (its stack's
    `kernel_cache`; None for weights that live only for this call). w_layout: how int4 w
    holds its codes (`ExpertStack.layout13`): a launch that reads that tile order reads w
    itself, the others a copy made from its half-split codes."""
    num_assign, num_experts = tok.numel(), counts.numel()
    bm = cfg.block_m
    num_pid_m = (num_assign + min(num_experts, num_assign) * (bm - 1)) // bm
    grid = (num_pid_m * triton_cdiv(n_out, cfg.block_n),)
    mode = _dequant_mode(cfg, a, qgroup)
    spair = s is not None and _uses_scale_pairs(cfg, mode, k_dim, qgroup)
    tiles = _tile_rows(cfg, n_out, up_rows, w.shape[-2]) if spair else 0
    pdt = a.dtype if _gpu_frag_words(mode) else torch.float16
    if tiles:  # words and pairs in tile order (`quant.tile_rows`)
        s = _derived(s, cache, "pair_tiles", pdt, tiles)
        if w_layout == (tiles, cfg.block_k // 4):  # stored so (`Int4Linear.set_layout`)
            w = w.view(torch.int32)
        else:
            w = _derived(w, cache, "frag_tiles", None, tiles, cfg.block_k // 4,
                         layout=w_layout)
    elif spair:  # the interpreter (MODE 4) reads fp16 pairs: the stored scales, exactly
        s = _derived(s, cache, "pairs", pdt)
    if _frag_words(mode) and not tiles:  # fragment-ordered words: 4 packed bytes per element
        w = _derived(w, cache, "frag", layout=w_layout)
    elif qgroup is not None and not tiles and w_layout is not None:  # half-split codes
        w = _derived(w, cache, "codes", layout=w_layout)
    w_desc = (_weight_descriptor(w, cfg, cache, cfg.block_k // 4 if _frag_words(mode) else None)
              if cfg.tma else None)
    meta = launch_meta(cfg, num_experts=num_experts, k_dim=k_dim, gather=gather, gated=gated,
                       act=act, combine=combine, qgroup=qgroup, ieee=ieee,
                       interpret=not a.is_cuda, w_tma=w_desc is not None, int4_dequant=mode,
                       spair=spair, tiles=tiles)
    if w_desc is None:
        w_desc = w  # unused by the kernel
    kernel = _kernel(interpret=not a.is_cuda, swap=cfg.swap or qgroup is not None)
    if not (cfg.swap or qgroup is not None):
        kernel[grid](
            a, tok, wt, counts, w, c, n_out, k_dim, num_experts, num_pid_m,
            a.stride(0), w.stride(0), w.stride(1), c.stride(0), up_rows, w_desc, **meta,
        )
        return
    scales = s if s is not None else w
    kernel[grid](
        a, tok, wt, counts, w, scales, c, n_out, k_dim, num_experts, num_pid_m,
        a.stride(0), w.stride(0), w.stride(1),
        scales.stride(0) if s is not None else 0, scales.stride(1) if s is not None else 0,
        c.stride(0), up_rows, w_desc, **meta,
    )


# Tiles of more rows wait for each K step's MMAs (`INT4_WAIT`). In nibble halves the 256-row
# down launch (`w256t32s3w8fpx`) takes 197 registers instead of the waiting loop's 127 (Triton
# 3.6, sm_90; a cap of 128 spills, results/cpu/compile_sm90/w256_split_maxnreg.txt), one CTA per
# SM instead of two, and spent 5-7% more energy per experts step at 512 tokens than waiting
# (results/h200/kernels/run91_split: Qwen3-30B-A3B and DeepSeek-V3, whose down launch it is). In
# K halves (`int4_split_form` 2) it takes 128 registers and 407-409 K-loop instructions instead of
# 430 (w256_split_k.txt), yet spent +1.8% (Qwen3) and +0.9% (DeepSeek-V3) against waiting, in
# alternating windows of one process (results/h200/kernels/run97_khalves); the broken loop was
# 0.7-0.9% below waiting there, so there is little to win. Up to this many rows the tile is
# unpacked in halves (runs 91-92: nibble halves 3-4% less energy than waiting; K halves below).
INT4_SPLIT_MAX_ROWS = 128
# Tiles of more rows than this, up to INT4_SPLIT_MAX_ROWS, unpack in K halves where the K step
# allows (INT4_SPLIT_K_MIN_BLOCK_K), else in nibble halves. On `w128t128fpx`'s down launch (the
# 4096- and 16384-token entries) K halves take 127 registers against 163-166 in nibble halves
# (results/cpu/compile_sm90/w128_split_k_triton36.txt) and spent less energy per captured
# experts step in alternating windows of one process: Qwen3-30B-A3B 4096 tokens -2.0%, OLMoE
# 4096 -1.1%, DeepSeek-V3 4096 -2.8%, OLMoE 16384 -0.6% (results/h200/kernels/run98_khalves128,
# run99_khalves128b). 64-row tiles keep the nibble halves (K halves not measured there).
INT4_NIBBLE_MAX_ROWS = 64
# K halves split the step's fragment words into whole 32-byte blocks (the word order is kept
# within a block: `quant.fragment_words`)
INT4_SPLIT_K_MIN_BLOCK_K = 64


def _split_by_rows(cfg: KernelConfig) -> int:
    """`int4_split_form` 0: nibble halves (1) up to INT4_NIBBLE_MAX_ROWS rows, K halves (2) up
    to INT4_SPLIT_MAX_ROWS where the K step is two whole blocks (else nibble halves), the wait
    (0) above."""
    if cfg.block_n <= INT4_NIBBLE_MAX_ROWS:
        return 1
    if cfg.block_n <= INT4_SPLIT_MAX_ROWS:
        return 2 if cfg.block_k >= INT4_SPLIT_K_MIN_BLOCK_K else 1
    return 0


def launch_meta(cfg: KernelConfig, *, num_experts: int, k_dim: int, gather: bool, gated: bool,
                act: int, combine: int, qgroup: int | None, ieee: bool, interpret: bool,
                w_tma: bool, int4_dequant: int, spair: bool = False,
                tiles: int = 0) -> dict[str, Any]:
    """The constexpr arguments, num_warps and num_stages of one launch of `moe_gemm` (tokens
    first) or `moe_gemm_wt` (weights first: `cfg.swap`, and every int4 launch). `_launch`
    passes them; `benchmarks/gpu/compile_check.py` compiles with the same ones."""
    meta: dict[str, Any] = dict(
        GATHER_A=gather, GATED=gated, ACT=act, COMBINE=int(combine),
        BLOCK_E=max(MIN_BLOCK_E, 1 << (num_experts - 1).bit_length()),
        EVEN_K=k_dim % cfg.block_k == 0, DOT_IEEE=ieee, DOT_F32=interpret,
        BLOCK_K=cfg.block_k, W_TMA=w_tma, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if cfg.swap or qgroup is not None:
        # a non-gated int4 launch waits for each K step's MMAs or unpacks in halves
        guard = qgroup is not None and not gated and not cfg.int4_inflight_mma
        split = 0
        if guard and int4_dequant in (3, 4) and cfg.int4_split_dequant:
            split = cfg.int4_split_form or _split_by_rows(cfg)
            if split == 2 and cfg.block_k < INT4_SPLIT_K_MIN_BLOCK_K:
                split = 0  # no whole blocks to split the step into: the wait
        meta.update(BLOCK_F=cfg.block_n, BLOCK_T=cfg.block_m, GROUP_T=cfg.group_m,
                    INT4=qgroup is not None, QGROUP=qgroup or 1, INT4_DEQUANT=int4_dequant,
                    TAIL=cfg.tail, TAIL_T=cfg.tail or 16, SPAIR=spair, W_TILES=tiles,
                    INT4_SPLIT=split, INT4_WAIT=guard and split == 0)
    else:
        meta.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, GROUP_M=cfg.group_m)
    return meta


@functools.cache
def _descriptor_class() -> Any:
    """Triton's host-side TensorDescriptor, or None (Triton without tensor descriptors)."""
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:
        return None
    return TensorDescriptor


def _weight_descriptor(w: torch.Tensor, cfg: KernelConfig, cache: dict | None = None,
                       block_k: int | None = None) -> Any:
    """A [BLOCK_N, BLOCK_K] tile descriptor of stacked weights [E, rows, K] viewed as
    [E * rows, K]; None where TMA cannot address them (no descriptors in this Triton, a
    non-contiguous stack, or rows/base not 16-byte aligned), and the kernel loads tiles itself.
    block_k: the K tile in w's elements where it is not cfg.block_k (fragment words: a
    quarter). Kept in `cache` (the stack's `kernel_cache`) when given."""
    bk = cfg.block_k if block_k is None else block_k
    key = (w.data_ptr(), w.dtype, cfg.block_n, bk)
    if cache is not None and key in cache:
        return cache[key]
    desc = _new_descriptor(w, cfg if bk == cfg.block_k else dataclasses.replace(cfg, block_k=bk))
    if cache is not None:
        cache[key] = desc
    return desc


def _new_descriptor(w: torch.Tensor, cfg: KernelConfig) -> Any:
    cls = _descriptor_class()
    if cls is None or w.dim() != 3 or not w.is_contiguous():
        return None
    row_bytes = w.shape[2] * w.element_size()
    if (row_bytes % 16 or w.data_ptr() % 16 or cfg.block_k * w.element_size() < 16
            or max(cfg.block_n, cfg.block_k) > 256):
        return None
    return cls.from_tensor(w.view(-1, w.shape[2]), [cfg.block_n, cfg.block_k])


def _dequant_mode(cfg: KernelConfig, a: torch.Tensor, qgroup: int | None) -> int:
    """`_dequant_int4`'s MODE: 1 bit operations (GPU, bf16/fp16), 0 through fp32, 2 skipped;
    fragment-ordered words (`cfg.int4_frag`, as `_fit` leaves it): 3 bit operations on a GPU,
    4 through fp32 in Triton's interpreter (a GPU computing in fp32 reads the half-split
    codes: the word order's fp32 unpacking compiles to spills there), 5 skipped (GPU)."""
    if qgroup is None:
        return 0
    # the inline PTX is NVIDIA's: ROCm builds of torch also report is_cuda
    gpu16 = a.is_cuda and torch.version.hip is None and a.dtype in _BIT_DTYPES
    if cfg.int4_frag:
        if gpu16 and cfg.int4_asm and not cfg.int4_skip_dequant:
            return 3
        if gpu16 and cfg.int4_skip_dequant:  # diagnostic: the words, not dequantized
            return 5
        if not a.is_cuda:
            return 4
    if not gpu16:
        return 0
    if cfg.int4_skip_dequant:
        return 2
    return 1 if cfg.int4_asm else 0


# activation dtypes whose int4 launches dequantize with bit operations on an NVIDIA GPU
# (`_dequant_mode` 1 and 3: the inline PTX writes 16-bit lanes)
_BIT_DTYPES = (torch.bfloat16, torch.float16)


def reads_tile_order(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the int4 launches on `device` for activations of `dtype` read codes in tile
    order (fragment words and scale pairs): bit-operation dequantization (`_dequant_mode`
    1 and 3, `_BIT_DTYPES`) on sm_90, whose table and heuristic pick the tile-order configs
    (`choose_config`). Elsewhere they read the half-split codes, so codes stored in tile
    order would cost a copy there instead of saving one (`SimpleMoELayer`'s int4 layout
    policy asks this)."""
    return dtype in _BIT_DTYPES and _is_sm90(device)  # sm_90 is an NVIDIA GPU


def _frag_words(mode: int) -> bool:
    """Whether `_dequant_int4`'s MODE reads fragment-ordered words (3, 4 and 5)."""
    return mode in (3, 4, 5)


def _gpu_frag_words(mode: int) -> bool:
    """Whether MODE reads fragment words on a GPU (3, and its diagnostic skip 5): scale pair
    words there are in the compute dtype, in the interpreter (4) in fp16."""
    return mode in (3, 5)


def _derived(w: torch.Tensor, cache: dict | None, kind: str,
             dtype: torch.dtype | None = None, *tile: int, layout: Layout = None
             ) -> torch.Tensor:
    """A copy of stack tensor w in the form the int4 kernels read, kept in cache (the stack's
    `kernel_cache`): kind 'frag', packed codes [E, rows, K/2] as fragment-ordered words
    [E, rows, K/8] (`quant.fragment_words`); 'pairs', scales [E, rows, G] as pair words in
    `dtype` [E, rows, G/2] (`quant.scale_pairs`); 'frag_tiles' (tile: rows, words per K step)
    and 'pair_tiles' (tile: rows), the same in tile order (`quant.tile_rows`); 'codes', the
    half-split codes of codes stored in tile order. layout: how w holds its codes
    (`ExpertStack.layout13`; the copies are made from its half-split codes).

    Rewritten in place, at the same address, once w has been written to since (its version
    counter), here and by `refresh_frag_words` before a CUDA graph replays: a captured graph
    reads the copies of the current weights. Stacks keep a version counter even when built
    under inference mode (`stacked._stack_int4`); other inference tensors have none, and their
    copies are made once. Writes that bypass the version counter (`.data`, numpy, DLPack) need
    `refresh_frag_words(stack.kernel_cache, force=True)`. The copies are made outside
    inference mode, so that they can be rewritten in place in any mode.

    Raises:
        RuntimeError: the copy is missing or stale while a CUDA graph is being captured
            (making it would be recorded, not run: capture after an eager call).
    """
    if kind.startswith("pair") != (dtype is not None):
        raise ValueError(f"int4 {_DERIVED[kind][0]}: a dtype is given for scale pairs only")
    key: tuple = (kind, w.data_ptr()) if dtype is None and not tile else (
        kind, w.data_ptr(), dtype, *tile)
    if cache is None:
        return _write_derived(key, w, None, layout)
    hit = cache.get(key)
    version = _version(w)
    if hit is not None and hit[0] == version and hit[3] == layout:
        return hit[1]
    if w.is_cuda and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"int4 {_DERIVED[kind][0]} are made outside CUDA graph capture: run "
                           "the step once eagerly before capturing it")
    out = _write_derived(key, w, hit[1] if hit is not None else None, layout)
    cache[key] = (version, out, w, layout)
    if hit is None:  # memory the stack holds from now on: say so once per copy
        total = sum(copy_bytes(cache).values())
        log.info("fused int4: new %s copy of a [%s] stack, %.1f MB; its copies hold %.1f MB",
                 _DERIVED[kind][0], "x".join(map(str, w.shape)), out.numel()
                 * out.element_size() / 1e6, total / 1e6)
    return out


def _frag_copy(w: torch.Tensor, params: tuple, out: torch.Tensor | None) -> torch.Tensor:
    return fragment_words(w, out=out)


def _pairs_copy(w: torch.Tensor, params: tuple, out: torch.Tensor | None) -> torch.Tensor:
    return scale_pairs(w, params[0], out=out)


def _per_expert_tiles(w: torch.Tensor, per: int, out: torch.Tensor | None,
                      one: Callable[[torch.Tensor], torch.Tensor], rows: int,
                      cols: int) -> torch.Tensor:
    """`quant.tile_rows` of `one(w[e])` for every expert e, into out (int32 [E, R, C / per]);
    an expert at a time, so that the temporary is one expert's."""
    if out is None:
        out = torch.empty((*w.shape[:-1], w.shape[-1] // per), dtype=torch.int32,
                          device=w.device)
    for e in range(w.shape[0]):
        tile_rows(one(w[e]), rows, cols, out=out[e])
    return out


def _frag_tiles_copy(w: torch.Tensor, params: tuple, out: torch.Tensor | None) -> torch.Tensor:
    _, rows, words_per_step = params
    return _per_expert_tiles(w, 4, out, fragment_words, rows, words_per_step)


def _pair_tiles_copy(w: torch.Tensor, params: tuple, out: torch.Tensor | None) -> torch.Tensor:
    dtype, rows = params
    return _per_expert_tiles(w, 2, out, lambda we: scale_pairs(we, dtype), rows, 1)


def _codes_copy(w: torch.Tensor, params: tuple, out: torch.Tensor | None) -> torch.Tensor:
    return w if out is None else out.copy_(w)  # `_write_derived` gave the half-split codes


# cache kinds of `_derived`: (what they are, last dim of w per element of the copy, builder)
_DERIVED: dict[str, tuple[str, int, Callable[..., torch.Tensor]]] = {
    "frag": ("fragment words", 4, _frag_copy), "pairs": ("scale pairs", 2, _pairs_copy),
    "frag_tiles": ("tile-ordered fragment words", 4, _frag_tiles_copy),
    "pair_tiles": ("tile-ordered scale pairs", 2, _pair_tiles_copy),
    "codes": ("half-split codes", 1, _codes_copy),
}


def _version(w: torch.Tensor) -> int | None:
    """w's version counter; None for inference tensors, which have none."""
    return None if w.is_inference() else w._version


def _write_derived(key: tuple, w: torch.Tensor, out: torch.Tensor | None,
                   layout: Layout = None) -> torch.Tensor:
    """The copy of w that cache key `key` names, into out (at its address) where out still
    fits; made outside inference mode so that it can be rewritten in place in any mode. From
    the half-split codes of w where w holds them in tile order (`layout`)."""
    _, per, build = _DERIVED[key[0]]
    shape = (*w.shape[:-1], w.shape[-1] // per)
    fits = out is not None and out.shape == shape
    with torch.inference_mode(False), torch.no_grad():
        if layout is None:
            return build(w, key[2:], out if fits else None)
        if not fits:  # codes (uint8) or words (int32)
            out = torch.empty(shape, dtype=torch.uint8 if per == 1 else torch.int32,
                              device=w.device)
        for e in range(w.shape[0]):  # decoded an expert at a time: one expert's temporary
            build(from_layout(w[e:e + 1], layout), key[2:], out[e:e + 1])
        return out


def _int4_copies(cache: dict) -> Iterator[tuple[tuple, tuple]]:
    """The int4 copies (`_derived`) in a stack's `kernel_cache`, as (key, (version, copy, w,
    layout)); the other entries (TMA descriptors) are left out. Over a snapshot of the
    entries, so that the caller may rewrite them as it goes."""
    for key, entry in list(cache.items()):
        if isinstance(key, tuple) and key and key[0] in _DERIVED:
            yield key, entry


def refresh_frag_words(cache: dict, force: bool = False) -> frozenset[tuple[tuple, int]]:
    """Rewrites in place the int4 copies (fragment words, scale pairs: `_derived`) in a stack's
    `kernel_cache` whose weights were written to since (their version counter); a replayed
    CUDA graph runs no `_launch` that would notice. A few attribute reads when nothing
    changed. force: rewrite all of them, for writes that bypass the version counter (through
    `.data`, numpy, DLPack or raw storage).

    Returns each copy's cache key with its address. A graph captured while a copy it reads
    had another address (the cache was cleared, or the copy made anew) would read memory that
    is no longer that copy, and must be captured again; copies made since for other program
    sizes do not concern it (`copies_moved`, used by `graphs.GraphedBackend` and
    `graphs.GraphedLayer`).
    """
    ptrs = []
    for key, (version, out, w, layout) in _int4_copies(cache):
        now = _version(w)
        if force or now != version:
            out = _write_derived(key, w, out, layout)
            cache[key] = (now, out, w, layout)
        ptrs.append((key, out.data_ptr()))
    return frozenset(ptrs)


def copy_bytes(cache: dict) -> dict[str, int]:
    """Bytes of the int4 copies (`_derived`) in a stack's `kernel_cache`, per kind ('frag',
    'pairs', 'frag_tiles', 'pair_tiles', 'codes'; kinds with no copy are left out): the memory
    the fused int4 kernels hold besides the packed codes and scales."""
    out: dict[str, int] = {}
    for key, (_, copy, _, _) in _int4_copies(cache):
        out[key[0]] = out.get(key[0], 0) + copy.numel() * copy.element_size()
    return out


def copies_moved(captured: frozenset[tuple[tuple, int]],
                 now: frozenset[tuple[tuple, int]]) -> bool:
    """Whether a graph captured with the int4 copies `captured` (`refresh_frag_words` then)
    would read stale memory with the copies `now`: one of its copies is gone or has another
    address. The key travels with the address, so that memory the allocator hands from one
    copy to another copy is not taken for the same copy."""
    return not captured <= now


def _uses_scale_pairs(cfg: KernelConfig, mode: int, k_dim: int, qgroup: int | None) -> bool:
    """Whether a launch reads scale pair words: `cfg.int4_pairs` with fragment words (MODE 3 on
    a GPU, and its diagnostic skip 5; 4 in Triton's interpreter, so that the CPU tests run the
    pairs' indexing) and halves of whole groups (a byte's two scales are then groups g and
    g + G/2)."""
    return (cfg.int4_pairs and _frag_words(mode) and qgroup is not None
            and (k_dim // 2) % qgroup == 0)


TILE_ROWS_ENV = "WATTMOE_INT4_TILE_ROWS"


def _tile_rows_setting() -> int:
    """Rows per tile of the tile-order copies: $WATTMOE_INT4_TILE_ROWS, or 128. Either way,
    with shared copies (the default, `_tile_copies_setting`), one copy per stack and K step
    size serves every program size. 128: a 128-row program reads
    one run per K step, and a 64-row program half of a tile (one run per K step too; until
    session 15 64-row programs read a copy of 64-row tiles of their own, a second copy of the
    int4 weights wherever the table mixes 64- and 128-row entries); 64: 128-row programs
    read two tiles' runs per K step, which on the H200 cost DeepSeek-V3's int4 step at 512
    tokens 2.2% more energy (results/h200/kernels/run75_tile_rows: 3559 and 3571 vs 3487 and
    3488 uJ/token, alternating, one lease). Read once, by the first
    launch that could read tile order (`_tile_rows`), so that a bad value fails there and not
    at import."""
    raw = os.environ.get(TILE_ROWS_ENV, "").strip()
    if not raw:
        return DEFAULT_TILE_ROWS
    try:
        rows = int(raw)
    except ValueError:
        rows = 0
    if rows < 16 or not is_power_of_two(rows):
        raise ConfigError(f"${TILE_ROWS_ENV}={raw!r}: a power of two >= 16 (rows per tile of "
                          "the int4 tile-order copies), or unset for 128")
    return rows


TILE_ROWS: int | None = None  # `_tile_rows_setting()`, read at the first use


def tile_rows_in_use() -> int:
    """The rows per tile the launches read tile order in: what this process read at its first
    such launch (`TILE_ROWS`), else the setting now."""
    return TILE_ROWS if TILE_ROWS is not None else _tile_rows_setting()

TILE_COPIES_ENV = "WATTMOE_INT4_TILE_COPIES"


def _tile_copies_setting() -> bool:
    """Whether programs smaller than TILE_ROWS read a part of the TILE_ROWS-row tiles
    ($WATTMOE_INT4_TILE_COPIES unset or `shared`: one tile-order copy per stack and K step
    size) or tiles of their own rows (`per-program`: a copy per program size, as before
    session 15). On the H200 shared tiles hold half the int4 copies of a stack run at 64 to
    4096 tokens (DeepSeek-V3: 5.81 GB against 11.63, besides 5.81 GB of codes and scales)
    and cost the steps whose programs all have 64 rows up to 0.6% more energy (captured
    steps, both layouts in one process: OLMoE 512 tokens +0.6%, Qwen3 64 +0.3%, OLMoE 64 -0.1%,
    Qwen3 512 0.0%, results/h200/kernels/run111_tile_layouts_one_process; run104_one_copy).
    Read once, at the first use (`_tile_rows`)."""
    raw = os.environ.get(TILE_COPIES_ENV, "").strip()
    if raw in ("", "shared"):
        return True
    if raw == "per-program":
        return False
    raise ConfigError(f"${TILE_COPIES_ENV}={raw!r}: 'shared' (one int4 tile-order copy per "
                      "stack, the default) or 'per-program' (a copy per program size)")


TILE_SHARED: bool | None = None  # `_tile_copies_setting()`, read at the first use

# every $WATTMOE_* setting this module reads (`check_settings`)
KERNEL_SETTINGS = (TILE_ROWS_ENV, TILE_COPIES_ENV, CONFIG_ENV)


def check_settings(device: torch.device) -> None:
    """Reads every setting of `KERNEL_SETTINGS` now and raises for the first bad one.

    The library reads each at its first use: $WATTMOE_INT4_TILE_ROWS and
    $WATTMOE_INT4_TILE_COPIES at the first int4 launch that could read tile order,
    $WATTMOE_KERNEL_CONFIGS (the tuned table of `device`, `load_tuned`) at the first fused step
    on the device. A program that runs many launches and records an error per launch (a
    benchmark) calls this before the first one, so that a bad value is one clear error
    instead. The tile settings are checked as they are in the environment now (a process that
    has launched already keeps the values it read then); the table is loaded and kept, as
    `load_tuned` keeps it (one this process loaded already is not read again).

    Raises:
        ConfigError: a bad value; the message names the variable and the value.
    """
    _tile_rows_setting()
    _tile_copies_setting()
    load_tuned(device)


def _tile_rows(cfg: KernelConfig, n_out: int, up_rows: int, rows: int) -> int:
    """The rows per tile in which a launch that reads scale pairs reads words and pairs in tile
    order, or 0 (row-major): with `cfg.int4_tiles` and no TMA, where block_n divides the output
    rows, TILE_ROWS where that divides the up rows' offset and the stack's rows (smaller
    programs read a part of a tile; `_tile_copies_setting`), else block_n where that does.
    Programs larger than TILE_ROWS read several tiles' runs per K step
    (`_tile_rows_setting`)."""
    global TILE_ROWS, TILE_SHARED
    if not cfg.int4_tiles or cfg.tma:
        return 0
    if TILE_ROWS is None:
        TILE_ROWS = _tile_rows_setting()
    if TILE_SHARED is None:
        TILE_SHARED = _tile_copies_setting()
    # whole program tiles: a program reads its rows in tile order without the row-major
    # path's wrap, so rows past n_out would read the next rows (or past the stack)
    if n_out % cfg.block_n:
        return 0
    # TILE_ROWS-row tiles, which smaller programs read a part of (one copy for every program
    # size up to TILE_ROWS; not with TILE_SHARED off), where they are whole in the stack and
    # start at the up rows; else tiles of the program's rows (both powers of two: one
    # divides the other)
    own = min(TILE_ROWS, cfg.block_n)
    for tr in dict.fromkeys((TILE_ROWS if TILE_SHARED else own, own)):
        if up_rows % tr == 0 and rows % tr == 0:
            return tr
    return 0


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fused_forward(
    st: ExpertStack, x: torch.Tensor, d: Dispatch, config: str | ConfigPair | None = None
) -> torch.Tensor:
    """sum_k w_k * expert_k(x) with the two Triton kernels (see the module docstring).

    Args:
        st: the stacked experts (dense or int4).
        x: [T, H] tokens, on the stack's device.
        d: the dispatch.
        config: a `CANDIDATES` name, "A/B" (A's gate/up launch, B's down launch) or a
            (gate/up, down) pair; None picks one.

    Falls back to `grouped_forward` where Triton cannot run these tensors or no tile fits.
    """
    use_triton = triton_runs_on(x)
    num_assign = d.token_idx.numel()
    qgroup = st.group_size if st.quantized else None
    if config is None:
        config = choose_config(st, num_assign, x.device)
    if isinstance(config, str):
        resolved = resolve_config(config, st.quantized)
        if resolved is None:
            table = INT4_CANDIDATES if st.quantized else CANDIDATES
            raise ConfigError(f"unknown {'int4 ' if st.quantized else ''}fused kernel config "
                              f"{config!r} (known: {', '.join(table)}, or 'A/B' of two)")
        pair = resolved
    else:
        pair = config
    h_dim, f_dim = st.hidden_size, st.inner_size
    cfg1 = _fit(pair[0], f_dim, h_dim, qgroup)
    cfg2 = _fit(pair[1], h_dim, f_dim, qgroup)
    if not use_triton or cfg1 is None or cfg2 is None:
        return grouped_forward(st, x, d)
    x = x.contiguous()
    if num_assign == 0:
        return torch.zeros_like(x)
    tokens = x.shape[0]
    rowof = d.rowof
    if rowof is not None and (rowof.dim() != 2 or rowof.shape[0] != tokens
                              or rowof.numel() < num_assign):
        raise ShapeError(
            f"Dispatch.rowof is {tuple(rowof.shape)} for {tokens} tokens and {num_assign} "
            "assignments (want [tokens, k]); a dispatch whose token_idx was changed must drop "
            "it (rowof=None)")
    tok = d.token_idx.contiguous()
    wt = d.weight.contiguous()
    counts = d.counts.contiguous()
    h = torch.empty(num_assign, f_dim, dtype=x.dtype, device=x.device)
    ieee = x.dtype == torch.float32
    cache: dict | None = st.kernel_cache
    if st.quantized:
        w13, s13, w2, s2 = st.q13, st.s13, st.q2, st.s2
    else:
        w13, s13, w2, s2 = st.w13, None, st.w2, None
        if w13.dtype != x.dtype:  # type: ignore[union-attr]
            w13, w2 = w13.to(x.dtype), w2.to(x.dtype)  # type: ignore[union-attr]
            cache = None  # copies for this call only
    assert w13 is not None and w2 is not None
    lay13, lay2 = st.layout13, st.layout2
    _launch(x, tok, wt, counts, w13, s13, h, f_dim, h_dim, f_dim if st.gated else 0,
            cfg1, gather=True, gated=st.gated, act=1 if st.gated else 2, combine=0,
            qgroup=qgroup, ieee=ieee, cache=cache, w_layout=lay13)
    if rowof is None:  # weighted fp32 atomic adds at each row's token, then one cast
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        _launch(h, tok, wt, counts, w2, s2, out, h_dim, f_dim, 0, cfg2, gather=False,
                gated=False, act=0, combine=1, qgroup=qgroup, ieee=ieee, cache=cache,
                w_layout=lay2)
        return out if x.dtype == torch.float32 else out.to(x.dtype)
    # weighted rows stored in dispatch order, then each token's k rows added in one pass
    y = torch.empty(num_assign, h_dim, dtype=x.dtype, device=x.device)
    _launch(h, tok, wt, counts, w2, s2, y, h_dim, f_dim, 0, cfg2, gather=False,
            gated=False, act=0, combine=2, qgroup=qgroup, ieee=ieee, cache=cache,
            w_layout=lay2)
    out = torch.empty_like(x)
    top_k = rowof.shape[1]
    grid = (triton_cdiv(tokens, COMBINE_BLOCK_T), triton_cdiv(h_dim, COMBINE_BLOCK_H))
    _combine_kernel(interpret=not x.is_cuda)[grid](
        y, rowof.contiguous(), out, tokens, h_dim, num_assign, y.stride(0), out.stride(0),
        TOP_K=top_k, BLOCK_T=COMBINE_BLOCK_T, BLOCK_H=COMBINE_BLOCK_H, num_warps=4)
    return out


def make_fused_backend(config: str | ConfigPair | None = None) -> Callable[..., torch.Tensor]:
    """A `fused` backend pinned to one launch configuration (None: chosen per step)."""

    def backend(experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
        """The fused Triton kernels for all experts (module docstring); `loop` under autograd."""
        if needs_autograd(experts, x):
            return loop_backend(experts, x, d)
        return fused_forward(stacked_experts(experts), x, d, config)

    return backend


fused_backend = register_backend("fused")(make_fused_backend())


def config_table_payload(table: dict[str, dict[str, str]], **meta: object) -> dict[str, object]:
    """What a tuned-table file holds: the candidates' parameters, the table and provenance."""
    return {
        **meta,
        "candidates": {k: [asdict(c) for c in v] for k, v in CANDIDATES.items()},
        "int4_candidates": {k: [asdict(c) for c in v] for k, v in INT4_CANDIDATES.items()},
        "configs": table,
    }
