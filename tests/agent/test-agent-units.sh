#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The agent's systemd units pass `systemd-analyze verify` (with ExecStart= pointing at the
# binary just built, since the installed path does not exist here), and the generated ones
# got @bindir@ substituted.
set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}

fail() {
        echo "FAIL [test-agent-units]: $*" >&2
        exit 1
}
command -v systemd-analyze >/dev/null 2>&1 || {
        echo "SKIP: no systemd-analyze"
        exit 77
}

T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-agent-units.XXXXXX")
trap 'rm -rf "$T"' EXIT

for u in reclaim-agent.service reclaim-agent-serve.service; do
        [[ -f "$BUILDDIR/units/$u" ]] || fail "$u was not generated"
        grep -q '@bindir@' "$BUILDDIR/units/$u" && fail "$u: @bindir@ not substituted"
        grep -q '^ExecStart=/.*/reclaim-agent ' "$BUILDDIR/units/$u" || fail "$u: ExecStart"
        sed "s|^ExecStart=[^ ]*|ExecStart=$RECLAIM_AGENT|" "$BUILDDIR/units/$u" >"$T/$u"
done
cp "$SRCDIR/units/reclaim-agent.timer" "$T/"
grep -q 'ENV{SYSTEMD_WANTS}+="reclaim-agent-serve.service"' "$SRCDIR/units/90-reclaim-agent.rules" ||
        fail "the udev rule does not start reclaim-agent-serve.service"

out=$(systemd-analyze verify --man=no "$T"/reclaim-agent*.service "$T/reclaim-agent.timer" 2>&1) ||
        fail "systemd-analyze verify: $out"
# Warnings are printed but do not change the exit status: none allowed.
[[ -z "$out" ]] || fail "systemd-analyze verify: $out"
echo "# ok"
