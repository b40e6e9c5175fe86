#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Seeded random guest histories (writes of data and of zeros, zero-flag writes with and without
# unmap, discards, sub-cluster writes) over several cluster sizes and refcount widths, with and
# without a backing file; a python model of the guest clusters gives the expected number of
# live clusters. Deterministic: same seeds, same images.
source "$(dirname "$0")/functions.sh"

# gen SEED CS CLUSTERS: print qemu-io commands, then "EXPECT <live> <zero data> <zero-alloc>"
gen() {
        python3 - "$@" <<'PY'
import random, sys
seed, cs, n = (int(a) for a in sys.argv[1:4])
rng = random.Random(seed)
state = ["u"] * n  # u unallocated/zero-plain, L live, Z zero data, A zero-alloc
for _ in range(160):
    start = rng.randrange(n)
    length = min(n - start, rng.choice([1, 1, 2, 3, 8, 16, 64]))
    op = rng.random()
    rng_ = range(start, start + length)
    if op < 0.35:
        print("write -P 0x%02x %d %d" % (rng.randrange(1, 256), start * cs, length * cs))
        for c in rng_: state[c] = "L"
    elif op < 0.55:
        print("write -P 0 %d %d" % (start * cs, length * cs))
        for c in rng_: state[c] = "Z"
    elif op < 0.65:
        print("write -z %d %d" % (start * cs, length * cs))
        for c in rng_: state[c] = "A" if state[c] in "LZA" else "u"
    elif op < 0.72:
        print("write -z -u %d %d" % (start * cs, length * cs))
        for c in rng_: state[c] = "u"
    elif op < 0.85:
        print("discard %d %d" % (start * cs, length * cs))
        for c in rng_: state[c] = "u"
    else:
        # one non-zero sector somewhere inside a single cluster
        off = rng.randrange(cs // 512) * 512
        print("write -P 0x%02x %d 512" % (rng.randrange(1, 256), start * cs + off))
        state[start] = "L"
print("EXPECT %d %d %d" % (state.count("L"), state.count("Z"), state.count("A")))
PY
}

# run NAME SEED CS REFCOUNT_BITS CLUSTERS [BACKING]
run() {
        local name=$1 seed=$2 cs=$3 bits=$4 n=$5 backing=${6:-} img cmds=() line expect zeros za zeroed
        img=$T/$name.qcow2
        if [[ -n $backing ]]; then
                mkimg "$img" $((n * cs)) -o cluster_size="$cs",refcount_bits="$bits" -b "$backing" -F qcow2
        else
                mkimg "$img" $((n * cs)) -o cluster_size="$cs",refcount_bits="$bits"
        fi
        while read -r line; do
                if [[ $line == EXPECT* ]]; then
                        read -r _ expect zeros za <<<"$line"
                else
                        cmds+=("$line")
                fi
        done < <(gen "$seed" "$cs" "$n")
        [[ -n ${expect:-} ]] || fail "generator failed"
        qio "$img" "${cmds[@]}"
        check_clean "$img"
        expect_eq "$name: zero-alloc clusters before" "$(ora "$img" zero_alloc_clusters)" "$za"
        compact_verify "$img" "$expect"
        # zero data clusters are always counted; releasing zero-alloc ones may count as well
        zeroed=$(jget "$T/out.json" clusters_zeroed)
        ((zeroed >= zeros && zeroed <= zeros + za)) ||
                fail "$name: clusters_zeroed $zeroed not in [$zeros, $((zeros + za))]"
}

run r1 1 65536 16 512
run r2 2 4096 16 4096
run r3 3 512 16 4096
run r4 4 4096 1 2048
run r5 5 4096 64 2048
run r6 6 65536 64 256
run r7 7 512 8 2048
mkimg "$T/base.qcow2" $((4096 * 4096)) -o cluster_size=4096
qio "$T/base.qcow2" "write -P 0xba 0 12M"
run r8 8 4096 16 4096 "$T/base.qcow2"
run r9 9 65536 16 256 "$T/base.qcow2"
