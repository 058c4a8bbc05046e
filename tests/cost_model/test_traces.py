"""The kernel capture of a scenario (torch.profiler): what it returns and what it prints."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import torch

from wattmoe.cost_model import traces

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != traces.KINETO_LEVEL_ENV}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)


CAPTURE = """
    import os, torch
    from wattmoe.cost_model.traces import capture_kernels
    a = torch.randn(64, 64)
    for _ in range(3):
        ks = capture_kernels(lambda: a @ a, "cpu", reps=2)
    print("LEVEL", os.environ.get("KINETO_LOG_LEVEL"))
    print("OPS", ",".join(k.name for k in ks))
"""


def test_capture_writes_nothing_to_stderr_and_finds_the_ops():
    # torch 2.13's profiler library wrote two "USDT: ... profiler_start/stop" lines per capture
    r = _child(CAPTURE)
    assert r.returncode == 0, r.stderr
    assert "USDT" not in r.stderr and "profiler_st" not in r.stderr, r.stderr
    assert "LEVEL 6" in r.stdout
    assert "aten::mm" in r.stdout.split("OPS ", 1)[1]


def test_a_level_the_user_set_is_kept():
    r = _child(CAPTURE, {traces.KINETO_LEVEL_ENV: "2"})
    assert r.returncode == 0, r.stderr
    assert "LEVEL 2" in r.stdout
    assert "aten::mm" in r.stdout


def test_an_empty_capture_says_how_to_see_the_hidden_messages(monkeypatch, caplog):
    monkeypatch.delenv(traces.KINETO_LEVEL_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger=traces.__name__):
        out = traces.capture_kernels(lambda: None, "cpu", reps=1, trace_name="nothing-here")
    assert out == []
    msgs = [r.getMessage() for r in caplog.records]
    assert any("nothing-here" in m and "KINETO_LOG_LEVEL=0" in m for m in msgs), msgs


def test_no_warning_when_the_user_chose_the_level(monkeypatch, caplog):
    monkeypatch.setenv(traces.KINETO_LEVEL_ENV, "3")
    with caplog.at_level(logging.WARNING, logger=traces.__name__):
        assert traces.capture_kernels(lambda: torch.zeros(1) + 1, "cpu", reps=1) != []
        traces.capture_kernels(lambda: None, "cpu", reps=1)
    assert not [r for r in caplog.records if "KINETO" in r.getMessage()]
    assert os.environ[traces.KINETO_LEVEL_ENV] == "3"
