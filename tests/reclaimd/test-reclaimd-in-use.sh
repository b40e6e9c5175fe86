#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The channel hangs up after a Report while QEMU (here qemu-io) still holds the image: the
# image must not be touched while held (its lock probe says "in use" on every retry), and is
# compacted once the holder exits.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

mkvm vm-101
img=$(img_of vm-101)

# the "running VM": qemu-io with its stdin on a fifo we hold open
mkfifo "$T/holder.fifo"
qemu-io -f qcow2 "$img" <"$T/holder.fifo" >"$T/holder.log" 2>&1 &
HOLDER=$!
BG_PIDS+=("$HOLDER")
exec 7>"$T/holder.fifo"
held() { [[ -n "$(python3 - "$img" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
for b in (100, 101, 200, 201):
    lk = struct.pack("hhqqi", fcntl.F_WRLCK, 0, b, 1, 0)
    r = fcntl.fcntl(fd, 36, lk)  # F_OFD_GETLK
    if struct.unpack("hhqqi", r)[0] != fcntl.F_UNLCK:
        print("held"); break
PY
)" ]]; }
wait_for "qemu-io holds the image" held

# this guest also stays silent until reclaimd pings it (an agent that missed the connect)
fake_start vm-101 report --wait-ping
daemon_start

in_use_count() { grep -c "still in use" "$T/reclaimd.log" || true; }
three_retries() { (($(in_use_count) >= 3)); }
wait_for "three in-use retries" three_retries
cmp -s "$T/vm-101.orig" "$img" || fail "the image changed while QEMU held it"
grep -q "^# ping" "$T/fake-vm-101.log" || fail "reclaimd did not ping the silent guest"
[[ "$(state_get vm-101 's["disks"][0]["pending"]')" == True ]] || fail "disk not pending"

# the VM stops
exec 7>&-
wait "$HOLDER" || true
BG_PIDS=()

wait_for "vm-101 shrank after the holder left" shrunk vm-101
wait_for "the state records the compaction" state_compacted vm-101
check_image vm-101
daemon_stop
