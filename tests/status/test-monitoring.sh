#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# docs/monitoring/: the example alert rules pass `promtool check rules` and their unit tests
# (`promtool test rules`), the Grafana dashboard is valid JSON, and every reclaim_* metric
# the rules and the dashboard use is one `reclaimctl metrics` prints, with samples, on a host
# with images, thresholds and reclaimd state. The exposition passes `promtool check metrics`.
source "$(dirname "$0")/../integration/functions.sh"

MON=$SRCDIR/docs/monitoring
RULES=$MON/reclaim-alerts.yml
DASH=$MON/reclaim-dashboard.json

# a small host: two VMs, thresholds, a state file with a report and a compaction
mkdir -p "$T/etc/vms.d" "$T/state/vms" "$T/img"
mkimg "$T/img/a.qcow2" 1G
qio "$T/img/a.qcow2" "write -P 1 0 1M" "discard 0 512K"
mkimg "$T/img/b.qcow2" 2G
printf '[vm]\ndisk = %s\n' "$T/img/a.qcow2" >"$T/etc/vms.d/vm-1.conf"
printf '[vm]\ndisk = %s\n' "$T/img/b.qcow2" >"$T/etc/vms.d/vm-2.conf"
printf '[thresholds]\nover_allocation_ratio = 3\nmin_free_percent = 10\n' >"$T/etc/reclaimd.conf"
cat >"$T/state/vms/vm-1.json" <<JSON
{ "vm": "vm-1", "last_report": { "time": 1700000000000000, "bytes": 4096, "filesystems": 1 },
  "disks": [ { "image": "$T/img/a.qcow2", "pending": true, "reported_bytes": 4096,
               "report_time": 1700000000000000, "last_compaction_time": 1690000000000000,
               "last_compaction_gain": 65536, "failures": 0 } ] }
JSON
"$RECLAIMCTL" --config-dir "$T/etc" --state-dir "$T/state" metrics >"$T/metrics.prom" 2>"$T/err" ||
        fail "reclaimctl metrics: $(cat "$T/err")"

python3 - "$T/metrics.prom" "$RULES" "$DASH" <<'PY' || fail "metric names"
import json, re, sys

prom, rules, dash = sys.argv[1:]
typed, sampled = set(), set()
for line in open(prom):
    if line.startswith("# TYPE "):
        typed.add(line.split()[2])
    elif line and not line.startswith("#"):
        sampled.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
NAME = re.compile(r"\breclaim_[a-z0-9_]+")

used = {}
rules_text = "".join(l for l in open(rules) if not l.lstrip().startswith("#"))
for n in NAME.findall(rules_text):
    used.setdefault(n, set()).add("alert rules")

d = json.load(open(dash))  # valid JSON or an exception
assert d.get("panels"), "dashboard without panels"
def walk(o, where):
    if isinstance(o, dict):
        for k, v in o.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                for n in NAME.findall(v):
                    used.setdefault(n, set()).add("dashboard " + where)
            else:
                walk(v, o.get("title", where) if isinstance(o.get("title"), str) else where)
    elif isinstance(o, list):
        for v in o:
            walk(v, where)
walk(d, "")

bad = False
for n in sorted(used):
    if n not in typed:
        print("%s (used by %s) is not in the metrics output" % (n, ", ".join(sorted(used[n]))))
        bad = True
    elif n not in sampled:
        print("%s (used by %s) has no sample in the fixture output" % (n, ", ".join(sorted(used[n]))))
        bad = True
print("# %d metric names used by the rules and the dashboard, all present" % len(used)
      if not bad else "# some names are missing")
# and the dashboard covers the main families
for n in ("reclaim_storage_over_allocation_ratio", "reclaim_storage_reclaimable_bytes",
          "reclaim_image_reclaimable_bytes", "reclaim_storage_capacity_bytes"):
    if n not in used:
        print("%s is used nowhere" % n)
        bad = True
sys.exit(1 if bad else 0)
PY

if ! command -v promtool >/dev/null 2>&1; then
        echo "SKIP [$TEST_NAME]: promtool not found (Debian: prometheus); rules not checked"
        exit 77
fi
promtool check metrics <"$T/metrics.prom" >"$T/pt.log" 2>&1 || fail "promtool check metrics: $(cat "$T/pt.log")"
promtool check rules "$RULES" >"$T/pt.log" 2>&1 || fail "promtool check rules: $(cat "$T/pt.log")"
(cd "$MON" && promtool test rules reclaim-alerts.test.yml) >"$T/pt.log" 2>&1 ||
        fail "promtool test rules: $(cat "$T/pt.log")"
log "ok"
