#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# (d) A fill that is stopped leaves nothing: SIGTERM cancels it cleanly (outcome cancelled);
# SIGKILL mid-fill, with O_TMPFILE and with the named-and-unlinked fallback, leaves no file,
# and the free space comes back within two seconds.
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

make_fs
listing0=$(ls -A "$MNT")
free0=$(free_bytes)
slack=$((2 * MiB))

# start_fill ARGS...: a slow fill in the background; returns once it has written 24 MiB.
start_fill() {
        "$ZEROFILL_TOOL" zero "$MNT" --reserve 0 --rate 30M --progress "$@" >"$T/out" 2>"$T/err" &
        FILL=$!
        BG_PIDS+=("$FILL")
        local i
        for ((i = 0; i < 200; i++)); do
                # the driver's progress lines, not df: btrfs's statfs lags until a commit
                [[ $(awk -F'[ =]' '/^progress/ { b = $3 } END { print b + 0 }' "$T/out" 2>/dev/null) -ge $((24 * MiB)) ]] &&
                        return 0
                kill -0 "$FILL" 2>/dev/null || fail "the fill ended early: $(cat "$T/out" "$T/err")"
                sleep 0.05
        done
        fail "the fill did not get going"
}

check_clean() {
        [[ "$(ls -A "$MNT")" == "$listing0" ]] || fail "$1: files left behind: $(ls -A "$MNT")"
        wait_free_at_least $((free0 - slack)) 2
        log "$1: nothing left, free space back"
}

# SIGTERM: the flag is seen between chunks; the file is flushed and released.
start_fill
kill -TERM "$FILL"
RC=0
wait "$FILL" || RC=$?
BG_PIDS=()
expect_rc 0 "fill after SIGTERM"
[[ $(get outcome) == cancelled ]] || fail "outcome $(get outcome) after SIGTERM, want cancelled"
check_clean "SIGTERM"

# SIGKILL: the kernel frees the unnamed file.
for mode in tmpfile named; do
        if [[ $mode == named ]]; then
                start_fill --no-tmpfile
        else
                start_fill
        fi
        kill -KILL "$FILL"
        wait "$FILL" 2>/dev/null || true
        BG_PIDS=()
        check_clean "SIGKILL ($mode)"
done
log "ok"
