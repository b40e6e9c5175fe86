#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Persistent dirty bitmaps (qemu-img bitmap): the bitmap directory, the bitmap tables and the
# bitmap data clusters move like everything else; afterwards qemu-img check is clean, the
# contents are identical, the file is as small as the oracle says it can be, QEMU sees the
# same bitmaps (names, granularity, flags) with the same bits, and can keep using them.
# A bitmap marked in use (QEMU did not close the image cleanly) is refused: exit 4, the file
# byte-identical.
source "$(dirname "$0")/functions.sh"

bitmap() {
        qemu-img bitmap "$@" || fail "qemu-img bitmap $*"
}

# bits set by guest writes, 4 KiB clusters, 64 MiB:
#   bm0 (default granularity), bm1 (512 B granularity: 16 MiB of guest per bitmap data
#   cluster, so 3 data clusters), bm2 added disabled (stays empty); then data at 0-1M,
#   zeros at 1M-1.5M, 256k-512k discarded, then data at 20M and 40M
CS=4096
img=$T/dirty.qcow2
mkimg "$img" 64M -o cluster_size=$CS
bitmap --add "$img" bm0
bitmap --add -g 512 "$img" bm1
bitmap --add "$img" bm2
bitmap --disable "$img" bm2
# (QEMU stores the bitmaps when it closes the image, in the first free clusters: the discard
# comes in a session of its own, whose holes the next one fills)
qio "$img" "write -P 0x11 0 1M" "write -P 0 1M 512k" "discard 256k 256k"
qio "$img" "write -P 0x12 20M 256k" "write -P 0x13 40M 64k"
oracle "$img" "$T/b.json"
expect_eq "bitmaps" "$(jget "$T/b.json" nb_bitmaps)" 3
expect_eq "bitmaps consistent" "$(jget "$T/b.json" bitmaps_consistent)" true
expect_eq "bitmap data clusters before" "$(jget "$T/b.json" bitmap_data_clusters)" 4
expect_eq "zero data clusters before" "$(jget "$T/b.json" zero_content_clusters)" 128
bitmap_bits "$img" >"$T/bits.before"
# QEMU wrote the bitmaps when it closed the image, at its end: they have to move
table_off=$(python3 "$ORACLE" bitmaps "$img" | python3 -c 'import json,sys; print(min(b["table_offset"] for b in json.load(sys.stdin)))')
# 256 - 64 discarded + 64 + 16
compact_verify_views "$img" 272
((table_off >= $(file_size "$img"))) || fail "test setup: the bitmap tables did not have to move"
expect_eq "bitmap data clusters after" "$(jget "$T/after.json" bitmap_data_clusters)" 4
bitmap_bits "$img" >"$T/bits.after"
cmp -s "$T/bits.before" "$T/bits.after" || fail "QEMU reads other bits out of the compacted bitmaps"
# QEMU keeps using them: bits for new writes land in the moved bitmap clusters
qio "$img" "write -P 0x14 60M 64k"
check_clean "$img"
bitmap_bits "$img" >"$T/bits.more"
cmp -s "$T/bits.after" "$T/bits.more" && fail "a write after compaction set no bit"
bitmap --remove "$img" bm1
check_clean "$img"
expect_eq "bitmaps after --remove" "$(ora "$img" nb_bitmaps)" 2

# empty bitmaps (added after the writes): a directory and tables without data clusters;
# 64 KiB clusters
CS=65536
img=$T/empty.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x21 0 $((16 * CS))" "write -P 0 $((4 * CS)) $((4 * CS))" \
        "discard $((10 * CS)) $((2 * CS))"
bitmap --add "$img" e0
bitmap --add -g 1M "$img" e1
expect_eq "empty: bitmaps" "$(ora "$img" nb_bitmaps)" 2
expect_eq "empty: bitmap data clusters" "$(ora "$img" bitmap_data_clusters)" 0
compact_verify_views "$img" 10
moved=$(jget "$T/out.json" clusters_moved)
((moved > 0)) || fail "empty: clusters after the holes must have been moved (clusters_moved=$moved)"
qio "$img" "write -P 0x22 $((40 * CS)) $CS"
check_clean "$img"

# a bitmap marked in use: refused, the file untouched
img=$T/inuse.qcow2
mkimg "$img" 64M -o cluster_size=$CS
bitmap --add "$img" u0
bitmap --add "$img" u1
qio "$img" "write -P 0 0 $((4 * CS))" "write -P 0x31 $((4 * CS)) $((8 * CS))" \
        "discard $((6 * CS)) $CS"
oracle_cmd set-bitmap-flags "$img" 1 3 # in_use | auto
[[ $(python3 "$ORACLE" bitmaps "$img") == *'"flags": 3'* ]] || fail "test setup: in_use flag not set"
cp "$img" "$T/inuse.orig"
for args in "" "--force" "--dry-run"; do
        # shellcheck disable=SC2086
        run_compact "$img" $args
        expect_rc 4 "bitmap in use: compact $args"
        check_identical "$T/inuse.orig" "$img"
done
[[ -s "$T/err" ]] || fail "bitmap in use: refused without saying why (empty stderr)"
log "bitmap in use: refused: $(head -c 300 "$T/err" | tr '\n' ' ')"

# bitmaps QEMU no longer trusts (autoclear bit 0 cleared: "a program lacking bitmap support
# modified this file"): QEMU ignores them, their clusters are leaks and are released
img=$T/stale.qcow2
mkimg "$img" 64M -o cluster_size=$CS
bitmap --add "$img" s0
qio "$img" "write -P 0x41 0 $((16 * CS))" "write -P 0 $((16 * CS)) $((16 * CS))"
python3 -c '
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(88)
    f.write(struct.pack(">Q", 0))
' "$img" || fail "cannot clear the autoclear bits"
expect_eq "stale: bitmaps consistent" "$(ora "$img" bitmaps_consistent)" false
check_exit 3 "$img"
compact_verify "$img" 16 1
