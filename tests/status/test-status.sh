#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaimctl status/metrics on a fixture host (--root: a Proxmox VM, a vms.d VM, a libvirt
# domain) whose images live on a loop-mounted ext4 of known size, plus one image on another
# filesystem. Checked against statvfs, stat, qemu-img info and the independent oracle:
# capacity, used, free, the sums, the over-allocation ratio, growth and shortfall, the
# reclaimable estimate (metadata + pending guest report from reclaimd's state file), the
# last compaction; thresholds and --check exits; images held by qemu-nbd and by a writing
# qemu-io (dirty, lazy refcounts) are read without taking their locks and stay untouched;
# metrics pass promtool, --textfile writes atomically; status --scan and its cache; a qcow2
# image on a block device; the registry's own fixture host (tests/registry/fixtures/host)
# with real images; metadata-only reads (strace). Needs root (mount).
source "$(dirname "$0")/../integration/functions.sh"
requires qemu-nbd mkfs.ext4 mount umount mkfifo

if [[ $EUID -ne 0 ]]; then
        echo "SKIP [$TEST_NAME]: needs root (loop mount)"
        exit 77
fi

R=$T/root
MNT=$R/var/lib/vz
CS=65536

status_cleanup() {
        local rc=$? p
        # errexit would end this handler at the first failing command (the "(exit $rc)" below
        # included), before cleanup kills the helpers and removes $T
        set +e
        exec 7>&- 8>&-
        # the helpers first: a file they hold open keeps the filesystem busy
        # (a qemu-nbd that gets SIGTERM while it is still starting may never act on it)
        for p in "${BG_PIDS[@]}"; do
                kill "$p" 2>/dev/null
                for _ in $(seq 1 30); do
                        kill -0 "$p" 2>/dev/null || break
                        sleep 0.1
                done
                kill -KILL "$p" 2>/dev/null
                wait "$p" 2>/dev/null
        done
        BG_PIDS=()
        [[ -n ${LOOP_ATTACHED:-} ]] && losetup -d "$LOOP_ATTACHED" 2>/dev/null
        umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
        if [[ -n ${FXMNT:-} ]] && mountpoint -q "$FXMNT"; then
                umount "$FXMNT" 2>/dev/null || umount -l "$FXMNT" 2>/dev/null || true
        fi
        (exit $rc)
        cleanup
}
trap status_cleanup EXIT

# py EXPR FILE: evaluate a python expression over the JSON document d in FILE, print it
py() {
        python3 -c 'import json, sys; d = json.load(open(sys.argv[2])); print(eval(sys.argv[1]))' "$1" "$2" ||
                fail "bad JSON in $2: $(head -c 2000 "$2")"
}

# st ARGS...: reclaimctl --root R ARGS; stdout in $T/out, stderr in $T/err, RC set
st() {
        RC=0
        "$RECLAIMCTL" --root "$R" "$@" >"$T/out" 2>"$T/err" </dev/null || RC=$?
}

expect_st_rc() {
        if [[ $RC -ne $1 ]]; then
                echo "--- stdout:" >&2
                head -c 4000 "$T/out" >&2 || true
                echo "--- stderr:" >&2
                head -c 4000 "$T/err" >&2 || true
                fail "$2: exit status $RC, want $1"
        fi
}

# ---- the fixture host ---------------------------------------------------------------------
mkdir -p "$MNT" "$R/etc/pve/qemu-server" "$R/etc/reclaim/vms.d" "$R/etc/libvirt/qemu" \
        "$R/srv/other" "$R/var/lib/reclaim/vms"
truncate -s 256M "$T/fs.img"
mkfs.ext4 -q -F -m 0 "$T/fs.img" || fail "mkfs.ext4"
mount -o loop "$T/fs.img" "$MNT" || fail "mount -o loop"
mkdir -p "$MNT/images/101" "$MNT/plain" "$MNT/libvirt"

printf 'dir: local\n\tpath /var/lib/vz\n\tcontent images\n' >"$R/etc/pve/storage.cfg"
cat >"$R/etc/pve/qemu-server/101.conf" <<'EOF'
name: web-101
scsi0: local:101/vm-101-disk-0.qcow2,size=1G
virtio1: local:101/vm-101-disk-1.qcow2,size=2G
EOF
cat >"$R/etc/reclaim/vms.d/vm-300.conf" <<'EOF'
[vm]
disk = /var/lib/vz/plain/vm-300.qcow2
disk = /srv/other/vm-300-b.qcow2
EOF
cat >"$R/etc/libvirt/qemu/web01.xml" <<'EOF'
<domain type='kvm'>
  <name>web01</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/vz/libvirt/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF

D0=$MNT/images/101/vm-101-disk-0.qcow2
D1=$MNT/images/101/vm-101-disk-1.qcow2
P3=$MNT/plain/vm-300.qcow2
W1=$MNT/libvirt/web01.qcow2
OB=$R/srv/other/vm-300-b.qcow2
mkimg "$D0" 1G -o cluster_size=$CS
qio "$D0" "write -P 0xab 0 16M" "write -P 0 16M 8M" "discard 4M 4M"
mkimg "$D1" 2G -o cluster_size=$CS
qio "$D1" "write -P 0xcd 0 8M"
mkimg "$P3" 1G -o cluster_size=$CS
mkimg "$W1" 512M -o cluster_size=$CS,lazy_refcounts=on
qio "$W1" "write -P 0x11 0 4M"
mkimg "$OB" 3G -o cluster_size=$CS
qio "$OB" "write -P 0x22 0 2M"
ON_MNT=("$D0" "$D1" "$P3" "$W1")

# reclaimd's state for vm-101: a pending guest report on disk-1, a past compaction of disk-0
NOW=$(date +%s)
cat >"$R/var/lib/reclaim/vms/vm-101.json" <<EOF
{ "vm": "vm-101",
  "last_report": { "time": $(((NOW - 60) * 1000000)), "bytes": 3145728, "filesystems": 2 },
  "disks": [
    { "image": "$D0", "pending": false, "reported_bytes": 0, "report_time": 0,
      "last_compaction_time": $(((NOW - 3600) * 1000000)), "last_compaction_gain": 123456,
      "failures": 0 },
    { "image": "$D1", "pending": true, "reported_bytes": 1048576,
      "report_time": $(((NOW - 60) * 1000000)), "last_compaction_time": 0,
      "last_compaction_gain": 0, "failures": 0 } ] }
EOF

# ---- figures ------------------------------------------------------------------------------
st status --json
expect_st_rc 0 "status --json"
cp "$T/out" "$T/status.json"

expect_eq "storages" "$(py '[s["storage"] for s in d["storages"]]' "$T/status.json")" \
        "['$MNT', '$(df --output=target "$R/srv/other" | tail -1)']"
expect_eq "storage fstype" "$(py 'd["storages"][0]["fstype"]' "$T/status.json")" ext4
expect_eq "disks on the loop fs" "$(py '[(x["vm"], x["disk"]) for x in d["storages"][0]["disks"]]' "$T/status.json")" \
        "[('vm-101', 'scsi0'), ('vm-101', 'virtio1'), ('vm-300', 'vm-300.qcow2'), ('web01', 'vda')]"

# capacity, used, free: exactly statvfs of the mount
read -r cap used free < <(python3 -c '
import os, sys
v = os.statvfs(sys.argv[1])
print(v.f_blocks * v.f_frsize, (v.f_blocks - v.f_bfree) * v.f_frsize, v.f_bavail * v.f_frsize)' "$MNT")
expect_eq "capacity" "$(py 'd["storages"][0]["capacity_bytes"]' "$T/status.json")" "$cap"
expect_eq "used" "$(py 'd["storages"][0]["used_bytes"]' "$T/status.json")" "$used"
expect_eq "free" "$(py 'd["storages"][0]["free_bytes"]' "$T/status.json")" "$free"

# per image: qemu-img info / stat / the oracle
vsum=0 fsum=0 asum=0 rsum=0 growth=0
for img in "${ON_MNT[@]}"; do
        v=$(qemu-img info -U --output=json "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
        f=$(file_size "$img")
        oracle "$img" "$T/o.json"
        a=$(($(jget "$T/o.json" used_clusters) * CS))
        m=$((f - $(jget "$T/o.json" min_size)))
        ((m > 0)) || m=0 # (a fresh image's file ends inside its last cluster)
        sel="[x for x in d['storages'][0]['disks'] if x['image'] == '$img'][0]"
        expect_eq "$img virtual_size" "$(py "${sel}['virtual_size']" "$T/status.json")" "$v"
        expect_eq "$img file_size" "$(py "${sel}['file_size']" "$T/status.json")" "$f"
        expect_eq "$img allocated_bytes" "$(py "${sel}['allocated_bytes']" "$T/status.json")" "$a"
        expect_eq "$img metadata_reclaimable_bytes" \
                "$(py "${sel}['metadata_reclaimable_bytes']" "$T/status.json")" "$m"
        expect_eq "$img disk_usage_bytes" "$(py "${sel}['disk_usage_bytes']" "$T/status.json")" \
                $(($(stat -c %b "$img") * $(stat -c %B "$img")))
        r=$m
        [[ $img == "$D1" ]] && r=$((m + 1048576))
        expect_eq "$img reclaimable_bytes" "$(py "${sel}['reclaimable_bytes']" "$T/status.json")" "$r"
        vsum=$((vsum + v)) fsum=$((fsum + f)) asum=$((asum + a)) rsum=$((rsum + r))
        growth=$((growth + (v > a ? v - a : 0)))
done
expect_eq "D0 reclaimable: the discarded 4 MiB" "$(py "[x for x in d['storages'][0]['disks'] if x['disk'] == 'scsi0'][0]['metadata_reclaimable_bytes']" "$T/status.json")" $((4 << 20))
expect_eq "virtual sum" "$(py 'd["storages"][0]["virtual_bytes"]' "$T/status.json")" "$vsum"
expect_eq "virtual sum (4.5 GiB)" "$vsum" $((9 << 29))
expect_eq "file sum" "$(py 'd["storages"][0]["file_bytes"]' "$T/status.json")" "$fsum"
expect_eq "allocated sum" "$(py 'd["storages"][0]["allocated_bytes"]' "$T/status.json")" "$asum"
expect_eq "reclaimable sum" "$(py 'd["storages"][0]["reclaimable_bytes"]' "$T/status.json")" "$rsum"
expect_eq "growth" "$(py 'd["storages"][0]["growth_bytes"]' "$T/status.json")" "$growth"
expect_eq "shortfall" "$(py 'd["storages"][0]["shortfall_bytes"]' "$T/status.json")" \
        $((growth > free ? growth - free : 0))
expect_eq "over-allocation ratio" \
        "$(py "abs(d['storages'][0]['over_allocation_ratio'] - $vsum / $cap) < 1e-12" "$T/status.json")" True
ratio=$(py 'd["storages"][0]["over_allocation_ratio"]' "$T/status.json")
log "loop fs: capacity $cap, virtual $vsum, ratio $ratio"

# state: last compaction, guest reports
sel0="[x for x in d['storages'][0]['disks'] if x['disk'] == 'scsi0'][0]"
expect_eq "last compaction time" "$(py "${sel0}['last_compaction_time']" "$T/status.json")" $((NOW - 3600))
expect_eq "last compaction gain" "$(py "${sel0}['last_compaction_gain']" "$T/status.json")" 123456
expect_eq "vm report" "$(py '[(v["vm"], v["last_report_time"], v["last_report_bytes"]) for v in d["vms"] if v["vm"] == "vm-101"]' "$T/status.json")" \
        "[('vm-101', $((NOW - 60)), 3145728)]"
expect_eq "no report for web01" "$(py '[v["last_report_time"] for v in d["vms"] if v["vm"] == "web01"]' "$T/status.json")" "[None]"

# the text form names the storage, the figures and every disk
st status
expect_st_rc 0 "status"
grep -q "^$MNT (ext4, " "$T/out" || fail "status text: no storage line: $(cat "$T/out")"
grep -q "over-allocation " "$T/out" || fail "status text: no ratio"
for disk in scsi0 virtio1 vm-300.qcow2 vda vm-300-b.qcow2; do
        grep -q " $disk " "$T/out" || fail "status text: no row for $disk"
done

# ---- thresholds ---------------------------------------------------------------------------
thresholds() {
        printf '[daemon]\nmax_concurrent = 2\n[thresholds]\n%s\n' "$@" >"$R/etc/reclaim/reclaimd.conf"
}
st status --check
expect_st_rc 0 "status --check without thresholds"

thresholds "over_allocation_ratio = $(python3 -c "print($ratio + 0.5)")"
st status --check --json
expect_st_rc 0 "status --check below the ratio"
expect_eq "warnings" "$(py 'd["warnings"]' "$T/out")" 0

thresholds "over_allocation_ratio = $(python3 -c "print($ratio - 0.5)")"
st status --check --json
expect_st_rc 5 "status --check above the ratio"
expect_eq "ratio warning" "$(py '[s["warnings"] for s in d["storages"]]' "$T/out")" "[['ratio'], []]"
st status
expect_st_rc 0 "status (no --check) above the ratio"
grep -q "warning: over-allocation" "$T/out" || fail "the text does not say why: $(cat "$T/out")"

thresholds "min_free_percent = 100"
st status --check --json
expect_st_rc 5 "status --check below the free space"
expect_eq "free warnings" "$(py '[s["warnings"] for s in d["storages"]]' "$T/out")" "[['free'], ['free']]"

thresholds "reclaimable_percent = 5"
st status --check --json
expect_st_rc 5 "status --check with a reclaimable image"
expect_eq "image warnings" "$(py "[x['disk'] for s in d['storages'] for x in s['disks'] if x['warnings']]" "$T/out")" "['scsi0', 'virtio1']"

thresholds "reclaimable_bytes = $((rsum + 1))"
st status --check
expect_st_rc 0 "status --check below reclaimable_bytes"
thresholds "reclaimable_bytes = $rsum"
st status --check
expect_st_rc 5 "status --check at reclaimable_bytes"

thresholds "over_allocation_ratio = many"
st status
expect_st_rc 1 "a bad threshold"
grep -q "$R/etc/reclaim/reclaimd.conf:4: over_allocation_ratio" "$T/err" || fail "no FILE:LINE: $(cat "$T/err")"
rm "$R/etc/reclaim/reclaimd.conf"
st status --config "$T/nonexistent.conf"
expect_st_rc 1 "a missing --config"

# an unreadable image is a warning row, not a failure
echo "disk = /var/lib/vz/plain/gone.qcow2" >>"$R/etc/reclaim/vms.d/vm-300.conf"
st status --check --json
expect_st_rc 5 "status --check with a missing disk"
expect_eq "missing disk" "$(py "[(x['disk'], x['warnings']) for x in d['storages'][0]['disks'] if x['error']]" "$T/out")" \
        "[('gone.qcow2', ['error'])]"
sed -i '/gone.qcow2/d' "$R/etc/reclaim/vms.d/vm-300.conf"

# ---- running VMs: read without taking their locks -----------------------------------------
qemu-nbd --persistent -f qcow2 -k "$T/nbd.sock" "$D0" >"$T/nbd.log" 2>&1 &
BG_PIDS+=("$!")
mkfifo "$T/qio.fifo"
qemu-io -f qcow2 "$W1" <"$T/qio.fifo" >"$T/qio-live.log" 2>&1 &
BG_PIDS+=("$!")
exec 7>"$T/qio.fifo"
echo "write -P 0x33 8M 8M" >&7 # the running VM writes: dirty bit, lazy refcounts
for _ in $(seq 1 100); do
        ino0=$(stat -c %i "$D0") ino1=$(stat -c %i "$W1")
        if grep -q ":$ino0 " /proc/locks && grep -q ":$ino1 " /proc/locks &&
                [[ $(python3 "$ORACLE" info "$W1" 2>/dev/null | grep -c '"incompatible_features": 1') -eq 1 ]]; then
                break
        fi
        sleep 0.1
done
run_compact "$D0"
expect_rc 3 "the nbd-held image is in use"
cp "$D0" "$T/d0.before"
st status --json
expect_st_rc 0 "status with running VMs"
if command -v strace >/dev/null 2>&1; then
        # no lock is ever taken: only F_OFD_GETLK probes (LeakSanitizer cannot run under ptrace)
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
                strace -f -qq -e trace=fcntl,flock -o "$T/locks.strace" \
                "$RECLAIMCTL" --root "$R" status --json >/dev/null 2>&1 || fail "status under strace"
        grep -q 'F_OFD_GETLK' "$T/locks.strace" || fail "status did not probe the lock bytes"
        if grep -E 'F_OFD_SETLK|F_SETLK|flock\(' "$T/locks.strace" >&2; then
                fail "status took a lock"
        fi
fi
check_identical "$T/d0.before" "$D0"
expect_eq "in use" "$(py "[(x['disk'], x['in_use']) for x in d['storages'][0]['disks']]" "$T/out")" \
        "[('scsi0', True), ('virtio1', False), ('vm-300.qcow2', False), ('vda', True)]"
sel="[x for x in d['storages'][0]['disks'] if x['disk'] == 'vda'][0]"
expect_eq "live image: no error" "$(py "${sel}['error']" "$T/out")" None
expect_eq "live image: not compactable now" "$(py "${sel}['compactable']" "$T/out")" False
py "${sel}['note']" "$T/out" | grep -q dirty || fail "live image: the note does not say dirty: $(py "${sel}['note']" "$T/out")"
expect_eq "live image: virtual size" "$(py "${sel}['virtual_size']" "$T/out")" $((512 << 20))
[[ $(py "${sel}['allocated_bytes']" "$T/out") -ge $((12 << 20)) ]] ||
        fail "live image: allocated $(py "${sel}['allocated_bytes']" "$T/out") < the 12 MiB written"
# the holders never noticed: the writer still writes, the server still serves
echo "write -P 0x44 16M 1M" >&7
echo "quit" >&7
exec 7>&-
wait "${BG_PIDS[1]}" || true
grep -q "wrote 1048576/1048576" "$T/qio-live.log" || fail "the running writer failed after status: $(cat "$T/qio-live.log")"
qemu-io -f raw -r -c "read -P 0xab 0 1M" "nbd+unix:///?socket=$T/nbd.sock" >"$T/nbd-read.log" 2>&1 ||
        fail "qemu-nbd stopped serving: $(cat "$T/nbd-read.log")"
kill "${BG_PIDS[0]}"
wait "${BG_PIDS[0]}" || true
BG_PIDS=()

# ---- metrics ------------------------------------------------------------------------------
st metrics
expect_st_rc 0 "metrics"
cp "$T/out" "$T/metrics.prom"
grep -q "^reclaim_storage_capacity_bytes{storage=\"$MNT\"} $cap\$" "$T/metrics.prom" ||
        fail "capacity sample: $(grep capacity "$T/metrics.prom")"
grep -q "^reclaim_storage_virtual_bytes{storage=\"$MNT\"} $vsum\$" "$T/metrics.prom" ||
        fail "virtual sample"
grep -q "^reclaim_image_last_compaction_reclaimed_bytes{storage=\"$MNT\",vm=\"vm-101\",disk=\"scsi0\"} 123456\$" \
        "$T/metrics.prom" || fail "last compaction sample"
python3 - "$T/metrics.prom" "$MNT" "$ratio" <<'EOF' || fail "ratio sample"
import sys
want = float(sys.argv[3])
for line in open(sys.argv[1]):
    if line.startswith('reclaim_storage_over_allocation_ratio{storage="%s"}' % sys.argv[2]):
        sys.exit(0 if abs(float(line.split()[-1]) - want) < 1e-9 else 1)
sys.exit(1)
EOF
if command -v promtool >/dev/null; then
        promtool check metrics <"$T/metrics.prom" >"$T/promtool.log" 2>&1 ||
                fail "promtool check metrics: $(cat "$T/promtool.log")"
else
        log "promtool not installed: exposition not validated"
fi

mkdir "$T/textfile"
st metrics --textfile "$T/textfile"
expect_st_rc 0 "metrics --textfile"
[[ ! -s "$T/out" ]] || fail "metrics --textfile printed: $(head -c 500 "$T/out")"
expect_eq "textfile directory" "$(ls -A "$T/textfile")" reclaim.prom
expect_eq "textfile mode" "$(stat -c %a "$T/textfile/reclaim.prom")" 644
grep -q "^# TYPE reclaim_storage_over_allocation_ratio gauge" "$T/textfile/reclaim.prom" ||
        fail "textfile content"
st metrics --textfile "$T/nonexistent"
expect_st_rc 1 "metrics --textfile into a missing directory"
# ---- status --scan: exact figures for stopped VMs, cached while the file is unchanged ------
CACHE=$R/var/lib/reclaim/scan-cache.json
mkfifo "$T/ro.fifo"
qemu-io -r -f qcow2 "$P3" <"$T/ro.fifo" >/dev/null 2>&1 & # a running VM's image: not scanned
BG_PIDS+=("$!")
exec 8>"$T/ro.fifo"
for _ in $(seq 1 100); do
        grep -q ":$(stat -c %i "$P3") " /proc/locks && break
        sleep 0.1
done
st status --scan --json
expect_st_rc 0 "status --scan"
exec 8>&-
wait "${BG_PIDS[0]}" || true
BG_PIDS=()
[[ -s $CACHE ]] || fail "status --scan wrote no cache"
expect_eq "scanned" "$(py "[(x['disk'], x['reclaimable_source']) for x in d['storages'][0]['disks']]" "$T/out")" \
        "[('scsi0', 'scan'), ('virtio1', 'scan'), ('vm-300.qcow2', 'metadata'), ('vda', 'scan')]"
for img in "$D0" "$D1" "$W1"; do
        run_inspect "$img"
        expect_rc 0 "inspect $img"
        want=$(jget "$T/inspect.json" reclaimable_bytes)
        expect_eq "$img: reclaimable from the scan = inspect's" \
                "$(py "[x['reclaimable_bytes'] for x in d['storages'][0]['disks'] if x['image'] == '$img'][0]" "$T/out")" "$want"
done
expect_eq "D0 with its 8 MiB of written zeros" "$(py "[x['reclaimable_bytes'] for x in d['storages'][0]['disks'] if x['disk'] == 'scsi0'][0]" "$T/out")" \
        $((12 << 20))
# a plain status uses the cache, and drops an entry once its image changed
qio "$D1" "write -P 0x77 32M 64K"
st status --json
expect_st_rc 0 "status with a scan cache"
expect_eq "cache used while valid" "$(py "[(x['disk'], x['reclaimable_source']) for x in d['storages'][0]['disks']]" "$T/out")" \
        "[('scsi0', 'scan'), ('virtio1', 'metadata'), ('vm-300.qcow2', 'metadata'), ('vda', 'scan')]"
st metrics
expect_st_rc 0 "metrics with a scan cache"
grep -q "^reclaim_image_scan_timestamp_seconds{storage=\"$MNT\",vm=\"vm-101\",disk=\"scsi0\"} " "$T/out" ||
        fail "no scan timestamp sample"
rm "$CACHE"

# ---- a qcow2 image on a block device is a storage of its own -----------------------------
if command -v losetup >/dev/null 2>&1; then
        truncate -s 64M "$T/dev.img"
        LOOPDEV=$(losetup -f --show "$T/dev.img") || fail "losetup"
        LOOP_ATTACHED=$LOOPDEV
        qemu-img create -q -f qcow2 "$LOOPDEV" 1G || fail "qemu-img create on $LOOPDEV"
        qemu-io -f qcow2 -c "write -P 1 0 4M" "$LOOPDEV" >/dev/null || fail "qemu-io on $LOOPDEV"
        mkdir -p "$T/blk/vms.d"
        printf '[vm]\ndisk = %s\n' "$LOOPDEV" >"$T/blk/vms.d/blk.conf"
        RC=0
        "$RECLAIMCTL" --config-dir "$T/blk" --state-dir "$T/blk" status --json >"$T/out" 2>"$T/err" || RC=$?
        losetup -d "$LOOPDEV"
        LOOP_ATTACHED=
        expect_st_rc 0 "status of an image on a block device"
        expect_eq "block storage" "$(py '[(s["storage"], s["fstype"], s["capacity_bytes"], s["over_allocation_ratio"]) for s in d["storages"]]' "$T/out")" \
                "[('$LOOPDEV', 'block', 67108864, 16.0)]"
        expect_eq "block disk" "$(py '[(x["block"], x["error"], x["virtual_size"]) for x in d["storages"][0]["disks"]]' "$T/out")" \
                "[(True, None, 1073741824)]"
fi

# ---- the registry's fixture host (tests/registry/fixtures/host: Proxmox with several
# storages, libvirt with a file and a block disk, vms.d), its local storage on a loop fs ------
FX=$T/fx
cp -a "$SRCDIR/tests/registry/fixtures/host" "$FX"
mkdir -p "$FX/var/lib/vz"
truncate -s 128M "$T/fx.img"
mkfs.ext4 -q -F -m 0 "$T/fx.img" || fail "mkfs.ext4"
mount -o loop "$T/fx.img" "$FX/var/lib/vz" || fail "mount -o loop (fixture)"
FXMNT=$FX/var/lib/vz
"$RECLAIMCTL" --root "$FX" list --json >"$T/fx-list.json" 2>/dev/null || fail "list on the fixture host"
n=0 fxsum=0
while read -r path block; do
        [[ $block == True ]] && continue # the LV stays missing: an error row
        n=$((n + 1))
        mkdir -p "$(dirname "$path")"
        mkimg "$path" $((n * 256))M -o cluster_size=$CS
        qio "$path" "write -P $n 0 1M"
        [[ $path == "$FXMNT"/* ]] && fxsum=$((fxsum + n * (256 << 20)))
done < <(py "'\n'.join('%s %s' % (x['path'], x['block']) for v in d['vms'] for x in v['disks'])" "$T/fx-list.json")
RC=0
"$RECLAIMCTL" --root "$FX" status --json >"$T/out" 2>"$T/err" || RC=$?
umount "$FXMNT"
expect_st_rc 0 "status on the fixture host"
expect_eq "fixture: every disk has a row" \
        "$(py "sorted('%s/%s' % (x['vm'], x['disk']) for s in d['storages'] for x in s['disks'])" "$T/out")" \
        "$(py "sorted('%s/%s' % (v['name'], x['drive'] or x['path'].rsplit('/', 1)[1]) for v in d['vms'] for x in v['disks'])" "$T/fx-list.json")"
expect_eq "fixture: the missing LV is the only error" \
        "$(py "[(x['vm'], x['disk']) for s in d['storages'] for x in s['disks'] if x['error']]" "$T/out")" "[('db01', 'vdc')]"
expect_eq "fixture: the loop storage's disks" \
        "$(py "[(x['vm'], x['disk']) for s in d['storages'] if s['storage'] == '$FXMNT' for x in s['disks']]" "$T/out")" \
        "[('vm-100', 'scsi0'), ('vm-101', 'scsi0'), ('vm-101', 'efidisk0'), ('vm-103', 'scsi1')]"
expect_eq "fixture: virtual sum on the loop storage" \
        "$(py "[s['virtual_bytes'] for s in d['storages'] if s['storage'] == '$FXMNT'][0]" "$T/out")" "$fxsum"
log "fixture host: $n images, $(py 'len(d["storages"])' "$T/out") storages"

# ---- metadata only ------------------------------------------------------------------------
# 4 KiB clusters, 1 MiB of data right after the metadata: opening and walking it must not read
# the data (opening used to read a fixed 2 MiB at offset 0)
if command -v strace >/dev/null 2>&1; then
        img=$T/small-clusters.qcow2
        mkimg "$img" 64M -o cluster_size=4096
        qio "$img" "write -P 0x5a 0 1M"
        # (LeakSanitizer cannot run under ptrace: off for this run of a sanitizer build)
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
                strace -f -qq -e trace=pread64,read,preadv,preadv2 -o "$T/strace.log" \
                "$RECLAIMCTL" inspect --no-scan --json "$img" >/dev/null
        read_bytes=$(awk '/^[0-9]+ +(pread64|preadv2?)\(/ || /^(pread64|preadv2?)\(/ { n += $NF } END { print n + 0 }' "$T/strace.log")
        log "inspect --no-scan of a 4 KiB-cluster image with 1 MiB of data: $read_bytes bytes read"
        [[ $read_bytes -gt 0 && $read_bytes -le $((16 * 4096)) ]] ||
                fail "metadata walk read $read_bytes bytes (want at most 16 clusters)"
else
        log "strace not installed: bytes read not checked"
fi
log "ok"
