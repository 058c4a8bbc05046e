"""torch.profiler capture of one scenario: the kernels it launched and their device times."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wattmoe.cost_model.base import KernelTime

log = logging.getLogger(__name__)

# torch's profiler library (kineto) writes "USDT: ... profiler_start" and "... profiler_stop" to
# stderr at every capture, two lines per scenario of a sweep. Its levels put errors (4) below
# those lines (5), so hiding them hides its errors too: a capture that finds no kernel says
# how to see them (`_quiet_kineto`). A level the user set is kept.
KINETO_LEVEL_ENV = "KINETO_LOG_LEVEL"
_KINETO_QUIET = "6"


def _quiet_kineto() -> bool:
    """Sets kineto's log level above its per-capture lines unless the user chose one; True if
    this call (or an earlier one) set it. Read when the profiler library first starts."""
    if KINETO_LEVEL_ENV not in os.environ:
        os.environ[KINETO_LEVEL_ENV] = _KINETO_QUIET
    return os.environ[KINETO_LEVEL_ENV] == _KINETO_QUIET


def _device_time_us(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, attr, None)
        if v:
            return float(v)
    return 0.0


def capture_kernels(
    fn: Callable[[], Any],
    device: str,
    reps: int = 3,
    top: int = 12,
    tensorboard_dir: str | Path | None = None,
    trace_name: str = "scenario",
) -> list[KernelTime]:
    """Runs `fn` `reps` times under torch.profiler.

    On a GPU returns the CUDA kernels (name, launches per call, device time per call); on a CPU
    the aten ops by self CPU time. At most `top` entries, longest first. With
    `tensorboard_dir`, also writes a TensorBoard trace there (`trace_name` as worker name).
    """
    quiet = _quiet_kineto()
    from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler

    cuda = device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handler = (
        tensorboard_trace_handler(str(tensorboard_dir), worker_name=trace_name)
        if tensorboard_dir
        else None
    )
    with profile(activities=acts, on_trace_ready=handler, record_shapes=False) as prof:
        for _ in range(reps):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
    out: list[KernelTime] = []
    for evt in prof.key_averages():
        dev_type = str(getattr(evt, "device_type", "")).split(".")[-1]
        if cuda:
            t_us = _device_time_us(evt)
            if dev_type != "CUDA" or t_us <= 0:
                continue
        else:
            t_us = float(getattr(evt, "self_cpu_time_total", 0.0))
            if t_us <= 0 or not str(evt.key).startswith("aten::"):
                continue
        out.append(KernelTime(str(evt.key), evt.count / reps, t_us * 1e-6 / reps))
    if not out and quiet:
        log.warning(
            "torch.profiler saw no %s in %s; its library's messages are hidden (%s=%s): "
            "run with %s=0 to see them",
            "CUDA kernel" if cuda else "aten op", trace_name, KINETO_LEVEL_ENV, _KINETO_QUIET,
            KINETO_LEVEL_ENV)
    out.sort(key=lambda k: k.device_time_s, reverse=True)
    return out[:top]
