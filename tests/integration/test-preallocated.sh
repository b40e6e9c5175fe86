#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# An image that looks preallocated is left alone (exit 0, byte-identical) unless --force;
# forced, it is compacted like any other image.
source "$(dirname "$0")/functions.sh"

for mode in metadata falloc full; do
        img=$T/prealloc-$mode.qcow2
        mkimg "$img" 16M -o preallocation=$mode
        # guest data in a few clusters; the rest stays preallocated zeros
        qio "$img" "write -P 0x41 0 128k" "write -P 0x42 8M 64k"
        cp "$img" "$T/orig"
        before=$(file_size "$img")

        run_compact "$img"
        expect_rc 0 "$mode: compact without --force"
        check_identical "$T/orig" "$img"
        expect_eq "$mode: file_size_after (skipped)" "$(jget "$T/out.json" file_size_after)" "$before"
        expect_eq "$mode: clusters_moved (skipped)" "$(jget "$T/out.json" clusters_moved)" 0
        expect_eq "$mode: clusters_zeroed (skipped)" "$(jget "$T/out.json" clusters_zeroed)" 0

        run_compact "$img" --dry-run
        expect_rc 0 "$mode: compact --dry-run without --force"
        check_identical "$T/orig" "$img"

        # forced: 3 live clusters left out of 256
        run_compact "$img" --force --dry-run
        expect_rc 0 "$mode: compact --force --dry-run"
        check_identical "$T/orig" "$img"
        est=$(jget "$T/out.json" file_size_after)

        rm -f "$img.pristine"
        cp "$img" "$img.pristine"
        run_compact "$img" --force
        expect_rc 0 "$mode: compact --force"
        check_clean "$img"
        check_compare "$img.pristine" "$img"
        check_compact_json "$img" "$before" false
        expect_eq "$mode: clusters_zeroed" "$(jget "$T/out.json" clusters_zeroed)" 253
        oracle "$img" "$T/after.json"
        expect_eq "$mode: data clusters after" "$(jget "$T/after.json" data_clusters)" 3
        expect_eq "$mode: L2 tables after" "$(jget "$T/after.json" l2_tables)" 1
        expect_eq "$mode: file size after" "$(file_size "$img")" "$(jget "$T/after.json" min_size)"
        expect_eq "$mode: forced dry run estimate" "$(file_size "$img")" "$est"
        qio "$img" "read -P 0x41 0 128k" "read -P 0 128k 8064k" "read -P 0x42 8M 64k" \
                "read -P 0 $((8 * 1024 * 1024 + 65536)) $((8 * 1024 * 1024 - 65536))"
done

# a disk the guest filled completely (second half first, so the host layout is not in guest
# order as a preallocated one would be) and then zero-filled in part is not "preallocated":
# that is exactly the disk reclaim exists for
img=$T/full-of-data.qcow2
mkimg "$img" 4M
qio "$img" "write -P 0x43 2M 2M" "write -P 0x44 0 2M" "write -P 0 1M 1M"
compact_verify "$img" 48 1 16
