#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# (e) FITRIM on a loop device, which passes discards: the driver reports "done" with trimmed
# bytes > 0, and discovery on the live mount table classifies the filesystem as "trim".
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

make_fs
dev=$(basename "$LOOP")
max=$(cat "/sys/block/$dev/queue/discard_max_bytes" 2>/dev/null || echo 0)
[[ $max -gt 0 ]] || skip "$LOOP does not pass discards"

head -c $((32 * MiB)) /dev/urandom >"$MNT/junk"
sync -f "$MNT"
rm "$MNT/junk"
sync -f "$MNT"

zf list
expect_rc 0 "list"
line=$(awk -F'\t' -v m="mount=$MNT" '$1 == m' "$T/out")
[[ -n "$line" ]] || fail "$MNT not discovered: $(cat "$T/out")"
log "$line"
grep -q $'\tmethod=trim\t' <<<"$line" || fail "$MNT not classified as trim"
grep -q $'\tfstype='"$FSTYPE"$'\t' <<<"$line" || fail "wrong fstype"

zf trim "$MNT"
expect_rc 0 "trim"
log "$(tr '\n' ' ' <"$T/out")"
[[ $(get result) == "done" ]] || fail "result $(get result), want done"
[[ $(get trimmed) -gt 0 ]] || fail "trimmed 0 bytes"
log "ok"
