/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/btrfs.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "size.h"
#include "token-bucket.h"
#include "zerofill.h"

/* linux/ioprio.h is not on every toolchain; the ABI values are fixed. */
#define ZF_IOPRIO_CLASS_SHIFT 13
#define ZF_IOPRIO_CLASS_IDLE 3
#define ZF_IOPRIO_WHO_PROCESS 1

#define NSEC_PER_SEC UINT64_C(1000000000)
#define NSEC_PER_MSEC UINT64_C(1000000)
/* Longest single sleep while waiting for rate tokens: the cancel flag is checked this often. */
#define RATE_SLEEP_SLICE_NS (50 * NSEC_PER_MSEC)
/* How long to wait for the filesystem to hand the space back after the release. */
#define SETTLE_MAX_NS (2 * NSEC_PER_SEC)
#define SETTLE_POLL_NS (10 * NSEC_PER_MSEC)
/* Write and O_DIRECT alignment: at least a page, whatever the filesystem block size. */
#define ZF_MIN_UNIT UINT64_C(4096)
#define ZF_MAX_UNIT (UINT64_C(1) << 20)

/* ---- reserve spec ---- */

static char *strip(char *s) {
        char *e;

        while (*s == ' ' || *s == '\t')
                s++;
        e = s + strlen(s);
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                *--e = '\0';
        return s;
}

/* "12", "12.5", "0.25" (the '%' already removed) -> basis points */
static int parse_percent(const char *s, uint32_t *ret, const char **reason) {
        uint64_t whole = 0, frac = 0;
        unsigned decimals = 0;
        const char *p = s;

        if (*p < '0' || *p > '9') {
                *reason = "not a percentage (use e.g. 10% or 2.5%)";
                return -EINVAL;
        }
        for (; *p >= '0' && *p <= '9'; p++)
                if (MUL_OVERFLOW(whole, 10, &whole) ||
                    ADD_OVERFLOW(whole, (uint64_t) (*p - '0'), &whole)) {
                        *reason = "percentage too large";
                        return -ERANGE;
                }
        if (*p == '.') {
                p++;
                for (; *p >= '0' && *p <= '9'; p++) {
                        if (++decimals > 2) {
                                *reason = "at most two decimals in a percentage";
                                return -EINVAL;
                        }
                        frac = frac * 10 + (uint64_t) (*p - '0');
                }
                if (decimals == 0) {
                        *reason = "not a percentage (use e.g. 10% or 2.5%)";
                        return -EINVAL;
                }
        }
        if (*p) {
                *reason = "not a percentage (use e.g. 10% or 2.5%)";
                return -EINVAL;
        }
        for (; decimals < 2; decimals++)
                frac *= 10;
        if (whole > 100 || whole * 100 + frac > AGENT_RESERVE_BASIS_POINTS_MAX) {
                *reason = "percentage above 100%";
                return -EINVAL;
        }
        *ret = (uint32_t) (whole * 100 + frac);
        return 0;
}

int agent_reserve_parse(const char *spec, AgentReserve *ret, const char **ret_reason) {
        _cleanup_free_ char *copy = NULL;
        AgentReserve res = {};
        bool have_percent = false, have_bytes = false;
        const char *reason = NULL, *dummy;
        char *p, *item;
        int r = 0;

        if (!ret_reason)
                ret_reason = &dummy;
        if (!ret) {
                *ret_reason = "internal error: no result";
                return -EINVAL;
        }
        if (!spec) {
                *ret_reason = "no reserve given";
                return -EINVAL;
        }
        copy = strdup(spec);
        if (!copy) {
                *ret_reason = "out of memory";
                return -ENOMEM;
        }
        if (!*strip(copy)) {
                *ret_reason = "empty reserve (use e.g. 10%, 2G or 10%,2G)";
                return -EINVAL;
        }

        p = copy;
        while ((item = strsep(&p, ","))) {
                size_t len;

                item = strip(item);
                len = strlen(item);
                if (len == 0) {
                        reason = "empty item in the reserve list";
                        r = -EINVAL;
                        break;
                }
                if (item[len - 1] == '%') {
                        if (have_percent) {
                                reason = "percentage given twice";
                                r = -EINVAL;
                                break;
                        }
                        item[len - 1] = '\0';
                        r = parse_percent(strip(item), &res.basis_points, &reason);
                        if (r < 0)
                                break;
                        have_percent = true;
                } else {
                        if (have_bytes) {
                                reason = "size given twice";
                                r = -EINVAL;
                                break;
                        }
                        r = parse_size(item, &res.bytes);
                        if (r == -ERANGE) {
                                reason = "size too large";
                                break;
                        }
                        if (r < 0) {
                                reason = "not a size or percentage (use e.g. 10%, 2G or 10%,2G)";
                                r = -EINVAL;
                                break;
                        }
                        have_bytes = true;
                }
        }
        if (r < 0) {
                *ret_reason = reason;
                return r;
        }
        *ret = res;
        return 0;
}

uint64_t agent_reserve_bytes(const AgentReserve *r, uint64_t fs_size) {
        unsigned __int128 pct;
        uint32_t bp;

        if (!r)
                return 0;
        bp = MIN(r->basis_points, AGENT_RESERVE_BASIS_POINTS_MAX);
        /* round up: a reserve is a floor, never give the guest less than asked */
        pct = ((unsigned __int128) fs_size * bp + AGENT_RESERVE_BASIS_POINTS_MAX - 1) /
                AGENT_RESERVE_BASIS_POINTS_MAX;
        return MAX((uint64_t) pct, r->bytes);
}

/* ---- the fill ---- */

const char *agent_zerofill_outcome_to_string(AgentZerofillOutcome o) {
        switch (o) {
        case AGENT_ZEROFILL_OK:
                return "ok";
        case AGENT_ZEROFILL_STOPPED_AT_RESERVE:
                return "stopped-at-reserve";
        case AGENT_ZEROFILL_CANCELLED:
                return "cancelled";
        case AGENT_ZEROFILL_ERROR:
                return "error";
        }
        return "unknown";
}

static uint64_t now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
        struct timespec ts = {
                .tv_sec = (time_t) (ns / NSEC_PER_SEC),
                .tv_nsec = (long) (ns % NSEC_PER_SEC),
        };

        /* EINTR is fine: a signal handler may just have set the cancel flag. */
        (void) clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
}

/* ---- free space ---- */

/*
 * btrfs's statfs counts data extents as used only once the delayed references of the
 * transaction have run (usually at commit, every 30 s): until then, freshly written extents
 * sit in the data space_info's bytes_reserved (allocated) and bytes_may_use (reserved for
 * buffered writes), which statfs ignores. A fill checked against statfs alone runs straight
 * through its reserve into ENOSPC. Those counters are in
 * /sys/fs/btrfs/FSID/allocation/data/; subtracting them gives the real figure.
 */
typedef struct FreeProbe {
        bool btrfs;
        int reserved_fd; /* bytes_reserved, or -1 */
        int may_use_fd;  /* bytes_may_use, or -1 */
} FreeProbe;

static void free_probe_close(FreeProbe *p) {
        if (p->reserved_fd >= 0)
                (void) close(p->reserved_fd);
        if (p->may_use_fd >= 0)
                (void) close(p->may_use_fd);
        p->reserved_fd = p->may_use_fd = -1;
}

/* Never fails: without the sysfs counters p->reserved_fd stays -1 (the caller then has to
 * account for its own writes). */
static void free_probe_open(int fd, FreeProbe *p) {
        struct btrfs_ioctl_fs_info_args fi = {};
        struct statfs sfs;
        char dir[128], uuid[40] = "", *w = uuid;
        int dfd;

        *p = (FreeProbe){ .reserved_fd = -1, .may_use_fd = -1 };
        if (fstatfs(fd, &sfs) < 0 ||
            (unsigned long) sfs.f_type != (unsigned long) BTRFS_SUPER_MAGIC)
                return;
        p->btrfs = true;
        if (ioctl(fd, BTRFS_IOC_FS_INFO, &fi) < 0)
                return;
        for (size_t i = 0; i < sizeof(fi.fsid) && w < uuid + sizeof(uuid) - 3; i++) {
                if (i == 4 || i == 6 || i == 8 || i == 10)
                        *w++ = '-';
                w += snprintf(w, 3, "%02x", fi.fsid[i]);
        }
        (void) snprintf(dir, sizeof(dir), "/sys/fs/btrfs/%s/allocation/data", uuid);
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return;
        p->reserved_fd = openat(dfd, "bytes_reserved", O_RDONLY | O_CLOEXEC);
        p->may_use_fd = openat(dfd, "bytes_may_use", O_RDONLY | O_CLOEXEC);
        (void) close(dfd);
        if (p->reserved_fd < 0 || p->may_use_fd < 0)
                free_probe_close(p);
}

/* A sysfs attribute is regenerated on every read from offset 0. */
static int read_sysfs_u64(int fd, uint64_t *ret) {
        char buf[32], *end;
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        unsigned long long v;

        if (n < 0)
                return negative_errno();
        buf[n] = '\0';
        errno = 0;
        v = strtoull(buf, &end, 10);
        if (errno != 0 || end == buf)
                return -EBADMSG;
        *ret = v;
        return 0;
}

static int free_probe_read(int fd, const FreeProbe *p, uint64_t *ret) {
        struct statvfs sv;
        uint64_t f, reserved, may_use;

        if (fstatvfs(fd, &sv) < 0)
                return negative_errno();
        /* f_bavail: what an unprivileged user may still use; the root reserve is left alone */
        f = (uint64_t) sv.f_bavail * sv.f_frsize;
        if (p->reserved_fd >= 0 && read_sysfs_u64(p->reserved_fd, &reserved) >= 0 &&
            read_sysfs_u64(p->may_use_fd, &may_use) >= 0) {
                f -= MIN(f, reserved);
                f -= MIN(f, may_use);
        }
        *ret = f;
        return 0;
}

int agent_free_space(int fd, uint64_t *ret) {
        FreeProbe p;
        uint64_t f;
        int r;

        if (fd < 0 || !ret)
                return -EINVAL;
        free_probe_open(fd, &p);
        r = free_probe_read(fd, &p, &f);
        free_probe_close(&p);
        if (r < 0)
                return r;
        *ret = f;
        return 0;
}

typedef struct ZeroFill {
        const AgentZerofillOptions *opts;
        AgentZerofillResult *res;
        int dirfd;
        int fd;
        void *buf;
        uint64_t unit;
        uint64_t chunk;
        uint64_t written; /* bytes written into the file */
        uint64_t durable; /* bytes known to have reached the device */
        uint64_t synced;  /* buffered mode: bytes covered by the last fdatasync */
        int old_ioprio;   /* -1: not changed */
        FreeProbe probe;
} ZeroFill;

/* The free space the reserve is checked against. On btrfs without the sysfs counters, also
 * never more than what was free at the start minus what we wrote (statfs lags). */
static int zf_free_bytes(ZeroFill *z, int fd, uint64_t *ret) {
        uint64_t f;
        int r = free_probe_read(fd, &z->probe, &f);

        if (r < 0)
                return r;
        if (z->probe.btrfs && z->probe.reserved_fd < 0 && z->fd >= 0) {
                uint64_t mine =
                        z->res->free_before > z->written ? z->res->free_before - z->written : 0;
                f = MIN(f, mine);
        }
        *ret = f;
        return 0;
}

static bool zf_cancelled(const ZeroFill *z) {
        return z->opts->cancel && *z->opts->cancel != 0;
}

static void zf_ioprio_idle(ZeroFill *z) {
        long old = syscall(SYS_ioprio_get, ZF_IOPRIO_WHO_PROCESS, 0);

        if (old < 0)
                return;
        if (syscall(SYS_ioprio_set,
                    ZF_IOPRIO_WHO_PROCESS,
                    0,
                    ZF_IOPRIO_CLASS_IDLE << ZF_IOPRIO_CLASS_SHIFT) < 0) {
                log_debug_errno(negative_errno(), "ioprio_set(IDLE) failed, going on: %m");
                return;
        }
        z->old_ioprio = (int) old;
        z->res->idle_io = true;
}

static void zf_ioprio_restore(ZeroFill *z) {
        if (z->old_ioprio < 0)
                return;
        (void) syscall(SYS_ioprio_set, ZF_IOPRIO_WHO_PROCESS, 0, z->old_ioprio);
        z->old_ioprio = -1;
}

static int zf_open_named(int dirfd, int flags) {
        for (unsigned attempt = 0; attempt < 16; attempt++) {
                uint8_t rnd[8];
                char name[64];
                int fd;

                if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t) sizeof(rnd)) {
                        /* no entropy yet this early at boot: the name only needs to be unique */
                        uint64_t t = now_ns() ^ ((uint64_t) getpid() << 32) ^ attempt;
                        memcpy(rnd, &t, sizeof(rnd));
                }
                (void) snprintf(
                        name,
                        sizeof(name),
                        ".reclaim-zerofill.%02x%02x%02x%02x%02x%02x%02x%02x",
                        rnd[0],
                        rnd[1],
                        rnd[2],
                        rnd[3],
                        rnd[4],
                        rnd[5],
                        rnd[6],
                        rnd[7]);
                fd = openat(dirfd, name, flags | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
                if (fd < 0) {
                        if (errno == EEXIST)
                                continue;
                        return negative_errno();
                }
                /* Unlink at once: from here on only our descriptor keeps the blocks, so a
                 * killed agent leaves nothing behind, exactly as with O_TMPFILE. */
                if (unlinkat(dirfd, name, 0) < 0) {
                        int r = negative_errno();
                        (void) close(fd);
                        return r;
                }
                return fd;
        }
        return -EEXIST;
}

/* Opens the unnamed fill file: O_TMPFILE if the filesystem has it, O_DIRECT if it takes it. */
static int zf_open(ZeroFill *z) {
        bool try_direct = !z->opts->no_direct;
        int base = O_RDWR | O_CLOEXEC | O_NOCTTY;
        int fd;

        if (!z->opts->no_tmpfile) {
                for (int direct = try_direct; direct >= 0; direct--) {
                        fd = openat(
                                z->dirfd, ".", base | O_TMPFILE | (direct ? O_DIRECT : 0), 0600);
                        if (fd >= 0) {
                                z->fd = fd;
                                z->res->tmpfile = true;
                                z->res->direct_io = direct;
                                return 0;
                        }
                        /* EINVAL: O_DIRECT refused (or O_TMPFILE unknown); retry plain */
                        if (errno != EINVAL)
                                break;
                }
                if (!ERRNO_IS_NOT_SUPPORTED(errno) && errno != EISDIR)
                        return negative_errno();
        }

        for (int direct = try_direct; direct >= 0; direct--) {
                fd = zf_open_named(z->dirfd, base | (direct ? O_DIRECT : 0));
                if (fd >= 0) {
                        z->fd = fd;
                        z->res->direct_io = direct;
                        return 0;
                }
                if (fd != -EINVAL)
                        return fd;
        }
        return -EINVAL;
}

/* btrfs compresses zeros away (compress, compress-force, or a +c directory): mark the file
 * no-cow, which btrfs never compresses, and no-compress. No-cow only sticks on an empty file. */
static int zf_nocompress(ZeroFill *z) {
        struct statfs sfs;
        int attr = 0;

        if (fstatfs(z->fd, &sfs) < 0)
                return negative_errno();
        if ((unsigned long) sfs.f_type != (unsigned long) BTRFS_SUPER_MAGIC)
                return -EOPNOTSUPP;
        if (ioctl(z->fd, FS_IOC_GETFLAGS, &attr) < 0)
                return negative_errno();
        attr |= FS_NOCOW_FL | FS_NOCOMP_FL;
        attr &= ~FS_COMPR_FL;
        if (ioctl(z->fd, FS_IOC_SETFLAGS, &attr) < 0)
                return negative_errno();
        z->res->nocompress = true;
        return 0;
}

static int zf_set_direct(ZeroFill *z, bool on) {
        int fl = fcntl(z->fd, F_GETFL);

        if (fl < 0)
                return negative_errno();
        fl = on ? fl | O_DIRECT : fl & ~O_DIRECT;
        if (fcntl(z->fd, F_SETFL, fl) < 0)
                return negative_errno();
        z->res->direct_io = on;
        return 0;
}

/* Writes n zero bytes at z->written; advances z->written by what was written (also on
 * failure, when part went). */
static int zf_write(ZeroFill *z, uint64_t n) {
        uint64_t done = 0;
        bool first_try = true;

        while (done < n) {
                ssize_t k = pwrite(
                        z->fd, (const uint8_t *) z->buf + done, n - done, (off_t) z->written);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        /* Some filesystems accept O_DIRECT at open and refuse the write. */
                        if (errno == EINVAL && z->res->direct_io && first_try && done == 0) {
                                int r = zf_set_direct(z, false);
                                if (r < 0)
                                        return r;
                                first_try = false;
                                continue;
                        }
                        return negative_errno();
                }
                if (k == 0)
                        return -EIO;
                done += (uint64_t) k;
                z->written += (uint64_t) k;
                if (z->res->direct_io)
                        z->durable = z->written;
                first_try = false;
        }
        /* A short O_DIRECT write (ENOSPC on the way) may leave the offset unaligned: finish
         * in buffered mode rather than fail on alignment. */
        if (z->res->direct_io && z->written % ZF_MIN_UNIT != 0)
                return zf_set_direct(z, false);
        return 0;
}

/* Buffered mode: push what was written since the last sync to the device and drop it from
 * the page cache, so the fill neither floods memory nor leaves zeros only in RAM. */
static int zf_sync_range(ZeroFill *z) {
        if (fdatasync(z->fd) < 0)
                return negative_errno();
        if (!z->res->direct_io)
                (void) posix_fadvise(
                        z->fd,
                        (off_t) z->synced,
                        (off_t) (z->written - z->synced),
                        POSIX_FADV_DONTNEED);
        z->synced = z->written;
        z->durable = z->written;
        return 0;
}

static int zf_wait_tokens(ZeroFill *z, TokenBucket *tb) {
        for (;;) {
                uint64_t wait = token_bucket_delay_ns(tb, z->chunk, now_ns());

                if (wait == 0)
                        return 0;
                if (zf_cancelled(z))
                        return -ECANCELED;
                sleep_ns(MIN(wait, RATE_SLEEP_SLICE_NS));
        }
}

static void zf_note_free(ZeroFill *z, uint64_t free_now) {
        z->res->min_free = MIN(z->res->min_free, free_now);
}

/* The write loop. Returns the outcome; *ret_error is -errno for AGENT_ZEROFILL_ERROR. */
static AgentZerofillOutcome zf_loop(ZeroFill *z, uint64_t target, int *ret_error) {
        const AgentZerofillOptions *o = z->opts;
        AgentZerofillResult *res = z->res;
        uint64_t sync_interval = o->sync_interval ?: AGENT_ZEROFILL_SYNC_INTERVAL_DEFAULT;
        TokenBucket tb;
        int r;

        *ret_error = 0;
        r = token_bucket_init(&tb, o->rate, z->chunk, now_ns());
        if (r < 0) {
                *ret_error = r;
                return AGENT_ZEROFILL_ERROR;
        }
        /* Start empty: the first chunk is paced too, so a run averages the rate exactly. */
        token_bucket_consume(&tb, z->chunk, now_ns());

        for (;;) {
                uint64_t free_now, room, n;

                if (zf_cancelled(z))
                        return AGENT_ZEROFILL_CANCELLED;
                if (zf_wait_tokens(z, &tb) < 0)
                        return AGENT_ZEROFILL_CANCELLED;

                /* Re-check right before writing: anything else may have eaten space since. */
                r = zf_free_bytes(z, z->fd, &free_now);
                if (r < 0) {
                        *ret_error = r;
                        return AGENT_ZEROFILL_ERROR;
                }
                zf_note_free(z, free_now);
                if (free_now < res->reserve)
                        return AGENT_ZEROFILL_STOPPED_AT_RESERVE;

                room = free_now - res->reserve;
                if (o->max_bytes > 0) {
                        uint64_t left = o->max_bytes > z->written ? o->max_bytes - z->written : 0;
                        room = MIN(room, left);
                }
                n = MIN(z->chunk, room);
                n -= n % z->unit;
                if (n == 0)
                        return AGENT_ZEROFILL_OK;

                token_bucket_consume(&tb, n, now_ns());
                r = zf_write(z, n);
                if (r == -ENOSPC || r == -EDQUOT)
                        /* Full: fine when no reserve was asked for, else it means something
                         * else took the space our last check saw. */
                        return res->reserve > 0 ? AGENT_ZEROFILL_STOPPED_AT_RESERVE :
                                                  AGENT_ZEROFILL_OK;
                if (r < 0) {
                        *ret_error = r;
                        return AGENT_ZEROFILL_ERROR;
                }

                if (!res->direct_io && z->written - z->synced >= sync_interval) {
                        r = zf_sync_range(z);
                        if (r < 0) {
                                *ret_error = r;
                                return AGENT_ZEROFILL_ERROR;
                        }
                }

                if (o->progress) {
                        AgentZerofillProgress p = {
                                .bytes_written = z->written,
                                .target = target,
                                .free_now = free_now - MIN(free_now, n),
                                .reserve = res->reserve,
                        };
                        if (o->progress(&p, o->userdata) != 0)
                                return AGENT_ZEROFILL_CANCELLED;
                }
        }
}

static int zf_run(ZeroFill *z, const AgentReserve *reserve) {
        const AgentZerofillOptions *o = z->opts;
        AgentZerofillResult *res = z->res;
        AgentZerofillOutcome outcome;
        struct statvfs sv;
        uint64_t target;
        int r, error = 0;

        if (fstatvfs(z->dirfd, &sv) < 0)
                return negative_errno();
        free_probe_open(z->dirfd, &z->probe);
        r = zf_free_bytes(z, z->dirfd, &res->free_before);
        if (r < 0)
                return r;
        res->fs_size = (uint64_t) sv.f_blocks * sv.f_frsize;
        res->free_after = res->free_before;
        res->min_free = res->free_before;
        res->reserve = agent_reserve_bytes(reserve, res->fs_size);

        z->unit = MAX((uint64_t) sv.f_bsize, ZF_MIN_UNIT);
        if (z->unit > ZF_MAX_UNIT || (z->unit & (z->unit - 1)) != 0)
                z->unit = ZF_MIN_UNIT;
        z->chunk = o->chunk_size ?: AGENT_ZEROFILL_CHUNK_DEFAULT;
        /* Slow rates: smaller chunks, so the pacing is smooth and the reserve check frequent. */
        if (o->rate > 0)
                z->chunk = MIN(z->chunk, o->rate / 4);
        z->chunk = MAX(z->chunk - z->chunk % z->unit, z->unit);

        target = res->free_before > res->reserve ? res->free_before - res->reserve : 0;
        if (o->max_bytes > 0)
                target = MIN(target, o->max_bytes);
        target -= target % z->unit;

        if (res->free_before < res->reserve) {
                res->outcome = AGENT_ZEROFILL_STOPPED_AT_RESERVE;
                return 0;
        }
        if (o->dry_run || target == 0) {
                res->bytes_zeroed = o->dry_run ? target : 0;
                res->outcome = AGENT_ZEROFILL_OK;
                return 0;
        }

        if (!o->keep_ioprio)
                zf_ioprio_idle(z);

        r = zf_open(z);
        if (r < 0)
                return r;
        r = zf_nocompress(z);
        if (r < 0 && o->require_nocompress)
                return log_debug_errno(r, "Cannot mark the fill file no-compress: %m");

        if (posix_memalign(&z->buf, ZF_MAX_UNIT, z->chunk) != 0)
                return -ENOMEM;
        memset(z->buf, 0, z->chunk);

        outcome = zf_loop(z, target, &error);

        /* Release. Flush first, so the zeros reach the virtual disk instead of vanishing with
         * the page cache when the file is freed - except when free space fell under the
         * reserve: then giving the space back comes first (what O_DIRECT wrote is already
         * on the device; buffered data not yet synced is dropped and not counted). */
        if (outcome != AGENT_ZEROFILL_STOPPED_AT_RESERVE && z->written > z->synced) {
                r = zf_sync_range(z);
                if (r < 0 && outcome != AGENT_ZEROFILL_ERROR) {
                        outcome = AGENT_ZEROFILL_ERROR;
                        error = r;
                }
        }
        res->bytes_zeroed = z->durable;
        res->outcome = outcome;
        res->error = error;
        return 0;
}

/* After the release: xfs frees an unlinked inode's blocks in a background worker (inodegc)
 * that syncfs does not wait for, so the space comes back a moment later. Wait, boundedly,
 * until free space is back near where it started, so free_after reports the real state. If
 * another writer took space meanwhile, this costs at most SETTLE_MAX_NS once. */
static void zf_settle_free(ZeroFill *z) {
        AgentZerofillResult *res = z->res;
        uint64_t slack = MAX(res->fs_size / 100, UINT64_C(4) << 20);
        uint64_t want = res->free_before > slack ? res->free_before - slack : 0;
        uint64_t deadline = now_ns() + SETTLE_MAX_NS, f;

        for (;;) {
                if (zf_free_bytes(z, z->dirfd, &f) < 0)
                        return;
                res->free_after = f;
                if (z->written == 0 || f >= want || now_ns() >= deadline)
                        return;
                sleep_ns(SETTLE_POLL_NS);
        }
}

int agent_zerofill(
        const char *mount_point, const AgentZerofillOptions *opts, AgentZerofillResult *ret) {
        static const AgentZerofillOptions defaults = {};
        AgentZerofillResult res = {};
        AgentReserve reserve;
        ZeroFill z = {
                .dirfd = -1,
                .fd = -1,
                .old_ioprio = -1,
                .res = &res,
                .probe = { .reserved_fd = -1, .may_use_fd = -1 },
        };
        uint64_t t0 = now_ns();
        int r;

        if (!mount_point || !ret)
                return -EINVAL;
        if (!opts)
                opts = &defaults;
        z.opts = opts;
        if (opts->reserve_spec) {
                r = agent_reserve_parse(opts->reserve_spec, &reserve, NULL);
                if (r < 0)
                        return -EINVAL;
        } else
                reserve = opts->reserve;
        if (reserve.basis_points > AGENT_RESERVE_BASIS_POINTS_MAX ||
            opts->chunk_size > AGENT_ZEROFILL_CHUNK_MAX)
                return -EINVAL;
        res.dry_run = opts->dry_run;

        z.dirfd = open(mount_point, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY);
        if (z.dirfd < 0)
                r = negative_errno();
        else
                r = zf_run(&z, &reserve);

        if (z.fd >= 0) {
                /* Closing the last descriptor of the unlinked file frees its blocks. */
                (void) close(z.fd);
                z.fd = -1;
                /* btrfs frees at transaction commit and xfs inactivates inodes in the
                 * background: sync so "free after" is real and the space is back now. */
                if (z.written > 0)
                        (void) syncfs(z.dirfd);
        }
        zf_ioprio_restore(&z);
        free(z.buf);

        if (r < 0) {
                res.outcome = AGENT_ZEROFILL_ERROR;
                res.error = r;
        }
        if (z.dirfd >= 0) {
                if (!res.dry_run)
                        zf_settle_free(&z);
                (void) close(z.dirfd);
        }
        free_probe_close(&z.probe);
        res.duration_ns = now_ns() - t0;
        *ret = res;
        return 0;
}
