"""Recomputes the work features (FLOPs, bytes moved) of a committed profile's points with the
current formulas of `wattmoe.cost_model.work` (CPU only, no device needed).

The profiler stores each point's FLOPs and bytes as the formulas gave them when it ran, and the
fitted energy models read those. When a formula is corrected, the measured points stay what
they are (time, energy) and only their features are rewritten; the change is recorded in
`provenance.refreshes` with --what, the commit and the number of points changed.

    python benchmarks/recompute_profile_work.py --profile data/profiles/h200.json \\
        --ops moe_layer_int4: --what "int4 layer ops: the dequantized copies counted"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wattmoe.cost_model.base import CostModelError, ProfileFormatError, check_tokens, stored_shape
from wattmoe.cost_model.database import parse_profile
from wattmoe.cost_model.work import op_work
from wattmoe.errors import ConfigError, os_error_as
from wattmoe.provenance import git_commit, utc_now, write_json_atomic


def recompute(profile: dict[str, Any], prefixes: list[str], what: str) -> int:
    """Rewrites the features in place; returns how many points changed.

    Raises:
        ConfigError: no op prefix; the file is not a valid profile (`ProfileFormatError`, as
            `wattmoe cost` would refuse it), or no point has an op of `prefixes`, or a point's
            op, dtype or batch size has no work formula (`CostModelError`).
    """
    if not prefixes:
        raise ConfigError("--ops names no op prefix")
    parse_profile(profile)  # one error for anything `load_profile` would refuse
    refreshes = profile["provenance"].setdefault("refreshes", [])
    if not isinstance(refreshes, list):
        raise ProfileFormatError("profile: provenance.refreshes is not a list")
    points = profile["points"]
    chosen = [(i, p) for i, p in enumerate(points)
              if any(p["op"].startswith(x) for x in prefixes)]
    if not chosen:
        raise ConfigError(f"the profile has no points of {', '.join(prefixes)}")
    changed = 0
    for i, p in chosen:
        try:
            # the group the point was measured with (`stored_shape`), not today's default
            flops, byts = op_work(p["op"], check_tokens(p["tokens"]),
                                  stored_shape(p["op"], p["shape"]), p["dtype"])
        except CostModelError as exc:
            raise CostModelError(f"point {i} ({p['op']}): {exc}") from None
        if (flops, byts) != (p.get("flops"), p.get("bytes_moved")):
            p["flops"], p["bytes_moved"] = flops, byts
            changed += 1
    refreshes.append(
        {"what": what, "commit": git_commit(), "date_utc": utc_now(),
         "command": "benchmarks/recompute_profile_work.py --ops " + ",".join(prefixes),
         "points_changed": changed})
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, type=Path, help="profile JSON, rewritten")
    ap.add_argument("--ops", required=True, help="comma list of op prefixes")
    ap.add_argument("--what", required=True, help="one line for provenance.refreshes")
    args = ap.parse_args(argv)
    try:
        with os_error_as(ConfigError, "cannot read the profile"):
            profile = json.loads(args.profile.read_text())
        changed = recompute(profile, [p for p in args.ops.split(",") if p], args.what)
        with os_error_as(ConfigError, f"cannot write {str(args.profile)!r}"):
            write_json_atomic(args.profile, profile)
    except (ConfigError, ValueError) as exc:  # JSONDecodeError is a ValueError
        print(f"recompute_profile_work: {exc}", file=sys.stderr)
        return 2
    print(f"{args.profile}: work features of {changed} points rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
