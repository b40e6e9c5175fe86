#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The nightly window and the nightly run:
#   - outside `window`, reported disks of stopped VMs stay pending (nothing is compacted);
#   - `reclaimctl compact --all` (what reclaim-compact.service runs) is refused outside the
#     window; with --now it queues through reclaimd
#     the disks passing min_gain (by guest report, or by the metadata estimate of the status
#     figures for a VM whose guest never reported), biggest expected gain first, and skips VMs with
#     auto_compact = no and disks below the threshold;
#   - a restart of reclaimd keeps the reported figures and pending disks;
#   - a SIGHUP re-reads reclaimd.conf: with the window open, the pending disk is compacted;
#   - a nightly job still queued when the window closes is dropped ("window-closed").
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

# a window that is not now: it opens in two hours
closed_window="$(date -d '+2 hours' +%H:%M)-$(date -d '+3 hours' +%H:%M)"
conf "min_gain = 1M" "window = $closed_window"

for v in vm-201 vm-202 vm-203 vm-204; do
        mkvm "$v"
done
echo "auto_compact = no" >>"$T/root/etc/reclaim/vms.d/vm-203.conf"
# vm-208's guest never reports, but 4 MiB in the middle of its image were discarded: the
# metadata walk of the status figures sees the gain
mkvm vm-208
qemu-io -f qcow2 -c "discard 2M 4M" "$(img_of vm-208)" >/dev/null || fail "qemu-io discard"
cp "$(img_of vm-208)" "$T/vm-208.orig"
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

# the status figures have been collected (at startup, in a child)
wait_for "status figures" bash -c \
        "busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 StatusTime | grep -vq '^t 0$'"

# --- the nightly run through the daemon keeps to the window unless --now
rc=0
"$RECLAIMCTL" --root "$T/root" compact --all >"$T/all0" 2>&1 || rc=$?
[[ $rc -eq 1 ]] && grep -q "Outside the nightly window" "$T/all0" ||
        fail "compact --all outside the window: exit $rc $(cat "$T/all0")"
for v in vm-201 vm-204; do
        cmp -s "$(img_of $v)" "$T/$v.orig" || fail "$v was touched by a refused --all"
done
# --now: vm-201 (64M) then vm-204 (32M)
"$RECLAIMCTL" --root "$T/root" compact --all --now --json >"$T/all.json" 2>"$T/all.err" ||
        fail "compact --all: exit $? $(cat "$T/all.json" "$T/all.err")"
python3 - "$T/all.json" <<'PY' || fail "compact --all result: $(cat "$T/all.json")"
import json, sys
o = json.load(open(sys.argv[1]))
imgs = [d["image"].rsplit("/", 1)[1] for d in o["disks"]]
assert imgs == ["vm-201.qcow2", "vm-204.qcow2", "vm-208.qcow2"], imgs
assert all(d["file_size_after"] < d["file_size_before"] for d in o["disks"]), o
PY
check_image vm-201
check_image vm-204
check_image vm-208
cmp -s "$(img_of vm-202)" "$T/vm-202.orig" || fail "vm-202 (below min_gain) was compacted"
cmp -s "$(img_of vm-203)" "$T/vm-203.orig" || fail "vm-203 (auto_compact = no) was compacted"
# nothing left: a second run queues nothing
"$RECLAIMCTL" --root "$T/root" compact --all --now >"$T/all2" || fail "second compact --all"
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

# --- a nightly job still queued when the window closes is dropped, not run
# vm-206's helper is held at its start (max_concurrent = 1), so vm-207 waits in the queue
open_window="$(date -d '-1 hour' +%H:%M)-$(date -d '+1 hour' +%H:%M)"
cat >"$T/slow-reclaimctl" <<SH
#!/bin/bash
for a in "\$@"; do
        case \$a in
        *vm-206.qcow2) while [[ ! -e "$T/go-vm-206" ]]; do sleep 0.05; done ;;
        esac
done
exec "$RECLAIMCTL" "\$@"
SH
chmod +x "$T/slow-reclaimctl"
mkvm vm-206
mkvm vm-207
conf "min_gain = 1M" "window = $open_window" "max_concurrent = 1"
fake_start vm-206 report --bytes $((64 << 20))
"$RECLAIMD" --config "$T/reclaimd.conf" --root "$T/root" --state-dir "$T/state" \
        --reclaimctl "$T/slow-reclaimctl" >>"$T/reclaimd.log" 2>&1 7>&- &
DAEMON_PID=$!
wait_for "reclaimd on the bus" on_bus
wait_for "vm-206's job running" bash -c "'$RECLAIMCTL' jobs | grep -q 'vm-206.*running'"
fake_start vm-207 report --bytes $((32 << 20))
wait_for "vm-207 reported" reported vm-207
"$RECLAIMCTL" --root "$T/root" compact --all >"$T/all3" 2>&1 &
ALL3=$!
wait_for "vm-207 queued" bash -c "'$RECLAIMCTL' jobs | grep -q 'vm-207.*queued'"
conf "min_gain = 1M" "window = $closed_window" "max_concurrent = 1"
kill -HUP "$DAEMON_PID"
rc=0
wait "$ALL3" || rc=$?
[[ $rc -eq 0 ]] && grep -q "not started before the nightly window closed" "$T/all3" ||
        fail "a queued nightly job after the window closed: exit $rc $(cat "$T/all3")"
cmp -s "$(img_of vm-207)" "$T/vm-207.orig" || fail "vm-207 was compacted after the window closed"
[[ "$(state_get vm-207 's["disks"][0]["pending"]')" == True ]] || fail "vm-207 lost its pending state"
touch "$T/go-vm-206"
wait_for "vm-206 compacted" state_compacted vm-206
check_image vm-206
daemon_stop
log "window, compact --all and reload: pass"
