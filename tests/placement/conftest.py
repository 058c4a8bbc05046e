from __future__ import annotations

import pytest

from wattmoe.placement import ExpertShape, cluster_from_dict


class LinearCost:
    """A test cost provider with hand-computable costs: for n >= 1 tokens,
    latency = t0 + t1 n and energy = idle x latency + e1 n (0 for n = 0)."""

    def __init__(self, devices: dict[str, tuple[float, float, float, float]]) -> None:
        self.table = devices  # name -> (t0, t1, e1, idle_w)

    def devices(self) -> list[str]:
        return sorted(self.table)

    def idle_power_w(self, device: str) -> float:
        return self.table[device][3]

    def expert_cost(self, device: str, tokens: int, hidden: int, inner: int, form: str,
                    dtype: str) -> tuple[float, float]:
        if tokens <= 0:
            return 0.0, 0.0
        t0, t1, e1, idle = self.table[device]
        lat = t0 + t1 * tokens
        return lat, idle * lat + e1 * tokens


SHAPE = ExpertShape(64, 128)  # 48 KiB per bf16 expert


def two_device_cluster(fast_slots: int = 8, slow_slots: int = 8, *, slow_always_on: bool = False):
    """'fast' (the token home) and 'slow', joined by a free, practically infinite link."""
    b = SHAPE.weight_bytes
    return cluster_from_dict({
        "name": "pair",
        "devices": [
            {"name": "fast", "kind": "gpu", "cost_device": "fast", "memory_bytes": fast_slots * b},
            {"name": "slow", "kind": "cpu", "cost_device": "slow", "memory_bytes": slow_slots * b,
             "always_on": slow_always_on},
        ],
        "links": [{"a": "fast", "b": "slow", "bandwidth_bytes_per_s": 1e30,
                   "energy_j_per_byte": 0.0, "latency_s": 0.0}],
        "token_home": ["fast"],
    })


@pytest.fixture
def linear_cost() -> LinearCost:
    return LinearCost({"fast": (1e-3, 1e-5, 1e-3, 10.0), "slow": (1e-3, 1e-4, 2e-3, 5.0)})
