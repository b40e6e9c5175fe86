#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Files that are not (whole, valid) qcow2 images are refused with exit 4 and left untouched.
source "$(dirname "$0")/functions.sh"

# refused FILE WHAT: compact (also --force, --dry-run) exits 4, FILE byte-identical
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

# random bytes
head -c 1M /dev/urandom >"$T/random.img"
refused "$T/random.img" "random file"

# a raw image (all zeros), and a raw image holding a qcow2 image's bytes at offset 512
qemu-img create -q -f raw "$T/raw.img" 4M
refused "$T/raw.img" "raw image"

# an empty file
: >"$T/empty.img"
refused "$T/empty.img" "empty file"

# the first 50 bytes of a qcow2 image (inside the header)
mkimg "$T/full.qcow2" 64M
qio "$T/full.qcow2" "write -P 0x12 0 1M"
head -c 50 "$T/full.qcow2" >"$T/trunc50.qcow2"
refused "$T/trunc50.qcow2" "qcow2 truncated to 50 bytes"

# the first cluster only (header complete, tables missing)
head -c 65536 "$T/full.qcow2" >"$T/trunc1c.qcow2"
refused "$T/trunc1c.qcow2" "qcow2 truncated to its header cluster"

# the last data cluster cut off (references past the end of the file: corruption)
cp "$T/full.qcow2" "$T/trunc-tail.qcow2"
truncate -s $(( $(file_size "$T/full.qcow2") - 65536 )) "$T/trunc-tail.qcow2"
check_exit 2 "$T/trunc-tail.qcow2"
refused "$T/trunc-tail.qcow2" "qcow2 missing its last cluster"

# qcow version 1 (same magic, version 1)
if qemu-img create -q -f qcow "$T/v1.qcow" 4M 2>/dev/null; then
        refused "$T/v1.qcow" "qcow version 1"
fi

# version 4 (unknown)
cp "$T/full.qcow2" "$T/v4.qcow2"
printf '\x00\x00\x00\x04' | dd of="$T/v4.qcow2" bs=1 seek=4 conv=notrunc status=none
refused "$T/v4.qcow2" "qcow2 version 4"

# cluster_bits 22 (4 MiB clusters; beyond what QEMU accepts)
cp "$T/full.qcow2" "$T/cb22.qcow2"
printf '\x00\x00\x00\x16' | dd of="$T/cb22.qcow2" bs=1 seek=20 conv=notrunc status=none
refused "$T/cb22.qcow2" "cluster_bits 22"

# the original is fine
compact_verify "$T/full.qcow2" 16 1 0
