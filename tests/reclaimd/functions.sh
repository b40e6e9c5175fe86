# SPDX-License-Identifier: LGPL-2.1-or-later
# shellcheck shell=bash
# Helpers for the reclaimd tests; sourced by tests/reclaimd/test-reclaimd-*.sh.
#
# Environment (set by meson): RECLAIMD, RECLAIMCTL, FAKE_QEMU, BUILDDIR.
# Exit statuses: 0 pass, 1 fail, 77 skip. Waits poll a bounded number of times; nothing
# asserts on elapsed time.

set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIMD=${RECLAIMD:-$BUILDDIR/host/reclaimd/reclaimd}
RECLAIMCTL=${RECLAIMCTL:-$BUILDDIR/host/reclaimctl/reclaimctl}
FAKE_QEMU=${FAKE_QEMU:-$BUILDDIR/tests/reclaimd/fake-qemu}
TEST_NAME=$(basename "$0" .sh)

log() { echo "# $*"; }

fail() {
        echo "FAIL [$TEST_NAME]: $*" >&2
        if [[ -f "${T:-/nonexistent}/reclaimd.log" ]]; then
                echo "--- reclaimd.log" >&2
                tail -n 40 "$T/reclaimd.log" >&2
        fi
        exit 1
}

requires() {
        local c
        for c in "$@"; do
                if ! command -v "$c" >/dev/null 2>&1; then
                        echo "SKIP [$TEST_NAME]: '$c' not found"
                        exit 77
                fi
        done
}

requires qemu-img qemu-io python3 cmp mkfifo
for b in "$RECLAIMD" "$RECLAIMCTL" "$FAKE_QEMU"; do
        [[ -x "$b" ]] || fail "not executable: $b"
done

# Short socket paths: sun_path holds 108 bytes.
T=$(mktemp -d "${TMPDIR:-/tmp}/rcd.XXXXXX")
BG_PIDS=()
DAEMON_PID=
cleanup() {
        local rc=$? p
        for p in "${BG_PIDS[@]}" $DAEMON_PID; do
                kill "$p" 2>/dev/null || true
                wait "$p" 2>/dev/null || true
        done
        if [[ -n "${KEEP_TMP:-}" ]]; then
                echo "# keeping $T" >&2
        else
                rm -rf "$T"
        fi
}
trap cleanup EXIT

file_size() { stat -c %s "$1"; }

# mkvm NAME: an image $T/root/img/NAME.qcow2 (16 MiB of data, every other MiB real data
# that is all zeros), its pristine copy $T/NAME.orig, and vms.d/NAME.conf with its channel
# socket $T/root/run/NAME.sock.
mkvm() {
        local name=$1 img=$T/root/img/$1.qcow2 args=() i
        mkdir -p "$T/root/img" "$T/root/run" "$T/root/etc/reclaim/vms.d"
        qemu-img create -q -f qcow2 -o cluster_size=65536 "$img" 32M || fail "qemu-img create"
        for ((i = 0; i < 16; i++)); do
                if ((i % 2 == 0)); then
                        args+=(-c "write -P $((i + 1)) ${i}M 1M")
                else
                        args+=(-c "write -P 0 ${i}M 1M")
                fi
        done
        qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null || fail "qemu-io write"
        cp "$img" "$T/$name.orig"
        printf '[vm]\nname = %s\ndisk = /img/%s.qcow2\nchannel = /run/%s.sock\n' \
                "$name" "$name" "$name" >"$T/root/etc/reclaim/vms.d/$name.conf"
}

img_of() { echo "$T/root/img/$1.qcow2"; }
sock_of() { echo "$T/root/run/$1.sock"; }

# conf [KEY=VALUE...]: writes $T/reclaimd.conf
conf() {
        local kv
        {
                echo "[daemon]"
                echo "retry_interval = 1"
                echo "job_timeout = 120"
                for kv in "$@"; do
                        echo "$kv"
                done
        } >"$T/reclaimd.conf"
}

# fake_start NAME SCENARIO [OPTIONS...]: a fake QEMU end for NAME's channel, in the background
fake_start() {
        local name=$1 sc=$2 i
        shift 2
        "$FAKE_QEMU" "$sc" --socket "$(sock_of "$name")" "$@" >"$T/fake-$name.log" 2>&1 7>&- &
        BG_PIDS+=("$!")
        eval "FAKE_PID_${name//-/_}=$!"
        for ((i = 0; i < 200; i++)); do
                [[ -S "$(sock_of "$name")" ]] && return 0
                sleep 0.05
        done
        fail "fake-qemu did not listen on $(sock_of "$name")"
}

daemon_start() {
        [[ -f "$T/reclaimd.conf" ]] || conf ""
        "$RECLAIMD" --config "$T/reclaimd.conf" --root "$T/root" --state-dir "$T/state" \
                --reclaimctl "$RECLAIMCTL" >>"$T/reclaimd.log" 2>&1 7>&- &
        DAEMON_PID=$!
}

# daemon_stop: SIGTERM, and the daemon must exit 0
daemon_stop() {
        local rc=0
        kill -TERM "$DAEMON_PID" || fail "reclaimd is gone before SIGTERM"
        wait "$DAEMON_PID" || rc=$?
        DAEMON_PID=
        [[ $rc -eq 0 ]] || fail "reclaimd exited $rc after SIGTERM"
}

# wait_for DESC CMD...: until CMD succeeds, at most 600 polls of 0.1 s
wait_for() {
        local desc=$1 i
        shift
        for ((i = 0; i < 600; i++)); do
                if "$@"; then
                        return 0
                fi
                [[ -z "$DAEMON_PID" ]] || kill -0 "$DAEMON_PID" 2>/dev/null ||
                        fail "reclaimd died while waiting for: $desc"
                sleep 0.1
        done
        fail "timed out waiting for: $desc"
}

shrunk() { (($(file_size "$(img_of "$1")") < $(file_size "$T/$1.orig"))); }

# state_get NAME EXPR: evaluates a python expression on the state file (s = its JSON)
state_get() {
        python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
                "$T/state/vms/$1.json" "$2"
}

state_compacted() {
        [[ -f "$T/state/vms/$1.json" ]] &&
                [[ "$(state_get "$1" 's["disks"][0]["last_compaction_time"] > 0 and not s["disks"][0]["pending"]')" == True ]]
}

# check_image NAME: qemu-img check 0, same guest data as the pristine copy
check_image() {
        local img
        img=$(img_of "$1")
        qemu-img check -q "$img" || fail "qemu-img check $img: exit $?"
        qemu-img compare -q "$T/$1.orig" "$img" || fail "$img differs from its pristine copy"
}

# bus_start: a private system bus (dbus-daemon) at $T/bus with the system bus's default rules
# and reclaimd's own policy file (units/org.reclaim.Manager1.conf); exports
# DBUS_SYSTEM_BUS_ADDRESS so reclaimd, reclaimctl and busctl use it.
bus_start() {
        local i
        requires dbus-daemon busctl
        cat >"$T/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=$T/bus</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>$SRCDIR/units/org.reclaim.Manager1.conf</include>
</busconfig>
CONF
        dbus-daemon --config-file="$T/bus.conf" --nofork --nopidfile >"$T/bus.log" 2>&1 7>&- &
        BG_PIDS+=("$!")
        for ((i = 0; i < 200; i++)); do
                [[ -S "$T/bus" ]] && break
                sleep 0.05
        done
        [[ -S "$T/bus" ]] || fail "dbus-daemon did not start: $(cat "$T/bus.log")"
        export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$T/bus"
}

# on_bus: reclaimd owns its name on the private bus
on_bus() {
        busctl call org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus \
                NameHasOwner s org.reclaim.Manager1 2>/dev/null | grep -q "^b true"
}
