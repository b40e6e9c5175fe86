#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaimctl compact killed with SIGKILL at random moments: each interrupted image passes
# `qemu-img check` (0 or 3: leaks only) and compare; a re-run ends with check 0 and the same
# size as an uninterrupted run. RUNS runs (default 20; RECLAIM_TEST_LONG=1: 100) over images of
# several kinds. Randomness is seeded, so a failing run can be repeated.
set -euo pipefail
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || exit 77
: "${RECLAIMCTL:?}"
runs=${RUNS:-20}
[ "${RECLAIM_TEST_LONG:-0}" = 1 ] && runs=100
RANDOM=${SEED:-4242}
scratch=${TMPDIR:-/tmp}
[ -d /dev/shm ] && [ -w /dev/shm ] && scratch=/dev/shm
dir=$(mktemp -d "$scratch/reclaim-kill.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cd "$dir"

make_image() { # kind -> img.qcow2
        local cmds=() i
        case $1 in
        plain)
                qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 64M
                for ((i = 0; i < 64; i++)); do
                        cmds+=(-c "write -P $((i % 200 + 1)) $((i << 20)) 256K" -c "write -P 0 $(((i << 20) + 262144)) 512K")
                done
                qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
                ;;
        snapshots)
                qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 32M
                for ((i = 0; i < 32; i++)); do cmds+=(-c "write -P $((i + 1)) $((i << 20)) 512K"); done
                qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
                qemu-img snapshot -c s1 img.qcow2
                cmds=()
                for ((i = 0; i < 32; i += 2)); do cmds+=(-c "write -P 0 $((i << 20)) 512K"); done
                qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null
                ;;
        compressed)
                qemu-img create -q -f qcow2 -o cluster_size=4096 src.qcow2 32M
                for ((i = 0; i < 32; i++)); do cmds+=(-c "write -P $((i + 1)) $((i << 20)) 256K"); done
                qemu-io -f qcow2 "${cmds[@]}" src.qcow2 >/dev/null
                qemu-img convert -c -O qcow2 -o cluster_size=4096 src.qcow2 img.qcow2
                qemu-io -f qcow2 -c "write -P 0 0 4M" -c "write -P 9 8M 1M" img.qcow2 >/dev/null
                ;;
        esac
}

kinds=(plain snapshots compressed)
declare -A final pristine_ms
for k in "${kinds[@]}"; do
        mkdir -p "$k" && (cd "$k" && make_image "$k")
        cp "$k/img.qcow2" "$k/ref.qcow2"
        t0=$(date +%s%N)
        "$RECLAIMCTL" compact --image "$k/ref.qcow2" --batch-size 64K --json >/dev/null
        pristine_ms[$k]=$((($(date +%s%N) - t0) / 1000000))
        final[$k]=$(stat -c %s "$k/ref.qcow2")
        [ "${final[$k]}" -lt "$(stat -c %s "$k/img.qcow2")" ] || { echo "FAIL: $k does not shrink"; exit 1; }
done

killed=0 completed=0
for ((n = 0; n < runs; n++)); do
        k=${kinds[$((n % ${#kinds[@]}))]}
        cp "$k/img.qcow2" run.qcow2
        # Kill somewhere inside the run: a random point of its measured duration.
        delay_ms=$((RANDOM % (pristine_ms[$k] + 1)))
        "$RECLAIMCTL" compact --image run.qcow2 --batch-size 64K >/dev/null 2>&1 &
        pid=$!
        sleep "$(printf '0.%03d' "$delay_ms")" 2>/dev/null || sleep 0
        if kill -KILL "$pid" 2>/dev/null; then killed=$((killed + 1)); else completed=$((completed + 1)); fi
        wait "$pid" 2>/dev/null || true
        rc=0; qemu-img check -q run.qcow2 || rc=$?
        if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
                echo "FAIL run $n ($k, kill after ${delay_ms} ms): qemu-img check exit $rc"; cp run.qcow2 "$scratch/reclaim-kill-fail.qcow2"; exit 1
        fi
        qemu-img compare -q "$k/img.qcow2" run.qcow2 || { echo "FAIL run $n ($k): guest data changed"; exit 1; }
        "$RECLAIMCTL" compact --image run.qcow2 >/dev/null || { echo "FAIL run $n ($k): re-run failed"; exit 1; }
        qemu-img check -q run.qcow2 || { echo "FAIL run $n ($k): check after re-run"; exit 1; }
        qemu-img compare -q "$k/img.qcow2" run.qcow2 || { echo "FAIL run $n ($k): data after re-run"; exit 1; }
        size=$(stat -c %s run.qcow2)
        [ "$size" = "${final[$k]}" ] || { echo "FAIL run $n ($k): re-run ended at $size, uninterrupted at ${final[$k]}"; exit 1; }
done
echo "$runs kill runs passed ($killed killed mid-run, $completed had finished)"
# The test proves nothing if no run was ever interrupted.
[ "$killed" -ge $((runs / 2)) ] || { echo "FAIL: only $killed of $runs runs were interrupted"; exit 1; }
