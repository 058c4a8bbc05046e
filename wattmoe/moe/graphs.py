"""CUDA-graph capture of expert execution for the small, fixed step sizes of decoding.

A decode step of a few dozen tokens launches a handful of kernels whose launch gaps cost as
much as their work. `GraphedBackend` captures the inner backend once per step shape
(tokens, assignments, dtype, stack) into a CUDA graph with static input buffers; later steps of
that shape copy their inputs in (4 small copies), replay, and return a copy of the output.

Only backends with no host synchronization can be captured (`fused`, and `grouped` where
`torch._grouped_mm` keeps offsets on the device); a shape whose capture fails is remembered and
runs eagerly. CPU tensors, steps above `max_tokens` and calls that need autograd run the inner
backend eagerly.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from wattmoe.moe.backends import get_backend, needs_autograd, register_backend
from wattmoe.moe.dispatch import Dispatch
from wattmoe.moe.stacked import stacked_experts

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    d: Dispatch
    out: torch.Tensor


class GraphedBackend:
    """Wraps a backend with per-shape CUDA graphs.

    Args:
        inner: name of the backend to capture.
        max_tokens: steps with more tokens run eagerly (graphs pay off for small steps).
        max_graphs: captured shapes kept (least recently used dropped first).
    """

    def __init__(self, inner: str, max_tokens: int = 512, max_graphs: int = 32) -> None:
        self.inner = inner
        self.max_tokens = max_tokens
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[object, ...], _Captured] = OrderedDict()
        self._uncapturable: set[tuple[object, ...]] = set()
        self._pool: object | None = None
        self.replays = 0
        self.captures = 0

    def clear(self) -> None:
        """Drops every captured graph."""
        self._graphs.clear()
        self._uncapturable.clear()

    def __call__(self, experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch) -> torch.Tensor:
        inner = get_backend(self.inner)
        if (not x.is_cuda or x.shape[0] > self.max_tokens or needs_autograd(experts, x)
                or torch.cuda.is_current_stream_capturing()):
            return inner(experts, x, d)
        st = stacked_experts(experts)
        key = (st.build_id, tuple(x.shape), x.dtype, x.device, d.token_idx.numel(),
               d.token_idx.dtype, d.weight.dtype, d.counts.dtype)
        if key in self._uncapturable:
            return inner(experts, x, d)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._capture(key, experts, x, d)
            if cap is None:
                return inner(experts, x, d)
        else:
            self._graphs.move_to_end(key)
            cap.x.copy_(x)
            cap.d.token_idx.copy_(d.token_idx)
            cap.d.weight.copy_(d.weight)
            cap.d.counts.copy_(d.counts)
        cap.graph.replay()
        self.replays += 1
        return cap.out.clone()

    def _capture(
        self, key: tuple[object, ...], experts: Sequence[nn.Module], x: torch.Tensor, d: Dispatch
    ) -> _Captured | None:
        inner = get_backend(self.inner)
        sx = x.clone()
        sd = Dispatch(d.token_idx.clone(), d.weight.clone(), d.counts.clone(), d.routed.clone(),
                      d.dropped, d.capacity)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compile kernels, create handles, settle the allocator
                inner(experts, sx, sd)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                out = inner(experts, sx, sd)
        except RuntimeError as exc:  # a host sync or an uncapturable op inside `inner`
            log.info("could not capture %s for %s: %s; running it eagerly", self.inner, key, exc)
            self._uncapturable.add(key)
            torch.cuda.synchronize(x.device)
            return None
        cap = _Captured(graph, sx, sd, out)
        self._graphs[key] = cap
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return cap


FUSED_GRAPH = register_backend("fused_graph")(GraphedBackend("fused"))
GROUPED_GRAPH = register_backend("grouped_graph")(GraphedBackend("grouped"))
