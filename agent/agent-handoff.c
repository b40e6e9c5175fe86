/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent-handoff.h"
#include "agent-message.h"
#include "channel.h"
#include "log.h"
#include "rpc-frame.h"
#include "rpc-message.h"

#define NSEC_PER_MSEC UINT64_C(1000000)
#define SLICE_MS 100
#define LISTEN_BACKLOG 4

/* One incoming frame: the header first, then (after the length was checked) the payload. */
typedef struct FrameIn {
        uint8_t header[RPC_FRAME_HEADER_SIZE];
        size_t header_got;
        uint8_t *payload; /* allocated once the header is valid */
        uint32_t len;
        size_t got;
} FrameIn;

static void frame_in_reset(FrameIn *f) {
        free(f->payload);
        *f = (FrameIn){};
}

static uint32_t le32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
                (uint32_t) p[3] << 24;
}

int agent_handoff_parse_header(const uint8_t *header, size_t max, uint32_t *ret_len) {
        uint32_t len;

        if (!header || !ret_len)
                return -EINVAL;
        if (le32(header) != RPC_FRAME_MAGIC)
                return -EBADMSG;
        len = le32(header + 4);
        if (len == 0)
                return -EBADMSG;
        if (len > max || len > RPC_MAX_FRAME)
                return -EMSGSIZE;
        *ret_len = len;
        return 0;
}

int agent_handoff_unpack(
        const uint8_t *header,
        const uint8_t *payload,
        size_t len,
        Reclaim__Envelope__BodyCase want,
        Reclaim__Envelope **ret) {
        uint8_t expect[RPC_FRAME_HEADER_SIZE];
        Reclaim__Envelope *m = NULL;
        int r;

        if (!header || !payload || !ret)
                return -EINVAL;
        /* The same header computed from the payload must match, CRC included. */
        r = rpc_frame_header_write(payload, len, expect);
        if (r < 0)
                return -EBADMSG;
        if (memcmp(expect, header, sizeof(expect)) != 0)
                return -EBADMSG;
        r = rpc_message_unpack(payload, len, &m);
        if (r < 0)
                return r;
        if (m->body_case != want) {
                reclaim__envelope__free_unpacked(m, NULL);
                return -EBADMSG;
        }
        *ret = m;
        return 0;
}

/* Reads what fd has now into f. Returns 1 when the frame is complete, 0 when more is needed,
 * -EPIPE at EOF, -EBADMSG/-EMSGSIZE for a bad header, -ENOMEM, -errno of read(). Reads at
 * most the frame: bytes after it stay in the socket. */
static int frame_in_read(FrameIn *f, int fd, size_t max) {
        for (;;) {
                uint8_t *dst;
                size_t want;
                ssize_t n;
                int r;

                if (f->header_got < sizeof(f->header)) {
                        dst = f->header + f->header_got;
                        want = sizeof(f->header) - f->header_got;
                } else {
                        if (!f->payload) {
                                r = agent_handoff_parse_header(f->header, max, &f->len);
                                if (r < 0)
                                        return r;
                                /* Only now, with the length bounded, is anything allocated. */
                                f->payload = malloc(f->len);
                                if (!f->payload)
                                        return -ENOMEM;
                        }
                        if (f->got == f->len)
                                return 1;
                        dst = f->payload + f->got;
                        want = f->len - f->got;
                }
                n = read(fd, dst, want);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        return negative_errno();
                }
                if (n == 0)
                        return -EPIPE;
                if (f->header_got < sizeof(f->header))
                        f->header_got += (size_t) n;
                else
                        f->got += (size_t) n;
        }
}

/* ---- serve's side ---- */

struct AgentHandoff {
        char *path;
        int listen_fd;
        int client_fd;
        uint64_t deadline;
        FrameIn in;
};

static int make_parent_dir(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        char *slash;

        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (!slash || slash == dir)
                return 0; /* the root directory */
        *slash = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
}

int agent_handoff_new(const char *path, AgentHandoff **ret) {
        _cleanup_(agent_handoff_freep) AgentHandoff *h = NULL;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct stat st;
        mode_t old_umask;
        int r;

        if (!path || path[0] != '/' || strlen(path) >= sizeof(sa.sun_path) || !ret)
                return -EINVAL;
        h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->listen_fd = h->client_fd = -1;

        r = make_parent_dir(path);
        if (r < 0)
                return r;
        memcpy(sa.sun_path, path, strlen(path));
        /* A socket left by a serve that was killed: replace it. One somebody listens on
         * belongs to a serve that is running: leave it alone. Anything else is not ours. */
        if (lstat(path, &st) == 0) {
                _cleanup_close_ int probe = -1;

                if (!S_ISSOCK(st.st_mode))
                        return -EEXIST;
                probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (probe < 0)
                        return negative_errno();
                if (connect(probe, (struct sockaddr *) &sa, sizeof(sa)) >= 0 || errno == EAGAIN)
                        return -EADDRINUSE;
                if (unlink(path) < 0)
                        return negative_errno();
        }
        h->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (h->listen_fd < 0)
                return negative_errno();
        /* 0600 from the start: no window in which others could connect. serve has no other
         * thread yet, so the process-wide umask is ours for the moment. */
        old_umask = umask(0177);
        r = bind(h->listen_fd, (struct sockaddr *) &sa, sizeof(sa));
        if (r < 0)
                r = negative_errno();
        (void) umask(old_umask);
        if (r < 0)
                return r;
        h->path = strdup(path); /* from here on, free() removes the file */
        if (!h->path) {
                (void) unlink(path);
                return -ENOMEM;
        }
        if (listen(h->listen_fd, LISTEN_BACKLOG) < 0)
                return negative_errno();
        *ret = TAKE_PTR(h);
        return 0;
}

static void drop_client(AgentHandoff *h) {
        if (h->client_fd >= 0)
                (void) close(h->client_fd);
        h->client_fd = -1;
        h->deadline = UINT64_MAX;
        frame_in_reset(&h->in);
}

AgentHandoff *agent_handoff_free(AgentHandoff *h) {
        if (!h)
                return NULL;
        drop_client(h);
        if (h->listen_fd >= 0)
                (void) close(h->listen_fd);
        if (h->path)
                (void) unlink(h->path);
        free(h->path);
        return mfree(h);
}

int agent_handoff_fd(const AgentHandoff *h) {
        return h->client_fd >= 0 ? h->client_fd : h->listen_fd;
}

short agent_handoff_events(const AgentHandoff *h) {
        return POLLIN;
}

uint64_t agent_handoff_deadline(const AgentHandoff *h) {
        return h->client_fd >= 0 ? h->deadline : UINT64_MAX;
}

static int accept_client(AgentHandoff *h) {
        struct ucred cred;
        socklen_t l = sizeof(cred);
        int fd;

        fd = accept4(h->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
                /* Nobody after all, or a client that gave up: not our problem. */
                if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                        return 0;
                return negative_errno();
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &l) < 0 || l != sizeof(cred)) {
                log_notice("Control socket: cannot identify a client; closing it");
                (void) close(fd);
                return 0;
        }
        /* root, or serve's own uid (tests run unprivileged) */
        if (cred.uid != 0 && cred.uid != geteuid()) {
                log_notice(
                        "Control socket: refusing pid %ld uid %ld (only root may hand over a report)",
                        (long) cred.pid,
                        (long) cred.uid);
                (void) close(fd);
                return 0;
        }
        h->client_fd = fd;
        h->deadline = agent_now_ns() + AGENT_HANDOFF_CLIENT_TIMEOUT_NS;
        frame_in_reset(&h->in);
        return 1;
}

int agent_handoff_process(AgentHandoff *h, Reclaim__Envelope **ret_msg) {
        Reclaim__Envelope *m = NULL;
        int r;

        if (!h || !ret_msg)
                return -EINVAL;
        if (h->client_fd < 0) {
                r = accept_client(h);
                if (r <= 0)
                        return r;
        }
        r = frame_in_read(&h->in, h->client_fd, RPC_MAX_FRAME);
        if (r == 0) {
                if (agent_now_ns() >= h->deadline) {
                        log_notice("Control socket: a client sent no complete frame in time");
                        drop_client(h);
                }
                return 0;
        }
        if (r > 0)
                r = agent_handoff_unpack(
                        h->in.header, h->in.payload, h->in.len, RECLAIM__ENVELOPE__BODY_REPORT, &m);
        if (r < 0) {
                log_full_errno(LOG_NOTICE, r, "Control socket: dropping a client: %m");
                drop_client(h);
                return 0;
        }
        frame_in_reset(&h->in);
        *ret_msg = m;
        return 1;
}

int agent_handoff_ack(AgentHandoff *h, uint64_t seq) {
        _cleanup_free_ uint8_t *frame = NULL;
        Reclaim__Envelope m;
        Reclaim__Pong pong;
        size_t len;
        ssize_t n;
        int r;

        if (!h)
                return -EINVAL;
        if (h->client_fd < 0)
                return -ENOTCONN;
        reclaim__pong__init(&pong);
        rpc_message_init(&m, 1);
        m.in_reply_to = seq;
        m.body_case = RECLAIM__ENVELOPE__BODY_PONG;
        m.pong = &pong;
        r = rpc_message_pack(&m, &frame, &len);
        if (r >= 0) {
                n = write(h->client_fd, frame, len);
                if (n < 0)
                        r = negative_errno();
                else if ((size_t) n != len)
                        r = -EAGAIN;
        }
        drop_client(h);
        return r < 0 ? r : 0;
}

/* ---- run's side ---- */

static bool stopped(const volatile sig_atomic_t *stop) {
        return stop && *stop;
}

/* Waits up to one slice (and never past deadline) for events on fd. Returns 1 ready, 0 not
 * yet (also at the deadline or stop: the caller looks), -errno. */
static int wait_fd(int fd, short events, uint64_t deadline) {
        struct pollfd p = { .fd = fd, .events = events };
        uint64_t now = agent_now_ns();
        int ms = SLICE_MS, r;

        if (now >= deadline)
                return 0;
        if (deadline - now < (uint64_t) SLICE_MS * NSEC_PER_MSEC)
                ms = (int) DIV_ROUND_UP(deadline - now, NSEC_PER_MSEC);
        r = poll(&p, 1, ms);
        if (r < 0)
                return errno == EINTR ? 0 : negative_errno();
        if (r > 0 && (p.revents & (events | POLLHUP | POLLERR | POLLNVAL)))
                return 1;
        return 0;
}

static int handoff_connect(const char *path, uint64_t deadline, const volatile sig_atomic_t *stop) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        if (strlen(path) >= sizeof(sa.sun_path))
                return -EINVAL;
        memcpy(sa.sun_path, path, strlen(path));
        for (;;) {
                _cleanup_close_ int fd = -1;
                struct timespec ts = { .tv_nsec = SLICE_MS * (long) NSEC_PER_MSEC };

                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        return negative_errno();
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) >= 0)
                        return TAKE_FD(fd);
                /* EAGAIN: serve's backlog is full (it takes one client at a time).
                 * ENOENT/ECONNREFUSED: serve holds the port but may not be listening yet
                 * (just started); the port being busy says someone is there. */
                if ((errno != EAGAIN && errno != ENOENT && errno != ECONNREFUSED) ||
                    agent_now_ns() >= deadline || stopped(stop))
                        return negative_errno();
                (void) nanosleep(&ts, NULL);
        }
}

int agent_handoff_send(
        const char *path,
        const AgentRunReport *rep,
        uint64_t timeout_ns,
        const volatile sig_atomic_t *stop) {
        _cleanup_free_ uint8_t *frame = NULL;
        _cleanup_close_ int fd = -1;
        Reclaim__Envelope *ack = NULL;
        FrameIn in = {};
        uint64_t deadline = agent_now_ns() + timeout_ns;
        size_t len, done = 0;
        int r;

        if (!path || !rep)
                return -EINVAL;
        r = agent_pack_report(rep, 1, 0, &frame, &len);
        if (r < 0)
                return r == -ENOMEM ? r : -EINVAL;

        fd = handoff_connect(path, deadline, stop);
        if (fd < 0) {
                if (fd == -EINVAL)
                        return fd;
                log_full_errno(
                        LOG_NOTICE,
                        fd,
                        "No reclaim-agent serve on %s (%m); the report is not sent",
                        path);
                return 0;
        }

        while (done < len) {
                ssize_t n;

                if (agent_now_ns() >= deadline || stopped(stop)) {
                        r = -ETIMEDOUT;
                        goto fail;
                }
                n = write(fd, frame + done, len - done);
                if (n < 0 && errno != EAGAIN && errno != EINTR) {
                        r = negative_errno();
                        goto fail;
                }
                if (n > 0)
                        done += (size_t) n;
                else {
                        r = wait_fd(fd, POLLOUT, deadline);
                        if (r < 0)
                                goto fail;
                }
        }

        for (;;) {
                if (stopped(stop)) {
                        r = -ETIMEDOUT;
                        goto fail;
                }
                r = frame_in_read(&in, fd, AGENT_HANDOFF_ACK_MAX);
                if (r != 0)
                        break;
                if (agent_now_ns() >= deadline) {
                        r = -ETIMEDOUT;
                        goto fail;
                }
                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0)
                        goto fail;
        }
        if (r > 0)
                r = agent_handoff_unpack(
                        in.header, in.payload, in.len, RECLAIM__ENVELOPE__BODY_PONG, &ack);
        if (r >= 0 && ack->in_reply_to != 1)
                r = -EBADMSG;
        if (ack)
                reclaim__envelope__free_unpacked(ack, NULL);
        if (r < 0)
                goto fail;
        frame_in_reset(&in);
        log_info("Report handed to reclaim-agent serve on %s, which sends it to the host", path);
        return 1;

fail:
        frame_in_reset(&in);
        if (r == -ENOMEM)
                return r;
        log_notice(
                "reclaim-agent serve on %s did not take the report (%s); the report is not sent",
                path,
                r == -ETIMEDOUT     ? "no answer in time" :
                        r == -EPIPE ? "connection closed" :
                                      strerror(-r));
        return 0;
}
