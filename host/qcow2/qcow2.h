/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * libqcow2: in-place compaction of qcow2 images (public API).
 *
 * No policy, no logging above debug, no globals, no clocks. All I/O goes through the IoBackend
 * passed to qcow2_open(), which the caller keeps owning (and locking: see io_posix_lock_qemu).
 *
 * Error convention: -errno. The ones callers map to "refused" (CLI exit 4) are:
 *   -EMEDIUMTYPE  not a qcow2 image (bad magic, version, or a truncated header)
 *   -EOPNOTSUPP   a feature we refuse to touch (encryption, external data file, unknown
 *                 incompatible bits / header extensions, ...)
 *   -EUCLEAN      the image is corrupt (pre-check found errors) or has the dirty/corrupt bit
 * Every refusal happens before the first write, so a refused image is byte-identical.
 * Functions that can refuse fill a Qcow2Diag with a one-line human reason.
 */

#include <stdbool.h>
#include <stdint.h>

#include "io.h"

typedef struct Qcow2Image Qcow2Image;

typedef struct Qcow2Diag {
        char message[512];
} Qcow2Diag;

/* True for the error codes that mean "refused" (see above). */
bool qcow2_error_is_refusal(int r);

enum {
        QCOW2_OPEN_WRITE = 1 << 0, /* we intend to modify the image */
};

/*
 * Reads and validates the header and header extensions. Borrows io (must outlive the image).
 * Returns 0 and a new image in *ret (free with qcow2_close), or -errno with diag filled.
 * Cost: reads the header cluster (up to 2 MiB), the L1 and refcount tables, the snapshot table
 * and the bitmap directory.
 */
int qcow2_open(IoBackend *io, unsigned flags, Qcow2Image **ret, Qcow2Diag *diag);
/* Accepts NULL; returns NULL. Does not close io. */
Qcow2Image *qcow2_close(Qcow2Image *img);
static inline void qcow2_closep(Qcow2Image **img) {
        if (*img)
                *img = qcow2_close(*img);
}

typedef void (*Qcow2ProgressFn)(const char *phase, uint64_t done, uint64_t total, void *userdata);

typedef struct Qcow2Info {
        uint32_t format_version;
        uint32_t cluster_bits;
        uint64_t cluster_size;
        uint32_t refcount_bits;
        uint64_t virtual_size;
        uint64_t file_size;
        uint64_t allocated_bytes;    /* host clusters with refcount > 0, in bytes */
        uint64_t data_clusters;      /* guest clusters with a host cluster (normal + zero-alloc) */
        uint64_t zero_data_clusters; /* of those, reading as all zeros (needs scan) */
        uint64_t zero_flag_clusters; /* entries that read as zeros without a host cluster */
        uint64_t compressed_clusters;
        uint64_t l2_tables;
        uint64_t leaked_clusters; /* refcount > references */
        uint64_t stale_refcounts; /* refcount < references (only with .live; else refused) */
        uint32_t snapshots;
        uint32_t bitmaps;
        bool extended_l2;
        bool lazy_refcounts;
        bool has_backing_file;
        char backing_file[1024]; /* "" when none */
        char backing_format[64];
        bool preallocated;
        bool scanned;                     /* zero_data_clusters is exact */
        bool compactable;                 /* false when compaction would refuse the image */
        char refusal[512];                /* why not, when !compactable */
        uint64_t compacted_size_estimate; /* file size after a compaction (planner's result) */
        uint64_t reclaimable_bytes;       /* file_size - compacted_size_estimate */
} Qcow2Info;

typedef struct Qcow2InspectOptions {
        bool scan; /* read data clusters to count the all-zero ones */
        /*
         * The image may be open in a running VM (read it without locks): its refcounts may
         * lag behind its L2 tables (lazy refcounts, the dirty bit, a write in flight). Such
         * clusters are counted in stale_refcounts instead of refusing the walk, and the
         * image is reported not compactable; every other inconsistency still ends the walk
         * (then only the header's figures are filled in).
         */
        bool live;
        Qcow2ProgressFn progress;
        void *userdata;
} Qcow2InspectOptions;

/*
 * Read-only: walks all metadata (and with opts->scan every allocated data cluster, skipping
 * holes) and fills *ret. Never writes. Returns 0 even for images compaction would refuse
 * (then ret->compactable is false and ret->refusal says why); -errno on I/O errors or when
 * the metadata cannot even be walked (diag says why).
 * Memory: about 6 bytes per host cluster of the file (refcount, owner kind, a few bitmaps),
 * plus about 50 MiB of fixed buffers; measured 148 MiB peak for a 1 TiB file of 64 KiB
 * clusters (tests/bench/scale).
 */
int qcow2_inspect(
        Qcow2Image *img, const Qcow2InspectOptions *opts, Qcow2Info *ret, Qcow2Diag *diag);

typedef struct Qcow2CompactOptions {
        bool dry_run;         /* plan and report, write nothing */
        bool force;           /* compact even an image that looks preallocated */
        bool no_zero_pass;    /* only relocate (for tests) */
        uint64_t batch_bytes; /* data moved between two barriers; 0 = default (1 GiB) */
        Qcow2ProgressFn progress;
        void *userdata;
} Qcow2CompactOptions;

typedef struct Qcow2CompactStats {
        uint64_t file_size_before;
        uint64_t file_size_after;
        uint64_t clusters_zeroed; /* data clusters dropped as all-zero (incl. zero-alloc) */
        uint64_t l2_tables_freed;
        uint64_t clusters_moved; /* host clusters relocated (data and metadata) */
        uint64_t bytes_moved;
        uint64_t bytes_written; /* every byte written, metadata included */
        uint64_t flushes;
        uint64_t leaks_repaired;
        /* end of the last cluster in use: below file_size_after only when the file cannot
         * shrink (a block device) */
        uint64_t image_end;
        bool skipped_preallocated; /* nothing done: the image looks preallocated */
        bool dry_run;
} Qcow2CompactStats;

/*
 * Compacts the image in place (image must be opened with QCOW2_OPEN_WRITE unless dry_run):
 * pre-check (refuse on corruption; repair leaks), zero pass, relocation, truncation.
 * Every durable state in between passes `qemu-img check` with at worst leaked clusters.
 * Returns 0 (also when there was nothing to do, or a preallocated image was skipped: see
 * ret->skipped_preallocated), or -errno: refusals (see above) only before any write; once
 * something was written a failure is -EIO/-ENOSPC/... or -ENOTRECOVERABLE for a broken
 * internal check, and the image is valid (at worst with leaks) for a re-run to finish.
 */
int qcow2_compact(
        Qcow2Image *img, const Qcow2CompactOptions *opts, Qcow2CompactStats *ret, Qcow2Diag *diag);
