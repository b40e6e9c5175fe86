#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# qcow2 v2 (compat=0.10): no zero flag. Without a backing file all-zero clusters become
# unallocated; with a backing file they must stay allocated (only holes are filled).
source "$(dirname "$0")/functions.sh"

CS=65536

# v2, no backing file
img=$T/v2.qcow2
mkimg "$img" 64M -o compat=0.10,cluster_size=$CS
qio "$img" "write -P 0xa1 0 $((10 * CS))" \
        "write -P 0 $((2 * CS)) $((3 * CS))" \
        "discard $((6 * CS)) $((2 * CS))" \
        "write -P 0xb2 $((20 * CS)) $((3 * CS))" \
        "write -P 0 $((30 * CS)) $((2 * CS))"
expect_eq "version" "$(ora "$img" version)" 2
# live: 10 - 3 zero - 2 discarded = 5, + 3 => 8; zero data: 3 + 2 = 5
compact_verify "$img" 8 1 5
expect_eq "v2 must not get zero flags" "$(jget "$T/after.json" zero_flag_entries)" 0
expect_eq "version after" "$(jget "$T/after.json" version)" 2

# v2 overlay on a v2 backing file of the same size
base=$T/base-v2.qcow2
mkimg "$base" 16M -o compat=0.10,cluster_size=$CS
qio "$base" "write -P 0xee 0 16M"
cp "$base" "$T/base.orig"
img=$T/overlay-v2.qcow2
mkimg "$img" 16M -o compat=0.10,cluster_size=$CS -b "$base" -F qcow2
qio "$img" "write -P 0x33 0 $((8 * CS))" \
        "write -P 0 $((8 * CS)) $((4 * CS))" \
        "write -P 0x44 $((12 * CS)) $((8 * CS))"
# QEMU does not discard in a v2 image with a backing file (it would expose backing data), so
# make the holes with the backing file detached for a moment (unsafe rebase = header only).
qemu-img rebase -u -b "" "$img"
qio "$img" "discard $((2 * CS)) $((3 * CS))" "discard $((14 * CS)) $((2 * CS))"
qemu-img rebase -u -b "$base" -F qcow2 "$img"
expect_eq "backing file" "$(ora "$img" backing_file)" "$base"
expect_eq "data clusters before" "$(ora "$img" data_clusters)" 15
((sz = $(ora "$img" file_size), sz > $(ora "$img" min_size))) || fail "overlay-v2 has no holes to fill"
# allocated: 8 + 4 zero + 8 - 3 - 2 = 15; zero clusters over backing data must stay (no zero flag)
compact_verify "$img" 15 1
expect_eq "v2 must not get zero flags" "$(jget "$T/after.json" zero_flag_entries)" 0
expect_eq "clusters_zeroed (v2 with backing keeps zero clusters)" "$(jget "$T/out.json" clusters_zeroed)" 0
qio "$img" "read -P 0 $((8 * CS)) $((4 * CS))" "read -P 0xee $((2 * CS)) $((3 * CS))" \
        "read -P 0x44 $((16 * CS)) $((4 * CS))" "read -P 0xee 2M 14M"
check_identical "$T/base.orig" "$base"
