#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Images the way guests with discard/detect-zeroes leave them: zero-flag clusters
# (write -z), discarded clusters (holes with refcount 0 inside the file) and zero-alloc
# clusters (zero flag + a host cluster still referenced). Zero-alloc host clusters are
# released, holes are filled, the file ends up minimal.
source "$(dirname "$0")/functions.sh"

CS=65536

# zero flag on never-allocated clusters + discarded clusters (holes) + live data after them
img=$T/discard.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x5a 0 $((16 * CS))" \
        "write -z $((32 * CS)) $((4 * CS))" \
        "discard $((2 * CS)) $((6 * CS))" \
        "write -P 0x6b $((40 * CS)) $((4 * CS))"
expect_eq "zero-plain entries before" "$(ora "$img" zero_plain_entries)" 10
expect_eq "data clusters before" "$(ora "$img" data_clusters)" 14
# 16 - 6 discarded + 4 later = 14 live clusters, none of them zero
compact_verify "$img" 14 1
moved=$(jget "$T/out.json" clusters_moved)
((moved > 0)) || fail "discard: clusters after the holes must have been moved (clusters_moved=$moved)"
qio "$img" "read -P 0 $((2 * CS)) $((6 * CS))" "read -P 0 $((32 * CS)) $((4 * CS))" \
        "read -P 0x5a $((8 * CS)) $((8 * CS))" "read -P 0x6b $((40 * CS)) $((4 * CS))"

# zero-alloc: write -z over allocated clusters without unmap keeps the host clusters (v3)
img=$T/zeroalloc.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x7c 0 $((12 * CS))" "write -z $((2 * CS)) $((5 * CS))"
expect_eq "zero-alloc clusters before" "$(ora "$img" zero_alloc_clusters)" 5
expect_eq "data clusters before" "$(ora "$img" data_clusters)" 12
compact_verify "$img" 7 1
expect_eq "zero flag / unallocated entries read as zero" "$(jget "$T/after.json" normal_clusters)" 7
qio "$img" "read -P 0x7c 0 $((2 * CS))" "read -P 0 $((2 * CS)) $((5 * CS))" \
        "read -P 0x7c $((7 * CS)) $((5 * CS))"

# the three mixed with real zero data, 4 KiB clusters
img=$T/mixed.qcow2
mkimg "$img" 256M -o cluster_size=4096
qio "$img" "write -P 0x11 0 1M" \
        "write -P 0 1M 512k" \
        "write -z 256k 128k" \
        "discard 512k 128k" \
        "write -z -u 768k 64k" \
        "write -P 0x22 2M 256k" \
        "write -P 0 64M 64k"
# live: 1M - 128k(write -z) - 128k(discard) - 64k(write -z -u) = 704k -> 176 clusters
#       + 256k at 2M -> 64 clusters => 240; zeros: 512k + 64k real zero data (144 clusters)
expect_eq "zero-alloc clusters before" "$(ora "$img" zero_alloc_clusters)" 32
compact_verify "$img" 240 2
