"""torch.profiler capture of one scenario: the kernels it launched and their device times."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wattmoe.cost_model.base import KernelTime

log = logging.getLogger(__name__)


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
    out.sort(key=lambda k: k.device_time_s, reverse=True)
    return out[:top]
