"""Provenance for benchmark outputs: the machine, the commit and the exact command.

A thin layer over `wattmoe.provenance` for scripts under benchmarks/ (run as
`python benchmarks/x.py`, so the command records the script and its arguments).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from wattmoe.provenance import git_commit, machine_info, utc_now, write_json_atomic

__all__ = ["git_commit", "machine_info", "provenance", "write_json"]


def provenance() -> dict[str, object]:
    """commit, command, the $WATTMOE_* settings it ran under (kernel tables, tile layouts: a
    run under another setting is another experiment), date_utc and machine of this run."""
    return {
        "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("WATTMOE_")},
        "date_utc": utc_now(),
        "machine": machine_info(),
    }


def write_json(path: str | Path, payload: dict[str, object]) -> Path:
    """Writes atomically (tmp file, fsync, rename); NaN/inf become null."""
    return write_json_atomic(path, payload)
