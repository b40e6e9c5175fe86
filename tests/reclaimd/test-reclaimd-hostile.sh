#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A hostile guest on vm-102 (garbage, an oversized length, a flood of frames, a frame that
# never completes, again on every reconnect) must not take reclaimd down, nor make it grow,
# nor stop it from serving vm-101, whose Report still leads to a compaction.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

mkvm vm-101
mkvm vm-102
fake_start vm-102 hostile
fake_start vm-101 report
daemon_start

hostile_connected() { grep -q "# connection" "$T/fake-vm-102.log"; }
wait_for "the hostile guest got a connection" hostile_connected
wait_for "vm-101 shrank" shrunk vm-101
wait_for "the state records the compaction" state_compacted vm-101
check_image vm-101

# the error burst resets the channel; the reconnect gets the never-ending frame
reset_logged() { grep -q "vm-102: .*resetting the channel" "$T/reclaimd.log"; }
wait_for "vm-102's channel reset after its errors" reset_logged
second_connection() { grep -q "# connection 2" "$T/fake-vm-102.log"; }
wait_for "vm-102 reconnected with back-off" second_connection

# keep the hostile guest at it for a while (bounded polls), checking the daemon each time
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status"; }
for ((i = 0; i < 30; i++)); do
        kill -0 "$DAEMON_PID" || fail "reclaimd died"
        rss=$(rss_kib)
        ((rss < 64 * 1024)) || fail "reclaimd RSS is $rss KiB"
        sleep 0.1
done
log "reclaimd RSS: $(rss_kib) KiB"
cmp -s "$T/vm-102.orig" "$(img_of vm-102)" || fail "vm-102's image changed"
[[ "$(state_get vm-102 's["disks"][0]["pending"]')" == False ]] ||
        fail "the hostile guest made its disk pending"
daemon_stop
