#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Every refcount width (refcount_bits 1..64; sub-byte widths are packed LSB first). With
# 4 KiB clusters a refcount block covers 32768 (1 bit) down to 512 (64 bits) clusters, so the
# wide ones need several refcount blocks; the compacted file must need no more than necessary.
source "$(dirname "$0")/functions.sh"

CS=4096

for bits in 1 2 4 8 16 32 64; do
        img=$T/rc$bits.qcow2
        mkimg "$img" 64M -o cluster_size=$CS,refcount_bits=$bits
        # 3 MiB live (768 clusters), 1 MiB of it zero, 256 KiB discarded, then more live data
        qio "$img" "write -P 0x5c 0 3M" \
                "write -P 0 512k 1M" \
                "discard 2M 256k" \
                "write -P 0x5d 8M 512k" \
                "write -P 0 16M 256k"
        expect_eq "refcount bits" "$(ora "$img" refcount_bits)" $bits
        # live: 3M - 1M - 256k + 512k = 2304k => 576 clusters; zero data 1M + 256k => 320
        compact_verify "$img" 576 - 320
        expect_eq "refcount bits after" "$(jget "$T/after.json" refcount_bits)" $bits
        expect_eq "max refcount after" "$(jget "$T/after.json" max_refcount)" 1
        qio "$img" "read -P 0x5c 0 512k" "read -P 0 512k 1M" "read -P 0x5c 1536k 512k" \
                "read -P 0 2M 256k" "read -P 0x5c 2304k 768k" "read -P 0x5d 8M 512k"
done
