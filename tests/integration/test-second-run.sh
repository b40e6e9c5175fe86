#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Compaction is idempotent: a second run finds nothing to do and writes nothing. A freshly
# created image is already as small as it gets and is left alone as well.
source "$(dirname "$0")/functions.sh"

CS=65536

img=$T/twice.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0 0 $((6 * CS))" "write -P 0xc1 $((6 * CS)) $((6 * CS))" \
        "discard $((8 * CS)) $CS" "write -P 0xc2 $((30 * CS)) $((2 * CS))"
compact_verify "$img" 7 1 6
size1=$(file_size "$img")
cp "$img" "$T/after-first"

run_compact "$img"
expect_rc 0 "second compact"
check_compact_json "$img" "$size1" false
expect_eq "second run: file size" "$(file_size "$img")" "$size1"
expect_eq "second run: clusters_moved" "$(jget "$T/out.json" clusters_moved)" 0
expect_eq "second run: clusters_zeroed" "$(jget "$T/out.json" clusters_zeroed)" 0
expect_eq "second run: bytes_moved" "$(jget "$T/out.json" bytes_moved)" 0
check_identical "$T/after-first" "$img"
check_clean "$img"

# a fresh, empty image: nothing to do, nothing written
img=$T/fresh.qcow2
mkimg "$img" 1G
cp "$img" "$T/fresh.orig"
run_compact "$img"
expect_rc 0 "compact of a fresh image"
check_compact_json "$img" "$(file_size "$T/fresh.orig")" false
expect_eq "fresh image: clusters_moved" "$(jget "$T/out.json" clusters_moved)" 0
check_identical "$T/fresh.orig" "$img"
check_clean "$img"

# a dense image with only live data: nothing to move either
img=$T/dense.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0xc3 0 1M"
cp "$img" "$T/dense.orig"
run_compact "$img"
expect_rc 0 "compact of a dense image"
expect_eq "dense image: clusters_moved" "$(jget "$T/out.json" clusters_moved)" 0
expect_eq "dense image: clusters_zeroed" "$(jget "$T/out.json" clusters_zeroed)" 0
check_identical "$T/dense.orig" "$img"
check_clean "$img"
