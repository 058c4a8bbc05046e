"""Set-up shared by the tests that run Triton kernels on CPU tensors (Triton's interpreter).

Triton decides at its first import whether its library runs interpreted, so importing this
module sets TRITON_INTERPRET=1 before anything imports Triton (wattmoe imports it lazily). Test
modules import it first and use `pytestmark = requires_interpreter`; the autouse fixture keeps
the variable set while each test runs. Skipped where Triton is not installed, or was already
imported without the interpreter.
"""

from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest

pytest.importorskip("triton")

from wattmoe.moe import fused_triton as ft

requires_interpreter = pytest.mark.skipif(
    not ft.interpreting(), reason="Triton was imported before TRITON_INTERPRET=1 was set"
)


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
