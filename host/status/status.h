/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * libstatus: the host's over-allocation figures (docs/monitoring.md), for `reclaimctl status`
 * and `reclaimctl metrics` now, and for reclaimd's D-Bus properties later.
 *
 * One report: every qcow2 disk of every registry VM, grouped by the filesystem it lives on
 * (a "storage"), with per storage the filesystem's capacity, used and free bytes, the sums of
 * the images' virtual, file and allocated sizes, the over-allocation ratio, what the images
 * would still take if every one filled up, and what compaction could reclaim.
 *
 * Metadata only: each image is opened read-only without taking QEMU's locks (so a running
 * VM's image is read too, and never blocked), its header, L1/L2 and refcount tables are walked
 * (qcow2_inspect without the data scan), and the per-VM state files reclaimd keeps
 * (STATE_DIR/vms/NAME.json: last guest report, last compaction) are read. No image data is
 * read, nothing is written.
 *
 * Plain C: no sd-*, no logging (problems are recorded in the report), no globals.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "registry.h"

/* ---- thresholds: the [thresholds] section of reclaimd.conf ---- */

typedef struct StatusThresholds {
        double over_allocation_ratio; /* storage: warn when virtual / capacity > this; 0 off */
        unsigned min_free_percent;    /* storage: warn when free < this % of capacity; 0 off */
        uint64_t reclaimable_bytes;   /* storage: warn when its reclaimable total >= this; 0 off */
        unsigned
                reclaimable_percent; /* image: warn when reclaimable >= this % of its file; 0 off */
} StatusThresholds;

/*
 * Sets one [thresholds] key from its text. Returns 0, -ENOENT for an unknown key, or -EINVAL
 * for a bad value; on failure error (error_size bytes, may be 0) gets a one-line reason and *t
 * is unchanged. reclaimd's configuration parser calls this for the section too, so both
 * programs accept the same keys.
 */
int status_thresholds_set(
        StatusThresholds *t, const char *key, const char *value, char *error, size_t error_size);

typedef struct StatusConfig {
        StatusThresholds thresholds;
        char *state_dir; /* [daemon] state_dir, or NULL when the file does not set it */
} StatusConfig;

/*
 * Reads reclaimd.conf at path into *c (which the caller zero-initialized or filled before):
 * the [thresholds] section and [daemon] state_dir; the other [daemon] keys are reclaimd's
 * and are skipped unchecked. missing_ok: a file that does not exist is not an error.
 * Returns 0; -EINVAL for a bad line, with *ret_error (caller frees) "PATH:LINE: reason";
 * -errno when the file cannot be opened (*ret_error names it); -ENOMEM.
 */
int status_config_load(StatusConfig *c, const char *path, bool missing_ok, char **ret_error);

/* Frees what c owns; c itself is the caller's. Accepts NULL. */
void status_config_done(StatusConfig *c);

/* ---- the report ---- */

/* Why a row is marked (bit set). */
enum {
        STATUS_WARN_RATIO = 1 << 0,       /* storage: over-allocation ratio above the threshold */
        STATUS_WARN_FREE = 1 << 1,        /* storage: free space below the threshold */
        STATUS_WARN_RECLAIMABLE = 1 << 2, /* storage or image: reclaimable at/above threshold */
        STATUS_WARN_ERROR = 1 << 3,       /* image: could not be read (see error) */
};

/* "ratio", "free", "reclaimable", "error" for one STATUS_WARN_* bit; NULL otherwise. */
const char *status_warning_to_string(unsigned bit);

typedef struct StatusImage {
        char *vm;
        char *disk; /* the drive name (scsi0, vda), else the image's file name */
        char *path;
        size_t storage; /* index into StatusReport.storages */
        bool block;     /* a block device, not a file */

        /* from the image's metadata (0 when error != 0) */
        uint64_t virtual_size;
        uint64_t file_size;        /* the file's length (a block device: its size) */
        uint64_t allocated_bytes;  /* host clusters in use (refcount > 0) */
        uint64_t disk_usage_bytes; /* what the file occupies on its filesystem (st_blocks) */
        uint64_t metadata_reclaimable_bytes; /* the planner's estimate, without the data scan */
        bool in_use;       /* a running VM (or qemu-nbd, qemu-io) holds its QEMU locks */
        bool compactable;  /* false: compaction would refuse it now (see note) */
        bool preallocated; /* skipped by compaction unless forced */
        uint64_t stale_refcounts;
        char *note; /* why not compactable, or NULL */
        int error;  /* -errno when the image could not be read; then error_message */
        char *error_message;

        /* from reclaimd's state file (0: not known) */
        uint64_t reported_bytes;   /* freed by the guest since the last compaction */
        uint64_t report_bytes;     /* what the last report said, even if compacted since */
        uint64_t report_time_usec; /* CLOCK_REALTIME of that report */
        uint64_t last_compaction_usec;
        uint64_t last_compaction_gain;

        /* a data scan of this very file (same inode, size and mtime) from the scan cache, or
         * made now with StatusOptions.scan: exact as of scan_time_usec */
        bool scanned;
        uint64_t scan_time_usec;
        uint64_t scan_reclaimable_bytes;
        uint64_t mtime_nsec; /* the file's, for the cache */
        uint64_t inode;

        /* the scan's result when there is one; else the metadata estimate + the pending guest
         * report, at most the file size */
        uint64_t reclaimable_bytes;
        unsigned warnings; /* STATUS_WARN_* */
} StatusImage;

typedef struct StatusStorage {
        char *name;   /* the mount point (a block device: its path) */
        char *source; /* the mounted device or "-" */
        char *fstype; /* or "-" */
        uint64_t capacity_bytes;
        uint64_t used_bytes;
        uint64_t free_bytes; /* available to unprivileged writers (statvfs f_bavail) */
        uint64_t virtual_bytes;
        uint64_t file_bytes;
        uint64_t allocated_bytes;
        uint64_t disk_usage_bytes;
        uint64_t reclaimable_bytes;
        uint64_t growth_bytes;        /* what the images would still take if each filled up */
        uint64_t shortfall_bytes;     /* growth beyond the free space (0: it would all fit) */
        double over_allocation_ratio; /* virtual_bytes / capacity_bytes */
        size_t n_images;
        unsigned warnings; /* STATUS_WARN_*, its images' included */
} StatusStorage;

typedef struct StatusVm {
        char *name;
        uint64_t last_report_usec; /* 0: never reported */
        uint64_t last_report_bytes;
        uint32_t last_report_filesystems;
} StatusVm;

typedef struct StatusReport {
        StatusThresholds thresholds;
        uint64_t time_usec;     /* CLOCK_REALTIME when collected */
        uint64_t duration_usec; /* how long collecting took */
        StatusStorage *storages;
        size_t n_storages;
        StatusImage *images; /* by storage, then in registry order */
        size_t n_images;
        StatusVm *vms; /* registry order */
        size_t n_vms;
        unsigned warnings; /* union of every row's */
        size_t n_warnings; /* rows (storages and images) with a warning */
} StatusReport;

/* The scan cache's file name in the state directory (reclaimctl status --scan writes it). */
#define STATUS_SCAN_CACHE_NAME "scan-cache.json"

typedef struct StatusOptions {
        const char *state_dir;       /* reclaimd's state (NULL: no state files are read) */
        StatusThresholds thresholds; /* copied into the report */
        const char *mountinfo;       /* NULL: /proc/self/mountinfo (tests) */
        /*
         * A file of earlier data scans (status_scan_cache_save), or NULL. An entry counts only
         * while the image's inode, size and mtime are those it was scanned at.
         */
        const char *scan_cache;
        /*
         * Scan the data of every image not in use whose cache entry is missing or stale (reads
         * every allocated cluster: the one exception to "metadata only", on request).
         */
        bool scan;
} StatusOptions;

/*
 * Collects the report for every disk of every VM in reg (borrowed). An image that cannot be
 * read is a row with error set, never a failure. I/O per image: open read-only (no locks
 * taken; QEMU's lock bytes probed), fstat/fstatvfs, its header cluster, L1, L2 and refcount
 * tables and snapshot/bitmap metadata; one read of each VM's state file; one of mountinfo.
 * CPU: the metadata walk and the compaction planner's simulation (tests/bench/status).
 * With opts->scan, images not in use without a valid cache entry are also scanned: every
 * allocated cluster is read (as qcow2_inspect with .scan).
 * Returns 0 and a new report in *ret (free with status_report_free), -EINVAL, -ENOMEM.
 */
int status_collect(const Registry *reg, const StatusOptions *opts, StatusReport **ret);

/*
 * Writes the scan results of r (every image with scanned set) to path: a temporary file in the
 * same directory, fsync, rename. Entries of images not in r are dropped. Returns 0 or -errno.
 */
int status_scan_cache_save(const StatusReport *r, const char *path);

/* Frees r and everything it owns; accepts NULL; returns NULL. */
StatusReport *status_report_free(StatusReport *r);

static inline void status_report_freep(StatusReport **r) {
        if (*r)
                *r = status_report_free(*r);
}

/* ---- rendering (no allocation on the caller's side; return 0 or -errno of the stream) ---- */

/* Human-readable tables; warning rows say why. */
int status_render_text(const StatusReport *r, FILE *f);

/* One JSON document (docs/monitoring.md lists the keys). */
int status_render_json(const StatusReport *r, FILE *f);

/* Prometheus text exposition format 0.0.4, HELP and TYPE for every family (docs/monitoring.md). */
int status_render_prometheus(const StatusReport *r, FILE *f);
