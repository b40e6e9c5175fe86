/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The agent's end of the channel to the host: the virtio-serial port
 * /dev/virtio-ports/org.reclaim.agent.0 or, for tests (qga-style, so no VM is needed), a
 * UNIX socket that the test's host end listens on. Frames and messages as in docs/protocol.md
 * (proto/rpc-frame.h, proto/rpc-message.h).
 *
 * Nothing here blocks: the fd is non-blocking, output is queued and written as the fd takes
 * it (the virtio driver takes at most 32 KiB per write), input is read as it comes and fed to
 * an RpcDecoder. The caller owns the event loop and the timing (see AgentBackoff).
 *
 * The host coming and going (docs/protocol.md, "virtio-serial"):
 *  - port: opened once and kept open, because only one process may have it open and every
 *    open/close is an event the host sees. While the host end is absent, poll() reports
 *    POLLHUP all the time and read() returns 0, so POLLHUP is "host gone", never "close":
 *    the caller stops polling the fd and asks agent_channel_connect() again after a back-off.
 *    ENODEV (hot-unplug) and POLLERR/POLLNVAL close the fd; the next connect reopens it.
 *  - socket: every connection is a new socket; EOF closes it, connect() opens a new one.
 * Each (re)connection starts with an empty decoder and output queue and seq 1.
 */

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"
#include "rpc-message.h"

/* Output queued beyond this is refused (-ENOBUFS): a host that does not read must not make
 * the agent grow without bound. Many times the largest Report. */
#define AGENT_CHANNEL_OUTPUT_MAX (UINT64_C(1) << 20)

typedef enum AgentChannelKind {
        AGENT_CHANNEL_PORT,   /* a character device (virtio-serial port) */
        AGENT_CHANNEL_SOCKET, /* a UNIX stream socket the host end listens on */
} AgentChannelKind;

typedef struct AgentChannel AgentChannel;

/* Called for every message received; m is borrowed (freed after the call). */
typedef void (*AgentChannelHandler)(AgentChannel *c, const Reclaim__Envelope *m, void *userdata);

/*
 * Returns a new, unconnected channel to path (copied) in *ret (caller frees with
 * agent_channel_free()). Returns 0, -EINVAL (NULL or relative path, path too long for a
 * socket address) or -ENOMEM. No I/O.
 */
int agent_channel_new(AgentChannelKind kind, const char *path, AgentChannel **ret);

/* Closes the fd and frees everything. Accepts NULL; returns NULL. */
AgentChannel *agent_channel_free(AgentChannel *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(AgentChannel *, agent_channel_free);

/*
 * Tries once, without blocking, to reach the host: the port is opened if it is not (then
 * kept open) and the host is there when poll() shows no POLLHUP; a socket is connect()ed.
 * Returns 1 when connected: a fresh connection (empty decoder and output, seq restarts at 1;
 * the caller sends Hello first). Returns 0 when the host is not there yet (no port device,
 * port busy, host end absent, nobody listening): try again after a back-off; *ret_why (when
 * not NULL) is set to -errno describing why, for a log line. Returns -errno only for what
 * retrying cannot fix (-ENOMEM). Already connected: returns 1 and changes nothing.
 */
int agent_channel_connect(AgentChannel *c, int *ret_why);

/*
 * The host went away (error is the -errno that showed it: -EPIPE for EOF/POLLHUP, -ENODEV,
 * ...). Drops queued input and output. Closes a socket; keeps a port open unless the device
 * itself is gone (-ENODEV, -EIO, -EBADF). Idempotent.
 */
void agent_channel_disconnect(AgentChannel *c, int error);

/* True between a successful agent_channel_connect() and agent_channel_disconnect(). */
bool agent_channel_is_connected(const AgentChannel *c);

/* The fd to poll while connected, else -1. Borrowed. */
int agent_channel_fd(const AgentChannel *c);

/* The poll events to ask for while connected: POLLIN, plus POLLOUT when output is queued. */
short agent_channel_events(const AgentChannel *c);

/*
 * Sets m's seq to the next sequence number of this connection, packs it and queues the frame,
 * then writes what the fd takes now. m is borrowed. On success returns 0 and the seq in
 * *ret_seq (when not NULL). Errors: -ENOTCONN (not connected), -ENOBUFS (more than
 * AGENT_CHANNEL_OUTPUT_MAX queued: the message is dropped), -EMSGSIZE, -ENOMEM, -EINVAL (a
 * message rpc_message_pack() refuses), or -EPIPE/-errno when writing showed the host gone
 * (the frame stays queued; the caller disconnects).
 */
int agent_channel_send(AgentChannel *c, Reclaim__Envelope *m, uint64_t *ret_seq);

/*
 * Writes queued output, as much as the fd takes now. Returns 1 when nothing is left queued,
 * 0 when some is (wait for POLLOUT), -ENOTCONN, or -EPIPE/-errno when the host is gone.
 */
int agent_channel_flush(AgentChannel *c);

/* Bytes queued and not yet written. */
size_t agent_channel_queued(const AgentChannel *c);

/*
 * Reads what the fd has now (a bounded number of reads) and calls handler for every valid
 * message, in order. Malformed frames and messages are dropped and counted
 * (agent_channel_errors()); a protocol major we do not speak is logged once per connection.
 * Returns 0 when everything available was read, -EPIPE when the host is gone (EOF: read()
 * returned 0), -ENOTCONN, or another -errno from read(). Messages received before an EOF are
 * handled first.
 */
int agent_channel_receive(AgentChannel *c, AgentChannelHandler handler, void *userdata);

/* Counts one more dropped message (e.g. one that goes the wrong way). */
void agent_channel_count_error(AgentChannel *c);

/* Frames and messages dropped on this channel so far (all connections). */
uint64_t agent_channel_errors(const AgentChannel *c);

/* The path given to agent_channel_new(). Borrowed. */
const char *agent_channel_path(const AgentChannel *c);

/*
 * Exponential back-off for reconnecting: agent_backoff_next() returns the delay to wait now
 * (min_ns first, then doubling, at most max_ns); agent_backoff_reset() starts over.
 */
typedef struct AgentBackoff {
        uint64_t min_ns;
        uint64_t max_ns;
        uint64_t next_ns;
} AgentBackoff;

#define AGENT_BACKOFF_MIN_NS (UINT64_C(100) * 1000 * 1000)
#define AGENT_BACKOFF_MAX_NS (UINT64_C(2) * 1000 * 1000 * 1000)

void agent_backoff_init(AgentBackoff *b, uint64_t min_ns, uint64_t max_ns);
uint64_t agent_backoff_next(AgentBackoff *b);
void agent_backoff_reset(AgentBackoff *b);

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t agent_now_ns(void);
