"""Loads the project's scripts (`benchmarks/...`) as modules, so tests can call their functions.

The scripts are not in a package: each runs as `python benchmarks/x.py`. `load_script` executes
one as that command would import it, with the script's folder on `sys.path` (where `python`
puts it), so a script that imports a sibling (`from kernels_bench import ...`) loads too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """The script at `ROOT / relpath`, executed afresh and registered under its file's stem.

    Executed on every call (each test gets the module's state as a fresh run would); registered
    in `sys.modules` while and after it runs, as an import would, so its dataclasses and its
    siblings' imports of it resolve.
    """
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, f"no script at {path}"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod
