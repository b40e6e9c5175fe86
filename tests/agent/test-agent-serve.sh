#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `reclaim-agent serve` against fake-host's serve scenario (see fake-host.c): HelloAck with a
# policy, Ping/Pong, a request clamped to the policy with Progress at most once a second, a
# refused mode, Cancel of a slow fill with a second request waiting on it, the host going
# away and flapping (the agent's CPU time must stay small: no spinning), reconnection, and
# SIGTERM during a fill. Then: the agent exited 0 and left nothing behind.
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}
FAKE_HOST=${FAKE_HOST:-$BUILDDIR/tests/agent/fake-host}
[[ -x "$RECLAIM_AGENT" ]] || fail "reclaim-agent not found: '$RECLAIM_AGENT'"
[[ -x "$FAKE_HOST" ]] || fail "fake-host not found: '$FAKE_HOST'"

# shellcheck disable=SC2119 # make_fs takes mount options, not the script's arguments
make_fs
SOCK="$T/host.sock"
listing0=$(ls -A "$MNT")
free0=$(free_bytes)
: >"$T/agent.conf"

# The host first: the agent would find nobody and back off (that is tested later).
"$FAKE_HOST" serve --socket "$SOCK" --mount "$MNT" --agent-pid-file "$T/agent.pid" >"$T/host.out" 2>&1 &
HOST=$!
BG_PIDS+=("$HOST")
for ((i = 0; i < 100; i++)); do
        [[ -S "$SOCK" ]] && break
        sleep 0.05
done

# Local settings that do not limit the host: no rate cap, no reserve.
"$RECLAIM_AGENT" serve --config "$T/agent.conf" --socket "$SOCK" --filesystem "$MNT" \
        --rate 0 --reserve 0 --control-socket "$T/serve.sock" >"$T/agent.out" 2>"$T/agent.err" &
AGENT=$!
BG_PIDS+=("$AGENT")
echo "$AGENT" >"$T/agent.pid"

RC=0
wait "$HOST" || RC=$?
sed -n 's/^# /# host: /p' "$T/host.out"
[[ $RC -eq 0 ]] || {
        echo "--- agent log:" >&2
        cat "$T/agent.err" >&2
        fail "fake-host: $(grep -v '^#' "$T/host.out" | tail -5)"
}

# fake-host ended with SIGTERM to the agent: it must exit 0 promptly.
for ((i = 0; i < 100; i++)); do
        kill -0 "$AGENT" 2>/dev/null || break
        sleep 0.05
done
RC=0
wait "$AGENT" || RC=$?
BG_PIDS=()
[[ $RC -eq 0 ]] || fail "serve exited with $RC after SIGTERM: $(tail -5 "$T/agent.err")"
grep -q "Got Terminated" "$T/agent.err" || fail "no log line about SIGTERM: $(tail -5 "$T/agent.err")"

[[ "$(ls -A "$MNT")" == "$listing0" ]] || fail "files left behind: $(ls -A "$MNT")"
wait_free_at_least $((free0 - 2 * MiB)) 2
log "ok"
