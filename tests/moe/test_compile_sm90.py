"""The fused int4 kernels compiled for sm_90 by the installed Triton and its bundled ptxas (no
GPU): properties of the machine code that no CPU run can show.

Runs `benchmarks/gpu/compile_check.py` in a child process: the test session runs Triton in its
interpreter (`tests/moe/interpreter.py`), which cannot compile for a GPU target.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import interpreter  # noqa: F401  (Triton, where this module imports it, interpreted)

ROOT = Path(__file__).resolve().parents[2]


def _nvidia_tool(name: str) -> Path | None:
    """Triton's bundled `name` (ptxas, cuobjdump), found without importing Triton: an import
    here, at collection, would settle Triton's mode before the interpreter tests set theirs."""
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "backends" / "nvidia" / "bin" / name
    return path if path.exists() else None


def _compile(tmp_path: Path, name: str, *extra: str) -> list[dict]:
    out = tmp_path / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu/compile_check.py"), "--shape", "olmoe-1b-7b",
         "--weights", "int4", "--out", str(out), *extra],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows and not [r for r in rows if "error" in r], rows
    return rows


@pytest.mark.skipif(_nvidia_tool("ptxas") is None, reason="no Triton with a bundled ptxas")
def test_int4_k_loops_rewrite_no_registers_of_an_mma_in_flight(tmp_path: Path) -> None:
    # runs 86-88 (results/h200/kernels): the int4 down launches left each K step's last MMA in
    # flight while the next step's dequantization rewrote its A registers, and the H200 (Triton
    # 3.6) gave wrong, at times non-finite, outputs. The shipped entries (tile in nibble halves:
    # w64t16fpx; in K halves: w128t128fpx; the 256-row w256t32s3w8fpx waits for each step's
    # MMAs) must have no such write in either launch with the installed Triton
    configs = ("w64t16fpx", "w128t128fpx", "w256t32s3w8fpx")
    rows = _compile(tmp_path, "now", "--configs", ",".join(configs))
    assert {(r["config"], r["kernel"]) for r in rows} == {
        (c, k) for c in configs for k in ("gate_up", "down")}
    assert all(r["inflight_a_writes"] == 0 and r["mma_loops"] >= 1 for r in rows), rows
    assert all(r["wgmma_a_from_registers"] == r["wgmma"] > 0 for r in rows)
    # the 256-row down launch stays at two CTAs of 8 warps per SM (Triton 3.6: 127 registers
    # waiting, no spills; 197 in nibble halves, run 91's +5-7% energy)
    down = next(r for r in rows if r["config"] == "w256t32s3w8fpx" and r["kernel"] == "down")
    assert down["registers"] <= 128 and down["stack_bytes"] == 0, down
    # K halves keep the 128-row down launch under 128 registers (Triton 3.6: 127; nibble halves
    # 163-166)
    down = next(r for r in rows if r["config"] == "w128t128fpx" and r["kernel"] == "down")
    assert down["registers"] <= 128 and down["stack_bytes"] == 0, down


@pytest.mark.skipif(_nvidia_tool("ptxas") is None, reason="no Triton with a bundled ptxas")
def test_k_halves_candidates_rewrite_no_registers_of_an_mma_in_flight(tmp_path: Path) -> None:
    # every 128-row fragment-word candidate's down launch unpacks in K halves (`launch_meta`),
    # which only w128t128fpx's was measured in (runs 98-99): one of each kind a tune could ship
    # (row-major words with pair scales, TMA loads, K steps of 128, tails, 3 stages) must keep
    # no in-flight MMA's registers either
    from wattmoe.moe import fused_triton as ft  # here: Triton's mode is the interpreter tests'

    configs = ("w128t128fp", "w128t128df", "w128t32k128fpx", "w128t16r16fpx", "w128t32s3fpx")
    for name in configs:
        meta = ft.launch_meta(ft.INT4_CANDIDATES[name][1], num_experts=64, k_dim=1024,
                              gather=False, gated=False, act=0, combine=2, qgroup=128,
                              ieee=False, interpret=False, w_tma=False, int4_dequant=3)
        assert meta["INT4_SPLIT"] == 2, name
    rows = _compile(tmp_path, "k", "--configs", ",".join(configs))
    downs = [r for r in rows if r["kernel"] == "down"]
    assert {r["config"] for r in downs} == set(configs)
    assert all(r["inflight_a_writes"] == 0 and r["mma_loops"] >= 1 for r in downs), downs


@pytest.mark.skipif(_nvidia_tool("cuobjdump") is None,
                    reason="no Triton with a bundled cuobjdump")
def test_the_register_check_finds_the_writes_in_the_kernel_that_failed() -> None:
    # the check on the machine code that gave the non-finite outputs: the two launches of
    # w64t16fpx as the H200's Triton 3.6 compiled them before the fix (run 88's Triton cache).
    # Its down launch rewrites the in-flight MMAs' A registers (71 instructions: the asm's
    # constants and the next step's word loads), its gate/up launch does not. (Triton 3.9's
    # ptxas happens to keep those registers even for the K loop before the fix, so a compile
    # here cannot show the hazard.)
    import tarfile

    from tests.scripts import load_script

    cc = load_script("benchmarks/gpu/compile_check.py")
    tgz = ROOT / "results/h200/kernels/run88_sanitizers/triton_cache.tgz"
    writes = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            if member.name.endswith("moe_gemm_wt.cubin"):
                ttgir = tar.extractfile(member.name[:-len("cubin")] + "ttgir").read().decode()
                sass = cc._tool_output("cuobjdump", ["-sass"], tar.extractfile(member).read())
                # gate/up: two MMAs (low and high half) for each of gate and up; down: two
                launch = {4: "gate_up", 2: "down"}[ttgir.count("ttng.warp_group_dot ")]
                writes[launch] = cc.inflight_a_writes(sass)
    assert sorted(writes) == ["down", "gate_up"]
    assert writes["gate_up"] == (1, [])  # one K loop, checked, clean
    loops, found = writes["down"]
    assert loops == 1 and len(found) == 71
    assert any(w.startswith("LDS.64 R44") for w in found), found[:8]


def test_the_register_check_on_written_out_loops() -> None:
    # synthetic SASS: the MMA after the loop's last full wait is in flight at the back edge;
    # a wait that leaves groups pending is no wait; predicate destinations come before the
    # register one; a loop without MMAs, or no loop at all, checks nothing
    from tests.scripts import load_script

    cc = load_script("benchmarks/gpu/compile_check.py")

    def sass(*lines: str) -> str:
        return "\n".join(f"        /*{16 * i:04x}*/  {t} ;" for i, t in enumerate(lines))

    def fill(first: str, wait: str, after: str) -> str:  # a K loop with 2 MMAs, 1 wait
        return sass("DEPBAR.LE SB0, 0x8", first, "WARPGROUP.ARRIVE",
                    "HGMMA.64x16x16.F32.BF16 R24, R32, gdesc[UR8], R24", wait,
                    "HGMMA.64x16x16.F32.BF16 R24, R36, gdesc[UR8], R24, gsb0", after,
                    "@!P1 BRA 0x0000")

    full = "WARPGROUP.DEPBAR.LE gsb0, 0x0"
    assert cc.inflight_a_writes(fill("IMAD.MOV.U32 R38, RZ, RZ, 0x1", full, "NOP")) == (
        1, ["IMAD.MOV.U32 R38, RZ, RZ, 0x1"])
    assert cc.inflight_a_writes(fill("NOP", full, "SHFL.IDX PT, R39, R1, 0x1, 0x1f")) == (
        1, ["SHFL.IDX PT, R39, R1, 0x1, 0x1f"])
    assert cc.inflight_a_writes(fill("NOP", full, "LDS.64 R40, [R2]")) == (1, [])
    assert cc.inflight_a_writes(fill("STS [R36], R1", full, "NOP")) == (1, [])
    # a wait for all but one group: the R32 MMA may still be in flight, and its write counts
    assert cc.inflight_a_writes(fill("NOP", "WARPGROUP.DEPBAR.LE gsb0, 0x1",
                                     "LDS.128 R32, [R2]")) == (1, ["LDS.128 R32, [R2]"])
    assert cc.inflight_a_writes(sass("NOP", "IMAD R1, R1, 0x2, RZ", "BRA 0x0000")) == (0, [])
    assert cc.inflight_a_writes("no disassembly") == (0, [])
