/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "agent-run.h"
#include "channel.h"
#include "log.h"
#include "macro.h"
#include "size.h"
#include "trim.h"

#define NSEC_PER_MSEC UINT64_C(1000000)

static const char *const method_names[_AGENT_METHOD_MAX] = {
        [AGENT_METHOD_TRIM] = "trim",
        [AGENT_METHOD_ZERO] = "zero",
        [AGENT_METHOD_SKIPPED] = "skipped",
};

static const char *const outcome_names[_AGENT_OUTCOME_MAX] = {
        [AGENT_OUTCOME_OK] = "ok",
        [AGENT_OUTCOME_UNSUPPORTED] = "unsupported",
        [AGENT_OUTCOME_STOPPED_AT_RESERVE] = "stopped-at-reserve",
        [AGENT_OUTCOME_CANCELLED] = "cancelled",
        [AGENT_OUTCOME_ERROR] = "error",
};

const char *agent_method_to_string(AgentMethod m) {
        return (unsigned) m < _AGENT_METHOD_MAX ? method_names[m] : NULL;
}

const char *agent_outcome_to_string(AgentOutcome o) {
        return (unsigned) o < _AGENT_OUTCOME_MAX ? outcome_names[o] : NULL;
}

/* ---- choosing the filesystems ---- */

static void target_done(AgentRunTarget *t) {
        free(t->mount_point);
        free(t->device);
        free(t->fstype);
        *t = (AgentRunTarget){};
}

AgentRunTargets *agent_run_targets_free(AgentRunTargets *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n; i++)
                target_done(&t->items[i]);
        free(t->items);
        return mfree(t);
}

static int targets_add(
        AgentRunTargets *t,
        const char *mount_point,
        const char *device,
        const char *fstype,
        AgentFsMethod method,
        const char *reason,
        bool compressed,
        int error) {
        AgentRunTarget n = {
                .method = method,
                .reason = reason,
                .compressed = compressed,
                .error = error,
        };
        AgentRunTarget *items;

        n.mount_point = strdup(mount_point);
        n.device = strdup(device ?: "");
        n.fstype = strdup(fstype ?: "");
        items = reallocarray(t->items, t->n + 1, sizeof(*items));
        if (!n.mount_point || !n.device || !n.fstype || !items) {
                if (items)
                        t->items = items;
                target_done(&n);
                return -ENOMEM;
        }
        t->items = items;
        t->items[t->n++] = n;
        return 0;
}

/* The filesystem of all that path names: its mount point, or any path on it (st_dev). */
static const AgentFs *find_fs(const AgentFsList *all, const char *path, const struct stat *st) {
        for (size_t i = 0; i < all->n; i++)
                if (strcmp(all->items[i].mount_point, path) == 0)
                        return &all->items[i];
        if (!st)
                return NULL;
        for (size_t i = 0; i < all->n; i++)
                if (all->items[i].devnum == st->st_dev)
                        return &all->items[i];
        return NULL;
}

static bool is_excluded(const AgentFs *fs, const bool *excluded, const AgentFsList *all) {
        return excluded[fs - all->items];
}

static bool target_listed(const AgentRunTargets *t, const char *mount_point) {
        for (size_t i = 0; i < t->n; i++)
                if (strcmp(t->items[i].mount_point, mount_point) == 0)
                        return true;
        return false;
}

static int add_fs(AgentRunTargets *t, const AgentFs *fs) {
        if (target_listed(t, fs->mount_point))
                return 0;
        return targets_add(
                t,
                fs->mount_point,
                fs->device,
                fs->fstype,
                fs->method,
                fs->reason,
                fs->compressed,
                0);
}

int agent_run_select(
        const AgentFsList *all,
        const AgentStrv *filesystems,
        const AgentStrv *excludes,
        AgentRunTargets **ret) {
        _cleanup_(agent_run_targets_freep) AgentRunTargets *t = NULL;
        _cleanup_free_ bool *excluded = NULL;
        int r;

        if (!all || !filesystems || !excludes || !ret)
                return -EINVAL;
        t = calloc(1, sizeof(*t));
        excluded = calloc(all->n + 1, sizeof(bool));
        if (!t || !excluded)
                return -ENOMEM;

        for (size_t i = 0; i < excludes->n; i++) {
                const char *p = excludes->v[i];
                struct stat st;
                const AgentFs *fs;
                bool have_st = stat(p, &st) == 0;

                fs = find_fs(all, p, have_st ? &st : NULL);
                if (!fs) {
                        log_warning(
                                "Exclude %s matches no filesystem the agent would work on%s",
                                p,
                                have_st ? "" : " (it does not exist)");
                        continue;
                }
                excluded[fs - all->items] = true;
                log_debug("Excluding %s (%s)", fs->mount_point, p);
        }

        if (filesystems->n == 0) {
                for (size_t i = 0; i < all->n; i++) {
                        if (excluded[i])
                                continue;
                        r = add_fs(t, &all->items[i]);
                        if (r < 0)
                                return r;
                }
                *ret = TAKE_PTR(t);
                return 0;
        }

        for (size_t i = 0; i < filesystems->n; i++) {
                const char *p = filesystems->v[i];
                const AgentFs *fs;
                struct stat st;

                if (stat(p, &st) < 0) {
                        r = targets_add(
                                t,
                                p,
                                NULL,
                                NULL,
                                AGENT_FS_METHOD_UNSUPPORTED,
                                NULL,
                                false,
                                negative_errno());
                        if (r < 0)
                                return r;
                        continue;
                }
                fs = find_fs(all, p, &st);
                if (!fs) {
                        if (target_listed(t, p))
                                continue;
                        r = targets_add(
                                t,
                                p,
                                NULL,
                                NULL,
                                AGENT_FS_METHOD_UNSUPPORTED,
                                "not a local, block-backed filesystem",
                                false,
                                0);
                } else if (is_excluded(fs, excluded, all)) {
                        log_info("%s is excluded", p);
                        r = 0;
                } else
                        r = add_fs(t, fs);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(t);
        return 0;
}

/* ---- the run ---- */

AgentRunReport *agent_run_report_free(AgentRunReport *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n; i++) {
                free(r->items[i].mount_point);
                free(r->items[i].device);
                free(r->items[i].fstype);
                free(r->items[i].reason);
        }
        free(r->items);
        return mfree(r);
}

bool agent_run_report_has_errors(const AgentRunReport *r) {
        if (!r)
                return false;
        for (size_t i = 0; i < r->n; i++)
                if (r->items[i].outcome == AGENT_OUTCOME_ERROR)
                        return true;
        return false;
}

typedef struct RunState {
        const AgentRunOptions *o;
        const char *mount_point;
        uint32_t done, total;
} RunState;

static bool cancelled(const AgentRunOptions *o) {
        return o->cancel && *o->cancel != 0;
}

static void report_progress(const RunState *s, AgentMethod m, uint64_t done, uint64_t total) {
        AgentRunProgress p = {
                .mount_point = s->mount_point,
                .method = m,
                .bytes_done = done,
                .bytes_total = total,
                .filesystems_done = s->done,
                .filesystems_total = s->total,
        };

        if (s->o->progress)
                s->o->progress(&p, s->o->userdata);
}

static int on_fill_progress(const AgentZerofillProgress *p, void *userdata) {
        const RunState *s = userdata;

        report_progress(s, AGENT_METHOD_ZERO, p->bytes_written, p->target);
        return cancelled(s->o) ? 1 : 0;
}

static uint64_t free_bytes(const char *path) {
        struct statvfs sv;

        if (statvfs(path, &sv) < 0)
                return 0;
        return (uint64_t) sv.f_bavail * sv.f_frsize;
}

static int set_reason(AgentFsResult *res, const char *fmt, ...) _printf_(2, 3);

static int set_reason(AgentFsResult *res, const char *fmt, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        free(res->reason);
        res->reason = s;
        return 0;
}

static int skip(AgentFsResult *res, AgentOutcome outcome, const char *reason) {
        res->method = AGENT_METHOD_SKIPPED;
        res->outcome = outcome;
        return set_reason(res, "%s", reason);
}

static int do_zerofill(RunState *s, const AgentRunTarget *t, AgentFsResult *res, const char *note) {
        const AgentRunOptions *o = s->o;
        AgentZerofillResult z;
        AgentZerofillOptions zo = {
                .reserve = o->reserve,
                .rate = o->rate,
                .dry_run = o->dry_run,
                .require_nocompress = t->compressed,
                .cancel = o->cancel,
                .progress = on_fill_progress,
                .userdata = s,
        };
        int r;

        res->method = AGENT_METHOD_ZERO;
        report_progress(s, AGENT_METHOD_ZERO, 0, 0);
        r = agent_zerofill(t->mount_point, &zo, &z);
        if (r < 0) {
                res->outcome = AGENT_OUTCOME_ERROR;
                res->error = r;
                return set_reason(res, "invalid zero-fill options: %s", strerror(-r));
        }
        res->bytes = z.bytes_zeroed;
        res->free_before = z.free_before;
        res->free_after = z.free_after;
        res->reserve = z.reserve;
        switch (z.outcome) {
        case AGENT_ZEROFILL_OK:
                res->outcome = AGENT_OUTCOME_OK;
                if (o->dry_run)
                        return set_reason(
                                res, "dry run: would zero-fill%s%s", note ? "; " : "", note ?: "");
                return note ? set_reason(res, "%s", note) : 0;
        case AGENT_ZEROFILL_STOPPED_AT_RESERVE:
                res->outcome = AGENT_OUTCOME_STOPPED_AT_RESERVE;
                return set_reason(
                        res,
                        z.bytes_zeroed == 0 && z.free_before < z.reserve ?
                                "free space is already below the reserve" :
                                "free space fell to the reserve (another writer?)");
        case AGENT_ZEROFILL_CANCELLED:
                res->outcome = AGENT_OUTCOME_CANCELLED;
                return 0;
        case AGENT_ZEROFILL_ERROR:
        default:
                if (z.error == -EOPNOTSUPP && t->compressed) {
                        res->method = AGENT_METHOD_SKIPPED;
                        res->outcome = AGENT_OUTCOME_UNSUPPORTED;
                        res->error = z.error;
                        return set_reason(
                                res,
                                "compressed btrfs and the fill file cannot be marked "
                                "no-compress");
                }
                res->outcome = AGENT_OUTCOME_ERROR;
                res->error = z.error ?: -EIO;
                return set_reason(res, "zero-fill failed: %s", strerror(-res->error));
        }
}

static int do_trim(RunState *s, const AgentRunTarget *t, AgentFsResult *res) {
        const AgentRunOptions *o = s->o;
        uint64_t trimmed = 0;
        int r;

        res->method = AGENT_METHOD_TRIM;
        res->free_before = free_bytes(t->mount_point);
        report_progress(s, AGENT_METHOD_TRIM, 0, 0);
        if (o->dry_run) {
                res->free_after = res->free_before;
                res->outcome = AGENT_OUTCOME_OK;
                return set_reason(res, "dry run: would run FITRIM");
        }
        r = agent_trim(t->mount_point, 0, &trimmed);
        if (r == AGENT_TRIM_NOT_SUPPORTED) {
                if (agent_mode_allows_zero(o->mode))
                        return do_zerofill(s, t, res, "FITRIM not supported; zero-filled instead");
                res->free_after = res->free_before;
                return skip(res, AGENT_OUTCOME_UNSUPPORTED, "FITRIM not supported (mode trim)");
        }
        res->free_after = free_bytes(t->mount_point);
        if (r < 0) {
                res->outcome = AGENT_OUTCOME_ERROR;
                res->error = r;
                return set_reason(res, "FITRIM failed: %s", strerror(-r));
        }
        res->bytes = trimmed;
        res->outcome = AGENT_OUTCOME_OK;
        return 0;
}

AgentMethod
agent_run_planned_method(const AgentRunTarget *t, AgentMode m, const char **ret_reason) {
        const char *reason = NULL;
        AgentMethod method = AGENT_METHOD_SKIPPED;

        if (t->error < 0)
                reason = "cannot be examined";
        else
                switch (t->method) {
                case AGENT_FS_METHOD_TRIM:
                        method = agent_mode_allows_trim(m) ? AGENT_METHOD_TRIM : AGENT_METHOD_ZERO;
                        break;
                case AGENT_FS_METHOD_ZEROFILL:
                        if (agent_mode_allows_zero(m))
                                method = AGENT_METHOD_ZERO;
                        else
                                reason = "the device does not pass discards and mode is trim";
                        break;
                case AGENT_FS_METHOD_UNSUPPORTED:
                default:
                        reason = t->reason ?: "unsupported";
                        break;
                }
        if (ret_reason)
                *ret_reason = reason;
        return method;
}

static int run_one(RunState *s, const AgentRunTarget *t, AgentFsResult *res) {
        const AgentRunOptions *o = s->o;
        const char *reason;

        if (t->error < 0) {
                res->method = AGENT_METHOD_SKIPPED;
                res->outcome = AGENT_OUTCOME_ERROR;
                res->error = t->error;
                return set_reason(
                        res, "cannot examine %s: %s", t->mount_point, strerror(-t->error));
        }
        if (o->refuse_reason)
                return skip(res, AGENT_OUTCOME_UNSUPPORTED, o->refuse_reason);
        if (cancelled(o))
                return skip(res, AGENT_OUTCOME_CANCELLED, "cancelled before it started");

        switch (agent_run_planned_method(t, o->mode, &reason)) {
        case AGENT_METHOD_TRIM:
                return do_trim(s, t, res);
        case AGENT_METHOD_ZERO:
                return do_zerofill(s, t, res, NULL);
        case AGENT_METHOD_SKIPPED:
        default:
                return skip(res, AGENT_OUTCOME_UNSUPPORTED, reason);
        }
}

static void log_result(const AgentFsResult *res, bool dry_run) {
        char b[FORMAT_BYTES_MAX];
        const char *why = res->reason ?: "";

        switch (res->outcome) {
        case AGENT_OUTCOME_ERROR:
                log_warning("%s: %s", res->mount_point, why);
                break;
        case AGENT_OUTCOME_UNSUPPORTED:
                log_info("%s: skipped: %s", res->mount_point, why);
                break;
        default:
                log_info(
                        "%s: %s %s in %" PRIu64 " ms: %s%s%s",
                        res->mount_point,
                        res->method == AGENT_METHOD_TRIM ? (dry_run ? "would trim" : "trimmed") :
                                res->method == AGENT_METHOD_ZERO ? (dry_run ? "would zero-fill" :
                                                                              "zero-filled") :
                                                                   "skipped",
                        format_bytes(b, sizeof(b), res->bytes),
                        res->duration_ms,
                        agent_outcome_to_string(res->outcome),
                        *why ? ", " : "",
                        why);
        }
}

int agent_run(const AgentRunTargets *targets, const AgentRunOptions *o, AgentRunReport **ret) {
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = NULL;
        RunState s = { .o = o };
        uint64_t t0 = agent_now_ns();
        int r;

        if (!targets || !o || !ret || (unsigned) o->mode >= _AGENT_MODE_MAX)
                return -EINVAL;

        rep = calloc(1, sizeof(*rep));
        if (!rep)
                return -ENOMEM;
        rep->items = calloc(targets->n + 1, sizeof(AgentFsResult));
        if (!rep->items)
                return -ENOMEM;
        rep->mode = o->mode;
        rep->dry_run = o->dry_run;
        s.total = (uint32_t) MIN(targets->n, (size_t) UINT32_MAX);

        for (size_t i = 0; i < targets->n; i++) {
                const AgentRunTarget *t = &targets->items[i];
                AgentFsResult *res = &rep->items[i];
                uint64_t t1 = agent_now_ns();

                res->mount_point = strdup(t->mount_point);
                res->device = strdup(t->device);
                res->fstype = strdup(t->fstype);
                rep->n = i + 1;
                if (!res->mount_point || !res->device || !res->fstype)
                        return -ENOMEM;
                s.mount_point = t->mount_point;
                s.done = (uint32_t) i;
                r = run_one(&s, t, res);
                if (r < 0)
                        return r;
                res->duration_ms = (agent_now_ns() - t1) / NSEC_PER_MSEC;
                log_result(res, o->dry_run);
        }
        rep->duration_ms = (agent_now_ns() - t0) / NSEC_PER_MSEC;
        *ret = TAKE_PTR(rep);
        return 0;
}

/* ---- JSON ---- */

static int add(json_object *o, const char *key, json_object *v) {
        if (!v)
                return -ENOMEM;
        if (json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

/* A JSON null for NULL (json_object_object_add() takes NULL as null). */
static int add_string_or_null(json_object *o, const char *key, const char *v) {
        if (v)
                return add(o, key, json_object_new_string(v));
        return json_object_object_add(o, key, NULL) < 0 ? -ENOMEM : 0;
}

static void json_object_putp(json_object **p) {
        if (*p)
                json_object_put(*p);
}

static int fs_result_to_json(const AgentFsResult *res, json_object **ret) {
        _cleanup_(json_object_putp) json_object *o = json_object_new_object();
        int r = 0;

        if (!o)
                return -ENOMEM;
        r = r ?: add(o, "mount_point", json_object_new_string(res->mount_point));
        r = r ?: add(o, "device", json_object_new_string(res->device));
        r = r ?: add(o, "fstype", json_object_new_string(res->fstype));
        r = r ?: add(o, "method", json_object_new_string(agent_method_to_string(res->method)));
        r = r ?: add(o, "outcome", json_object_new_string(agent_outcome_to_string(res->outcome)));
        r = r ?: add(o, "bytes", json_object_new_uint64(res->bytes));
        r = r ?: add(o, "free_bytes_before", json_object_new_uint64(res->free_before));
        r = r ?: add(o, "free_bytes_after", json_object_new_uint64(res->free_after));
        r = r ?: add(o, "reserve_bytes", json_object_new_uint64(res->reserve));
        r = r ?: add(o, "duration_ms", json_object_new_uint64(res->duration_ms));
        r = r ?: add_string_or_null(o, "reason", res->reason);
        r = r ?: add(o, "errno", json_object_new_int(-res->error));
        if (r < 0)
                return r;
        *ret = TAKE_PTR(o);
        return 0;
}

int agent_run_report_to_json(const AgentRunReport *rep, json_object **ret) {
        _cleanup_(json_object_putp) json_object *o = NULL;
        json_object *a;
        int r;

        if (!rep || !ret)
                return -EINVAL;
        o = json_object_new_object();
        if (!o)
                return -ENOMEM;
        r = add(o, "mode", json_object_new_string(agent_mode_to_string(rep->mode)));
        r = r ?: add(o, "dry_run", json_object_new_boolean(rep->dry_run));
        r = r ?: add(o, "duration_ms", json_object_new_uint64(rep->duration_ms));
        if (r < 0)
                return r;
        a = json_object_new_array();
        r = add(o, "filesystems", a);
        if (r < 0)
                return r;
        for (size_t i = 0; i < rep->n; i++) {
                json_object *f = NULL;

                r = fs_result_to_json(&rep->items[i], &f);
                if (r < 0)
                        return r;
                if (json_object_array_add(a, f) < 0) {
                        json_object_put(f);
                        return -ENOMEM;
                }
        }
        *ret = TAKE_PTR(o);
        return 0;
}
