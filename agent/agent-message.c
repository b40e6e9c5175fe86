/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent-message.h"
#include "log.h"
#include "macro.h"

#define MACHINE_ID_PATH "/etc/machine-id"
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

static void strip_trailing(char *s) {
        size_t n = strlen(s);

        while (n > 0 && isspace((unsigned char) s[n - 1]))
                s[--n] = '\0';
}

static void read_small_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -1;
        ssize_t n;

        buf[0] = '\0';
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                log_debug_errno(negative_errno(), "Cannot open %s: %m", path);
                return;
        }
        n = read(fd, buf, size - 1);
        if (n < 0) {
                log_debug_errno(negative_errno(), "Cannot read %s: %m", path);
                buf[0] = '\0';
                return;
        }
        buf[n] = '\0';
        strip_trailing(buf);
}

void agent_identity_read(AgentIdentity *ret) {
        *ret = (AgentIdentity){};
        if (gethostname(ret->hostname, sizeof(ret->hostname) - 1) < 0)
                ret->hostname[0] = '\0';
        ret->hostname[sizeof(ret->hostname) - 1] = '\0';
        read_small_file(MACHINE_ID_PATH, ret->machine_id, sizeof(ret->machine_id));
        read_small_file(BOOT_ID_PATH, ret->boot_id, sizeof(ret->boot_id));
}

/* ---- policy ---- */

void agent_policy_default(AgentPolicy *ret) {
        *ret = (AgentPolicy){ .allow_trim = true };
}

void agent_policy_from_proto(const Reclaim__Policy *p, AgentPolicy *ret) {
        AgentPolicy pol = {};

        if (!p || p->n_allowed_modes == 0) {
                agent_policy_default(&pol);
                if (p) {
                        pol.max_rate = p->max_rate_bytes_per_sec;
                        pol.min_reserve_bytes = p->min_reserve_bytes;
                        pol.min_reserve_percent = MIN(p->min_reserve_percent, 100u);
                }
                *ret = pol;
                return;
        }
        pol.max_rate = p->max_rate_bytes_per_sec;
        pol.min_reserve_bytes = p->min_reserve_bytes;
        pol.min_reserve_percent = MIN(p->min_reserve_percent, 100u);
        for (size_t i = 0; i < p->n_allowed_modes; i++)
                switch ((int) p->allowed_modes[i]) {
                case RECLAIM__MODE__MODE_AUTO:
                        pol.allow_auto = true;
                        break;
                case RECLAIM__MODE__MODE_TRIM:
                        pol.allow_trim = true;
                        break;
                case RECLAIM__MODE__MODE_ZERO:
                        pol.allow_zero = true;
                        break;
                default:
                        /* unknown (newer) modes are not one of ours */
                        break;
                }
        *ret = pol;
}

Reclaim__Mode agent_mode_to_proto(AgentMode m) {
        switch (m) {
        case AGENT_MODE_AUTO:
                return RECLAIM__MODE__MODE_AUTO;
        case AGENT_MODE_TRIM:
                return RECLAIM__MODE__MODE_TRIM;
        case AGENT_MODE_ZERO:
                return RECLAIM__MODE__MODE_ZERO;
        default:
                return RECLAIM__MODE__MODE_UNSPECIFIED;
        }
}

int agent_mode_from_proto(int m) {
        switch (m) {
        case RECLAIM__MODE__MODE_AUTO:
                return AGENT_MODE_AUTO;
        case RECLAIM__MODE__MODE_TRIM:
                return AGENT_MODE_TRIM;
        case RECLAIM__MODE__MODE_ZERO:
                return AGENT_MODE_ZERO;
        default:
                return -EINVAL;
        }
}

static bool policy_allows(const AgentPolicy *p, AgentMode m) {
        switch (m) {
        case AGENT_MODE_AUTO:
                return p->allow_auto;
        case AGENT_MODE_TRIM:
                return p->allow_trim;
        case AGENT_MODE_ZERO:
                return p->allow_zero;
        default:
                return false;
        }
}

/* The smallest of a and b where 0 means "no limit". */
static uint64_t min_limit(uint64_t a, uint64_t b) {
        if (a == 0)
                return b;
        if (b == 0)
                return a;
        return MIN(a, b);
}

void agent_request_resolve(
        const Reclaim__ReclaimRequest *req,
        const AgentPolicy *policy,
        const AgentConfig *local,
        AgentRequestPlan *ret) {
        AgentRequestPlan plan = { .mode = local->mode };
        uint64_t want_rate = req ? req->rate_bytes_per_sec : 0;
        uint64_t want_bytes = req ? req->reserve_bytes : 0;
        uint32_t want_percent = req ? MIN(req->reserve_percent, 100u) : 0;
        int wire = req ? (int) req->mode : RECLAIM__MODE__MODE_UNSPECIFIED;
        int m;

        /* mode: what the host asks, within what the host allows ... */
        if (wire == RECLAIM__MODE__MODE_UNSPECIFIED) {
                if (policy_allows(policy, local->mode))
                        plan.mode = local->mode;
                else if (agent_mode_allows_trim(local->mode) && policy->allow_trim)
                        plan.mode = AGENT_MODE_TRIM;
                else if (agent_mode_allows_zero(local->mode) && policy->allow_zero)
                        plan.mode = AGENT_MODE_ZERO;
                else
                        plan.refuse_reason =
                                "no mode allowed both by the host's policy and "
                                "the local configuration";
        } else {
                m = agent_mode_from_proto(wire);
                if (m < 0)
                        plan.refuse_reason = "unknown mode requested";
                else if (!policy_allows(policy, (AgentMode) m))
                        plan.refuse_reason =
                                "the requested mode is not allowed by the host's "
                                "policy";
                else
                        plan.mode = (AgentMode) m;
        }
        /* ... and within what this guest's admin allows */
        if (!plan.refuse_reason) {
                if (local->mode == AGENT_MODE_TRIM) {
                        if (plan.mode == AGENT_MODE_ZERO)
                                plan.refuse_reason =
                                        "zero-fill is disabled by the local "
                                        "configuration (mode = trim)";
                        else
                                plan.mode = AGENT_MODE_TRIM;
                } else if (local->mode == AGENT_MODE_ZERO) {
                        if (plan.mode == AGENT_MODE_TRIM)
                                plan.refuse_reason =
                                        "trim is disabled by the local "
                                        "configuration (mode = zero)";
                        else
                                plan.mode = AGENT_MODE_ZERO;
                }
        }

        plan.rate = min_limit(min_limit(want_rate, policy->max_rate), local->rate);
        plan.reserve.bytes = MAX(MAX(want_bytes, policy->min_reserve_bytes), local->reserve.bytes);
        plan.reserve.basis_points =
                MAX(MAX(want_percent * 100u, policy->min_reserve_percent * 100u),
                    local->reserve.basis_points);
        plan.reserve.basis_points = MIN(plan.reserve.basis_points, AGENT_RESERVE_BASIS_POINTS_MAX);
        *ret = plan;
}

/* ---- messages ---- */

int agent_send_hello(
        AgentChannel *c,
        const AgentIdentity *id,
        AgentMode local_mode,
        bool serving,
        uint64_t *ret_seq) {
        Reclaim__Envelope m;
        Reclaim__Hello h;
        Reclaim__Capability caps[4];
        char version[] = RECLAIM_VERSION;
        AgentIdentity copy = *id; /* protobuf-c wants char *, our identity is const */
        size_t n = 0;

        reclaim__hello__init(&h);
        h.protocol_version = RPC_PROTOCOL_VERSION;
        h.agent_version = version;
        h.hostname = copy.hostname;
        h.machine_id = copy.machine_id;
        h.boot_id = copy.boot_id;
        if (agent_mode_allows_trim(local_mode))
                caps[n++] = RECLAIM__CAPABILITY__CAPABILITY_TRIM;
        if (agent_mode_allows_zero(local_mode))
                caps[n++] = RECLAIM__CAPABILITY__CAPABILITY_ZERO;
        if (serving) {
                caps[n++] = RECLAIM__CAPABILITY__CAPABILITY_PROGRESS;
                caps[n++] = RECLAIM__CAPABILITY__CAPABILITY_CANCEL;
        }
        h.capabilities = caps;
        h.n_capabilities = n;

        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_HELLO;
        m.hello = &h;
        return agent_channel_send(c, &m, ret_seq);
}

static Reclaim__Method method_to_proto(AgentMethod m) {
        switch (m) {
        case AGENT_METHOD_TRIM:
                return RECLAIM__METHOD__METHOD_TRIM;
        case AGENT_METHOD_ZERO:
                return RECLAIM__METHOD__METHOD_ZERO;
        case AGENT_METHOD_SKIPPED:
                return RECLAIM__METHOD__METHOD_SKIPPED;
        default:
                return RECLAIM__METHOD__METHOD_UNSPECIFIED;
        }
}

static Reclaim__Outcome outcome_to_proto(AgentOutcome o) {
        switch (o) {
        case AGENT_OUTCOME_OK:
                return RECLAIM__OUTCOME__OUTCOME_OK;
        case AGENT_OUTCOME_UNSUPPORTED:
                return RECLAIM__OUTCOME__OUTCOME_UNSUPPORTED;
        case AGENT_OUTCOME_STOPPED_AT_RESERVE:
                return RECLAIM__OUTCOME__OUTCOME_STOPPED_AT_RESERVE;
        case AGENT_OUTCOME_CANCELLED:
                return RECLAIM__OUTCOME__OUTCOME_CANCELLED;
        case AGENT_OUTCOME_ERROR:
                return RECLAIM__OUTCOME__OUTCOME_ERROR;
        default:
                return RECLAIM__OUTCOME__OUTCOME_UNSPECIFIED;
        }
}

/* Builds the Report for rep and calls emit with it, halving the filesystem list while emit
 * says -EMSGSIZE. Returns what emit returned last. */
static int report_emit(
        const AgentRunReport *rep,
        uint64_t in_reply_to,
        int (*emit)(Reclaim__Envelope *m, void *userdata),
        void *userdata) {
        _cleanup_free_ Reclaim__FsReport *fs = NULL;
        _cleanup_free_ Reclaim__FsReport **ptrs = NULL;
        Reclaim__Envelope m;
        Reclaim__Report r;
        char empty[] = "";
        size_t n;
        int k;

        fs = calloc(rep->n + 1, sizeof(*fs));
        ptrs = calloc(rep->n + 1, sizeof(*ptrs));
        if (!fs || !ptrs)
                return -ENOMEM;
        for (size_t i = 0; i < rep->n; i++) {
                const AgentFsResult *res = &rep->items[i];

                reclaim__fs_report__init(&fs[i]);
                fs[i].mount_point = res->mount_point;
                fs[i].device = res->device;
                fs[i].fstype = res->fstype;
                fs[i].method = method_to_proto(res->method);
                fs[i].bytes = res->bytes;
                fs[i].free_bytes_before = res->free_before;
                fs[i].free_bytes_after = res->free_after;
                fs[i].reserve_bytes = res->reserve;
                fs[i].duration_ms = res->duration_ms;
                fs[i].outcome = outcome_to_proto(res->outcome);
                /* error: "human-readable, set when outcome is OUTCOME_ERROR" */
                fs[i].error =
                        res->outcome == AGENT_OUTCOME_ERROR && res->reason ? res->reason : empty;
                fs[i].error_errno = res->error < 0 ? -res->error : 0;
                ptrs[i] = &fs[i];
        }

        reclaim__report__init(&r);
        r.duration_ms = rep->duration_ms;
        r.mode = agent_mode_to_proto(rep->mode);
        r.filesystems = ptrs;
        rpc_message_init(&m, 0);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_REPORT;
        m.report = &r;

        /* A frame holds 64 KiB, hundreds of filesystems: beyond that, report the first ones. */
        for (n = rep->n;; n /= 2) {
                r.n_filesystems = n;
                k = emit(&m, userdata);
                if (k != -EMSGSIZE || n == 0)
                        break;
        }
        if (k >= 0 && n < rep->n)
                log_warning(
                        "The report was too large for one frame; sent %zu of %zu filesystems",
                        n,
                        rep->n);
        return k;
}

static int emit_to_channel(Reclaim__Envelope *m, void *userdata) {
        return agent_channel_send(userdata, m, NULL);
}

int agent_send_report(AgentChannel *c, const AgentRunReport *rep, uint64_t in_reply_to) {
        if (!c || !rep)
                return -EINVAL;
        return report_emit(rep, in_reply_to, emit_to_channel, c);
}

typedef struct PackTarget {
        uint64_t seq;
        uint8_t *frame;
        size_t len;
} PackTarget;

static int emit_to_frame(Reclaim__Envelope *m, void *userdata) {
        PackTarget *t = userdata;

        m->seq = t->seq;
        return rpc_message_pack(m, &t->frame, &t->len);
}

int agent_pack_report(
        const AgentRunReport *rep,
        uint64_t seq,
        uint64_t in_reply_to,
        uint8_t **ret_frame,
        size_t *ret_len) {
        PackTarget t = { .seq = seq };
        int r;

        if (!rep || !ret_frame || !ret_len)
                return -EINVAL;
        r = report_emit(rep, in_reply_to, emit_to_frame, &t);
        if (r < 0)
                return r;
        *ret_frame = t.frame;
        *ret_len = t.len;
        return 0;
}

int agent_send_progress(AgentChannel *c, const AgentRunProgress *p, uint64_t in_reply_to) {
        _cleanup_free_ char *mount_point = NULL;
        Reclaim__Envelope m;
        Reclaim__Progress pr;

        if (!c || !p)
                return -EINVAL;
        mount_point = strdup(p->mount_point ?: "");
        if (!mount_point)
                return -ENOMEM;
        reclaim__progress__init(&pr);
        pr.mount_point = mount_point;
        pr.method = method_to_proto(p->method);
        pr.bytes_done = p->bytes_done;
        pr.bytes_total = p->bytes_total;
        pr.filesystems_done = p->filesystems_done;
        pr.filesystems_total = p->filesystems_total;
        rpc_message_init(&m, 0);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_PROGRESS;
        m.progress = &pr;
        return agent_channel_send(c, &m, NULL);
}

int agent_send_pong(AgentChannel *c, uint64_t nonce, bool busy, uint64_t in_reply_to) {
        Reclaim__Envelope m;
        Reclaim__Pong p;

        reclaim__pong__init(&p);
        p.nonce = nonce;
        p.busy = busy;
        rpc_message_init(&m, 0);
        m.in_reply_to = in_reply_to;
        m.body_case = RECLAIM__ENVELOPE__BODY_PONG;
        m.pong = &p;
        return agent_channel_send(c, &m, NULL);
}
