#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# inspect is read-only and reports what the independent oracle sees; its size estimate is
# what compact then achieves.
source "$(dirname "$0")/functions.sh"

KEYS="image format_version cluster_size virtual_size file_size allocated_bytes data_clusters
zero_data_clusters compressed_clusters snapshots backing_file preallocated in_use
reclaimable_bytes compacted_size_estimate"

# inspect_ok IMG: run inspect --json, require exit 0, all keys, no change to the file
inspect_ok() {
        local img=$1 k v
        cp "$img" "$T/inspect.orig"
        run_inspect "$img"
        expect_rc 0 "inspect $img"
        check_identical "$T/inspect.orig" "$img"
        for k in $KEYS; do
                jget "$T/inspect.json" "$k" >/dev/null
        done
        expect_eq "inspect image" "$(jget "$T/inspect.json" image)" "$img"
        for k in allocated_bytes reclaimable_bytes compacted_size_estimate data_clusters \
                 zero_data_clusters compressed_clusters snapshots; do
                v=$(jget "$T/inspect.json" "$k")
                [[ $v =~ ^[0-9]+$ ]] || fail "inspect $k is not a non-negative integer: '$v'"
        done
        # text output works too
        "$RECLAIMCTL" inspect "$img" >"$T/inspect.txt" 2>"$T/err" || fail "inspect (text) $img failed"
        [[ -s "$T/inspect.txt" ]] || fail "inspect (text) printed nothing"
        check_identical "$T/inspect.orig" "$img"
}

# agree KEY ORACLE_KEY: inspect and oracle agree
agree() {
        expect_eq "inspect $1 vs oracle $2" "$(jget "$T/inspect.json" "$1")" "$(jget "$T/o.json" "$2")"
}

# a v3 image with live data, zero data, holes and data far away
img=$T/a.qcow2
mkimg "$img" 256M
qio "$img" "write -P 0xe1 0 1M" "write -P 0 256k 256k" "discard 768k 128k" \
        "write -P 0xe2 100M 128k" "write -P 0 200M 64k"
oracle "$img" "$T/o.json"
inspect_ok "$img"
agree cluster_size cluster_size
agree virtual_size virtual_size
agree file_size file_size
agree data_clusters data_clusters
agree zero_data_clusters zero_content_clusters
expect_eq "zero_data_clusters" "$(jget "$T/inspect.json" zero_data_clusters)" 5
expect_eq "format_version" "$(jget "$T/inspect.json" format_version)" 3
expect_eq "compressed_clusters" "$(jget "$T/inspect.json" compressed_clusters)" 0
expect_eq "snapshots" "$(jget "$T/inspect.json" snapshots)" 0
expect_eq "backing_file" "$(jget "$T/inspect.json" backing_file)" null
expect_eq "preallocated" "$(jget "$T/inspect.json" preallocated)" false
expect_eq "in_use" "$(jget "$T/inspect.json" in_use)" false
est=$(jget "$T/inspect.json" compacted_size_estimate)
size=$(file_size "$img")
expect_eq "reclaimable_bytes = file_size - compacted_size_estimate" \
        "$(jget "$T/inspect.json" reclaimable_bytes)" $((size - est))
# live: 16 - 4 zero - 2 discarded + 2 = 12
compact_verify "$img" 12
expect_eq "compacted size vs inspect's estimate" "$(file_size "$img")" "$est"
# after compaction: nothing left to reclaim
oracle "$img" "$T/o.json"
inspect_ok "$img"
agree file_size file_size
agree data_clusters data_clusters
expect_eq "after: zero_data_clusters" "$(jget "$T/inspect.json" zero_data_clusters)" 0
expect_eq "after: reclaimable_bytes" "$(jget "$T/inspect.json" reclaimable_bytes)" 0
expect_eq "after: compacted_size_estimate" "$(jget "$T/inspect.json" compacted_size_estimate)" \
        "$(file_size "$img")"

# v2 overlay with a backing file, 4 KiB clusters
base=$T/base.qcow2
mkimg "$base" 32M -o compat=0.10
qio "$base" "write -P 0xe3 0 1M"
img=$T/b.qcow2
mkimg "$img" 32M -o compat=0.10,cluster_size=4096 -b "$base" -F qcow2
qio "$img" "write -P 0xe4 0 64k" "write -P 0 64k 64k"
oracle "$img" "$T/o.json"
inspect_ok "$img"
expect_eq "v2 format_version" "$(jget "$T/inspect.json" format_version)" 2
expect_eq "v2 backing_file" "$(jget "$T/inspect.json" backing_file)" "$base"
agree cluster_size cluster_size
agree data_clusters data_clusters
agree zero_data_clusters zero_content_clusters

# images compact refuses can still be inspected: compressed clusters, internal snapshots
img=$T/c.qcow2
qemu-img convert -c -f qcow2 -O qcow2 "$T/a.qcow2.pristine" "$img"
oracle "$img" "$T/o.json"
inspect_ok "$img"
agree compressed_clusters compressed_entries
(($(jget "$T/inspect.json" compressed_clusters) > 0)) || fail "compressed image without compressed clusters"

img=$T/d.qcow2
mkimg "$img" 64M
qio "$img" "write -P 0xe5 0 256k"
qemu-img snapshot -c snap1 "$img"
qemu-img snapshot -c snap2 "$img"
inspect_ok "$img"
expect_eq "snapshots" "$(jget "$T/inspect.json" snapshots)" 2

# preallocated images say so
img=$T/e.qcow2
mkimg "$img" 16M -o preallocation=metadata
inspect_ok "$img"
expect_eq "preallocated (metadata)" "$(jget "$T/inspect.json" preallocated)" true
img=$T/f.qcow2
mkimg "$img" 16M -o preallocation=falloc
inspect_ok "$img"
expect_eq "preallocated (falloc)" "$(jget "$T/inspect.json" preallocated)" true
