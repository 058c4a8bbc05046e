"""Checks of the files a command will write, made before its work (a solve, an evaluation)
so that a path that cannot be written fails at once, not after the work and its tables."""

from __future__ import annotations

from pathlib import Path

from wattmoe.errors import ConfigError


def check_out(option: str, path: str) -> None:
    """Refuses an output file path that cannot be written: a folder, or one under a file."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option}: cannot write {path!r}: Is a directory")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise ConfigError(f"{option}: cannot write {path!r}: Not a directory "
                                  f"({str(q)!r} is a file)")
            return
