#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# An image QEMU holds open (its OFD lock bytes 100-104/200-204) is never compacted: exit 3
# and not one byte changed. inspect still works and says in_use. Once the holder is gone,
# compaction works.
source "$(dirname "$0")/functions.sh"
requires qemu-nbd mkfifo

CS=65536

# wait_locked IMG: until some process holds a lock on IMG (at most 10 s)
wait_locked() {
        local ino
        ino=$(stat -c %i "$1")
        for _ in $(seq 1 100); do
                if grep -q ":$ino " /proc/locks; then
                        return 0
                fi
                sleep 0.1
        done
        fail "nobody took a lock on $1"
}

# wait_unlocked IMG
wait_unlocked() {
        local ino
        ino=$(stat -c %i "$1")
        for _ in $(seq 1 100); do
                if ! grep -q ":$ino " /proc/locks; then
                        return 0
                fi
                sleep 0.1
        done
        fail "lock on $1 not released"
}

# make_image IMG: something worth compacting (8 live clusters left)
make_image() {
        mkimg "$1" 64M -o cluster_size=$CS
        qio "$1" "write -P 0 0 $((4 * CS))" "write -P 0xf1 $((4 * CS)) $((8 * CS))" \
                "discard $((12 * CS)) $((4 * CS))"
}

# refused_in_use IMG [OTHER]: compact and dry run exit 3, IMG unchanged; inspect: in_use true
refused_in_use() {
        local img=$1
        cp "$img" "$T/locked.orig"
        run_compact "$img"
        expect_rc 3 "compact of an image in use ($img)"
        check_identical "$T/locked.orig" "$img"
        run_compact "$img" --force
        expect_rc 3 "compact --force of an image in use ($img)"
        check_identical "$T/locked.orig" "$img"
        run_compact "$img" --dry-run
        expect_rc 3 "compact --dry-run of an image in use ($img)"
        check_identical "$T/locked.orig" "$img"
        run_inspect "$img"
        expect_rc 0 "inspect of an image in use ($img)"
        expect_eq "inspect in_use" "$(jget "$T/inspect.json" in_use)" true
        check_identical "$T/locked.orig" "$img"
}

# holder_start NAME CMD...: run CMD with stdin from a fifo held open on fd 7 (qemu-io style)
holder_start() {
        local fifo=$T/$1.fifo
        shift
        mkfifo "$fifo"
        "$@" <"$fifo" >"$T/holder.log" 2>&1 &
        HOLDER=$!
        BG_PIDS+=("$HOLDER")
        exec 7>"$fifo"
}

# holder_stop: EOF on qemu-io's stdin makes it quit
holder_stop() {
        exec 7>&-
        wait "$HOLDER" || true
        BG_PIDS=()
}

# 1. qemu-nbd serving the image (read-write)
img=$T/nbd.qcow2
make_image "$img"
qemu-nbd --persistent -f qcow2 -k "$T/nbd.sock" "$img" >"$T/nbd.log" 2>&1 &
NBD=$!
BG_PIDS+=("$NBD")
wait_locked "$img"
refused_in_use "$img"
kill "$NBD"
wait "$NBD" || true
BG_PIDS=()
wait_unlocked "$img"
compact_verify "$img" 8 1 4

# 2. qemu-io read-write
img=$T/rw.qcow2
make_image "$img"
holder_start rw qemu-io -f qcow2 "$img"
wait_locked "$img"
refused_in_use "$img"
holder_stop
wait_unlocked "$img"
compact_verify "$img" 8 1 4

# 3. qemu-io read-only (a reader holds 100, 201 and 203)
img=$T/ro.qcow2
make_image "$img"
holder_start ro qemu-io -r -f qcow2 "$img"
wait_locked "$img"
refused_in_use "$img"
holder_stop
wait_unlocked "$img"
compact_verify "$img" 8 1 4

# 4. the backing file of an overlay that is open read-write
base=$T/base.qcow2
make_image "$base"
img=$T/overlay.qcow2
mkimg "$img" 64M -o cluster_size=$CS -b "$base" -F qcow2
qio "$img" "write -P 0xf2 0 $CS" "write -P 0 $CS $CS"
holder_start ov qemu-io -f qcow2 "$img"
wait_locked "$base"
refused_in_use "$base"
refused_in_use "$img"
holder_stop
wait_unlocked "$base"
compact_verify "$base" 8 1 4
compact_verify "$img" 1 1 1
