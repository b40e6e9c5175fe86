#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Images the engine must not move clusters in: encryption, external data file, dirty or
# corrupt bit, unknown incompatible bits or header extensions, and corruption found by the
# pre-check. Each: exit 4, byte-identical afterwards, a reason on stderr.
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

# a compactable image: zeros at the head, live data after, a hole
mkimage() {
        mkimg "$1" 64M -o cluster_size=$CS "${@:2}"
        qio "$1" "write -P 0 0 $((4 * CS))" "write -P 0x21 $((4 * CS)) $((8 * CS))" \
                "discard $((6 * CS)) $CS"
}

# LUKS encryption (the PBKDF benchmark in qemu-img can fail spuriously on a VM with coarse
# CPU time accounting, "Unable to get accurate CPU usage": retry a few times)
img=$T/luks.qcow2
for _ in 1 2 3 4 5; do
        rm -f "$img"
        qemu-img create -q -f qcow2 --object secret,id=sec0,data=abc \
                -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=$CS \
                "$img" 64M >"$T/luks.log" 2>&1 && break
done
if [[ -e "$img" ]] && qemu-io --object secret,id=sec0,data=abc \
        --image-opts "driver=qcow2,file.filename=$img,encrypt.key-secret=sec0" \
        -c "write -P 0 0 256k" -c "write -P 0x22 256k 512k" >"$T/qio.log" 2>&1; then
        expect_eq "crypt_method" "$(ora "$img" crypt_method)" 2
        refused "$img" "LUKS encryption"
else
        log "SKIPPED the LUKS case: cannot create the image: $(cat "$T/luks.log" "$T/qio.log" 2>/dev/null)"
fi

# external data file
img=$T/datafile.qcow2
mkimage "$img" -o data_file="$T/datafile.raw"
cp "$T/datafile.raw" "$T/datafile.raw.orig"
expect_eq "incompatible features (external data file)" "$(ora "$img" incompatible_features)" 4
refused "$img" "external data file"
check_identical "$T/datafile.raw.orig" "$T/datafile.raw"

# dirty bit (lazy refcounts left it set; refcounts are accurate here, check passes)
img=$T/dirty.qcow2
mkimage "$img"
oracle_cmd set-incompat "$img" 0
check_clean "$img"
expect_eq "incompatible features (dirty)" "$(ora "$img" incompatible_features)" 1
refused "$img" "dirty bit"

# a real lazy-refcounts image left dirty: QEMU killed while it had the image open
img=$T/lazy.qcow2
mkimage "$img" -o lazy_refcounts=on
mkfifo "$T/lazy.fifo"
qemu-io -f qcow2 "$img" <"$T/lazy.fifo" >"$T/lazy.log" 2>&1 &
pid=$!
BG_PIDS+=("$pid")
exec 7>"$T/lazy.fifo"
echo "write -P 0x23 $((20 * CS)) $((4 * CS))" >&7
echo "flush" >&7
for _ in $(seq 1 100); do
        (($(ora "$img" incompatible_features) & 1)) && break
        sleep 0.1
done
{
        kill -9 "$pid"
        wait "$pid"
} 2>/dev/null || true
exec 7>&-
BG_PIDS=()
(($(ora "$img" incompatible_features) & 1)) || fail "test setup: lazy-refcounts image is not dirty"
refused "$img" "dirty bit after a crash with lazy refcounts"

# corrupt bit
img=$T/corrupt-bit.qcow2
mkimage "$img"
oracle_cmd set-incompat "$img" 1
refused "$img" "corrupt bit"

# unknown incompatible feature bit
img=$T/unknown-bit.qcow2
mkimage "$img"
oracle_cmd set-incompat "$img" 10
refused "$img" "unknown incompatible bit 10"

# unknown header extension (QEMU ignores it; it might own clusters we know nothing about)
img=$T/unknown-ext.qcow2
mkimage "$img"
oracle_cmd add-extension "$img" 0x12345678
check_clean "$img"
refused "$img" "unknown header extension"

# corruption: a data cluster with refcount 0
img=$T/rc0-data.qcow2
mkimage "$img"
host=$(oracle_cmd host-offset "$img" $((8 * CS)))
((host > 0)) || fail "test setup: guest cluster 8 not allocated"
oracle_cmd set-refcount "$img" $((host / CS)) 0
check_exit 2 "$img"
refused "$img" "data cluster with refcount 0"

# corruption: an L2 table with refcount 0
img=$T/rc0-l2.qcow2
mkimage "$img"
l2=$(oracle_cmd l2-table "$img" 0)
oracle_cmd set-refcount "$img" $((l2 / CS)) 0
check_exit 2 "$img"
refused "$img" "L2 table with refcount 0"

# corruption: an L2 entry pointing past the end of the file
img=$T/past-eof.qcow2
mkimage "$img"
oracle_cmd set-l2-entry "$img" $((30 * CS)) $(( (1 << 63) | (1 << 30) ))
check_exit 2 "$img"
refused "$img" "L2 entry past the end of the file"

# corruption: two L2 entries pointing at the same host cluster (refcount 1, two references)
img=$T/shared.qcow2
mkimage "$img"
host=$(oracle_cmd host-offset "$img" $((8 * CS)))
oracle_cmd set-l2-entry "$img" $((30 * CS)) $(( (1 << 63) | host ))
check_exit 2 "$img"
refused "$img" "doubly referenced cluster"

# corruption: an unaligned L2 entry (reserved bits)
img=$T/unaligned.qcow2
mkimage "$img"
host=$(oracle_cmd host-offset "$img" $((8 * CS)))
oracle_cmd set-l2-entry "$img" $((8 * CS)) $(( (1 << 63) | (host + 512) ))
check_exit 2 "$img"
refused "$img" "unaligned L2 entry"
