"""The fused int4 kernels compiled for sm_90 by the installed Triton and its bundled ptxas (no
GPU): properties of the machine code that no CPU run can show.

Runs `benchmarks/gpu/compile_check.py` in a child process: the test session runs Triton in its
interpreter (`tests/moe/interpreter.py`), which cannot compile for a GPU target.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ptxas() -> Path | None:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return None
    path = Path(nv.__file__).parent / "bin" / "ptxas"
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


@pytest.mark.skipif(_ptxas() is None, reason="no Triton with a bundled ptxas")
def test_int4_k_loops_rewrite_no_registers_of_an_mma_in_flight(tmp_path: Path) -> None:
    # runs 86-88 (results/h200/kernels): the int4 down launches left each K step's last MMA in
    # flight while the next step's dequantization rewrote its A registers, and the H200 (Triton
    # 3.6) gave wrong, at times non-finite, outputs. The shipped entries (tile in halves:
    # w64t16fpx; whole tile with a wait per step: the 256-row w256t32s3w8fpx) must have no such
    # write in either launch with the installed Triton
    rows = _compile(tmp_path, "now", "--configs", "w64t16fpx,w256t32s3w8fpx")
    assert {(r["config"], r["kernel"]) for r in rows} == {
        (c, k) for c in ("w64t16fpx", "w256t32s3w8fpx") for k in ("gate_up", "down")}
    assert all(r["inflight_a_writes"] == 0 for r in rows), rows
    assert all(r["wgmma_a_from_registers"] == r["wgmma"] > 0 for r in rows)


@pytest.mark.skipif(_ptxas() is None, reason="no Triton with a bundled cuobjdump")
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
    assert writes["gate_up"] == []
    assert len(writes["down"]) == 71
    assert any(w.startswith("LDS.64 R44") for w in writes["down"]), writes["down"][:8]
