#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# `reclaim-agent run` while `reclaim-agent serve` holds the port (a pty standing in for the
# virtio-serial port, locked by serve): run finds it busy and hands its Report to serve on the
# control socket; serve forwards it to the host (fake-host handoff).
#  1. host there: fake-host gets the run's Report (in_reply_to 0, the run's figures) and
#     `run --json` says report_sent true, report_via serve;
#  2. host away: serve takes the reports anyway (two runs: the newer replaces the older) and
#     delivers the newest once the host answers Hello;
#  3. bad clients on the control socket (garbage, an oversized length, a frame that is not a
#     Report, half a frame, a silent client): no answer to any, serve keeps serving and the
#     next run's report still reaches the host;
#  4. no serve and a busy port: the work is done, "the report is not sent", report_sent false.
# shellcheck source=functions.sh
source "$(dirname "$0")/functions.sh"

RECLAIM_AGENT=${RECLAIM_AGENT:-$BUILDDIR/agent/reclaim-agent}
FAKE_HOST=${FAKE_HOST:-$BUILDDIR/tests/agent/fake-host}
[[ -x "$RECLAIM_AGENT" ]] || fail "reclaim-agent not found: '$RECLAIM_AGENT'"
[[ -x "$FAKE_HOST" ]] || fail "fake-host not found: '$FAKE_HOST'"
[[ -c /dev/ptmx ]] || skip "no /dev/ptmx"

# shellcheck disable=SC2119 # make_fs takes mount options, not the script's arguments
make_fs
PORT="$T/org.reclaim.agent.0"
CTL="$T/ctl/serve.sock"
CONF="$T/agent.conf"
: >"$CONF"
HOST=''
SERVE=''

agent() {
        RC=0
        "$RECLAIM_AGENT" --config "$CONF" "$@" >"$T/out" 2>"$T/err" || RC=$?
}

jget() {
        python3 -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
                "$T/out" "$1" 2>/dev/null ||
                fail "cannot read '$1' from the JSON output: $(cat "$T/out")"
}

hget() {
        awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); print; found = 1 } END { exit !found }' "$T/host.out" ||
                fail "key '$1' missing in fake-host's output: $(cat "$T/host.out")"
}

# host_start ARGS...: fake-host handoff on the pty; waits for the port link.
host_start() {
        rm -f "$PORT"
        "$FAKE_HOST" handoff --pty "$PORT" "$@" >"$T/host.out" 2>&1 &
        HOST=$!
        BG_PIDS+=("$HOST")
        local i
        for ((i = 0; i < 100; i++)); do
                [[ -L "$PORT" ]] && return 0
                sleep 0.05
        done
        fail "fake-host did not create the port: $(cat "$T/host.out")"
}

host_wait() {
        local rc=0
        wait "$HOST" || rc=$?
        HOST=''
        [[ $rc -eq 0 ]] || {
                echo "--- serve log:" >&2
                cat "$T/serve.err" >&2
                fail "fake-host failed ($rc): $(cat "$T/host.out")"
        }
}

# serve_start: serve on the pty, with the control socket at $CTL; waits for the socket.
serve_start() {
        "$RECLAIM_AGENT" serve --config "$CONF" --port "$PORT" --control-socket "$CTL" \
                --filesystem /nonexistent >/dev/null 2>"$T/serve.err" &
        SERVE=$!
        BG_PIDS+=("$SERVE")
        local i
        for ((i = 0; i < 100; i++)); do
                [[ -S "$CTL" ]] && return 0
                sleep 0.05
        done
        fail "serve did not create $CTL: $(cat "$T/serve.err")"
}

serve_stop() {
        local rc=0
        kill -0 "$SERVE" 2>/dev/null || fail "serve died: $(tail -5 "$T/serve.err")"
        kill -TERM "$SERVE"
        wait "$SERVE" || rc=$?
        SERVE=''
        [[ $rc -eq 0 ]] || fail "serve exited with $rc after SIGTERM: $(tail -5 "$T/serve.err")"
        [[ ! -e "$CTL" ]] || fail "serve left $CTL behind"
}

# check_handed_run N: `run --json` output in $T/out and fake-host's report N agree.
check_handed_run() {
        local n=$1
        expect_rc 0 "run with serve holding the port"
        [[ $(jget 'j["report_sent"]') == True ]] || fail "report_sent is not true: $(cat "$T/out" "$T/err")"
        [[ $(jget 'j["report_via"]') == serve ]] || fail "report_via is not serve: $(cat "$T/out")"
        grep -q "handed to reclaim-agent serve" "$T/err" || fail "no log line about the hand-over: $(cat "$T/err")"
        [[ $(hget "report$n.in_reply_to") -eq 0 ]] || fail "in_reply_to $(hget "report$n.in_reply_to")"
        [[ $(hget "report$n.filesystems") -eq 1 ]] || fail "report has $(hget "report$n.filesystems") filesystems"
        [[ $(hget "report$n.fs0.mount_point") == "$MNT" ]] || fail "report about $(hget "report$n.fs0.mount_point")"
        [[ $(hget "report$n.fs0.device") == "$LOOP" ]] || fail "device $(hget "report$n.fs0.device")"
        [[ $(hget "report$n.fs0.bytes") -eq $(jget 'j["filesystems"][0]["bytes"]') ]] ||
                fail "host got $(hget "report$n.fs0.bytes") bytes, run says $(jget 'j["filesystems"][0]["bytes"]')"
        [[ $(hget "report$n.fs0.method") == "$(jget 'j["filesystems"][0]["method"]')" ]] ||
                fail "host got method $(hget "report$n.fs0.method")"
}

# 1. serve holds the port, the host is there
host_start
serve_start
[[ $(stat -c %a "$CTL") == 600 ]] || fail "control socket mode $(stat -c %a "$CTL"), want 600"
[[ $(stat -c %a "$(dirname "$CTL")") == 700 ]] || fail "control socket directory mode $(stat -c %a "$(dirname "$CTL")")"
agent run --port "$PORT" --control-socket "$CTL" --mode zero --rate 0 --reserve 0 \
        --filesystem "$MNT" --json
host_wait
check_handed_run 1
[[ $(hget report1.fs0.method) == zero ]] || fail "method $(hget report1.fs0.method), want zero"
[[ $(hget report1.fs0.bytes) -gt $((100 * MiB)) ]] || fail "zeroed only $(hget report1.fs0.bytes) bytes"
serve_stop
log "host there: the run's report went through serve ($(mib "$(hget report1.fs0.bytes)"))"

# 2. serve holds the port, the host does not answer yet: kept, delivered when it does
rm -f "$T/go"
host_start --go-file "$T/go"
serve_start
agent run --port "$PORT" --control-socket "$CTL" --mode trim --filesystem "$MNT" --json
[[ $(jget 'j["report_sent"]') == True ]] || fail "host away: report_sent is not true: $(cat "$T/err")"
agent run --port "$PORT" --control-socket "$CTL" --mode zero --rate 0 --reserve 0 \
        --filesystem "$MNT" --json
[[ $(jget 'j["report_sent"]') == True ]] || fail "host away: report_sent is not true: $(cat "$T/err")"
touch "$T/go"
host_wait
check_handed_run 1
[[ $(hget report1.fs0.method) == zero ]] || fail "host away: got the older report ($(hget report1.fs0.method))"
grep -q "kept for the host" "$T/serve.err" || fail "serve did not say it kept the report: $(cat "$T/serve.err")"
grep -q "replaces an older hand-over" "$T/serve.err" || fail "serve did not say it replaced the older report"
serve_stop
log "host away: the newest report was kept and delivered when the host came"

# 3. bad clients, then a good run
host_start --reports 1
serve_start
python3 - "$CTL" <<'EOF' || fail "bad clients: $?"
import socket, struct, sys, time, zlib

path = sys.argv[1]
MAGIC = 0x4D4C4352


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def frame(payload):
    return struct.pack("<III", MAGIC, len(payload), zlib.crc32(payload)) + payload


def client(data, close_write=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    answer = b""
    try:
        if data:
            s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        answer = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        pass  # serve closed on us with data unread: a reset, no answer
    s.close()
    if answer:
        sys.exit("serve answered a bad client: %r" % answer)


# protocol_version 1.0, seq 1, and a Ping body (field 23) instead of a Report
ping = b"\x08" + varint(1 << 16) + b"\x10\x01" + varint(23 << 3 | 2) + b"\x02\x08\x01"
client(b"garbage, not a frame\n" * 50)
client(struct.pack("<III", MAGIC, 1 << 20, 0))  # above the 64 KiB cap
client(struct.pack("<III", MAGIC, 0xFFFFFFFF, 0) + b"x" * 100)
client(frame(ping))
client(struct.pack("<III", MAGIC, 100, 0) + b"x" * 10)  # half a frame, then EOF
bad = bytearray(frame(ping))
bad[-1] ^= 1
client(bytes(bad))  # CRC mismatch
client(struct.pack("<I", MAGIC)[:3])  # half a header
# a client that says nothing and keeps its end open: dropped after its deadline
t0 = time.monotonic()
client(b"", close_write=False)
if time.monotonic() - t0 > 8:
    sys.exit("a silent client was held too long")
EOF
kill -0 "$SERVE" 2>/dev/null || fail "serve died with bad clients: $(tail -5 "$T/serve.err")"
grep -q "Control socket: dropping a client" "$T/serve.err" || fail "no log line about bad clients"
agent run --port "$PORT" --control-socket "$CTL" --mode trim --filesystem "$MNT" --json
host_wait
check_handed_run 1
serve_stop
log "bad clients: dropped without an answer; serve still forwards reports"

# 4. no serve, and the port held by another process: the old behaviour
# (the lock is this shell's own, on its own open file: no process left behind)
exec 9>"$T/busy-port"
flock -x 9
agent run --port "$T/busy-port" --control-socket "$T/nobody.sock" --mode trim \
        --filesystem "$MNT" --json
expect_rc 0 "run with a busy port and no serve"
[[ $(jget 'j["report_sent"]') == False ]] || fail "report_sent without serve"
[[ $(jget 'j["report_via"]') == None ]] || fail "report_via without serve: $(jget 'j["report_via"]')"
grep -q "held by another process and no reclaim-agent serve took the report; the report is not sent" "$T/err" ||
        fail "no log line about the unsent report: $(cat "$T/err")"
exec 9>&-
log "no serve: report_sent false"
log "ok"
