"""The cost graph: devices and links as a networkx graph carrying every cost a solver needs.

Nodes are the cluster's devices (attributes: kind, memory, the memory of one replica, expert
slots, idle power, power budget and the sampled `CostCurve` of the expert shape) and its
nodes/switches; edges are the links (bandwidth, energy per byte, latency). From it, each device
gets the cost of moving a token's activations from the tokens' home devices and back, along the
path that minimizes `latency_s + 1 MiB / bandwidth` (a typical dispatch message):

- transfer energy per token = 2 x activation bytes x mean over homes of the path's J/byte;
- transfer time per token = 2 x activation bytes x mean over homes of 1 / path bandwidth
  (the path's narrowest link), counted on the device's time in each layer;
- message latency = 2 x the farthest home's path latency, once per layer that sends it
  tokens (dispatch and combine).

Tokens are spread evenly over the homes, so a home device pays nothing for its own share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from wattmoe.placement.analytic import describe_provider
from wattmoe.placement.base import (
    ExpertCostProvider,
    ExpertShape,
    PlacementError,
)
from wattmoe.placement.curves import CostCurve, sample_curve
from wattmoe.placement.spec import ClusterSpec

_MESSAGE_BYTES = 2**20


@dataclass(frozen=True, eq=False)
class CostGraph:
    """A cluster with the costs of one expert shape attached, as networkx and as arrays.

    Arrays are indexed by device in `device_names` order ([D]).

    Attributes:
        cluster: the spec it was built from.
        shape: the expert shape the curves are for.
        graph: networkx graph (devices, nodes and links with their attributes).
        device_names: [D] device names.
        curves: one `CostCurve` per distinct (cost device, power budget).
        curve_index: [D] index into `curves`.
        replica_bytes: [D] memory one replica takes on each device
            (`ExpertShape.replica_bytes` of its kind and `backend`).
        slots: [D] expert replicas that fit in each device's memory (memory // replica_bytes;
            at most 2**53, which no placement reaches, so that sums over devices fit int64).
        idle_power_w: [D] idle power.
        always_on: [D] idle power counts even if the device hosts nothing (token homes too).
        transfer_energy_j_per_token: [D] energy to move one token there and back.
        transfer_time_s_per_token: [D] link time per token there and back.
        message_latency_s: [D] fixed latency per layer that sends the device tokens.
        cost_sources: device name -> where its kernel costs come from.
        backend: the expert backend the GPUs run (None: not said), which the memory of an
            int4 replica depends on.
        int4_layout: how the GPUs store int4 codes ('rows' or 'tiles',
            `ExpertShape.replica_bytes`).
    """

    cluster: ClusterSpec
    shape: ExpertShape
    graph: nx.Graph
    device_names: tuple[str, ...]
    curves: tuple[CostCurve, ...]
    curve_index: np.ndarray
    replica_bytes: np.ndarray
    slots: np.ndarray
    idle_power_w: np.ndarray
    always_on: np.ndarray
    transfer_energy_j_per_token: np.ndarray
    transfer_time_s_per_token: np.ndarray
    message_latency_s: np.ndarray
    cost_sources: dict[str, str] = field(default_factory=dict)
    backend: str | None = None
    int4_layout: str = "rows"

    @property
    def num_devices(self) -> int:
        return len(self.device_names)

    def replica_cost(self, tokens: np.ndarray, devices: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, energy_j) of one replica holding `tokens` [...] tokens, on every device
        (or on the device indices `devices`).

        Returns arrays [..., D]: kernel time plus link time, and dynamic kernel energy plus
        transfer energy (idle power is accounted per device over the batch, not here). Zero
        tokens cost nothing.
        """
        x = np.asarray(tokens, dtype=np.float64)
        if devices is None:  # every curve is some device's: no need to look for used ones
            idx = slice(None)
            used, pos = range(len(self.curves)), self.curve_index
        else:
            idx = np.asarray(devices)
            used, pos = np.unique(self.curve_index[idx], return_inverse=True)
        n = len(pos)
        per_curve = [self.curves[k](x) for k in used]  # one interpolation per curve
        if len(used) == 1:
            lat = np.repeat(per_curve[0][0][..., None], n, axis=-1)
            dyn = np.repeat(per_curve[0][1][..., None], n, axis=-1)
        else:
            lat = np.stack([p[0] for p in per_curve], axis=-1)[..., pos.ravel()]
            dyn = np.stack([p[1] for p in per_curve], axis=-1)[..., pos.ravel()]
        xe = x[..., None]
        return (lat + xe * self.transfer_time_s_per_token[idx],
                dyn + xe * self.transfer_energy_j_per_token[idx])

    def device_classes(self) -> np.ndarray:
        """[D] class id: devices of one class have identical costs (curve and transfers)."""
        key = np.column_stack([self.curve_index, self.transfer_time_s_per_token,
                               self.transfer_energy_j_per_token, self.message_latency_s])
        _, cls = np.unique(key, axis=0, return_inverse=True)
        return cls.ravel()


_MAX_SLOTS = 2**53  # memory for more replicas than this is as good as unlimited


def build_cost_graph(cluster: ClusterSpec, provider: ExpertCostProvider, shape: ExpertShape,
                     max_tokens: float, *, curve_points: int = 48,
                     backend: str | None = None, int4_layout: str = "rows") -> CostGraph:
    """Samples each device's cost curve once and derives the per-device transfer costs.

    Args:
        max_tokens: the largest per-expert token count the curves must cover.
        backend: the expert backend the GPUs run ('fused', ...), for the memory of a replica
            (`ExpertShape.replica_bytes`); default: the provider's `backend` attribute (what
            `profile_cost_provider(..., backend=...)` prices), else None.
        int4_layout: how the GPUs store int4 codes: 'rows' or 'tiles' (the fused kernels read
            them in place: no copy of the codes; `ExpertShape.replica_bytes`).

    Raises:
        PlacementError: `backend` is not the backend the provider prices.
    """
    backend = _backend(provider, backend)
    g = nx.Graph(name=cluster.name)
    for node in cluster.nodes:
        g.add_node(node.name, kind="node")
    curves: list[CostCurve] = []
    curve_key: dict[tuple[str, float | None], int] = {}
    index = []
    sources: dict[str, str] = {}
    for d in cluster.devices:
        key = (d.cost_device, d.power_budget_w)
        if key not in curve_key:
            curve_key[key] = len(curves)
            try:
                curves.append(sample_curve(provider, d.cost_device, shape, max_tokens,
                                           power_budget_w=d.power_budget_w,
                                           points=curve_points))
            except PlacementError as exc:  # the curve names its cost device, not this device
                # (a power budget at or below idle power; a cost device no provider knows)
                raise type(exc)(f"device {d.name!r}: {exc}") from None
        index.append(curve_key[key])
        curve = curves[curve_key[key]]
        replica_bytes = shape.replica_bytes(d.kind, backend, int4_layout)
        sources[d.name] = describe_provider(provider, d.cost_device)
        g.add_node(d.name, kind=d.kind, node=d.node, cost_device=d.cost_device,
                   memory_bytes=d.memory_bytes, replica_bytes=replica_bytes,
                   slots=min(int(d.memory_bytes // replica_bytes), _MAX_SLOTS),
                   idle_power_w=curve.idle_power_w, power_budget_w=d.power_budget_w,
                   always_on=d.always_on or d.name in cluster.token_home, curve=curve)
    for lk in cluster.links:
        g.add_edge(lk.a, lk.b, bandwidth_bytes_per_s=lk.bandwidth_bytes_per_s,
                   energy_j_per_byte=lk.energy_j_per_byte, latency_s=lk.latency_s,
                   weight=lk.latency_s + _MESSAGE_BYTES / lk.bandwidth_bytes_per_s)

    names = cluster.device_names
    n = len(names)
    bytes_two_way = 2.0 * shape.activation_bytes_per_token
    xe = np.zeros(n)
    xt = np.zeros(n)
    lat0 = np.zeros(n)
    for home in cluster.token_home:
        paths = nx.single_source_dijkstra_path(g, home, weight="weight")
        for i, name in enumerate(names):
            if name == home:
                continue
            hops = list(zip(paths[name][:-1], paths[name][1:]))
            epb = sum(g.edges[h]["energy_j_per_byte"] for h in hops)
            bw = min(g.edges[h]["bandwidth_bytes_per_s"] for h in hops)
            lat = sum(g.edges[h]["latency_s"] for h in hops)
            xe[i] += bytes_two_way * epb / len(cluster.token_home)
            xt[i] += bytes_two_way / bw / len(cluster.token_home)
            lat0[i] = max(lat0[i], 2.0 * lat)
    for i, name in enumerate(names):
        g.nodes[name].update(transfer_energy_j_per_token=xe[i], transfer_time_s_per_token=xt[i],
                             message_latency_s=lat0[i])

    def arr(attr: str, dtype: type = np.float64) -> np.ndarray:
        a = np.array([g.nodes[name][attr] for name in names], dtype=dtype)
        a.setflags(write=False)
        return a

    for a in (xe, xt, lat0):
        a.setflags(write=False)
    return CostGraph(
        cluster=cluster, shape=shape, graph=g, device_names=names, curves=tuple(curves),
        curve_index=np.array(index, dtype=np.int64),
        replica_bytes=arr("replica_bytes", np.int64), slots=arr("slots", np.int64),
        idle_power_w=arr("idle_power_w"), always_on=arr("always_on", bool),
        transfer_energy_j_per_token=xe, transfer_time_s_per_token=xt, message_latency_s=lat0,
        cost_sources=sources, backend=backend, int4_layout=int4_layout,
    )


def _backend(provider: object, backend: str | None) -> str | None:
    """`backend`, or the one `provider` prices where it says (its `backend` attribute)."""
    priced = getattr(provider, "backend", None)
    if backend is None:
        return priced if isinstance(priced, str) else None
    if isinstance(priced, str) and priced != backend:
        raise PlacementError(f"backend {backend!r} for the memory of a replica, but the cost "
                             f"provider prices backend {priced!r}")
    return backend
