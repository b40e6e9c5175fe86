#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaim-agent's command line and configuration file, end to end: a bad line in the file is
# exit 2 with FILE:LINE in the message (bad value, unknown key, syntax, unknown section), a
# missing --config file is exit 2, bad options are exit 2, the command line overrides the
# file, --exclude drops a filesystem from `list`. Runs `list` only: no root, writes nothing.
set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}

fail() {
        echo "FAIL [test-agent-config]: $*" >&2
        exit 1
}

[[ -x "$RECLAIM_AGENT" ]] || fail "reclaim-agent not found: '$RECLAIM_AGENT'"
T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-agent-config.XXXXXX")
trap 'rm -rf "$T"' EXIT
CONF="$T/agent.conf"

# agent ARGS...: output in $T/out and $T/err, status in RC.
agent() {
        RC=0
        "$RECLAIM_AGENT" "$@" >"$T/out" 2>"$T/err" || RC=$?
}

# bad_config WANT_MESSAGE CONTENT: list must exit 2 and say WANT_MESSAGE (a fixed string).
bad_config() {
        printf '%b' "$2" >"$CONF"
        agent list --config "$CONF"
        [[ $RC -eq 2 ]] || fail "config '$2': exit $RC, want 2 ($(cat "$T/err"))"
        grep -qF -- "$1" "$T/err" || fail "config '$2': message '$(cat "$T/err")', want '$1'"
        echo "# $(cat "$T/err")"
}

bad_config "$CONF:2: invalid value 'fast' for 'mode': expected auto, trim or zero" '[agent]\nmode = fast\n'
bad_config "$CONF:3: unknown key 'colour'" '[agent]\nmode = auto\ncolour = red\n'
bad_config "$CONF:4: invalid value '5Q' for 'rate'" '; comment\n[agent]\n\nrate = 5Q\n'
bad_config "$CONF:2: invalid value '200%' for 'reserve'" '[agent]\nreserve = 200%\n'
bad_config "$CONF:2: syntax error" '[agent]\nno equals sign here\n'
bad_config "$CONF:1: unknown section '[daemon]'" '[daemon]\nmode = auto\n'
bad_config "$CONF:1: key 'mode' outside the [agent] section" 'mode = auto\n'
bad_config "$CONF:2: invalid value 'home' for 'filesystem': expected an absolute path" '[agent]\nfilesystem = home\n'

# a missing --config is an error; the default file may be missing
agent list --config "$T/nonexistent.conf"
[[ $RC -eq 2 ]] || fail "missing --config: exit $RC, want 2"
grep -qF "$T/nonexistent.conf" "$T/err" || fail "missing --config: message '$(cat "$T/err")'"

# bad options and verbs: exit 2, a short message, no help text
for args in "run --rate fast" "run --mode quick" "run --reserve 10%,20%" "list --filesystem rel" \
        "frobnicate" "" "run extra" "run --no-such-option"; do
        # shellcheck disable=SC2086
        agent $args --config "$CONF"
        [[ $RC -eq 2 ]] || fail "'$args': exit $RC, want 2"
        [[ $(wc -l <"$T/err") -le 2 ]] || fail "'$args': too much on stderr: $(cat "$T/err")"
done
printf '[agent]\n' >"$CONF"
agent --help
if [[ $RC -ne 0 ]] || ! grep -q "Usage: reclaim-agent run|serve|list" "$T/out"; then fail "--help"; fi
agent --version
if [[ $RC -ne 0 ]] || ! grep -q "^reclaim-agent " "$T/out"; then fail "--version"; fi

# the command line overrides the file
printf '[agent]\nmode = trim ; inline comment\n' >"$CONF"
agent list --json --config "$CONF"
[[ $RC -eq 0 ]] || fail "list: exit $RC: $(cat "$T/err")"
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["mode"] == "trim"' "$T/out" ||
        fail "config mode not applied: $(cat "$T/out")"
agent list --json --config "$CONF" --mode zero
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["mode"] == "zero"' "$T/out" ||
        fail "--mode did not override the file: $(cat "$T/out")"

# --exclude: the root filesystem, by its mount point and by a path on it
agent list --json --config "$CONF" --filesystem / --exclude /
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["filesystems"] == []' "$T/out" ||
        fail "--exclude /: $(cat "$T/out")"
# (only meaningful where / is a filesystem the agent lists)
agent list --json --config "$CONF" --filesystem /
if python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); assert j["filesystems"][0]["classification"] != "unsupported" or j["filesystems"][0]["reason"] != "not a local, block-backed filesystem"' "$T/out" 2>/dev/null; then
        agent list --json --config "$CONF" --filesystem / --exclude /etc
        python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["filesystems"] == []' "$T/out" ||
                fail "--exclude /etc (on /): $(cat "$T/out")"
fi
echo "# ok"
