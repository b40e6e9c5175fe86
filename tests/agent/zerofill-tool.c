/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * zerofill-tool: a thin test driver over agent/ (fs-enum, trim, zerofill) for the integration
 * tests, until the real reclaim-agent exists. Prints "key=value" lines on stdout.
 *
 *   zerofill-tool zero MOUNT [--reserve SPEC] [--rate SIZE] [--chunk SIZE] [--max-bytes SIZE]
 *                      [--sync-interval SIZE] [--dry-run] [--buffered] [--no-tmpfile]
 *                      [--keep-ioprio] [--nocompress] [--watch-free[=USEC]]
 *                      [--watch-alloc DIR] [--progress]
 *   zerofill-tool trim MOUNT [--minlen SIZE]
 *   zerofill-tool list [--mountinfo FILE] [--sysfs DIR] [--all]
 *
 * --watch-free samples statvfs on MOUNT from a second thread (every USEC microseconds,
 * default 1000) for the whole run, release included, and reports the lowest free space seen:
 * the reserve test's oracle. On btrfs, statfs lags until the next transaction commit; with
 * --watch-alloc DIR (/sys/fs/btrfs/UUID/allocation/data, found by the test script) the
 * watcher subtracts DIR's bytes_reserved and bytes_may_use, as agent_free_space() does, but
 * computed independently here. The driver also measures the write rate itself, from the start
 * of the call to the last progress callback (after the last chunk).
 *
 * Exit: 0 ok/stopped/cancelled (zero), done/not supported (trim); 1 error; 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "fs-enum.h"
#include "log.h"
#include "macro.h"
#include "size.h"
#include "trim.h"
#include "zerofill.h"

static volatile sig_atomic_t arg_cancel = 0;

static const char *arg_reserve = "0";
static uint64_t arg_rate, arg_chunk, arg_max_bytes, arg_sync_interval, arg_minlen;
static bool arg_dry_run, arg_buffered, arg_no_tmpfile, arg_keep_ioprio, arg_nocompress;
static bool arg_progress, arg_all;
static long arg_watch_usec = -1;
static const char *arg_mountinfo, *arg_sysfs, *arg_watch_alloc;
static bool usage_error; /* exit 2 rather than 1 */

static int usage(int r) {
        usage_error = true;
        return r;
}

static uint64_t now_ns(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static void on_signal(int sig) {
        arg_cancel = 1;
}

/* ---- free-space watcher ---- */

typedef struct Watch {
        int fd;
        int reserved_fd, may_use_fd; /* btrfs allocation counters, or -1 */
        long usec;
        atomic_bool stop;
        uint64_t min_free;
        uint64_t samples;
} Watch;

static uint64_t read_counter(int fd) {
        char buf[32] = "";

        if (fd < 0 || pread(fd, buf, sizeof(buf) - 1, 0) <= 0)
                return 0;
        return strtoull(buf, NULL, 10);
}

static void *watch_thread(void *p) {
        Watch *w = p;
        struct timespec ts = { .tv_sec = w->usec / 1000000, .tv_nsec = (w->usec % 1000000) * 1000 };

        while (!atomic_load(&w->stop)) {
                struct statvfs sv;
                if (fstatvfs(w->fd, &sv) == 0) {
                        uint64_t f = (uint64_t) sv.f_bavail * sv.f_frsize;
                        uint64_t held = read_counter(w->reserved_fd) + read_counter(w->may_use_fd);
                        f = f > held ? f - held : 0;
                        w->min_free = MIN(w->min_free, f);
                        w->samples++;
                }
                (void) nanosleep(&ts, NULL);
        }
        return NULL;
}

/* ---- progress: also the rate measurement ---- */

typedef struct Meter {
        uint64_t t0;
        uint64_t last_ns;
        uint64_t last_bytes;
} Meter;

static int on_progress(const AgentZerofillProgress *p, void *userdata) {
        Meter *m = userdata;

        m->last_ns = now_ns();
        m->last_bytes = p->bytes_written;
        if (arg_progress) {
                printf("progress bytes=%" PRIu64 " free=%" PRIu64 "\n",
                       p->bytes_written,
                       p->free_now);
                fflush(stdout);
        }
        return 0;
}

static int verb_zero(const char *mount_point) {
        AgentZerofillResult res;
        Meter meter = {};
        Watch w = { .fd = -1, .reserved_fd = -1, .may_use_fd = -1, .min_free = UINT64_MAX };
        pthread_t th;
        bool watching = false;
        int r;

        AgentZerofillOptions o = {
                .reserve_spec = arg_reserve,
                .rate = arg_rate,
                .chunk_size = arg_chunk,
                .max_bytes = arg_max_bytes,
                .sync_interval = arg_sync_interval,
                .dry_run = arg_dry_run,
                .no_direct = arg_buffered,
                .no_tmpfile = arg_no_tmpfile,
                .keep_ioprio = arg_keep_ioprio,
                .require_nocompress = arg_nocompress,
                .cancel = &arg_cancel,
                .progress = on_progress,
                .userdata = &meter,
        };

        if (arg_watch_usec >= 0) {
                w.fd = open(mount_point, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (w.fd < 0)
                        return log_error_errno(
                                negative_errno(), "Failed to open %s: %m", mount_point);
                w.usec = arg_watch_usec ?: 1000;
                if (arg_watch_alloc) {
                        _cleanup_free_ char *a = NULL, *b = NULL;
                        if (asprintf(&a, "%s/bytes_reserved", arg_watch_alloc) < 0 ||
                            asprintf(&b, "%s/bytes_may_use", arg_watch_alloc) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory");
                        w.reserved_fd = open(a, O_RDONLY | O_CLOEXEC);
                        w.may_use_fd = open(b, O_RDONLY | O_CLOEXEC);
                        if (w.reserved_fd < 0 || w.may_use_fd < 0)
                                return log_error_errno(
                                        -errno, "Failed to open %s: %m", arg_watch_alloc);
                }
                r = -pthread_create(&th, NULL, watch_thread, &w);
                if (r < 0)
                        return log_error_errno(r, "Failed to start the watcher: %m");
                watching = true;
        }

        meter.t0 = now_ns();
        r = agent_zerofill(mount_point, &o, &res);

        if (watching) {
                atomic_store(&w.stop, true);
                (void) pthread_join(th, NULL);
                (void) close(w.fd);
                if (w.reserved_fd >= 0)
                        (void) close(w.reserved_fd);
                if (w.may_use_fd >= 0)
                        (void) close(w.may_use_fd);
        }
        if (r < 0)
                return log_error_errno(r, "Invalid zero-fill options: %m");

        printf("outcome=%s\n", agent_zerofill_outcome_to_string(res.outcome));
        printf("error=%s\n", res.error ? strerrorname_np(-res.error) : "0");
        printf("bytes_zeroed=%" PRIu64 "\n", res.bytes_zeroed);
        printf("fs_size=%" PRIu64 "\n", res.fs_size);
        printf("reserve=%" PRIu64 "\n", res.reserve);
        printf("free_before=%" PRIu64 "\n", res.free_before);
        printf("free_after=%" PRIu64 "\n", res.free_after);
        printf("min_free=%" PRIu64 "\n", res.min_free);
        printf("duration_ns=%" PRIu64 "\n", res.duration_ns);
        printf("dry_run=%d\n", res.dry_run);
        printf("direct_io=%d\n", res.direct_io);
        printf("tmpfile=%d\n", res.tmpfile);
        printf("idle_io=%d\n", res.idle_io);
        printf("nocompress=%d\n", res.nocompress);
        if (meter.last_ns > meter.t0)
                printf("measured_rate=%.0f\n",
                       (double) meter.last_bytes * 1e9 / (double) (meter.last_ns - meter.t0));
        if (watching) {
                printf("watch_min_free=%" PRIu64 "\n", w.min_free);
                printf("watch_samples=%" PRIu64 "\n", w.samples);
        }
        fflush(stdout);
        if (res.outcome == AGENT_ZEROFILL_ERROR)
                return log_error_errno(res.error, "Zero-fill of %s failed: %m", mount_point);
        return 0;
}

static int verb_trim(const char *mount_point) {
        uint64_t trimmed = 0;
        int r = agent_trim(mount_point, arg_minlen, &trimmed);

        printf("result=%s\n", r == 0 ? "done" : r > 0 ? "not-supported" : "error");
        printf("trimmed=%" PRIu64 "\n", r == 0 ? trimmed : 0);
        printf("error=%s\n", r < 0 ? strerrorname_np(-r) : "0");
        fflush(stdout);
        if (r < 0)
                return log_error_errno(r, "FITRIM on %s failed: %m", mount_point);
        return 0;
}

static int verb_list(void) {
        _cleanup_(agent_fs_list_freep) AgentFsList *l = NULL;
        int r;

        r = agent_fs_enumerate(arg_mountinfo, arg_all ? AGENT_FS_INCLUDE_READ_ONLY : 0, &l);
        if (r < 0)
                return log_error_errno(r, "Failed to read the mount table: %m");
        r = agent_fs_classify_all(l, arg_sysfs);
        if (r < 0)
                return log_error_errno(r, "Failed to classify: %m");
        for (size_t i = 0; i < l->n; i++) {
                const AgentFs *fs = &l->items[i];
                printf("mount=%s\tdevice=%s\tdevnum=%u:%u\tblock=%u:%u\tfstype=%s\tmethod=%s\t"
                       "discard_max_bytes=%" PRIu64 "\tencrypted=%d\tcompressed=%d\treason=%s\n",
                       fs->mount_point,
                       fs->device,
                       major(fs->devnum),
                       minor(fs->devnum),
                       major(fs->block_devnum),
                       minor(fs->block_devnum),
                       fs->fstype,
                       agent_fs_method_to_string(fs->method),
                       fs->discard_max_bytes,
                       fs->encrypted,
                       fs->compressed,
                       fs->reason ?: "");
        }
        return 0;
}

static int parse_size_arg(const char *opt, const char *v, uint64_t *ret) {
        int r = parse_size(v, ret);

        if (r < 0)
                return log_error_errno(r, "Invalid %s '%s': %m", opt, v);
        return 0;
}

static int run(int argc, char *argv[]) {
        enum {
                OPT_RESERVE = 0x100,
                OPT_RATE,
                OPT_CHUNK,
                OPT_MAX_BYTES,
                OPT_SYNC_INTERVAL,
                OPT_DRY_RUN,
                OPT_BUFFERED,
                OPT_NO_TMPFILE,
                OPT_KEEP_IOPRIO,
                OPT_NOCOMPRESS,
                OPT_WATCH_FREE,
                OPT_WATCH_ALLOC,
                OPT_PROGRESS,
                OPT_MINLEN,
                OPT_MOUNTINFO,
                OPT_SYSFS,
                OPT_ALL,
        };
        static const struct option options[] = {
                { "reserve", required_argument, NULL, OPT_RESERVE },
                { "rate", required_argument, NULL, OPT_RATE },
                { "chunk", required_argument, NULL, OPT_CHUNK },
                { "max-bytes", required_argument, NULL, OPT_MAX_BYTES },
                { "sync-interval", required_argument, NULL, OPT_SYNC_INTERVAL },
                { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                { "buffered", no_argument, NULL, OPT_BUFFERED },
                { "no-tmpfile", no_argument, NULL, OPT_NO_TMPFILE },
                { "keep-ioprio", no_argument, NULL, OPT_KEEP_IOPRIO },
                { "nocompress", no_argument, NULL, OPT_NOCOMPRESS },
                { "watch-free", optional_argument, NULL, OPT_WATCH_FREE },
                { "watch-alloc", required_argument, NULL, OPT_WATCH_ALLOC },
                { "progress", no_argument, NULL, OPT_PROGRESS },
                { "minlen", required_argument, NULL, OPT_MINLEN },
                { "mountinfo", required_argument, NULL, OPT_MOUNTINFO },
                { "sysfs", required_argument, NULL, OPT_SYSFS },
                { "all", no_argument, NULL, OPT_ALL },
                {},
        };
        struct sigaction sa = { .sa_handler = on_signal };
        const char *reason;
        AgentReserve reserve;
        int c, r;

        log_set_program_name("zerofill-tool");
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0) {
                r = 0;
                switch (c) {
                case OPT_RESERVE:
                        arg_reserve = optarg;
                        break;
                case OPT_RATE:
                        r = parse_size_arg("--rate", optarg, &arg_rate);
                        break;
                case OPT_CHUNK:
                        r = parse_size_arg("--chunk", optarg, &arg_chunk);
                        break;
                case OPT_MAX_BYTES:
                        r = parse_size_arg("--max-bytes", optarg, &arg_max_bytes);
                        break;
                case OPT_SYNC_INTERVAL:
                        r = parse_size_arg("--sync-interval", optarg, &arg_sync_interval);
                        break;
                case OPT_DRY_RUN:
                        arg_dry_run = true;
                        break;
                case OPT_BUFFERED:
                        arg_buffered = true;
                        break;
                case OPT_NO_TMPFILE:
                        arg_no_tmpfile = true;
                        break;
                case OPT_KEEP_IOPRIO:
                        arg_keep_ioprio = true;
                        break;
                case OPT_NOCOMPRESS:
                        arg_nocompress = true;
                        break;
                case OPT_WATCH_FREE:
                        arg_watch_usec = optarg ? strtol(optarg, NULL, 10) : 0;
                        if (arg_watch_usec < 0 || arg_watch_usec > 1000000)
                                r = log_error_errno(-EINVAL, "Invalid --watch-free '%s'", optarg);
                        break;
                case OPT_WATCH_ALLOC:
                        arg_watch_alloc = optarg;
                        break;
                case OPT_PROGRESS:
                        arg_progress = true;
                        break;
                case OPT_MINLEN:
                        r = parse_size_arg("--minlen", optarg, &arg_minlen);
                        break;
                case OPT_MOUNTINFO:
                        arg_mountinfo = optarg;
                        break;
                case OPT_SYSFS:
                        arg_sysfs = optarg;
                        break;
                case OPT_ALL:
                        arg_all = true;
                        break;
                default:
                        return usage(-EINVAL);
                }
                if (r < 0)
                        return usage(r);
        }
        if (optind >= argc)
                return usage(log_error_errno(-EINVAL, "Missing verb: zero, trim or list"));

        r = agent_reserve_parse(arg_reserve, &reserve, &reason);
        if (r < 0)
                return usage(log_error_errno(r, "Invalid --reserve '%s': %s", arg_reserve, reason));

        /* No SA_RESTART: a sleeping fill wakes up and sees the flag at once. */
        (void) sigaction(SIGTERM, &sa, NULL);
        (void) sigaction(SIGINT, &sa, NULL);

        if (strcmp(argv[optind], "list") == 0 && optind + 1 == argc)
                return verb_list();
        if (optind + 2 != argc)
                return usage(
                        log_error_errno(-EINVAL, "Usage: zerofill-tool zero|trim MOUNT [OPTIONS]"));
        if (strcmp(argv[optind], "zero") == 0)
                return verb_zero(argv[optind + 1]);
        if (strcmp(argv[optind], "trim") == 0)
                return verb_trim(argv[optind + 1]);
        return usage(log_error_errno(-EINVAL, "Unknown verb '%s'", argv[optind]));
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);

        return usage_error ? 2 : r < 0 ? 1 : 0;
}
