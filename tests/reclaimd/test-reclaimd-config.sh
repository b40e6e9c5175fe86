#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A bad reclaimd.conf line ([daemon] or [thresholds]) is reported as FILE:LINE with exit
# status 2; a damaged state file is logged and rebuilt, never fatal.
# shellcheck source=tests/reclaimd/functions.sh
source "$(dirname "$0")/functions.sh"

mkvm vm-101

# 1. bad lines
check_bad_conf() {
        local line=$1 text=$2 rc=0
        printf '[daemon]\nmax_concurrent = 2\n%s\n' "$text" >"$T/bad.conf"
        "$RECLAIMD" --config "$T/bad.conf" --root "$T/root" --state-dir "$T/state" \
                >"$T/bad.log" 2>&1 || rc=$?
        [[ $rc -eq 2 ]] || fail "'$text': exit $rc, expected 2"
        grep -q "$T/bad.conf:$line:" "$T/bad.log" || fail "'$text': no FILE:LINE in: $(cat "$T/bad.log")"
}
check_bad_conf 3 "max_concurrent = 0"
check_bad_conf 3 "min_gain = lots"
check_bad_conf 3 "no_such_key = 1"
check_bad_conf 3 "job_timeout = -5"
check_bad_conf 4 $'[thresholds]\nover_allocation_ratio = lots'
check_bad_conf 4 $'[thresholds]\nno_such_threshold = 1'
rc=0
"$RECLAIMD" --config "$T/none.conf" --root "$T/root" >"$T/bad.log" 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "a missing --config file: exit $rc, expected 2"
rc=0
"$RECLAIMD" --no-such-option >"$T/bad.log" 2>&1 || rc=$?
[[ $rc -eq 2 ]] || fail "a bad option: exit $rc, expected 2"

# 2. a damaged state file is rebuilt
mkdir -p "$T/state/vms"
printf '{"vm": "vm-101", "disks": [ {"image": ' >"$T/state/vms/vm-101.json"
# (and the [thresholds] section reclaimctl status reads is accepted)
conf "min_gain = 1M" "[thresholds]" "over_allocation_ratio = 3" "min_free_percent = 10"
daemon_start
valid_state() {
        python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/state/vms/vm-101.json" \
                2>/dev/null
}
wait_for "the state file is rebuilt" valid_state
grep -q "damaged state file" "$T/reclaimd.log" || fail "the damage was not logged"
[[ "$(state_get vm-101 's["disks"][0]["image"]')" == "$(img_of vm-101)" ]] ||
        fail "the rebuilt state does not name the disk"
daemon_stop
