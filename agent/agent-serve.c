/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "agent-handoff.h"
#include "agent-message.h"
#include "agent-serve.h"
#include "channel.h"
#include "fs-enum.h"
#include "log.h"
#include "macro.h"

#define NSEC_PER_MSEC UINT64_C(1000000)
#define NSEC_PER_SEC UINT64_C(1000000000)
/* Progress: "at most about one per second" (docs/protocol.md). */
#define PROGRESS_INTERVAL_NS NSEC_PER_SEC
/* A Hello re-sent because the host talks before acknowledging ours: at most this often. */
#define HELLO_RESEND_NS NSEC_PER_SEC
/* After SIGTERM: how long to wait for a FITRIM in progress (a fill stops within ~50 ms). */
#define STOP_WORKER_WAIT_NS (UINT64_C(10) * NSEC_PER_SEC)
/* After SIGTERM: how long to try to get the last report out. */
#define STOP_FLUSH_NS (UINT64_C(2) * NSEC_PER_SEC)
/* Requests waiting for the running run's Report (one run at a time). */
#define WAITERS_MAX 16
/* run's report: the time kept for writing it after waiting for HelloAck. */
#define REPORT_WRITE_RESERVE_NS NSEC_PER_SEC
#define SLICE_NS (UINT64_C(100) * NSEC_PER_MSEC)

static int poll_timeout_ms(uint64_t now, uint64_t deadline) {
        uint64_t d;

        if (deadline == UINT64_MAX)
                return -1;
        if (deadline <= now)
                return 0;
        d = DIV_ROUND_UP(deadline - now, NSEC_PER_MSEC);
        return (int) MIN(d, (uint64_t) 60000);
}

static int channel_for(const AgentConfig *config, AgentChannel **ret) {
        if (config->socket)
                return agent_channel_new(AGENT_CHANNEL_SOCKET, config->socket, ret);
        return agent_channel_new(AGENT_CHANNEL_PORT, config->port, ret);
}

/* ---- the worker ---- */

typedef struct Job {
        pthread_t thread;
        bool started;
        AgentRunTargets *targets;
        AgentRunOptions opts;
        volatile sig_atomic_t cancel;
        int done_fd; /* borrowed eventfd */

        uint64_t connection; /* the connection the requests came on */
        uint64_t waiters[WAITERS_MAX];
        size_t n_waiters;

        /* written by the worker, read by the loop, under lock */
        pthread_mutex_t lock;
        AgentRunProgress progress;
        char *progress_mount; /* owned copy of progress.mount_point */
        uint64_t progress_gen, progress_sent_gen;

        AgentRunReport *report; /* set by the worker before it signals done_fd */
        int result;
} Job;

static Job *job_free(Job *j) {
        if (!j)
                return NULL;
        agent_run_targets_free(j->targets);
        agent_run_report_free(j->report);
        free(j->progress_mount);
        (void) pthread_mutex_destroy(&j->lock);
        return mfree(j);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Job *, job_free);

static void job_on_progress(const AgentRunProgress *p, void *userdata) {
        Job *j = userdata;
        char *m = NULL;

        /* Only copy the mount point when it changes: this runs after every chunk. */
        (void) pthread_mutex_lock(&j->lock);
        if (!j->progress_mount || strcmp(j->progress_mount, p->mount_point ?: "") != 0) {
                m = strdup(p->mount_point ?: "");
                if (m) {
                        free(j->progress_mount);
                        j->progress_mount = m;
                }
        }
        j->progress = *p;
        j->progress.mount_point = NULL;
        j->progress_gen++;
        (void) pthread_mutex_unlock(&j->lock);
}

static void *job_thread(void *userdata) {
        Job *j = userdata;
        AgentRunReport *rep = NULL;
        uint64_t one = 1;

        j->result = agent_run(j->targets, &j->opts, &rep);
        j->report = rep;
        /* The loop reads report/result only after this write (and joins before freeing). */
        while (write(j->done_fd, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
        return NULL;
}

/* ---- the loop ---- */

typedef struct Serve {
        const AgentConfig *config;
        bool dry_run;
        AgentChannel *ch;
        AgentIdentity id;
        AgentBackoff backoff;
        uint64_t retry_at;
        int last_why;
        bool waiting_logged;

        uint64_t connection; /* incremented at every connect */
        bool acked;
        uint64_t hello_sent_ns;
        AgentPolicy policy;

        Job *job;
        AgentRunReport *undelivered; /* finished while no host was there */
        AgentHandoff *handoff;       /* the control socket; NULL when it could not be set up */
        Reclaim__Envelope *handed;   /* the newest report run handed over, not yet sent */
        uint64_t handoff_retry_at;   /* after an accept() error: not polled until then */
        uint64_t last_progress_ns;

        int sigfd, evfd;
        bool terminating;
        uint64_t stop_deadline;
} Serve;

static void serve_disconnect(Serve *s, int error) {
        uint64_t delay;

        if (agent_channel_is_connected(s->ch))
                log_info(
                        "Host on %s gone (%s); waiting for it",
                        agent_channel_path(s->ch),
                        error == -EPIPE ? "connection closed" : strerror(-error));
        agent_channel_disconnect(s->ch, error);
        s->acked = false;
        agent_policy_default(&s->policy);
        delay = agent_backoff_next(&s->backoff);
        s->retry_at = agent_now_ns() + delay;
        s->waiting_logged = true;
}

static void serve_send_hello(Serve *s) {
        int r = agent_send_hello(s->ch, &s->id, s->config->mode, true, NULL);

        s->hello_sent_ns = agent_now_ns();
        if (r < 0 && r != -ENOBUFS)
                serve_disconnect(s, r);
}

static void serve_try_connect(Serve *s) {
        int why = 0, r;

        r = agent_channel_connect(s->ch, &why);
        if (r < 0) {
                /* ENOMEM: try again later like anything else. */
                why = r;
                r = 0;
        }
        if (r == 0) {
                if (!s->waiting_logged || why != s->last_why)
                        log_info(
                                "Waiting for the host on %s: %s",
                                agent_channel_path(s->ch),
                                why == -ENOTCONN ? "host end not connected" : strerror(-why));
                s->waiting_logged = true;
                s->last_why = why;
                s->retry_at = agent_now_ns() + agent_backoff_next(&s->backoff);
                return;
        }
        s->connection++;
        s->acked = false;
        s->waiting_logged = false;
        s->last_why = 0;
        agent_policy_default(&s->policy);
        log_debug("Connected to %s; sending Hello", agent_channel_path(s->ch));
        serve_send_hello(s);
}

static void serve_send_report(Serve *s, const AgentRunReport *rep, uint64_t in_reply_to) {
        int r = agent_send_report(s->ch, rep, in_reply_to);

        if (r < 0 && r != -ENOBUFS && r != -EMSGSIZE)
                serve_disconnect(s, r);
        else if (r < 0)
                log_warning_errno(r, "Cannot send the report: %m");
}

static Reclaim__Envelope *envelope_free(Reclaim__Envelope *m) {
        if (m)
                reclaim__envelope__free_unpacked(m, NULL);
        return NULL;
}

/* Sends the Report of a hand-over (borrowed) as serve's own: in_reply_to 0, our next seq. */
static int serve_send_handed(Serve *s, const Reclaim__Envelope *h) {
        Reclaim__Envelope m;

        rpc_message_init(&m, 0);
        m.body_case = RECLAIM__ENVELOPE__BODY_REPORT;
        m.report = h->report;
        return agent_channel_send(s->ch, &m, NULL);
}

/* A report from `run` on the control socket (m: taken). Sent now when a host is there and
 * has answered Hello, else kept (replacing an older hand-over: the newest figures are what
 * the host schedules on) and sent after the next HelloAck. Either way run gets its answer:
 * the report is serve's to deliver now. */
static void serve_take_handed(Serve *s, Reclaim__Envelope *m) {
        uint64_t seq = m->seq;
        int r;

        if (agent_channel_is_connected(s->ch) && s->acked) {
                r = serve_send_handed(s, m);
                if (r >= 0) {
                        log_info(
                                "Report of a run handed over on the control socket sent to the host");
                        m = envelope_free(m);
                } else if (r == -EMSGSIZE) {
                        /* Re-packed with our seq it no longer fits (it was at the cap):
                         * keeping it would not change that. */
                        log_warning_errno(r, "Cannot send a handed-over report: %m");
                        m = envelope_free(m);
                } else if (r != -ENOBUFS)
                        serve_disconnect(s, r);
        }
        if (m) {
                log_info(
                        "Report of a run handed over on the control socket kept for the host%s",
                        s->handed ? "; it replaces an older hand-over the host never got" : "");
                envelope_free(s->handed);
                s->handed = m;
        }
        r = agent_handoff_ack(s->handoff, seq);
        if (r < 0)
                log_debug_errno(r, "Cannot answer the run on the control socket: %m");
}

static void serve_on_handoff(Serve *s) {
        Reclaim__Envelope *m = NULL;
        int r;

        r = agent_handoff_process(s->handoff, &m);
        if (r < 0) {
                /* e.g. EMFILE: the connection stays pending and the listener readable; do
                 * not spin on it, look again in a second. */
                log_warning_errno(r, "Control socket: %m");
                s->handoff_retry_at = agent_now_ns() + PROGRESS_INTERVAL_NS;
        } else if (r > 0)
                serve_take_handed(s, m);
}

static bool job_waits_for(const Job *j, uint64_t seq) {
        for (size_t i = 0; i < j->n_waiters; i++)
                if (j->waiters[i] == seq)
                        return true;
        return false;
}

static int serve_start_job(Serve *s, const Reclaim__ReclaimRequest *req, uint64_t seq) {
        _cleanup_(agent_fs_list_freep) AgentFsList *all = NULL;
        _cleanup_(job_freep) Job *j = NULL;
        AgentRequestPlan plan;
        sigset_t mask, old;
        int r;

        agent_request_resolve(req, &s->policy, s->config, &plan);

        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        r = -pthread_mutex_init(&j->lock, NULL);
        if (r < 0) {
                free(TAKE_PTR(j));
                return r;
        }
        r = agent_fs_enumerate(NULL, AGENT_FS_INCLUDE_READ_ONLY, &all);
        if (r >= 0)
                r = agent_fs_classify_all(all, NULL);
        if (r < 0) {
                log_error_errno(r, "Failed to list the filesystems: %m");
                /* An empty run still gets its (empty) Report. */
                agent_fs_list_free(TAKE_PTR(all));
                all = calloc(1, sizeof(*all));
                if (!all)
                        return -ENOMEM;
        }
        /* --exclude and --filesystem apply to requests too: the guest's admin decides. */
        r = agent_run_select(all, &s->config->filesystems, &s->config->excludes, &j->targets);
        if (r < 0)
                return r;

        j->opts = (AgentRunOptions){
                .mode = plan.mode,
                .rate = plan.rate,
                .reserve = plan.reserve,
                .dry_run = s->dry_run,
                .refuse_reason = plan.refuse_reason,
                .cancel = &j->cancel,
                .progress = job_on_progress,
                .userdata = j,
        };
        j->done_fd = s->evfd;
        j->connection = s->connection;
        j->waiters[j->n_waiters++] = seq;

        if (plan.refuse_reason)
                log_notice("Reclaim request %" PRIu64 " refused: %s", seq, plan.refuse_reason);
        else
                log_info(
                        "Reclaim request %" PRIu64 ": mode %s, rate %" PRIu64
                        " B/s, reserve %u.%02u%% / %" PRIu64 " B, %zu filesystem(s)",
                        seq,
                        agent_mode_to_string(plan.mode),
                        plan.rate,
                        plan.reserve.basis_points / 100,
                        plan.reserve.basis_points % 100,
                        plan.reserve.bytes,
                        j->targets->n);

        /* The worker must never take SIGTERM/SIGINT: they are the loop's, via signalfd. They
         * are blocked in this thread already; block everything else too for the worker. */
        (void) sigfillset(&mask);
        (void) pthread_sigmask(SIG_SETMASK, &mask, &old);
        r = -pthread_create(&j->thread, NULL, job_thread, j);
        (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to start the worker thread: %m");
        j->started = true;
        s->job = TAKE_PTR(j);
        s->last_progress_ns = 0;
        return 0;
}

static void serve_finish_job(Serve *s) {
        _cleanup_(job_freep) Job *j = TAKE_PTR(s->job);
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = NULL;
        uint64_t v;
        ssize_t k;

        k = read(s->evfd, &v, sizeof(v)); /* reset the eventfd; the join is what counts */
        (void) k;
        (void) pthread_join(j->thread, NULL);
        if (s->terminating)
                /* Stopping: what is left to do is getting this report out, briefly. */
                s->stop_deadline = MIN(s->stop_deadline, agent_now_ns() + STOP_FLUSH_NS);
        rep = TAKE_PTR(j->report);
        if (j->result < 0 || !rep) {
                log_error_errno(j->result < 0 ? j->result : -EIO, "The reclaim run failed: %m");
                return;
        }
        log_info("Reclaim run done in %" PRIu64 " ms", rep->duration_ms);

        if (agent_channel_is_connected(s->ch) && s->acked && j->connection == s->connection) {
                for (size_t i = 0; i < j->n_waiters && agent_channel_is_connected(s->ch); i++)
                        serve_send_report(s, rep, j->waiters[i]);
                return;
        }
        /* The requests came on a connection that is gone: their seqs mean nothing now. Keep
         * the report for the next host, as a run of our own (in_reply_to 0). */
        log_info("No host to take the report now; it goes to the next one");
        agent_run_report_free(s->undelivered);
        s->undelivered = TAKE_PTR(rep);
}

static bool serve_progress_due(const Serve *s) {
        return s->job && s->acked && s->job->connection == s->connection &&
                agent_channel_is_connected(s->ch);
}

static void serve_send_progress(Serve *s) {
        Job *j = s->job;
        AgentRunProgress p;
        _cleanup_free_ char *mount = NULL;
        uint64_t now = agent_now_ns();
        bool changed;
        int r;

        if (!serve_progress_due(s) || now < s->last_progress_ns + PROGRESS_INTERVAL_NS)
                return;
        /* Whether or not anything changed: the next look is a second from now. */
        s->last_progress_ns = now;
        (void) pthread_mutex_lock(&j->lock);
        changed = j->progress_gen != j->progress_sent_gen;
        p = j->progress;
        if (changed) {
                mount = strdup(j->progress_mount ?: "");
                j->progress_sent_gen = j->progress_gen;
        }
        (void) pthread_mutex_unlock(&j->lock);
        if (!changed || !mount)
                return;
        p.mount_point = mount;
        r = agent_send_progress(s->ch, &p, j->waiters[0]);
        if (r < 0 && r != -ENOBUFS)
                serve_disconnect(s, r);
}

static void serve_on_message(AgentChannel *c, const Reclaim__Envelope *m, void *userdata) {
        Serve *s = userdata;
        int r = 0;

        /* The host talks before it acknowledged our Hello: it may have missed it (it
         * reconnected without our noticing). Say Hello again, then carry on. */
        if (!s->acked && m->body_case != RECLAIM__ENVELOPE__BODY_HELLO_ACK &&
            agent_now_ns() >= s->hello_sent_ns + HELLO_RESEND_NS) {
                serve_send_hello(s);
                if (!agent_channel_is_connected(c))
                        return;
        }

        switch (m->body_case) {
        case RECLAIM__ENVELOPE__BODY_HELLO_ACK:
                s->acked = true;
                agent_policy_from_proto(m->hello_ack->policy, &s->policy);
                agent_backoff_reset(&s->backoff);
                log_info(
                        "Host connected on %s (protocol %u.%u); policy: rate cap %" PRIu64
                        " B/s, reserve at least %u%% / %" PRIu64 " B, modes%s%s%s%s",
                        agent_channel_path(c),
                        RPC_PROTOCOL_VERSION_MAJOR(m->hello_ack->protocol_version),
                        RPC_PROTOCOL_VERSION_MINOR(m->hello_ack->protocol_version),
                        s->policy.max_rate,
                        s->policy.min_reserve_percent,
                        s->policy.min_reserve_bytes,
                        s->policy.allow_auto ? " auto" : "",
                        s->policy.allow_trim ? " trim" : "",
                        s->policy.allow_zero ? " zero" : "",
                        s->policy.allow_auto || s->policy.allow_trim || s->policy.allow_zero ?
                                "" :
                                " none");
                if (s->undelivered) {
                        r = agent_send_report(c, s->undelivered, 0);
                        if (r >= 0)
                                s->undelivered = agent_run_report_free(s->undelivered);
                }
                if (r >= 0 && s->handed) {
                        r = serve_send_handed(s, s->handed);
                        if (r >= 0)
                                s->handed = envelope_free(s->handed);
                }
                break;

        case RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST:
                if (s->terminating)
                        break;
                if (s->job) {
                        /* One run at a time: answered with the running one's Report. */
                        if (s->job->connection == s->connection &&
                            s->job->n_waiters < WAITERS_MAX && !job_waits_for(s->job, m->seq))
                                s->job->waiters[s->job->n_waiters++] = m->seq;
                        log_info("Reclaim request %" PRIu64 " joins the run in progress", m->seq);
                        break;
                }
                r = serve_start_job(s, m->reclaim_request, m->seq);
                if (r < 0)
                        log_error_errno(r, "Cannot start the reclaim run: %m");
                r = 0;
                break;

        case RECLAIM__ENVELOPE__BODY_CANCEL:
                if (s->job &&
                    (m->cancel->request_seq == 0 ||
                     (s->job->connection == s->connection &&
                      job_waits_for(s->job, m->cancel->request_seq)))) {
                        log_info("Cancel from the host: stopping the run");
                        s->job->cancel = 1;
                } else
                        log_debug(
                                "Cancel for request %" PRIu64 ", which is not running",
                                m->cancel->request_seq);
                break;

        case RECLAIM__ENVELOPE__BODY_PING:
                r = agent_send_pong(c, m->ping->nonce, s->job != NULL, m->seq);
                break;

        default:
                /* Hello, Progress, Report, Pong: they go the other way. */
                agent_channel_count_error(c);
                log_debug(
                        "Dropping a '%s' message from the host",
                        rpc_message_body_name(m->body_case));
                break;
        }
        if (r < 0 && r != -ENOBUFS)
                serve_disconnect(s, r);
}

static int serve_setup_signals(Serve *s) {
        sigset_t mask;

        (void) sigemptyset(&mask);
        (void) sigaddset(&mask, SIGTERM);
        (void) sigaddset(&mask, SIGINT);
        if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0)
                return -EINVAL;
        s->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (s->sigfd < 0)
                return negative_errno();
        /* Writes to a host that went away fail with EPIPE instead. */
        (void) signal(SIGPIPE, SIG_IGN);
        return 0;
}

static void serve_on_signal(Serve *s) {
        struct signalfd_siginfo si;

        while (read(s->sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si)) {
                if (s->terminating)
                        continue;
                log_info("Got %s; stopping", strsignal((int) si.ssi_signo));
                s->terminating = true;
                s->stop_deadline = agent_now_ns() + STOP_WORKER_WAIT_NS;
                if (s->job)
                        s->job->cancel = 1;
        }
}

static void serve_done(Serve *s) {
        if (s->job) {
                s->job->cancel = 1;
                if (s->job->started) {
                        /* Only after the worker gave up within STOP_WORKER_WAIT_NS: it holds
                         * the job, so leave both to the process exit. */
                        log_warning("The worker is still busy (FITRIM?); exiting anyway");
                        s->job = NULL;
                } else
                        s->job = job_free(s->job);
        }
        s->undelivered = agent_run_report_free(s->undelivered);
        if (s->handed)
                log_notice("Exiting with a handed-over report the host never got");
        s->handed = envelope_free(s->handed);
        s->handoff = agent_handoff_free(s->handoff);
        s->ch = agent_channel_free(s->ch);
        if (s->sigfd >= 0)
                (void) close(s->sigfd);
        if (s->evfd >= 0)
                (void) close(s->evfd);
}

int agent_serve(const AgentConfig *config, bool dry_run) {
        Serve s = {
                .config = config,
                .dry_run = dry_run,
                .sigfd = -1,
                .evfd = -1,
        };
        int r;

        if (!config)
                return -EINVAL;
        agent_identity_read(&s.id);
        agent_policy_default(&s.policy);
        agent_backoff_init(&s.backoff, AGENT_BACKOFF_MIN_NS, AGENT_BACKOFF_MAX_NS);

        r = channel_for(config, &s.ch);
        if (r < 0) {
                serve_done(&s);
                return log_error_errno(r, "Invalid channel path: %m");
        }
        r = serve_setup_signals(&s);
        if (r >= 0) {
                s.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
                if (s.evfd < 0)
                        r = negative_errno();
        }
        if (r < 0) {
                serve_done(&s);
                return log_error_errno(r, "Failed to set up the event loop: %m");
        }
        /* Without it, serve still serves the host; only runs' reports cannot reach it. */
        r = agent_handoff_new(config->control_socket, &s.handoff);
        if (r < 0)
                log_warning_errno(
                        r,
                        "Cannot listen on %s; reports of runs cannot be handed over: %m",
                        config->control_socket);
        r = 0;
        log_info("Serving on %s", agent_channel_path(s.ch));

        for (;;) {
                struct pollfd p[4];
                uint64_t now = agent_now_ns(), deadline = UINT64_MAX;
                int n = 0, ch_idx = -1, ho_idx = -1;

                if (s.terminating) {
                        if (!s.job && agent_channel_queued(s.ch) == 0)
                                break;
                        if (now >= s.stop_deadline)
                                break;
                        if (!s.job && !agent_channel_is_connected(s.ch))
                                break;
                        deadline = s.stop_deadline;
                }

                if (!agent_channel_is_connected(s.ch) && !s.terminating && now >= s.retry_at)
                        serve_try_connect(&s);
                if (!agent_channel_is_connected(s.ch)) {
                        if (!s.terminating)
                                deadline = MIN(deadline, s.retry_at);
                } else if (serve_progress_due(&s))
                        deadline = MIN(deadline, s.last_progress_ns + PROGRESS_INTERVAL_NS);

                p[n++] = (struct pollfd){ .fd = s.sigfd, .events = POLLIN };
                p[n++] = (struct pollfd){ .fd = s.evfd, .events = POLLIN };
                if (agent_channel_is_connected(s.ch)) {
                        ch_idx = n;
                        p[n++] = (struct pollfd){
                                .fd = agent_channel_fd(s.ch),
                                .events = agent_channel_events(s.ch),
                        };
                }
                /* Not while stopping: a report taken now could not be delivered. */
                if (s.handoff && !s.terminating && now < s.handoff_retry_at)
                        deadline = MIN(deadline, s.handoff_retry_at);
                else if (s.handoff && !s.terminating) {
                        ho_idx = n;
                        p[n++] = (struct pollfd){
                                .fd = agent_handoff_fd(s.handoff),
                                .events = agent_handoff_events(s.handoff),
                        };
                        deadline = MIN(deadline, agent_handoff_deadline(s.handoff));
                }

                if (poll(p, (nfds_t) n, poll_timeout_ms(agent_now_ns(), deadline)) < 0) {
                        if (errno == EINTR)
                                continue;
                        r = log_error_errno(negative_errno(), "poll() failed: %m");
                        break;
                }

                if (p[0].revents & POLLIN)
                        serve_on_signal(&s);
                if ((p[1].revents & POLLIN) && s.job)
                        serve_finish_job(&s);

                if (ch_idx >= 0 && agent_channel_is_connected(s.ch)) {
                        short rev = p[ch_idx].revents;

                        if (rev & POLLIN) {
                                r = agent_channel_receive(s.ch, serve_on_message, &s);
                                if (r < 0 && r != -ENOTCONN)
                                        serve_disconnect(&s, r);
                                r = 0;
                        }
                        if (agent_channel_is_connected(s.ch) && (rev & POLLOUT)) {
                                r = agent_channel_flush(s.ch);
                                if (r < 0)
                                        serve_disconnect(&s, r);
                                r = 0;
                        }
                        /* POLLHUP without POLLIN (port: host end absent; socket: peer
                         * closed with nothing left to read): host gone. With POLLIN the
                         * read above sees the EOF itself. */
                        if (agent_channel_is_connected(s.ch) && !(rev & POLLIN) &&
                            (rev & (POLLHUP | POLLERR | POLLNVAL)))
                                serve_disconnect(&s, rev & POLLHUP ? -EPIPE : -EIO);
                }

                if (ho_idx >= 0 &&
                    (p[ho_idx].revents || agent_now_ns() >= agent_handoff_deadline(s.handoff)))
                        serve_on_handoff(&s);

                if (agent_channel_is_connected(s.ch))
                        serve_send_progress(&s);
        }

        serve_done(&s);
        return r < 0 ? r : 0;
}

/* ---- run's one report ---- */

typedef struct Once {
        bool acked;
} Once;

static void once_on_message(AgentChannel *c, const Reclaim__Envelope *m, void *userdata) {
        Once *o = userdata;

        if (m->body_case == RECLAIM__ENVELOPE__BODY_HELLO_ACK)
                o->acked = true;
        else if (m->body_case == RECLAIM__ENVELOPE__BODY_PING)
                (void) agent_send_pong(c, m->ping->nonce, false, m->seq);
        else
                /* A request for a one-shot run: the serve agent takes those. */
                log_debug("Ignoring a '%s' message", rpc_message_body_name(m->body_case));
}

static bool stopped(const volatile sig_atomic_t *stop) {
        return stop && *stop;
}

static void sleep_until(uint64_t deadline) {
        uint64_t now = agent_now_ns();
        struct timespec ts;
        uint64_t d;

        if (deadline <= now)
                return;
        d = MIN(deadline - now, SLICE_NS);
        ts = (struct timespec){ .tv_sec = (time_t) (d / NSEC_PER_SEC),
                                .tv_nsec = (long) (d % NSEC_PER_SEC) };
        (void) nanosleep(&ts, NULL);
}

/* Waits for the channel until cond says done, the deadline, or the host leaves. Returns 1
 * done, 0 deadline or stop, -errno host gone. */
static int once_wait(
        AgentChannel *ch,
        Once *o,
        uint64_t deadline,
        const volatile sig_atomic_t *stop,
        bool want_ack) {
        for (;;) {
                struct pollfd p;
                uint64_t now = agent_now_ns();
                int r;

                if (want_ack ? o->acked : agent_channel_queued(ch) == 0)
                        return 1;
                if (now >= deadline || stopped(stop))
                        return 0;
                p = (struct pollfd){ .fd = agent_channel_fd(ch),
                                     .events = agent_channel_events(ch) };
                r = poll(&p, 1, poll_timeout_ms(now, MIN(deadline, now + SLICE_NS)));
                if (r < 0 && errno != EINTR)
                        return negative_errno();
                if (r <= 0)
                        continue;
                if (p.revents & POLLIN) {
                        r = agent_channel_receive(ch, once_on_message, o);
                        if (r < 0)
                                return r;
                }
                if (p.revents & POLLOUT) {
                        r = agent_channel_flush(ch);
                        if (r < 0)
                                return r;
                }
                if (!(p.revents & POLLIN) && (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
                        return -EPIPE;
        }
}

int agent_report_once(
        const AgentConfig *config,
        const AgentRunReport *rep,
        uint64_t timeout_ns,
        const volatile sig_atomic_t *stop) {
        _cleanup_(agent_channel_freep) AgentChannel *ch = NULL;
        AgentIdentity id;
        AgentBackoff b;
        Once o = {};
        uint64_t deadline = agent_now_ns() + timeout_ns;
        int why = 0, r;

        if (!config || !rep)
                return -EINVAL;
        r = channel_for(config, &ch);
        if (r < 0)
                return r;
        agent_identity_read(&id);
        agent_backoff_init(&b, AGENT_BACKOFF_MIN_NS, NSEC_PER_SEC);

        for (;;) {
                r = agent_channel_connect(ch, &why);
                if (r < 0)
                        return r;
                if (r > 0)
                        break;
                if (why == -EBUSY) {
                        /* Only one process may open a port: serve has it, and it talks to
                         * the host itself. Waiting would not change that; hand the report
                         * to serve instead, within what is left of the time. */
                        log_info(
                                "%s is held by another process (reclaim-agent serve?); "
                                "handing the report over on %s",
                                agent_channel_path(ch),
                                config->control_socket);
                        uint64_t now = agent_now_ns();
                        r = agent_handoff_send(
                                config->control_socket,
                                rep,
                                deadline > now ? deadline - now : 0,
                                stop);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                log_notice(
                                        "%s is held by another process and no reclaim-agent "
                                        "serve took the report; the report is not sent",
                                        agent_channel_path(ch));
                        return r > 0 ? AGENT_REPORT_VIA_SERVE : 0;
                }
                if (agent_now_ns() >= deadline || stopped(stop)) {
                        log_notice(
                                "No host on %s (%s); the report is not sent",
                                agent_channel_path(ch),
                                why == -ENOTCONN ? "host end not connected" : strerror(-why));
                        return 0;
                }
                uint64_t until = MIN(deadline, agent_now_ns() + agent_backoff_next(&b));
                while (agent_now_ns() < until && !stopped(stop))
                        sleep_until(until);
        }

        r = agent_send_hello(ch, &id, config->mode, false, NULL);
        if (r >= 0) {
                uint64_t ack_deadline = deadline > REPORT_WRITE_RESERVE_NS ?
                        deadline - REPORT_WRITE_RESERVE_NS :
                        deadline;
                r = once_wait(ch, &o, MAX(ack_deadline, agent_now_ns()), stop, true);
                if (r == 0)
                        log_notice(
                                "The host on %s did not answer Hello; sending the report "
                                "anyway",
                                agent_channel_path(ch));
        }
        if (r >= 0)
                r = agent_send_report(ch, rep, 0);
        if (r >= 0)
                r = once_wait(ch, &o, deadline, stop, false);
        if (r > 0) {
                log_info("Report sent to the host on %s", agent_channel_path(ch));
                return AGENT_REPORT_VIA_CHANNEL;
        }
        if (r == 0)
                log_notice(
                        "The host on %s did not take the report in time", agent_channel_path(ch));
        else
                log_notice(
                        "The host on %s went away: %s; the report is not sent",
                        agent_channel_path(ch),
                        strerror(-r));
        return 0;
}
