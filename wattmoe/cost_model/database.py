"""The versioned profile database: one JSON file per machine, written atomically.

Layout (schema version 1)::

    {"format": "wattmoe.cost_model.profile", "schema_version": 1, "created_utc": "...",
     "provenance": {"machine": {...}, "commit": "<sha>", "command": "wattmoe profile ..."},
     "sweep": {...}, "profiler": {...},
     "devices": {"cuda:0": {"name": ..., "source": "measured", "idle_power_w": ..., ...}},
     "points": [ProfilePoint, ...], "errors": [...], "skipped": [...]}

A point of an int4 op records its group in its shape ("int4_group", `ProfilePoint.to_dict`);
points written before session 17 record none and are read with the rule of then
(`base.stored_shape`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Container
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wattmoe.checks import is_finite_real
from wattmoe.cost_model.base import (
    FORMAT,
    SCHEMA_VERSION,
    DeviceInfo,
    OpShape,
    ProfileFormatError,
    ProfilePoint,
)
from wattmoe.provenance import git_commit, machine_info, provenance, utc_now
from wattmoe.provenance import write_json_atomic as save_json
from wattmoe.telemetry.base import SOURCES

__all__ = ["ProfileDatabase", "git_commit", "load_profile", "machine_info", "parse_point",
           "provenance", "save_json", "save_profile"]


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
            "created_utc": self.created_utc or utc_now(),
            "provenance": self.provenance,
            "sweep": self.sweep,
            "profiler": self.profiler,
            "devices": {k: asdict(v) for k, v in self.devices.items()},
            "points": [p.to_dict() for p in self.points],
            "errors": self.errors,
            "skipped": self.skipped,
        }


def save_profile(db: ProfileDatabase, path: str | Path) -> Path:
    """Writes `db` atomically (temporary file in the same folder, fsync, rename)."""
    return save_json(path, db.to_dict())


def _required(cls: type) -> tuple[str, ...]:
    """The fields of dataclass `cls` that have no default."""
    return tuple(f.name for f in fields(cls)
                 if f.default is MISSING and f.default_factory is MISSING)


_REQUIRED_POINT_FIELDS = _required(ProfilePoint)
_REQUIRED_SHAPE_FIELDS = _required(OpShape)


def _need(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ProfileFormatError(f"{where}: missing field {key!r}")
    types = typ if isinstance(typ, tuple) else (typ,)
    if not isinstance(d[key], typ) or (isinstance(d[key], bool) and int in types):
        raise ProfileFormatError(f"{where}: field {key!r} has the wrong type "
                                 f"({type(d[key]).__name__})")
    return d[key]


#: A point's numbers besides latency_s and energy_j, each finite and >= 0: (field, may be
#: null, must be > 0). The model reads them (the window's time per call is the default
#: latency, the window's power, the work per call): a string there was a ValueError traceback
#: on the first query, a negative time a wrong answer.
_POINT_NUMBERS: tuple[tuple[str, bool, bool], ...] = (
    ("latency_p10_s", False, False), ("latency_p90_s", False, False),
    ("latency_iqr_s", False, False), ("window_s", True, False),
    ("window_mean_latency_s", True, True), ("avg_power_w", True, False),
    ("peak_power_w", True, False), ("flops", False, False), ("bytes_moved", False, False),
    ("cooldown_s", False, False),
)


def parse_point(pr: Any, at: str, devices: Container[str] | None = None) -> ProfilePoint:
    """Validates one measured point: an entry of a profile's 'points' or a line of a sweep log.

    `at` starts every message ('profile p.json: point 3'); `devices` are the device names a
    point may name (None: not checked; a sweep log lists its devices as it goes).

    Raises:
        ProfileFormatError: a missing field or an invalid value, named.
    """
    if not isinstance(pr, dict):
        raise ProfileFormatError(f"{at} is not an object")
    for key, typ in (("op", str), ("device", str), ("dtype", str), ("tokens", int),
                     ("latency_s", (int, float)), ("shape", dict)):
        _need(pr, key, typ, at)
    for key in _REQUIRED_POINT_FIELDS:  # the rest of what ProfilePoint needs
        _need(pr, key, object, at)
    for key in _REQUIRED_SHAPE_FIELDS:
        _need(pr["shape"], key, object, f"{at}: shape")
    if devices is not None and pr["device"] not in devices:
        raise ProfileFormatError(f"{at}: device {pr['device']!r} is not in 'devices'")
    if pr["tokens"] < 1:
        raise ProfileFormatError(f"{at}: tokens must be >= 1, got {pr['tokens']}")
    if pr.get("source") not in SOURCES:
        raise ProfileFormatError(f"{at}: source must be one of {', '.join(SOURCES)}, got "
                                 f"{pr.get('source')!r}")
    if not (pr["latency_s"] > 0 and math.isfinite(pr["latency_s"])):
        raise ProfileFormatError(f"{at}: latency_s must be > 0, got {pr['latency_s']}")
    if pr.get("energy_j") is not None:
        _need(pr, "energy_j", (int, float), at)
    if pr.get("energy_j") is not None and not (pr["energy_j"] >= 0
                                               and math.isfinite(pr["energy_j"])):
        raise ProfileFormatError(f"{at}: energy_j must be >= 0, got {pr['energy_j']}")
    for key, nullable, positive in _POINT_NUMBERS:
        if key not in pr or (pr[key] is None and nullable):
            continue
        v = pr[key]
        if not is_finite_real(v) or v < 0 or (positive and v == 0):
            bound = "> 0" if positive else ">= 0"
            raise ProfileFormatError(f"{at}: {key} must be a number {bound}"
                                     f"{' or null' if nullable else ''}, got {v!r}")
    for key in ("reps", "window_calls"):
        if key in pr and (not isinstance(pr[key], int) or isinstance(pr[key], bool)
                          or pr[key] < 0):
            raise ProfileFormatError(f"{at}: {key} must be an integer >= 0, got {pr[key]!r}")
    try:
        return ProfilePoint.from_dict(pr)
    except (TypeError, ValueError, KeyError) as exc:
        raise ProfileFormatError(f"{at}: {exc}") from None


#: DeviceInfo's numbers, each >= 0: (field, may be null)
_DEVICE_NUMBERS: tuple[tuple[str, bool], ...] = (
    ("counter_period_s", True), ("min_window_s", False), ("idle_power_w", True),
    ("power_limit_w", True),
)


def parse_device(d: Any, at: str) -> DeviceInfo:
    """Validates one entry of a profile's 'devices' (`at` starts every message).

    Its numbers are read by the model (the power limit caps every predicted power, the idle
    power is the energy models' floor): a string or a NaN there was a TypeError traceback or
    NaN answers on the first query, not an error naming the field.

    Its `source` is not checked against SOURCES: the profiler records 'unknown' for a device
    whose backend it cannot ask.

    Raises:
        ProfileFormatError: not an object, a missing or unknown field, an invalid value.
    """
    if not isinstance(d, dict):
        raise ProfileFormatError(f"{at} is not an object")
    try:
        info = DeviceInfo(**d)
    except TypeError as exc:
        raise ProfileFormatError(f"{at}: bad device entry ({exc})") from None
    for key, nullable in _DEVICE_NUMBERS:
        v = getattr(info, key)
        if v is None and nullable:
            continue
        if not is_finite_real(v) or v < 0:
            raise ProfileFormatError(f"{at}: {key} must be a number >= 0"
                                     f"{' or null' if nullable else ''}, got {v!r}")
    temp = info.idle_temperature_c
    if temp is not None and not is_finite_real(temp):
        raise ProfileFormatError(f"{at}: idle_temperature_c must be a number or null, got "
                                 f"{temp!r}")
    return info


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
    devices = {k: parse_device(v, f"{where}: device {k!r}") for k, v in devices_raw.items()}
    points = [parse_point(pr, f"{where}: point {i}", devices)
              for i, pr in enumerate(points_raw)]
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
        if path.suffix.lower() == ".jsonl":  # what an interrupted `wattmoe profile` leaves
            raise ProfileFormatError(
                f"{str(path)!r} is a sweep log (.jsonl, one scenario a line), not a profile "
                f"JSON: the same `wattmoe profile` command with --resume writes the profile "
                f"{str(path.with_suffix('.json'))!r} from it") from None
        raise ProfileFormatError(
            f"profile {str(path)!r} is corrupt: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    return parse_profile(raw, where=f"profile {str(path)!r}")
