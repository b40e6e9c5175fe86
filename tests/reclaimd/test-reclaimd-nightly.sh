#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The nightly window and the nightly run:
#   - outside `window`, reported disks of stopped VMs stay pending (nothing is compacted);
#   - `reclaimctl compact --all` (what reclaim-compact.service runs) queues through reclaimd
#     the disks passing min_gain, biggest expected gain first, and skips VMs with
#     auto_compact = no and disks below the threshold;
#   - a restart of reclaimd keeps the reported figures and pending disks;
#   - a SIGHUP re-reads reclaimd.conf: with the window open, the pending disk is compacted.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

# a window that is not now: it opens in two hours
closed_window="$(date -d '+2 hours' +%H:%M)-$(date -d '+3 hours' +%H:%M)"
conf "min_gain = 1M" "window = $closed_window"

for v in vm-201 vm-202 vm-203 vm-204; do
        mkvm "$v"
done
echo "auto_compact = no" >>"$T/root/etc/reclaim/vms.d/vm-203.conf"
bus_start
fake_start vm-201 report --bytes $((64 << 20))
fake_start vm-202 report --bytes 1000
fake_start vm-203 report --bytes $((64 << 20))
fake_start vm-204 report --bytes $((32 << 20))
daemon_start
wait_for "reclaimd on the bus" on_bus

reported() { [[ -f "$T/state/vms/$1.json" ]] && [[ "$(state_get "$1" 's["last_report"]["time"] > 0')" == True ]]; }
for v in vm-201 vm-202 vm-203 vm-204; do
        wait_for "$v reported" reported "$v"
done
[[ "$(state_get vm-201 's["disks"][0]["pending"]')" == True ]] || fail "vm-201 is not pending"
[[ "$(state_get vm-202 's["disks"][0]["pending"]')" == False ]] || fail "vm-202 (1000 bytes < 1M) is pending"
# retry_interval is 1 s: give the scheduler a few passes; the window keeps them all waiting
sleep 3
for v in vm-201 vm-202 vm-203 vm-204; do
        cmp -s "$(img_of $v)" "$T/$v.orig" || fail "$v was touched outside the window"
done
grep -q "compacting" "$T/reclaimd.log" && fail "a compaction started outside the window"

# --- a restart keeps what the guests reported (the fake guests are gone: no new reports)
daemon_stop
daemon_start
wait_for "reclaimd on the bus again" on_bus
"$RECLAIMCTL" --root "$T/root" status vm-201 --json >"$T/st201.json" || fail "status vm-201"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); d=o["disks"][0]
assert o["daemon"] and d["pending"] and d["expected_gain"]==64<<20 and o["last_report"]["bytes"]==64<<20, o' \
        "$T/st201.json" || fail "state lost over a restart: $(cat "$T/st201.json")"

# --- the nightly run through the daemon: vm-201 (64M) then vm-204 (32M)
"$RECLAIMCTL" --root "$T/root" compact --all --json >"$T/all.json" 2>"$T/all.err" ||
        fail "compact --all: exit $? $(cat "$T/all.json" "$T/all.err")"
python3 - "$T/all.json" <<'PY' || fail "compact --all result: $(cat "$T/all.json")"
import json, sys
o = json.load(open(sys.argv[1]))
imgs = [d["image"].rsplit("/", 1)[1] for d in o["disks"]]
assert imgs == ["vm-201.qcow2", "vm-204.qcow2"], imgs
assert all(d["file_size_after"] < d["file_size_before"] for d in o["disks"]), o
PY
check_image vm-201
check_image vm-204
cmp -s "$(img_of vm-202)" "$T/vm-202.orig" || fail "vm-202 (below min_gain) was compacted"
cmp -s "$(img_of vm-203)" "$T/vm-203.orig" || fail "vm-203 (auto_compact = no) was compacted"
# nothing left: a second run queues nothing
"$RECLAIMCTL" --root "$T/root" compact --all >"$T/all2" || fail "second compact --all"
grep -q "nothing to do" "$T/all2" || fail "second compact --all: $(cat "$T/all2")"

# --- a VM added while the daemon runs reports; outside the window it waits; SIGHUP opens it
mkvm vm-205
fake_start vm-205 report --bytes $((64 << 20))
wait_for "vm-205 reported" reported vm-205
sleep 2
cmp -s "$(img_of vm-205)" "$T/vm-205.orig" || fail "vm-205 compacted outside the window"
conf "min_gain = 1M" "window = any"
kill -HUP "$DAEMON_PID"
wait_for "vm-205 compacted after the reload" state_compacted vm-205
check_image vm-205
cmp -s "$(img_of vm-203)" "$T/vm-203.orig" || fail "vm-203 (auto_compact = no) was compacted"
grep -q "Reloading the configuration" "$T/reclaimd.log" || fail "reload not logged"
daemon_stop
log "window, compact --all and reload: pass"
