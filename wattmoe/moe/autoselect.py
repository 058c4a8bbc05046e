"""`auto`: picks an execution backend per step size and records every choice.

The choice depends on the device, the dtype, the stack's shape (E, H, F, form, int4 or not) and
the step's number of assignments, rounded up to a power of two (the bucket). The first step of
a bucket decides, once:

- with a `cost_fn` (the cost model's per-step joules, say), the cheapest candidate by it;
- otherwise by calibration: every candidate runs this very step once to warm up (compile,
  capture) and `repeats` times timed, and the fastest wins. On one device, at the power a
  saturated kernel draws, less time per step is less energy per step; energy itself cannot be
  read per step (NVML's counter moves every ~100 ms).

Calibration times the expert execution only: once a bucket's choice is `fused` or
`fused_graph`, the layer also routes with `fused_route` (`SimpleMoELayer.uses_fused_route`),
a saving on top of what was compared (~90 us of GPU time per 512-token OLMoE step on an H200).

`AutoBackend.decisions` holds each decision (the key, the winner, why, and every candidate's
time or cost); `counts` how many steps each backend ran; `last` the latest decision applied.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from wattmoe.checks import check_positive_int
from wattmoe.errors import ConfigError
from wattmoe.moe.backends import (
    EXPERT_BACKENDS,
    available_backends,
    get_backend,
    loop_backend,
    needs_autograd,
    register_backend,
)
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.stacked import stack_signature

log = logging.getLogger(__name__)

CostFn = Callable[[str, dict[str, object]], float]
"""cost_fn(backend name, step description) -> cost (joules, seconds: lower is better)."""


@dataclass
class Decision:
    """One backend choice for one bucket of steps.

    Attributes:
        key: device, dtype, E, H, F, form, weights ('int4' or dtype) and assignment bucket.
        backend: the chosen backend.
        reason: 'calibrated', 'cost' or 'only' (a single candidate).
        scores: each candidate's median step time in seconds ('calibrated') or cost ('cost').
    """

    key: tuple[object, ...]
    backend: str
    reason: str
    scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["key"] = [str(k) for k in self.key]
        return d


def bucket(n: int) -> int:
    """n rounded up to a power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AutoBackend:
    """Chooses a backend per (device, dtype, shape, assignment bucket); see the module docstring.

    Args:
        candidates: backend names to choose from; None = `available_backends(device, dtype)`.
        cost_fn: ranks candidates without running them; None = calibrate.
        repeats: timed runs per candidate when calibrating.
    """

    def __init__(
        self,
        candidates: Sequence[str] | None = None,
        cost_fn: CostFn | None = None,
        repeats: int = 3,
    ) -> None:
        if candidates is not None:
            unknown = [c for c in candidates if c not in EXPERT_BACKENDS or c == "auto"]
            if unknown:
                raise ConfigError(f"auto: unknown or invalid candidate backends {unknown}")
            if not candidates:  # None means every available backend; [] would mean that too
                raise ConfigError("auto: candidates=[] names no backend to choose from (None: "
                                  "every backend available for the step's device and dtype)")
        check_positive_int("auto: repeats", repeats)
        self.candidates = list(candidates) if candidates is not None else None
        self.cost_fn = cost_fn
        self.repeats = repeats
        self.table: dict[tuple[object, ...], Decision] = {}
        self.decisions: list[Decision] = []
        self.counts: Counter[str] = Counter()
        self.last: Decision | None = None

    def reset(self) -> None:
        """Forgets all decisions (the next step of each bucket decides again)."""
        self.table.clear()
        self.decisions.clear()
        self.counts.clear()
        self.last = None

    def key(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> tuple[object, ...]:
        return self._key(experts, x, d.token_idx.numel())

    def _key(self, experts: Sequence[nn.Module], x: torch.Tensor,
             num_assign: int) -> tuple[object, ...]:
        # from the first expert, not the stack: the key is computed twice per step (the layer
        # asks `decided` first), and the chosen backend checks the stack itself
        return (str(x.device), str(x.dtype), *stack_signature(experts), bucket(num_assign))

    def decided(self, experts: Sequence[nn.Module], x: torch.Tensor,
                num_assign: int) -> str | None:
        """The backend already chosen for a step of `num_assign` assignments, or None (no
        decision yet). Lets the layer route with `fused_route` before calling the backend."""
        dec = self.table.get(self._key(experts, x, num_assign))
        return dec.backend if dec is not None else None

    def __call__(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
        if needs_autograd(experts, x):
            return loop_backend(experts, x, d)
        k = self.key(experts, x, d)
        dec = self.table.get(k)
        if dec is None:
            dec = self._decide(k, experts, x, d)
        self.counts[dec.backend] += 1
        self.last = dec
        return get_backend(dec.backend)(experts, x, d)

    def _decide(
        self, k: tuple[object, ...], experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch
    ) -> Decision:
        names = self.candidates or available_backends(x.device, x.dtype)
        names = [n for n in names if n != "auto"]
        if len(names) == 1:
            dec = Decision(k, names[0], "only")
        elif self.cost_fn is not None:
            info = {"device": str(x.device), "dtype": str(x.dtype), "tokens": x.shape[0],
                    "assignments": d.token_idx.numel(), "experts": len(experts),
                    "key": k}
            scores = {n: float(self.cost_fn(n, info)) for n in names}
            dec = Decision(k, min(scores, key=scores.__getitem__), "cost", scores)
        else:
            scores = {n: self._time(n, experts, x, d) for n in names}
            dec = Decision(k, min(scores, key=scores.__getitem__), "calibrated", scores)
        self.table[k] = dec
        self.decisions.append(dec)
        log.info("auto: %s -> %s (%s %s)", k, dec.backend, dec.reason,
                 {n: f"{v:.3g}" for n, v in dec.scores.items()})
        return dec

    def _time(self, name: str, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> float:
        fn = get_backend(name)
        fn(experts, x, d)  # warm-up: compile, capture, stack
        times = []
        for _ in range(self.repeats):
            _sync(x.device)
            t0 = time.perf_counter()
            fn(experts, x, d)
            _sync(x.device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def records(self) -> list[dict[str, object]]:
        """Every decision so far as plain dicts (for JSON)."""
        return [dec.as_dict() for dec in self.decisions]


AUTO = register_backend("auto")(AutoBackend())
