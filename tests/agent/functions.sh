# shellcheck shell=bash disable=SC2034
# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the agent integration tests (tests/agent/test-*.sh FSTYPE): a small filesystem
# image in $TMPDIR on a loop device, mounted, always unmounted and detached on exit.
#
# Environment (set by meson): ZEROFILL_TOOL, SRCDIR, BUILDDIR.
# Exit statuses: 0 pass, 1 fail, 77 skip (not root, no loop devices, no mkfs, no kernel fs).

set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
ZEROFILL_TOOL=${ZEROFILL_TOOL:-$BUILDDIR/tests/agent/zerofill-tool}
BLOCKSCAN="$TESTDIR/blockscan.py"
TEST_NAME="$(basename "$0" .sh)-${1:-}"
MiB=$((1024 * 1024))

log() { echo "# $*"; }

fail() {
        echo "FAIL [$TEST_NAME]: $*" >&2
        exit 1
}

skip() {
        echo "SKIP [$TEST_NAME]: $*"
        exit 77
}

requires() {
        local c
        for c in "$@"; do
                command -v "$c" >/dev/null 2>&1 || skip "'$c' not found"
        done
}

FSTYPE=${1:-}
case "$FSTYPE" in
ext4 | xfs | btrfs) ;;
*)
        echo "usage: $0 ext4|xfs|btrfs" >&2
        exit 2
        ;;
esac

[[ $EUID -eq 0 ]] || skip "needs root (loop devices, mount)"
requires losetup mount umount truncate "mkfs.$FSTYPE" python3 sync stat
[[ -x "$ZEROFILL_TOOL" ]] || fail "zerofill-tool not found: '$ZEROFILL_TOOL'"
[[ -e /dev/loop-control ]] || skip "no /dev/loop-control"

T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-agent-it.XXXXXX")
MNT="$T/mnt"
IMG="$T/disk.img"
LOOP=
BG_PIDS=()

cleanup() {
        local rc=$? p i
        set +e
        for p in "${BG_PIDS[@]}"; do
                kill -KILL "$p" 2>/dev/null
                wait "$p" 2>/dev/null
        done
        if mountpoint -q "$MNT" 2>/dev/null; then
                for i in 1 2 3 4 5; do
                        umount "$MNT" 2>/dev/null && break
                        sleep 0.2
                done
                mountpoint -q "$MNT" 2>/dev/null && umount -l "$MNT"
        fi
        [[ -n "$LOOP" ]] && losetup -d "$LOOP" 2>/dev/null
        if [[ $rc -ne 0 && $rc -ne 77 && -n "${KEEP_TMP:-}" ]]; then
                echo "# keeping $T" >&2
        else
                rm -rf "$T"
        fi
        exit "$rc"
}
trap cleanup EXIT
# A meson timeout sends SIGTERM: exit through the EXIT trap so nothing stays mounted.
trap 'exit 143' TERM
trap 'exit 130' INT

# make_fs [MOUNT_OPTIONS]: image (xfs: 300 MiB, its minimum; others 256 MiB), loop, mkfs,
# mount at $MNT. Mount options always include nodiscard: freed blocks must keep their old
# contents (btrfs discards asynchronously by default on devices that can), or the zero-fill
# tests would pass without the fill doing anything.
make_fs() {
        local opts=${1:-} size=256
        [[ $FSTYPE == xfs ]] && size=300
        truncate -s "${size}M" "$IMG"
        LOOP=$(losetup --find --show "$IMG" 2>"$T/losetup.err") ||
                skip "no loop device: $(cat "$T/losetup.err")"
        case "$FSTYPE" in
        ext4) mkfs.ext4 -q -F -b 4096 -m 0 "$LOOP" >"$T/mkfs.log" 2>&1 ;;
        xfs) mkfs.xfs -q -f "$LOOP" >"$T/mkfs.log" 2>&1 ;;
        btrfs) mkfs.btrfs -q -f "$LOOP" >"$T/mkfs.log" 2>&1 ;;
        esac || fail "mkfs.$FSTYPE failed: $(cat "$T/mkfs.log")"
        mkdir -p "$MNT"
        if ! mount -t "$FSTYPE" -o "nodiscard${opts:+,$opts}" "$LOOP" "$MNT" 2>"$T/mount.err"; then
                grep -qi "unknown filesystem type" "$T/mount.err" &&
                        skip "kernel has no $FSTYPE: $(cat "$T/mount.err")"
                fail "mount $FSTYPE: $(cat "$T/mount.err")"
        fi
        log "$FSTYPE on $LOOP ($size MiB) at $MNT${opts:+ with $opts}"
}

# free_bytes: what an unprivileged user may still write (statvfs f_bavail * f_frsize).
free_bytes() {
        local a s
        read -r a s < <(stat -f -c '%a %S' "$MNT")
        echo $((a * s))
}

# zf VERB [ARGS...]: run the driver; output in $T/out, status in RC.
zf() {
        RC=0
        "$ZEROFILL_TOOL" "$@" >"$T/out" 2>"$T/err" || RC=$?
}

# get KEY: one value from $T/out.
get() {
        local v
        v=$(awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); print; found = 1 } END { exit !found }' "$T/out") ||
                fail "key '$1' missing in the driver's output: $(cat "$T/out" "$T/err")"
        echo "$v"
}

expect_rc() {
        if [[ $RC -ne $1 ]]; then
                echo "--- stdout:" >&2
                cat "$T/out" >&2
                echo "--- stderr:" >&2
                cat "$T/err" >&2
                fail "$2: exit status $RC, want $1"
        fi
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# wait_free_at_least BYTES SECONDS: poll until free space is back to BYTES. A killed agent's
# unnamed file is freed by the kernel at the last close; btrfs returns the extents at the next
# transaction commit and xfs inactivates inodes in the background, so each poll syncs the
# filesystem (what the agent itself does after a normal release).
wait_free_at_least() {
        local want=$1 secs=$2 deadline f
        deadline=$(($(date +%s%N) + secs * 1000000000))
        while :; do
                sync -f "$MNT"
                f=$(free_bytes)
                [[ $f -ge $want ]] && return 0
                [[ $(date +%s%N) -ge $deadline ]] && break
                sleep 0.05
        done
        fail "free space $(mib "$f") did not come back to $(mib "$want") within ${secs}s"
}
