"""Merges a re-measurement of some ops into a committed profile (CPU only, no device needed).

The refresh's points whose op starts with one of --ops replace the profile's points of the same
scenario (op, device, dtype, preset, shape, tokens) and are added where the profile has none; the
profile's other points stay. The refresh's sweep runs are appended to `sweep.runs` (with
--note) and its provenance to `provenance.refreshes`, so the profile keeps saying where each
point came from. A refresh measured on another GPU than the profile (or with a GPU where the
profile has none, or the other way round) is refused.

    python benchmarks/merge_profile_refresh.py --profile data/profiles/h200.json \\
        --refresh results/h200/cost_model/fused_refresh3/h200_fused_refresh.json \\
        --ops moe_layer:fused --what "moe_layer:fused* refresh 3" --note "..."
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import stored_shape
from wattmoe.errors import ConfigError, os_error_as
from wattmoe.provenance import write_json_atomic


def _scenario(point: dict[str, Any]) -> tuple[object, ...]:
    """(op, device, dtype, preset, tokens, shape): the shape as `wattmoe cost` reads it
    (`stored_shape`), so that an int4 point that records its group replaces one of the same
    group that predates the record (and not one measured with another group)."""
    shape: object = point.get("shape")
    # a shape `wattmoe cost` would not read is compared as stored
    with contextlib.suppress(TypeError, ValueError, KeyError):
        shape = stored_shape(point["op"], shape).to_dict()  # type: ignore[arg-type]
    return (*(point.get(k) for k in ("op", "device", "dtype", "preset", "tokens")),
            json.dumps(shape, sort_keys=True))


def merge(profile: dict[str, Any], refresh: dict[str, Any], prefixes: list[str], *,
          what: str, note: str) -> tuple[int, int]:
    """Merges in place; returns (points replaced, points added).

    Raises:
        ValueError: a file is not a profile (no list of points with string ops, no machine
            in the refresh's provenance), or the refresh does not fit (see the module).
    """
    for name, doc in (("profile", profile), ("refresh", refresh)):
        points = doc.get("points") if isinstance(doc, dict) else None
        if not isinstance(points, list) or not all(
                isinstance(p, dict) and isinstance(p.get("op"), str) for p in points):
            raise ValueError(f"the {name} is not a profile (no list of points with an op)")
    prov = refresh.get("provenance")
    if not isinstance(prov, dict) or not isinstance(prov.get("machine"), dict):
        raise ValueError("the refresh's provenance has no machine")
    mine = profile.get("provenance", {})
    mine = mine.get("machine", {}) if isinstance(mine, dict) else {}
    new = [p for p in refresh["points"] if any(p["op"].startswith(x) for x in prefixes)]
    if not new:
        raise ValueError(f"the refresh has no points of {', '.join(prefixes)}")
    for key in ("machine", "commit", "command"):
        if key not in refresh.get("provenance", {}):
            raise ValueError(f"the refresh's provenance has no '{key}'")
    gpu = mine.get("gpu") if isinstance(mine, dict) else None
    theirs = prov["machine"].get("gpu")
    if gpu != theirs:
        raise ValueError(f"the refresh was measured on {theirs or 'no GPU'}, the profile on "
                         f"{gpu or 'no GPU'}")
    keys = {_scenario(p) for p in new}
    if len(keys) < len(new):
        raise ValueError("the refresh has more than one point of a scenario")
    kept = [p for p in profile["points"] if _scenario(p) not in keys]
    replaced = len(profile["points"]) - len(kept)
    profile["points"] = kept + new
    for run in refresh.get("sweep", {}).get("runs", []):
        profile.setdefault("sweep", {}).setdefault("runs", []).append({**run, "note": note})
    profile.setdefault("provenance", {}).setdefault("refreshes", []).append(
        {**{k: refresh["provenance"][k] for k in ("machine", "commit", "command")}, "what": what})
    return replaced, len(new) - replaced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, type=Path, help="profile JSON, rewritten")
    ap.add_argument("--refresh", required=True, type=Path, help="the re-measurement's JSON")
    ap.add_argument("--ops", required=True, help="comma list of op prefixes to replace")
    ap.add_argument("--what", required=True, help="one line for provenance.refreshes")
    ap.add_argument("--note", required=True, help="one line for the appended sweep runs")
    args = ap.parse_args(argv)
    try:
        with os_error_as(ConfigError, "cannot read the profile or the refresh"):
            profile = json.loads(args.profile.read_text())
            refresh = json.loads(args.refresh.read_text())
        replaced, added = merge(profile, refresh, [p for p in args.ops.split(",") if p],
                                what=args.what, note=args.note)
        with os_error_as(ConfigError, f"cannot write {str(args.profile)!r}"):
            write_json_atomic(args.profile, profile)
    except (ConfigError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"merge_profile_refresh: {exc}", file=sys.stderr)
        return 2
    print(f"{args.profile}: {replaced} points replaced and {added} added from {args.refresh}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
