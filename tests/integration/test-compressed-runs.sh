#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Compressed streams that span two host clusters tie clusters into runs. The engine re-packs
# streams one by one (those past the new end, and whole runs with dead bytes when that saves
# clusters), so the file ends at the oracle's min_clusters_packed (live stream bytes packed
# end to end) where the holes allow it, and never with free clusters at its end.
source "$(dirname "$0")/functions.sh"

# halfrandom FILE SIZE SEED: half random bytes, half a pattern (compresses to about half)
halfrandom() {
        python3 -c '
import random, sys
n, seed = int(sys.argv[2]), int(sys.argv[3])
with open(sys.argv[1], "wb") as f:
    f.write(random.Random(seed).randbytes(n // 2) + b"x" * (n - n // 2))
' "$1" "$2" "$3" || fail "cannot write $1"
}

# ---- the smallest case, 64 KiB clusters (host clusters in brackets):
#   2 normal clusters of zeros [5, 6]; 8 compressed half-random clusters [7-11, one run],
#   all eight the same bytes; a normal data cluster [12]; 4 normal clusters of zeros [13-16]
#   -> the eight identical streams are merged into one (all eight entries name it); the
#      zeros go: holes 5, 6 and the tail; 12 moves into 5; the stream moves down next to the
#      rest: 7 clusters, min_clusters_packed (without the merge 11; whole-run moves ended at
#      12)
CS=65536
img=$T/small.qcow2
halfrandom "$T/half.bin" $CS 1
mkimg "$img" 16M -o cluster_size=$CS
args=("write -P 0 0 $((2 * CS))")
for i in 2 3 4 5 6 7 8 9; do
        args+=("write -c -s $T/half.bin $((i * CS)) $CS")
done
args+=("write -P 0x77 $((10 * CS)) $CS" "write -P 0 $((11 * CS)) $((4 * CS))")
qio "$img" "${args[@]}"
oracle "$img" "$T/r.json"
expect_eq "small: compressed entries" "$(jget "$T/r.json" compressed_entries)" 8
expect_eq "small: normal all-zero clusters" "$(jget "$T/r.json" zero_content_clusters)" 6
expect_eq "small: clusters before" "$(jget "$T/r.json" file_clusters)" 17
MIN_KEY=min_clusters_packed compact_verify_views "$img" 1 1
expect_eq "small: clusters after" $(($(file_size "$img") / CS)) 7
expect_eq "small: compressed entries after" "$(jget "$T/after.json" compressed_entries)" 8
expect_eq "small: streams after" "$(jget "$T/after.json" compressed_streams)" 1
qio "$img" "read -P 0 0 $((2 * CS))" "read -P 0x77 $((10 * CS)) $CS" \
        "read -P 0 $((11 * CS)) $((4 * CS))"

# ---- an image from qemu-img convert -c whose streams were partly overwritten and discarded
# (the discards last, so that QEMU fills no hole again); deflate 64 KiB and zstd 4 KiB:
#   0-3 patterned, 4-5 random, 6-9 zeros, 10-15 patterned, 16-31 half random, 32-35
#   patterned, 36-39 zeros; then 0 and 22-23 overwritten with zeros, 1 with data, 40
#   (zeros) and 41 (data) written compressed, 2 and 16-21 discarded, 3 zeroed (write -z)
run() {
        local cs=$1 ctype=$2 img what="convert $2/$1"
        img=$T/c-$cs-$ctype.qcow2
        python3 - "$T/src.raw" "$cs" <<'EOF' || fail "cannot write the source"
import random, sys
path, cs = sys.argv[1], int(sys.argv[2])
rnd = random.Random(cs + 1)
with open(path, "wb") as f:
    for i in range(40):
        if i in (4, 5):
            b = rnd.randbytes(cs)
        elif 6 <= i <= 9 or i >= 36:
            b = bytes(cs)
        elif 16 <= i <= 31:
            b = rnd.randbytes(cs // 2) + bytes([0x60 + i]) * (cs - cs // 2)
        else:
            b = bytes([0x40 + i, 0x20]) * (cs // 2)
        f.write(b)
EOF
        qemu-img convert -c -S 0 -f raw -O qcow2 -o cluster_size="$cs",compression_type="$ctype" \
                "$T/src.raw" "$img" || fail "qemu-img convert -c $ctype"
        qemu-img resize -q -f qcow2 "$img" 16M || fail "qemu-img resize $img"
        qio "$img" "write -P 0 0 $cs" "write -P 0x77 $cs $cs" \
                "write -P 0 $((22 * cs)) $((2 * cs))" \
                "write -c -P 0 $((40 * cs)) $cs" "write -c -P 0x55 $((41 * cs)) $cs" \
                "discard $((2 * cs)) $cs" "write -z $((3 * cs)) $cs" \
                "discard $((16 * cs)) $((6 * cs))"
        # compressed: 6-15, 24-41; all-zero among them: 6-9, 36-40
        expect_eq "$what: compressed entries" "$(ora "$img" compressed_entries)" 28
        # left: 0x77 and the 2 random ones (normal), 19 compressed. The dead bytes lie spread
        # over runs; they are consolidated first, in a pass of their own, through the free
        # clusters the zero pass left. A hole could stay below the last run (filling it means
        # shifting the run down by less than its length); the re-pack slides the streams
        # into one region through the tail the passes kept, so the file ends at exactly
        # min_clusters_packed (64 KiB/deflate: 13; the passes alone ended at 14, whole-run
        # moves at 16)
        MIN_KEY=min_clusters_packed compact_verify_views "$img" 3 1
        expect_eq "$what: compressed entries after" "$(jget "$T/after.json" compressed_entries)" 19
        # every content once: as many streams as distinct inflated clusters
        expect_eq "$what: streams after vs distinct contents" \
                "$(jget "$T/after.json" compressed_streams)" \
                "$(jget "$T/after.json" compressed_distinct_contents)"
        log "$what: min_clusters $(jget "$T/after.json" min_clusters), min_clusters_whole $(jget "$T/after.json" min_clusters_whole), min_clusters_packed $(jget "$T/after.json" min_clusters_packed)"
}

run 65536 zlib
run 4096 zstd

# ---- 512-byte clusters, zstd: streams of ~275 bytes straddle most cluster boundaries, and
# QEMU allocated the L2 tables among them, so the compressed data lies in ten regions between
# tables and data clusters that nothing past the end would move. The passes alone ended 4
# clusters above the minimum (183 for 179); the re-pack evicts those clusters from the
# compressed zone and slides the streams into one region: exactly min_clusters_packed.
python3 "$(dirname "$0")/../crash/mk-pattern-raw.py" "$T/z.raw" 512 600 ||
        fail "cannot write the source"
img=$T/z512.qcow2
qemu-img convert -c -S 0 -f raw -O qcow2 -o cluster_size=512,compression_type=zstd \
        "$T/z.raw" "$img" || fail "qemu-img convert -c zstd/512"
qio "$img" "discard 20K 40K" "write -P 0 100K 20K" "write -P 0x33 200K 4K"
MIN_KEY=min_clusters_packed compact_verify_views "$img" 8
expect_eq "zstd/512: clusters after" $(($(file_size "$img") / 512)) 179
expect_eq "zstd/512: streams after vs distinct contents" \
        "$(jget "$T/after.json" compressed_streams)" \
        "$(jget "$T/after.json" compressed_distinct_contents)"
# a second run finds nothing to do
cp "$img" "$T/z512.again"
run_compact "$img"
expect_rc 0 "second compact"
check_clean "$img"
cmp -s "$img" "$T/z512.again" || fail "zstd/512: a second run changed the file"
