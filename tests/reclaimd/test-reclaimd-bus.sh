#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaimd's D-Bus API (org.reclaim.Manager1) on a private system bus with the real bus policy,
# and reclaimctl's verbs on top of it:
#   - busctl introspect shows the interface; the count properties;
#   - `reclaimctl compact VM` queues through the daemon, follows the job (JobProgress and
#     JobRemoved signals seen on the bus) and the image shrinks (check 0, same data);
#   - a running VM (guest connected) is refused with exit 3; `reclaimctl reclaim VM` reaches
#     its agent as a ReclaimRequest and returns the guest's Report;
#   - jobs and cancel on a helper held at its start (a queued and a running job);
#   - a user other than root is refused by the bus policy;
#   - a new file in vms.d is picked up without SIGHUP (inotify);
#   - status VM through the daemon and, once it is stopped, from its state files;
#   - the status figures (Storages, Images, StatusTime, StatusJSON) refreshed after a job.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"
requires setpriv

mkvm vm-101
mkvm vm-102
mkvm vm-103
# vm-104 is added to vms.d once the daemon runs
bus_start
fake_start vm-102 serve --bytes 12345678

# A helper that waits for $T/go-<image name> before it runs the real reclaimctl: lets the test
# see jobs queued and running. Only vm-103's image waits.
cat >"$T/slow-reclaimctl" <<SH
#!/bin/bash
for a in "\$@"; do
        case \$a in
        *vm-103.qcow2) while [[ ! -e "$T/go-vm-103" ]]; do sleep 0.05; done ;;
        esac
done
exec "$RECLAIMCTL" "\$@"
SH
chmod +x "$T/slow-reclaimctl"
conf "max_concurrent = 1"
"$RECLAIMD" --config "$T/reclaimd.conf" --root "$T/root" --state-dir "$T/state" \
        --reclaimctl "$T/slow-reclaimctl" >>"$T/reclaimd.log" 2>&1 7>&- &
DAEMON_PID=$!
wait_for "reclaimd on the bus" on_bus

busctl monitor org.reclaim.Manager1 >"$T/monitor.log" 2>&1 7>&- &
BG_PIDS+=("$!")

# --- introspection and properties
busctl introspect org.reclaim.Manager1 /org/reclaim/Manager1 >"$T/introspect" ||
        fail "busctl introspect failed"
for m in ListVMs GetVM Compact CompactAll Reclaim ListJobs CancelJob Reload JobNew JobProgress \
        JobRemoved GuestReport GuestProgress NVMs; do
        grep -q "\.$m " "$T/introspect" || fail "introspection lacks $m"
done
[[ "$(busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 NVMs)" == "u 3" ]] ||
        fail "NVMs is not 3"
wait_for "vm-102's guest connected" bash -c \
        "busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 NConnected | grep -q 'u 1'"

# --- list shows the daemon's view
"$RECLAIMCTL" --root "$T/root" list >"$T/list" || fail "list failed"
grep -q "reclaimd: guest connected" "$T/list" || fail "list does not show vm-102's guest: $(cat "$T/list")"

# --- compact VM through the daemon
"$RECLAIMCTL" --root "$T/root" compact vm-101 >"$T/compact.out" 2>&1 ||
        fail "compact vm-101 through reclaimd: exit $? $(cat "$T/compact.out")"
grep -q "reclaimd job" "$T/compact.out" || fail "compact did not go through reclaimd: $(cat "$T/compact.out")"
shrunk vm-101 || fail "vm-101 did not shrink"
check_image vm-101
wait_for "JobRemoved on the bus" grep -q 'Member=JobRemoved' "$T/monitor.log"
grep -q 'Member=JobNew' "$T/monitor.log" || fail "no JobNew signal"
grep -q 'Member=JobProgress' "$T/monitor.log" || fail "no JobProgress signal"
# --- the status figures as properties: refreshed after the compaction, vm-101's new size
status_prop_ok() {
        busctl --json=short get-property org.reclaim.Manager1 /org/reclaim/Manager1 \
                org.reclaim.Manager1 StatusJSON >"$T/status-prop.json" 2>/dev/null || return 1
        python3 - "$T/status-prop.json" "$(img_of vm-101)" "$(file_size "$(img_of vm-101)")" <<'PY'
import json, sys
doc = json.loads(json.load(open(sys.argv[1]))["data"] or "{}")
disks = [d for s in doc.get("storages", []) for d in s["disks"]]
d = [d for d in disks if d["image"] == sys.argv[2]]
sys.exit(0 if len(disks) == 3 and d and d[0]["file_size"] == int(sys.argv[3]) and d[0]["last_compaction_time"] else 1)
PY
}
wait_for "StatusJSON with vm-101's compacted size" status_prop_ok
busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 Images >"$T/images"
grep -q '"vm-101"' "$T/images" && grep -q '"vm-102"' "$T/images" || fail "Images property: $(cat "$T/images")"
busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 Storages >"$T/storages"
grep -q '^a(ssstttttttttdas) 1 ' "$T/storages" || fail "Storages property: $(cat "$T/storages")"
[[ "$(busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 StatusTime)" != "t 0" ]] ||
        fail "StatusTime is 0"
busctl call org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 RefreshStatus ||
        fail "RefreshStatus"

# --- status VM through the daemon
"$RECLAIMCTL" --root "$T/root" status vm-101 --json >"$T/status.json" || fail "status vm-101"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); d=o["disks"][0]
assert o["daemon"] is True and d["last_compaction_time"]>0 and d["last_compaction_gain"]>0, o' \
        "$T/status.json" || fail "status vm-101: $(cat "$T/status.json")"

# the JSON form: the helper's per-image object
"$RECLAIMCTL" --root "$T/root" compact vm-101 --json >"$T/compact.json" || fail "second compact"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); d=o["disks"][0]
assert o["vm"]=="vm-101" and d["file_size_after"]==d["file_size_before"], o' "$T/compact.json" ||
        fail "compact --json through reclaimd: $(cat "$T/compact.json")"

# --- a running VM: compact refused (exit 3), reclaim reaches the guest
rc=0
"$RECLAIMCTL" --root "$T/root" compact vm-102 >"$T/c102" 2>&1 || rc=$?
[[ $rc -eq 3 ]] || fail "compact of running vm-102 exited $rc, not 3: $(cat "$T/c102")"
grep -q "running" "$T/c102" || fail "no reason given: $(cat "$T/c102")"
cmp -s "$(img_of vm-102)" "$T/vm-102.orig" || fail "vm-102's image was touched"
"$RECLAIMCTL" --root "$T/root" reclaim vm-102 --mode zero --rate 10M --json >"$T/reclaim.json" ||
        fail "reclaim vm-102: exit $?"
python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))
assert o["bytes"]==12345678 and o["filesystems"]==1, o' "$T/reclaim.json" ||
        fail "reclaim result: $(cat "$T/reclaim.json")"
grep -q "# report sent" "$T/fake-vm-102.log" || fail "fake guest saw no ReclaimRequest"
grep -q 'Member=GuestReport' "$T/monitor.log" || fail "no GuestReport signal"
rc=0
"$RECLAIMCTL" --root "$T/root" reclaim vm-101 >"$T/r101" 2>&1 || rc=$?
[[ $rc -eq 1 ]] && grep -q "not connected" "$T/r101" || fail "reclaim of a stopped VM: exit $rc $(cat "$T/r101")"

# --- jobs and cancel: vm-103's helper waits; a second request for vm-101 queues behind it
"$RECLAIMCTL" --root "$T/root" compact vm-103 >"$T/c103" 2>&1 &
C103=$!
wait_for "vm-103's job running" bash -c "'$RECLAIMCTL' jobs | grep -q 'vm-103.*running'"
"$RECLAIMCTL" --root "$T/root" compact vm-101 >"$T/c101b" 2>&1 &
C101=$!
wait_for "vm-101's job queued" bash -c "'$RECLAIMCTL' jobs | grep -q 'vm-101.*queued'"
"$RECLAIMCTL" jobs --json >"$T/jobs.json" || fail "jobs --json"
q=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"]
print([x["id"] for x in j if x["vm"]=="vm-101"][0])' "$T/jobs.json")
r=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"]
print([x["id"] for x in j if x["vm"]=="vm-103"][0])' "$T/jobs.json")
"$RECLAIMCTL" cancel "$q" || fail "cancel queued job $q"
"$RECLAIMCTL" cancel "$r" || fail "cancel running job $r"
rc=0
wait "$C101" || rc=$?
[[ $rc -eq 1 ]] || fail "a cancelled queued job: compact exited $rc: $(cat "$T/c101b")"
rc=0
wait "$C103" || rc=$?
[[ $rc -eq 1 ]] || fail "a cancelled running job: compact exited $rc: $(cat "$T/c103")"
grep -q "cancelled" "$T/c103" || fail "no 'cancelled' in: $(cat "$T/c103")"
rc=0
"$RECLAIMCTL" cancel 99999 2>/dev/null || rc=$?
[[ $rc -eq 1 ]] || fail "cancel of an unknown job exited $rc"
[[ "$("$RECLAIMCTL" jobs)" == "No jobs." ]] || fail "jobs left: $("$RECLAIMCTL" jobs)"
check_image vm-103 # not compacted (cancelled before the engine ran), still intact
touch "$T/go-vm-103"

# --- only root: the bus policy refuses other users
chmod 755 "$T"
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups \
        busctl call org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 ListJobs \
        >"$T/nobody" 2>&1 || rc=$?
((rc != 0)) && grep -qi "denied" "$T/nobody" || fail "a non-root caller was not refused: $(cat "$T/nobody")"

# --- a new VM file is picked up without SIGHUP
mkvm vm-104
wait_for "vm-104 loaded" bash -c \
        "busctl get-property org.reclaim.Manager1 /org/reclaim/Manager1 org.reclaim.Manager1 NVMs | grep -q 'u 4'"
grep -q "VM configuration changed" "$T/reclaimd.log" || fail "reload not logged"
# the reload kept vm-102's live connection
grep -c "vm-102: connected to" "$T/reclaimd.log" | grep -qx 1 || fail "vm-102's channel was reconnected by the reload"

# --- without the daemon: status from the state files, compact runs the engine directly
daemon_stop
"$RECLAIMCTL" --root "$T/root" --state-dir "$T/state" status vm-101 >"$T/status.txt" ||
        fail "status without reclaimd"
grep -q "reclaimd is not running" "$T/status.txt" && grep -q "compacted: 20" "$T/status.txt" ||
        fail "status from the state files: $(cat "$T/status.txt")"
"$RECLAIMCTL" --root "$T/root" compact vm-103 >"$T/c103d" 2>&1 || fail "direct compact: $(cat "$T/c103d")"
grep -q "reclaimd job" "$T/c103d" && fail "compact went through a stopped daemon?"
shrunk vm-103 || fail "vm-103 did not shrink directly"
check_image vm-103
rc=0
"$RECLAIMCTL" jobs >/dev/null 2>"$T/nojobs" || rc=$?
[[ $rc -eq 1 ]] && grep -q "reclaimd is not running" "$T/nojobs" || fail "jobs without reclaimd: $rc"
log "D-Bus API: compact, status, reclaim, jobs, cancel, policy, reload all pass"
