# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the integration tests; sourced by every tests/integration/test-*.sh.
#
# Environment (set by meson): RECLAIMCTL (the CLI under test), SRCDIR, BUILDDIR.
# Exit statuses follow the meson/automake convention: 0 pass, 1 fail, 77 skip.

set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIMCTL=${RECLAIMCTL:-$BUILDDIR/host/reclaimctl/reclaimctl}
ORACLE="$TESTDIR/qcow2-oracle.py"
TEST_NAME=$(basename "$0" .sh)

# ---- basics -------------------------------------------------------------------------------

log() { echo "# $*"; }

fail() {
        echo "FAIL [$TEST_NAME]: $*" >&2
        exit 1
}

# requires CMD...: skip the test (exit 77) when a command is missing.
requires() {
        local c
        for c in "$@"; do
                if ! command -v "$c" >/dev/null 2>&1; then
                        echo "SKIP [$TEST_NAME]: '$c' not found"
                        exit 77
                fi
        done
}

requires qemu-img qemu-io python3 cmp

if [[ ! -x "$RECLAIMCTL" ]]; then
        fail "reclaimctl not found or not executable: '$RECLAIMCTL'"
fi

# Per-test scratch directory, removed on exit (also kills any background helper we started).
T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-it.XXXXXX")
BG_PIDS=()
cleanup() {
        local rc=$? p
        for p in "${BG_PIDS[@]}"; do
                kill "$p" 2>/dev/null || true
                wait "$p" 2>/dev/null || true
        done
        if [[ $rc -ne 0 && $rc -ne 77 && -n "${KEEP_TMP:-}" ]]; then
                echo "# keeping $T" >&2
        else
                rm -rf "$T"
        fi
}
trap cleanup EXIT

# ---- image helpers ------------------------------------------------------------------------

# mkimg IMG SIZE [qemu-img create options...]: e.g. mkimg $T/a.qcow2 64M -o cluster_size=4096
mkimg() {
        local img=$1 size=$2
        shift 2
        qemu-img create -q -f qcow2 "$@" "$img" "$size" || fail "qemu-img create $img $size $*"
}

# qio IMG CMD...: run all qemu-io commands in ONE qemu-io process; fail if any of them fails.
qio() {
        local img=$1 c args=()
        shift
        for c in "$@"; do
                args+=(-c "$c")
        done
        if ! qemu-io -f qcow2 "${args[@]}" "$img" >"$T/qio.log" 2>&1; then
                cat "$T/qio.log" >&2
                fail "qemu-io on $img failed: $*"
        fi
}

file_size() {
        stat -c %s "$1"
}

# check_clean IMG: qemu-img check must exit 0 (no corruption, no leaks).
check_clean() {
        local rc=0
        qemu-img check "$1" >"$T/check.log" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]]; then
                cat "$T/check.log" >&2
                fail "qemu-img check $1 exited $rc (want 0)"
        fi
}

# check_exit WANT IMG: qemu-img check must exit with WANT (2 corrupt, 3 leaks).
check_exit() {
        local want=$1 img=$2 rc=0
        qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
        if [[ $rc -ne $want ]]; then
                cat "$T/check.log" >&2
                fail "qemu-img check $img exited $rc (want $want)"
        fi
}

# check_compare A B: guest-visible contents identical (backing chains included).
check_compare() {
        local rc=0
        qemu-img compare -f qcow2 -F qcow2 "$1" "$2" >"$T/compare.log" 2>&1 || rc=$?
        if [[ $rc -ne 0 ]]; then
                cat "$T/compare.log" >&2
                fail "qemu-img compare $1 $2 exited $rc (want 0)"
        fi
}

# check_identical A B: byte-for-byte identical files.
check_identical() {
        cmp -s "$1" "$2" || fail "$2 is not byte-identical to $1"
}

# ---- JSON helpers -------------------------------------------------------------------------
# A JSON object is flattened once (one python run) into FILE.flat, "key<TAB>value" lines with
# true/false/null/lists as JSON; lookups are then plain awk.

# jflat FILE: (re)build FILE.flat; fails when FILE is not a JSON object.
jflat() {
        python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
if not isinstance(d, dict):
    sys.exit("not a JSON object")
with open(sys.argv[1] + ".flat", "w") as f:
    for k, v in d.items():
        s = json.dumps(v) if isinstance(v, (bool, type(None), list, dict)) else str(v)
        f.write("%s\t%s\n" % (k, s.replace("\n", " ")))
' "$1" || fail "not valid JSON in $1: $(head -c 2000 "$1")"
}

# jget FILE KEY: print one top-level value of a JSON object.
jget() {
        [[ -e "$1.flat" ]] || jflat "$1"
        awk -F'\t' -v k="$2" '$1 == k { print $2; found = 1 } END { exit !found }' "$1.flat" ||
                fail "key '$2' missing in $1: $(head -c 2000 "$1")"
}

# expect_eq WHAT GOT WANT
expect_eq() {
        [[ "$2" == "$3" ]] || fail "$1: got '$2', want '$3'"
}

# ---- oracle -------------------------------------------------------------------------------

# oracle IMG [OUT]: run the independent python reader; JSON goes to OUT (default $T/oracle.json).
oracle() {
        local out=${2:-$T/oracle.json}
        rm -f "$out.flat"
        python3 "$ORACLE" info "$1" --flat "$out.flat" >"$out" || fail "oracle failed on $1"
}

# ora IMG KEY: one value from the oracle.
ora() {
        oracle "$1" "$T/ora.tmp.json"
        jget "$T/ora.tmp.json" "$2"
}

oracle_cmd() {
        python3 "$ORACLE" "$@" || fail "oracle $* failed"
}

# ---- the CLI ------------------------------------------------------------------------------

# run_compact IMG [ARGS...]: runs compact --json; sets RC, stdout in $T/out.json, stderr in $T/err.
run_compact() {
        local img=$1
        shift
        RC=0
        rm -f "$T/out.json.flat"
        "$RECLAIMCTL" compact --image "$img" --json "$@" >"$T/out.json" 2>"$T/err" || RC=$?
}

# expect_rc WANT WHAT: after run_compact/run_inspect.
expect_rc() {
        if [[ $RC -ne $1 ]]; then
                echo "--- stdout:" >&2
                head -c 4000 "$T/out.json" >&2 || true
                echo "--- stderr:" >&2
                head -c 4000 "$T/err" >&2 || true
                fail "$2: exit status $RC, want $1"
        fi
}

# run_inspect IMG: inspect --json; sets RC, output in $T/inspect.json.
run_inspect() {
        RC=0
        rm -f "$T/inspect.json.flat" "$T/out.json.flat"
        "$RECLAIMCTL" inspect "$1" --json >"$T/inspect.json" 2>"$T/err" || RC=$?
        cp "$T/inspect.json" "$T/out.json"
}

# check_compact_json IMG SIZE_BEFORE DRY_RUN: sanity of compact --json output ($T/out.json).
check_compact_json() {
        local img=$1 before=$2 dry=$3 k
        for k in image file_size_before file_size_after clusters_zeroed clusters_moved bytes_moved \
                 duration_ms dry_run; do
                jget "$T/out.json" "$k" >/dev/null
        done
        expect_eq "json image" "$(jget "$T/out.json" image)" "$img"
        expect_eq "json file_size_before" "$(jget "$T/out.json" file_size_before)" "$before"
        expect_eq "json dry_run" "$(jget "$T/out.json" dry_run)" "$dry"
        if [[ $dry == false ]]; then
                expect_eq "json file_size_after (real size)" "$(jget "$T/out.json" file_size_after)" \
                        "$(file_size "$img")"
        fi
        local moved bytes zeroed dur
        moved=$(jget "$T/out.json" clusters_moved)
        bytes=$(jget "$T/out.json" bytes_moved)
        zeroed=$(jget "$T/out.json" clusters_zeroed)
        dur=$(jget "$T/out.json" duration_ms)
        [[ $moved =~ ^[0-9]+$ && $bytes =~ ^[0-9]+$ && $zeroed =~ ^[0-9]+$ && $dur =~ ^[0-9]+$ ]] ||
                fail "json counters must be non-negative integers: moved=$moved bytes=$bytes zeroed=$zeroed duration_ms=$dur"
        if [[ $moved -eq 0 && $bytes -ne 0 ]]; then
                fail "json: clusters_moved 0 but bytes_moved $bytes"
        fi
        if [[ $moved -gt 0 && $bytes -lt $moved ]]; then
                fail "json: clusters_moved $moved but bytes_moved only $bytes"
        fi
}

# compact_verify IMG WANT_DATA [WANT_L2 [WANT_ZEROED]]
#   The standard flow: keep a pristine copy, compact, then assert exit 0, check clean, contents
#   identical (qemu-img compare, backing chain included), file exactly as small as possible
#   (no free cluster at its end, and oracle min_clusters * cluster_size, counted after
#   compaction), JSON sane, and that the data clusters left are exactly WANT_DATA (and L2
#   tables WANT_L2, clusters_zeroed WANT_ZEROED when given; "-" skips one).
#   MIN_KEY=min_clusters_packed in the environment asks for the oracle's smallest size with
#   compressed data counted as its live streams packed end to end (min_clusters_whole: moving
#   whole clusters into holes; see qcow2-oracle.py) instead of min_clusters. MIN_SLACK=N
#   accepts up to N clusters above it (a minimum not reachable in place, explained there).
#   No zero-alloc entry may be left in the active layer (ZERO_ALLOC_LEFT=N in the environment
#   expects N: those that point at clusters a snapshot still reads are kept by design).
#   Leaves the oracle's view of the compacted image in $T/after.json.
compact_verify() {
        local img=$1 want_data=$2 want_l2=${3:--} want_zeroed=${4:--}
        local pristine="$img.pristine" before
        cp "$img" "$pristine"
        before=$(file_size "$img")
        oracle "$img" "$T/before.json"
        run_compact "$img"
        expect_rc 0 "compact $img"
        check_clean "$img"
        check_compare "$pristine" "$img"
        check_compact_json "$img" "$before" false
        oracle "$img" "$T/after.json"
        local size min cs data
        size=$(file_size "$img")
        min=$(jget "$T/after.json" "${MIN_KEY:-min_clusters}")
        cs=$(jget "$T/after.json" cluster_size)
        data=$(jget "$T/after.json" data_clusters)
        expect_eq "data clusters after compaction" "$data" "$want_data"
        if [[ $want_l2 != - ]]; then
                expect_eq "L2 tables after compaction" "$(jget "$T/after.json" l2_tables)" "$want_l2"
        fi
        if [[ $want_zeroed != - ]]; then
                expect_eq "json clusters_zeroed" "$(jget "$T/out.json" clusters_zeroed)" "$want_zeroed"
        fi
        expect_eq "oracle leaked clusters" "$(jget "$T/after.json" leaked_clusters)" 0
        expect_eq "oracle refcount errors" "$(jget "$T/after.json" refcount_errors)" 0
        expect_eq "file size after compaction vs the end of its last cluster in use (free clusters at the end)" \
                "$size" "$(jget "$T/after.json" used_end)"
        if [[ -n ${MIN_SLACK:-} ]]; then
                # the minimum is not reachable in place: at most MIN_SLACK clusters above it
                ((size >= min * cs && size <= (min + MIN_SLACK) * cs)) ||
                        fail "file size after compaction: $size, want ${MIN_KEY:-min_clusters}=$min (+ at most $MIN_SLACK) x $cs"
        else
                expect_eq "file size after compaction (${MIN_KEY:-min_clusters}=$min x $cs)" "$size" $((min * cs))
        fi
        expect_eq "zero-alloc clusters left" "$(jget "$T/after.json" zero_alloc_clusters)" \
                "${ZERO_ALLOC_LEFT:-0}"
        log "$img: $before -> $size bytes ($data data clusters)"
}

# ---- snapshots, bitmaps, compressed clusters ----------------------------------------------

# snapshot_ids IMG: the ids of the internal snapshots, one per line (from the oracle)
snapshot_ids() {
        python3 "$ORACLE" snapshots "$1" | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    print(s["id"])
' || fail "cannot list the snapshots of $1"
}

# views_save IMG DIR: what compaction must leave as it is apart from the active layer: the
#   snapshot list (qemu-img snapshot -l: ids, names, vm sizes, dates, clocks), every
#   snapshot's guest contents (raw, by id), the bitmaps as QEMU sees them (qemu-img info:
#   names, granularity, flags) and their bits (the oracle's digest).
views_save() {
        local img=$1 dir=$2 id ids
        rm -rf "$dir"
        mkdir -p "$dir"
        qemu-img snapshot -l "$img" >"$dir/snapshots.txt" 2>&1 || fail "qemu-img snapshot -l $img"
        ids=$(snapshot_ids "$img")
        for id in $ids; do
                qemu-img convert -f qcow2 -O raw -l "snapshot.id=$id" "$img" "$dir/snap-$id.raw" ||
                        fail "qemu-img convert -l snapshot.id=$id $img"
        done
        qemu-img info --output=json "$img" >"$dir/info.json" || fail "qemu-img info $img"
        python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps(d.get("format-specific", {}).get("data", {}).get("bitmaps", []), sort_keys=True))
' "$dir/info.json" >"$dir/bitmaps-qemu.json" || fail "qemu-img info $img: bad JSON"
        python3 "$ORACLE" bitmaps "$img" | python3 -c '
import json, sys
keep = ("name", "flags", "type", "granularity_bits", "table_size", "digest")
print(json.dumps([{k: b[k] for k in keep} for b in json.load(sys.stdin)], sort_keys=True))
' >"$dir/bitmaps-oracle.json" || fail "oracle: cannot read the bitmaps of $img"
}

# views_check DIR IMG: IMG still shows what views_save stored in DIR.
views_check() {
        local dir=$1 img=$2 f
        views_save "$img" "$T/views.now"
        for f in snapshots.txt bitmaps-qemu.json bitmaps-oracle.json; do
                if ! cmp -s "$dir/$f" "$T/views.now/$f"; then
                        diff "$dir/$f" "$T/views.now/$f" >&2 || true
                        fail "$img: $f changed by compaction"
                fi
        done
        for f in "$dir"/snap-*.raw; do
                [[ -e $f ]] || continue
                [[ -e "$T/views.now/${f##*/}" ]] || fail "$img: snapshot ${f##*/} is gone"
                # (sparse raw files: qemu-img compare skips the holes, cmp would read them)
                qemu-img compare -q -f raw -F raw "$f" "$T/views.now/${f##*/}" ||
                        fail "$img: contents of snapshot ${f##*/} changed by compaction"
        done
}

# compact_verify_views IMG WANT_DATA [WANT_L2 [WANT_ZEROED]]
#   compact_verify, plus: snapshots (list and every snapshot's contents) and bitmaps (list,
#   flags, granularity, bits) unchanged; no host cluster left that a normal entry of any L1
#   tree reads and that is all zeros; no compressed cluster left that inflates to zeros.
compact_verify_views() {
        local img=$1 cz
        views_save "$img" "$T/views.before"
        compact_verify "$@"
        views_check "$T/views.before" "$img"
        expect_eq "all-zero host clusters left (any L1 tree)" \
                "$(jget "$T/after.json" zero_content_host_clusters)" 0
        cz=$(jget "$T/after.json" compressed_zero_entries)
        if [[ $cz != null ]]; then
                expect_eq "compressed all-zero clusters left" "$cz" 0
        fi
}

# bitmap_bits IMG: what QEMU reads out of IMG's bitmaps, as the oracle sees a copy of them that
# qemu-img convert --bitmaps wrote (names, granularity, flags, digest of the bits)
bitmap_bits() {
        rm -f "$T/bitmap-bits.qcow2"
        qemu-img convert -f qcow2 -O qcow2 --bitmaps "$1" "$T/bitmap-bits.qcow2" ||
                fail "qemu-img convert --bitmaps $1"
        python3 "$ORACLE" bitmaps "$T/bitmap-bits.qcow2" | python3 -c '
import json, sys
for b in json.load(sys.stdin):
    print(b["name"], b["granularity_bits"], b["flags"], b["digest"])
' || fail "oracle: bitmaps of a copy of $1"
}
