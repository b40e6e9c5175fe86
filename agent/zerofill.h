/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Zero-filling the free space of a mounted filesystem, so that a host whose virtual disk does
 * not see discards can still find the freed blocks (all-zero clusters) and reclaim them.
 *
 * Safety first, unlike `dd if=/dev/zero of=/fill`:
 *  - the fill file is unnamed (O_TMPFILE; else created under a random name and unlinked at
 *    once), so an agent that dies, even by SIGKILL, leaves nothing behind: the kernel frees it;
 *  - before every chunk the free space as unprivileged users see it (statvfs f_bavail) must
 *    stay above the reserve margin; when anything else pushes it under, the fill stops at once
 *    and the file is released. The root reserve (f_bfree - f_bavail) is never touched. On
 *    btrfs, whose statfs shows new extents only after a transaction commit, the data space
 *    held by in-flight writes is subtracted (see agent_free_space());
 *  - on btrfs the file is marked no-cow and no-compress, so zeros are not compressed away
 *    even under compress-force;
 *  - writes go at idle I/O priority and through a token-bucket rate limit;
 *  - a cancellation flag (set from a SIGTERM/SIGINT handler) is checked between chunks.
 * The zeros are flushed (fdatasync) before the file is closed, so they reach the virtual disk
 * rather than vanishing with the page cache.
 */

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

/* The reserve margin: max(percent of the filesystem size, an absolute byte count). */
typedef struct AgentReserve {
        uint32_t basis_points; /* hundredths of a percent of the size, 0..10000 */
        uint64_t bytes;        /* absolute floor */
} AgentReserve;

#define AGENT_RESERVE_BASIS_POINTS_MAX 10000u

/*
 * Parses a reserve spec: a comma-separated list of at most one percentage ("10%", "2.5%",
 * up to two decimals, at most 100%) and at most one size ("2G", "512M", "4096", see
 * parse_size()); spaces around items are allowed. "10%,2G" means whichever is larger.
 * Returns 0 and *ret; -EINVAL for an empty spec, garbage, a percentage above 100% or an item
 * given twice; -ERANGE when a number overflows. On failure *ret is untouched and
 * *ret_reason (when not NULL) points at a static message for the user.
 */
int agent_reserve_parse(const char *spec, AgentReserve *ret, const char **ret_reason);

/* The reserve in bytes for a filesystem of fs_size bytes: max(ceil(size * percent), bytes).
 * Overflow-free for every input. */
uint64_t agent_reserve_bytes(const AgentReserve *r, uint64_t fs_size);

#define AGENT_ZEROFILL_CHUNK_DEFAULT (UINT64_C(4) << 20)
#define AGENT_ZEROFILL_CHUNK_MAX (UINT64_C(64) << 20)
#define AGENT_ZEROFILL_SYNC_INTERVAL_DEFAULT (UINT64_C(64) << 20)

typedef enum AgentZerofillOutcome {
        AGENT_ZEROFILL_OK,                 /* filled down to the reserve, to max_bytes, or to
                                            * ENOSPC with a zero reserve */
        AGENT_ZEROFILL_STOPPED_AT_RESERVE, /* free space was (or fell) under the reserve:
                                            * something else is writing; file released */
        AGENT_ZEROFILL_CANCELLED,          /* the cancel flag or the progress callback */
        AGENT_ZEROFILL_ERROR,              /* see AgentZerofillResult.error */
} AgentZerofillOutcome;

typedef struct AgentZerofillProgress {
        uint64_t bytes_written; /* so far (not all flushed yet in buffered mode) */
        uint64_t target;        /* free space above the reserve at the start (or max_bytes) */
        uint64_t free_now;      /* f_bavail * f_frsize at the last check */
        uint64_t reserve;
} AgentZerofillProgress;

typedef struct AgentZerofillOptions {
        const char *reserve_spec; /* e.g. "10%,2G"; NULL: use .reserve as is */
        AgentReserve reserve;     /* used when reserve_spec is NULL */
        uint64_t rate;            /* bytes per second; 0 = unlimited */
        uint64_t chunk_size;      /* bytes per write; 0 = AGENT_ZEROFILL_CHUNK_DEFAULT */
        uint64_t max_bytes;       /* stop after this many bytes; 0 = no limit */
        uint64_t sync_interval;   /* buffered mode: fdatasync + drop cache every N bytes;
                                   * 0 = AGENT_ZEROFILL_SYNC_INTERVAL_DEFAULT */
        bool dry_run;             /* compute what would be filled; write nothing */
        bool no_direct;           /* never use O_DIRECT (buffered writes only) */
        bool no_tmpfile;          /* skip O_TMPFILE, use the named-and-unlinked fallback */
        bool keep_ioprio;         /* do not switch the thread to IOPRIO_CLASS_IDLE */
        bool require_nocompress;  /* fail (-EOPNOTSUPP) unless the fill file could be marked
                                   * no-compress (btrfs mounted with compress) */
        const volatile sig_atomic_t *cancel; /* non-zero: stop between chunks; may be NULL */
        /* Called after every chunk; a non-zero return cancels. May be NULL. Borrowed. */
        int (*progress)(const AgentZerofillProgress *p, void *userdata);
        void *userdata;
} AgentZerofillOptions;

typedef struct AgentZerofillResult {
        AgentZerofillOutcome outcome;
        int error;             /* -errno when outcome is ERROR, else 0 */
        uint64_t bytes_zeroed; /* written and flushed (dry run: would be written) */
        uint64_t fs_size;      /* f_blocks * f_frsize */
        uint64_t reserve;      /* the reserve margin in bytes for this filesystem */
        uint64_t free_before;  /* f_bavail * f_frsize before the fill */
        uint64_t free_after;   /* the same after the file was released */
        uint64_t min_free;     /* the lowest free space seen at a check */
        uint64_t duration_ns;  /* whole run, release included */
        bool dry_run;
        bool direct_io;  /* O_DIRECT writes (else buffered + fdatasync + DONTNEED) */
        bool tmpfile;    /* O_TMPFILE (else a random name, unlinked right after creation) */
        bool idle_io;    /* the thread ran at IOPRIO_CLASS_IDLE */
        bool nocompress; /* the file was marked no-compress/no-cow (btrfs) */
} AgentZerofillResult;

/*
 * Fills the free space of the filesystem mounted at mount_point (borrowed) with zeros, as
 * described at the top of this file, then releases the file. opts is borrowed; NULL means
 * defaults (no reserve beyond the root reserve, no rate limit).
 *
 * Returns 0 and the run in *ret whenever the fill was attempted: the outcome (OK,
 * STOPPED_AT_RESERVE, CANCELLED, or ERROR with ret->error = -errno: ENOENT/EACCES opening the
 * mount point, EIO writing, EOPNOTSUPP for require_nocompress ...) and the counts, which are
 * meaningful also after an error. Returns -EINVAL (nothing done, *ret untouched) for NULL
 * arguments, a bad reserve_spec or chunk_size above AGENT_ZEROFILL_CHUNK_MAX.
 *
 * Cost: writes up to the free space above the reserve (at the rate limit), one statvfs per
 * chunk, fdatasync at the end, and one syncfs after the release so the filesystem hands the
 * space back promptly (btrfs and xfs free lazily). Sets and restores the calling thread's I/O
 * priority. Blocks the caller for the whole run: run it in a worker thread or child process
 * when an event loop must stay responsive.
 */
int agent_zerofill(
        const char *mount_point, const AgentZerofillOptions *opts, AgentZerofillResult *ret);

/* "ok", "stopped-at-reserve", "cancelled", "error". */
const char *agent_zerofill_outcome_to_string(AgentZerofillOutcome o);

/*
 * The free space the zero-fill checks its reserve against, for the filesystem of fd
 * (borrowed): statvfs f_bavail * f_frsize (the root reserve excluded), and on btrfs minus the
 * data space held by in-flight writes that statfs shows only after the next transaction
 * commit (/sys/fs/btrfs/FSID/allocation/data/bytes_reserved and bytes_may_use). Returns 0
 * and *ret, or -errno. A few syscalls; no I/O.
 */
int agent_free_space(int fd, uint64_t *ret);
