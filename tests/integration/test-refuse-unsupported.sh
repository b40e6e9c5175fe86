#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Features the engine does not support yet are refused (exit 4, byte-identical): internal
# snapshots, compressed clusters, persistent bitmaps, extended L2 entries.
# When support for one of them lands, move its case into a test that compacts it.
source "$(dirname "$0")/functions.sh"

CS=65536

refused() {
        local img=$1 what=$2 args
        cp "$img" "$T/refused.orig"
        for args in "" "--force" "--dry-run"; do
                # shellcheck disable=SC2086
                run_compact "$img" $args
                expect_rc 4 "$what: compact $args"
                check_identical "$T/refused.orig" "$img"
        done
        [[ -s "$T/err" ]] || fail "$what: refused without saying why (empty stderr)"
        log "$what: refused: $(head -c 300 "$T/err" | tr '\n' ' ')"
}

mkimage() {
        mkimg "$1" 64M -o cluster_size=$CS "${@:2}"
        qio "$1" "write -P 0 0 $((4 * CS))" "write -P 0x31 $((4 * CS)) $((8 * CS))" \
                "discard $((6 * CS)) $CS"
}

# internal snapshot
img=$T/snapshot.qcow2
mkimage "$img"
qemu-img snapshot -c snap1 "$img"
qio "$img" "write -P 0x32 0 $((2 * CS))"
expect_eq "snapshots" "$(ora "$img" nb_snapshots)" 1
check_clean "$img"
refused "$img" "internal snapshot"

# compressed clusters
img=$T/compressed.qcow2
mkimage "$T/src.qcow2"
qemu-img convert -c -f qcow2 -O qcow2 "$T/src.qcow2" "$img"
qio "$img" "write -P 0 $((8 * CS)) $CS"
(($(ora "$img" compressed_entries) > 0)) || fail "test setup: no compressed clusters"
refused "$img" "compressed clusters"

# persistent dirty bitmap
img=$T/bitmap.qcow2
mkimage "$img"
qemu-img bitmap --add "$img" bm0
qemu-img bitmap --add "$img" bm1 --granularity 65536
[[ $(ora "$img" extensions) == *0x23852875* ]] || fail "test setup: no bitmaps extension"
check_clean "$img"
refused "$img" "persistent bitmaps"

# extended L2 entries (subclusters)
img=$T/extl2.qcow2
mkimage "$img" -o extended_l2=on
expect_eq "incompatible features (extended L2)" "$(ora "$img" incompatible_features)" 16
refused "$img" "extended L2"
