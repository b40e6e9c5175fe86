/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The agent's conversations with the host: the long-running `serve` loop, and the one report
 * that `run` sends when it is done (through serve's control socket when serve holds the port:
 * agent-handoff.h).
 *
 * serve: one thread runs a poll() loop over the channel, a signalfd (SIGTERM, SIGINT) and an
 * eventfd the worker thread signals when a run ends. A ReclaimRequest starts agent_run() in a
 * worker thread (FITRIM and the zero-fill block for minutes; the loop must keep answering
 * Ping and Cancel meanwhile). The loop sends Progress at most once a second from what the
 * worker last published (under a mutex), and the Report when the worker is done. Cancel (and
 * SIGTERM) set the run's cancel flag, which the zero-fill checks between chunks and between
 * rate-limit sleeps (at least every 50 ms).
 *
 * The host coming and going never makes the loop spin: while it is away the channel's fd is
 * not polled at all, and agent_channel_connect() is retried after a back-off of 100 ms,
 * doubling up to 2 s (reset once a host answers Hello with HelloAck).
 */

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "agent-config.h"
#include "agent-run.h"

#define AGENT_REPORT_TIMEOUT_NS (UINT64_C(5) * 1000 * 1000 * 1000)

/*
 * Runs the serve loop with config (borrowed) until SIGTERM or SIGINT. It also listens on
 * config->control_socket for reports handed over by `run` (one client at a time, polled by
 * the same loop), sends them to the host with in_reply_to 0, or keeps the newest for the next
 * HelloAck; without that socket (an error, logged) it serves the host alone. Blocks SIGTERM, SIGINT
 * and SIGPIPE in the calling thread (and so in the worker). dry_run: runs report what they
 * would do. Returns 0 after a signal (a running reclaim was cancelled and its report sent if a
 * host was there), or -errno when the loop could not be set up or failed (-ENOMEM, signalfd
 * and eventfd errors).
 */
int agent_serve(const AgentConfig *config, bool dry_run);

/* How agent_report_once() got the report out. */
#define AGENT_REPORT_VIA_CHANNEL 1 /* written to the host over the port (or socket) */
#define AGENT_REPORT_VIA_SERVE 2   /* handed to reclaim-agent serve, which holds the port */

/*
 * Sends rep (borrowed) as a Report with in_reply_to 0 over the channel config names: connect
 * (retrying with back-off while the host is absent), Hello, wait for HelloAck (answering
 * Ping), Report, and wait until it is written, all within timeout_ns. When the port is held
 * by another process (EBUSY: serve has it), hands the report to serve on
 * config->control_socket instead (agent-handoff.h) and waits for its answer in the time
 * left. stop (may be NULL): when it becomes non-zero, give up at the next check (every
 * 100 ms at most). Returns AGENT_REPORT_VIA_CHANNEL when the report was written,
 * AGENT_REPORT_VIA_SERVE when serve acknowledged it, 0 when neither took it in time (logged
 * at notice level), -errno for -ENOMEM or a bad channel path. Never blocks beyond timeout_ns
 * (plus one 100 ms slice).
 */
int agent_report_once(
        const AgentConfig *config,
        const AgentRunReport *rep,
        uint64_t timeout_ns,
        const volatile sig_atomic_t *stop);
