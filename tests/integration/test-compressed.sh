#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Compressed clusters (qemu-img convert -c, qemu-io write -c), deflate and zstd, 512-byte,
# 4 KiB, 64 KiB and 2 MiB clusters: compressed clusters that inflate to zeros are released, the others are
# moved as byte ranges (streams share host clusters and may span two of them) into the holes
# left by overwritten, discarded and zeroed compressed clusters; afterwards check is clean,
# the contents are identical and the file is as small as the oracle says it can be.
# inspect reports the compressed clusters.
source "$(dirname "$0")/functions.sh"

# mkraw FILE CS: the source, in clusters:
#   0-3 and 34-35 patterned (compress well), 4-5 random (do not compress: stored as normal
#   clusters), 6-9 and 36-39 zeros, 10-25 and 26-33 half random / half pattern (streams of
#   about half a cluster: they join host clusters into runs, as a stream spans two of them)
mkraw() {
        python3 - "$1" "$2" <<'EOF' || fail "cannot write $1"
import random, sys
path, cs = sys.argv[1], int(sys.argv[2])
rnd = random.Random(cs)
with open(path, "wb") as f:
    for i in range(40):
        if i in (4, 5):
            b = rnd.randbytes(cs)
        elif 6 <= i <= 9 or i >= 36:
            b = bytes(cs)
        elif 10 <= i <= 33:
            b = rnd.randbytes(cs // 2) + bytes([0x40 + i]) * (cs - cs // 2)
        else:
            b = bytes([0x40 + i, 0x20]) * (cs // 2)
        f.write(b)
EOF
}

# run CS COMPRESSION_TYPE
run() {
        local cs=$1 ctype=$2 img ctnum=0 what="$2/$1" moved
        img=$T/c-$cs-$ctype.qcow2
        mkraw "$T/src.raw" "$cs"
        # -S 0: zero clusters are compressed too instead of being skipped
        qemu-img convert -c -S 0 -f raw -O qcow2 -o cluster_size="$cs",compression_type="$ctype" \
                "$T/src.raw" "$img" || fail "qemu-img convert -c $ctype"
        [[ $ctype == zstd ]] && ctnum=1
        expect_eq "$what: compression type" "$(ora "$img" compression_type)" $ctnum
        # all 40 clusters but the 2 incompressible ones
        expect_eq "$what: compressed entries after convert" "$(ora "$img" compressed_entries)" 38
        # room for compressed writes (QEMU compresses only into unallocated clusters)
        qemu-img resize -q -f qcow2 "$img" $((48 * cs)) || fail "qemu-img resize $img"
        # compressed clusters overwritten with zeros (a new normal cluster that is all
        # zeros), with data (a normal cluster); compressed writes of zeros and of data; then
        # (last, so that QEMU does not fill the holes again) compressed clusters discarded
        # (10-25: whole host clusters become free, room for the run after them) and zeroed
        # (write -z)
        qio "$img" "write -P 0 0 $cs" "write -P 0x77 $cs $cs" \
                "write -c -P 0 $((40 * cs)) $cs" "write -c -P 0x55 $((41 * cs)) $cs" \
                "discard $((2 * cs)) $cs" "write -z $((3 * cs)) $cs" \
                "discard $((10 * cs)) $((16 * cs))"
        oracle "$img" "$T/c.json"
        # compressed: 6-9, 26-41; all-zero among them: 6-9, 36-40; normal: 0, 1, 4, 5
        expect_eq "$what: compressed entries" "$(jget "$T/c.json" compressed_entries)" 20
        expect_eq "$what: compressed all-zero clusters (the oracle inflates them)" \
                "$(jget "$T/c.json" compressed_zero_entries)" 9
        expect_eq "$what: normal clusters" "$(jget "$T/c.json" normal_clusters)" 4
        expect_eq "$what: normal all-zero clusters" "$(jget "$T/c.json" zero_content_clusters)" 1
        (($(jget "$T/c.json" file_clusters) > $(jget "$T/c.json" min_clusters) + 1)) ||
                fail "test setup: no holes"
        run_inspect "$img"
        expect_rc 0 "inspect $img"
        expect_eq "$what: inspect compressed_clusters" \
                "$(jget "$T/inspect.json" compressed_clusters)" 20
        # left: 0x77 and the 2 random ones (normal), 11 compressed ones. Streams are
        # re-packed one by one: the smallest file is the oracle's min_clusters_packed (the
        # live streams' exact bytes packed end to end, rounded up to clusters, plus the rest)
        MIN_KEY=min_clusters_packed compact_verify_views "$img" 3 1
        expect_eq "$what: compressed entries after" "$(jget "$T/after.json" compressed_entries)" 11
        moved=$(jget "$T/out.json" clusters_moved)
        ((moved > 0)) || fail "$what: clusters after the holes must have been moved (clusters_moved=$moved)"
        run_inspect "$img"
        expect_rc 0 "inspect $img after"
        expect_eq "$what: inspect compressed_clusters after" \
                "$(jget "$T/inspect.json" compressed_clusters)" 11
        expect_eq "$what: inspect zero_data_clusters after" \
                "$(jget "$T/inspect.json" zero_data_clusters)" 0
        qio "$img" "read -P 0 0 $cs" "read -P 0x77 $cs $cs" "read -P 0 $((2 * cs)) $((2 * cs))" \
                "read -P 0 $((6 * cs)) $((4 * cs))" "read -P 0 $((10 * cs)) $((16 * cs))" \
                "read -P 0 $((36 * cs)) $((5 * cs))" "read -P 0x55 $((41 * cs)) $cs"
        # and what was not rewritten is still the source's
        qemu-img convert -f qcow2 -O raw "$img" "$T/after.raw" || fail "convert $img to raw"
        cmp -s -i $((4 * cs)) -n $((2 * cs)) "$T/src.raw" "$T/after.raw" ||
                fail "$what: clusters 4-5 differ from the source"
        cmp -s -i $((26 * cs)) -n $((10 * cs)) "$T/src.raw" "$T/after.raw" ||
                fail "$what: clusters 26-35 differ from the source"
        log "$what: compressed host clusters $(jget "$T/c.json" compressed_host_clusters) -> $(jget "$T/after.json" compressed_host_clusters), moved $moved, min_clusters $(jget "$T/after.json" min_clusters), min_clusters_whole $(jget "$T/after.json" min_clusters_whole), min_clusters_packed $(jget "$T/after.json" min_clusters_packed)"
}

run 65536 zlib
run 4096 zlib
run 65536 zstd
run 4096 zstd
run 512 zlib
run 512 zstd
run 2097152 zstd
