"""Stand-ins shared by the MoE tests: a CUDA graph that replays on a CPU."""

from __future__ import annotations

from collections.abc import Callable


class FakeGraph:
    """Stands in for a captured `torch.cuda.CUDAGraph` on a CPU: `replay()` calls `run`.

    A real graph re-runs its recorded kernels on the static tensors it was captured with. Each
    test passes the `run` it needs: one that recomputes the call into the static output (what
    a replay computes), or one that records what a replay would read.
    """

    def __init__(self, run: Callable[[], object]) -> None:
        self.run = run

    def replay(self) -> None:
        self.run()
