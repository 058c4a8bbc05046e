"""Compiles the fused MoE kernels for a GPU target without a GPU, and reports what came out.

For each candidate of `wattmoe.moe.fused_triton` (and each of its two launches), compiles the
Triton kernel for sm_90 (or --arch) with the argument divisibility the JIT sees on a GPU
(16-byte aligned pointers and strides), then reads the PTX and ptxas' resource report:
registers, spills, shared memory, whether the MMAs are `wgmma` and whether their first operand
comes from registers (what the int4 path is built for), and how many shared-memory stores,
`cp.async` copies and TMA loads (`cp.async.bulk.tensor`) the kernel has. Nothing is run, so
this works on a CPU-only machine; numbers are the compiler's, not measurements.

    python benchmarks/gpu/compile_check.py --shape olmoe-1b-7b --weights bf16,int4
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace
from typing import Any

import torch
import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from wattmoe.errors import ConfigError
from wattmoe.moe import fused_triton as ft
from wattmoe.moe._fused_kernel import moe_gemm, moe_gemm_wt
from wattmoe.moe.presets import get_preset

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _meta import provenance, write_json

_PTR_ALIGNED = 16


def _signature(fn: Any, types: dict[str, str], consts: dict[str, Any]) -> dict[str, str]:
    names = fn.arg_names
    sig = {}
    for n in names:
        sig[n] = "constexpr" if n in consts else types[n]
    return sig


def compile_one(swap: bool, cfg: ft.KernelConfig, *, dtype: str, int4: bool, gated: bool,
                combine: int, n_out: int, k_dim: int, qgroup: int, arch: int,
                num_experts: int, dump: str = "",
                unaligned: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Compiles one launch with the constexprs `fused_triton._launch` passes on a GPU
    (`ft.launch_meta`) and returns the compiler's report. combine: 0 for gate/up (rows of h),
    2 for down as the layer runs it (weighted rows), 1 the atomic combine. dump: a path prefix
    under which the launch's TTGIR, PTX and SASS are written (`<dump>.ttgir` ...). unaligned:
    integer arguments compiled without the divisibility by 16 that the others get, as the JIT
    compiles them where their value is not a multiple of 16 (e.g. `stride_sn`, the scale pair
    words per row, 56 for Mixtral-8x7B's down launch)."""
    src_fn = moe_gemm_wt if (swap or int4) else moe_gemm
    fn = triton.jit(src_fn, do_not_specialize=["num_pid_t" if src_fn is moe_gemm_wt
                                                 else "num_pid_m"])
    a_t = f"*{dtype}"
    c_t = "*fp32" if combine == 1 else a_t
    types = {
        "a_ptr": a_t, "tok_ptr": "*i64", "wt_ptr": "*fp32", "cnt_ptr": "*i64",
        "w_ptr": "*u8" if int4 else a_t, "s_ptr": "*fp16" if int4 else a_t, "c_ptr": c_t,
        "n_out": "i32", "k_dim": "i32", "num_experts": "i32", "num_pid_m": "i32",
        "num_pid_t": "i32", "stride_am": "i32", "stride_we": "i32", "stride_wn": "i32",
        "stride_se": "i32", "stride_sn": "i32", "stride_cm": "i32", "up_rows": "i32",
    }
    # fragment-ordered words: 4 packed bytes per element
    mode = _gpu_dequant_mode(cfg, int4, qgroup, dtype)
    frag = ft._gpu_frag_words(mode)
    if frag:
        types["w_ptr"] = "*i32"
    spair = int4 and ft._uses_scale_pairs(cfg, mode, k_dim, qgroup)
    if spair:  # scale pair words
        types["s_ptr"] = "*i32"
    # words and pairs in tile order, as `_launch` decides (gate/up: the up rows F rows on)
    tiles = ft._tile_rows(cfg, n_out, n_out if gated else 0,
                          2 * n_out if gated else n_out) if spair else 0
    w_el = ("i32" if frag else "u8") if int4 else dtype
    bk_el = cfg.block_k // 4 if frag else cfg.block_k
    types["w_desc"] = (f"tensordesc<{w_el}[{cfg.block_n}, {bk_el}]>" if cfg.tma
                       else types["w_ptr"])
    meta = ft.launch_meta(cfg, num_experts=num_experts, k_dim=k_dim, gather=combine == 0,
                          gated=gated, act=(1 if gated else 2) if combine == 0 else 0,
                          combine=combine,
                          qgroup=qgroup if int4 else None, ieee=False, interpret=False,
                          w_tma=cfg.tma, int4_dequant=mode, spair=spair, tiles=tiles)
    opts = {"num_warps": meta.pop("num_warps"), "num_stages": meta.pop("num_stages")}
    consts: dict[str, Any] = dict(meta)
    if any(p.name == "k_dim" and p.is_constexpr for p in fn.params):  # since commit 40f897e
        consts["k_dim"] = k_dim
    sig = _signature(fn, types, consts)
    aligned = [i for i, n in enumerate(fn.arg_names)
               if n not in consts and n not in unaligned
               and (sig[n].startswith("*") or n.startswith("stride")
                    or n in ("n_out", "k_dim", "up_rows"))]
    attrs = {(i,): [["tt.divisibility", _PTR_ALIGNED]] for i in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    ptx = k.asm["ptx"]
    sass = _tool_output("cuobjdump", ["-sass"], k.asm["cubin"])
    if dump:
        os.makedirs(os.path.dirname(dump) or ".", exist_ok=True)
        for ext in ("ttgir", "ptx"):
            with open(f"{dump}.{ext}", "w") as fh:
                fh.write(k.asm[ext])
        with open(f"{dump}.sass", "w") as fh:
            fh.write(sass)
    mma_loops, hazards = inflight_a_writes(sass)
    wgmma = re.findall(r"wgmma\.mma_async[^;]*;", ptx)
    a_regs = sum(1 for w in wgmma if re.search(r"\}, \{%r", w) or _a_is_regs(w))
    return {
        **_resource_report(k.asm["cubin"]), **_sass_report(sass),
        "ptxas_serialized_wgmma": _serialization_warnings(ptx, arch), "w_tiles": tiles,
        "mma_loops": mma_loops, "inflight_a_writes": len(hazards),
        "shared_bytes": k.metadata.shared,
        "wgmma": len(wgmma), "wgmma_a_from_registers": a_regs,
        "mma_sync": len(re.findall(r"\bmma\.sync", ptx)),
        "st_shared": len(re.findall(r"\bst\.shared", ptx)),
        "cp_async": len(re.findall(r"cp\.async\.(?:cg|ca)", ptx)),
        "tma_loads": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
        "ldmatrix": len(re.findall(r"ldmatrix", ptx)),
        "cvt": len(re.findall(r"\bcvt\.", ptx)), "prmt": len(re.findall(r"\bprmt\.", ptx)),
    }


def _gpu_dequant_mode(cfg: ft.KernelConfig, int4: bool, qgroup: int, dtype: str) -> int:
    """The int4 MODE `_launch` uses on an NVIDIA GPU with activations of `dtype`."""
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    gpu = SimpleNamespace(is_cuda=True, dtype=dt)
    return ft._dequant_mode(cfg, gpu, qgroup if int4 else None)  # type: ignore[arg-type]


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,6})\*/\s+(.*?)\s*;")
_HGMMA_A = re.compile(r"HGMMA\S*\s+R\d+,\s*R(\d+),")
_BACK_EDGE = re.compile(r"\bBRA(?:\.\S+)?\s+(0x[0-9a-f]+)")
_FULL_WAIT = re.compile(r"^WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b")
_PREDICATE = re.compile(r"^!?U?P(?:T|\d)$")


def _written_registers(ins: str) -> set[int]:
    """The general registers a SASS instruction writes: its first register operand (after any
    predicate destinations, as in `SHFL ... PT, R5, ...`), widened by .64/.WIDE/CS2R (2), .128
    (4) or LDSM's .x2/.x4; none for stores, reductions, branches, barriers and MMAs (whose
    first register operand is read, or whose writes are not in flight questions here)."""
    ins = re.sub(r"^@!?U?P\w+\s+", "", ins)
    op, _, args = ins.partition(" ")
    if op.startswith(("HGMMA", "ST", "RED", "BAR", "BRA", "WARPGROUP", "DEPBAR", "LDGSTS",
                      "LDGDEPBAR", "EXIT", "RET")) or "SETP" in op:
        return set()
    operands = [a.strip() for a in args.split(",")]
    while operands and _PREDICATE.match(operands[0]):
        operands.pop(0)
    m = re.match(r"R(\d+)\b", operands[0]) if operands else None
    if not m:
        return set()
    width = 1
    if ".128" in op or ".X4" in op.upper():
        width = 4
    elif ".64" in op or ".WIDE" in op or op.startswith("CS2R") or ".X2" in op.upper():
        width = 2
    return set(range(int(m.group(1)), int(m.group(1)) + width))


def _mma_loops(sass: str, conditional: bool = False) -> list[list[str]]:
    """The instructions of each loop of the SASS (a branch back to an earlier address: its
    target to the branch) that has an HGMMA, in order; `conditional`: only loops closed by a
    predicated branch (a K loop, not the unconditional branches around TMA barrier waits)."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.search, sass.splitlines())
           if m]
    loops = []
    for addr, text in ins:
        jump = _BACK_EDGE.search(text)
        if jump and int(jump.group(1), 16) < addr and (text.startswith("@") or not conditional):
            body = [t for a, t in ins if int(jump.group(1), 16) <= a <= addr]
            if any(t.startswith("HGMMA") for t in body):
                loops.append(body)
    return loops


def inflight_a_writes(sass: str) -> tuple[int, list[str]]:
    """(loops with MMAs, instructions that write the A registers of an MMA still in flight):
    in each loop, the HGMMAs after the loop's last full wait (`WARPGROUP.DEPBAR.LE gsb0, 0x0`;
    a wait that leaves N groups pending counts as none) are in flight at its back edge until the
    first full wait of the next iteration, and PTX leaves it undefined what they read if their A
    registers are written before (results/h200/kernels/run88: ptxas reused them in the int4
    down launches' K loop). No writes and at least one loop: a kernel without the hazard; no
    loop: nothing was checked (the disassembly's form may have changed)."""
    loops = _mma_loops(sass)
    found = []
    for body in loops:
        waits = [k for k, t in enumerate(body) if _FULL_WAIT.match(t)]
        mmas = [k for k, t in enumerate(body) if t.startswith("HGMMA")]
        regs: set[int] = set()
        for t in body[(waits[-1] if waits else -1) + 1:]:
            a = _HGMMA_A.search(t)
            if a:  # an A fragment in registers: 4 of them
                regs |= set(range(int(a.group(1)), int(a.group(1)) + 4))
        # from the last MMA to the back edge, then from the top to the first full wait (with
        # none in the loop, all of it)
        window = body[mmas[-1] + 1:] + body[:waits[0]] if waits else body
        found += [t for t in window if _written_registers(t) & regs]
    return len(loops), found


def _tool_output(name: str, args: list[str], cubin: bytes) -> str:
    """stdout of Triton's bundled `name` (cuobjdump) on the kernel's cubin."""
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", name)
    if not os.path.exists(tool):
        tool = shutil.which(name) or name
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        out = subprocess.run([tool, *args, path], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr.strip()[-300:])
    return out.stdout


def _resource_report(cubin: bytes) -> dict[str, int]:
    """Registers and stack (spill) bytes from `cuobjdump -res-usage` on the kernel's cubin."""
    out = _tool_output("cuobjdump", ["-res-usage"], cubin)
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return {"registers": int(regs.group(1)) if regs else -1,
            "stack_bytes": int(stack.group(1)) if stack else 0}


def _sass_report(sass: str) -> dict[str, int]:
    """From the SASS: instructions in the main K loop (the longest loop with an HGMMA), and the
    kernel's HGMMA and `WARPGROUP.DEPBAR` (wgmma wait) counts."""
    return {"k_loop_instructions": max(map(len, _mma_loops(sass, conditional=True)), default=0),
            "hgmma": sass.count("HGMMA."), "wgmma_waits": sass.count("WARPGROUP.DEPBAR")}


def _serialization_warnings(ptx: str, arch: int) -> list[str]:
    """ptxas' "wgmma ... serialized" notes (C7513, C7515, ...) for this PTX (`ptxas -v`)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, f"-arch=sm_{arch}a", "-v", src, "-o",
                              os.path.join(tmp, "k.o")], capture_output=True, text=True,
                             check=False)
    return [m.group(1) for m in re.finditer(r"\((C75\d\d)\) Potential Performance Loss: wgmma",
                                             out.stderr)]


def _a_is_regs(instr: str) -> bool:
    # wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 {d...}, a, b-desc, ...: with A in
    # registers the second operand is a brace list, with A in shared memory a 64-bit descriptor.
    parts = instr.split("}", 1)
    return len(parts) > 1 and parts[1].lstrip(", ").startswith("{")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="olmoe-1b-7b", help="preset name")
    ap.add_argument("--weights", default="bf16,int4", help="comma list of bf16, int4")
    ap.add_argument("--configs", default="", help="candidate names (default: all)")
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--out", default="", help="also write the rows (and provenance) as JSON")
    ap.add_argument("--inflight-mma", action="store_true",
                    help="compile int4 launches with `int4_inflight_mma` (the K loop as before "
                         "run 89: the last MMA left in flight across the back edge)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a KernelConfig field for every launch (e.g. int4_split_dequant=1); "
                         "repeatable")
    ap.add_argument("--unaligned", default="", metavar="ARGS",
                    help="integer arguments (comma list, e.g. stride_sn) compiled without the "
                         "divisibility by 16 (the JIT's view where their value is not a "
                         "multiple of 16)")
    ap.add_argument("--dump", default="", metavar="DIR",
                    help="also write each launch's TTGIR, PTX and SASS to DIR")
    args = ap.parse_args(argv)
    bad = [w for w in args.weights.split(",") if w not in ("bf16", "int4")]
    if bad:
        ap.error(f"--weights: {', '.join(bad)} (bf16 or int4)")
    try:
        cfg = get_preset(args.shape)
    except ConfigError as exc:
        ap.error(f"--shape: {exc}")
    overrides: dict[str, object] = {}
    for item in args.set:
        field, eq, value = item.partition("=")
        if not eq:
            ap.error(f"--set {item!r}: FIELD=VALUE")
        low = value.strip().lower()
        overrides[field] = (True if low in ("true", "yes", "on") else
                            False if low in ("false", "no", "off") else
                            int(value) if value.strip().lstrip("-").isdigit() else value)
    try:
        ft.KernelConfig.from_dict({**dataclasses.asdict(ft.CANDIDATES["m16"][0]), **overrides})
    except ConfigError as exc:
        ap.error(f"--set: {exc}")
    unaligned = frozenset(a.strip() for a in args.unaligned.split(",") if a.strip())
    known = {n for fn in (moe_gemm, moe_gemm_wt)
             for n, p in inspect.signature(fn).parameters.items() if p.annotation != "tl.constexpr"}
    if unaligned - known:
        ap.error(f"--unaligned: {', '.join(sorted(unaligned - known))} (kernel arguments: "
                 f"{', '.join(sorted(known))})")
    meta = provenance() if args.out else {}
    h, f = cfg.hidden_size, cfg.expert_inner_size
    report = []
    for weights in args.weights.split(","):
        int4 = weights == "int4"
        table = ft.INT4_CANDIDATES if int4 else ft.CANDIDATES
        names = [n for n in args.configs.split(",") if n] or list(table)
        for name in names:
            swiglu = cfg.expert_form == "swiglu"
            for which, (n_out, k_dim, gated, combine) in (("gate_up", (f, h, swiglu, 0)),
                                                          ("down", (h, f, False, 2))):
                if name not in table:
                    continue
                c = table[name][0 if which == "gate_up" else 1]
                if args.inflight_mma:
                    c = dataclasses.replace(c, int4_inflight_mma=True)
                row = {"weights": weights, "config": name, "kernel": which}
                try:  # --set values that no launch takes (a tail on a tokens-first tile) too
                    c = ft.KernelConfig.from_dict({**dataclasses.asdict(c), **overrides})
                    c = ft._fit(c, n_out, k_dim, args.group if int4 else None)
                    if c is None:
                        continue
                    row.update(compile_one(c.swap, c, dtype="bf16", int4=int4, gated=gated,
                                           combine=combine, n_out=n_out, k_dim=k_dim,
                                           qgroup=args.group, arch=args.arch,
                                           num_experts=cfg.num_experts,
                                           dump=os.path.join(args.dump, f"{weights}_{name}_{which}")
                                           if args.dump else "",
                                           unaligned=unaligned))
                except Exception as e:  # a failed compile is a result here
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                report.append(row)
                print(json.dumps(row), flush=True)
                if args.out:  # after every row: an interrupted run keeps what it compiled
                    write_json(args.out, {**meta, "args": vars(args), "rows": report,
                                          "source": "compiler output (no GPU run)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
