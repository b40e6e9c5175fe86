#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# All-zero data clusters (real zero bytes, as a guest's zero-fill leaves them) are dropped
# and the file shrinks to the minimum: interleaved, at the tail, at the head, all zero, and
# clusters that are only almost zero (must be kept).
source "$(dirname "$0")/functions.sh"

CS=65536

# interleaved: 16 clusters, even ones live, odd ones zero
img=$T/interleaved.qcow2
mkimg "$img" 64M -o cluster_size=$CS
cmds=()
for i in $(seq 0 15); do
        if ((i % 2 == 0)); then
                cmds+=("write -P 0xab $((i * CS)) $CS")
        else
                cmds+=("write -P 0 $((i * CS)) $CS")
        fi
done
qio "$img" "${cmds[@]}"
expect_eq "oracle zero-content clusters before" "$(ora "$img" zero_content_clusters)" 8
compact_verify "$img" 8 1 8
qio "$img" "read -P 0xab 0 $CS" "read -P 0 $CS $CS" "read -P 0xab $((14 * CS)) $CS" "read -P 0 $((15 * CS)) $CS"

# zeros at the tail: 8 live clusters, then 8 zero clusters
img=$T/tail.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x11 0 $((8 * CS))" "write -P 0 $((8 * CS)) $((8 * CS))"
compact_verify "$img" 8 1 8

# zeros at the head: 8 zero clusters, then 8 live clusters; live data must move forward
img=$T/head.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0 0 $((8 * CS))" "write -P 0x22 $((8 * CS)) $((8 * CS))"
compact_verify "$img" 8 1 8
moved=$(jget "$T/out.json" clusters_moved)
((moved > 0)) || fail "head: live clusters behind the zero run must have been moved (clusters_moved=$moved)"
qio "$img" "read -P 0x22 $((8 * CS)) $((8 * CS))" "read -P 0 0 $((8 * CS))"

# zeros far apart in guest space, in a second L2 table: the L2 table left empty is freed
img=$T/twol2.qcow2
mkimg "$img" 1G -o cluster_size=4096
# 4 KiB clusters: one L2 table covers 2 MiB of guest space
qio "$img" "write -P 0x33 0 64k" "write -P 0 100M 64k" "write -P 0 64k 64k"
compact_verify "$img" 16 1 32

# everything zero: no data clusters and no L2 table left
img=$T/allzero.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0 0 1M" "write -P 0 32M 256k"
compact_verify "$img" 0 0 20

# almost-zero clusters must stay: a single non-zero byte at the start, the middle, the end
img=$T/almost.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0 0 $((6 * CS))" \
        "write -P 0x01 0 1" \
        "write -P 0x02 $((CS + CS / 2)) 1" \
        "write -P 0x03 $((3 * CS - 1)) 1" \
        "write -P 0x04 $((5 * CS - 512)) 512"
# clusters 0, 1, 2, 4 hold one non-zero byte (or sector); 3 and 5 are zero
compact_verify "$img" 4 1 2
qio "$img" "read -P 0x01 0 1" "read -P 0 1 $((CS - 1))" "read -P 0x03 $((3 * CS - 1)) 1" \
        "read -P 0x04 $((5 * CS - 512)) 512"
