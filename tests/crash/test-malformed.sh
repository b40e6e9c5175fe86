#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A corpus of broken images (truncated tables, offsets past EOF, overlapping tables, refcount
# loops, absurd sizes, bad magic...): compact refuses each with exit 4 and a reason, leaves it
# byte-identical, and neither compact nor inspect crashes (under ASan: no report either).
set -euo pipefail
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null && command -v python3 >/dev/null || exit 77
: "${RECLAIMCTL:?}" "${SRCDIR:?}"
dir=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-malformed.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 8M
qemu-io -f qcow2 -c "write -P 1 0 64K" -c "write -P 0 64K 64K" -c "write -P 2 1M 64K" base.qcow2 >/dev/null
qemu-img snapshot -c s1 base.qcow2
qemu-io -f qcow2 -c "write -P 3 0 16K" base.qcow2 >/dev/null
qemu-img check -q base.qcow2
n=$(python3 "$SRCDIR/tests/crash/malform.py" base.qcow2 corpus)

failed=0 refused=0
for f in corpus/*; do
        name=$(basename "$f")
        cp "$f" work
        rc=0; "$RECLAIMCTL" compact --image work >out 2>err || rc=$?
        if [ "$rc" != 4 ]; then
                echo "FAIL $name: compact exit $rc, expected 4 (refused)"; cat err; failed=$((failed + 1)); continue
        fi
        grep -q "refused" err || { echo "FAIL $name: no reason given"; failed=$((failed + 1)); continue; }
        cmp -s "$f" work || { echo "FAIL $name: the refused image was modified"; failed=$((failed + 1)); continue; }
        rc=0; "$RECLAIMCTL" inspect work >/dev/null 2>&1 || rc=$?
        if [ "$rc" -ge 5 ]; then echo "FAIL $name: inspect died (exit $rc)"; failed=$((failed + 1)); continue; fi
        rc=0; "$RECLAIMCTL" compact --dry-run --image work >/dev/null 2>&1 || rc=$?
        [ "$rc" = 4 ] || { echo "FAIL $name: dry run exit $rc"; failed=$((failed + 1)); continue; }
        refused=$((refused + 1))
        printf '%-28s %s\n' "$name" "$(head -c 150 err)"
done
echo "$refused of $n malformed images refused cleanly"
[ "$failed" = 0 ] && [ "$refused" = "$n" ]
