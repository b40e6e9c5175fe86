#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# v3 overlay on a backing file: all-zero clusters written in the overlay over non-zero backing
# data must become zero-flag entries (unallocating them would expose the backing data), the
# backing file is never touched, and the chain reads the same before and after.
source "$(dirname "$0")/functions.sh"

CS=65536

base=$T/base.qcow2
mkimg "$base" 32M -o cluster_size=$CS
qio "$base" "write -P 0xbb 0 24M"
cp "$base" "$T/base.orig"

img=$T/overlay.qcow2
mkimg "$img" 32M -o cluster_size=$CS -b "$base" -F qcow2
qio "$img" "write -P 0x01 0 $((16 * CS))" \
        "write -P 0 $((4 * CS)) $((6 * CS))" \
        "write -P 0x02 $((40 * CS)) $((4 * CS))" \
        "write -P 0 $((48 * CS)) $((2 * CS))" \
        "write -P 0 $((400 * CS)) $((2 * CS))" \
        "discard $((12 * CS)) $((2 * CS))" \
        "write -P 0x03 $((60 * CS)) $((3 * CS))"
# live: 16 - 6 zero - 2 discarded = 8, + 4 + 3 => 15
# real zero data: 6 + 2 (over backing data) + 2 (beyond the backing data, at 25 MiB) = 10
# zero flags before: the 2 discarded clusters
expect_eq "zero-flag entries before" "$(ora "$img" zero_flag_entries)" 2
compact_verify "$img" 15 1 10
expect_eq "zero-flag entries after" "$(jget "$T/after.json" zero_flag_entries)" 12
expect_eq "backing file after" "$(jget "$T/after.json" backing_file)" "$base"
check_identical "$T/base.orig" "$base"
# zeros written over backing data still read as zeros; untouched ranges still show the backing
qio "$img" "read -P 0 $((4 * CS)) $((6 * CS))" \
        "read -P 0 $((48 * CS)) $((2 * CS))" \
        "read -P 0 $((12 * CS)) $((2 * CS))" \
        "read -P 0 $((400 * CS)) $((2 * CS))" \
        "read -P 0x01 0 $((4 * CS))" \
        "read -P 0x02 $((40 * CS)) $((4 * CS))" \
        "read -P 0x03 $((60 * CS)) $((3 * CS))" \
        "read -P 0xbb $((16 * CS)) $((24 * CS))" \
        "read -P 0xbb $((100 * CS)) $((4 * CS))"

# the same against the backing chain with qemu-img compare: overlay vs a flattened copy
qemu-img convert -f qcow2 -O raw "$img.pristine" "$T/flat-before.raw"
qemu-img convert -f qcow2 -O raw "$img" "$T/flat-after.raw"
check_identical "$T/flat-before.raw" "$T/flat-after.raw"

# zero-alloc in an overlay: the host cluster is released, the zero flag stays
img=$T/overlay-za.qcow2
mkimg "$img" 32M -o cluster_size=$CS -b "$base" -F qcow2
qio "$img" "write -P 0x04 0 $((8 * CS))" "write -z $((2 * CS)) $((3 * CS))"
expect_eq "zero-alloc clusters before" "$(ora "$img" zero_alloc_clusters)" 3
compact_verify "$img" 5 1
expect_eq "zero-flag entries after" "$(jget "$T/after.json" zero_flag_entries)" 3
qio "$img" "read -P 0 $((2 * CS)) $((3 * CS))" "read -P 0x04 $((5 * CS)) $((3 * CS))"
check_identical "$T/base.orig" "$base"
