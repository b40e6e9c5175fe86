#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# (b) Another writer eats space during the fill: the fill notices, stops and releases its
# file, and free space never drops below the reserve by more than one chunk. The driver
# samples statvfs every millisecond in a second thread for the whole run. On btrfs, statfs
# shows new extents only after a transaction commit, so the watcher also subtracts the data
# space that in-flight writes hold (sysfs allocation counters; the path is found here, with
# blkid, independently of the code under test).
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"
requires dd

make_fs
reserve=$((48 * MiB))
chunk=$((4 * MiB))
eat_mib=64
free0=$(free_bytes)
log "free $(mib "$free0"), reserve $(mib $reserve), a writer will eat $eat_mib MiB"
[[ $((free0 - eat_mib * MiB)) -gt $((reserve + 16 * MiB)) ]] || fail "image too small for the test"

# The writer: 1 MiB direct writes, ~30 MiB/s, in the background.
(
        for ((i = 0; i < eat_mib; i++)); do
                dd if=/dev/zero of="$MNT/eater" bs=1M count=1 seek=$i conv=notrunc oflag=direct status=none
                sleep 0.03
        done
) &
writer=$!
BG_PIDS+=("$writer")

watch=(--watch-free=1000)
if [[ $FSTYPE == btrfs ]]; then
        requires blkid
        uuid=$(blkid -s UUID -o value "$LOOP")
        alloc=/sys/fs/btrfs/$uuid/allocation/data
        [[ -r $alloc/bytes_reserved ]] || skip "no $alloc/bytes_reserved (kernel too old)"
        watch+=(--watch-alloc "$alloc")
fi

zf zero "$MNT" --reserve 48M --rate 40M --chunk 4M "${watch[@]}"
wait "$writer" || fail "the writer failed"
BG_PIDS=()
expect_rc 0 "zero-fill"
log "$(tr '\n' ' ' <"$T/out")"

outcome=$(get outcome)
zeroed=$(get bytes_zeroed)
minfree=$(get watch_min_free)
samples=$(get watch_samples)
[[ $outcome == stopped-at-reserve || $outcome == ok ]] || fail "outcome $outcome"
[[ $(get reserve) -eq $reserve ]] || fail "reserve $(get reserve), want $reserve"
[[ $samples -gt 100 ]] || fail "only $samples samples of free space"
log "lowest free space seen: $(mib "$minfree") (reserve $(mib $reserve), chunk $(mib $chunk))"
[[ $minfree -ge $((reserve - chunk)) ]] || fail "free space fell to $(mib "$minfree"), below reserve - chunk"
# The writer took its share while we filled: the fill cannot have written all it first saw.
[[ $zeroed -lt $((free0 - reserve - 16 * MiB)) ]] ||
        fail "zeroed $(mib "$zeroed"): the concurrent writer went unnoticed"
# Released: only the writer's file is left
left=()
for f in "$MNT"/* "$MNT"/.[!.]*; do
        [[ -e $f && ${f##*/} != lost+found ]] && left+=("${f##*/}")
done
[[ "${left[*]}" == eater ]] || fail "unexpected files: ${left[*]}"
sync -f "$MNT"
after=$(free_bytes)
[[ $after -ge $((free0 - eat_mib * MiB - 4 * MiB)) ]] ||
        fail "free space $(mib "$after") not back to $(mib $((free0 - eat_mib * MiB)))"
log "ok"
