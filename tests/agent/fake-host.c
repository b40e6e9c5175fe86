/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fake-host: a scripted host end for the reclaim-agent integration tests. It speaks the real
 * protocol (proto/: frames, Envelope, the same decoder reclaimd uses) over a UNIX socket the
 * agent connects to (--socket), or over a pseudo-terminal standing in for the virtio-serial
 * port (--pty LINK: the agent opens LINK, a symlink to the pty's slave).
 *
 *   fake-host report --socket PATH
 *       accept one agent (`reclaim-agent run`), check its Hello, answer HelloAck, receive the
 *       Report; print it as key=value lines
 *   fake-host serve --socket PATH --mount MNT --agent-pid-file FILE
 *       the serve scenario: Hello/HelloAck with a policy, Ping/Pong, a clamped request with
 *       Progress and Report, a refused mode, Cancel of a slow fill (with a second request
 *       waiting on it), host absence and a flapping host (the agent's CPU time must stay
 *       small: it must not spin), reconnection, and SIGTERM during a fill
 *   fake-host port --pty LINK --agent-pid-file FILE
 *       Hello/HelloAck/Ping over the pty, then the host end goes away for good (POLLHUP on the
 *       agent's side, like a virtio port without host): the agent must not spin
 *   fake-host handoff --pty LINK [--go-file FILE] [--reports N]
 *       serve holds the port (the pty) and runs hand their reports to it: wait until FILE
 *       exists (the host is away until then: Hello goes unanswered), answer Hello, then
 *       receive N (default 1) Reports with in_reply_to 0 and print them as key=value lines
 *       (report1.*, report2.*, ...)
 *
 * Every check that fails prints "FAIL: ..." and exits 1; a usage error exits 2. Lines
 * starting with "# " are progress notes.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "fake-peer.h"
#include "macro.h"
#include "rpc-frame.h"
#include "rpc-message.h"

#define MiB (UINT64_C(1) << 20)
#define NSEC_PER_MSEC UINT64_C(1000000)
#define NSEC_PER_SEC UINT64_C(1000000000)
/* The agent may use this much CPU while no host is there, over ABSENCE_NS: a spinning
 * agent uses all of it (a ratio of CPU time to wall time, not a wall-clock bound). */
#define ABSENCE_NS (2 * NSEC_PER_SEC)
#define ABSENCE_CPU_MAX 0.2

static const char *arg_socket, *arg_pty, *arg_mount, *arg_pid_file, *arg_go_file;
static unsigned arg_reports = 1;

static void note(const char *fmt, ...) _printf_(1, 2);

static void note(const char *fmt, ...) {
        va_list ap;

        fputs("# ", stdout);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
        fflush(stdout);
}

static uint64_t now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
        struct timespec ts = { .tv_sec = (time_t) (ns / NSEC_PER_SEC),
                               .tv_nsec = (long) (ns % NSEC_PER_SEC) };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* ---- the agent process ---- */

static pid_t agent_pid(void) {
        uint64_t deadline = now_ns() + 10 * NSEC_PER_SEC;

        if (!arg_pid_file)
                fail("--agent-pid-file is needed for this scenario");
        while (now_ns() < deadline) {
                FILE *f = fopen(arg_pid_file, "re");
                long pid = 0;

                if (f) {
                        int n = fscanf(f, "%ld", &pid);
                        fclose(f);
                        if (n == 1 && pid > 0)
                                return (pid_t) pid;
                }
                sleep_ns(50 * NSEC_PER_MSEC);
        }
        fail("no pid in %s", arg_pid_file);
}

/* utime + stime of the whole process (all threads), in seconds. */
static double agent_cpu_seconds(pid_t pid) {
        char path[64], buf[2048];
        unsigned long utime = 0, stime = 0;
        const char *p;
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "/proc/%ld/stat", (long) pid);
        f = fopen(path, "re");
        if (!f)
                fail("agent %ld is gone: %s", (long) pid, strerror(errno));
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* after "pid (comm) ", fields 3..: state ppid pgrp session tty tpgid flags minflt
         * cminflt majflt cmajflt utime stime */
        p = strrchr(buf, ')');
        if (!p ||
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) !=
                    2)
                fail("cannot parse %s", path);
        return (double) (utime + stime) / (double) sysconf(_SC_CLK_TCK);
}

/* ---- framing ---- */

typedef struct Conn {
        int fd;
        RpcDecoder *dec;
        uint64_t seq;
        /* Progress seen while waiting for something else */
        unsigned n_progress;
        uint64_t first_progress_ns, last_progress_ns;
        uint64_t last_progress_bytes;
        uint64_t progress_reply_to;
        uint8_t in[4096]; /* read but not yet taken by the decoder: in[in_off..in_len) */
        size_t in_off, in_len;
} Conn;

static void conn_open(Conn *c, int fd) {
        rpc_decoder_free(c->dec);
        *c = (Conn){ .fd = fd, .dec = rpc_decoder_new() };
        if (!c->dec)
                fail("out of memory");
}

static void conn_close(Conn *c) {
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
}

static void write_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        struct pollfd pf = { .fd = fd, .events = POLLOUT };
                        (void) poll(&pf, 1, 1000);
                        continue;
                }
                if (k <= 0)
                        fail("write to the agent: %s", k < 0 ? strerror(errno) : "EOF");
                p += k;
                n -= (size_t) k;
        }
}

/* Sends m (its seq set here); returns the seq. */
static uint64_t send_msg(Conn *c, Reclaim__Envelope *m) {
        _cleanup_free_ uint8_t *frame = NULL;
        size_t len;
        int r;

        m->seq = ++c->seq;
        r = rpc_message_pack(m, &frame, &len);
        if (r < 0)
                fail("pack: %s", strerror(-r));
        write_all(c->fd, frame, len);
        return m->seq;
}

/*
 * The next message from the agent, within timeout_ns. Returns 1 and *ret (caller frees),
 * 0 on timeout, -EPIPE on EOF/hangup. Bytes the decoder could not take yet wait in c->in.
 */
static int recv_msg(Conn *c, uint64_t timeout_ns, Reclaim__Envelope **ret) {
        uint64_t deadline = now_ns() + timeout_ns;

        for (;;) {
                const uint8_t *payload;
                size_t len;
                struct pollfd pf = { .fd = c->fd, .events = POLLIN };
                uint64_t now;
                ssize_t n;
                int r;

                if (c->in_off < c->in_len) {
                        r = rpc_decoder_feed(c->dec, c->in + c->in_off, c->in_len - c->in_off);
                        if (r < 0)
                                fail("decoder: %s", strerror(-r));
                        c->in_off += (size_t) r;
                }
                r = rpc_decoder_next(c->dec, &payload, &len);
                if (rpc_decoder_errors(c->dec) > 0)
                        fail("%" PRIu64 " framing errors from the agent",
                             rpc_decoder_errors(c->dec));
                if (r > 0) {
                        Reclaim__Envelope *m = NULL;
                        r = rpc_message_unpack(payload, len, &m);
                        if (r < 0)
                                fail("the agent sent an invalid message: %s", strerror(-r));
                        if (m->protocol_version != RPC_PROTOCOL_VERSION)
                                fail("envelope protocol_version %#x", m->protocol_version);
                        *ret = m;
                        return 1;
                }
                if (c->in_off < c->in_len)
                        continue;

                now = now_ns();
                if (now >= deadline)
                        return 0;
                r = poll(&pf, 1, (int) MAX((deadline - now) / NSEC_PER_MSEC, (uint64_t) 1));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        fail("poll: %s", strerror(errno));
                if (r == 0)
                        continue;
                n = read(c->fd, c->in, sizeof(c->in));
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0 && errno != EIO && errno != ECONNRESET)
                        fail("read: %s", strerror(errno));
                if (n <= 0)
                        return -EPIPE;
                c->in_off = 0;
                c->in_len = (size_t) n;
        }
}

static void note_progress(Conn *c, const Reclaim__Envelope *m) {
        uint64_t t = now_ns();

        if (c->n_progress == 0)
                c->first_progress_ns = t;
        c->n_progress++;
        c->last_progress_ns = t;
        c->last_progress_bytes = m->progress->bytes_done;
        c->progress_reply_to = m->in_reply_to;
}

/* Waits for a message of the given body, recording Progress; fails on anything else. */
static Reclaim__Envelope *expect(Conn *c, Reclaim__Envelope__BodyCase want, uint64_t timeout_ns) {
        uint64_t deadline = now_ns() + timeout_ns;

        for (;;) {
                Reclaim__Envelope *m = NULL;
                uint64_t now = now_ns();
                int r;

                r = recv_msg(c, deadline > now ? deadline - now : 0, &m);
                if (r == 0)
                        fail("no '%s' from the agent in time", rpc_message_body_name(want));
                if (r < 0)
                        fail("the agent hung up while we waited for '%s'",
                             rpc_message_body_name(want));
                if (m->body_case == want)
                        return m;
                if (m->body_case == RECLAIM__ENVELOPE__BODY_PROGRESS) {
                        note_progress(c, m);
                        reclaim__envelope__free_unpacked(m, NULL);
                        continue;
                }
                fail("unexpected '%s' while waiting for '%s'",
                     rpc_message_body_name(m->body_case),
                     rpc_message_body_name(want));
        }
}

static void expect_eof(Conn *c, uint64_t timeout_ns) {
        Reclaim__Envelope *m = NULL;
        int r = recv_msg(c, timeout_ns, &m);

        if (r > 0)
                fail("unexpected '%s' instead of the end", rpc_message_body_name(m->body_case));
        if (r == 0)
                fail("the agent did not close the connection");
}

/* ---- messages ---- */

static void read_line(const char *path, char *buf, size_t size) {
        FILE *f = fopen(path, "re");

        buf[0] = '\0';
        if (!f)
                return;
        if (!fgets(buf, (int) size, f))
                buf[0] = '\0';
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
}

static bool has_cap(const Reclaim__Hello *h, Reclaim__Capability cap) {
        for (size_t i = 0; i < h->n_capabilities; i++)
                if (h->capabilities[i] == cap)
                        return true;
        return false;
}

static void check_hello(const Reclaim__Envelope *m, bool serving) {
        const Reclaim__Hello *h = m->hello;
        char boot_id[64], machine_id[64], hostname[256] = "";

        if (m->seq != 1)
                fail("Hello has seq %" PRIu64 ", want 1 (first message of a connection)", m->seq);
        if (h->protocol_version != RPC_PROTOCOL_VERSION)
                fail("Hello.protocol_version %#x, want %#x",
                     h->protocol_version,
                     RPC_PROTOCOL_VERSION);
        if (!h->agent_version || !h->agent_version[0])
                fail("Hello.agent_version is empty");
        read_line("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id));
        if (strcmp(h->boot_id, boot_id) != 0)
                fail("Hello.boot_id '%s', want '%s'", h->boot_id, boot_id);
        read_line("/etc/machine-id", machine_id, sizeof(machine_id));
        if (strcmp(h->machine_id, machine_id) != 0)
                fail("Hello.machine_id '%s', want '%s'", h->machine_id, machine_id);
        (void) gethostname(hostname, sizeof(hostname) - 1);
        if (strcmp(h->hostname, hostname) != 0)
                fail("Hello.hostname '%s', want '%s'", h->hostname, hostname);
        /* what the agent's mode allows: both for serve (run with mode auto), at least one */
        if (serving ? !(has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_TRIM) &&
                        has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_ZERO)) :
                      !(has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_TRIM) ||
                        has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_ZERO)))
                fail("Hello lacks the trim or zero capability");
        if (serving !=
            (has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_PROGRESS) &&
             has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_CANCEL)))
                fail("Hello: progress/cancel capabilities %s", serving ? "missing" : "unexpected");
        printf("hello.protocol_version=%u\n", h->protocol_version);
        printf("hello.agent_version=%s\n", h->agent_version);
        printf("hello.capabilities=%s%s%s%s\n",
               has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_TRIM) ? "trim," : "",
               has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_ZERO) ? "zero," : "",
               has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_PROGRESS) ? "progress," : "",
               has_cap(h, RECLAIM__CAPABILITY__CAPABILITY_CANCEL) ? "cancel," : "");
}

static uint64_t send_hello_ack(Conn *c, uint64_t hello_seq, const Reclaim__Policy *policy) {
        Reclaim__Envelope m;
        Reclaim__HelloAck a;
        Reclaim__Policy empty;
        char version[] = "fake-host";

        reclaim__policy__init(&empty);
        reclaim__hello_ack__init(&a);
        a.protocol_version = RPC_PROTOCOL_VERSION;
        a.host_version = version;
        /* the generated struct wants a non-const pointer; the copy keeps ours const */
        Reclaim__Policy copy = policy ? *policy : empty;
        a.policy = &copy;
        rpc_message_init(&m, 0);
        m.in_reply_to = hello_seq;
        m.body_case = RECLAIM__ENVELOPE__BODY_HELLO_ACK;
        m.hello_ack = &a;
        return send_msg(c, &m);
}

static uint64_t send_ping(Conn *c, uint64_t nonce) {
        Reclaim__Envelope m;
        Reclaim__Ping p;

        reclaim__ping__init(&p);
        p.nonce = nonce;
        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_PING;
        m.ping = &p;
        return send_msg(c, &m);
}

static uint64_t
send_request(Conn *c, Reclaim__Mode mode, uint64_t rate, uint64_t reserve_bytes, uint32_t percent) {
        Reclaim__Envelope m;
        Reclaim__ReclaimRequest r;

        reclaim__reclaim_request__init(&r);
        r.mode = mode;
        r.rate_bytes_per_sec = rate;
        r.reserve_bytes = reserve_bytes;
        r.reserve_percent = percent;
        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST;
        m.reclaim_request = &r;
        return send_msg(c, &m);
}

static void send_cancel(Conn *c, uint64_t request_seq) {
        Reclaim__Envelope m;
        Reclaim__Cancel x;

        reclaim__cancel__init(&x);
        x.request_seq = request_seq;
        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_CANCEL;
        m.cancel = &x;
        (void) send_msg(c, &m);
}

/* Ping and expect the Pong (Progress in between is fine). Returns Pong.busy. */
static bool ping_pong(Conn *c, uint64_t nonce) {
        uint64_t seq = send_ping(c, nonce);
        Reclaim__Envelope *m = expect(c, RECLAIM__ENVELOPE__BODY_PONG, 5 * NSEC_PER_SEC);
        bool busy = m->pong->busy;

        if (m->pong->nonce != nonce)
                fail("Pong.nonce %#" PRIx64 ", want %#" PRIx64, m->pong->nonce, nonce);
        if (m->in_reply_to != seq)
                fail("Pong.in_reply_to %" PRIu64 ", want %" PRIu64, m->in_reply_to, seq);
        reclaim__envelope__free_unpacked(m, NULL);
        return busy;
}

static const char *method_name(Reclaim__Method m) {
        switch (m) {
        case RECLAIM__METHOD__METHOD_TRIM:
                return "trim";
        case RECLAIM__METHOD__METHOD_ZERO:
                return "zero";
        case RECLAIM__METHOD__METHOD_SKIPPED:
                return "skipped";
        default:
                return "unspecified";
        }
}

static const char *outcome_name(Reclaim__Outcome o) {
        switch (o) {
        case RECLAIM__OUTCOME__OUTCOME_OK:
                return "ok";
        case RECLAIM__OUTCOME__OUTCOME_UNSUPPORTED:
                return "unsupported";
        case RECLAIM__OUTCOME__OUTCOME_STOPPED_AT_RESERVE:
                return "stopped-at-reserve";
        case RECLAIM__OUTCOME__OUTCOME_CANCELLED:
                return "cancelled";
        case RECLAIM__OUTCOME__OUTCOME_ERROR:
                return "error";
        default:
                return "unspecified";
        }
}

static void print_report(const char *prefix, const Reclaim__Envelope *m) {
        const Reclaim__Report *r = m->report;

        printf("%s.in_reply_to=%" PRIu64 "\n", prefix, m->in_reply_to);
        printf("%s.mode=%d\n", prefix, (int) r->mode);
        printf("%s.duration_ms=%" PRIu64 "\n", prefix, r->duration_ms);
        printf("%s.filesystems=%zu\n", prefix, r->n_filesystems);
        for (size_t i = 0; i < r->n_filesystems; i++) {
                const Reclaim__FsReport *f = r->filesystems[i];

                printf("%s.fs%zu.mount_point=%s\n", prefix, i, f->mount_point);
                printf("%s.fs%zu.device=%s\n", prefix, i, f->device);
                printf("%s.fs%zu.fstype=%s\n", prefix, i, f->fstype);
                printf("%s.fs%zu.method=%s\n", prefix, i, method_name(f->method));
                printf("%s.fs%zu.outcome=%s\n", prefix, i, outcome_name(f->outcome));
                printf("%s.fs%zu.bytes=%" PRIu64 "\n", prefix, i, f->bytes);
                printf("%s.fs%zu.free_bytes_before=%" PRIu64 "\n", prefix, i, f->free_bytes_before);
                printf("%s.fs%zu.free_bytes_after=%" PRIu64 "\n", prefix, i, f->free_bytes_after);
                printf("%s.fs%zu.reserve_bytes=%" PRIu64 "\n", prefix, i, f->reserve_bytes);
                printf("%s.fs%zu.duration_ms=%" PRIu64 "\n", prefix, i, f->duration_ms);
                printf("%s.fs%zu.error=%s\n", prefix, i, f->error);
                printf("%s.fs%zu.error_errno=%d\n", prefix, i, f->error_errno);
        }
        fflush(stdout);
}

/* The one filesystem of a report, which must be on --mount. */
static const Reclaim__FsReport *only_fs(const Reclaim__Envelope *m) {
        const Reclaim__Report *r = m->report;

        if (r->n_filesystems != 1)
                fail("the report has %zu filesystems, want 1", r->n_filesystems);
        if (arg_mount && strcmp(r->filesystems[0]->mount_point, arg_mount) != 0)
                fail("the report is about %s, want %s", r->filesystems[0]->mount_point, arg_mount);
        return r->filesystems[0];
}

/* ---- transports ---- */

static int accept_within(int lfd, uint64_t timeout_ns) {
        struct pollfd pf = { .fd = lfd, .events = POLLIN };
        int r, fd;

        r = poll(&pf, 1, (int) (timeout_ns / NSEC_PER_MSEC));
        if (r <= 0)
                return -ETIMEDOUT;
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                fail("accept: %s", strerror(errno));
        return fd;
}

static void close_listener(int *lfd) {
        if (*lfd >= 0)
                close(*lfd);
        *lfd = -1;
        (void) unlink(arg_socket);
}

/* Accepts the agent and does Hello/HelloAck. Returns the Hello's seq. */
static void greet(Conn *c, int lfd, const Reclaim__Policy *policy, bool serving) {
        Reclaim__Envelope *m;
        int fd = accept_within(lfd, 15 * NSEC_PER_SEC);

        if (fd < 0)
                fail("the agent did not connect");
        conn_open(c, fd);
        m = expect(c, RECLAIM__ENVELOPE__BODY_HELLO, 5 * NSEC_PER_SEC);
        check_hello(m, serving);
        (void) send_hello_ack(c, m->seq, policy);
        reclaim__envelope__free_unpacked(m, NULL);
}

/* ---- scenarios ---- */

static int scenario_report(void) {
        Conn c = { .fd = -1 };
        Reclaim__Envelope *m;
        int lfd = fake_listen(arg_socket, 4);

        greet(&c, lfd, NULL, false);
        m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 60 * NSEC_PER_SEC);
        if (m->in_reply_to != 0)
                fail("a run's own Report has in_reply_to %" PRIu64 ", want 0", m->in_reply_to);
        print_report("report", m);
        reclaim__envelope__free_unpacked(m, NULL);
        expect_eof(&c, 10 * NSEC_PER_SEC);
        conn_close(&c);
        close_listener(&lfd);
        rpc_decoder_free(c.dec);
        printf("ok\n");
        return 0;
}

static uint64_t fs_size(void) {
        struct statvfs sv;

        if (statvfs(arg_mount, &sv) < 0)
                fail("statvfs %s: %s", arg_mount, strerror(errno));
        return (uint64_t) sv.f_blocks * sv.f_frsize;
}

static uint64_t fs_free(void) {
        struct statvfs sv;

        (void) sync();
        if (statvfs(arg_mount, &sv) < 0)
                fail("statvfs %s: %s", arg_mount, strerror(errno));
        return (uint64_t) sv.f_bavail * sv.f_frsize;
}

/* While no host is there for ABSENCE_NS, the agent must stay (nearly) idle. */
static void check_idle(pid_t pid, const char *what) {
        double cpu0 = agent_cpu_seconds(pid), cpu1;

        sleep_ns(ABSENCE_NS);
        cpu1 = agent_cpu_seconds(pid);
        note("%s: the agent used %.2f s of CPU in %.1f s",
             what,
             cpu1 - cpu0,
             (double) ABSENCE_NS / NSEC_PER_SEC);
        if (cpu1 - cpu0 > ABSENCE_CPU_MAX)
                fail("%s: the agent used %.2f s of CPU in %.1f s: it spins",
                     what,
                     cpu1 - cpu0,
                     (double) ABSENCE_NS / NSEC_PER_SEC);
}

static int scenario_serve(void) {
        Conn c = { .fd = -1 };
        Reclaim__Envelope *m;
        Reclaim__Policy policy;
        Reclaim__Mode modes[] = { RECLAIM__MODE__MODE_AUTO, RECLAIM__MODE__MODE_ZERO };
        const Reclaim__FsReport *f;
        uint64_t size, free0, req, req2, cap = 32 * MiB;
        pid_t pid = agent_pid();
        int lfd;

        if (!arg_mount)
                fail("--mount is needed");
        size = fs_size();
        free0 = fs_free();

        /* 1. Hello, HelloAck with a policy: rate cap 32 MiB/s, reserve >= 50%. */
        reclaim__policy__init(&policy);
        policy.max_rate_bytes_per_sec = cap;
        policy.min_reserve_percent = 50;
        policy.allowed_modes = modes;
        policy.n_allowed_modes = ELEMENTSOF(modes);
        lfd = fake_listen(arg_socket, 4);
        greet(&c, lfd, &policy, true);
        note("hello ok");

        /* 2. Ping/Pong, idle. */
        if (ping_pong(&c, 0x1234))
                fail("Pong says busy while idle");
        note("ping ok");

        /* 3. A request above the policy: rate 1 GiB/s and reserve 0 are clamped to 32 MiB/s
         * and 50%. Progress at most about once a second, a Pong that says busy meanwhile. */
        req = send_request(&c, RECLAIM__MODE__MODE_ZERO, UINT64_C(1) << 30, 0, 0);
        m = expect(&c, RECLAIM__ENVELOPE__BODY_PROGRESS, 10 * NSEC_PER_SEC);
        note_progress(&c, m);
        if (m->in_reply_to != req)
                fail("Progress.in_reply_to %" PRIu64 ", want %" PRIu64, m->in_reply_to, req);
        reclaim__envelope__free_unpacked(m, NULL);
        if (!ping_pong(&c, 0x5678))
                fail("Pong says idle during a run");
        m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 60 * NSEC_PER_SEC);
        print_report("clamped", m);
        f = only_fs(m);
        if (m->in_reply_to != req)
                fail("Report.in_reply_to %" PRIu64 ", want %" PRIu64, m->in_reply_to, req);
        if (m->report->mode != RECLAIM__MODE__MODE_ZERO)
                fail("Report.mode %d, want zero", (int) m->report->mode);
        if (f->method != RECLAIM__METHOD__METHOD_ZERO || f->outcome != RECLAIM__OUTCOME__OUTCOME_OK)
                fail("clamped run: %s/%s, want zero/ok",
                     method_name(f->method),
                     outcome_name(f->outcome));
        if (f->reserve_bytes < size / 2)
                fail("reserve %" PRIu64 " is below the policy's 50%% of %" PRIu64,
                     f->reserve_bytes,
                     size);
        if (f->bytes < 16 * MiB || f->bytes > f->free_bytes_before - f->reserve_bytes)
                fail("zeroed %" PRIu64 " bytes: not between 16 MiB and free above the reserve",
                     f->bytes);
        {
                double secs = (double) MAX(f->duration_ms, UINT64_C(1)) / 1000.0;
                double rate = (double) f->bytes / secs;
                double span = (double) (c.last_progress_ns - c.first_progress_ns) / NSEC_PER_SEC;

                note("clamped run: %.1f MiB in %.2f s = %.1f MiB/s (cap %.0f MiB/s); %u progress "
                     "messages over %.2f s",
                     (double) f->bytes / MiB,
                     secs,
                     rate / MiB,
                     (double) cap / MiB,
                     c.n_progress,
                     span);
                if (rate > 1.1 * (double) cap)
                        fail("the run went at %.1f MiB/s, above the policy cap", rate / MiB);
                /* at most about one per second (a count over the run's length, robust to
                 * delivery jitter; one Progress per chunk would be dozens a second) */
                if (c.n_progress < 2)
                        fail("only %u Progress messages in a %.1f s run", c.n_progress, secs);
                if ((double) c.n_progress > ceil(secs) + 1)
                        fail("%u Progress messages in a %.2f s run: more than one a second",
                             c.n_progress,
                             secs);
        }
        reclaim__envelope__free_unpacked(m, NULL);
        note("clamped request ok");

        /* 4. A mode the policy does not allow: every filesystem skipped/unsupported. */
        req = send_request(&c, RECLAIM__MODE__MODE_TRIM, 0, 0, 0);
        m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 10 * NSEC_PER_SEC);
        f = only_fs(m);
        if (m->in_reply_to != req || f->method != RECLAIM__METHOD__METHOD_SKIPPED ||
            f->outcome != RECLAIM__OUTCOME__OUTCOME_UNSUPPORTED)
                fail("refused mode: %s/%s, want skipped/unsupported",
                     method_name(f->method),
                     outcome_name(f->outcome));
        reclaim__envelope__free_unpacked(m, NULL);
        note("refused mode ok");

        /* 5. Cancel a slow fill; a second request waits for the same run and gets the same
         * (cancelled) report. */
        c.n_progress = 0;
        req = send_request(&c, RECLAIM__MODE__MODE_ZERO, 4 * MiB, 0, 0);
        req2 = send_request(&c, RECLAIM__MODE__MODE_AUTO, 0, 0, 0);
        for (;;) {
                m = expect(&c, RECLAIM__ENVELOPE__BODY_PROGRESS, 10 * NSEC_PER_SEC);
                note_progress(&c, m);
                reclaim__envelope__free_unpacked(m, NULL);
                if (c.last_progress_bytes >= 4 * MiB)
                        break;
        }
        send_cancel(&c, req);
        for (int i = 0; i < 2; i++) {
                uint64_t t0 = now_ns();

                m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 5 * NSEC_PER_SEC);
                f = only_fs(m);
                if (m->in_reply_to != (i == 0 ? req : req2))
                        fail("cancelled report %d answers %" PRIu64, i, m->in_reply_to);
                if (f->outcome != RECLAIM__OUTCOME__OUTCOME_CANCELLED)
                        fail("after Cancel: outcome %s, want cancelled", outcome_name(f->outcome));
                if (f->bytes >= f->free_bytes_before - f->reserve_bytes)
                        fail("after Cancel: the fill went all the way");
                note("cancelled report %d after %.2f s: %.1f MiB zeroed",
                     i,
                     (double) (now_ns() - t0) / NSEC_PER_SEC,
                     (double) f->bytes / MiB);
                reclaim__envelope__free_unpacked(m, NULL);
        }
        if (fs_free() + 8 * MiB < free0)
                fail("free space did not come back after Cancel");
        note("cancel ok");

        /* 6. The host goes away: no listener at all. The agent must wait quietly. */
        conn_close(&c);
        close_listener(&lfd);
        check_idle(pid, "host absent");

        /* 7. A flapping host: every connection is closed at once, before any HelloAck. */
        {
                uint64_t t0 = now_ns();
                double cpu0 = agent_cpu_seconds(pid), cpu1;
                unsigned n = 0;

                lfd = fake_listen(arg_socket, 4);
                while (now_ns() < t0 + ABSENCE_NS) {
                        int fd = accept_within(
                                lfd, t0 + ABSENCE_NS - MIN(now_ns(), t0 + ABSENCE_NS));
                        if (fd >= 0) {
                                n++;
                                close(fd);
                        }
                }
                cpu1 = agent_cpu_seconds(pid);
                note("flapping host: %u connections, %.2f s of CPU in %.1f s",
                     n,
                     cpu1 - cpu0,
                     (double) ABSENCE_NS / NSEC_PER_SEC);
                if (cpu1 - cpu0 > ABSENCE_CPU_MAX)
                        fail("the agent used %.2f s of CPU against a flapping host", cpu1 - cpu0);
                /* back-off from 100 ms doubling: a handful of attempts, not hundreds */
                if (n > 20)
                        fail("%u connections in %.1f s: no back-off",
                             n,
                             (double) ABSENCE_NS / NSEC_PER_SEC);
        }

        /* 8. The host is back: the agent reconnects and says Hello (seq 1) again. */
        greet(&c, lfd, &policy, true);
        if (ping_pong(&c, 0x9abc))
                fail("Pong says busy after reconnecting");
        note("reconnect ok");

        /* 9. SIGTERM during a fill: the agent cancels, sends the report, closes. */
        req = send_request(&c, RECLAIM__MODE__MODE_ZERO, 4 * MiB, 0, 0);
        m = expect(&c, RECLAIM__ENVELOPE__BODY_PROGRESS, 10 * NSEC_PER_SEC);
        reclaim__envelope__free_unpacked(m, NULL);
        if (kill(pid, SIGTERM) < 0)
                fail("kill: %s", strerror(errno));
        m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 5 * NSEC_PER_SEC);
        f = only_fs(m);
        if (m->in_reply_to != req || f->outcome != RECLAIM__OUTCOME__OUTCOME_CANCELLED)
                fail("after SIGTERM: outcome %s, want cancelled", outcome_name(f->outcome));
        reclaim__envelope__free_unpacked(m, NULL);
        expect_eof(&c, 5 * NSEC_PER_SEC);
        note("SIGTERM ok");

        conn_close(&c);
        close_listener(&lfd);
        rpc_decoder_free(c.dec);
        printf("ok\n");
        return 0;
}

/* A pty standing in for the port; LINK points at its slave. Returns the master. */
static int make_pty(void) {
        struct termios t;
        const char *slave;
        int fd;

        fd = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 || grantpt(fd) < 0 || unlockpt(fd) < 0 || !(slave = ptsname(fd)))
                fail("pty: %s", strerror(errno));
        /* Raw, both ways: the pair shares one termios. */
        if (tcgetattr(fd, &t) < 0)
                fail("tcgetattr: %s", strerror(errno));
        cfmakeraw(&t);
        if (tcsetattr(fd, TCSANOW, &t) < 0)
                fail("tcsetattr: %s", strerror(errno));
        (void) unlink(arg_pty);
        if (symlink(slave, arg_pty) < 0)
                fail("symlink %s: %s", arg_pty, strerror(errno));
        return fd;
}

static int scenario_handoff(void) {
        Conn c = { .fd = -1 };
        Reclaim__Envelope *m;
        uint64_t deadline;

        conn_open(&c, make_pty());
        if (arg_go_file) {
                /* The host is away: serve's Hello waits in the pty, unanswered. */
                note("waiting for %s", arg_go_file);
                deadline = now_ns() + 120 * NSEC_PER_SEC;
                while (access(arg_go_file, F_OK) < 0) {
                        if (now_ns() >= deadline)
                                fail("%s did not appear", arg_go_file);
                        sleep_ns(50 * NSEC_PER_MSEC);
                }
        }
        m = expect(&c, RECLAIM__ENVELOPE__BODY_HELLO, 15 * NSEC_PER_SEC);
        check_hello(m, true);
        (void) send_hello_ack(&c, m->seq, NULL);
        reclaim__envelope__free_unpacked(m, NULL);
        note("hello over the port ok");
        for (unsigned i = 1; i <= arg_reports; i++) {
                char prefix[32];

                m = expect(&c, RECLAIM__ENVELOPE__BODY_REPORT, 120 * NSEC_PER_SEC);
                if (m->in_reply_to != 0)
                        fail("a handed-over Report has in_reply_to %" PRIu64 ", want 0",
                             m->in_reply_to);
                snprintf(prefix, sizeof(prefix), "report%u", i);
                print_report(prefix, m);
                reclaim__envelope__free_unpacked(m, NULL);
                note("report %u received", i);
        }
        conn_close(&c);
        (void) unlink(arg_pty);
        rpc_decoder_free(c.dec);
        printf("ok\n");
        return 0;
}

static int scenario_port(void) {
        Conn c = { .fd = -1 };
        Reclaim__Envelope *m;
        pid_t pid;

        conn_open(&c, make_pty());

        pid = agent_pid();
        m = expect(&c, RECLAIM__ENVELOPE__BODY_HELLO, 15 * NSEC_PER_SEC);
        check_hello(m, true);
        (void) send_hello_ack(&c, m->seq, NULL);
        reclaim__envelope__free_unpacked(m, NULL);
        if (ping_pong(&c, 42))
                fail("Pong says busy while idle");
        note("hello and ping over the port ok");

        /* The host end goes away for good: the agent's fd now reports POLLHUP forever. */
        conn_close(&c);
        (void) unlink(arg_pty);
        check_idle(pid, "port hung up");
        if (kill(pid, 0) < 0)
                fail("the agent died when the port hung up");
        rpc_decoder_free(c.dec);
        printf("ok\n");
        return 0;
}

int main(int argc, char *argv[]) {
        const char *scenario;

        if (argc < 2) {
                fprintf(stderr, "usage: fake-host report|serve|port [OPTIONS]\n");
                return 2;
        }
        scenario = argv[1];
        for (int i = 2; i < argc; i++) {
                const char *v = i + 1 < argc ? argv[i + 1] : NULL;

                if (!v) {
                        fprintf(stderr, "missing value for %s\n", argv[i]);
                        return 2;
                }
                if (strcmp(argv[i], "--socket") == 0)
                        arg_socket = v;
                else if (strcmp(argv[i], "--pty") == 0)
                        arg_pty = v;
                else if (strcmp(argv[i], "--mount") == 0)
                        arg_mount = v;
                else if (strcmp(argv[i], "--agent-pid-file") == 0)
                        arg_pid_file = v;
                else if (strcmp(argv[i], "--go-file") == 0)
                        arg_go_file = v;
                else if (strcmp(argv[i], "--reports") == 0)
                        arg_reports = (unsigned) strtoul(v, NULL, 10);
                else {
                        fprintf(stderr, "unknown option %s\n", argv[i]);
                        return 2;
                }
                i++;
        }
        (void) signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);

        if (strcmp(scenario, "report") == 0 && arg_socket)
                return scenario_report();
        if (strcmp(scenario, "serve") == 0 && arg_socket)
                return scenario_serve();
        if (strcmp(scenario, "port") == 0 && arg_pty)
                return scenario_port();
        if (strcmp(scenario, "handoff") == 0 && arg_pty)
                return scenario_handoff();
        fprintf(stderr,
                "usage: fake-host report --socket PATH | serve --socket PATH --mount MNT "
                "--agent-pid-file FILE | port --pty LINK --agent-pid-file FILE | handoff --pty LINK "
                "[--go-file FILE] [--reports N]\n");
        return 2;
}
