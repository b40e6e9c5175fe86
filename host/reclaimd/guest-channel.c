/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The host end of a guest's org.reclaim.agent.0 port: a client of the UNIX socket QEMU serves
 * (docs/protocol.md). One per VM with a channel path.
 *
 * The guest is untrusted. What one guest can cost us is bounded here:
 *   - memory: one RpcDecoder (at most one frame buffered) and one unpacked message at a time
 *     (rpc_message_unpack() caps it); nothing is queued;
 *   - CPU: at most one 4 KiB read per wakeup, frames beyond a token bucket (CHANNEL_FRAME_RATE
 *     per second) are dropped unparsed and counted;
 *   - errors: garbage, bad frames, messages that do not unpack or go the wrong way are counted;
 *     after CHANNEL_MAX_ERRORS the connection is reset and retried with back-off.
 * A Report only marks this VM's registry disks pending: a guest can never name a host path.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "rpc-frame.h"
#include "rpc-message.h"

typedef enum ChannelState {
        CHANNEL_WAITING,   /* no socket; the reconnect timer is armed */
        CHANNEL_CONNECTED, /* waiting for Hello */
        CHANNEL_READY,     /* Hello answered */
} ChannelState;

struct GuestChannel {
        Vm *vm;
        ChannelState state;
        int fd;
        sd_event_source *io;
        sd_event_source *timer;
        RpcDecoder *decoder;
        TokenBucket bucket;
        uint64_t backoff_usec;
        uint64_t seq;
        uint64_t conn_errors; /* errors on this connection (decoder errors included) */
        uint64_t decoder_errors_seen;
        uint64_t errors, dropped; /* over the channel's life */
        bool got_report;
};

static uint64_t now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static int channel_timer_cb(sd_event_source *s, uint64_t usec, void *userdata);

static int channel_arm_timer(GuestChannel *c, uint64_t delay_usec) {
        int r;

        if (c->timer) {
                r = sd_event_source_set_time_relative(c->timer, delay_usec);
                if (r >= 0)
                        r = sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
                return r;
        }
        return sd_event_add_time_relative(
                c->vm->manager->event,
                &c->timer,
                CLOCK_MONOTONIC,
                delay_usec,
                0,
                channel_timer_cb,
                c);
}

/* Drops the connection and schedules a reconnect after the current back-off, then doubles it. */
static void channel_disconnect(GuestChannel *c, bool hangup) {
        Vm *vm = c->vm;
        bool was_connected = c->state != CHANNEL_WAITING;
        int r;

        c->io = sd_event_source_disable_unref(c->io);
        if (c->fd >= 0)
                (void) close(c->fd);
        c->fd = -1;
        rpc_decoder_reset(c->decoder);
        c->state = CHANNEL_WAITING;

        r = channel_arm_timer(c, c->backoff_usec);
        if (r < 0)
                log_error_errno(r, "%s: failed to arm the reconnect timer: %m", vm->name);
        c->backoff_usec = MIN(c->backoff_usec * 2, CHANNEL_BACKOFF_MAX_USEC);

        if (was_connected) {
                log_info("%s: channel closed%s.", vm->name, hangup ? " (hangup)" : "");
                manager_update_status(vm->manager);
                /* The VM may have stopped: look at its pending disks (the lock probe decides). */
                (void) manager_schedule(vm->manager);
        }
}

static int channel_send(GuestChannel *c, Reclaim__Envelope *m) {
        _cleanup_free_ uint8_t *frame = NULL;
        size_t len, off = 0;
        int r;

        m->seq = ++c->seq;
        r = rpc_message_pack(m, &frame, &len);
        if (r < 0)
                return r;
        /* Our frames are small (a HelloAck); a socket buffer that cannot take one means the
         * peer does not read: treat that as an error of the connection rather than queue. */
        while (off < len) {
                ssize_t k = send(c->fd, frame + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                off += (size_t) k;
        }
        return 0;
}

static int channel_send_hello_ack(GuestChannel *c, uint64_t in_reply_to) {
        static char host_version[] = RECLAIM_VERSION; /* protobuf-c wants char * */
        const ManagerConfig *cfg = &c->vm->manager->config;
        Reclaim__Envelope m;
        Reclaim__HelloAck ack;
        Reclaim__Policy policy;
        Reclaim__Mode modes[] = { RECLAIM__MODE__MODE_TRIM,
                                  RECLAIM__MODE__MODE_AUTO,
                                  RECLAIM__MODE__MODE_ZERO };

        reclaim__policy__init(&policy);
        policy.max_rate_bytes_per_sec = cfg->guest_max_rate;
        policy.min_reserve_bytes = cfg->guest_min_reserve;
        policy.min_reserve_percent = cfg->guest_min_reserve_percent;
        policy.allowed_modes = modes;
        policy.n_allowed_modes = cfg->guest_allow_zero ? ELEMENTSOF(modes) : 1;

        reclaim__hello_ack__init(&ack);
        ack.protocol_version = RPC_PROTOCOL_VERSION;
        ack.host_version = host_version;
        ack.policy = &policy;

        rpc_message_init(&m, 0);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_HELLO_ACK;
        m.hello_ack = &ack;
        return channel_send(c, &m);
}

/*
 * docs/protocol.md: a host that has connected but seen no Hello sends a Ping; an agent that
 * missed our connect answers anything with a Hello first.
 */
static int channel_send_ping(GuestChannel *c) {
        Reclaim__Envelope m;
        Reclaim__Ping ping;

        reclaim__ping__init(&ping);
        ping.nonce = c->seq + 1;
        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_PING;
        m.ping = &ping;
        return channel_send(c, &m);
}

static void channel_count_error(GuestChannel *c) {
        c->errors++;
        c->conn_errors++;
}

static void channel_handle_report(GuestChannel *c, const Reclaim__Report *rep) {
        Vm *vm = c->vm;
        uint64_t total = 0, now = realtime_usec();

        for (size_t i = 0; i < rep->n_filesystems; i++) {
                const Reclaim__FsReport *fs = rep->filesystems[i];
                uint64_t b;

                /* Guest figures are for scheduling only: saturate, never trust them further. */
                if (!fs ||
                    (fs->method != RECLAIM__METHOD__METHOD_TRIM &&
                     fs->method != RECLAIM__METHOD__METHOD_ZERO))
                        continue;
                b = fs->bytes;
                total = ADD_OVERFLOW(total, b, &total) ? UINT64_MAX : total;
        }
        vm->last_report_bytes = total;
        vm->last_report_time = now;
        vm->last_report_filesystems =
                rep->n_filesystems > UINT32_MAX ? UINT32_MAX : (unsigned) rep->n_filesystems;
        for (size_t i = 0; i < vm->n_disks; i++) {
                VmDisk *d = &vm->disks[i];

                if (d->refused)
                        continue;
                d->reported_bytes = total;
                d->report_time = now;
                d->failures = 0;
                d->pending = vm_disk_worth_compacting(vm, d);
        }
        c->got_report = true;
        log_info(
                "%s: guest reported %" PRIu64 " bytes freed on %zu filesystem(s).",
                vm->name,
                total,
                rep->n_filesystems);
        (void) vm_state_save(vm);
        bus_emit_guest_report(vm->manager, vm);
        manager_update_status(vm->manager);
}

/* Handles one frame payload. Returns 0, or -errno when the connection must be dropped. */
static int channel_handle_frame(GuestChannel *c, const uint8_t *payload, size_t len) {
        Reclaim__Envelope *m = NULL;
        int r;

        if (!token_bucket_try_take(&c->bucket, 1, now_ns(), NULL)) {
                c->dropped++;
                return 0;
        }
        r = rpc_message_unpack(payload, len, &m);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                if (r == -EPROTONOSUPPORT && c->conn_errors == 0) {
                        uint32_t v = 0;
                        (void) rpc_message_peek_version(payload, len, &v);
                        log_error(
                                "%s: guest speaks protocol version 0x%08" PRIx32
                                ", which this host does not.",
                                c->vm->name,
                                v);
                }
                channel_count_error(c);
                return 0;
        }

        switch (m->body_case) {
        case RECLAIM__ENVELOPE__BODY_HELLO:
                if (c->state == CHANNEL_CONNECTED)
                        log_info("%s: guest agent connected.", c->vm->name);
                c->state = CHANNEL_READY;
                c->backoff_usec = CHANNEL_BACKOFF_MIN_USEC;
                r = channel_send_hello_ack(c, m->seq);
                break;
        case RECLAIM__ENVELOPE__BODY_REPORT:
                if (c->state != CHANNEL_READY || !m->report)
                        channel_count_error(c);
                else
                        channel_handle_report(c, m->report);
                r = 0;
                break;
        case RECLAIM__ENVELOPE__BODY_PROGRESS:
                if (c->state != CHANNEL_READY || !m->progress)
                        channel_count_error(c);
                else
                        /* the mount point is the guest's string: the bus carries it as data,
                         * sd-bus refuses it if it is not UTF-8 (then no signal) */
                        bus_emit_guest_progress(
                                c->vm->manager,
                                c->vm,
                                m->progress->mount_point ?: "",
                                m->progress->bytes_done,
                                m->progress->bytes_total);
                r = 0;
                break;
        case RECLAIM__ENVELOPE__BODY_PONG:
                /* advisory: nothing to do with them yet beyond keeping the channel alive */
                if (c->state != CHANNEL_READY)
                        channel_count_error(c);
                r = 0;
                break;
        case RECLAIM__ENVELOPE__BODY__NOT_SET:
                r = 0; /* a body from a newer minor: ignored */
                break;
        default:
                channel_count_error(c); /* a host -> agent message: wrong direction */
                r = 0;
                break;
        }
        reclaim__envelope__free_unpacked(m, NULL);
        return r;
}

static int channel_io_cb(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        GuestChannel *c = userdata;
        uint8_t buf[4096];
        ssize_t n;
        size_t off = 0;
        int r;

        n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n <= 0) {
                if (n < 0)
                        log_debug_errno(errno, "%s: channel read failed: %m", c->vm->name);
                channel_disconnect(c, true);
                return 0;
        }

        while (off < (size_t) n) {
                const uint8_t *payload;
                size_t len;

                r = rpc_decoder_feed(c->decoder, buf + off, (size_t) n - off);
                if (r < 0) {
                        log_error_errno(r, "%s: channel decoder failed: %m", c->vm->name);
                        channel_disconnect(c, false);
                        return 0;
                }
                off += (size_t) r;
                while ((r = rpc_decoder_next(c->decoder, &payload, &len)) > 0) {
                        r = channel_handle_frame(c, payload, len);
                        if (r < 0) {
                                log_error_errno(r, "%s: channel failed: %m", c->vm->name);
                                channel_disconnect(c, false);
                                return 0;
                        }
                        if (c->fd < 0)
                                return 0;
                }
        }

        uint64_t de = rpc_decoder_errors(c->decoder);
        if (de > c->decoder_errors_seen) {
                c->errors += de - c->decoder_errors_seen;
                c->conn_errors += de - c->decoder_errors_seen;
                c->decoder_errors_seen = de;
        }
        if (c->conn_errors >= CHANNEL_MAX_ERRORS) {
                log_warning(
                        "%s: %" PRIu64 " malformed frames from the guest (%" PRIu64
                        " dropped by the rate limit), resetting the channel.",
                        c->vm->name,
                        c->conn_errors,
                        c->dropped);
                channel_disconnect(c, false);
        }
        return 0;
}

static int channel_connect(GuestChannel *c) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t l = strlen(c->vm->channel_path);
        _cleanup_close_ int fd = -1;
        int r;

        if (l >= sizeof(sa.sun_path)) {
                log_error("%s: channel path too long: %s", c->vm->name, c->vm->channel_path);
                return 0; /* never retried: the configuration must change (SIGHUP) */
        }
        memcpy(sa.sun_path, c->vm->channel_path, l);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                log_error_errno(errno, "%s: socket() failed: %m", c->vm->name);
                channel_disconnect(c, false);
                return 0;
        }
        /* A UNIX stream connect completes at once or fails (EAGAIN: QEMU's backlog is full). */
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                log_debug_errno(errno, "%s: connect to %s: %m", c->vm->name, c->vm->channel_path);
                channel_disconnect(c, false);
                return 0;
        }
        r = sd_event_add_io(c->vm->manager->event, &c->io, fd, EPOLLIN, channel_io_cb, c);
        if (r < 0) {
                log_error_errno(r, "%s: failed to watch the channel: %m", c->vm->name);
                channel_disconnect(c, false);
                return 0;
        }
        c->fd = TAKE_FD(fd);
        c->state = CHANNEL_CONNECTED;
        c->seq = 0;
        c->conn_errors = 0;
        c->got_report = false;
        rpc_decoder_reset(c->decoder);
        c->decoder_errors_seen = rpc_decoder_errors(c->decoder);
        (void) token_bucket_init(&c->bucket, CHANNEL_FRAME_RATE, CHANNEL_FRAME_BURST, now_ns());
        log_info("%s: connected to %s.", c->vm->name, c->vm->channel_path);
        manager_update_status(c->vm->manager);
        r = channel_arm_timer(c, CHANNEL_HELLO_TIMEOUT_USEC);
        if (r < 0)
                log_warning_errno(r, "%s: failed to arm the Hello timer: %m", c->vm->name);
        return 0;
}

/* Reconnects while waiting; pings a connected guest that has not said Hello yet. */
static int channel_timer_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        GuestChannel *c = userdata;
        int r;

        switch (c->state) {
        case CHANNEL_WAITING:
                return channel_connect(c);
        case CHANNEL_CONNECTED:
                r = channel_send_ping(c);
                if (r < 0) {
                        log_debug_errno(r, "%s: failed to send Ping: %m", c->vm->name);
                        channel_disconnect(c, false);
                }
                return 0;
        case CHANNEL_READY:
        default:
                return 0;
        }
}

int guest_channel_new(Vm *vm, GuestChannel **ret) {
        GuestChannel *c;
        int r;

        if (!vm || !vm->channel_path || !ret)
                return -EINVAL;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (GuestChannel){ .vm = vm,
                             .fd = -1,
                             .state = CHANNEL_WAITING,
                             .backoff_usec = CHANNEL_BACKOFF_MIN_USEC };
        c->decoder = rpc_decoder_new();
        if (!c->decoder) {
                free(c);
                return -ENOMEM;
        }
        r = channel_arm_timer(c, 0);
        if (r < 0) {
                guest_channel_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

GuestChannel *guest_channel_free(GuestChannel *c) {
        if (!c)
                return NULL;
        c->io = sd_event_source_disable_unref(c->io);
        c->timer = sd_event_source_disable_unref(c->timer);
        if (c->fd >= 0)
                (void) close(c->fd);
        rpc_decoder_free(c->decoder);
        return mfree(c);
}

bool guest_channel_is_connected(const GuestChannel *c) {
        return c && c->state != CHANNEL_WAITING;
}

bool guest_channel_is_ready(const GuestChannel *c) {
        return c && c->state == CHANNEL_READY;
}

void guest_channel_set_vm(GuestChannel *c, Vm *vm) {
        if (c)
                c->vm = vm;
}

int64_t guest_channel_request_reclaim(
        GuestChannel *c, int mode, uint64_t rate, uint64_t reserve, unsigned reserve_percent) {
        Reclaim__Envelope m;
        Reclaim__ReclaimRequest req;
        int r;

        if (!guest_channel_is_ready(c))
                return -ENOTCONN;
        reclaim__reclaim_request__init(&req);
        req.mode = (Reclaim__Mode) mode;
        req.rate_bytes_per_sec = rate;
        req.reserve_bytes = reserve;
        req.reserve_percent = reserve_percent;
        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST;
        m.reclaim_request = &req;
        r = channel_send(c, &m);
        if (r < 0) {
                log_warning_errno(r, "%s: failed to send ReclaimRequest: %m", c->vm->name);
                channel_disconnect(c, false);
                return r;
        }
        log_info("%s: asked the guest to reclaim (request %" PRIu64 ").", c->vm->name, m.seq);
        return (int64_t) m.seq;
}

uint64_t guest_channel_dropped(const GuestChannel *c) {
        return c ? c->dropped : 0;
}

uint64_t guest_channel_errors(const GuestChannel *c) {
        return c ? c->errors : 0;
}
