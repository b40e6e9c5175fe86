#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# --dry-run writes nothing and predicts exactly what the real run then achieves.
source "$(dirname "$0")/functions.sh"

run_case() {
        local img=$1 want_data=$2
        local before est zeroed
        cp "$img" "$T/dry.orig"
        before=$(file_size "$img")
        run_compact "$img" --dry-run
        expect_rc 0 "compact --dry-run $img"
        check_compact_json "$img" "$before" true
        check_identical "$T/dry.orig" "$img"
        est=$(jget "$T/out.json" file_size_after)
        zeroed=$(jget "$T/out.json" clusters_zeroed)
        ((est < before)) || fail "dry run predicts no gain ($est >= $before)"
        compact_verify "$img" "$want_data" - "$zeroed"
        expect_eq "real file size vs the dry run's estimate" "$(file_size "$img")" "$est"
}

# 64 KiB clusters, zeros at the head and holes
img=$T/a.qcow2
mkimg "$img" 64M
qio "$img" "write -P 0 0 512k" "write -P 0xd1 512k 512k" "discard 640k 128k" \
        "write -P 0xd2 32M 128k" "write -z 33M 64k"
# live: 8 - 2 discarded + 2 = 8
run_case "$img" 8

# 4 KiB clusters, 64-bit refcounts: the estimate must also count the refcount blocks dropped
img=$T/b.qcow2
mkimg "$img" 64M -o cluster_size=4096,refcount_bits=64
qio "$img" "write -P 0xd3 0 3M" "write -P 0 0 2M" "write -P 0xd4 40M 64k"
# live: 1M + 64k => 272 clusters
run_case "$img" 272

# v3 overlay: zero clusters become zero flags
base=$T/base.qcow2
mkimg "$base" 64M
qio "$base" "write -P 0xd5 0 2M"
img=$T/c.qcow2
mkimg "$img" 64M -b "$base" -F qcow2
qio "$img" "write -P 0 0 1M" "write -P 0xd6 1M 512k"
run_case "$img" 8

# --dry-run on an image with nothing to do
img=$T/d.qcow2
mkimg "$img" 64M
qio "$img" "write -P 0xd7 0 1M"
cp "$img" "$T/d.orig"
run_compact "$img" --dry-run
expect_rc 0 "compact --dry-run (nothing to do)"
check_compact_json "$img" "$(file_size "$img")" true
expect_eq "nothing to do: estimate" "$(jget "$T/out.json" file_size_after)" "$(file_size "$img")"
check_identical "$T/d.orig" "$img"
