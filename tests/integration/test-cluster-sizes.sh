#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Every cluster size from 512 B to 2 MiB: zero clusters dropped, holes filled, minimal file.
source "$(dirname "$0")/functions.sh"

# run CS VSIZE: the same layout, in clusters:
#   0-11 live, 2-5 zero data, 8-9 discarded, 12-14 zero data, 15 zero flag (write -z),
#   2 live clusters 8 clusters before the end of the disk (another L2 table for small clusters)
run() {
        local cs=$1 vsize=$2 img far l2=1
        img=$T/cs$cs.qcow2
        far=$(( (vsize / cs - 8) * cs ))
        mkimg "$img" "$vsize" -o cluster_size="$cs"
        qio "$img" "write -P 0x42 0 $((12 * cs))" \
                "write -P 0 $((2 * cs)) $((4 * cs))" \
                "discard $((8 * cs)) $((2 * cs))" \
                "write -P 0 $((12 * cs)) $((3 * cs))" \
                "write -P 0x43 $far $((2 * cs))" \
                "write -z $((15 * cs)) $cs"
        # live: 12 - 4 zero - 2 discarded = 6, + 2 far => 8; zero data: 4 + 3 = 7
        expect_eq "cs=$cs: zero-content clusters before" "$(ora "$img" zero_content_clusters)" 7
        # the far data lands in another L2 table when one table covers less than the disk
        if (( (cs / 8) * cs < vsize )); then
                l2=2
        fi
        compact_verify "$img" 8 $l2 7
        qio "$img" "read -P 0x42 0 $((2 * cs))" "read -P 0 $((2 * cs)) $((4 * cs))" \
                "read -P 0x42 $((6 * cs)) $((2 * cs))" "read -P 0 $((8 * cs)) $((2 * cs))" \
                "read -P 0x42 $((10 * cs)) $((2 * cs))" "read -P 0 $((12 * cs)) $((4 * cs))" \
                "read -P 0x43 $far $((2 * cs))"
}

run 512 $((4 << 20))
run 4096 $((64 << 20))
run 65536 $((64 << 20))
run 2097152 $((64 << 20))
