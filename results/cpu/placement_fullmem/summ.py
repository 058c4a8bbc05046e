# ruff: noqa  (a helper's experiment script, kept as it ran)
import collections
import json
import sys

import numpy as np

rows = [json.loads(l) for l in open(sys.argv[1])]
t = collections.defaultdict(list); h = collections.defaultdict(set); ob = {}
for r in rows:
    k = (r["case"], r["obj"], r["seed"])
    t[(r["tag"], *k)].append(r["t"]); h[(r["tag"], *k)].add(r["hash"]); ob[(r["tag"], *k)] = r["objective"]
keys = sorted({k[1:] for k in t})
print(f"{'instance':26s} {'pre':>6s} {'old':>6s} {'new':>6s} old/new  same  obj new vs pre")
rat = collections.defaultdict(list)
for k in keys:
    m = {tag: np.median(t[(tag, *k)]) for tag in ("pre", "old", "new")}
    same = h[("old", *k)] == h[("new", *k)] and len(h[("new", *k)]) == 1
    rat[k[0]].append(m["old"] / m["new"])
    print(f"{'%s %s s%d' % k:26s} {m['pre']:6.2f} {m['old']:6.2f} {m['new']:6.2f} {m['old']/m['new']:6.2f}x  {same}  {ob[('new', *k)]/ob[('pre', *k)]-1:+.1%}")
for c, v in rat.items():
    print(c, f"old/new ratio median {np.median(v):.2f}x range {min(v):.2f}-{max(v):.2f}")
for tag in ("pre", "old", "new"):
    for c in ("16x64", "48x128"):
        ms = [np.median(t[(tag, *k)]) for k in keys if k[0] == c]
        print(tag, c, f"per-instance medians {min(ms):.2f}-{max(ms):.2f} s")
