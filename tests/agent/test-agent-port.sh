#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `reclaim-agent serve --port`: the character-device path of the channel, with a pty standing
# in for the virtio-serial port (fake-host's port scenario). Hello, HelloAck and Ping/Pong go
# over it; then the host end goes away for good, the agent's fd reports POLLHUP for ever (as
# a virtio port does while no host is connected) and the agent must neither spin nor die.
# Needs no root and no filesystem.
set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}
FAKE_HOST=${FAKE_HOST:-$BUILDDIR/tests/agent/fake-host}

fail() {
        echo "FAIL [test-agent-port]: $*" >&2
        exit 1
}

[[ -x "$RECLAIM_AGENT" ]] || fail "reclaim-agent not found: '$RECLAIM_AGENT'"
[[ -x "$FAKE_HOST" ]] || fail "fake-host not found: '$FAKE_HOST'"
[[ -c /dev/ptmx ]] || {
        echo "SKIP: no /dev/ptmx"
        exit 77
}

T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-agent-port.XXXXXX")
HOST=''
AGENT=''
cleanup() {
        local rc=$?
        set +e
        [[ -n "$HOST" ]] && kill -KILL "$HOST" 2>/dev/null
        [[ -n "$AGENT" ]] && kill -KILL "$AGENT" 2>/dev/null
        wait 2>/dev/null
        rm -rf "$T"
        exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM

PORT="$T/org.reclaim.agent.0"
"$FAKE_HOST" port --pty "$PORT" --agent-pid-file "$T/agent.pid" >"$T/host.out" 2>&1 &
HOST=$!
for ((i = 0; i < 100; i++)); do
        [[ -L "$PORT" ]] && break
        sleep 0.05
done
[[ -L "$PORT" ]] || fail "fake-host did not create the port: $(cat "$T/host.out")"

: >"$T/agent.conf"
"$RECLAIM_AGENT" serve --config "$T/agent.conf" --port "$PORT" --filesystem /nonexistent \
        --control-socket "$T/serve.sock" \
        >"$T/agent.out" 2>"$T/agent.err" &
AGENT=$!
echo "$AGENT" >"$T/agent.pid"

RC=0
wait "$HOST" || RC=$?
HOST=''
sed -n 's/^# /# host: /p' "$T/host.out"
[[ $RC -eq 0 ]] || {
        echo "--- agent log:" >&2
        cat "$T/agent.err" >&2
        fail "fake-host: $(grep -v '^#' "$T/host.out" | tail -5)"
}

kill -TERM "$AGENT"
RC=0
wait "$AGENT" || RC=$?
AGENT=''
[[ $RC -eq 0 ]] || fail "serve exited with $RC after SIGTERM: $(tail -5 "$T/agent.err")"
echo "# ok"
