#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Metadata that QEMU allocated late, past the new end of the file: L2 tables, refcount
# blocks and a grown refcount table must be moved (or dropped when no longer needed).
source "$(dirname "$0")/functions.sh"

# max_of JSON KEY: the largest number in a list-valued oracle key
max_of() {
        jget "$1" "$2" | tr -d '[] ' | tr ',' '\n' | sort -n | tail -1
}

# (a) L2 tables: 4 KiB clusters (one L2 table maps 2 MiB), data at far-apart guest offsets
img=$T/l2-late.qcow2
mkimg "$img" 1G -o cluster_size=4096
qio "$img" "write -P 0x61 0 256k" \
        "write -P 0 4M 1536k" \
        "write -P 0x62 100M 64k" \
        "write -P 0x63 300M 64k" \
        "write -P 0 301M 256k" \
        "write -P 0x64 700M 64k" \
        "write -P 0x65 1000M 64k"
oracle "$img" "$T/before-a.json"
expect_eq "L2 tables before" "$(jget "$T/before-a.json" l2_tables)" 6
# live: 64 + 4 x 16 = 128 clusters; L2 tables with live data: 0, 100M, 300M, 700M, 1000M
compact_verify "$img" 128 5 448
last_l2=$(max_of "$T/before-a.json" l2_offsets)
((last_l2 >= $(file_size "$img"))) ||
        fail "test setup: no L2 table was past the new end ($last_l2 < $(file_size "$img"))"
qio "$img" "read -P 0x61 0 256k" "read -P 0x62 100M 64k" "read -P 0x63 300M 64k" \
        "read -P 0x64 700M 64k" "read -P 0x65 1000M 64k" "read -P 0 4M 1536k"

# (b) refcount blocks: 4 KiB clusters, 64-bit refcounts => one block per 512 clusters (2 MiB)
img=$T/rb-late.qcow2
mkimg "$img" 64M -o cluster_size=4096,refcount_bits=64
qio "$img" "write -P 0x71 0 3M" "write -P 0x72 8M 1M" "write -P 0 0 2560k"
oracle "$img" "$T/before-b.json"
(($(jget "$T/before-b.json" refcount_blocks) >= 3)) || fail "test setup: want >= 3 refcount blocks"
# live: 512k + 1M = 384 clusters in two L2 tables (2M-4M, 8M-10M); zero data: 640 clusters
compact_verify "$img" 384 2 640
last_rb=$(max_of "$T/before-b.json" refcount_block_offsets)
((last_rb >= $(file_size "$img"))) ||
        fail "test setup: no refcount block was past the new end ($last_rb < $(file_size "$img"))"
expect_eq "refcount blocks after" "$(jget "$T/after.json" refcount_blocks)" 1
qio "$img" "read -P 0 0 2560k" "read -P 0x71 2560k 512k" "read -P 0x72 8M 1M"

# (c) a refcount table that QEMU had to grow (512 B clusters, 64-bit refcounts: one table
#     cluster covers 64 x 64 clusters = 2 MiB): the new table sits near the end of the file
img=$T/rt-late.qcow2
mkimg "$img" 8M -o cluster_size=512,refcount_bits=64
qio "$img" "write -P 0x81 0 3M" "write -P 0 0 2560k"
oracle "$img" "$T/before-c.json"
rt=$(jget "$T/before-c.json" refcount_table_offset)
((rt > 512)) || fail "test setup: the refcount table did not move ($rt)"
# live: 512k => 1024 clusters; zero data: 5120 clusters
compact_verify "$img" 1024 - 5120
((rt >= $(file_size "$img"))) || fail "test setup: refcount table was not past the new end"
qio "$img" "read -P 0 0 2560k" "read -P 0x81 2560k 512k"
