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

#include <json-c/json.h>
#include <systemd/sd-bus.h>
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
/* JobProgress signals: at most one per job this often (and on every phase change). */
#define JOB_PROGRESS_SIGNAL_USEC (250 * UINT64_C(1000))
/* Registry files changed: reload after they have been quiet this long. */
#define RELOAD_DELAY_USEC (500 * UINT64_C(1000))
/* The status figures (status-refresh.c): how often, how long at most, how big at most. */
#define STATUS_REFRESH_USEC (300 * USEC_PER_SEC)
#define STATUS_TIMEOUT_USEC (600 * USEC_PER_SEC)
#define STATUS_JSON_MAX (64u << 20)
/* The most jobs that may wait in the queue (Compact/CompactAll requests). */
#define JOB_QUEUE_MAX 4096u

/* The D-Bus API (docs/host.md, "D-Bus API"). */
#define BUS_NAME "org.reclaim.Manager1"
#define BUS_PATH "/org/reclaim/Manager1"
#define BUS_INTERFACE "org.reclaim.Manager1"

typedef struct Manager Manager;
typedef struct GuestChannel GuestChannel;
typedef struct Job Job;

/* A VM whose configuration names no channel uses SOCKET_DIR/NAME.sock. */
#define DEFAULT_SOCKET_DIR "/run/reclaim"

typedef struct ManagerConfig {
        char *state_dir;
        char *socket_dir;
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
        /* automatic compactions start only inside [window_start, window_end) minutes after
         * local midnight (the window may wrap past midnight); -1: any time */
        int window_start;
        int window_end;
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

typedef enum JobState {
        JOB_QUEUED,  /* waiting for a free slot or its storage */
        JOB_RUNNING, /* the helper runs */
} JobState;

/* Why a job exists: decides what "in use" means for it. */
typedef enum JobOrigin {
        JOB_AUTO,      /* a pending disk of a stopped VM (guest report) */
        JOB_SCHEDULED, /* CompactAll (the nightly timer): in use -> stays pending, no error */
        JOB_REQUESTED, /* Compact (an admin): in use -> the job ends with "in-use" */
} JobOrigin;

struct Job {
        Manager *manager;
        Job *next;
        uint32_t id;
        JobState state;
        JobOrigin origin;
        bool force;  /* --force: compact a preallocated image too */
        bool window; /* must start inside the nightly window: dropped when it has closed */
        char *vm_name;
        char *image;
        uint64_t expected_gain;
        dev_t dev;
        pid_t pid;
        int out_fd;
        int progress_fd;
        sd_event_source *child;
        sd_event_source *out;
        sd_event_source *progress;
        sd_event_source *timeout;
        bool killed;
        bool cancelled;
        char phase[32];
        uint64_t done, total;
        uint64_t progress_signal_usec; /* CLOCK_MONOTONIC of the last JobProgress */
        char progress_line[128];
        size_t progress_line_len;
        char output[JOB_OUTPUT_MAX];
        size_t output_len;
};

typedef struct Vm {
        Manager *manager;
        char *name;
        char *channel_path;
        RegistryMinGain min_gain; /* the VM's own, or UNSET */
        bool auto_compact;        /* false: only an admin's Compact touches its disks */
        bool state_dirty;         /* the state file must be (re)written */
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
        Job *jobs;       /* queued and running jobs, in the order they were made */
        unsigned n_jobs; /* running ones */
        unsigned n_queued;
        uint32_t last_job_id;
        sd_event_source *retry_timer;
        sd_bus *bus;            /* NULL: no D-Bus API (no system bus) */
        uint32_t bus_counts[5]; /* the count properties last announced */
        char *config_path;      /* reclaimd.conf, re-read on reload; NULL: none */
        bool config_missing_ok;
        /* the status figures: the last document, and the child collecting the next one */
        json_object *status_json;
        pid_t status_pid;
        int status_fd;
        char *status_buf;
        size_t status_len, status_cap;
        bool status_again;
        sd_event_source *status_child, *status_out, *status_timeout, *status_timer;
        sd_event_source *reload_timer; /* debounces inotify events */
        sd_event_source **watches;     /* inotify watches of the registry directories */
        size_t n_watches;
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

/*
 * Remembers reclaimd.conf's path for reloads (a missing file is fine when missing_ok).
 * Returns 0 or -ENOMEM.
 */
int manager_set_config_path(Manager *m, const char *path, bool missing_ok);

/*
 * Re-reads reclaimd.conf (SIGHUP, Reload(); state_dir and reclaimctl keep their values: they
 * take effect on restart) and the registry; keeps running jobs and live guest connections.
 * A bad configuration file is logged and the old configuration kept. Returns 0 or -errno.
 */
int manager_reload(Manager *m);

/* Sends STATUS= to the service manager. */
void manager_update_status(Manager *m);

/* The Vm called name (borrowed), or NULL. */
Vm *manager_find_vm(Manager *m, const char *name);

/* Counts for STATUS= and the D-Bus properties. */
unsigned manager_n_connected(const Manager *m);
unsigned manager_n_pending(const Manager *m);

/* (Re)creates the inotify watches on the registry's directories. Returns 0 or -errno. */
int manager_watch_registry(Manager *m);

/* Whether automatic compactions may start now (inside the window, or no window set). */
bool manager_in_window(const Manager *m);

/* ---- status-refresh.c ---- */

/* Starts collecting the status figures in a child (or remembers to, when one runs). 0/-errno. */
int manager_refresh_status(Manager *m);

/* Kills a running collection and drops the figures. */
void manager_status_abort(Manager *m);

/* The last status document's object for the image at path (borrowed), or NULL. */
json_object *manager_status_image(const Manager *m, const char *path);

/* A non-negative integer member of o, else 0. */
uint64_t json_u64_of(json_object *o, const char *key);

/* ---- bus.c ---- */

/*
 * Connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS is honoured), publishes BUS_PATH and
 * takes BUS_NAME. Returns 0, or -errno when there is no bus (the caller decides) or the name
 * is owned by another process (-EEXIST).
 */
int manager_bus_open(Manager *m);

/* Signals; no-ops without a bus. */
void bus_emit_job_new(Manager *m, const Job *j);
void bus_emit_job_progress(Manager *m, const Job *j);
void bus_emit_job_removed(
        Manager *m, const Job *j, const char *result, int status, uint64_t reclaimed);
void bus_emit_guest_report(Manager *m, const Vm *vm);
void bus_emit_guest_progress(
        Manager *m, const Vm *vm, const char *mount_point, uint64_t done, uint64_t total);
void bus_emit_counts_changed(Manager *m);
void bus_emit_status_changed(Manager *m);

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

/* Whether the guest agent said Hello (it can take requests). */
bool guest_channel_is_ready(const GuestChannel *c);

/* Hands the channel over to another Vm object (a reload keeps live connections). */
void guest_channel_set_vm(GuestChannel *c, Vm *vm);

/*
 * Sends a ReclaimRequest. mode: RECLAIM__MODE__MODE_* value; 0 values mean the policy's.
 * Returns the request's seq, -ENOTCONN when no agent said Hello, or -errno.
 */
int64_t guest_channel_request_reclaim(
        GuestChannel *c, int mode, uint64_t rate, uint64_t reserve, unsigned reserve_percent);

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

/* Whether a job (queued or running) exists for path. */
bool manager_job_running(Manager *m, const char *path);

/* The job for path, or with that id; NULL if none. */
Job *manager_job_for_path(Manager *m, const char *path);
Job *manager_find_job(Manager *m, uint32_t id);

/*
 * Queues a compaction of disk d of vm. An existing job for the disk is returned as it is.
 * Returns 0 and the job in *ret (borrowed), -EBUSY when the VM runs or QEMU holds the image
 * (only checked for JOB_REQUESTED), -ENOSPC when the queue is full, -ENOMEM.
 */
int manager_enqueue(Manager *m, Vm *vm, VmDisk *d, JobOrigin origin, bool force, Job **ret);

/*
 * Queues every disk of a stopped VM whose expected gain passes its threshold, biggest gain
 * first (the nightly run). With window, a job that has not started when the nightly window
 * closes is dropped ("window-closed"; the disk keeps its state for the next night). Returns
 * the number queued, or -errno.
 */
int manager_enqueue_all(Manager *m, bool window, uint32_t **ret_ids);

/* Cancels a job: a queued one is dropped, a running one killed (the engine is crash-safe).
 * The disk is no longer pending. Returns 0 or -ENOENT. */
int manager_cancel_job(Manager *m, uint32_t id);

/*
 * The gain a compaction of vm's disk d is expected to bring: the larger of the last guest
 * report and the status figures' estimate, each only when newer than the last compaction
 * (0: unknown, or compacted since).
 */
uint64_t vm_disk_expected_gain(const Vm *vm, const VmDisk *d);

/* Whether disk d of vm passes the min_gain policy (the VM's own, else the daemon's). */
bool vm_disk_worth_compacting(const Vm *vm, const VmDisk *d);

/* ---- state.c ---- */

/*
 * Reads STATE_DIR/vms/NAME.json into vm's disks (matched by path). A missing file leaves the
 * defaults; a damaged one is logged and rewritten from the defaults. Never fails for what a
 * file contains; returns 0, 1 when the file should be written (missing, or its disks are not
 * the VM's any more), or -ENOMEM.
 */
int vm_state_load(Vm *vm);

/*
 * Writes vm's state atomically: temporary file, fsync, rename, fsync of the directory.
 * Returns 0 or -errno (logged).
 */
int vm_state_save(Vm *vm);
