/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The agent's side of the messages (docs/protocol.md): building Hello, Progress, Report and
 * Pong from the agent's own structures, and turning the host's Policy and ReclaimRequest
 * into run options, clamped to the policy and to the local configuration.
 */

#include <stdbool.h>
#include <stdint.h>

#include "agent-config.h"
#include "agent-run.h"
#include "channel.h"
#include "reclaim.pb-c.h"

/* Who this guest is, for Hello. Every field is a NUL-terminated string, "" when unknown. */
typedef struct AgentIdentity {
        char hostname[256];
        char machine_id[64];
        char boot_id[64];
} AgentIdentity;

/*
 * Fills *ret from gethostname(), /etc/machine-id and /proc/sys/kernel/random/boot_id (each
 * trimmed of whitespace; an unreadable one is left ""). Never fails. A few small reads.
 */
void agent_identity_read(AgentIdentity *ret);

/* The policy of the host, in the agent's terms. */
typedef struct AgentPolicy {
        uint64_t max_rate;            /* 0: no cap from the host */
        uint64_t min_reserve_bytes;   /* 0: none */
        uint32_t min_reserve_percent; /* 0..100 */
        bool allow_auto, allow_trim, allow_zero;
} AgentPolicy;

/*
 * The policy a missing or empty Policy means: no rate cap, no reserve minimum, MODE_TRIM
 * only (docs/protocol.md: "allowed_modes empty: MODE_TRIM only").
 */
void agent_policy_default(AgentPolicy *ret);

/*
 * Converts a Policy from the host (borrowed, untrusted; NULL: the default). Unknown modes in
 * allowed_modes are ignored; a percentage above 100 counts as 100.
 */
void agent_policy_from_proto(const Reclaim__Policy *p, AgentPolicy *ret);

/* What a request resolves to. */
typedef struct AgentRequestPlan {
        AgentMode mode;
        uint64_t rate;
        AgentReserve reserve;
        const char *refuse_reason; /* static; non-NULL: the mode is not allowed, skip all */
} AgentRequestPlan;

/*
 * Resolves a ReclaimRequest (borrowed, untrusted) against the host's policy and the local
 * configuration (both borrowed):
 *  - mode: MODE_UNSPECIFIED picks the local mode, or else trim or zero, whichever the policy
 *    allows first; a requested mode the policy does not allow (or an unknown one) is refused.
 *    The local mode then narrows it: local trim turns auto into trim and refuses zero, local
 *    zero turns auto into zero and refuses trim;
 *  - rate: the smallest non-zero of the request's, the policy maximum and the local rate
 *    (0 if all are 0: unlimited);
 *  - reserve: the largest of the request's, the policy minimum and the local reserve, for the
 *    byte count and the percentage separately (at most 100%).
 * Always succeeds; *ret is fully written.
 */
void agent_request_resolve(
        const Reclaim__ReclaimRequest *req,
        const AgentPolicy *policy,
        const AgentConfig *local,
        AgentRequestPlan *ret);

/* The wire Mode for an AgentMode, and back (-EINVAL for UNSPECIFIED or unknown values). */
Reclaim__Mode agent_mode_to_proto(AgentMode m);
int agent_mode_from_proto(int m);

/*
 * Each builds one message and queues it with agent_channel_send() (same returns; the seq used
 * is stored in *ret_seq when not NULL). Borrow everything.
 *  - Hello: protocol and agent version, identity, and the capabilities the local mode allows
 *    (trim, zero), plus progress and cancel when serving.
 *  - Report: one FsReport per result; in_reply_to the request's seq, 0 for a run the agent
 *    started itself.
 *  - Progress, Pong: as in docs/protocol.md.
 */
int agent_send_hello(
        AgentChannel *c,
        const AgentIdentity *id,
        AgentMode local_mode,
        bool serving,
        uint64_t *ret_seq);
int agent_send_report(AgentChannel *c, const AgentRunReport *rep, uint64_t in_reply_to);
int agent_send_progress(AgentChannel *c, const AgentRunProgress *p, uint64_t in_reply_to);
int agent_send_pong(AgentChannel *c, uint64_t nonce, bool busy, uint64_t in_reply_to);

/*
 * Packs rep (borrowed) as one complete frame holding a Report with this seq and in_reply_to
 * (the same message agent_send_report() queues, for run's hand-over to serve). On success
 * returns 0 and a new buffer in *ret_frame (caller frees) of *ret_len bytes; -EINVAL,
 * -ENOMEM, -EMSGSIZE (not even an empty Report fits: cannot happen).
 */
int agent_pack_report(
        const AgentRunReport *rep,
        uint64_t seq,
        uint64_t in_reply_to,
        uint8_t **ret_frame,
        size_t *ret_len);
