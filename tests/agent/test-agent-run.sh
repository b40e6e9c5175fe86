#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `reclaim-agent run` on a loop-mounted filesystem, with fake-host as the host end:
#  - zero-fill, then the Report over the socket (Hello checked, per-filesystem method,
#    outcome and bytes), and the --json summary agrees;
#  - FITRIM in mode auto (loop devices pass discards);
#  - no host listening: the job is still done, exit 0, report_sent false;
#  - --exclude, --dry-run, a --filesystem that is not a local filesystem, one that does not
#    exist (exit 1), a config file with filesystem/exclude overridden on the command line.
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}
FAKE_HOST=${FAKE_HOST:-$BUILDDIR/tests/agent/fake-host}
[[ -x "$RECLAIM_AGENT" ]] || fail "reclaim-agent not found: '$RECLAIM_AGENT'"
[[ -x "$FAKE_HOST" ]] || fail "fake-host not found: '$FAKE_HOST'"

# shellcheck disable=SC2119 # make_fs takes mount options, not the script's arguments
make_fs
SOCK="$T/host.sock"
CONF="$T/agent.conf"
: >"$CONF"

# agent ARGS...: run the agent (its own config file, never /etc's); stdout in $T/out,
# stderr in $T/err, status in RC.
agent() {
        RC=0
        "$RECLAIM_AGENT" --config "$CONF" "$@" >"$T/out" 2>"$T/err" || RC=$?
}

# host_start: fake-host "report" in the background; waits for its socket.
host_start() {
        "$FAKE_HOST" report --socket "$SOCK" >"$T/host.out" 2>&1 &
        HOST=$!
        BG_PIDS+=("$HOST")
        local i
        for ((i = 0; i < 100; i++)); do
                [[ -S "$SOCK" ]] && return 0
                sleep 0.05
        done
        fail "fake-host did not start: $(cat "$T/host.out")"
}

host_wait() {
        local rc=0
        wait "$HOST" || rc=$?
        BG_PIDS=()
        [[ $rc -eq 0 ]] || fail "fake-host failed ($rc): $(cat "$T/host.out")"
}

# hget KEY: one value of fake-host's output.
hget() {
        awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); print; found = 1 } END { exit !found }' "$T/host.out" ||
                fail "key '$1' missing in fake-host's output: $(cat "$T/host.out")"
}

# jget EXPR: a value from the --json output (python expression over `j`).
jget() {
        python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$T/out" "$1" ||
                fail "cannot read '$1' from the JSON output: $(cat "$T/out")"
}

listing0=$(ls -A "$MNT")
free0=$(free_bytes)

# 1. zero-fill and a Report to the host
host_start
agent run --socket "$SOCK" --mode zero --rate 0 --reserve 0 --filesystem "$MNT" --json
expect_rc 0 "run --mode zero"
host_wait
log "$(grep -v '^#' "$T/host.out" | tr '\n' ' ')"
[[ $(hget hello.protocol_version) -eq 65536 ]] || fail "Hello protocol version $(hget hello.protocol_version)"
[[ $(hget hello.capabilities) == zero, ]] || fail "Hello capabilities in mode zero: $(hget hello.capabilities)"
[[ $(hget report.filesystems) -eq 1 ]] || fail "report has $(hget report.filesystems) filesystems"
[[ $(hget report.fs0.mount_point) == "$MNT" ]] || fail "report is about $(hget report.fs0.mount_point)"
[[ $(hget report.fs0.fstype) == "$FSTYPE" ]] || fail "fstype $(hget report.fs0.fstype)"
[[ $(hget report.fs0.device) == "$LOOP" ]] || fail "device $(hget report.fs0.device), want $LOOP"
[[ $(hget report.fs0.method) == zero ]] || fail "method $(hget report.fs0.method)"
[[ $(hget report.fs0.outcome) == ok ]] || fail "outcome $(hget report.fs0.outcome)"
[[ $(hget report.mode) -eq 3 ]] || fail "report mode $(hget report.mode), want 3 (zero)"
bytes=$(hget report.fs0.bytes)
before=$(hget report.fs0.free_bytes_before)
[[ $bytes -ge $((before * 9 / 10)) && $bytes -le $before ]] ||
        fail "zeroed $(mib "$bytes") of $(mib "$before") free"
[[ $(jget 'j["report_sent"]') == True ]] || fail "JSON says the report was not sent"
[[ $(jget 'j["filesystems"][0]["bytes"]') -eq $bytes ]] || fail "JSON and report disagree on bytes"
[[ $(jget 'j["filesystems"][0]["outcome"]') == ok ]] || fail "JSON outcome"
[[ "$(ls -A "$MNT")" == "$listing0" ]] || fail "files left behind: $(ls -A "$MNT")"
wait_free_at_least $((free0 - 2 * MiB)) 2
log "zero-fill: $(mib "$bytes") zeroed, reported to the host"

# 2. mode auto: the loop device passes discards, so FITRIM
host_start
agent run --socket "$SOCK" --mode auto --filesystem "$MNT" --json
expect_rc 0 "run --mode auto"
host_wait
[[ $(hget hello.capabilities) == trim,zero, ]] || fail "Hello capabilities in mode auto: $(hget hello.capabilities)"
[[ $(hget report.fs0.method) == trim ]] || fail "mode auto: method $(hget report.fs0.method), want trim"
[[ $(hget report.fs0.outcome) == ok ]] || fail "mode auto: outcome $(hget report.fs0.outcome)"
log "trim: $(mib "$(hget report.fs0.bytes)") trimmed"

# 3. no host listening: the work is done anyway, exit 0 within the bounded wait
rm -f "$SOCK"
agent run --socket "$SOCK" --mode zero --rate 0 --reserve 0 --filesystem "$MNT" --json
expect_rc 0 "run without a host"
[[ $(jget 'j["report_sent"]') == False ]] || fail "report_sent without a host"
[[ $(jget 'j["filesystems"][0]["outcome"]') == ok ]] || fail "no host: outcome"
[[ $(jget 'j["filesystems"][0]["bytes"]') -gt $((100 * MiB)) ]] || fail "no host: nothing zeroed"
grep -q "the report is not sent" "$T/err" || fail "no log line about the unsent report: $(cat "$T/err")"
log "no host: done, exit 0"

# 4. --exclude wins over --filesystem
agent run --socket "$SOCK" --mode zero --filesystem "$MNT" --exclude "$MNT" --json
expect_rc 0 "run --exclude"
[[ $(jget 'len(j["filesystems"])') -eq 0 ]] || fail "--exclude: $(cat "$T/out")"
# ... and an exclude given as a path inside the filesystem
mkdir -p "$MNT/sub"
agent list --json --filesystem "$MNT" --exclude "$MNT/sub"
expect_rc 0 "list --exclude"
[[ $(jget 'len(j["filesystems"])') -eq 0 ]] || fail "--exclude of a path inside: $(cat "$T/out")"
rmdir "$MNT/sub"
log "exclude ok"

# 5. --dry-run: the plan, no writes, no report
free1=$(free_bytes)
agent run --socket "$SOCK" --mode zero --reserve 0 --filesystem "$MNT" --dry-run --json
expect_rc 0 "run --dry-run"
[[ $(jget 'j["dry_run"]') == True ]] || fail "dry_run flag"
[[ $(jget 'j["filesystems"][0]["method"]') == zero ]] || fail "dry run method"
[[ $(jget 'j["filesystems"][0]["bytes"]') -gt $((100 * MiB)) ]] || fail "dry run bytes"
[[ $(jget 'j["report_sent"]') == False ]] || fail "a dry run sent a report"
[[ $(free_bytes) -ge $((free1 - MiB)) ]] || fail "a dry run used space"
# the human line says what would happen, not what happened
agent run --socket "$SOCK" --mode zero --reserve 0 --filesystem "$MNT" --dry-run
expect_rc 0 "run --dry-run (text)"
grep -q "would zero-fill" "$T/err" || fail "dry run text: $(cat "$T/err")"
grep -q "zero-filled" "$T/err" && fail "a dry run says zero-filled: $(cat "$T/err")"
log "dry run ok"

# 6. what is not a local filesystem is skipped with a reason; what does not exist fails
agent run --socket "$SOCK" --filesystem /proc --json
expect_rc 0 "run --filesystem /proc"
[[ $(jget 'j["filesystems"][0]["outcome"]') == unsupported ]] || fail "/proc: $(cat "$T/out")"
[[ $(jget 'j["filesystems"][0]["method"]') == skipped ]] || fail "/proc method"
agent run --socket "$SOCK" --filesystem "$T/nonexistent" --json
expect_rc 1 "run --filesystem NONEXISTENT"
[[ $(jget 'j["filesystems"][0]["outcome"]') == error ]] || fail "nonexistent: $(cat "$T/out")"
[[ $(jget 'j["filesystems"][0]["errno"]') -eq 2 ]] || fail "nonexistent: errno"
log "unsupported and missing filesystems ok"

# 7. the config file's filesystem list is replaced by --filesystem; its excludes stay
printf '[agent]\nmode = zero\nreserve = 0\nrate = 0\nfilesystem = /proc\n' >"$CONF"
agent list --json --filesystem "$MNT"
expect_rc 0 "list with config"
[[ $(jget 'len(j["filesystems"])') -eq 1 && $(jget 'j["filesystems"][0]["mount_point"]') == "$MNT" ]] ||
        fail "--filesystem did not replace the config's list: $(cat "$T/out")"
[[ $(jget 'j["mode"]') == zero && $(jget 'j["filesystems"][0]["action"]') == zero ]] ||
        fail "config mode not applied: $(cat "$T/out")"
printf '[agent]\nexclude = %s\n' "$MNT" >"$CONF"
agent list --json --filesystem "$MNT"
[[ $(jget 'len(j["filesystems"])') -eq 0 ]] || fail "the config's exclude was dropped: $(cat "$T/out")"
log "config merge ok"
log "ok"
