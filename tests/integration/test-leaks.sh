#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Leaked clusters (refcount > 0, referenced by nothing; what a crash leaves behind; qemu-img
# check exit 3) are not corruption: compaction releases them and ends clean and minimal.
source "$(dirname "$0")/functions.sh"

CS=65536

img=$T/leaks.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x9a 0 $((16 * CS))" \
        "discard $((4 * CS)) $((4 * CS))" \
        "write -P 0 $((10 * CS)) $((2 * CS))"
# a leak inside the file: a freed cluster (a hole) with refcount 1 and garbage in it
free=$(oracle_cmd free-cluster "$img")
((free > 0)) || fail "no free cluster in $img"
printf 'garbage!%.0s' $(seq 1 64) | dd of="$img" bs=1 seek=$((free * CS)) conv=notrunc status=none
oracle_cmd set-refcount "$img" "$free" 1
# two leaks at the end of the file: the file grows by two clusters of garbage
size=$(file_size "$img")
end=$(( (size + CS - 1) / CS ))
truncate -s $(( (end + 2) * CS )) "$img"
head -c $((2 * CS)) /dev/urandom | dd of="$img" bs=$CS seek="$end" conv=notrunc status=none
oracle_cmd set-refcount "$img" "$end" 1
oracle_cmd set-refcount "$img" $((end + 1)) 1
check_exit 3 "$img"
expect_eq "oracle leaked clusters before" "$(ora "$img" leaked_clusters)" 3
# live: 16 - 4 discarded - 2 zero = 10
compact_verify "$img" 10 1 2
qio "$img" "read -P 0x9a 0 $((4 * CS))" "read -P 0 $((4 * CS)) $((4 * CS))" \
        "read -P 0x9a $((8 * CS)) $((2 * CS))" "read -P 0 $((10 * CS)) $((2 * CS))" \
        "read -P 0x9a $((12 * CS)) $((4 * CS))"

# leaks only, nothing else to do: still repaired and truncated
img=$T/leak-only.qcow2
mkimg "$img" 64M -o cluster_size=$CS
qio "$img" "write -P 0x9b 0 $((4 * CS))"
size=$(file_size "$img")
end=$(( (size + CS - 1) / CS ))
truncate -s $(( (end + 1) * CS )) "$img"
oracle_cmd set-refcount "$img" "$end" 1
check_exit 3 "$img"
compact_verify "$img" 4 1 0

# refcount_bits=1 and 4 KiB clusters: the refcount bit of a leak shares its byte with others
img=$T/leak-rc1.qcow2
mkimg "$img" 16M -o cluster_size=4096,refcount_bits=1
qio "$img" "write -P 0x9c 0 256k" "discard 64k 12k"
free=$(oracle_cmd free-cluster "$img")
oracle_cmd set-refcount "$img" "$free" 1
check_exit 3 "$img"
compact_verify "$img" 61 1 0
