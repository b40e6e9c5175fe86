/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * One reclaim run over a set of filesystems: which ones (agent_run_select()), and per
 * filesystem FITRIM where it is classified trim (falling back to zero-fill when FITRIM says
 * "not supported" and the mode allows it), zero-fill where it is classified zerofill, and a
 * skip with the reason otherwise (agent_run()). The result is an AgentRunReport, turned into
 * JSON here and into a protobuf Report by agent-message.c.
 *
 * agent_run() blocks for the whole run (FITRIM and zero-fill are blocking calls): `run`
 * calls it from main, `serve` from a worker thread. It is thread-safe as long as each call
 * has its own arguments; its only shared input is the cancel flag.
 */

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent-config.h"
#include "fs-enum.h"
#include "macro.h"
#include "zerofill.h"

typedef struct json_object json_object;

typedef enum AgentMethod {
        AGENT_METHOD_TRIM,
        AGENT_METHOD_ZERO,
        AGENT_METHOD_SKIPPED,
        _AGENT_METHOD_MAX,
} AgentMethod;

/* How the work on one filesystem ended (the wire Outcome, docs/agent.md explains each). */
typedef enum AgentOutcome {
        AGENT_OUTCOME_OK,
        AGENT_OUTCOME_UNSUPPORTED,
        AGENT_OUTCOME_STOPPED_AT_RESERVE,
        AGENT_OUTCOME_CANCELLED,
        AGENT_OUTCOME_ERROR,
        _AGENT_OUTCOME_MAX,
} AgentOutcome;

/* One filesystem to work on, as chosen by agent_run_select(). */
typedef struct AgentRunTarget {
        char *mount_point;
        char *device;
        char *fstype;
        AgentFsMethod method; /* the classification */
        const char *reason;   /* static: why unsupported, or NULL */
        bool compressed;      /* btrfs with compression: the fill file must be no-compress */
        int error;            /* -errno: a --filesystem path that could not be examined */
} AgentRunTarget;

typedef struct AgentRunTargets {
        AgentRunTarget *items;
        size_t n;
} AgentRunTargets;

typedef struct AgentFsResult {
        char *mount_point;
        char *device;
        char *fstype;
        AgentMethod method;
        AgentOutcome outcome;
        uint64_t bytes;       /* trimmed or zeroed, per method (dry run: would be zeroed) */
        uint64_t free_before; /* f_bavail * f_frsize */
        uint64_t free_after;
        uint64_t reserve; /* the reserve applied (zero-fill), else 0 */
        uint64_t duration_ms;
        int error;    /* -errno with AGENT_OUTCOME_ERROR (also set for some UNSUPPORTED) */
        char *reason; /* why skipped, unsupported or failed; a note otherwise; may be NULL */
} AgentFsResult;

typedef struct AgentRunReport {
        AgentFsResult *items;
        size_t n;
        AgentMode mode;
        bool dry_run;
        uint64_t duration_ms;
} AgentRunReport;

typedef struct AgentRunProgress {
        const char *mount_point; /* borrowed, valid during the callback only */
        AgentMethod method;
        uint64_t bytes_done;
        uint64_t bytes_total; /* 0: unknown */
        uint32_t filesystems_done;
        uint32_t filesystems_total;
} AgentRunProgress;

typedef struct AgentRunOptions {
        AgentMode mode;
        uint64_t rate;        /* zero-fill bytes per second; 0 = unlimited */
        AgentReserve reserve; /* zero-fill reserve */
        bool dry_run;         /* no FITRIM, no writes: report what would be done */
        /* Non-NULL: do nothing, every filesystem is skipped/unsupported with this reason
         * (e.g. the host's policy does not allow the requested mode). Borrowed. */
        const char *refuse_reason;
        /* Non-zero: stop (between chunks; a FITRIM in progress finishes first); the rest
         * are reported cancelled. May be NULL. Borrowed. */
        const volatile sig_atomic_t *cancel;
        /* Called from the thread running agent_run(): at the start of every filesystem and
         * after every zero-fill chunk. May be NULL. */
        void (*progress)(const AgentRunProgress *p, void *userdata);
        void *userdata;
} AgentRunOptions;

/* "trim", "zero", "skipped" / "ok", "unsupported", "stopped-at-reserve", "cancelled",
 * "error". NULL for an invalid value. */
const char *agent_method_to_string(AgentMethod m);
const char *agent_outcome_to_string(AgentOutcome o);

/*
 * Chooses the filesystems to work on from all (borrowed; enumerated with read-only mounts
 * included, and classified). filesystems (borrowed): when not empty, only these; each PATH
 * names the filesystem it lives on (its mount point, or any path inside: matched by device
 * number), and a PATH that is on no listed filesystem becomes a target that is skipped as
 * unsupported ("not a local, writable, block-backed filesystem"), or one with .error set when
 * it cannot be examined. excludes (borrowed): filesystems to leave out, matched the same way;
 * an exclude that matches nothing is logged as a warning. Each filesystem appears once.
 * Returns 0 and a new list in *ret (caller frees with agent_run_targets_free()), or -ENOMEM.
 * One stat() per path given.
 */
int agent_run_select(
        const AgentFsList *all,
        const AgentStrv *filesystems,
        const AgentStrv *excludes,
        AgentRunTargets **ret);

/* Frees the list. Accepts NULL; returns NULL. */
AgentRunTargets *agent_run_targets_free(AgentRunTargets *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(AgentRunTargets *, agent_run_targets_free);

/*
 * What agent_run() does first on target t (borrowed) in mode m: trim, zero, or skipped, and
 * then *ret_reason (when not NULL) points at static text saying why (else NULL). A trim can
 * still turn into a zero-fill at run time, when FITRIM says "not supported" and m allows it.
 * Pure function.
 */
AgentMethod agent_run_planned_method(const AgentRunTarget *t, AgentMode m, const char **ret_reason);

/*
 * Works on every target in turn (borrowed), as described at the top of this file, and
 * returns the results: 0 and a new report in *ret (caller frees with
 * agent_run_report_free()), also when some filesystems failed (their outcome says so); -EINVAL
 * for NULL arguments or an invalid mode; -ENOMEM. Logs one line per filesystem (info, or
 * warning for errors). Cost: FITRIM (seconds on a large filesystem) or writing the free space
 * above the reserve at the rate limit, per filesystem.
 */
int agent_run(const AgentRunTargets *targets, const AgentRunOptions *o, AgentRunReport **ret);

/* Frees the report. Accepts NULL; returns NULL. */
AgentRunReport *agent_run_report_free(AgentRunReport *r);
DEFINE_TRIVIAL_CLEANUP_FUNC(AgentRunReport *, agent_run_report_free);

/* True when some filesystem ended in AGENT_OUTCOME_ERROR. */
bool agent_run_report_has_errors(const AgentRunReport *r);

/*
 * The report as a new JSON object in *ret (caller frees with json_object_put()): keys mode,
 * dry_run, duration_ms, filesystems[] {mount_point, device, fstype, method, outcome, bytes,
 * free_bytes_before, free_bytes_after, reserve_bytes, duration_ms, reason, errno}. Returns 0,
 * -EINVAL, -ENOMEM.
 */
int agent_run_report_to_json(const AgentRunReport *r, json_object **ret);
