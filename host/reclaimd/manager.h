/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * reclaimd's objects. The Manager owns the event loop, the configuration, one Vm per registry
 * VM (each with its disks and, when the VM has a channel path, a GuestChannel) and the running
 * compaction Jobs.
 *
 * Jobs name their VM and image by copies of the strings, never by pointers into a Vm: a
 * SIGHUP reload replaces every Vm while jobs keep running, and a finished job looks its disk
 * up again by name and path.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <systemd/sd-event.h>

#include "registry.h"
#include "status.h"
#include "token-bucket.h"

#define USEC_PER_SEC UINT64_C(1000000)
#define NSEC_PER_USEC UINT64_C(1000)

/* Guest channel limits (per VM): frames per second, burst, errors before a reset. */
#define CHANNEL_FRAME_RATE 32u
#define CHANNEL_FRAME_BURST 64u
#define CHANNEL_MAX_ERRORS 16u
#define CHANNEL_BACKOFF_MIN_USEC (1 * USEC_PER_SEC)
#define CHANNEL_BACKOFF_MAX_USEC (60 * USEC_PER_SEC)
/* A guest that has not said Hello this long after we connected gets a Ping. */
#define CHANNEL_HELLO_TIMEOUT_USEC (5 * USEC_PER_SEC)
/* A failing (exit 1, killed) compaction is retried this many times, then waits for a Report. */
#define JOB_MAX_FAILURES 3u
/* The most bytes of a helper's stdout we keep (its JSON is a few hundred bytes). */
#define JOB_OUTPUT_MAX (64u * 1024u)

typedef struct Manager Manager;
typedef struct GuestChannel GuestChannel;
typedef struct Job Job;

typedef struct ManagerConfig {
        char *state_dir;
        char *reclaimctl;
        unsigned max_concurrent;
        uint64_t job_timeout_sec;
        uint64_t retry_interval_sec;
        RegistryMinGain min_gain;
        /* the policy sent to every guest in HelloAck */
        uint64_t guest_max_rate;
        uint64_t guest_min_reserve;
        unsigned guest_min_reserve_percent;
        bool guest_allow_zero;
        StatusThresholds thresholds; /* [thresholds]: for the status figures */
} ManagerConfig;

typedef struct VmDisk {
        char *path;
        bool pending;            /* a guest report says compacting is worth it */
        uint64_t reported_bytes; /* the freed bytes of the last report (the expected gain) */
        uint64_t report_time;    /* CLOCK_REALTIME usec of that report; 0: none */
        uint64_t last_compact_time;
        uint64_t last_compact_gain;
        unsigned failures; /* consecutive failed runs (exit 1 or killed) */
        char *refused;     /* why the engine refused the image (exit 4); then not retried */
} VmDisk;

typedef struct Vm {
        Manager *manager;
        char *name;
        char *channel_path;
        RegistryMinGain min_gain; /* the VM's own, or UNSET */
        VmDisk *disks;
        size_t n_disks;
        GuestChannel *channel;
        uint64_t last_report_bytes;
        uint64_t last_report_time;
        unsigned last_report_filesystems;
} Vm;

struct Manager {
        sd_event *event;
        ManagerConfig config;
        RegistryPaths paths;
        Vm **vms;
        size_t n_vms;
        Job *jobs; /* linked list of running jobs */
        unsigned n_jobs;
        sd_event_source *retry_timer;
};

/* ---- manager-config.c ---- */

/* Fills *c with the defaults (state_dir, reclaimctl path given). Returns 0 or -ENOMEM. */
int manager_config_init(ManagerConfig *c, const char *state_dir, const char *reclaimctl);

/* Replaces the string *field with a copy of value. Returns 0, -EINVAL or -ENOMEM (then the
 * old value stays). */
int manager_config_init_string(char **field, const char *value);

/* Frees the strings of c. Accepts NULL. */
void manager_config_done(ManagerConfig *c);

/*
 * Reads the [daemon] section of path into *c (keys it does not set keep their value).
 * A missing file is not an error when missing_ok. On a bad line, logs "FILE:LINE: message"
 * and returns -EINVAL; other errors (-errno of fopen, -ENOMEM) are logged too. Reads the file
 * once.
 */
int manager_config_load(ManagerConfig *c, const char *path, bool missing_ok);

/* ---- manager.c ---- */

/*
 * Builds a Manager: event loop with signal handlers (SIGTERM/SIGINT exit, SIGHUP reload),
 * watchdog. Takes ownership of *config and *paths (their strings) on success only. Returns 0
 * and a new Manager in *ret (caller frees with manager_free()), or -errno.
 */
int manager_new(ManagerConfig *config, RegistryPaths *paths, Manager **ret);

/* Frees m: channels closed, running helpers killed (SIGKILL) and reaped. Accepts NULL. */
Manager *manager_free(Manager *m);

static inline void manager_freep(Manager **m) {
        if (*m)
                *m = manager_free(*m);
}

/* Loads the registry and the state, connects channels and schedules pending disks. -errno. */
int manager_startup(Manager *m);

/* Re-reads the registry (SIGHUP); keeps running jobs. Returns 0 or -errno (logged). */
int manager_reload(Manager *m);

/* Sends STATUS= to the service manager. */
void manager_update_status(Manager *m);

/* The Vm called name (borrowed), or NULL. */
Vm *manager_find_vm(Manager *m, const char *name);

/* ---- guest-channel.c ---- */

/*
 * Creates vm's channel and starts connecting (from a zero-delay timer). Returns 0 and a new
 * channel in *ret (owned by vm, freed with guest_channel_free()), or -errno.
 */
int guest_channel_new(Vm *vm, GuestChannel **ret);

/* Closes the connection and drops its event sources. Accepts NULL; returns NULL. */
GuestChannel *guest_channel_free(GuestChannel *c);

/* Whether a guest is on the other end now (the VM is running). */
bool guest_channel_is_connected(const GuestChannel *c);

/* Counters: frames dropped by the rate limit and malformed frames, over the channel's life. */
uint64_t guest_channel_dropped(const GuestChannel *c);
uint64_t guest_channel_errors(const GuestChannel *c);

/* ---- job.c ---- */

/*
 * Starts compactions of pending disks whose VM is not connected, one per storage filesystem
 * and at most max_concurrent in all. An image QEMU still holds (io_posix_probe_qemu_locks())
 * stays pending and is looked at again from the retry timer. Cheap: one open and one lock
 * probe per candidate disk. Returns 0 or -errno (logged).
 */
int manager_schedule(Manager *m);

/* Kills (SIGKILL) and reaps every running helper, without recording results. */
void manager_jobs_abort(Manager *m);

/* Whether a job runs on path now. */
bool manager_job_running(Manager *m, const char *path);

/* Whether disk d of vm passes the min_gain policy (the VM's own, else the daemon's). */
bool vm_disk_worth_compacting(const Vm *vm, const VmDisk *d);

/* ---- state.c ---- */

/*
 * Reads STATE_DIR/vms/NAME.json into vm's disks (matched by path). A missing file leaves the
 * defaults; a damaged one is logged and rewritten from the defaults. Never fails for what a
 * file contains; returns 0 or -ENOMEM.
 */
int vm_state_load(Vm *vm);

/*
 * Writes vm's state atomically: temporary file, fsync, rename, fsync of the directory.
 * Returns 0 or -errno (logged).
 */
int vm_state_save(Vm *vm);
