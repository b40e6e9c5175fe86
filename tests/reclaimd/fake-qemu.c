/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fake-qemu: the host end of a VM's org.reclaim.agent.0 port as QEMU serves it
 * (server=on,wait=off), with a scripted guest agent behind it, for the reclaimd tests.
 *
 *   fake-qemu report --socket PATH [--bytes N] [--wait-ping]
 *       listen on PATH, accept reclaimd, send Hello, wait for HelloAck, send a Report
 *       (one ext4 filesystem, N bytes zeroed), then close: the VM stopped. Exit 0.
 *       With --wait-ping the guest stays silent until reclaimd pings it (an agent that
 *       missed the connect), then answers with Hello first and a Pong.
 *   fake-qemu serve --socket PATH [--bytes N]
 *       a running VM whose agent waits for requests: Hello, HelloAck, then for each
 *       ReclaimRequest a Progress and a Report of N bytes; stays connected until killed.
 *   fake-qemu flood --socket PATH --frames N [--start-file FILE]
 *       a talkative guest (tests/bench/daemon-channels): Hello, HelloAck, (once FILE
 *       exists), then N valid
 *       Progress frames as fast as reclaimd reads them; prints "# flood done", then stays
 *       connected and silent until killed.
 *   fake-qemu hostile --socket PATH
 *       a hostile guest, for every connection until killed: garbage, a frame header with an
 *       oversized length, a Hello then a flood of frames, a frame that never completes; then
 *       it keeps the connection open, reading and discarding, until reclaimd closes it.
 *
 * Failures print "FAIL: ..." and exit 1; usage errors exit 2. "# " lines are notes.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fake-peer.h"
#include "macro.h"
#include "rpc-frame.h"
#include "rpc-message.h"

/* Writes everything; returns false when the peer went away. */
static bool send_all(int fd, const void *buf, size_t n) {
        const uint8_t *p = buf;

        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return false;
                p += k;
                n -= (size_t) k;
        }
        return true;
}

static bool send_msg(int fd, Reclaim__Envelope *m) {
        _cleanup_free_ uint8_t *frame = NULL;
        size_t len;
        int r;

        r = rpc_message_pack(m, &frame, &len);
        if (r < 0)
                fail("pack: %s", strerror(-r));
        return send_all(fd, frame, len);
}

static bool send_hello(int fd, uint64_t seq) {
        static char version[] = "0.1.0", host[] = "fake-guest",
                    mid[] = "0123456789abcdef0123456789abcdef", boot[] = "boot";
        Reclaim__Envelope m;
        Reclaim__Hello h;

        reclaim__hello__init(&h);
        h.protocol_version = RPC_PROTOCOL_VERSION;
        h.agent_version = version;
        h.hostname = host;
        h.machine_id = mid;
        h.boot_id = boot;
        rpc_message_init(&m, seq);
        m.body_case = RECLAIM__ENVELOPE__BODY_HELLO;
        m.hello = &h;
        return send_msg(fd, &m);
}

/* Waits (at most 30 s; for a ReclaimRequest, as long as it takes) for a message of body kind;
 * fails on anything else. Returns its seq and, for a Ping, its nonce in *ret_nonce. */
static uint64_t wait_msg(int fd, Reclaim__Envelope__BodyCase kind, uint64_t *ret_nonce) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();

        if (!d)
                fail("out of memory");
        for (int rounds = 0; kind == RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST || rounds < 300;
             rounds++) {
                struct pollfd pf = { .fd = fd, .events = POLLIN };
                uint8_t buf[4096];
                const uint8_t *payload;
                size_t len;
                ssize_t n;

                if (poll(&pf, 1, 100) <= 0)
                        continue;
                n = read(fd, buf, sizeof(buf));
                if (n <= 0)
                        fail("reclaimd closed the channel while we waited for %s",
                             rpc_message_body_name(kind));
                if (rpc_decoder_feed(d, buf, (size_t) n) != n)
                        fail("decoder full");
                while (rpc_decoder_next(d, &payload, &len) > 0) {
                        Reclaim__Envelope *m = NULL;
                        uint64_t seq;
                        bool ok;

                        if (rpc_message_unpack(payload, len, &m) < 0)
                                fail("bad frame from reclaimd");
                        ok = m->body_case == kind;
                        if (kind == RECLAIM__ENVELOPE__BODY_HELLO_ACK)
                                ok = ok && m->hello_ack && m->in_reply_to == 1 &&
                                        m->hello_ack->policy;
                        if (kind == RECLAIM__ENVELOPE__BODY_PING && ok && ret_nonce)
                                *ret_nonce = m->ping ? m->ping->nonce : 0;
                        seq = m->seq;
                        reclaim__envelope__free_unpacked(m, NULL);
                        if (!ok)
                                fail("expected %s from reclaimd", rpc_message_body_name(kind));
                        printf("# %s\n", rpc_message_body_name(kind));
                        fflush(stdout);
                        return seq;
                }
        }
        fail("no %s within 30 s", rpc_message_body_name(kind));
}

static void wait_hello_ack(int fd) {
        (void) wait_msg(fd, RECLAIM__ENVELOPE__BODY_HELLO_ACK, NULL);
}

static bool send_pong(int fd, uint64_t seq, uint64_t nonce, uint64_t in_reply_to) {
        Reclaim__Envelope m;
        Reclaim__Pong pong;

        reclaim__pong__init(&pong);
        pong.nonce = nonce;
        rpc_message_init(&m, seq);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_PONG;
        m.pong = &pong;
        return send_msg(fd, &m);
}

/* A Report of one ext4 filesystem with bytes zeroed, answering in_reply_to (0: none). */
static bool send_report(int fd, uint64_t seq, uint64_t in_reply_to, uint64_t bytes) {
        static char mnt[] = "/", dev[] = "/dev/vda1", fstype[] = "ext4";
        Reclaim__Envelope m;
        Reclaim__Report rep;
        Reclaim__FsReport fs, *fss[1] = { &fs };

        reclaim__fs_report__init(&fs);
        fs.mount_point = mnt;
        fs.device = dev;
        fs.fstype = fstype;
        fs.method = RECLAIM__METHOD__METHOD_ZERO;
        fs.bytes = bytes;
        fs.outcome = RECLAIM__OUTCOME__OUTCOME_OK;
        reclaim__report__init(&rep);
        rep.filesystems = fss;
        rep.n_filesystems = 1;
        rep.mode = RECLAIM__MODE__MODE_ZERO;
        rpc_message_init(&m, seq);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_REPORT;
        m.report = &rep;
        return send_msg(fd, &m);
}

static bool
send_progress(int fd, uint64_t seq, uint64_t in_reply_to, uint64_t done, uint64_t total) {
        static char mnt[] = "/";
        Reclaim__Envelope m;
        Reclaim__Progress p;

        reclaim__progress__init(&p);
        p.mount_point = mnt;
        p.method = RECLAIM__METHOD__METHOD_ZERO;
        p.bytes_done = done;
        p.bytes_total = total;
        p.filesystems_total = 1;
        rpc_message_init(&m, seq);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_PROGRESS;
        m.progress = &p;
        return send_msg(fd, &m);
}

static int do_serve(const char *path, uint64_t bytes) {
        int lfd = fake_listen(path, 1), fd;
        uint64_t seq = 2;

        printf("# listening on %s\n", path);
        fflush(stdout);
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                fail("accept: %s", strerror(errno));
        if (!send_hello(fd, 1))
                fail("send Hello");
        wait_hello_ack(fd);
        for (;;) {
                uint64_t req = wait_msg(fd, RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST, NULL);

                if (!send_progress(fd, seq++, req, bytes / 2, bytes) ||
                    !send_report(fd, seq++, req, bytes))
                        fail("send Report");
                printf("# report sent\n");
                fflush(stdout);
        }
}

static int do_flood(const char *path, uint64_t frames, const char *start_file) {
        int lfd = fake_listen(path, 1), fd;
        uint8_t buf[4096];

        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                fail("accept: %s", strerror(errno));
        if (!send_hello(fd, 1))
                fail("send Hello");
        wait_hello_ack(fd);
        while (start_file && access(start_file, F_OK) < 0)
                (void) usleep(10000);
        for (uint64_t i = 0; i < frames; i++)
                if (!send_progress(fd, 2 + i, 0, i, frames))
                        fail("send Progress %" PRIu64, i);
        printf("# flood done\n");
        fflush(stdout);
        while (read(fd, buf, sizeof(buf)) > 0)
                ;
        return 0;
}

static int do_report(const char *path, uint64_t bytes, bool wait_ping) {
        int lfd = fake_listen(path, 1), fd;

        printf("# listening on %s\n", path);
        fflush(stdout);
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                fail("accept: %s", strerror(errno));
        uint64_t seq = 2;
        if (wait_ping) {
                uint64_t nonce = 0, ping_seq = wait_msg(fd, RECLAIM__ENVELOPE__BODY_PING, &nonce);

                if (!send_hello(fd, 1))
                        fail("send Hello");
                wait_hello_ack(fd);
                if (!send_pong(fd, seq++, nonce, ping_seq))
                        fail("send Pong");
        } else {
                if (!send_hello(fd, 1))
                        fail("send Hello");
                wait_hello_ack(fd);
        }

        if (!send_report(fd, seq, 0, bytes))
                fail("send Report");
        printf("# report sent\n");
        fflush(stdout);
        /* the VM stops: QEMU closes the socket and removes it */
        (void) close(fd);
        (void) close(lfd);
        (void) unlink(path);
        return 0;
}

/*
 * First connection: garbage, an oversized length, a flood, then runs of garbage between valid
 * frames until reclaimd resets the channel. Later connections: a Hello, then a frame that
 * never completes, held open.
 */
static bool hostile_script(int fd, unsigned conn) {
        uint8_t garbage[4096], header[RPC_FRAME_HEADER_SIZE], partial[1000];
        uint32_t v;

        if (conn > 1) {
                if (!send_hello(fd, 1))
                        return false;
                goto never_completes;
        }

        /* 1. garbage */
        for (size_t i = 0; i < sizeof(garbage); i++)
                garbage[i] = (uint8_t) (i * 37u + 11u);
        if (!send_all(fd, garbage, sizeof(garbage)))
                return false;
        /* 2. a header claiming 2 GiB */
        v = RPC_FRAME_MAGIC;
        memcpy(header, &v, 4);
        v = 0x7fffffffu;
        memcpy(header + 4, &v, 4);
        memset(header + 8, 0, 4);
        if (!send_all(fd, header, sizeof(header)))
                return false;
        /* 3. a Hello, then a flood of Hellos and garbage-bodied frames */
        if (!send_hello(fd, 1))
                return false;
        for (uint64_t i = 0; i < 5000; i++)
                if (!send_hello(fd, 2 + i))
                        return false;
        /* 4. many separate errors: each run of garbage between two frames counts once */
        for (uint64_t i = 0; i < 64; i++)
                if (!send_all(fd, garbage, 64) || !send_hello(fd, 6000 + i))
                        return false;
        return true;

never_completes:
        /* a frame that never completes: header for 60000 bytes, 1000 sent */
        memset(partial, 0x55, sizeof(partial));
        if (rpc_frame_header_write(partial, sizeof(partial), header) < 0)
                fail("header");
        v = 60000;
        memcpy(header + 4, &v, 4);
        if (!send_all(fd, header, sizeof(header)) || !send_all(fd, partial, sizeof(partial)))
                return false;
        return true;
}

static int do_hostile(const char *path) {
        int lfd = fake_listen(path, 1);
        unsigned n = 0;

        printf("# listening on %s\n", path);
        fflush(stdout);
        for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                uint8_t buf[4096];

                if (fd < 0) {
                        if (errno == EINTR)
                                continue;
                        fail("accept: %s", strerror(errno));
                }
                printf("# connection %u\n", ++n);
                fflush(stdout);
                if (hostile_script(fd, n))
                        /* keep it open, reading whatever comes, until reclaimd drops us */
                        while (read(fd, buf, sizeof(buf)) > 0)
                                ;
                (void) close(fd);
        }
}

int main(int argc, char *argv[]) {
        const char *socket_path = NULL;
        uint64_t bytes = 64u << 20, frames = 1000;
        const char *start_file = NULL;
        bool wait_ping = false;

        for (int i = 2; i < argc; i++) {
                if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
                        socket_path = argv[++i];
                else if (strcmp(argv[i], "--bytes") == 0 && i + 1 < argc)
                        bytes = strtoull(argv[++i], NULL, 10);
                else if (strcmp(argv[i], "--start-file") == 0 && i + 1 < argc)
                        start_file = argv[++i];
                else if (strcmp(argv[i], "--frames") == 0 && i + 1 < argc)
                        frames = strtoull(argv[++i], NULL, 10);
                else if (strcmp(argv[i], "--wait-ping") == 0)
                        wait_ping = true;
                else {
                        fprintf(stderr, "fake-qemu: bad argument '%s'\n", argv[i]);
                        return 2;
                }
        }
        if (argc < 2 || !socket_path) {
                fprintf(stderr,
                        "Usage: fake-qemu report|serve|flood|hostile --socket PATH [--bytes N] [--wait-ping]\n");
                return 2;
        }
        (void) signal(SIGPIPE, SIG_IGN);
        if (strcmp(argv[1], "report") == 0)
                return do_report(socket_path, bytes, wait_ping);
        if (strcmp(argv[1], "hostile") == 0)
                return do_hostile(socket_path);
        if (strcmp(argv[1], "serve") == 0)
                return do_serve(socket_path, bytes);
        if (strcmp(argv[1], "flood") == 0)
                return do_flood(socket_path, frames, start_file);
        fprintf(stderr, "fake-qemu: unknown scenario '%s'\n", argv[1]);
        return 2;
}
