#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Extended L2 entries (extended_l2=on: 32 subclusters per cluster), 64 KiB and 16 KiB clusters:
# host clusters whose allocated subclusters are all zeros, or that have no allocated
# subcluster left, are released; clusters with data in some subclusters stay; holes are
# filled; afterwards check is clean, the contents are identical and the file is minimal.
source "$(dirname "$0")/functions.sh"

# run CS: in clusters (sub = one subcluster):
#   0  data in the first 2 subclusters            (kept)
#   1  zeros written into the first 2 subclusters (released)
#   2  data, then write -z over its first 4 subclusters (kept: 28 data subclusters)
#   3  zeros written over the whole cluster       (released)
#   4  write -z over the whole cluster            (no host cluster)
#   5  data in subcluster 0, then write -z there  (a host cluster, no allocated subcluster: released)
#   6  data in 3 subclusters, zeros written into the middle one (kept)
#   7-9 data; 10-11 data, discarded; 12 data (after the holes: moves)
#   48 MiB: zeros in 2 subclusters (released; for 16 KiB clusters another L2 table, emptied)
run() {
        local cs=$1 img sub far=$((48 << 20))
        sub=$((cs / 32))
        img=$T/ext-$cs.qcow2
        mkimg "$img" 64M -o cluster_size="$cs",extended_l2=on
        qio "$img" "write -P 0x11 0 $((2 * sub))" \
                "write -P 0 $cs $((2 * sub))" \
                "write -P 0x22 $((2 * cs)) $cs" "write -z $((2 * cs)) $((4 * sub))" \
                "write -P 0 $((3 * cs)) $cs" \
                "write -z $((4 * cs)) $cs" \
                "write -P 0x33 $((5 * cs)) $sub" "write -z $((5 * cs)) $sub" \
                "write -P 0x44 $((6 * cs)) $((3 * sub))" "write -P 0 $((6 * cs + sub)) $sub" \
                "write -P 0x55 $((7 * cs)) $((5 * cs))" "discard $((10 * cs)) $((2 * cs))" \
                "write -P 0x66 $((12 * cs)) $cs" \
                "write -P 0 $far $((2 * sub))"
        oracle "$img" "$T/e.json"
        expect_eq "cs=$cs: extended L2" "$(jget "$T/e.json" extended_l2)" true
        # data: 0, 1, 2, 3, 5, 6, 7-9, 12, far
        expect_eq "cs=$cs: data clusters before" "$(jget "$T/e.json" data_clusters)" 11
        # 1, 3, far (all allocated subclusters zero); 5 has none allocated
        expect_eq "cs=$cs: all-zero clusters before" "$(jget "$T/e.json" zero_content_clusters)" 3
        expect_eq "cs=$cs: clusters without allocated subclusters before" \
                "$(jget "$T/e.json" zero_alloc_clusters)" 1
        # 2 + 2 + 28 + 32 + 3 + 4 * 32 + 2
        expect_eq "cs=$cs: allocated subclusters before" \
                "$(jget "$T/e.json" ext_alloc_subclusters)" 197
        compact_verify_views "$img" 7 1
        # 2 + 28 + 3 + 4 * 32
        expect_eq "cs=$cs: allocated subclusters after" \
                "$(jget "$T/after.json" ext_alloc_subclusters)" 161
        moved=$(jget "$T/out.json" clusters_moved)
        ((moved > 0)) || fail "cs=$cs: clusters after the holes must have been moved (clusters_moved=$moved)"
        qio "$img" "read -P 0x11 0 $((2 * sub))" "read -P 0 $((2 * sub)) $((cs - 2 * sub))" \
                "read -P 0 $cs $cs" \
                "read -P 0 $((2 * cs)) $((4 * sub))" "read -P 0x22 $((2 * cs + 4 * sub)) $((cs - 4 * sub))" \
                "read -P 0 $((3 * cs)) $((3 * cs))" \
                "read -P 0x44 $((6 * cs)) $sub" "read -P 0 $((6 * cs + sub)) $sub" \
                "read -P 0x44 $((6 * cs + 2 * sub)) $sub" \
                "read -P 0x55 $((7 * cs)) $((3 * cs))" "read -P 0 $((10 * cs)) $((2 * cs))" \
                "read -P 0x66 $((12 * cs)) $cs" "read -P 0 $far $cs"
        # QEMU can keep writing subclusters into it
        qio "$img" "write -P 0x77 $((sub * 5)) $sub" "write -P 0x78 $((20 * cs)) $sub"
        check_clean "$img"
}

run 65536
run 16384
