#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Command-line errors exit 2, a missing file exits 1, and nothing is written.
source "$(dirname "$0")/functions.sh"

# rc_of CMD...: run, print the exit status
rc_of() {
        local rc=0
        "$@" >"$T/out" 2>"$T/err" </dev/null || rc=$?
        echo $rc
}

mkimg "$T/a.qcow2" 64M
qio "$T/a.qcow2" "write -P 0 0 1M" "write -P 0x51 1M 1M"
cp "$T/a.qcow2" "$T/a.orig"

expect_eq "no arguments" "$(rc_of "$RECLAIMCTL")" 2
expect_eq "unknown command" "$(rc_of "$RECLAIMCTL" frobnicate)" 2
expect_eq "compact without arguments" "$(rc_of "$RECLAIMCTL" compact)" 2
expect_eq "compact --image without a value" "$(rc_of "$RECLAIMCTL" compact --image)" 2
expect_eq "compact with an unknown option" \
        "$(rc_of "$RECLAIMCTL" compact --image "$T/a.qcow2" --no-such-option)" 2
expect_eq "inspect without an image" "$(rc_of "$RECLAIMCTL" inspect)" 2
check_identical "$T/a.orig" "$T/a.qcow2"

expect_eq "compact of a missing file" "$(rc_of "$RECLAIMCTL" compact --image "$T/missing.qcow2")" 1
expect_eq "inspect of a missing file" "$(rc_of "$RECLAIMCTL" inspect "$T/missing.qcow2")" 1
[[ ! -e "$T/missing.qcow2" ]] || fail "compact created the missing file"
[[ -s "$T/err" ]] || fail "no error message for a missing file"

# --help works
expect_eq "--help" "$(rc_of "$RECLAIMCTL" --help)" 0
