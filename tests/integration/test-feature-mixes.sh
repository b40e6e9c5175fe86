#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Features together: snapshots + compressed clusters (streams shared between L1 trees, holes
# left by a deleted snapshot), snapshots + persistent bitmaps, and a clean lazy_refcounts=on
# image (compacts like any other and keeps the feature bit). Each time: check clean, contents
# (active layer and every snapshot) identical, snapshot list and bitmaps unchanged, minimal file.
source "$(dirname "$0")/functions.sh"

snapshot() {
        qemu-img snapshot "$@" || fail "qemu-img snapshot $*"
}

CS=65536

# ---- snapshots + compressed clusters, 64 KiB clusters:
#   source 0-7 patterned, 8-11 zeros, 12-19 half random / half pattern (streams spanning two
#   host clusters), 20-23 patterned; convert -c -S 0; snapshot s1; then 0-1 rewritten, 20
#   overwritten with zeros, 12-15 discarded, 30 written compressed; snapshot s2; s1 deleted
#   (the streams only s1 still had become holes)
python3 - "$T/src.raw" $CS <<'EOF' || fail "cannot write the source"
import os, sys
path, cs = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    for i in range(24):
        if 8 <= i <= 11:
            f.write(bytes(cs))
        elif 12 <= i <= 19:
            f.write(os.urandom(cs // 2) + bytes([0x60 + i]) * (cs - cs // 2))
        else:
            f.write(bytes([0x40 + i, 0x20]) * (cs // 2))
EOF
img=$T/snap-compressed.qcow2
qemu-img convert -c -S 0 -f raw -O qcow2 -o cluster_size=$CS "$T/src.raw" "$img" ||
        fail "qemu-img convert -c"
qemu-img resize -q -f qcow2 "$img" 16M || fail "qemu-img resize"
expect_eq "snap+compressed: compressed entries after convert" "$(ora "$img" compressed_entries)" 24
snapshot -c s1 "$img"
qio "$img" "write -P 0x77 0 $((2 * CS))" "write -P 0 $((20 * CS)) $CS" \
        "discard $((12 * CS)) $((4 * CS))" "write -c -P 0x55 $((30 * CS)) $CS"
snapshot -c s2 "$img"
snapshot -d s1 "$img"
oracle "$img" "$T/m.json"
# active (= s2, one shared L2 table): compressed 2-11, 16-19, 21-23, 30; all-zero: 8-11;
# normal: 0-1 and 20 (zeros)
expect_eq "snap+compressed: compressed entries" "$(jget "$T/m.json" compressed_entries)" 18
expect_eq "snap+compressed: compressed all-zero clusters" \
        "$(jget "$T/m.json" compressed_zero_entries)" 4
expect_eq "snap+compressed: data clusters" "$(jget "$T/m.json" data_clusters)" 3
(($(jget "$T/m.json" file_clusters) > $(jget "$T/m.json" min_clusters))) ||
        fail "test setup: deleting s1 must leave holes"
run_inspect "$img"
expect_rc 0 "inspect $img"
expect_eq "snap+compressed: inspect snapshots" "$(jget "$T/inspect.json" snapshots)" 1
expect_eq "snap+compressed: inspect compressed_clusters" \
        "$(jget "$T/inspect.json" compressed_clusters)" 18
MIN_KEY=min_clusters_packed compact_verify_views "$img" 2 1
expect_eq "snap+compressed: compressed entries after" "$(jget "$T/after.json" compressed_entries)" 14
qio "$img" "read -P 0x77 0 $((2 * CS))" "read -P 0 $((8 * CS)) $((8 * CS))" \
        "read -P 0 $((20 * CS)) $CS" "read -P 0x55 $((30 * CS)) $CS"
qemu-img convert -f qcow2 -O raw "$img" "$T/after.raw" || fail "convert to raw"
cmp -s -i $((16 * CS)) -n $((4 * CS)) "$T/src.raw" "$T/after.raw" ||
        fail "snap+compressed: clusters 16-19 differ from the source"
log "snap+compressed: min_clusters $(jget "$T/after.json" min_clusters), min_clusters_whole $(jget "$T/after.json" min_clusters_whole), min_clusters_packed $(jget "$T/after.json" min_clusters_packed)"

# ---- snapshots + bitmaps, 4 KiB clusters (one L2 table maps 2 MiB):
#   bm0 and bm1 (512 B granularity); 0-512k data, 512k-768k zeros; snapshot s1; 0-128k
#   rewritten, 128k-256k overwritten with zeros (new clusters), 256k-384k discarded, 8M data
img=$T/snap-bitmaps.qcow2
mkimg "$img" 64M -o cluster_size=4096
qemu-img bitmap --add "$img" bm0 || fail "qemu-img bitmap --add bm0"
qemu-img bitmap --add -g 512 "$img" bm1 || fail "qemu-img bitmap --add bm1"
qio "$img" "write -P 0x11 0 512k" "write -P 0 512k 256k"
snapshot -c s1 "$img"
qio "$img" "write -P 0x22 0 128k" "write -P 0 128k 128k" "discard 256k 128k" \
        "write -P 0x33 8M 64k"
oracle "$img" "$T/m.json"
expect_eq "snap+bitmaps: bitmaps" "$(jget "$T/m.json" nb_bitmaps)" 2
(($(jget "$T/m.json" bitmap_data_clusters) > 0)) || fail "test setup: no bitmap data clusters"
# s1: 128 data + 64 zeros; active: 32 + 32 zeros (new) + 16
expect_eq "snap+bitmaps: data clusters before" "$(jget "$T/m.json" data_clusters)" 272
bitmap_bits "$img" >"$T/bits.before"
# the zeros go (shared ones from both trees), the rest stays; L2: s1's, the active copy, 8M
compact_verify_views "$img" 176 3
bitmap_bits "$img" >"$T/bits.after"
cmp -s "$T/bits.before" "$T/bits.after" || fail "snap+bitmaps: QEMU reads other bits"
qio "$img" "read -P 0x22 0 128k" "read -P 0 128k 128k" "read -P 0x11 384k 128k" \
        "read -P 0 512k 256k" "read -P 0x33 8M 64k"
# QEMU applies no snapshot while the image has enabled bitmaps: apply it to a copy without them
cp "$img" "$T/applied.qcow2"
qemu-img bitmap --remove "$T/applied.qcow2" bm0 || fail "qemu-img bitmap --remove bm0"
qemu-img bitmap --remove "$T/applied.qcow2" bm1 || fail "qemu-img bitmap --remove bm1"
snapshot -a s1 "$T/applied.qcow2"
check_clean "$T/applied.qcow2"
qio "$T/applied.qcow2" "read -P 0x11 0 512k" "read -P 0 512k 256k"

# ---- lazy_refcounts=on, closed cleanly (dirty bit clear): compacts like any other image
img=$T/lazy.qcow2
mkimg "$img" 64M -o cluster_size=$CS,lazy_refcounts=on
qio "$img" "write -P 0x41 0 $((16 * CS))" "write -P 0 $((4 * CS)) $((4 * CS))" \
        "discard $((10 * CS)) $((2 * CS))" "write -P 0x42 $((20 * CS)) $((4 * CS))"
expect_eq "lazy: compatible features" "$(ora "$img" compatible_features)" 1
expect_eq "lazy: incompatible features (not dirty)" "$(ora "$img" incompatible_features)" 0
# 16 - 4 zeros - 2 discarded + 4
compact_verify_views "$img" 14 1
expect_eq "lazy: compatible features after" "$(jget "$T/after.json" compatible_features)" 1
expect_eq "lazy: incompatible features after" "$(jget "$T/after.json" incompatible_features)" 0
moved=$(jget "$T/out.json" clusters_moved)
((moved > 0)) || fail "lazy: clusters after the holes must have been moved (clusters_moved=$moved)"
qio "$img" "read -P 0x41 0 $((4 * CS))" "read -P 0 $((4 * CS)) $((4 * CS))" \
        "read -P 0x41 $((8 * CS)) $((2 * CS))" "read -P 0 $((10 * CS)) $((2 * CS))" \
        "read -P 0x41 $((12 * CS)) $((4 * CS))" "read -P 0x42 $((20 * CS)) $((4 * CS))" \
        "write -P 0x43 $((30 * CS)) $CS"
check_clean "$img"
