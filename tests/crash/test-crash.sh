#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Crash and fault sweeps at the library level over images made the way guests leave them.
# Usage: test-crash.sh crash|faults CASE   (RECLAIM_TEST_LONG=1: every write state)
set -euo pipefail
mode=$1 case=$2
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || exit 77
: "${CRASH_SWEEP:?}"
# Hundreds of small state files are written and checked: keep them in memory when possible.
scratch=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && scratch=/dev/shm
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "$scratch/reclaim-crash.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

# Default: a sample that keeps CI short; RECLAIM_TEST_LONG=1: every write state, more torn
# variants, and faults that stay ("always") as well as one-off ones.
every=8 torn=1 extra=(--once-only)
[ "${RECLAIM_TEST_LONG:-0}" = 1 ] && every=1 torn=8 extra=()

# Live data interleaved with real zeros, a zero-flagged range, a discard.
mk_interleaved() { # size cluster_size pieces [create opts]
        local size=$1 cs=$2 n=$3 opts=${4:-} cmds=() i  # size in bytes
        qemu-img create -q -f qcow2 -o cluster_size=$cs${opts:+,$opts} img.qcow2 "$size"
        local step=$(( size / n ))
        for ((i = 0; i < n; i++)); do
                cmds+=(-c "write -P $((i % 250 + 1)) $((i * step)) $((step / 4))")
                cmds+=(-c "write -P 0 $((i * step + step / 4)) $((step / 2))")
        done
        qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
}

# Compressed clusters that straddle host clusters: in every 5 clusters one of zeros, one of a
# pattern, three half random (streams of about half a cluster), written with convert -c.
mk_compressed() { # cluster_size clusters compression_type
        python3 "$here/mk-pattern-raw.py" raw.img "$1" "$2"
        qemu-img convert -c -S 0 -f raw -O qcow2 -o cluster_size="$1",compression_type="$3" raw.img img.qcow2
        rm -f raw.img
}

batch=()
case $case in
interleaved-64k) mk_interleaved $((32 << 20)) 65536 16 ;;
small-clusters-rb1) mk_interleaved $((4 << 20)) 4096 24 refcount_bits=1 ;;
tiny-clusters) mk_interleaved $((1 << 20)) 512 12 ;;
v2) mk_interleaved $((16 << 20)) 65536 12 compat=0.10 ;;
backing)
        qemu-img create -q -f qcow2 base.qcow2 16M
        qemu-io -f qcow2 -c "write -P 0x55 0 16M" base.qcow2 >/dev/null
        qemu-img create -q -f qcow2 -b "$dir/base.qcow2" -F qcow2 img.qcow2 16M
        qemu-io -f qcow2 -c "write -P 0x11 0 2M" -c "write -P 0 2M 6M" -c "write -P 0x22 8M 2M" \
                -c "write -z 10M 2M" -c "write -P 0 12M 4M" img.qcow2 >/dev/null
        ;;
metadata-at-end)
        # 4 KiB clusters, far-apart guest writes: L2 tables and a second refcount block are
        # allocated late, near the end of the file, then most data is zeroed.
        qemu-img create -q -f qcow2 -o cluster_size=4K img.qcow2 1G
        cmds=()
        for ((i = 0; i < 40; i++)); do cmds+=(-c "write -P 0 $((i * 8))M 128K"); done
        for ((i = 0; i < 40; i++)); do cmds+=(-c "write -P $((i + 1)) $((i * 8 + 4))M 8K"); done
        qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
        ;;
snapshots)
        # Two snapshots, the active layer rewritten since, one snapshot deleted: data and L2
        # tables shared between trees, COPIED clear on shared entries.
        mk_interleaved $((8 << 20)) 4096 16
        qemu-img snapshot -c s1 img.qcow2
        qemu-io -f qcow2 -c "write -P 0x31 0 1M" -c "write -P 0 1M 1M" -c "write -P 0x32 6M 512K" img.qcow2 >/dev/null
        qemu-img snapshot -c s2 img.qcow2
        qemu-io -f qcow2 -c "write -P 0 2M 2M" -c "write -P 0x33 5M 256K" img.qcow2 >/dev/null
        qemu-img snapshot -c s3 img.qcow2
        qemu-img snapshot -d s2 img.qcow2
        qemu-io -f qcow2 -c "write -P 0 0 512K" img.qcow2 >/dev/null
        ;;
compressed)
        mk_interleaved $((8 << 20)) 4096 16
        qemu-img convert -c -O qcow2 -o cluster_size=4096 img.qcow2 c.qcow2
        mv c.qcow2 img.qcow2
        qemu-io -f qcow2 -c "write -P 0 0 1M" -c "write -P 0x41 3M 256K" -c "write -P 0 5M 1M" img.qcow2 >/dev/null
        ;;
bitmaps-extl2)
        qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on img.qcow2 $((16 << 20))
        qemu-img bitmap --add img.qcow2 b0
        qemu-img bitmap --add -g 65536 img.qcow2 b1
        cmds=()
        for ((i = 0; i < 16; i++)); do
                cmds+=(-c "write -P $((i + 1)) $((i << 20)) 64K" -c "write -P 0 $(((i << 20) + 65536)) 512K")
                cmds+=(-c "write -P $((i + 9)) $(((i << 20) + 700000)) 2K")
        done
        qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
        ;;
compressed-snapshots)
        # 64 KiB clusters, deflate; a snapshot shares every stream, the active layer rewrites
        # some since (zeros, data), a second snapshot, the first deleted (its own streams go:
        # dead bytes inside runs); 64 KiB batches, so the references to a shared stream and
        # the streams of one run are switched in different batches
        mk_compressed 65536 40 zlib
        qemu-img snapshot -c s1 img.qcow2
        qemu-io -f qcow2 -c "write -P 0 0 512K" -c "write -P 0x61 1M 192K" -c "discard 2M 256K" img.qcow2 >/dev/null
        qemu-img snapshot -c s2 img.qcow2
        qemu-img snapshot -d s1 img.qcow2
        qemu-io -f qcow2 -c "write -P 0 1536K 256K" img.qcow2 >/dev/null
        batch=(--batch 65536)
        ;;
compressed-zstd-512)
        # 512-byte clusters, zstd: streams straddle most cluster boundaries; some discarded,
        # some overwritten with zeros and data
        mk_compressed 512 600 zstd
        qemu-io -f qcow2 -c "discard 20K 40K" -c "write -P 0 100K 20K" -c "write -P 0x33 200K 4K" img.qcow2 >/dev/null
        batch=(--batch 4096)
        # the re-pack makes this log long (1,876 entries): the default sample keeps every
        # fourth flush state and torn epoch (RECLAIM_TEST_LONG=1: all of them)
        [ "${RECLAIM_TEST_LONG:-0}" = 1 ] || batch+=(--epoch-every 4)
        ;;
compressed-2m)
        # 2 MiB clusters, deflate; three clusters discarded near the start, one overwritten
        # with zeros: the streams after them move down
        mk_compressed 2097152 12 zlib
        qemu-io -f qcow2 -c "discard 2M 6M" -c "write -P 0 16M 2M" img.qcow2 >/dev/null
        ;;
*) echo "unknown case $case" >&2; exit 2 ;;
esac

"$CRASH_SWEEP" "$mode" img.qcow2 "$dir" --every "$every" --torn "$torn" --seed "$(cksum <<<"$case" | cut -d' ' -f1)" "${extra[@]}" "${batch[@]}"
