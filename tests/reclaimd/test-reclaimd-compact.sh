#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The whole story on one VM (and on a second one whose channel is found in socket_dir): the guest (fake-qemu) says Hello, gets HelloAck, reports freed
# space and the VM stops (the channel hangs up); reclaimd compacts the image in place. The
# image must pass qemu-img check, keep its guest data, and the state file must record it.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

mkvm vm-101
# vm-102 names no channel: reclaimd uses socket_dir/vm-102.sock
mkvm vm-102
sed -i '/^channel/d' "$T/root/etc/reclaim/vms.d/vm-102.conf"
conf "socket_dir = $T/root/run"
fake_start vm-101 report
fake_start vm-102 report
daemon_start

wait_for "vm-101 shrank" shrunk vm-101
wait_for "the state records the compaction" state_compacted vm-101
check_image vm-101
grep -q "# hello_ack" "$T/fake-vm-101.log" || fail "fake-qemu saw no HelloAck"
gain=$(state_get vm-101 's["disks"][0]["last_compaction_gain"]')
((gain > 0)) || fail "recorded gain is $gain"
[[ "$(state_get vm-101 's["last_report"]["bytes"]')" -eq $((64 << 20)) ]] ||
        fail "last report figures not recorded"
grep -q "compacted" "$T/reclaimd.log" || fail "no compaction logged"

wait_for "vm-102 (channel in socket_dir) shrank" shrunk vm-102
check_image vm-102

daemon_stop
log "vm-101: $(file_size "$T/vm-101.orig") -> $(file_size "$(img_of vm-101)") bytes"
