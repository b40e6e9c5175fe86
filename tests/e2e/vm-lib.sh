# SPDX-License-Identifier: LGPL-2.1-or-later
# shellcheck shell=bash
#
# VM plumbing shared by the end-to-end test (tests/e2e/test-e2e.sh) and scripts/demo: Debian's
# kernel, an initramfs with busybox and the real reclaim-agent, a qcow2 disk with an ext4
# filesystem whose free space is dirty, QEMU under TCG with the guest port
# org.reclaim.agent.0, a private D-Bus system bus, and reclaimd with a configuration of its
# own. Sourcing it defines functions only; it changes no shell option.
#
# Every function returns non-zero on failure (with a message on stderr) rather than exiting,
# so the caller decides between failing, skipping and falling back.
#
# Knobs (environment):
#   RECLAIM_E2E_CACHE  where the unpacked kernel is kept (default /var/cache/reclaim-e2e when
#                      writable, else ${XDG_CACHE_HOME:-~/.cache}/reclaim-e2e)
#   E2E_BOOT_TIMEOUT   seconds a boot may take before QEMU is killed (default 300)
#   E2E_MEM            guest memory in MiB (default 384)

E2E_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_PORT_NAME=org.reclaim.agent.0
# What the guest needs, in load order after dependencies: crc32c is only a soft dependency of
# ext4 (no modules.dep without depmod), so it is named here.
E2E_MODULES=(virtio_pci virtio_blk virtio_console crc32c_generic ext4)

e2e_err() { echo "e2e: $*" >&2; }

# e2e_cache_dir: prints the directory for downloaded and unpacked things
e2e_cache_dir() {
        if [[ -n ${RECLAIM_E2E_CACHE:-} ]]; then
                echo "$RECLAIM_E2E_CACHE"
        elif [[ -w /var/cache/reclaim-e2e ]] || { [[ -w /var/cache ]] && ((EUID == 0)); }; then
                echo /var/cache/reclaim-e2e
        else
                echo "${XDG_CACHE_HOME:-$HOME/.cache}/reclaim-e2e"
        fi
}

# e2e_kernel_fetch: Debian's current kernel (the package linux-image-amd64 depends on),
# downloaded with apt-get and unpacked once (vmlinuz, config, modules) into the cache, where it
# replaces an older one. Sets E2E_KERNEL_DIR, E2E_KERNEL (the vmlinuz) and E2E_KMOD (its module
# tree). A second run only asks apt-cache which package is current (about 5 s the first time).
e2e_kernel_fetch() {
        local cache pkg dir
        cache=$(e2e_cache_dir)
        mkdir -p "$cache" || return 1
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
                awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        if [[ -z $pkg ]]; then
                e2e_err "apt-cache cannot say which kernel linux-image-amd64 is"
                return 1
        fi
        dir=$cache/$pkg
        # flock: the demo and a test run may fetch at the same time
        if ! (
                flock 9
                [[ -e $dir/.done ]] && exit 0
                rm -rf "$dir.part"
                mkdir -p "$dir.part" || exit 1
                if ! (cd "$dir.part" && apt-get download -q "$pkg") >"$cache/download.log" 2>&1; then
                        tail -n 5 "$cache/download.log" >&2
                        exit 1
                fi
                dpkg-deb --fsys-tarfile "$dir.part"/*.deb |
                        tar -x -C "$dir.part" --wildcards \
                                './boot/vmlinuz-*' './boot/config-*' './lib/modules/*' || exit 1
                rm -f "$dir.part"/*.deb
                touch "$dir.part/.done"
                mv "$dir.part" "$dir"
                # an older kernel is not needed any more (about 400 MB each)
                find "$cache" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$pkg" \
                        -exec rm -rf {} +
        ) 9>"$cache/.lock"; then
                e2e_err "could not download and unpack $pkg into $cache"
                return 1
        fi
        # shellcheck disable=SC2034 # for the callers (scripts/deps --kernel prints it)
        E2E_KERNEL_DIR=$dir
        E2E_KERNEL=$(compgen -G "$dir/boot/vmlinuz-*" | head -n 1)
        E2E_KMOD=$dir/lib/modules/${E2E_KERNEL##*/vmlinuz-}
        [[ -f $E2E_KERNEL && -d $E2E_KMOD ]] || {
                e2e_err "$dir holds no kernel"
                return 1
        }
}

# e2e_requires: the host tools a boot needs; prints the first one missing and returns 1
e2e_requires() {
        local c
        for c in qemu-system-x86_64 qemu-img mkfs.ext4 debugfs cpio gzip dbus-daemon \
                apt-cache apt-get dpkg-deb ldd flock python3 sha256sum; do
                if ! command -v "$c" >/dev/null 2>&1; then
                        echo "$c"
                        return 1
                fi
        done
        # the guest has no libc of its own for busybox: it must be the static one
        local out
        out=$(command -v busybox >/dev/null && LC_ALL=C ldd "$(command -v busybox)" 2>&1) || true
        if [[ $out != *"not a dynamic"* ]]; then
                echo "busybox-static"
                return 1
        fi
}

# e2e_initramfs OUT AGENT [AGENT_CONF]: a gzipped cpio with busybox, the modules the guest
# needs (their dependencies first, from each module's .modinfo: there is no depmod here), the
# agent with the shared libraries it links and their loader (from ldd), agent.conf and
# tests/e2e/guest-init.sh as /init. Needs E2E_KMOD (e2e_kernel_fetch).
e2e_initramfs() {
        local ir rc=0
        ir=$(mktemp -d "${TMPDIR:-/tmp}/e2e-ir.XXXXXX") || return 1
        e2e_initramfs_fill "$ir" "$@" || rc=$?
        rm -rf "$ir"
        return $rc
}

# e2e_initramfs_fill DIR OUT AGENT [AGENT_CONF]: e2e_initramfs, with DIR as the scratch tree
e2e_initramfs_fill() {
        local ir=$1 out=$2 agent=$3 conf=${4:-} lib name path m
        local -A mod_path=() mod_seen=()
        local mod_order=()
        mkdir -p "$ir"/{bin,dev,proc,sys,tmp,lib/modules,etc/reclaim,usr/bin} || return 1
        cp "$(command -v busybox)" "$ir/bin/busybox" || return 1

        while IFS= read -r path; do
                name=${path##*/}
                name=${name%%.ko*}
                mod_path[${name//-/_}]=$path
        done < <(find "$E2E_KMOD/kernel" -name '*.ko*')

        e2e_add_module() {
                local m=${1//-/_} p dep
                [[ -n ${mod_seen[$m]:-} ]] && return 0
                mod_seen[$m]=1
                p=${mod_path[$m]:-}
                if [[ -z $p ]]; then
                        grep -q "/$m.ko" "$E2E_KMOD/modules.builtin" && return 0
                        e2e_err "kernel module $m not found in $E2E_KMOD"
                        return 1
                fi
                case $p in
                *.ko.xz) xz -dc "$p" >"$ir/lib/modules/$m.ko" ;;
                *.ko.zst) zstd -qdc "$p" >"$ir/lib/modules/$m.ko" ;;
                *) cp "$p" "$ir/lib/modules/$m.ko" ;;
                esac || return 1
                # .modinfo holds NUL-separated key=value strings; "depends=a,b"
                for dep in $(tr '\0' '\n' <"$ir/lib/modules/$m.ko" | sed -n 's/^depends=//p' |
                        tr ',' ' '); do
                        e2e_add_module "$dep" || return 1
                done
                mod_order+=("$m")
        }
        for m in "${E2E_MODULES[@]}"; do
                e2e_add_module "$m" || return 1
        done
        printf '%s\n' "${mod_order[@]}" >"$ir/lib/modules/load.order"

        cp "$agent" "$ir/usr/bin/reclaim-agent" || return 1
        # The libraries and the loader, at the paths ldd names (they are what the binary's
        # PT_INTERP and the loader's default search path expect).
        while IFS= read -r lib; do
                mkdir -p "$ir$(dirname "$lib")"
                cp -L "$lib" "$ir$lib" || return 1
        done < <(ldd "$agent" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
        if [[ -n $conf ]]; then
                cp "$conf" "$ir/etc/reclaim/agent.conf" || return 1
        fi
        echo 0123456789abcdef0123456789abcdef >"$ir/etc/machine-id"
        cp "$E2E_LIB_DIR/guest-init.sh" "$ir/init" && chmod 755 "$ir/init" || return 1

        (cd "$ir" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$out"
}

# e2e_disk OUT SIZE_MIB LIVE_MIB JUNK_MIB SUMS: a qcow2 image (64 KiB clusters, no
# preallocation) holding an ext4 filesystem with LIVE_MIB of files of random data, and whose
# free space held JUNK_MIB of random data that was deleted again: the dirty free space a guest
# leaves behind. SUMS gets "sha256  PATH" lines for every file. The raw image is converted, so
# only clusters holding something other than zeros are allocated.
e2e_disk() {
        local seed rc=0
        seed=$(mktemp -d "${TMPDIR:-/tmp}/e2e-seed.XXXXXX") || return 1
        e2e_disk_fill "$seed" "$@" || rc=$?
        rm -rf "$seed"
        return $rc
}

# e2e_disk_fill DIR OUT SIZE_MIB LIVE_MIB JUNK_MIB SUMS: e2e_disk, with DIR as scratch space
e2e_disk_fill() {
        local seed=$1 out=$2 size=$3 live=$4 junk=$5 sums=$6 raw i n
        raw=$seed/disk.raw
        mkdir -p "$seed/data/docs" "$seed/data/db" || return 1
        # A few large files and many small ones, so the filesystem has some shape.
        n=$((live / 4))
        for ((i = 0; i < n; i++)); do
                head -c 3M /dev/urandom >"$seed/data/db/table-$i.bin"
        done
        for ((i = 0; i < n * 16; i++)); do
                head -c 64K /dev/urandom >"$seed/data/docs/note-$i.txt"
        done
        echo "reclaim end-to-end test disk" >"$seed/data/README"
        head -c "${junk}M" /dev/urandom >"$seed/data/junk.bin"
        truncate -s "${size}M" "$raw" || return 1
        mkfs.ext4 -q -F -L e2e -E lazy_itable_init=0,lazy_journal_init=0 -d "$seed/data" "$raw" ||
                return 1
        debugfs -w -R 'rm /junk.bin' "$raw" >/dev/null 2>&1 || return 1
        e2fsck -fn "$raw" >/dev/null 2>&1 || {
                e2e_err "e2fsck does not like the test disk"
                return 1
        }
        rm -f "$seed/data/junk.bin"
        (cd "$seed/data" && find . -type f | LC_ALL=C sort | sed 's|^\./||' |
                xargs -d '\n' sha256sum) >"$sums" || return 1
        qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$raw" "$out"
}

# e2e_qemu_start NAME IMAGE SOCKET CONSOLE MODE DISK [KERNEL_ARGS...]: boots the guest in
# the background with -accel tcg (KVM is never probed: where /dev/kvm exists but does not
# work, QEMU hangs). MODE is the guest's e2e.mode (tests/e2e/guest-init.sh). DISK is how the
# virtio-blk disk is attached:
#   nodiscard  the device offers no discard (the guest cannot trim: the agent zero-fills)
#              and QEMU does not turn zero writes into anything else (detect-zeroes=off)
#   unmap      the device offers discard and QEMU passes it down (discard=unmap): the guest's
#              TRIM punches holes into the image
# The port org.reclaim.agent.0 is served by QEMU on SOCKET, the serial console goes to
# CONSOLE. Needs E2E_KERNEL and E2E_INITRD. Sets E2E_QEMU_PID.
e2e_qemu_start() {
        local name=$1 img=$2 sock=$3 console=$4 mode=$5 disk=$6 drive device
        shift 6
        case $disk in
        nodiscard)
                drive=discard=ignore,detect-zeroes=off
                device=discard=off
                ;;
        unmap)
                drive=discard=unmap,detect-zeroes=off
                device=discard=on
                ;;
        *)
                e2e_err "unknown disk mode $disk"
                return 1
                ;;
        esac
        rm -f "$sock"
        timeout -k 10 "${E2E_BOOT_TIMEOUT:-300}" qemu-system-x86_64 \
                -name "$name" -machine q35 -accel tcg -m "${E2E_MEM:-384}" \
                -nographic -no-reboot -nic none \
                -kernel "$E2E_KERNEL" -initrd "$E2E_INITRD" \
                -append "console=ttyS0 quiet panic=-1 e2e.mode=$mode $*" \
                -drive "file=$img,if=none,id=disk0,format=qcow2,cache=writeback,$drive" \
                -device "virtio-blk-pci,drive=disk0,$device" \
                -device virtio-serial-pci,id=vs0 \
                -chardev "socket,id=reclaim0,path=$sock,server=on,wait=off" \
                -device "virtserialport,bus=vs0.0,chardev=reclaim0,name=$E2E_PORT_NAME" \
                </dev/null >"$console" 2>&1 &
        E2E_QEMU_PID=$!
}

# e2e_wait_socket SOCKET PID: until QEMU listens on SOCKET (at most 30 s), or PID is gone
e2e_wait_socket() {
        local i
        for ((i = 0; i < 600; i++)); do
                [[ -S $1 ]] && return 0
                kill -0 "$2" 2>/dev/null || return 1
                sleep 0.05
        done
        return 1
}

# e2e_qemu_wait: waits for the QEMU of e2e_qemu_start; returns its exit status (124 or 137:
# killed after E2E_BOOT_TIMEOUT)
e2e_qemu_wait() {
        local rc=0
        wait "$E2E_QEMU_PID" || rc=$?
        E2E_QEMU_PID=
        return $rc
}

# e2e_console_value CONSOLE KEY: the rest of the last "E2E KEY ..." line
e2e_console_value() {
        tr -d '\r' <"$1" | sed -n "s/^E2E $2 \{0,1\}//p" | tail -n 1
}

# e2e_console_sums CONSOLE: the checksums the guest printed, as "sha256  PATH" (sorted)
e2e_console_sums() {
        tr -d '\r' <"$1" | sed -n 's/^E2E SUM \([0-9a-f]\{64\}\) \(.*\)$/\1  \2/p' | LC_ALL=C sort -k2
}

# e2e_console_agent_json CONSOLE: the agent's JSON summary from a run boot
e2e_console_agent_json() {
        tr -d '\r' <"$1" | sed -n '/^E2E AGENT-JSON-BEGIN/,/^E2E AGENT-JSON-END/p' | sed '1d;$d'
}

# e2e_dbus_start DIR: a private D-Bus "system" bus for the daemon and reclaimctl (reclaimd's
# API is org.reclaim.Manager1 on the system bus), with the system bus's default rules and
# reclaimd's own policy (units/org.reclaim.Manager1.conf: root only); a user other than root
# is allowed the name as well. Exports DBUS_SYSTEM_BUS_ADDRESS (reclaimd and reclaimctl use
# it through sd_bus_open_system()); sets E2E_DBUS_PID.
e2e_dbus_start() {
        local dir=$1 user policy i
        user=$(id -un)
        policy=$(cd "$E2E_LIB_DIR/../.." && pwd)/units/org.reclaim.Manager1.conf
        mkdir -p "$dir" || return 1
        {
                cat <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$dir/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="$user"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"/>
  </policy>
EOF
                [[ -f $policy ]] && echo "  <include>$policy</include>"
                if ((EUID != 0)) || [[ ! -f $policy ]]; then
                        cat <<EOF
  <policy user="$user">
    <allow own="org.reclaim.Manager1"/>
    <allow send_destination="org.reclaim.Manager1"/>
    <allow receive_sender="org.reclaim.Manager1"/>
  </policy>
EOF
                fi
                echo "</busconfig>"
        } >"$dir/bus.conf"
        rm -f "$dir/system_bus_socket"
        dbus-daemon --config-file="$dir/bus.conf" --nofork --nopidfile >"$dir/dbus.log" 2>&1 &
        E2E_DBUS_PID=$!
        for ((i = 0; i < 200; i++)); do
                if [[ -S $dir/system_bus_socket ]]; then
                        export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$dir/system_bus_socket
                        return 0
                fi
                kill -0 "$E2E_DBUS_PID" 2>/dev/null || break
                sleep 0.05
        done
        e2e_err "dbus-daemon did not start: $(tail -n 3 "$dir/dbus.log")"
        return 1
}

# e2e_host_setup ROOT NAME IMAGE SOCKET [KEY=VALUE...]: the host's configuration for one VM
# under ROOT (reclaimd and reclaimctl take --root ROOT): ROOT/etc/reclaim/vms.d/NAME.conf
# naming IMAGE and SOCKET (absolute paths inside ROOT), and ROOT/etc/reclaim/reclaimd.conf
# with the given keys added to a [daemon] section that allows zero-fill.
e2e_host_setup() {
        local root=$1 name=$2 img=$3 sock=$4 kv
        shift 4
        mkdir -p "$root/etc/reclaim/vms.d" || return 1
        printf '[vm]\nname = %s\ndisk = %s\nchannel = %s\n' "$name" "$img" "$sock" \
                >"$root/etc/reclaim/vms.d/$name.conf"
        {
                echo "[daemon]"
                echo "guest_allow_zero = yes"
                echo "guest_min_reserve = 16M"
                echo "retry_interval = 1"
                echo "job_timeout = 300"
                for kv in "$@"; do
                        echo "$kv"
                done
        } >"$root/etc/reclaim/reclaimd.conf"
}

# e2e_reclaimd_start ROOT STATE LOG [OPTIONS...]: reclaimd on ROOT's configuration, with its
# own state directory, in the background (on the bus of e2e_dbus_start when there is one).
# Needs RECLAIMD and RECLAIMCTL. Sets E2E_RECLAIMD_PID.
e2e_reclaimd_start() {
        local root=$1 state=$2 log=$3
        shift 3
        "$RECLAIMD" --root "$root" --config "$root/etc/reclaim/reclaimd.conf" \
                --state-dir "$state" --reclaimctl "$RECLAIMCTL" "$@" >>"$log" 2>&1 &
        E2E_RECLAIMD_PID=$!
}

# e2e_reclaimd_stop: SIGTERM; returns the daemon's exit status (0 is a clean stop)
e2e_reclaimd_stop() {
        local rc=0
        [[ -n ${E2E_RECLAIMD_PID:-} ]] || return 0
        kill -TERM "$E2E_RECLAIMD_PID" 2>/dev/null || true
        wait "$E2E_RECLAIMD_PID" || rc=$?
        E2E_RECLAIMD_PID=
        return $rc
}

# e2e_allocated IMAGE: bytes of data clusters the image holds (qemu-img map: data, not zero)
e2e_allocated() {
        qemu-img map -U --output=json "$1" |
                python3 -c 'import json, sys
print(sum(e["length"] for e in json.load(sys.stdin) if e["data"] and not e.get("zero")))'
}

# e2e_state_get STATE NAME EXPR: a python expression over reclaimd's state file for NAME (s)
e2e_state_get() {
        python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
print(eval(sys.argv[2]))' "$1/vms/$2.json" "$3" 2>/dev/null
}

# e2e_compacted STATE NAME AFTER_US: the state says NAME's first disk was compacted after
# AFTER_US (microseconds since the epoch) and is no longer pending
e2e_compacted() {
        [[ "$(e2e_state_get "$1" "$2" \
                "s['disks'][0]['last_compaction_time'] > $3 and not s['disks'][0]['pending']")" == True ]]
}

# e2e_pending STATE NAME: the state says NAME's first disk is pending (a report came)
e2e_pending() {
        [[ "$(e2e_state_get "$1" "$2" "s['disks'][0]['pending']")" == True ]]
}

e2e_now_us() { echo $(($(date +%s%N) / 1000)); }
