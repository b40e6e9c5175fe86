#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# reclaimctl --root on a whole fixture host built in a temp dir: a Proxmox VM (storage.cfg,
# qemu-server/101.conf with a snapshot section, a cdrom, an LVM volume and the channel in
# args:), a vms.d VM and a libvirt domain, each with real qcow2 images holding data and
# zeros. `list --json` finds them all; `compact vm-101` compacts both of its disks (smaller,
# qemu-img check clean, contents unchanged); an unknown VM exits 1; a VM with a disk in use
# exits 3 and one with a missing disk exits 1, while their other disks are still compacted.
source "$(dirname "$0")/../integration/functions.sh"
requires qemu-nbd

CS=65536
R=$T/root

# make_disk IMG: 64 MiB, 8 MiB of data, 16 MiB of zeros written as data, 4 MiB more data
make_disk() {
        mkdir -p "$(dirname "$1")"
        mkimg "$1" 64M -o cluster_size=$CS
        qio "$1" "write -P 0xab 0 8M" "write -P 0 8M 16M" "write -P 0xcd 24M 4M"
}

# py EXPR FILE: evaluate a python expression over the JSON document d in FILE, print it
py() {
        python3 -c 'import json, sys; d = json.load(open(sys.argv[2])); print(eval(sys.argv[1]))' "$1" "$2" ||
                fail "bad JSON in $2: $(head -c 2000 "$2")"
}

# rc_of CMD...: run, stdout in $T/out, stderr in $T/err; print the exit status
rc_of() {
        local rc=0
        "$@" >"$T/out" 2>"$T/err" </dev/null || rc=$?
        echo $rc
}

# ---- the fixture host ---------------------------------------------------------------------
mkdir -p "$R/etc/pve/qemu-server" "$R/etc/reclaim/vms.d" "$R/etc/libvirt/qemu"
printf 'dir: local\n\tpath /var/lib/vz\n\tcontent iso,vztmpl,backup,images\n\nlvmthin: local-lvm\n\tthinpool data\n\tvgname pve\n\tcontent rootdir,images\n' \
        >"$R/etc/pve/storage.cfg"
cat >"$R/etc/pve/qemu-server/101.conf" <<'EOF'
#web server
args: -chardev socket,id=reclaim0,path=/run/reclaim/101.sock,server=on,wait=off -device virtio-serial-pci,id=rs -device virtserialport,bus=rs.0,chardev=reclaim0,name=org.reclaim.agent.0
boot: order=scsi0;ide2;net0
cores: 2
ide2: none,media=cdrom
memory: 2048
name: web-101
net0: virtio=BC:24:11:5E:7A:01,bridge=vmbr0,firewall=1
ostype: l26
parent: before
scsi0: local:101/vm-101-disk-0.qcow2,discard=on,iothread=1,size=64M,ssd=1
scsi2: local-lvm:vm-101-disk-9,size=8G
scsihw: virtio-scsi-single
smbios1: uuid=5c1e2a7d-8f34-4b6e-9d21-0a7b3c4d5e6f
virtio1: local:101/vm-101-disk-1.qcow2,size=64M
vmgenid: 3f0d5a8e-1c2b-4d7e-8f90-a1b2c3d4e5f6

[before]
scsi0: local:101/vm-101-disk-0.qcow2,size=64M
scsi1: local:101/vm-101-disk-3.qcow2,size=64M
snaptime: 1712400000
EOF
cat >"$R/etc/reclaim/vms.d/vm-300.conf" <<'EOF'
[vm]
disk = /srv/vms/vm-300-a.qcow2
disk = /srv/vms/vm-300-b.qcow2
channel = /run/reclaim/vm-300.sock
EOF
cat >"$R/etc/reclaim/vms.d/vm-400.conf" <<'EOF'
[vm]
disk = /srv/vms/vm-400-a.qcow2
disk = /srv/vms/vm-400-missing.qcow2
disk = /srv/vms/vm-400-b.qcow2
EOF
cat >"$R/etc/libvirt/qemu/web01.xml" <<'EOF'
<domain type='kvm'>
  <name>web01</name>
  <uuid>6f1c1f7e-3b55-4a8e-9a57-2f3d8d0c5b21</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOF
for img in var/lib/vz/images/101/vm-101-disk-0.qcow2 var/lib/vz/images/101/vm-101-disk-1.qcow2 \
           srv/vms/vm-300-a.qcow2 srv/vms/vm-300-b.qcow2 srv/vms/vm-400-a.qcow2 \
           srv/vms/vm-400-b.qcow2 var/lib/libvirt/images/web01.qcow2; do
        make_disk "$R/$img"
done
D0=$R/var/lib/vz/images/101/vm-101-disk-0.qcow2
D1=$R/var/lib/vz/images/101/vm-101-disk-1.qcow2

# ---- list ---------------------------------------------------------------------------------
expect_eq "list --json" "$(rc_of "$RECLAIMCTL" --root "$R" list --json)" 0
cp "$T/out" "$T/list.json"
expect_eq "VMs" "$(py '[v["name"] for v in d["vms"]]' "$T/list.json")" "['vm-101', 'vm-300', 'vm-400', 'web01']"
expect_eq "vm-101 source" "$(py 'd["vms"][0]["source"]' "$T/list.json")" proxmox
expect_eq "vm-101 source_file" "$(py 'd["vms"][0]["source_file"]' "$T/list.json")" "$R/etc/pve/qemu-server/101.conf"
expect_eq "vm-101 channel" "$(py 'd["vms"][0]["channel"]' "$T/list.json")" "$R/run/reclaim/101.sock"
expect_eq "vm-101 disks" "$(py '[x["path"] for x in d["vms"][0]["disks"]]' "$T/list.json")" "['$D0', '$D1']"
expect_eq "vm-101 drives" "$(py '[x["drive"] for x in d["vms"][0]["disks"]]' "$T/list.json")" "['scsi0', 'virtio1']"
expect_eq "vm-101 storage" "$(py '[x["storage"] for x in d["vms"][0]["disks"]]' "$T/list.json")" "['local', 'local']"
expect_eq "vm-101 file sizes" "$(py '[x["file_size"] for x in d["vms"][0]["disks"]]' "$T/list.json")" \
        "[$(file_size "$D0"), $(file_size "$D1")]"
expect_eq "vm-300 source" "$(py 'd["vms"][1]["source"]' "$T/list.json")" vms.d
expect_eq "vm-400 missing disk" "$(py '[x["error"] for x in d["vms"][2]["disks"]]' "$T/list.json")" \
        "[None, 'No such file or directory', None]"
expect_eq "web01 disk" "$(py 'd["vms"][3]["disks"][0]["path"]' "$T/list.json")" "$R/var/lib/libvirt/images/web01.qcow2"
[[ ! -s "$T/err" ]] || fail "list printed diagnostics without -v: $(cat "$T/err")"

expect_eq "list (text)" "$(rc_of "$RECLAIMCTL" --root "$R" list)" 0
grep -q "^vm-101 (proxmox, $R/etc/pve/qemu-server/101.conf)" "$T/out" || fail "list text: $(cat "$T/out")"
grep -q "scsi0 *$D0" "$T/out" || fail "list text lacks scsi0: $(cat "$T/out")"
expect_eq "list -v" "$(rc_of "$RECLAIMCTL" -v --root="$R" list)" 0
grep -q "101.conf:12: scsi2: storage 'local-lvm' is lvmthin, which holds no qcow2 files; skipped" "$T/err" ||
        fail "list -v does not show the LVM note: $(cat "$T/err")"

# ---- compact VM ---------------------------------------------------------------------------
cp "$D0" "$T/d0.orig"
cp "$D1" "$T/d1.orig"
before0=$(file_size "$D0")
before1=$(file_size "$D1")

expect_eq "compact vm-101 --dry-run" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-101 --dry-run --json)" 0
check_identical "$T/d0.orig" "$D0"
check_identical "$T/d1.orig" "$D1"
expect_eq "dry run disks" "$(py '[x["dry_run"] for x in d["disks"]]' "$T/out")" "[True, True]"

expect_eq "compact vm-101" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-101 --json)" 0
cp "$T/out" "$T/vm.json"
expect_eq "json vm" "$(py 'd["vm"]' "$T/vm.json")" vm-101
expect_eq "json images" "$(py '[x["image"] for x in d["disks"]]' "$T/vm.json")" "['$D0', '$D1']"
expect_eq "json sizes before" "$(py '[x["file_size_before"] for x in d["disks"]]' "$T/vm.json")" "[$before0, $before1]"
expect_eq "json sizes after" "$(py '[x["file_size_after"] for x in d["disks"]]' "$T/vm.json")" \
        "[$(file_size "$D0"), $(file_size "$D1")]"
expect_eq "json keys of compact --image" \
        "$(py '{"image", "file_size_before", "file_size_after", "clusters_zeroed", "clusters_moved", "bytes_moved", "duration_ms", "dry_run"} <= set(d["disks"][0])' "$T/vm.json")" \
        True
for i in 0 1; do
        img=$D0 orig=$T/d0.orig before=$before0
        [[ $i == 1 ]] && img=$D1 orig=$T/d1.orig before=$before1
        check_clean "$img"
        check_compare "$orig" "$img"
        after=$(file_size "$img")
        # 12 MiB of data left in a 64 MiB image: well under the 28 MiB written
        [[ $after -lt $before && $after -lt $((16 << 20)) ]] || fail "$img did not shrink: $before -> $after"
        log "$img: $before -> $after"
done

# the same again: nothing to do, exit 0
expect_eq "compact vm-101 again" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-101)" 0
grep -q "^$D0: " "$T/out" || fail "compact text output: $(cat "$T/out")"
grep -q "^$D1: " "$T/out" || fail "compact text output: $(cat "$T/out")"

# ---- unknown VM, usage --------------------------------------------------------------------
expect_eq "compact of an unknown VM" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-999)" 1
grep -qF "no VM named vm-999 (looked in $R/etc/reclaim/vms.d, $R/etc/libvirt/qemu, $R/etc/pve/qemu-server)" "$T/err" ||
        fail "unknown VM message: $(cat "$T/err")"
[[ ! -s "$T/out" ]] || fail "unknown VM printed on stdout"
expect_eq "compact of an unknown VM --json" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-999 --json)" 1
expect_eq "compact with two VMs" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-101 vm-300)" 2
expect_eq "compact with --image and a VM" "$(rc_of "$RECLAIMCTL" compact --image "$D0" vm-101)" 2
expect_eq "list with an argument" "$(rc_of "$RECLAIMCTL" --root "$R" list vm-101)" 2
expect_eq "--root without a value" "$(rc_of "$RECLAIMCTL" list --root)" 2
expect_eq "--root relative" "$(rc_of "$RECLAIMCTL" --root relative list)" 2

# --config-dir replaces ROOT/etc/reclaim
mkdir -p "$T/alt/vms.d"
printf '[vm]\ndisk = /srv/vms/vm-300-a.qcow2\n' >"$T/alt/vms.d/alt-vm.conf"
expect_eq "list --config-dir" "$(rc_of "$RECLAIMCTL" --root "$R" --config-dir "$T/alt" list --json)" 0
expect_eq "VMs with --config-dir" "$(py '[v["name"] for v in d["vms"]]' "$T/out")" "['alt-vm', 'vm-101', 'web01']"

# ---- a disk in use: 3, the other disk still compacted --------------------------------------
A=$R/srv/vms/vm-300-a.qcow2
B=$R/srv/vms/vm-300-b.qcow2
cp "$A" "$T/a.orig"
qemu-nbd --persistent -f qcow2 -k "$T/nbd.sock" "$A" >"$T/nbd.log" 2>&1 &
NBD=$!
BG_PIDS+=("$NBD")
ino=$(stat -c %i "$A")
for _ in $(seq 1 100); do
        grep -q ":$ino " /proc/locks && break
        sleep 0.1
done
grep -q ":$ino " /proc/locks || fail "qemu-nbd took no lock on $A"
b_before=$(file_size "$B")
expect_eq "compact of a VM with a disk in use" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-300 --json)" 3
check_identical "$T/a.orig" "$A"
expect_eq "in-use disk entry" "$(py '[d["disks"][0]["image"], d["disks"][0]["exit_status"]]' "$T/out")" "['$A', 3]"
expect_eq "other disk compacted" "$(py 'd["disks"][1]["file_size_after"]' "$T/out")" "$(file_size "$B")"
[[ $(file_size "$B") -lt $b_before ]] || fail "$B did not shrink"
check_clean "$B"
grep -q "is in use" "$T/err" || fail "no in-use message: $(cat "$T/err")"
kill "$NBD"
wait "$NBD" || true
BG_PIDS=()

# ---- a missing disk: 1 (an error outranks the rest), the others still compacted -----------
expect_eq "compact of a VM with a missing disk" "$(rc_of "$RECLAIMCTL" --root "$R" compact vm-400 --json)" 1
expect_eq "disk statuses" "$(py '[x.get("exit_status", 0) for x in d["disks"]]' "$T/out")" "[0, 1, 0]"
expect_eq "missing disk error" "$(py 'd["disks"][1]["error"]' "$T/out")" \
        "Cannot open $R/srv/vms/vm-400-missing.qcow2: No such file or directory"
check_clean "$R/srv/vms/vm-400-a.qcow2"
check_clean "$R/srv/vms/vm-400-b.qcow2"

# ---- the libvirt VM, text output ----------------------------------------------------------
W=$R/var/lib/libvirt/images/web01.qcow2
w_before=$(file_size "$W")
expect_eq "compact web01" "$(rc_of "$RECLAIMCTL" --root "$R" compact web01)" 0
grep -q "^$W: .*(reclaimed " "$T/out" || fail "compact web01 output: $(cat "$T/out")"
[[ $(file_size "$W") -lt $w_before ]] || fail "$W did not shrink"
check_clean "$W"

# compact --image is unchanged (and ignores the registry)
expect_eq "compact --image" "$(rc_of "$RECLAIMCTL" --root "$R/nowhere" compact --image "$D0" --json)" 0
expect_eq "compact --image json" "$(py 'd["image"]' "$T/out")" "$D0"

log "registry CLI: OK"
