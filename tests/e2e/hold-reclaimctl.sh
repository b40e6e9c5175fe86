#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# hold-reclaimctl.sh ARGS...: reclaimd's compaction helper for the e2e test "locked". It runs the
# real reclaimctl ($E2E_REAL_RECLAIMCTL) with ARGS and, as soon as that process holds QEMU's
# locks on the image (OFD locks in /proc/locks on the image's inode), stops it with SIGSTOP:
# a compaction frozen in the middle, with the image locked, for as long as the test needs to
# start the VM against it. It writes the helper's pid to $E2E_HOLD_DIR/held, continues it
# (SIGCONT) once $E2E_HOLD_DIR/resume exists, and exits with the helper's status. If the
# helper finished before it could be caught, $E2E_HOLD_DIR/missed says so.
#
# Only the first run is held: later ones (retries) find $E2E_HOLD_DIR/held and just run.

set -uo pipefail

real=${E2E_REAL_RECLAIMCTL:?}
dir=${E2E_HOLD_DIR:?}
if [[ -e $dir/held || -e $dir/missed ]]; then
        exec "$real" "$@"
fi

image=
prev=
for a in "$@"; do
        [[ $prev == --image ]] && image=$a
        prev=$a
done
[[ -n $image ]] || exec "$real" "$@"
ino=$(stat -L -c %i "$image") || exec "$real" "$@"

# The helper runs at the lowest CPU and I/O priority, this loop at normal priority and without
# sleeping: the helper takes the locks first thing, and the compaction itself takes a fraction
# of a second (about 150 ms for this test's disk), so on a busy machine the loop must win.
nice -n 19 ionice -c 3 "$real" "$@" &
pid=$!
held=0
while kill -0 "$pid" 2>/dev/null; do
        if grep -q "OFDLCK.*:$ino " /proc/locks; then
                kill -STOP "$pid"
                held=1
                break
        fi
done
if ((held)); then
        echo "$pid" >"$dir/held"
        for ((i = 0; i < 6000; i++)); do
                [[ -e $dir/resume ]] && break
                sleep 0.1
        done
        kill -CONT "$pid"
else
        touch "$dir/missed"
fi
rc=0
wait "$pid" || rc=$?
exit $rc
