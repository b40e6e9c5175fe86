#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# (c) The rate limit: --rate 20M over ~5 seconds averages 20 MiB/s within 10%. The driver
# measures bytes and time itself (start of the call to the last chunk): a ratio, not a
# wall-clock bound.
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

make_fs
rate=$((20 * MiB))
zf zero "$MNT" --reserve 0 --rate 20M --max-bytes 100M
expect_rc 0 "zero-fill"
log "$(tr '\n' ' ' <"$T/out")"
[[ $(get outcome) == ok ]] || fail "outcome $(get outcome)"
[[ $(get bytes_zeroed) -eq $((100 * MiB)) ]] || fail "zeroed $(get bytes_zeroed), want 100 MiB"
measured=$(get measured_rate)
log "measured $(mib "$measured")/s, want $(mib $rate)/s +-10%"
awk -v m="$measured" -v r="$rate" 'BEGIN { exit !(m >= 0.9 * r && m <= 1.1 * r) }' ||
        fail "measured rate $(mib "$measured")/s is not within 10% of $(mib $rate)/s"
# and the whole run, release included, is not faster than the rate either
dur=$(get duration_ns)
[[ $dur -ge $((100 * MiB * 1000000000 / rate * 95 / 100)) ]] || fail "run took only ${dur} ns"
log "ok"
