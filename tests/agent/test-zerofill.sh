#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# (a) Zero-fill really overwrites the freed blocks: dirty the free space with random files,
# delete them, fill, unmount, and check the device: no 4 KiB block of the deleted files
# survives anywhere, and (ext4, xfs: physical = device offsets) their old extents read as
# zeros. btrfs is mounted with compress-force, so this also proves the fill file is exempt
# from compression (zeros would otherwise compress to nothing and overwrite nothing).
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

opts=
[[ $FSTYPE == btrfs ]] && opts=compress-force=zstd
[[ $FSTYPE != btrfs ]] && requires filefrag
make_fs "$opts"

head -c $((48 * MiB)) /dev/urandom >"$MNT/dirty1"
head -c $((24 * MiB)) /dev/urandom >"$MNT/dirty2"
sync -f "$MNT"
if [[ $FSTYPE != btrfs ]]; then
        filefrag -v "$MNT/dirty1" "$MNT/dirty2" >"$T/extents" || fail "filefrag"
fi
nblocks=$(python3 "$BLOCKSCAN" hash "$T/hashes" "$MNT/dirty1" "$MNT/dirty2")
rm -f "$MNT/dirty1" "$MNT/dirty2"
sync -f "$MNT"

# Sanity of the test itself: the deleted data is still on the device before the fill.
before=$(python3 "$BLOCKSCAN" scan "$LOOP" "$T/hashes")
log "deleted $nblocks random blocks; $before still on the device before the fill"
[[ $before -gt $((nblocks / 2)) ]] || fail "the deleted data is already gone ($before of $nblocks): the test proves nothing"

free0=$(free_bytes)
extra=()
[[ $FSTYPE == btrfs ]] && extra+=(--nocompress)
zf zero "$MNT" --reserve 0 "${extra[@]}"
expect_rc 0 "zero-fill"
log "$(tr '\n' ' ' <"$T/out")"
[[ $(get outcome) == ok ]] || fail "outcome $(get outcome), want ok"
[[ $(get tmpfile) == 1 ]] || fail "no O_TMPFILE on $FSTYPE"
zeroed=$(get bytes_zeroed)
# Everything an unprivileged user could write, but for the last partial block and metadata
[[ $zeroed -ge $((free0 - 8 * MiB)) ]] || fail "zeroed only $(mib "$zeroed") of $(mib "$free0") free"
[[ $(get free_after) -ge $((free0 - 2 * MiB)) ]] || fail "free space not given back: $(get free_after) < $free0"
[[ -z "$(ls -A "$MNT")" || $FSTYPE == ext4 && "$(ls -A "$MNT")" == lost+found ]] ||
        fail "files left in $MNT: $(ls -A "$MNT")"

umount "$MNT"

left=$(python3 "$BLOCKSCAN" scan "$LOOP" "$T/hashes")
log "$left of the deleted blocks survive after the fill"
[[ $left -eq 0 ]] || fail "$left blocks of deleted data survived the zero-fill"

if [[ $FSTYPE != btrfs ]]; then
        read -r zero total < <(python3 "$BLOCKSCAN" extents "$LOOP" "$T/extents")
        log "old extents: $zero of $total blocks read as zeros"
        [[ $total -gt 0 ]] || fail "no extents parsed from filefrag"
        # a few blocks may have been reused for the fill file's own metadata
        [[ $((zero * 1000)) -ge $((total * 995)) ]] || fail "only $zero of $total old blocks are zero"
fi
log "ok"
