/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The local hand-off of a report from `run` to `serve` (docs/agent.md, "Sharing the port";
 * docs/protocol.md, "Local hand-off"). Only one process may open the virtio-serial port, so
 * while serve holds it, run gives its Report to serve over a UNIX stream socket (the control
 * socket, default /run/reclaim-agent/serve.sock) and serve forwards it to the host.
 *
 * On the socket, the protocol's own framing: the client sends exactly one frame holding an
 * Envelope with a Report body; serve answers with one frame holding a Pong whose in_reply_to
 * is the Report's seq (the report is taken: sent to the host, or kept for it) and closes.
 * Anything else (another body, a bad frame, a frame above RPC_MAX_FRAME, a client too slow,
 * a peer that is neither root nor serve's own uid) closes the connection without an answer.
 *
 * Server side: nothing blocks. One client at a time; the caller polls the one fd
 * agent_handoff_fd() names (the listening socket, or the client) and calls
 * agent_handoff_process() when it is ready or its deadline passed.
 */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent-run.h"
#include "macro.h"
#include "reclaim.pb-c.h"

/* How long one client may take to send its frame. */
#define AGENT_HANDOFF_CLIENT_TIMEOUT_NS (UINT64_C(2) * 1000 * 1000 * 1000)
/* The largest answer the client reads (a Pong is a dozen bytes). */
#define AGENT_HANDOFF_ACK_MAX 4096u

typedef struct AgentHandoff AgentHandoff;

/*
 * Creates the control socket at path (borrowed): its directory is created 0700 if missing
 * (one level), a stale socket file is replaced, the socket is made 0600 and listens,
 * non-blocking. Returns 0 and a new server in *ret (caller frees with agent_handoff_free()),
 * or -EINVAL (relative or too long a path), -EEXIST (path is not a socket), -EADDRINUSE
 * (another serve listens there), -ENOMEM, -errno from mkdir/socket/bind/listen.
 */
int agent_handoff_new(const char *path, AgentHandoff **ret);

/* Closes the listening socket and any client, removes the socket file. Accepts NULL. */
AgentHandoff *agent_handoff_free(AgentHandoff *h);
DEFINE_TRIVIAL_CLEANUP_FUNC(AgentHandoff *, agent_handoff_free);

/* The fd to poll now (the client's while one is connected, else the listener's) and the
 * events to poll it for. Borrowed. */
int agent_handoff_fd(const AgentHandoff *h);
short agent_handoff_events(const AgentHandoff *h);

/* When the current client's time is up (UINT64_MAX: no client), CLOCK_MONOTONIC ns. */
uint64_t agent_handoff_deadline(const AgentHandoff *h);

/*
 * Does what can be done now without blocking: accepts a client (checking SO_PEERCRED),
 * reads its frame, drops it after its deadline. Returns 1 when a complete, valid Report
 * arrived: *ret_msg gets the Envelope (caller frees with reclaim__envelope__free_unpacked())
 * and the caller answers with agent_handoff_ack() once it has taken the report. Returns 0
 * otherwise (nothing yet, or a bad client was dropped, logged at notice level);
 * -errno only for accept() failures that are not the client's doing (e.g. -EMFILE).
 */
int agent_handoff_process(AgentHandoff *h, Reclaim__Envelope **ret_msg);

/*
 * Answers the current client with a Pong in reply to seq (one non-blocking write: the
 * socket's buffer is empty, and a client that does not read loses only its answer) and
 * closes it. Returns 0, or -ENOTCONN (no client), -ENOMEM, -errno of the write.
 */
int agent_handoff_ack(AgentHandoff *h, uint64_t seq);

/*
 * The pure part of reading a frame: checks a header (RPC_FRAME_HEADER_SIZE bytes, borrowed)
 * and returns the payload length in *ret_len. Returns 0, -EBADMSG (bad magic, length 0),
 * -EMSGSIZE (length above max, checked before anything is allocated), -EINVAL (NULL).
 */
int agent_handoff_parse_header(const uint8_t *header, size_t max, uint32_t *ret_len);

/*
 * Checks a frame's payload against the CRC in its header and unpacks it; accepts only an
 * Envelope with body want. Returns 0 and the message in *ret (caller frees), -EBADMSG (bad
 * CRC, bad message, another body), -EPROTONOSUPPORT, -ENOMEM, -EINVAL. Borrows both buffers.
 */
int agent_handoff_unpack(
        const uint8_t *header,
        const uint8_t *payload,
        size_t len,
        Reclaim__Envelope__BodyCase want,
        Reclaim__Envelope **ret);

/*
 * run's side: connects to serve's control socket at path, sends rep (borrowed) as a Report
 * (seq 1, in_reply_to 0) and waits for serve's Pong, all within timeout_ns (nobody listening
 * yet is retried every 100 ms: serve may have just started); stop (may be
 * NULL) ends the wait early when it becomes non-zero. Returns 1 when serve acknowledged,
 * 0 when it did not (nobody listening, no answer in time, a wrong answer; logged at notice
 * level), -ENOMEM or -EINVAL.
 */
int agent_handoff_send(
        const char *path,
        const AgentRunReport *rep,
        uint64_t timeout_ns,
        const volatile sig_atomic_t *stop);
