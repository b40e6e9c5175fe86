#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Internal snapshots (qemu-img snapshot): clusters shared between the active layer and
# snapshots stay for the snapshots, clusters only the active layer reads as zeros go, holes
# left by overwrites and deleted snapshots are filled, and afterwards qemu-img check is clean,
# the active layer and every snapshot read exactly as before, the snapshot list (ids, names,
# vm sizes, dates) is unchanged, and the file is as small as the oracle says it can be.
source "$(dirname "$0")/functions.sh"

snapshot() {
        qemu-img snapshot -c "$2" "$1" || fail "qemu-img snapshot -c $2 $1"
}

# one snapshot, then half of the live clusters overwritten; zero clusters shared with the
# snapshot and zero clusters only the active layer has; CS VSIZE; in clusters:
#   0-15 data, 16-19 zeros, 20-23 data, 4-7 discarded, 2 clusters far away (another L2
#   table when one table covers less than the disk); snapshot; then 0-3 and 8-11 rewritten,
#   20-21 and the second far cluster overwritten with zeros (new clusters: copy on write)
one_snapshot() {
        local cs=$1 vsize=$2 img far l2=2
        img=$T/one-$cs.qcow2
        far=$(((vsize / cs - 8) * cs))
        mkimg "$img" "$vsize" -o cluster_size="$cs"
        qio "$img" "write -P 0x11 0 $((16 * cs))" "write -P 0 $((16 * cs)) $((4 * cs))" \
                "write -P 0x12 $((20 * cs)) $((4 * cs))" "write -P 0x13 $far $((2 * cs))" \
                "discard $((4 * cs)) $((4 * cs))"
        snapshot "$img" snap1
        qio "$img" "write -P 0x21 0 $((4 * cs))" "write -P 0x22 $((8 * cs)) $((4 * cs))" \
                "write -P 0 $((20 * cs)) $((2 * cs))" "write -P 0 $((far + cs)) $cs"
        # the snapshot: 16 data + 4 zeros + 2 far; the active layer adds 8 data + 3 zeros
        expect_eq "cs=$cs: data clusters before" "$(ora "$img" data_clusters)" 33
        expect_eq "cs=$cs: shared clusters before" "$(ora "$img" shared_data_clusters)" 11
        expect_eq "cs=$cs: all-zero host clusters before" \
                "$(ora "$img" zero_content_host_clusters)" 7
        # each table the active layer wrote to after the snapshot was copied
        if (((cs / 8) * cs < vsize)); then
                l2=4
        fi
        compact_verify_views "$img" 26 $l2
        expect_eq "cs=$cs: snapshots after" "$(jget "$T/after.json" nb_snapshots)" 1
        qio "$img" "read -P 0x21 0 $((4 * cs))" "read -P 0 $((4 * cs)) $((4 * cs))" \
                "read -P 0x22 $((8 * cs)) $((4 * cs))" "read -P 0x11 $((12 * cs)) $((4 * cs))" \
                "read -P 0 $((16 * cs)) $((6 * cs))" "read -P 0x12 $((22 * cs)) $((2 * cs))" \
                "read -P 0x13 $far $cs" "read -P 0 $((far + cs)) $cs"
}

one_snapshot 65536 $((64 << 20))
one_snapshot 512 $((4 << 20))
one_snapshot 2097152 $((128 << 20))

# several snapshots, the middle one deleted after the others were taken (its own clusters,
# L1 and L2 tables become holes); 64 KiB clusters:
#   0-7 0x11, s1; 0-3 0x22, s2; 0-1 + 4-5 0x33, s3; 2-3 0x44 and zeros over 6-7; delete s2
CS=65536
img=$T/several.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x11 0 $((8 * CS))"
snapshot "$img" s1
qio "$img" "write -P 0x22 0 $((4 * CS))"
snapshot "$img" s2
qio "$img" "write -P 0x33 0 $((2 * CS))" "write -P 0x33 $((4 * CS)) $((2 * CS))"
snapshot "$img" s3
qio "$img" "write -P 0x44 $((2 * CS)) $((2 * CS))" "write -P 0 $((6 * CS)) $((2 * CS))"
qemu-img snapshot -d s2 "$img" || fail "qemu-img snapshot -d s2"
expect_eq "snapshots before" "$(ora "$img" nb_snapshots)" 2
# s1: 8 (0x11); s3: 0x22 at 2-3, 0x33 at 0,1,4,5; active: 0x44 at 2-3 and 2 zero clusters
# (0x22 at 0-1 was s2's alone: freed by the deletion)
expect_eq "data clusters before" "$(ora "$img" data_clusters)" 18
(($(ora "$img" file_clusters) > $(ora "$img" min_clusters))) ||
        fail "test setup: deleting s2 must leave holes"
# L2 tables: s1's, s3's and the active layer's
compact_verify_views "$img" 16 3
moved=$(jget "$T/out.json" clusters_moved)
((moved > 0)) || fail "several: clusters after the holes must have been moved (clusters_moved=$moved)"
qio "$img" "read -P 0x33 0 $((2 * CS))" "read -P 0x44 $((2 * CS)) $((2 * CS))" \
        "read -P 0x33 $((4 * CS)) $((2 * CS))" "read -P 0 $((6 * CS)) $((2 * CS))"
# the snapshots can still be applied, and read what they held
qemu-img snapshot -a s1 "$img" || fail "qemu-img snapshot -a s1 after compaction"
check_clean "$img"
qio "$img" "read -P 0x11 0 $((8 * CS))"
qemu-img snapshot -a s3 "$img" || fail "qemu-img snapshot -a s3 after compaction"
check_clean "$img"
qio "$img" "read -P 0x33 0 $((2 * CS))" "read -P 0x22 $((2 * CS)) $((2 * CS))" \
        "read -P 0x33 $((4 * CS)) $((2 * CS))" "read -P 0x11 $((6 * CS)) $((2 * CS))"

# zeros after a snapshot: the snapshot's clusters stay, what only the active layer holds goes.
#   0-7 0x31, 8-9 0x32 in a second L2 table (cluster 8192), snapshot; then zeros written over
#   0-3 (new clusters), write -z over 4-5 (zero flag, host cluster kept by QEMU), 6-7
#   discarded, and the second table's clusters overwritten with zeros
img=$T/zeros.qcow2
mkimg "$img" 1G -o cluster_size=$CS
qio "$img" "write -P 0x31 0 $((8 * CS))" "write -P 0x32 $((8192 * CS)) $((2 * CS))"
snapshot "$img" before-zeros
qio "$img" "write -P 0 0 $((4 * CS))" "write -z $((4 * CS)) $((2 * CS))" \
        "discard $((6 * CS)) $((2 * CS))" "write -P 0 $((8192 * CS)) $((2 * CS))"
expect_eq "zeros: data clusters before" "$(ora "$img" data_clusters)" 16
expect_eq "zeros: all-zero host clusters before" "$(ora "$img" zero_content_host_clusters)" 6
# The snapshot's 10 clusters stay. write -z left zero-alloc entries pointing at two of them:
# a shared cluster is released everywhere or nowhere (DESIGN.md), so those two entries stay
# (they cost no space: the snapshot needs the clusters). L2 tables: the snapshot's 2 and the
# active copy of the first (it keeps those entries); the active copy of the second is emptied.
ZERO_ALLOC_LEFT=2 compact_verify_views "$img" 10 3
expect_eq "zeros: shared clusters after" "$(jget "$T/after.json" shared_data_clusters)" 2
expect_eq "zeros: active layer clusters after" "$(jget "$T/after.json" active_data_clusters)" 2
qio "$img" "read -P 0 0 $((8 * CS))" "read -P 0 $((8192 * CS)) $((2 * CS))"
cp "$img" "$T/zeros-applied.qcow2"
qemu-img snapshot -a before-zeros "$T/zeros-applied.qcow2" || fail "qemu-img snapshot -a before-zeros"
check_clean "$T/zeros-applied.qcow2"
qio "$T/zeros-applied.qcow2" "read -P 0x31 0 $((8 * CS))" "read -P 0x32 $((8192 * CS)) $((2 * CS))"
# once the snapshot is gone nothing is left that reads data: a second run releases it all
qemu-img snapshot -d before-zeros "$img" || fail "qemu-img snapshot -d before-zeros"
compact_verify_views "$img" 0 0
qio "$img" "read -P 0 0 $((8 * CS))" "read -P 0 $((8192 * CS)) $((2 * CS))"
