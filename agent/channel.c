/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "log.h"
#include "macro.h"

/* The virtio console driver takes at most 32 KiB per write(); asking for more is pointless. */
#define WRITE_CHUNK_MAX (32u * 1024u)
/* Reads per agent_channel_receive() call: enough for a burst, bounded so one busy peer
 * cannot keep the loop from its timers. */
#define READS_PER_CALL 16
#define READ_BUFFER_SIZE (16u * 1024u)

struct AgentChannel {
        AgentChannelKind kind;
        char *path;
        int fd;
        bool connected;
        uint64_t next_seq;
        RpcDecoder *decoder;
        uint8_t *out; /* queued output: out[out_start..out_len) */
        size_t out_start, out_len, out_alloc;
        uint64_t errors;
        uint64_t decoder_errors_seen;
        bool version_logged; /* the "protocol major we do not speak" error, once per connection */
};

uint64_t agent_now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

void agent_backoff_init(AgentBackoff *b, uint64_t min_ns, uint64_t max_ns) {
        b->min_ns = min_ns;
        b->max_ns = MAX(max_ns, min_ns);
        b->next_ns = min_ns;
}

uint64_t agent_backoff_next(AgentBackoff *b) {
        uint64_t d = b->next_ns;

        b->next_ns = d > b->max_ns / 2 ? b->max_ns : d * 2;
        return d;
}

void agent_backoff_reset(AgentBackoff *b) {
        b->next_ns = b->min_ns;
}

int agent_channel_new(AgentChannelKind kind, const char *path, AgentChannel **ret) {
        _cleanup_(agent_channel_freep) AgentChannel *c = NULL;

        if (!path || path[0] != '/' || !ret)
                return -EINVAL;
        if (kind == AGENT_CHANNEL_SOCKET &&
            strlen(path) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
                return -EINVAL;
        if (kind != AGENT_CHANNEL_PORT && kind != AGENT_CHANNEL_SOCKET)
                return -EINVAL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->kind = kind;
        c->fd = -1;
        c->path = strdup(path);
        c->decoder = rpc_decoder_new();
        if (!c->path || !c->decoder)
                return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

static void close_fd(AgentChannel *c) {
        if (c->fd >= 0)
                (void) close(c->fd);
        c->fd = -1;
}

AgentChannel *agent_channel_free(AgentChannel *c) {
        if (!c)
                return NULL;
        close_fd(c);
        rpc_decoder_free(c->decoder);
        free(c->out);
        free(c->path);
        return mfree(c);
}

static void reset_connection_state(AgentChannel *c) {
        rpc_decoder_reset(c->decoder);
        c->out_start = c->out_len = 0;
        c->next_seq = 1;
        c->version_logged = false;
}

static int connect_port(AgentChannel *c, int *ret_why) {
        struct pollfd p;

        if (c->fd < 0) {
                /* O_NOCTTY: a tty standing in for the port (tests) must not become ours. */
                c->fd = open(c->path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
                if (c->fd < 0) {
                        /* ENOENT: no such port (yet); EBUSY: another process has it open. */
                        *ret_why = negative_errno();
                        return 0;
                }
                /* A virtio port refuses a second open() with EBUSY by itself; the lock makes
                 * any other device (a tty standing in for the port in tests) behave the
                 * same, so run and serve never share one. Released with the fd. */
                if (flock(c->fd, LOCK_EX | LOCK_NB) < 0) {
                        int r = negative_errno();

                        close_fd(c);
                        *ret_why = r == -EWOULDBLOCK ? -EBUSY : r;
                        return 0;
                }
        }

        p = (struct pollfd){ .fd = c->fd, .events = POLLIN };
        if (poll(&p, 1, 0) < 0) {
                *ret_why = negative_errno();
                return 0;
        }
        if (p.revents & (POLLERR | POLLNVAL)) {
                /* The device itself is broken or gone: reopen it next time. */
                close_fd(c);
                *ret_why = -ENODEV;
                return 0;
        }
        if (p.revents & POLLHUP) {
                /* The host end is not connected. Keep the port open; look again later. */
                *ret_why = -ENOTCONN;
                return 0;
        }
        return 1;
}

static int connect_socket(AgentChannel *c, int *ret_why) {
        _cleanup_close_ int fd = -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        close_fd(c);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        strncpy(sa.sun_path, c->path, sizeof(sa.sun_path) - 1);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                /* ENOENT/ECONNREFUSED: nobody listens; EAGAIN: the backlog is full. A
                 * non-blocking connect of a UNIX socket does not return EINPROGRESS. */
                *ret_why = negative_errno();
                return 0;
        }
        c->fd = TAKE_FD(fd);
        return 1;
}

int agent_channel_connect(AgentChannel *c, int *ret_why) {
        int why = 0, r;

        if (!c)
                return -EINVAL;
        if (c->connected)
                return 1;
        r = c->kind == AGENT_CHANNEL_PORT ? connect_port(c, &why) : connect_socket(c, &why);
        if (r < 0)
                return r;
        if (r == 0) {
                if (ret_why)
                        *ret_why = why;
                return 0;
        }
        reset_connection_state(c);
        c->connected = true;
        log_debug("Channel %s: connected", c->path);
        return 1;
}

void agent_channel_disconnect(AgentChannel *c, int error) {
        if (!c)
                return;
        if (c->connected)
                log_debug_errno(error, "Channel %s: host gone: %m", c->path);
        c->connected = false;
        reset_connection_state(c);
        if (c->kind == AGENT_CHANNEL_SOCKET || error == -ENODEV || error == -EIO ||
            error == -EBADF || error == -ENXIO)
                close_fd(c);
}

bool agent_channel_is_connected(const AgentChannel *c) {
        return c && c->connected;
}

int agent_channel_fd(const AgentChannel *c) {
        return c && c->connected ? c->fd : -1;
}

short agent_channel_events(const AgentChannel *c) {
        if (!c || !c->connected)
                return 0;
        return POLLIN | (c->out_len > c->out_start ? POLLOUT : 0);
}

size_t agent_channel_queued(const AgentChannel *c) {
        return c ? c->out_len - c->out_start : 0;
}

const char *agent_channel_path(const AgentChannel *c) {
        return c ? c->path : NULL;
}

void agent_channel_count_error(AgentChannel *c) {
        if (c)
                c->errors++;
}

uint64_t agent_channel_errors(const AgentChannel *c) {
        return c ? c->errors : 0;
}

static ssize_t write_some(AgentChannel *c, const uint8_t *p, size_t n) {
        n = MIN(n, (size_t) WRITE_CHUNK_MAX);
        /* MSG_NOSIGNAL: a host that closed its end gives EPIPE, not SIGPIPE. */
        if (c->kind == AGENT_CHANNEL_SOCKET)
                return send(c->fd, p, n, MSG_NOSIGNAL);
        return write(c->fd, p, n);
}

int agent_channel_flush(AgentChannel *c) {
        if (!c)
                return -EINVAL;
        if (!c->connected)
                return -ENOTCONN;

        while (c->out_start < c->out_len) {
                ssize_t n = write_some(c, c->out + c->out_start, c->out_len - c->out_start);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) /* == EWOULDBLOCK on Linux */
                                return 0;
                        return negative_errno();
                }
                if (n == 0)
                        return -EPIPE;
                c->out_start += (size_t) n;
        }
        c->out_start = c->out_len = 0;
        return 1;
}

static int queue(AgentChannel *c, const uint8_t *frame, size_t len) {
        size_t used = c->out_len - c->out_start;

        if (used + len > AGENT_CHANNEL_OUTPUT_MAX)
                return -ENOBUFS;
        if (c->out_start > 0) {
                memmove(c->out, c->out + c->out_start, used);
                c->out_start = 0;
                c->out_len = used;
        }
        if (used + len > c->out_alloc) {
                size_t want = MAX(used + len, MAX(c->out_alloc * 2, (size_t) 4096));
                uint8_t *n = realloc(c->out, want);

                if (!n)
                        return -ENOMEM;
                c->out = n;
                c->out_alloc = want;
        }
        memcpy(c->out + c->out_len, frame, len);
        c->out_len += len;
        return 0;
}

int agent_channel_send(AgentChannel *c, Reclaim__Envelope *m, uint64_t *ret_seq) {
        _cleanup_free_ uint8_t *frame = NULL;
        size_t len;
        uint64_t seq;
        int r;

        if (!c || !m)
                return -EINVAL;
        if (!c->connected)
                return -ENOTCONN;

        seq = c->next_seq;
        m->seq = seq;
        r = rpc_message_pack(m, &frame, &len);
        if (r < 0)
                return r;
        r = queue(c, frame, len);
        if (r < 0)
                return r;
        c->next_seq++;
        if (ret_seq)
                *ret_seq = seq;
        r = agent_channel_flush(c);
        return r < 0 ? r : 0;
}

static void handle_payload(
        AgentChannel *c, const uint8_t *payload, size_t len, AgentChannelHandler h, void *u) {
        Reclaim__Envelope *m = NULL;
        uint32_t v = 0;
        int r;

        r = rpc_message_unpack(payload, len, &m);
        if (r == -EPROTONOSUPPORT) {
                c->errors++;
                if (!c->version_logged) {
                        (void) rpc_message_peek_version(payload, len, &v);
                        log_error(
                                "Channel %s: the host speaks protocol %u.%u, this agent %u.%u; "
                                "ignoring its messages",
                                c->path,
                                RPC_PROTOCOL_VERSION_MAJOR(v),
                                RPC_PROTOCOL_VERSION_MINOR(v),
                                RPC_PROTOCOL_MAJOR,
                                RPC_PROTOCOL_MINOR);
                        c->version_logged = true;
                }
                return;
        }
        if (r < 0) {
                c->errors++;
                log_debug_errno(r, "Channel %s: dropping a malformed message: %m", c->path);
                return;
        }
        if (m->body_case == RECLAIM__ENVELOPE__BODY__NOT_SET)
                /* A body from a newer minor: ignored, as the protocol says. */
                log_debug("Channel %s: ignoring a message with an unknown body", c->path);
        else
                h(c, m, u);
        reclaim__envelope__free_unpacked(m, NULL);
}

int agent_channel_receive(AgentChannel *c, AgentChannelHandler handler, void *userdata) {
        uint8_t buf[READ_BUFFER_SIZE];

        if (!c || !handler)
                return -EINVAL;

        for (int i = 0; i < READS_PER_CALL; i++) {
                ssize_t n;

                if (!c->connected)
                        return -ENOTCONN;
                n = read(c->fd, buf, sizeof(buf));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) /* == EWOULDBLOCK on Linux */
                                return 0;
                        return negative_errno();
                }
                if (n == 0)
                        /* Socket: EOF. Port: the host end is gone (not a permanent EOF). */
                        return -EPIPE;

                for (size_t off = 0; off < (size_t) n;) {
                        const uint8_t *payload;
                        size_t len;
                        int r = rpc_decoder_feed(c->decoder, buf + off, (size_t) n - off);

                        if (r < 0)
                                return r;
                        off += (size_t) r;
                        while (rpc_decoder_next(c->decoder, &payload, &len) > 0) {
                                handle_payload(c, payload, len, handler, userdata);
                                /* the handler may have found the connection unusable */
                                if (!c->connected)
                                        return -ENOTCONN;
                        }
                }
                c->errors += rpc_decoder_errors(c->decoder) - c->decoder_errors_seen;
                c->decoder_errors_seen = rpc_decoder_errors(c->decoder);
        }
        return 0;
}
