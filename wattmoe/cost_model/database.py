"""The versioned profile database: one JSON file per machine, written atomically.

Layout (schema version 1)::

    {"format": "wattmoe.cost_model.profile", "schema_version": 1, "created_utc": "...",
     "provenance": {"machine": {...}, "commit": "<sha>", "command": "wattmoe profile ..."},
     "sweep": {...}, "profiler": {...},
     "devices": {"cuda:0": {"name": ..., "source": "measured", "idle_power_w": ..., ...}},
     "points": [ProfilePoint, ...], "errors": [...], "skipped": [...]}
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import (
    FORMAT,
    SCHEMA_VERSION,
    DeviceInfo,
    ProfileFormatError,
    ProfilePoint,
)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's sha, with '+dirty' when tracked files differ; 'unknown' outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=cwd).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=cwd).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("WATTMOE_COMMIT", "unknown")


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


@dataclass
class ProfileDatabase:
    """A loaded (or about to be written) profile."""

    points: list[ProfilePoint]
    devices: dict[str, DeviceInfo]
    provenance: dict[str, Any]
    sweep: dict[str, Any] = field(default_factory=dict)
    profiler: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    created_utc: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "created_utc": self.created_utc
            or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "provenance": self.provenance,
            "sweep": self.sweep,
            "profiler": self.profiler,
            "devices": {k: asdict(v) for k, v in self.devices.items()},
            "points": [p.to_dict() for p in self.points],
            "errors": self.errors,
            "skipped": self.skipped,
        }


def _finite(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def save_profile(db: ProfileDatabase, path: str | Path) -> Path:
    """Writes `db` atomically (temporary file in the same folder, fsync, rename)."""
    return save_json(path, db.to_dict())


def save_json(path: str | Path, payload: Any) -> Path:
    """Writes any JSON payload atomically (NaN/inf as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(_finite(payload), fh, indent=1, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    return path


def _need(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileFormatError(f"{where}: missing field {key!r}")
    if not isinstance(d[key], typ):
        raise ProfileFormatError(f"{where}: field {key!r} has the wrong type "
                                 f"({type(d[key]).__name__})")
    return d[key]


def parse_profile(raw: Any, where: str = "profile") -> ProfileDatabase:
    """Validates a decoded JSON profile.

    Raises:
        ProfileFormatError: another format or schema version, or a missing/invalid field.
    """
    if not isinstance(raw, dict):
        raise ProfileFormatError(f"{where}: not a wattmoe profile (top level is not an object)")
    if raw.get("format") != FORMAT:
        raise ProfileFormatError(
            f"{where}: not a wattmoe profile (format {raw.get('format')!r}, expected {FORMAT!r})"
        )
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProfileFormatError(
            f"{where}: schema version {version!r} is not supported; this wattmoe reads "
            f"version {SCHEMA_VERSION} (re-run `wattmoe profile`)"
        )
    prov = _need(raw, "provenance", dict, where)
    for key in ("machine", "commit", "command"):
        _need(prov, key, (dict, str), f"{where}: provenance")
    devices_raw = _need(raw, "devices", dict, where)
    points_raw = _need(raw, "points", list, where)
    try:
        devices = {k: DeviceInfo(**v) for k, v in devices_raw.items()}
    except TypeError as exc:
        raise ProfileFormatError(f"{where}: bad device entry ({exc})") from None
    points: list[ProfilePoint] = []
    for i, pr in enumerate(points_raw):
        at = f"{where}: point {i}"
        if not isinstance(pr, dict):
            raise ProfileFormatError(f"{at} is not an object")
        for key, typ in (("op", str), ("device", str), ("dtype", str), ("tokens", int),
                         ("latency_s", (int, float)), ("shape", dict)):
            _need(pr, key, typ, at)
        if pr["device"] not in devices:
            raise ProfileFormatError(f"{at}: device {pr['device']!r} is not in 'devices'")
        if not (pr["latency_s"] > 0 and math.isfinite(pr["latency_s"])):
            raise ProfileFormatError(f"{at}: latency_s must be > 0, got {pr['latency_s']}")
        if pr.get("energy_j") is not None and not pr["energy_j"] >= 0:
            raise ProfileFormatError(f"{at}: energy_j must be >= 0, got {pr['energy_j']}")
        try:
            points.append(ProfilePoint.from_dict(pr))
        except (TypeError, ValueError, KeyError) as exc:
            raise ProfileFormatError(f"{at}: {exc}") from None
    return ProfileDatabase(
        points=points, devices=devices, provenance=prov, sweep=raw.get("sweep", {}),
        profiler=raw.get("profiler", {}), errors=raw.get("errors", []),
        skipped=raw.get("skipped", []), created_utc=raw.get("created_utc", ""),
        schema_version=version,
    )


def load_profile(path: str | Path) -> ProfileDatabase:
    """Reads and validates a profile file.

    Raises:
        ProfileFormatError: the file is missing, not JSON, or not a valid profile.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileFormatError(f"cannot read profile {str(path)!r}: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileFormatError(
            f"profile {str(path)!r} is corrupt: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    return parse_profile(raw, where=f"profile {str(path)!r}")
