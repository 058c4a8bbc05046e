"""Child process that `collect_ncu` runs under ncu: one scenario call between profiler marks.

Usage: python -m wattmoe.cost_model.ncu_target SPEC.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from wattmoe.cost_model.scenarios import Scenario, build_runner
from wattmoe.moe import resolve_shape


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    sc = Scenario(spec["op"], resolve_shape(spec["shape"]), spec["dtype"], spec["device"],
                  int(spec["tokens"]))
    fn = build_runner(sc)
    with torch.inference_mode():
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
