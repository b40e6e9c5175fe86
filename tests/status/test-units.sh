#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaim-metrics.service and .timer pass `systemd-analyze verify` (ExecStart= pointed at the
# binary just built), @bindir@ is substituted, meson installs both, and the service's command
# line is one reclaimctl accepts.
set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}
RECLAIMCTL=${RECLAIMCTL:-$BUILDDIR/host/reclaimctl/reclaimctl}

fail() {
        echo "FAIL [test-units]: $*" >&2
        exit 1
}
command -v systemd-analyze >/dev/null 2>&1 || {
        echo "SKIP: no systemd-analyze"
        exit 77
}

T=$(mktemp -d "${TMPDIR:-/tmp}/reclaim-metrics-units.XXXXXX")
trap 'rm -rf "$T"' EXIT

u=reclaim-metrics.service
[[ -f "$BUILDDIR/units/$u" ]] || fail "$u was not generated"
grep -q '@bindir@' "$BUILDDIR/units/$u" && fail "$u: @bindir@ not substituted"
line=$(grep '^ExecStart=' "$BUILDDIR/units/$u")
[[ $line =~ ^ExecStart=/.*/reclaimctl\ metrics\ --textfile\ /var/lib/prometheus/node-exporter$ ]] ||
        fail "$u: ExecStart: $line"
sed "s|^ExecStart=[^ ]*|ExecStart=$RECLAIMCTL|" "$BUILDDIR/units/$u" >"$T/$u"
cp "$SRCDIR/units/reclaim-metrics.timer" "$T/"

out=$(systemd-analyze verify --man=no "$T/$u" "$T/reclaim-metrics.timer" 2>&1) ||
        fail "systemd-analyze verify: $out"
[[ -z "$out" ]] || fail "systemd-analyze verify: $out"

# the installed set (meson install --destdir)
meson install -C "$BUILDDIR" --destdir "$T/dest" --no-rebuild >"$T/install.log" 2>&1 ||
        fail "meson install: $(tail -20 "$T/install.log")"
for f in reclaim-metrics.service reclaim-metrics.timer; do
        [[ -n $(find "$T/dest" -name "$f" -path '*/system/*') ]] || fail "$f is not installed"
done

# the command line works (against an empty configuration)
mkdir -p "$T/etc/vms.d" "$T/textfile"
"$RECLAIMCTL" --config-dir "$T/etc" --state-dir "$T/state" metrics --textfile "$T/textfile" ||
        fail "reclaimctl metrics --textfile"
[[ -s "$T/textfile/reclaim.prom" ]] || fail "no reclaim.prom written"
echo "# ok"
