"""Where a result came from: the machine, the git commit and the command that made it.

Every committed measurement (profiles, benchmark results) carries this record, so that anyone
can rerun it. On machines without `.git` (the lent GPU machine), the caller passes the commit
in `WATTMOE_COMMIT`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parent


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's sha, with '+dirty' when tracked files differ; 'unknown' outside git.

    `cwd` None: the git checkout wattmoe itself runs from (not the process's working
    directory, which may be another repository); 'unknown' when wattmoe is not a tracked
    part of one (an installed copy, even inside some other repository's tree).

    WATTMOE_COMMIT, when set, states the commit: machines that receive a copy of the working
    tree (the GPU machine here) may carry stale git metadata. If git there names another
    commit, both are recorded: '<stated> (stated; git here: <sha>[+dirty])'.
    """
    stated = os.environ.get("WATTMOE_COMMIT", "").strip()
    try:
        if cwd is None:
            cwd = _PACKAGE_DIR
            subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name],
                           capture_output=True, check=True, cwd=cwd)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=cwd).stdout.strip()
        here = sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return stated or "unknown"
    if not stated or sha.startswith(stated) or stated.startswith(sha):
        return here
    return f"{stated} (stated; git here: {here})"


def machine_info() -> dict[str, Any]:
    """Host, CPU, Python/torch versions and, where present, the GPU and its driver."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda_runtime"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,power.limit,memory.total",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        if out:
            info["nvidia_smi"] = out.splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def provenance(command: str | None = None) -> dict[str, Any]:
    """machine, commit and command of the current process."""
    if command is None:
        prog = Path(sys.argv[0]).name if sys.argv else "python"
        if prog in ("cli.py", "__main__.py"):
            prog = "python -m wattmoe.cli"
        command = " ".join([prog, shlex.join(sys.argv[1:])]).strip()
    return {"machine": machine_info(), "commit": git_commit(), "command": command}


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def finite_json(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def write_text_atomic(path: str | Path, text: str, fsync: bool = True) -> Path:
    """Writes `text` via a temporary file beside `path` (fsync, then rename), so that readers
    never see half a file and an interrupted write leaves the old one; the temporary file is
    removed when the write fails.

    A `path` that exists but is no regular file or folder (/dev/stdout, /dev/null, a FIFO) is
    written in place: renaming over it would replace the device with a file.

    Raises:
        OSError: cannot write; NotADirectoryError when a folder on the way is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        with path.open("w", encoding="utf-8") as fh:
            fh.write(text)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's word for "a parent is a file"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(path.parent)) from None
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Writes JSON (NaN/inf as null) with `write_text_atomic`."""
    return write_text_atomic(
        path, json.dumps(finite_json(payload), indent=1, allow_nan=False) + "\n")
