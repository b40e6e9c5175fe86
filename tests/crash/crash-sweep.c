/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * crash-sweep: proves at the library level that a crash or an I/O error at any point of a
 * compaction leaves a valid image.
 *
 *   crash-sweep crash IMAGE WORKDIR [--every N] [--torn N] [--seed S] [--batch BYTES]
 *                     [--epoch-every N]
 *       Runs a compaction of a copy of IMAGE in memory under io-log, then rebuilds the file as
 *       a power cut would leave it: (a) after each flush, with nothing unflushed; (b) after
 *       each write, with every earlier write landed in order; (c) N times per epoch between two
 *       flushes, a random subset of that epoch's writes landed and some multi-sector writes
 *       torn (whole 512-byte sectors); --epoch-every N keeps every Nth flush state and torn
 *       epoch only (the final state always). For each state: `qemu-img check`
 *       exits 0 or 3 (leaks only), `qemu-img compare` against IMAGE says identical, and a
 *       re-run of the compaction (library, on the file) ends with check exit 0 and the same
 *       size as the uninterrupted run.
 *   crash-sweep faults IMAGE WORKDIR [--once-only] [--batch BYTES]
 *       For every I/O event x {EIO, ENOSPC} x {once, always}, plus the nth write and flush
 *       failing: the compaction returns an error (or succeeds when the fault never fires), the
 *       image passes check (0 or 3) and compare, and a re-run completes with check exit 0.
 *
 * Prints one line per failing state and a summary; exit 0 only when every state passed.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io.h"
#include "macro.h"
#include "qcow2.h"

/* Barriers per batch of this many bytes of copies (--batch; small: moves span batches). */
static uint64_t batch_bytes = 256 * 1024;

static const char *orig_path, *workdir;
static uint8_t *orig;
static size_t orig_len;
static uint64_t final_size;
static unsigned long states_ok, states_failed;

static int read_file(const char *path, uint8_t **ret, size_t *ret_len) {
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                close(fd);
                return -errno;
        }
        uint8_t *buf = malloc((size_t) st.st_size + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        ssize_t n = pread(fd, buf, (size_t) st.st_size, 0);
        close(fd);
        if (n != st.st_size) {
                free(buf);
                return -EIO;
        }
        *ret = buf;
        *ret_len = (size_t) st.st_size;
        return 0;
}

static int write_file(const char *path, const uint8_t *data, size_t len) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        size_t pos = 0;
        while (pos < len) {
                ssize_t n = pwrite(fd, data + pos, len - pos, (off_t) pos);
                if (n <= 0) {
                        close(fd);
                        return -EIO;
                }
                pos += (size_t) n;
        }
        close(fd);
        return 0;
}

/* Runs a command quietly; returns its exit status (or -1). */
static int run_quiet(const char *const cargv[]) {
        char *const *argv;
        /* execvp's prototype predates const; the strings are never modified */
        memcpy(&argv, &cargv, sizeof(argv));
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                int fd = open("/dev/null", O_WRONLY);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                execvp(argv[0], argv);
                _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0)
                return -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int qemu_check(const char *path) {
        const char *argv[] = { "qemu-img", "check", "-q", "-f", "qcow2", path, NULL };
        return run_quiet(argv);
}

static int qemu_compare(const char *a, const char *b) {
        const char *argv[] = {
                "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", a, b, NULL
        };
        return run_quiet(argv);
}

/* Compacts a file through io-posix, as reclaimctl does. */
static int compact_file(const char *path, uint64_t *ret_size, char *why, size_t whylen) {
        IoBackend *io = NULL;
        Qcow2Image *img = NULL;
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        int r;

        r = io_posix_open(path, true, &io);
        if (r >= 0)
                r = qcow2_open(io, QCOW2_OPEN_WRITE, &img, &diag);
        if (r >= 0)
                r = qcow2_compact(
                        img, &(Qcow2CompactOptions){ .batch_bytes = batch_bytes }, &st, &diag);
        if (r >= 0)
                *ret_size = st.file_size_after;
        else
                snprintf(why, whylen, "%s", diag.message);
        qcow2_close(img);
        io_free(io);
        return r;
}

/* Verifies one crashed/faulted state held in data[0..len). */
static void verify_state(const char *label, const uint8_t *data, size_t len) {
        char path[4096], why[512] = "";
        uint64_t size = 0;
        int rc;

        snprintf(path, sizeof(path), "%s/state.qcow2", workdir);
        if (write_file(path, data, len) < 0) {
                printf("FAIL %s: cannot write state\n", label);
                states_failed++;
                return;
        }
        rc = qemu_check(path);
        if (rc != 0 && rc != 3) {
                printf("FAIL %s: qemu-img check exit %d (corruption)\n", label, rc);
                states_failed++;
                snprintf(path + strlen(path), sizeof(path) - strlen(path), ".fail");
                (void) write_file(path, data, len);
                return;
        }
        rc = qemu_compare(orig_path, path);
        if (rc != 0) {
                printf("FAIL %s: qemu-img compare exit %d (guest data changed)\n", label, rc);
                states_failed++;
                return;
        }
        {
                /* Keep the crashed state until it passed, for whoever has to debug it. */
                char keep[4200];
                snprintf(keep, sizeof(keep), "%s.before-rerun", path);
                (void) write_file(keep, data, len);
        }
        rc = compact_file(path, &size, why, sizeof(why));
        if (rc < 0) {
                printf("FAIL %s: re-run failed: %s (%s)\n", label, strerror(-rc), why);
                states_failed++;
                return;
        }
        rc = qemu_check(path);
        if (rc != 0) {
                printf("FAIL %s: after re-run qemu-img check exit %d\n", label, rc);
                states_failed++;
                if (getenv("CRASH_SWEEP_STOP"))
                        exit(1); /* keep state.qcow2(.before-rerun) for debugging */
                return;
        }
        if (qemu_compare(orig_path, path) != 0) {
                printf("FAIL %s: after re-run guest data differs\n", label);
                states_failed++;
                return;
        }
        if (size != final_size) {
                printf("FAIL %s: re-run ended at %" PRIu64 " bytes, uninterrupted run at %" PRIu64
                       "\n",
                       label,
                       size,
                       final_size);
                states_failed++;
                if (getenv("CRASH_SWEEP_STOP"))
                        exit(1); /* keep state.qcow2(.before-rerun) for debugging */
                return;
        }
        states_ok++;
}

/* Applies log entries [0, upto) to a copy of the original. */
static uint8_t *replay(const IoLogEntry *e, size_t upto, size_t *ret_len) {
        size_t len = orig_len, cap = orig_len;
        uint8_t *d = malloc(cap + 1);
        if (!d)
                abort();
        memcpy(d, orig, orig_len);
        for (size_t i = 0; i < upto; i++) {
                switch (e[i].kind) {
                case IO_LOG_WRITE:
                        if (e[i].off + e[i].len > cap) {
                                cap = e[i].off + e[i].len;
                                d = realloc(d, cap);
                                if (!d)
                                        abort();
                        }
                        if (e[i].off + e[i].len > len) {
                                memset(d + len, 0, e[i].off + e[i].len - len);
                                len = e[i].off + e[i].len;
                        }
                        memcpy(d + e[i].off, e[i].data, e[i].len);
                        break;
                case IO_LOG_TRUNCATE:
                        if (e[i].off < len)
                                len = e[i].off;
                        break;
                case IO_LOG_PUNCH: {
                        size_t start = MIN((size_t) e[i].off, len);
                        memset(d + start, 0, MIN((size_t) e[i].len, len - start));
                        break;
                }
                default:
                        break;
                }
        }
        *ret_len = len;
        return d;
}

/* Deterministic pseudo-random numbers (xorshift64*), so a failing state can be replayed. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dULL;
}

/*
 * A power cut inside epoch (the writes between flush `from` and the next flush `to`): all of
 * the epochs before landed; of this one's writes, a random subset landed, in any order, and
 * a write that spans several 512-byte sectors may be torn (some of its sectors landed).
 */
static uint8_t *replay_torn(const IoLogEntry *e, size_t from, size_t to, size_t *ret_len) {
        size_t len;
        uint8_t *d = replay(e, from, &len);

        for (size_t i = from; i < to; i++) {
                if (e[i].kind != IO_LOG_WRITE || (rng() & 1))
                        continue;
                bool torn = (rng() % 3) == 0;
                for (uint64_t s = e[i].off & ~511ULL; s < e[i].off + e[i].len; s += 512) {
                        if (torn && (rng() & 1))
                                continue;
                        uint64_t lo = MAX(s, e[i].off), hi = MIN(s + 512, e[i].off + e[i].len);
                        if (hi > len)
                                continue; /* writes never extend the file */
                        memcpy(d + lo, e[i].data + (lo - e[i].off), hi - lo);
                }
        }
        *ret_len = len;
        return d;
}

static int sweep_crash(unsigned every, unsigned torn_per_epoch, unsigned epoch_every) {
        IoBackend *mem = NULL, *log = NULL;
        Qcow2Image *img = NULL;
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        const IoLogEntry *e;
        size_t n;
        char label[128];
        int r;

        r = io_memory_new(orig, orig_len, &mem);
        if (r < 0)
                return r;
        r = io_log_new(mem, &log);
        if (r < 0)
                return r;
        r = qcow2_open(log, QCOW2_OPEN_WRITE, &img, &diag);
        if (r >= 0)
                r = qcow2_compact(
                        img, &(Qcow2CompactOptions){ .batch_bytes = batch_bytes }, &st, &diag);
        if (r < 0) {
                fprintf(stderr, "compaction of the original failed: %s\n", diag.message);
                return r;
        }
        final_size = st.file_size_after;
        qcow2_close(img);
        if (final_size >= orig_len || st.clusters_moved == 0) {
                fprintf(stderr,
                        "the image needs no compaction (%zu -> %" PRIu64 " bytes, %" PRIu64
                        " moved): the sweep would prove nothing\n",
                        orig_len,
                        final_size,
                        st.clusters_moved);
                return -EINVAL;
        }
        e = io_log_entries(log, &n);
        printf("log: %zu entries, final size %" PRIu64 " (from %zu)\n", n, final_size, orig_len);

        /* (a) after each flush, nothing unflushed */
        unsigned long flushes = 0;
        for (size_t i = 0; i <= n; i++) {
                if (i < n && e[i].kind != IO_LOG_FLUSH)
                        continue;
                unsigned long f = flushes++;
                if (i < n && f % epoch_every != 0)
                        continue;
                size_t len;
                uint8_t *d = replay(e, i, &len);
                snprintf(label, sizeof(label), "flush-state %lu (entry %zu)", f, i);
                verify_state(label, d, len);
                free(d);
        }
        /* (c) inside each epoch: random subsets of its writes, some of them torn */
        size_t prev = 0;
        unsigned long epoch = 0;
        for (size_t i = 0; i <= n; i++) {
                if (i < n && e[i].kind != IO_LOG_FLUSH)
                        continue;
                for (unsigned v = 0; v < torn_per_epoch && i > prev + 1 && epoch % epoch_every == 0;
                     v++) {
                        size_t len;
                        uint8_t *d = replay_torn(e, prev, i, &len);
                        snprintf(label, sizeof(label), "torn-state epoch %lu variant %u", epoch, v);
                        verify_state(label, d, len);
                        free(d);
                }
                prev = i + 1;
                epoch++;
        }
        /* (b) after each write, every earlier write landed in order */
        unsigned long k = 0;
        for (size_t i = 0; i < n; i++) {
                if (e[i].kind != IO_LOG_WRITE && e[i].kind != IO_LOG_TRUNCATE)
                        continue;
                if (k++ % every != 0)
                        continue;
                size_t len;
                uint8_t *d = replay(e, i + 1, &len);
                snprintf(label, sizeof(label), "write-state entry %zu", i);
                verify_state(label, d, len);
                free(d);
        }
        io_free(log);
        return 0;
}

static void fault_case(const IoFaultSpec *spec, const char *label) {
        IoBackend *mem = NULL, *fault = NULL;
        Qcow2Image *img = NULL;
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        int r;

        if (io_memory_new(orig, orig_len, &mem) < 0 || io_fault_new(mem, spec, &fault) < 0)
                abort();
        r = qcow2_open(fault, QCOW2_OPEN_WRITE, &img, &diag);
        if (r >= 0)
                r = qcow2_compact(
                        img, &(Qcow2CompactOptions){ .batch_bytes = batch_bytes }, &st, &diag);
        qcow2_close(img);
        if (r >= 0 && io_fault_injected(fault) > 0) {
                printf("FAIL %s: a fault was injected but the compaction reported success\n",
                       label);
                states_failed++;
        } else if (r < 0 && io_fault_injected(fault) == 0) {
                printf("FAIL %s: compaction failed without a fault: %s\n", label, diag.message);
                states_failed++;
        }
        size_t len;
        const uint8_t *d = io_memory_data(mem, &len); /* the layer below the filter */
        verify_state(label, d, len);
        io_free(fault);
}

static bool faults_always = true;

static int sweep_faults(void) {
        static const int errs[] = { EIO, ENOSPC };
        char label[128];

        for (int ev = 0; ev < _IO_EV_MAX; ev++)
                for (size_t k = 0; k < ELEMENTSOF(errs); k++)
                        for (int always = 0; always <= (faults_always ? 1 : 0); always++) {
                                IoFaultSpec spec = { .op = IO_FAULT_OP_EVENT,
                                                     .event = (IoEvent) ev,
                                                     .nth = 1,
                                                     .error = errs[k],
                                                     .always = always };
                                snprintf(
                                        label,
                                        sizeof(label),
                                        "fault %s %s %s",
                                        io_event_to_string((IoEvent) ev),
                                        errs[k] == EIO ? "EIO" : "ENOSPC",
                                        always ? "always" : "once");
                                fault_case(&spec, label);
                        }
        /* The nth write / flush failing (short writes too), spread over the run. */
        for (uint64_t nth = 1; nth <= 64; nth = nth * 2 + 1) {
                IoFaultSpec w = {
                        .op = IO_FAULT_OP_PWRITE, .nth = nth, .error = EIO, .short_write = true
                };
                snprintf(label, sizeof(label), "fault short write #%" PRIu64, nth);
                fault_case(&w, label);
                IoFaultSpec f = { .op = IO_FAULT_OP_FLUSH, .nth = nth, .error = EIO };
                snprintf(label, sizeof(label), "fault flush #%" PRIu64, nth);
                fault_case(&f, label);
        }
        return 0;
}

int main(int argc, char *argv[]) {
        unsigned every = 1, torn = 2, epoch_every = 1;
        int r;

        if (argc < 4 || (strcmp(argv[1], "crash") && strcmp(argv[1], "faults"))) {
                fprintf(stderr, "Usage: %s crash|faults IMAGE WORKDIR [--every N]\n", argv[0]);
                return 2;
        }
        orig_path = argv[2];
        workdir = argv[3];
        for (int i = 4; i < argc; i += 2) {
                if (i + 1 >= argc && strcmp(argv[i], "--once-only") != 0)
                        break;
                if (strcmp(argv[i], "--every") == 0)
                        every = (unsigned) MAX(atoi(argv[i + 1]), 1);
                else if (strcmp(argv[i], "--epoch-every") == 0)
                        epoch_every = (unsigned) MAX(atoi(argv[i + 1]), 1);
                else if (strcmp(argv[i], "--torn") == 0)
                        torn = (unsigned) MAX(atoi(argv[i + 1]), 0);
                else if (strcmp(argv[i], "--once-only") == 0) {
                        faults_always = false;
                        i--; /* takes no value */
                } else if (strcmp(argv[i], "--seed") == 0)
                        rng_state = strtoull(argv[i + 1], NULL, 0) | 1;
                else if (strcmp(argv[i], "--batch") == 0)
                        batch_bytes = MAX(strtoull(argv[i + 1], NULL, 0), 1ULL);
        }
        r = read_file(orig_path, &orig, &orig_len);
        if (r < 0) {
                fprintf(stderr, "cannot read %s: %s\n", orig_path, strerror(-r));
                return 1;
        }
        if (strcmp(argv[1], "crash") == 0)
                r = sweep_crash(every, torn, epoch_every);
        else {
                /* The uninterrupted result, for the "same final size" check. */
                char path[4096], why[512];
                snprintf(path, sizeof(path), "%s/reference.qcow2", workdir);
                if (write_file(path, orig, orig_len) < 0 ||
                    compact_file(path, &final_size, why, sizeof(why)) < 0) {
                        fprintf(stderr, "reference compaction failed\n");
                        return 1;
                }
                r = sweep_faults();
        }
        if (r < 0)
                return 1;
        printf("%lu states passed, %lu failed\n", states_ok, states_failed);
        free(orig);
        return states_failed ? 1 : 0;
}
