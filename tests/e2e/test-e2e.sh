#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# test-e2e.sh SCENARIO: reclaim end to end, in a real VM (QEMU under TCG, Debian's kernel, a
# busybox initramfs with the real reclaim-agent), with the real reclaimd and reclaimctl on the
# host. Scenarios:
#
#   zerofill         no discard, detect-zeroes off: the agent zero-fills, reports, the guest
#                    powers off, reclaimd compacts; the file shrinks to about the live data
#   trim             discard=unmap: the agent trims; after the stop the compaction truncates
#   locked           the VM is started while its disk is being compacted: QEMU refuses the
#                    locked disk, the compaction finishes, the image stays valid
#   reclaim-request  `reclaimctl reclaim VM` on a running guest (serve mode) makes the daemon
#                    ask the agent for a run (over D-Bus, then the port); skipped when
#                    reclaimctl has no 'reclaim' verb
#
# Each scenario checks `qemu-img check` (exit 0) and boots the guest once more to verify the
# checksum of every file. Environment (set by meson): RECLAIMD, RECLAIMCTL, RECLAIM_AGENT. In
# a sanitized build they are sanitized too: the guest gets the agent's sanitizer runtimes with
# its other libraries (ldd), and an error report there makes the agent, and the test, fail.
# KEEP_TMP=1 keeps the work directory. Exit status: 0 pass, 1 fail, 77 skip.
# Waits are bounded (to avoid hangs) but nothing asserts on elapsed time; the log gives the
# times and sizes measured.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/e2e/vm-lib.sh
source "$here/vm-lib.sh"

scenario=${1:-}
SRCDIR=${SRCDIR:-$(cd "$here/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIMD=${RECLAIMD:-$BUILDDIR/host/reclaimd/reclaimd}
RECLAIMCTL=${RECLAIMCTL:-$BUILDDIR/host/reclaimctl/reclaimctl}
RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}

VM=vm-e2e
DISK_MIB=256 # the guest's disk
LIVE_MIB=24  # files with known checksums
JUNK_MIB=96  # random data written and deleted again: the dirty free space
RESERVE_MIB=13 # the agent's reserve: 5% of the disk (agent.conf below), which is the larger

log() { echo "# $*"; }

fail() {
        echo "FAIL [e2e-$scenario]: $*" >&2
        local f
        for f in "${T:-/nonexistent}"/console-*.log "${T:-/nonexistent}/reclaimd.log"; do
                [[ -f $f ]] || continue
                echo "--- $f" >&2
                tail -n 30 "$f" >&2
        done
        exit 1
}

skip() {
        echo "SKIP [e2e-$scenario]: $*"
        exit 77
}

case $scenario in
zerofill | trim | locked | reclaim-request) ;;
*)
        echo "usage: $0 zerofill|trim|locked|reclaim-request" >&2
        exit 2
        ;;
esac

if missing=$(e2e_requires); then :; else
        skip "'$missing' not found (scripts/deps installs it)"
fi
for b in "$RECLAIMD" "$RECLAIMCTL" "$RECLAIM_AGENT"; do
        [[ -x $b ]] || fail "not executable: $b"
done
if [[ $scenario == reclaim-request ]]; then
        verbs=$("$RECLAIMCTL" --help 2>&1) || true
        grep -qE '^ +reclaim +' <<<"$verbs" ||
                skip "reclaimctl has no 'reclaim' verb yet (needs reclaimd's D-Bus API)"
fi
e2e_kernel_fetch || skip "no kernel to boot (apt-get download failed; see above)"

# Short paths: a UNIX socket path holds 107 bytes.
T=$(mktemp -d "${TMPDIR:-/tmp}/e2e.XXXXXX")
E2E_QEMU_PID='' E2E_RECLAIMD_PID='' E2E_DBUS_PID=''
cleanup() {
        local p
        for p in $E2E_QEMU_PID $E2E_RECLAIMD_PID $E2E_DBUS_PID; do
                kill "$p" 2>/dev/null || true
                wait "$p" 2>/dev/null || true
        done
        if [[ -n ${KEEP_TMP:-} ]]; then
                echo "# keeping $T" >&2
        else
                rm -rf "$T"
        fi
}
trap cleanup EXIT

t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# wait_until DESC POLLS CMD...: until CMD succeeds, at most POLLS polls of 0.1 s; fails if
# reclaimd died meanwhile
wait_until() {
        local desc=$1 polls=$2 i
        shift 2
        for ((i = 0; i < polls; i++)); do
                "$@" && return 0
                if [[ -n $E2E_RECLAIMD_PID ]] && ! kill -0 "$E2E_RECLAIMD_PID" 2>/dev/null; then
                        fail "reclaimd died while waiting for: $desc"
                fi
                sleep 0.1
        done
        fail "timed out waiting for: $desc"
}

# --- the guest, the disk, the host configuration --------------------------------------------
IMG=$T/root/images/$VM.qcow2
SOCK=$T/root/run/$VM.sock
STATE=$T/state
mkdir -p "$T/root/images" "$T/root/run"

cat >"$T/agent.conf" <<EOF
[agent]
mode = auto
rate = 256M
reserve = 5%,8M
EOF
E2E_INITRD=$T/initrd.gz
e2e_initramfs "$E2E_INITRD" "$RECLAIM_AGENT" "$T/agent.conf" || fail "cannot build the initramfs"
e2e_disk "$IMG" "$DISK_MIB" "$LIVE_MIB" "$JUNK_MIB" "$T/sums" || fail "cannot build the disk"
LC_ALL=C sort -k2 "$T/sums" >"$T/sums.sorted"
size_before=$(stat -c %s "$IMG")
alloc_before=$(e2e_allocated "$IMG")
log "disk: ${DISK_MIB} MiB ext4, ${LIVE_MIB} MiB of files ($(wc -l <"$T/sums") files)," \
        "${JUNK_MIB} MiB deleted; qcow2 file $(mib "$size_before"), $(mib "$alloc_before") allocated"

# The VM as the daemon sees it, under --root $T/root (vms.d and reclaimd.conf there).
e2e_host_setup "$T/root" "$VM" "/images/$VM.qcow2" "/run/$VM.sock" || fail "host setup"
# A private system bus: reclaimd's D-Bus API (org.reclaim.Manager1) will live there.
e2e_dbus_start "$T/bus" || fail "cannot start dbus-daemon"
if command -v busctl >/dev/null 2>&1; then
        busctl --system list >/dev/null 2>&1 || fail "the private bus does not answer (busctl)"
fi
log "private system bus: $DBUS_SYSTEM_BUS_ADDRESS"
log "setup done after $(elapsed) s"

# boot NAME MODE DISK [KERNEL_ARGS...]: starts the VM (DISK: nodiscard or unmap, see
# e2e_qemu_start); its console goes to $T/console-NAME.log
boot() {
        local name=$1 mode=$2 disk=$3
        shift 3
        e2e_qemu_start "$VM" "$IMG" "$SOCK" "$T/console-$name.log" "$mode" "$disk" "$@"
}

# wait_guest NAME: waits for the VM to stop; it must have powered off cleanly (rc 0)
wait_guest() {
        local rc=0
        e2e_qemu_wait || rc=$?
        ((rc == 0)) || fail "boot $1: QEMU exited with status $rc"
        [[ "$(e2e_console_value "$T/console-$1.log" DONE)" == rc=0 ]] ||
                fail "boot $1: the guest did not finish cleanly"
}

reclaimd_start() {
        e2e_reclaimd_start "$T/root" "$STATE" "$T/reclaimd.log"
}

reclaimd_stop() {
        local rc=0
        e2e_reclaimd_stop || rc=$?
        ((rc == 0)) || fail "reclaimd exited $rc after SIGTERM"
}

# run_boot DISK: the guest runs `reclaim-agent run` and powers off, with reclaimd
# connected to its port. Sets agent_json.
run_boot() {
        boot run run "$1"
        e2e_wait_socket "$SOCK" "$E2E_QEMU_PID" || fail "QEMU does not serve $SOCK"
        wait_guest run
        agent_json=$(e2e_console_agent_json "$T/console-run.log")
        [[ -n $agent_json ]] || fail "no agent summary on the console"
        log "agent: $(python3 -c 'import json, sys
j = json.loads(sys.argv[1])
for f in j["filesystems"]:
    print(f["mount_point"], f["method"], f["outcome"], f["bytes"], "bytes,", end=" ")
print("report_sent", j["report_sent"])' "$agent_json")"
}

# agent_says EXPR: a python expression over the agent's JSON summary (j) is true
agent_says() {
        [[ "$(python3 -c 'import json, sys
j = json.loads(sys.argv[1])
d = [f for f in j["filesystems"] if f["mount_point"] == "/data"][0]
print(eval(sys.argv[2]))' "$agent_json" "$1")" == True ]]
}

# verify_image: qemu-img check exits 0, and a fresh boot sees every file with its checksum
verify_image() {
        local rc=0
        qemu-img check -q "$IMG" || rc=$?
        ((rc == 0)) || fail "qemu-img check $IMG: exit $rc"
        boot verify verify nodiscard
        wait_guest verify
        e2e_console_sums "$T/console-verify.log" >"$T/sums.guest"
        diff -u "$T/sums.sorted" "$T/sums.guest" >"$T/sums.diff" ||
                fail "checksums differ after compaction: $(head -n 20 "$T/sums.diff")"
        log "verify boot: all $(wc -l <"$T/sums.guest") checksums match"
}

# sizes: logs and sets size_after and alloc_after
sizes() {
        size_after=$(stat -c %s "$IMG")
        alloc_after=$(e2e_allocated "$IMG")
        log "qcow2 file: $(mib "$size_before") before, $(mib "$size_after") after;" \
                "allocated: $(mib "$alloc_before") before, $(mib "$alloc_after") after"
}

# --- scenarios ----------------------------------------------------------------------------
scenario_zerofill() {
        local t0
        reclaimd_start
        t0=$(e2e_now_us)
        run_boot nodiscard
        agent_says 'd["method"] == "zero" and d["outcome"] == "ok" and d["bytes"] > 0' ||
                fail "the agent did not zero-fill /data"
        agent_says '(d["reserve_bytes"] > 0 and
                     d["bytes"] <= d["free_bytes_before"] - d["reserve_bytes"])' ||
                fail "the zero-fill went into the reserve"
        agent_says 'j["report_sent"]' || fail "the agent's report did not reach reclaimd"
        log "guest run and stop done after $(elapsed) s"
        wait_until "reclaimd compacts $VM" 3000 e2e_compacted "$STATE" "$VM" "$t0"
        log "compaction done after $(elapsed) s"
        reclaimd_stop
        sizes
        # What is left: the files, ext4's metadata and journal, and the part of the dirty
        # free space that lies in the agent's reserve (never filled).
        ((size_after < size_before)) || fail "the file did not shrink"
        ((size_after <= (LIVE_MIB + RESERVE_MIB + 16) << 20)) ||
                fail "the file is $(mib "$size_after"), not about the live data"
        verify_image
}

scenario_trim() {
        local t0
        reclaimd_start
        t0=$(e2e_now_us)
        run_boot unmap
        agent_says 'd["method"] == "trim" and d["outcome"] == "ok"' ||
                fail "the agent did not trim /data"
        agent_says 'j["report_sent"]' || fail "the agent's report did not reach reclaimd"
        log "guest run and stop done after $(elapsed) s"
        wait_until "reclaimd compacts $VM" 3000 e2e_compacted "$STATE" "$VM" "$t0"
        log "compaction done after $(elapsed) s"
        reclaimd_stop
        sizes
        # The trim punched holes; only the compaction makes the file itself shorter.
        ((size_after < size_before)) || fail "the file was not truncated"
        ((size_after <= (LIVE_MIB + 16) << 20)) ||
                fail "the file is $(mib "$size_after"), not about the live data"
        verify_image
}

scenario_locked() {
        local t0 rc=0 hold=$T/hold
        mkdir -p "$hold"
        # reclaimd runs the real reclaimctl through hold-reclaimctl.sh, which freezes the
        # compaction once it holds the image's locks, until $hold/resume appears.
        export E2E_REAL_RECLAIMCTL=$RECLAIMCTL E2E_HOLD_DIR=$hold
        RECLAIMCTL=$here/hold-reclaimctl.sh reclaimd_start
        t0=$(e2e_now_us)
        run_boot nodiscard
        agent_says 'd["method"] == "zero" and d["bytes"] > 0' || fail "the agent did not zero-fill"
        wait_until "the compaction starts and is held" 3000 \
                test -e "$hold/held" -o -e "$hold/missed"
        [[ -e $hold/held ]] || fail "the compaction ended before it could be held"
        log "compaction under way (helper $(cat "$hold/held") holds the image locks)"

        # The VM is started again, on the disk being compacted.
        boot locked verify nodiscard
        e2e_qemu_wait || rc=$?
        ((rc != 0)) || fail "QEMU started the VM on a disk that is being compacted"
        grep -q 'lock' "$T/console-locked.log" ||
                fail "QEMU failed for another reason: $(tail -n 3 "$T/console-locked.log")"
        log "QEMU refused the disk (exit $rc): $(grep -m1 'lock' "$T/console-locked.log")"
        e2e_compacted "$STATE" "$VM" "$t0" && fail "compacted while it should be held"
        e2e_pending "$STATE" "$VM" || fail "the disk is not pending while its compaction is held"

        touch "$hold/resume"
        wait_until "reclaimd compacts $VM" 3000 e2e_compacted "$STATE" "$VM" "$t0"
        log "compaction done after $(elapsed) s"
        reclaimd_stop
        sizes
        ((size_after < size_before)) || fail "the file did not shrink"
        verify_image
}

# Through reclaimd's D-Bus API (org.reclaim.Manager1 on the private system bus): the guest
# runs `reclaim-agent serve` and waits; `reclaimctl reclaim VM` asks the daemon, which sends
# the agent a ReclaimRequest; the agent zero-fills and reports (reclaimctl prints the result);
# the guest then powers off and the daemon compacts.
scenario_reclaim_request() {
        local t0 rc=0
        reclaimd_start
        t0=$(e2e_now_us)
        boot serve serve nodiscard e2e.serve_timeout=240
        e2e_wait_socket "$SOCK" "$E2E_QEMU_PID" || fail "QEMU does not serve $SOCK"
        wait_until "the guest agent says Hello" 3000 \
                grep -q "$VM: guest agent connected" "$T/reclaimd.log"
        log "guest agent (serve) connected after $(elapsed) s"
        "$RECLAIMCTL" --root "$T/root" reclaim "$VM" --json >"$T/reclaim.json" 2>"$T/reclaimctl.log" ||
                rc=$?
        ((rc == 0)) || fail "reclaimctl reclaim $VM: exit $rc: $(cat "$T/reclaimctl.log")"
        log "reclaimctl reclaim: $(tr -d '\n ' <"$T/reclaim.json")"
        python3 -c 'import json, sys
o = json.load(open(sys.argv[1]))
assert o["bytes"] > 0 and o["filesystems"] == 1, o' "$T/reclaim.json" ||
                fail "reclaim result: $(cat "$T/reclaim.json")"
        wait_guest serve
        grep -q "Reclaim run done" "$T/console-serve.log" || fail "the agent did no run"
        wait_until "reclaimd compacts $VM" 3000 e2e_compacted "$STATE" "$VM" "$t0"
        log "compaction done after $(elapsed) s"
        "$RECLAIMCTL" --root "$T/root" --state-dir "$STATE" status "$VM" >"$T/status.log" 2>&1 ||
                fail "reclaimctl status $VM: $(cat "$T/status.log")"
        grep -q "compacted:" "$T/status.log" ||
                fail "status shows no compaction: $(cat "$T/status.log")"
        # the host-wide view: the guest's report keeps its figure, marked as acted on
        "$RECLAIMCTL" --root "$T/root" --state-dir "$STATE" status >"$T/host-status.log" 2>&1 ||
                fail "reclaimctl status: $(cat "$T/host-status.log")"
        grep -q "freed, compacted since)" "$T/host-status.log" && ! grep -q "(0 B freed" "$T/host-status.log" ||
                fail "status shows the report wrongly: $(cat "$T/host-status.log")"
        reclaimd_stop
        sizes
        ((size_after < size_before)) || fail "the file did not shrink"
        ((size_after <= (LIVE_MIB + RESERVE_MIB + 16) << 20)) ||
                fail "the file is $(mib "$size_after"), not about the live data"
        verify_image
}

"scenario_${scenario//-/_}"
log "e2e-$scenario passed in $(elapsed) s"
