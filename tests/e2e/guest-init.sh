#!/bin/busybox sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# /init of the end-to-end test's guest (tests/e2e/vm-lib.sh builds the initramfs around it).
# It plays a small Linux guest: loads the virtio and ext4 modules, makes
# /dev/virtio-ports/org.reclaim.agent.0 by hand (there is no udev), mounts /dev/vda on /data
# and does what `e2e.mode=` on the kernel command line says:
#
#   run     reclaim-agent run --json (what the agent's nightly timer does), then power off
#   serve   reclaim-agent serve (what udev starts when the port appears) until one reclaim run
#           is done and reported, or e2e.serve_timeout= seconds pass; then power off
#   verify  mount read-only, print the checksum of every file; then power off
#   idle    print the checksums and wait for e2e.idle= seconds (default 600), then power off
#
# Every line the test parses on the serial console starts with "E2E ". The checksum lines are
# "E2E SUM sha256 PATH"; the agent's JSON summary comes between "E2E AGENT-JSON-BEGIN" and
# "E2E AGENT-JSON-END"; the last line is "E2E DONE rc=N" (N is 0 when everything worked).

/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/sbin:/usr/sbin

mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

uptime_s() { cut -d' ' -f1 /proc/uptime; }
say() { echo "E2E $*"; }
note() { echo "[guest $(uptime_s)] $*"; }
finish() { # RC: unmount, report, power off
        cd /
        umount /data 2>/dev/null
        sync
        say "DONE rc=$1"
        poweroff -f
        sleep 30
}
die() {
        say "ERROR $*"
        finish 1
}

arg() { # NAME DEFAULT: the value of NAME= on the kernel command line
        for w in $(cat /proc/cmdline); do
                case $w in "$1"=*)
                        echo "${w#*=}"
                        return
                        ;;
                esac
        done
        echo "$2"
}
mode=$(arg e2e.mode verify)
note "mode $mode, kernel $(uname -r)"
hostname reclaim-e2e

for m in $(cat /lib/modules/load.order); do
        insmod "/lib/modules/$m.ko" || note "insmod $m failed"
done

i=0
while [ ! -b /dev/vda ] && [ $i -lt 400 ]; do
        sleep 0.05
        i=$((i + 1))
done
[ -b /dev/vda ] || die "no /dev/vda"

# No udev: find the port by its name in sysfs and link it where the agent looks for it.
port_name=org.reclaim.agent.0
port=
i=0
while [ -z "$port" ] && [ $i -lt 200 ]; do
        for p in /sys/class/virtio-ports/*; do
                [ "$(cat "$p/name" 2>/dev/null)" = "$port_name" ] && port=$p
        done
        [ -n "$port" ] || { sleep 0.05; i=$((i + 1)); }
done
if [ -n "$port" ]; then
        dev=/dev/${port##*/}
        if [ ! -c "$dev" ]; then
                mm=$(cat "$port/dev")
                mknod "$dev" c "${mm%:*}" "${mm#*:}"
        fi
        mkdir -p /dev/virtio-ports
        ln -sf "$dev" "/dev/virtio-ports/$port_name"
        note "port $port_name is $dev"
else
        note "no virtio port named $port_name"
fi

sums() {
        (cd /data && find . -type f ! -path './lost+found/*' | sort | while read -r f; do
                sum=$(sha256sum "$f")
                say "SUM ${sum%% *} ${f#./}"
        done)
}

mkdir -p /data
case $mode in
verify | idle) mount -t ext4 -o ro /dev/vda /data || die "cannot mount /dev/vda" ;;
*) mount -t ext4 /dev/vda /data || die "cannot mount /dev/vda" ;;
esac
say "DF $(df -k /data | awk 'NR == 2 { print $2, $3, $4 }')"

case $mode in
run)
        rc=0
        reclaim-agent run --json >/tmp/agent.json 2>/tmp/agent.log || rc=$?
        cat /tmp/agent.log
        say "AGENT-JSON-BEGIN"
        cat /tmp/agent.json
        say "AGENT-JSON-END"
        say "AGENT rc=$rc"
        finish "$rc"
        ;;
serve)
        limit=$(arg e2e.serve_timeout 300)
        reclaim-agent serve >/tmp/agent.log 2>&1 &
        agent=$!
        i=0
        while ! grep -q "Reclaim run done" /tmp/agent.log && [ $i -lt $((limit * 10)) ]; do
                kill -0 $agent 2>/dev/null || break
                sleep 0.1
                i=$((i + 1))
        done
        sleep 2 # the report goes out after the run is done
        kill -TERM $agent 2>/dev/null
        rc=0
        wait $agent || rc=$?
        cat /tmp/agent.log
        if ! grep -q "Reclaim run done" /tmp/agent.log; then
                say "ERROR serve saw no reclaim request"
                [ "$rc" = 0 ] && rc=1
        fi
        say "AGENT rc=$rc"
        finish "$rc"
        ;;
verify)
        sums
        finish 0
        ;;
idle)
        sums
        sleep "$(arg e2e.idle 600)"
        finish 0
        ;;
*)
        die "unknown e2e.mode=$mode"
        ;;
esac
