#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The host's systemd units (reclaimd.service, reclaim-compact.service + .timer) pass
# `systemd-analyze verify` with ExecStart= pointing at the binaries just built, with @bindir@
# substituted; the D-Bus policy is well-formed XML that dbus-daemon accepts.
set -euo pipefail

TESTDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRCDIR=${SRCDIR:-$(cd "$TESTDIR/../.." && pwd)}
BUILDDIR=${BUILDDIR:-$SRCDIR/build}

fail() {
        echo "FAIL [test-reclaimd-units]: $*" >&2
        exit 1
}
command -v systemd-analyze >/dev/null 2>&1 || {
        echo "SKIP: no systemd-analyze"
        exit 77
}

T=$(mktemp -d "${TMPDIR:-/tmp}/reclaimd-units.XXXXXX")
trap 'rm -rf "$T"' EXIT

for u in reclaimd.service reclaim-compact.service; do
        [[ -f "$BUILDDIR/units/$u" ]] || fail "$u was not generated"
        grep -q '@bindir@' "$BUILDDIR/units/$u" && fail "$u: @bindir@ not substituted"
        grep -q '^ExecStart=/' "$BUILDDIR/units/$u" || fail "$u: ExecStart"
        sed -e "s|^ExecStart=[^ ]*/reclaimd|ExecStart=$BUILDDIR/host/reclaimd/reclaimd|" \
                -e "s|^ExecStart=[^ ]*/reclaimctl|ExecStart=$BUILDDIR/host/reclaimctl/reclaimctl|" \
                "$BUILDDIR/units/$u" >"$T/$u"
done
cp "$SRCDIR/units/reclaim-compact.timer" "$T/"
grep -q '^ExecStart=.*reclaimctl compact --all$' "$T/reclaim-compact.service" ||
        fail "reclaim-compact.service does not run compact --all"

out=$(systemd-analyze verify --man=no "$T/reclaimd.service" "$T/reclaim-compact.service" \
        "$T/reclaim-compact.timer" 2>&1) || fail "systemd-analyze verify: $out"
[[ -z "$out" ]] || fail "systemd-analyze verify: $out"

if command -v systemd-tmpfiles >/dev/null 2>&1; then
        # --dry-run does not exist in Debian 12's systemd: create under a scratch root
        mkdir -p "$T/tmproot"
        out=$(systemd-tmpfiles --create --root="$T/tmproot" "$SRCDIR/units/reclaim.tmpfiles" 2>&1) ||
                fail "systemd-tmpfiles: $out"
        [[ -d "$T/tmproot/run/reclaim" && -d "$T/tmproot/var/lib/reclaim" ]] ||
                fail "tmpfiles did not create /run/reclaim and /var/lib/reclaim"
        [[ "$(stat -c %a "$T/tmproot/var/lib/reclaim")" == 700 ]] || fail "/var/lib/reclaim mode"
fi

if command -v dbus-daemon >/dev/null 2>&1; then
        cat >"$T/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$T/bus</listen>
  <include>$SRCDIR/units/org.reclaim.Manager1.conf</include>
</busconfig>
CONF
        out=$(timeout 10 dbus-daemon --config-file="$T/bus.conf" --print-address --fork \
                --print-pid 2>&1) || fail "dbus-daemon refused the policy: $out"
        kill "$(echo "$out" | tail -n1)" 2>/dev/null || true
fi
echo "# ok"
