#!/usr/bin/env bash
# run 135 (session 19): host time of the step-graph policy's replays against a bare
# GraphedLayer and its parts (run 134: 1-token replays 0.13-0.17 ms a step against 0.04-0.06)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 WATTMOE_COMMIT
rm -rf /tmp/r; mkdir -p /tmp/r
timeout 200 python3 benchmarks/gpu/step_graph_host_probe.py --out /tmp/r/host.json --tokens 1 > /tmp/r/host_log.txt 2>&1
echo "rc=$?"; grep -v Warn /tmp/r/host_log.txt | grep -E " us$|rror" | cut -c1-120
python3 -c "import json; print(json.load(open('/tmp/r/host.json'))['rows'][1]['cprofile_policy'][:3500])"
tar czf $OUT/r.tgz -C /tmp r
