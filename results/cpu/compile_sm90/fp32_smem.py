"""Shared memory, registers and spills of dense configurations compiled for sm_90 in a dtype,
on Mixtral-8x7B's expert shape (see fp32_smem.md). Usage: fp32_smem.py DTYPES NAMES."""

import sys

sys.path.insert(0, "benchmarks/gpu")
sys.path.insert(0, "benchmarks")

import compile_check as cc

from wattmoe.moe import fused_triton as ft

_launch_meta = ft.launch_meta
IEEE = {"on": False}


def launch_meta(*args, **kwargs):
    kwargs["ieee"] = IEEE["on"]  # fp32 MMAs as `_launch` runs them
    return _launch_meta(*args, **kwargs)


cc.ft.launch_meta = launch_meta
H, F, E = 4096, 14336, 8
for dtype in sys.argv[1].split(","):
    IEEE["on"] = dtype == "fp32"
    for name in sys.argv[2].split(","):
        g, d = ft.resolve_config(name, False)
        for which, cfg, n_out, k_dim, gated, comb in (("gu", g, F, H, True, 0),
                                                       ("dn", d, H, F, False, 2)):
            cfg = ft._fit(cfg, n_out, k_dim, None)
            try:
                r = cc.compile_one(cfg.swap, cfg, dtype=dtype, int4=False, gated=gated,
                                   combine=comb, n_out=n_out, k_dim=k_dim, qgroup=128, arch=90,
                                   num_experts=E)
                print(dtype, name, which, "shared", r["shared_bytes"], "regs",
                      r.get("registers"), "spill", r.get("spill_stores", r.get("spills")),
                      flush=True)
            except Exception as e:
                print(dtype, name, which, "ERROR", type(e).__name__, str(e)[:200], flush=True)
