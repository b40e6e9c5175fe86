#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The programs under valgrind's memcheck, where that is cheap: reclaimctl inspect and compact
# on small real images (v3 with zero clusters to drop and data to move, v2, one with an
# internal snapshot and compressed clusters), reclaimctl list over the registry fixtures, and
# reclaim-agent list. Any invalid access, use of uninitialised memory or definite leak fails
# (--error-exitcode). The ASan build does not run this (the two do not mix).
set -euo pipefail

SRCDIR=${SRCDIR:?}
BUILDDIR=${BUILDDIR:?}
RECLAIMCTL=${RECLAIMCTL:-$BUILDDIR/host/reclaimctl/reclaimctl}
AGENT=$BUILDDIR/agent/reclaim-agent

fail() {
        echo "FAIL [test-valgrind]: $*" >&2
        exit 1
}
for c in valgrind qemu-img qemu-io; do
        command -v "$c" >/dev/null 2>&1 || {
                echo "SKIP: $c not found"
                exit 77
        }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-vg.XXXXXX")
trap 'rm -rf "$T"' EXIT

# vg NAME CMD...: runs CMD under memcheck; its log in $T/NAME.vg; exit status of CMD kept
# (99 means memcheck found errors)
vg() {
        local name=$1 rc=0
        shift
        valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
                --track-origins=yes --log-file="$T/$name.vg" "$@" >"$T/$name.out" 2>&1 || rc=$?
        if ((rc == 99)) || [[ -s "$T/$name.vg" ]]; then
                cat "$T/$name.vg" >&2
                fail "$name: memcheck errors"
        fi
        return "$rc"
}

# a v3 image: live data, all-zero clusters written as data, a hole, data at the end
qemu-img create -q -f qcow2 -o cluster_size=65536 "$T/a.qcow2" 64M
qemu-io -f qcow2 -c "write -P 1 0 4M" -c "write -P 0 4M 8M" -c "write -P 2 12M 1M" \
        -c "write -P 3 40M 2M" -c "discard 12M 1M" "$T/a.qcow2" >/dev/null
cp "$T/a.qcow2" "$T/a.orig"
# v2 with 4 KiB clusters
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 "$T/b.qcow2" 16M
qemu-io -f qcow2 -c "write -P 5 0 1M" -c "write -P 0 1M 2M" -c "write -P 6 3M 512k" "$T/b.qcow2" >/dev/null
cp "$T/b.qcow2" "$T/b.orig"
# an internal snapshot, then compressed clusters on top
qemu-img create -q -f qcow2 "$T/c.raw.qcow2" 16M
qemu-io -f qcow2 -c "write -P 7 0 4M" -c "write -P 0 4M 4M" "$T/c.raw.qcow2" >/dev/null
qemu-img convert -c -O qcow2 "$T/c.raw.qcow2" "$T/c.qcow2"
qemu-img snapshot -c snap1 "$T/c.qcow2"
qemu-io -f qcow2 -c "write -P 8 8M 2M" -c "write -P 0 0 1M" "$T/c.qcow2" >/dev/null
cp "$T/c.qcow2" "$T/c.orig"

for i in a b c; do
        vg "inspect-$i" "$RECLAIMCTL" inspect "$T/$i.qcow2" --json || fail "inspect $i: exit $?"
        vg "compact-$i" "$RECLAIMCTL" compact --image "$T/$i.qcow2" --json || fail "compact $i: exit $?"
        qemu-img check -q "$T/$i.qcow2" || fail "qemu-img check $i"
        qemu-img compare -q "$T/$i.orig" "$T/$i.qcow2" || fail "$i differs after compaction"
done
(($(stat -c %s "$T/a.qcow2") < $(stat -c %s "$T/a.orig"))) || fail "a.qcow2 did not shrink"

# refusals go through other paths: a file that is not qcow2, a bad magic
head -c 1048576 /dev/zero >"$T/notqcow2"
rc=0
vg refuse "$RECLAIMCTL" compact --image "$T/notqcow2" || rc=$?
((rc == 4)) || fail "a raw file: exit $rc, not 4"

vg list "$RECLAIMCTL" --no-daemon --root "$SRCDIR/tests/registry/fixtures/host" list --json ||
        fail "list: exit $?"
if [[ -x $AGENT ]]; then
        vg agent-list "$AGENT" list --json || fail "reclaim-agent list: exit $?"
fi
echo "# memcheck clean: inspect, compact (v3, v2, snapshot + compressed), refusal, list, agent list"
