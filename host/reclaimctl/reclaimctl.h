/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What reclaimctl's source files share: exit statuses, global options, small helpers. */

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "macro.h"
#include "qcow2.h"
#include "registry.h"

enum {
        EXIT_OK = 0,
        EXIT_ERROR = 1,
        EXIT_USAGE = 2,
        EXIT_IN_USE = 3,
        EXIT_REFUSED = 4,
        EXIT_THRESHOLD = 5, /* status --check: a threshold is crossed */
};

/* Global options (NULL: the defaults under / or arg_root). */
extern const char *arg_root;
extern const char *arg_config_dir;
extern const char *arg_state_dir;
extern bool arg_no_daemon;

#define DEFAULT_STATE_DIR "/var/lib/reclaim"

typedef struct CompactRequest {
        Qcow2CompactOptions opts; /* dry_run, force, batch_bytes */
        bool json;
        int progress_fd; /* -1: none */
        bool now;        /* compact --all --now: outside reclaimd's nightly window too */
} CompactRequest;

void json_add_u64(json_object *o, const char *key, uint64_t v);
void json_print(json_object *o);

static inline json_object *json_object_put_null(json_object *o) {
        (void) json_object_put(o);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put_null);

/* Loads the VM registry from the configured roots; *ret_where (may be NULL) gets the
 * directories searched, for messages. Returns 0 or -errno (logged). */
int load_registry(Registry **ret, char **ret_where);

/*
 * Parses the options of a verb that takes only --json and -h; nargs: the positional arguments
 * it needs. Returns -1 to go on (then argv[optind] is the first argument), or an exit status
 * (help printed: EXIT_OK; bad usage: EXIT_USAGE).
 */
int parse_json_only(int argc, char *argv[], int nargs, void (*help)(FILE *f), bool *json);

/* The rank of an exit status when several disks report: error > refused > in use > done. */
int exit_status_rank(int status);

/* ---- reclaimctl-bus.c: verbs on top of reclaimd's D-Bus API ---- */

/*
 * Queues the VM's disks through reclaimd and follows the jobs (progress bar, or JSON at the
 * end). Returns an exit status, or -ESRCH when reclaimd is not running (the caller then
 * compacts directly).
 */
int bus_compact_vm(const char *name, const CompactRequest *req);

/*
 * Asks reclaimd for the nightly run (CompactAll: the disks of stopped VMs whose expected gain
 * passes their threshold, biggest first) and follows the jobs. An exit status, or -ESRCH.
 */
int bus_compact_all(const CompactRequest *req);

/* The daemon's view of each VM for `list` (NULL members when reclaimd does not run). */
typedef struct BusVmSummary {
        bool connected;
        uint32_t pending;
} BusVmSummary;

/* Fills *ret for name from a running reclaimd. Returns 0, -ESRCH (no daemon), -ENOENT. */
int bus_vm_summary(const char *name, BusVmSummary *ret);

int verb_status_vm(int argc, char *argv[]);
int verb_reclaim(int argc, char *argv[]);
int verb_jobs(int argc, char *argv[]);
int verb_cancel(int argc, char *argv[]);

/* ---- reclaimctl-status.c: host-wide figures (issue #7) ---- */

/* status [--json] [--check] [--scan]; with one VM argument: verb_status_vm(). */
int verb_status(int argc, char *argv[]);
int verb_metrics(int argc, char *argv[]);
