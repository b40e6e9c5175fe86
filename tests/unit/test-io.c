/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for common/io*.c: the dispatchers, io-memory, io-posix (including QEMU's OFD
 * image locks, against a real qemu-io when installed), io-fault and io-log.
 *
 * pread64/pwrite64/lseek64 are wrapped at link time (-Wl,--wrap=...) so the tests can make
 * the kernel return EINTR, short transfers or "no SEEK_DATA here" on demand. Unarmed, the
 * wrappers call straight through.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "io.h"
#include "macro.h"

/* ---- libc wrappers ---- */

static struct {
        bool armed;
        unsigned eintr;      /* fail this many calls with EINTR first */
        size_t max_chunk;    /* cap each transfer at this many bytes (0: no cap) */
        int rw_errno;        /* when set, fail every pread/pwrite with it */
        int lseek_errno;     /* when set, fail SEEK_DATA/SEEK_HOLE with it */
        unsigned rw_calls;   /* pread/pwrite calls seen while armed */
        unsigned seek_calls; /* SEEK_DATA/SEEK_HOLE calls seen while armed */
} wrap;

ssize_t __real_pread64(int fd, void *buf, size_t n, off_t off);
ssize_t __real_pwrite64(int fd, const void *buf, size_t n, off_t off);
off_t __real_lseek64(int fd, off_t off, int whence);
ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pwrite64(int fd, const void *buf, size_t n, off_t off);
off_t __wrap_lseek64(int fd, off_t off, int whence);

static int wrap_rw_begin(size_t *n) {
        if (!wrap.armed)
                return 0;
        wrap.rw_calls++;
        if (wrap.eintr > 0) {
                wrap.eintr--;
                return EINTR;
        }
        if (wrap.rw_errno)
                return wrap.rw_errno;
        if (wrap.max_chunk > 0 && *n > wrap.max_chunk)
                *n = wrap.max_chunk;
        return 0;
}

ssize_t __wrap_pread64(int fd, void *buf, size_t n, off_t off) {
        int e = wrap_rw_begin(&n);

        if (e) {
                errno = e;
                return -1;
        }
        return __real_pread64(fd, buf, n, off);
}

ssize_t __wrap_pwrite64(int fd, const void *buf, size_t n, off_t off) {
        int e = wrap_rw_begin(&n);

        if (e) {
                errno = e;
                return -1;
        }
        return __real_pwrite64(fd, buf, n, off);
}

off_t __wrap_lseek64(int fd, off_t off, int whence) {
        if (wrap.armed && (whence == SEEK_DATA || whence == SEEK_HOLE)) {
                wrap.seek_calls++;
                if (wrap.lseek_errno) {
                        errno = wrap.lseek_errno;
                        return -1;
                }
        }
        return __real_lseek64(fd, off, whence);
}

static void wrap_reset(void) {
        memset(&wrap, 0, sizeof(wrap));
}

/* ---- helpers and fixtures ---- */

static const char *tmp_dir(void) {
        const char *d = getenv("TMPDIR");

        return d && *d ? d : "/tmp";
}

static void make_temp_file(char *path, size_t n) {
        int fd;

        assert_true(snprintf(path, n, "%s/test-io-XXXXXX", tmp_dir()) < (int) n);
        fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(close(fd), 0);
}

typedef struct Fixture {
        IoBackend *io;
        char path[PATH_MAX]; /* the temp file under io-posix, "" for io-memory */
} Fixture;

static int setup_memory(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        wrap_reset();
        assert_int_equal(io_memory_new(NULL, 0, &f->io), 0);
        *state = f;
        return 0;
}

static int setup_posix(void **state) {
        Fixture *f = calloc(1, sizeof(*f));

        assert_non_null(f);
        wrap_reset();
        make_temp_file(f->path, sizeof(f->path));
        assert_int_equal(io_posix_open(f->path, true, &f->io), 0);
        *state = f;
        return 0;
}

static int teardown_backend(void **state) {
        Fixture *f = *state;

        wrap_reset();
        if (f) {
                io_free(f->io);
                if (f->path[0])
                        (void) unlink(f->path);
                free(f);
        }
        return 0;
}

static void fill(uint8_t *buf, size_t len, uint8_t seed) {
        for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t) (seed + i * 7);
}

static void assert_bytes(IoBackend *io, uint64_t off, uint64_t len, uint8_t byte) {
        uint8_t *buf = malloc(len ? len : 1);

        assert_non_null(buf);
        assert_int_equal(io_pread(io, buf, len, off), 0);
        for (uint64_t i = 0; i < len; i++)
                if (buf[i] != byte)
                        fail_msg(
                                "byte %" PRIu64 " is 0x%02x, expected 0x%02x",
                                off + i,
                                (unsigned) buf[i],
                                (unsigned) byte);
        free(buf);
}

static uint64_t size_of(IoBackend *io) {
        uint64_t s = 0;

        assert_int_equal(io_size(io, &s), 0);
        return s;
}

/* ---- events ---- */

static void test_event_names(void **state) {
        static const struct {
                IoEvent ev;
                const char *name;
        } table[] = {
                { IO_EV_REFBLOCK_UPDATE, "refblock_update" },
                { IO_EV_REFTABLE_UPDATE, "reftable_update" },
                { IO_EV_REFTABLE_WRITE, "reftable_write" },
                { IO_EV_L1_UPDATE, "l1_update" },
                { IO_EV_L1_WRITE, "l1_write" },
                { IO_EV_L2_UPDATE, "l2_update" },
                { IO_EV_L2_WRITE, "l2_write" },
                { IO_EV_DATA_COPY, "data_copy" },
                { IO_EV_HEADER_UPDATE, "header_update" },
                { IO_EV_SNAPSHOT_UPDATE, "snapshot_update" },
                { IO_EV_BITMAP_UPDATE, "bitmap_update" },
                { IO_EV_TRUNCATE, "truncate" },
                { IO_EV_FLUSH, "flush" },
        };
        static const char *const bad[] = {
                "", "L2_UPDATE", "IO_EV_L2_UPDATE", "io_ev_l2_update", "l2-update", "l2_update ",
        };

        assert_int_equal(ELEMENTSOF(table), _IO_EV_MAX);
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                assert_string_equal(io_event_to_string(table[i].ev), table[i].name);
                assert_int_equal(io_event_from_string(table[i].name), table[i].ev);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(io_event_from_string(bad[i]), -EINVAL);
        assert_int_equal(io_event_from_string(NULL), -EINVAL);
        assert_null(io_event_to_string(_IO_EV_MAX));
        assert_null(io_event_to_string((IoEvent) -1));
}

/* ---- dispatchers, with a minimal vtable mock ---- */

static int mock_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        memset(buf, 0x42, len);
        return 0;
}

static int mock_size(IoBackend *io, uint64_t *ret) {
        *ret = 1000;
        return 0;
}

static const IoOps mock_ops_pread = { .name = "mock", .pread = mock_pread };
static const IoOps mock_ops_sized = { .name = "mock", .pread = mock_pread, .size = mock_size };

static void test_dispatch_defaults(void **state) {
        _cleanup_(io_freep) IoBackend *bare = io_backend_new(&mock_ops_pread, NULL, NULL);
        _cleanup_(io_freep) IoBackend *sized = io_backend_new(&mock_ops_sized, NULL, NULL);
        uint8_t buf[4] = { 0 };
        uint64_t v = 7;

        assert_non_null(bare);
        assert_non_null(sized);

        /* Optional ops missing at the bottom: the documented defaults. */
        assert_int_equal(io_pread(bare, buf, sizeof(buf), 0), 0);
        assert_int_equal(buf[3], 0x42);
        assert_int_equal(io_pwrite(bare, buf, sizeof(buf), 0), -EOPNOTSUPP);
        assert_int_equal(io_flush(bare), -EOPNOTSUPP);
        assert_int_equal(io_truncate(bare, 0), -EOPNOTSUPP);
        assert_int_equal(io_size(bare, &v), -EOPNOTSUPP);
        assert_int_equal(v, 7); /* untouched on failure */
        assert_int_equal(io_punch_hole(bare, 0, 1), -EOPNOTSUPP);
        assert_true(ERRNO_IS_NOT_SUPPORTED(io_punch_hole(bare, 0, 1)));
        assert_int_equal(io_next_data(bare, 0, &v), -EOPNOTSUPP); /* needs the size */
        assert_int_equal(io_event(bare, IO_EV_L2_UPDATE), 0);

        /* No hole information: everything below the size is data. */
        assert_int_equal(io_next_data(sized, 10, &v), 0);
        assert_int_equal(v, 10);
        assert_int_equal(io_next_data(sized, 5000, &v), 0);
        assert_int_equal(v, 1000);
        assert_int_equal(io_next_hole(sized, 10, &v), 0);
        assert_int_equal(v, 1000);

        /* Argument checks. */
        assert_int_equal(io_pread(NULL, buf, 1, 0), -EINVAL);
        assert_int_equal(io_pread(bare, NULL, 1, 0), -EINVAL);
        assert_int_equal(io_pread(bare, buf, 2, UINT64_MAX), -EINVAL);
        assert_int_equal(io_pwrite(NULL, buf, 1, 0), -EINVAL);
        assert_int_equal(io_flush(NULL), -EINVAL);
        assert_int_equal(io_truncate(NULL, 0), -EINVAL);
        assert_int_equal(io_size(sized, NULL), -EINVAL);
        assert_int_equal(io_punch_hole(bare, UINT64_MAX, 2), -EINVAL);
        assert_int_equal(io_next_data(sized, 0, NULL), -EINVAL);
        assert_int_equal(io_next_hole(NULL, 0, &v), -EINVAL);
        assert_int_equal(io_event(bare, _IO_EV_MAX), -EINVAL);
        assert_int_equal(io_event(NULL, IO_EV_FLUSH), -EINVAL);
        assert_int_equal(io_next_pread(bare, buf, 1, 0), -EINVAL); /* no layer below */
        assert_null(io_free(NULL));
}

/* ---- the same read/write/truncate script on every backend ---- */

typedef enum StepOp {
        STEP_WRITE,    /* write len bytes of `byte` at off */
        STEP_READ,     /* read len bytes at off, expect `byte` everywhere */
        STEP_TRUNCATE, /* truncate to off */
        STEP_SIZE,     /* expect the size to be off */
} StepOp;

typedef struct Step {
        StepOp op;
        uint64_t off;
        uint64_t len;
        uint8_t byte;
        int expect;
} Step;

static const Step rw_script[] = {
        { STEP_SIZE, 0 },
        { STEP_READ, 0, 1, 0, -EIO }, /* empty file */
        { STEP_READ, 0, 0, 0, 0 },    /* empty read is fine */
        { STEP_WRITE, 0, 4096, 0xaa, 0 },
        { STEP_SIZE, 4096 },
        { STEP_READ, 0, 4096, 0xaa, 0 },
        { STEP_READ, 1000, 100, 0xaa, 0 },
        { STEP_READ, 4000, 200, 0, -EIO }, /* straddles EOF */
        { STEP_READ, 4096, 1, 0, -EIO },   /* starts at EOF */
        { STEP_READ, 1ULL << 40, 1, 0, -EIO },
        { STEP_WRITE, 10000, 100, 0x55, 0 }, /* grows; the gap reads as zeros */
        { STEP_SIZE, 10100 },
        { STEP_READ, 4096, 5904, 0x00, 0 },
        { STEP_READ, 10000, 100, 0x55, 0 },
        { STEP_WRITE, 4000, 200, 0x11, 0 }, /* overwrite across a 4 KiB boundary */
        { STEP_READ, 3999, 1, 0xaa, 0 },
        { STEP_READ, 4000, 200, 0x11, 0 },
        { STEP_READ, 4200, 1, 0x00, 0 },
        { STEP_TRUNCATE, 2048 },
        { STEP_SIZE, 2048 },
        { STEP_READ, 0, 2048, 0xaa, 0 },
        { STEP_READ, 2047, 2, 0, -EIO },
        { STEP_TRUNCATE, 8192 }, /* grow again: the cut-off data must not come back */
        { STEP_SIZE, 8192 },
        { STEP_READ, 2048, 6144, 0x00, 0 },
        { STEP_READ, UINT64_MAX, 2, 0, -EINVAL }, /* range wraps around */
        { STEP_WRITE, UINT64_MAX - 1, 4, 0x01, -EINVAL },
        { STEP_SIZE, 8192 },
        { STEP_TRUNCATE, 0 },
        { STEP_SIZE, 0 },
};

static void test_rw_script(void **state) {
        Fixture *f = *state;

        for (size_t i = 0; i < ELEMENTSOF(rw_script); i++) {
                const Step *s = &rw_script[i];
                _cleanup_free_ uint8_t *buf = NULL;
                uint64_t size;
                int r = 0;

                switch (s->op) {
                case STEP_WRITE:
                        buf = malloc(s->len);
                        assert_non_null(buf);
                        memset(buf, s->byte, s->len);
                        r = io_pwrite(f->io, buf, s->len, s->off);
                        break;
                case STEP_READ:
                        if (s->expect == 0) {
                                assert_bytes(f->io, s->off, s->len, s->byte);
                                continue;
                        }
                        buf = malloc(s->len);
                        assert_non_null(buf);
                        r = io_pread(f->io, buf, s->len, s->off);
                        break;
                case STEP_TRUNCATE:
                        r = io_truncate(f->io, s->off);
                        break;
                case STEP_SIZE:
                        assert_int_equal(io_size(f->io, &size), 0);
                        if (size != s->off)
                                fail_msg(
                                        "step %zu: size %" PRIu64 ", expected %" PRIu64,
                                        i,
                                        size,
                                        s->off);
                        continue;
                }
                if (r != s->expect)
                        fail_msg("step %zu: got %d, expected %d", i, r, s->expect);
        }
        assert_int_equal(io_flush(f->io), 0);
}

/* Punched ranges read as zeros and keep the size; a range past EOF is ignored. */
static void test_punch_hole(void **state) {
        Fixture *f = *state;
        uint8_t buf[65536];
        int r;

        memset(buf, 0xaa, sizeof(buf));
        assert_int_equal(io_pwrite(f->io, buf, sizeof(buf), 0), 0);
        r = io_punch_hole(f->io, 4096, 8192);
        if (ERRNO_IS_NOT_SUPPORTED(r))
                skip();
        assert_int_equal(r, 0);
        assert_int_equal(size_of(f->io), sizeof(buf));
        assert_bytes(f->io, 0, 4096, 0xaa);
        assert_bytes(f->io, 4096, 8192, 0x00);
        assert_bytes(f->io, 12288, sizeof(buf) - 12288, 0xaa);

        assert_int_equal(io_punch_hole(f->io, 61440, 1 << 20), 0); /* tail and beyond */
        assert_int_equal(size_of(f->io), sizeof(buf));
        assert_bytes(f->io, 61440, 4096, 0x00);
        assert_int_equal(io_punch_hole(f->io, 1 << 20, 4096), 0);
        assert_int_equal(io_punch_hole(f->io, 0, 0), 0);
        assert_int_equal(size_of(f->io), sizeof(buf));
}

/* At/after EOF both queries answer the size, whatever the filesystem reports about holes. */
static void test_seek_at_eof(void **state) {
        Fixture *f = *state;
        uint8_t buf[100] = { 1 };
        uint64_t v;

        assert_int_equal(io_next_data(f->io, 0, &v), 0);
        assert_int_equal(v, 0);
        assert_int_equal(io_next_hole(f->io, 0, &v), 0);
        assert_int_equal(v, 0);

        assert_int_equal(io_pwrite(f->io, buf, sizeof(buf), 0), 0);
        assert_int_equal(io_next_data(f->io, 10, &v), 0);
        assert_int_equal(v, 10);
        assert_int_equal(io_next_hole(f->io, 10, &v), 0);
        assert_int_equal(v, 100);
        assert_int_equal(io_next_data(f->io, 100, &v), 0);
        assert_int_equal(v, 100);
        assert_int_equal(io_next_data(f->io, 5000, &v), 0);
        assert_int_equal(v, 100);
        assert_int_equal(io_next_hole(f->io, 5000, &v), 0);
        assert_int_equal(v, 100);
}

/* ---- io-memory specifics ---- */

static void test_memory_copy_and_view(void **state) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        _cleanup_(io_freep) IoBackend *other = NULL;
        uint8_t src[64], buf[64];
        const uint8_t *view;
        size_t n = 0;

        fill(src, sizeof(src), 3);
        assert_int_equal(io_memory_new(src, sizeof(src), &io), 0);
        memset(src, 0, sizeof(src)); /* the backend holds its own copy */

        fill(buf, sizeof(buf), 3);
        view = io_memory_data(io, &n);
        assert_int_equal(n, sizeof(buf));
        assert_memory_equal(view, buf, sizeof(buf));

        assert_int_equal(io_pwrite(io, "xyz", 3, 62), 0);
        view = io_memory_data(io, &n);
        assert_int_equal(n, 65);
        assert_memory_equal(view + 62, "xyz", 3);

        assert_int_equal(io_memory_new(NULL, 1, &other), -EINVAL);
        assert_null(other);
        assert_int_equal(io_memory_new(NULL, 0, &other), 0);
        assert_int_equal(size_of(other), 0);

        /* Not a memory backend: NULL, out-param untouched. */
        _cleanup_(io_freep) IoBackend *log = NULL;
        assert_int_equal(io_log_new(TAKE_PTR(other), &log), 0);
        n = 12345;
        assert_null(io_memory_data(log, &n));
        assert_int_equal(n, 12345);
}

/* ---- io-posix specifics ---- */

/* EINTR is retried and short transfers are continued, through the real loop in io-posix.c. */
static void test_posix_eintr_and_short(void **state) {
        Fixture *f = *state;
        uint8_t out[1000], in[1000];

        fill(out, sizeof(out), 9);
        wrap.armed = true;
        wrap.eintr = 3;
        wrap.max_chunk = 7;
        assert_int_equal(io_pwrite(f->io, out, sizeof(out), 5), 0);
        /* 3 EINTR + ceil(1000 / 7) chunks: proves the wrapper sits under io-posix */
        assert_int_equal(wrap.rw_calls, 3 + 143);

        wrap.eintr = 2;
        wrap.rw_calls = 0;
        memset(in, 0, sizeof(in));
        assert_int_equal(io_pread(f->io, in, sizeof(in), 5), 0);
        assert_int_equal(wrap.rw_calls, 2 + 143);
        assert_memory_equal(in, out, sizeof(in));

        /* A short read that hits EOF is an error, not a partial success. */
        wrap.rw_calls = 0;
        assert_int_equal(io_pread(f->io, in, sizeof(in), 100), -EIO);
        assert_true(wrap.rw_calls > 1);
}

static void test_posix_errors(void **state) {
        static const int errs[] = { EIO, ENOSPC, EDQUOT, EBADF };
        Fixture *f = *state;
        uint8_t buf[16] = { 0 };

        assert_int_equal(io_pwrite(f->io, buf, sizeof(buf), 0), 0);
        for (size_t i = 0; i < ELEMENTSOF(errs); i++) {
                wrap.armed = true;
                wrap.rw_errno = errs[i];
                assert_int_equal(io_pwrite(f->io, buf, sizeof(buf), 0), -errs[i]);
                assert_int_equal(io_pread(f->io, buf, sizeof(buf), 0), -errs[i]);
                wrap_reset();
        }
}

static void test_posix_open(void **state) {
        Fixture *f = *state;
        _cleanup_(io_freep) IoBackend *ro = NULL;
        _cleanup_(io_freep) IoBackend *mem = NULL;
        _cleanup_(io_freep) IoBackend *log = NULL;
        IoBackend *io = NULL;
        char missing[PATH_MAX + 16];
        uint8_t b = 1;
        int flags;

        assert_int_equal(snprintf(missing, sizeof(missing), "%s.missing", f->path) > 0, 1);
        assert_int_equal(io_posix_open(missing, false, &io), -ENOENT);
        assert_int_equal(io_posix_open(tmp_dir(), false, &io), -EISDIR);
        assert_int_equal(io_posix_open("/dev/null", false, &io), -EINVAL);
        assert_int_equal(io_posix_open(NULL, false, &io), -EINVAL);
        assert_null(io);

        assert_true(io_posix_fd(f->io) >= 0);
        flags = fcntl(io_posix_fd(f->io), F_GETFD);
        assert_true(flags >= 0 && (flags & FD_CLOEXEC));

        assert_int_equal(io_posix_open(f->path, false, &ro), 0);
        assert_int_equal(io_pwrite(ro, &b, 1, 0), -EBADF);
        assert_int_equal(io_pwrite(f->io, &b, 1, 0), 0);
        assert_bytes(ro, 0, 1, 1);

        /* io_posix_fd looks through filters, and is -1 without a posix layer. */
        assert_int_equal(io_memory_new(NULL, 0, &mem), 0);
        assert_int_equal(io_posix_fd(mem), -1);
        assert_int_equal(io_posix_fd(NULL), -1);
        assert_int_equal(io_log_new(ro, &log), 0);
        ro = NULL; /* owned by log now */
        assert_int_equal(io_posix_fd(log), io_posix_fd(log->next));
        assert_true(io_posix_fd(log) >= 0);
}

/* next_data/next_hole on a sparse file: 4 MiB with 64 KiB of data at 1 MiB. */
static void test_posix_sparse(void **state) {
        Fixture *f = *state;
        const uint64_t MiB = 1 << 20, data_len = 65536, size = 4 * MiB;
        static uint8_t buf[65536];
        uint64_t v;

        memset(buf, 0xcd, sizeof(buf));
        assert_int_equal(io_truncate(f->io, size), 0);
        assert_int_equal(io_pwrite(f->io, buf, data_len, MiB), 0);
        assert_int_equal(io_flush(f->io), 0);

        /* Always true, holes reported or not. */
        assert_int_equal(io_next_data(f->io, size, &v), 0);
        assert_int_equal(v, size);
        assert_int_equal(io_next_hole(f->io, size + 1, &v), 0);
        assert_int_equal(v, size);
        assert_int_equal(io_next_data(f->io, MiB + 5, &v), 0);
        assert_int_equal(v, MiB + 5);

        assert_int_equal(io_next_data(f->io, 0, &v), 0);
        if (v == 0) {
                print_message("# %s does not report holes; sparse checks skipped\n", tmp_dir());
                return;
        }
        assert_int_equal(v, MiB);
        assert_int_equal(io_next_hole(f->io, 0, &v), 0);
        assert_int_equal(v, 0);
        assert_int_equal(io_next_hole(f->io, MiB, &v), 0);
        assert_int_equal(v, MiB + data_len);
        /* only holes follow: SEEK_DATA says ENXIO, we say "size" */
        assert_int_equal(io_next_data(f->io, MiB + data_len, &v), 0);
        assert_int_equal(v, size);
}

/* A filesystem without SEEK_DATA/SEEK_HOLE: everything is data; other errors propagate. */
static void test_posix_seek_unsupported(void **state) {
        static const struct {
                int err;
                int expect;
        } table[] = {
                { EINVAL, 0 },
                { EOPNOTSUPP, 0 },
                { EIO, -EIO },
        };
        Fixture *f = *state;
        uint8_t buf[300] = { 0 };

        assert_int_equal(io_pwrite(f->io, buf, sizeof(buf), 0), 0);
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                uint64_t d = 1, h = 1;

                wrap_reset();
                wrap.armed = true;
                wrap.lseek_errno = table[i].err;
                assert_int_equal(io_next_data(f->io, 100, &d), table[i].expect);
                assert_int_equal(io_next_hole(f->io, 100, &h), table[i].expect);
                assert_int_equal(wrap.seek_calls, 2);
                if (table[i].expect == 0) {
                        assert_int_equal(d, 100);
                        assert_int_equal(h, sizeof(buf));
                } else {
                        assert_int_equal(d, 1); /* untouched on failure */
                        assert_int_equal(h, 1);
                }
        }
}

/* ---- QEMU OFD locks ---- */

static bool ofd_write_lock(int fd, short type, off_t byte) {
        struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };

        return fcntl(fd, F_OFD_SETLK, &fl) == 0;
}

static void test_posix_locks(void **state) {
        Fixture *f = *state;
        _cleanup_(io_freep) IoBackend *other = NULL;
        _cleanup_(io_freep) IoBackend *ro = NULL;
        _cleanup_(io_freep) IoBackend *mem = NULL;
        _cleanup_close_ int fd = -1;

        assert_int_equal(io_posix_open(f->path, true, &other), 0);
        assert_int_equal(io_posix_open(f->path, false, &ro), 0);

        assert_int_equal(io_posix_probe_qemu_locks(f->io), 0);
        assert_int_equal(io_posix_probe_qemu_locks(other), 0);

        assert_int_equal(io_posix_lock_qemu(f->io), 0);
        assert_int_equal(io_posix_lock_qemu(f->io), 0);        /* idempotent */
        assert_int_equal(io_posix_probe_qemu_locks(f->io), 0); /* our own locks are not foreign */
        /* 100, 101, 103, 200, 201, 203 */
        assert_int_equal(io_posix_probe_qemu_locks(other), 6);
        assert_int_equal(io_posix_probe_qemu_locks(ro), 6);
        assert_int_equal(io_posix_lock_qemu(other), -EBUSY);
        assert_int_equal(io_posix_lock_qemu(ro), -EBUSY);
        /* The losers released what they took before they saw us. */
        assert_int_equal(io_posix_probe_qemu_locks(f->io), 0);

        f->io = io_free(f->io); /* closing the fd drops the OFD locks */
        assert_int_equal(io_posix_probe_qemu_locks(other), 0);
        assert_int_equal(io_posix_lock_qemu(other), 0);
        assert_int_equal(io_posix_probe_qemu_locks(ro), 6);
        other = io_free(other);

        /*
         * An exclusive lock on one of our bytes makes F_OFD_SETLK itself fail midway: -EBUSY,
         * and the bytes taken before it are released again.
         */
        fd = open(f->path, O_RDWR | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_true(ofd_write_lock(fd, F_WRLCK, 201));
        assert_int_equal(io_posix_lock_qemu(ro), -EBUSY);
        assert_true(ofd_write_lock(fd, F_UNLCK, 201));
        assert_true(ofd_write_lock(fd, F_WRLCK, 100)); /* would fail if ro still held 100 */
        assert_true(ofd_write_lock(fd, F_UNLCK, 100));
        assert_int_equal(io_posix_lock_qemu(ro), 0); /* read-only fds can lock too */

        /* Not a posix stack. */
        assert_int_equal(io_memory_new(NULL, 0, &mem), 0);
        assert_int_equal(io_posix_lock_qemu(mem), -EINVAL);
        assert_int_equal(io_posix_probe_qemu_locks(mem), -EINVAL);
}

/* Runs `qemu-img create -f qcow2 img 1M` quietly; returns its exit status. */
static int qemu_img_create(const char *qemu_img, const char *img) {
        int status;
        pid_t pid = fork();

        assert_true(pid >= 0);
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);

                if (null >= 0) {
                        (void) dup2(null, STDOUT_FILENO);
                        (void) dup2(null, STDERR_FILENO);
                }
                execl(qemu_img, qemu_img, "create", "-f", "qcow2", img, "1M", (char *) NULL);
                _exit(127);
        }
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The probe sees a real qemu-io holding the image, and lock_qemu refuses it. */
static void test_posix_locks_qemu_io(void **state) {
        static const char qemu_io[] = "/usr/bin/qemu-io", qemu_img[] = "/usr/bin/qemu-img";
        _cleanup_(io_freep) IoBackend *io = NULL;
        char dir[PATH_MAX], img[PATH_MAX + 16];
        const struct timespec tick = { .tv_nsec = 20 * 1000 * 1000 };
        int pipefd[2], status = -1, probe = 0, lock_busy, probe_after, lock_after;
        bool reaped = false;
        pid_t pid;

        if (access(qemu_io, X_OK) < 0 || access(qemu_img, X_OK) < 0)
                skip();

        assert_true(
                snprintf(dir, sizeof(dir), "%s/test-io-qemu-XXXXXX", tmp_dir()) <
                (int) sizeof(dir));
        assert_non_null(mkdtemp(dir));
        assert_true(snprintf(img, sizeof(img), "%s/img.qcow2", dir) < (int) sizeof(img));
        assert_int_equal(qemu_img_create(qemu_img, img), 0);

        /* qemu-io keeps the image open until its stdin reaches EOF: we hold the pipe. */
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);

                (void) dup2(pipefd[0], STDIN_FILENO);
                if (null >= 0) {
                        (void) dup2(null, STDOUT_FILENO);
                        (void) dup2(null, STDERR_FILENO);
                }
                execl(qemu_io, qemu_io, "-f", "qcow2", img, (char *) NULL);
                _exit(127);
        }
        (void) close(pipefd[0]);

        assert_int_equal(io_posix_open(img, false, &io), 0);
        for (int i = 0; i < 500 && !reaped; i++) { /* up to 10 s */
                probe = io_posix_probe_qemu_locks(io);
                if (probe != 0)
                        break;
                reaped = waitpid(pid, &status, WNOHANG) == pid; /* qemu-io failed */
                (void) nanosleep(&tick, NULL);
        }
        lock_busy = io_posix_lock_qemu(io);

        /* EOF on stdin makes qemu-io quit; do not hang the suite if it does not. */
        (void) close(pipefd[1]);
        for (int i = 0; i < 500 && !reaped; i++) {
                reaped = waitpid(pid, &status, WNOHANG) == pid;
                if (!reaped)
                        (void) nanosleep(&tick, NULL);
        }
        if (!reaped) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, &status, 0);
        }
        probe_after = io_posix_probe_qemu_locks(io);
        lock_after = io_posix_lock_qemu(io);
        io = io_free(io);
        (void) unlink(img);
        (void) rmdir(dir);

        print_message("# qemu-io held %d lock bytes\n", probe);
        assert_true(probe > 0);
        assert_int_equal(lock_busy, -EBUSY);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_int_equal(probe_after, 0);
        assert_int_equal(lock_after, 0);
}

/* ---- io-fault ---- */

typedef struct FaultCall {
        IoFaultOp op; /* _IO_FAULT_OP_MAX ends the list */
        IoEvent ev;
        int expect;
} FaultCall;

typedef struct FaultCase {
        const char *name;
        IoFaultSpec spec;
        FaultCall calls[8];
        uint64_t injected;
} FaultCase;

#define R IO_FAULT_OP_PREAD
#define W IO_FAULT_OP_PWRITE
#define F IO_FAULT_OP_FLUSH
#define T IO_FAULT_OP_TRUNCATE
#define E IO_FAULT_OP_EVENT
#define END \
        { _IO_FAULT_OP_MAX }

static const FaultCase fault_cases[] = {
        { "3rd write, once",
          { .op = W, .nth = 3, .error = EIO },
          { { W }, { W }, { R }, { F }, { W, 0, -EIO }, { W }, { R }, END },
          1 },
        { "2nd write, always",
          { .op = W, .nth = 2, .error = ENOSPC, .always = true },
          { { W }, { W, 0, -ENOSPC }, { R }, { W, 0, -ENOSPC }, { F }, { W, 0, -ENOSPC }, END },
          3 },
        { "1st read",
          { .op = R, .nth = 1, .error = EIO },
          { { R, 0, -EIO }, { R }, { W }, END },
          1 },
        { "2nd flush, always",
          { .op = F, .nth = 2, .error = EIO, .always = true },
          { { F }, { W }, { F, 0, -EIO }, { R }, { F, 0, -EIO }, END },
          2 },
        { "1st truncate",
          { .op = T, .nth = 1, .error = ENOSPC },
          { { T, 0, -ENOSPC }, { T }, { W }, END },
          1 },
        { "2nd l2_update event",
          { .op = E, .event = IO_EV_L2_UPDATE, .nth = 2, .error = EIO },
          { { E, IO_EV_L2_UPDATE },
            { E, IO_EV_L1_UPDATE },
            { W },
            { E, IO_EV_L2_UPDATE, -EIO },
            { E, IO_EV_L2_UPDATE },
            { E, IO_EV_FLUSH },
            END },
          1 },
        { "header_update event, always",
          { .op = E, .event = IO_EV_HEADER_UPDATE, .nth = 1, .error = ENOSPC, .always = true },
          { { E, IO_EV_HEADER_UPDATE, -ENOSPC },
            { E, IO_EV_REFBLOCK_UPDATE },
            { E, IO_EV_HEADER_UPDATE, -ENOSPC },
            { F },
            END },
          2 },
};

#undef R
#undef W
#undef F
#undef T
#undef E
#undef END

static int fault_do(IoBackend *io, const FaultCall *c) {
        uint8_t buf[8] = { 0 };

        switch (c->op) {
        case IO_FAULT_OP_PREAD:
                return io_pread(io, buf, sizeof(buf), 0);
        case IO_FAULT_OP_PWRITE:
                return io_pwrite(io, buf, sizeof(buf), 0);
        case IO_FAULT_OP_FLUSH:
                return io_flush(io);
        case IO_FAULT_OP_TRUNCATE:
                return io_truncate(io, 64);
        case IO_FAULT_OP_EVENT:
                return io_event(io, c->ev);
        default:
                fail();
        }
        return -EINVAL;
}

static void test_fault_table(void **state) {
        uint8_t init[64] = { 0 };

        for (size_t i = 0; i < ELEMENTSOF(fault_cases); i++) {
                const FaultCase *fc = &fault_cases[i];
                _cleanup_(io_freep) IoBackend *io = NULL;
                IoBackend *mem = NULL;

                assert_int_equal(io_memory_new(init, sizeof(init), &mem), 0);
                assert_int_equal(io_fault_new(mem, &fc->spec, &io), 0);
                for (size_t j = 0; fc->calls[j].op != _IO_FAULT_OP_MAX; j++) {
                        int r = fault_do(io, &fc->calls[j]);

                        if (r != fc->calls[j].expect)
                                fail_msg(
                                        "%s: call %zu returned %d, expected %d",
                                        fc->name,
                                        j,
                                        r,
                                        fc->calls[j].expect);
                }
                if (io_fault_injected(io) != fc->injected)
                        fail_msg("%s: %" PRIu64 " injected", fc->name, io_fault_injected(io));
        }
}

/*
 * A torn write: the whole 512-byte sectors before the middle of the buffer reach the layer
 * below, the caller gets the error. Nothing tears inside a sector.
 */
static void test_fault_short_write(void **state) {
        static const struct {
                uint64_t off;
                size_t len;
                size_t size_after;
        } table[] = {
                { 0, 2048, 4096 },    /* 1024 bytes land, inside the file */
                { 100, 1000, 4096 },  /* middle at 600: bytes 100..511 land */
                { 3, 5, 4096 },       /* no sector boundary before the middle: nothing lands */
                { 4096, 2048, 5120 }, /* the part that lands grows the file */
        };
        uint8_t init[4096] = { 0 };

        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                IoFaultSpec spec = {
                        .op = IO_FAULT_OP_PWRITE, .nth = 1, .error = EIO, .short_write = true
                };
                _cleanup_(io_freep) IoBackend *io = NULL;
                IoBackend *mem = NULL;
                uint8_t buf[2048];
                const uint8_t *d;
                size_t n = 0;

                memset(buf, 0xaa, sizeof(buf));
                assert_int_equal(io_memory_new(init, sizeof(init), &mem), 0);
                assert_int_equal(io_fault_new(mem, &spec, &io), 0);
                assert_int_equal(io_pwrite(io, buf, table[i].len, table[i].off), -EIO);
                assert_int_equal(io_fault_injected(io), 1);

                d = io_memory_data(mem, &n);
                assert_int_equal(n, table[i].size_after);
                uint64_t cut = (table[i].off + table[i].len / 2) & ~(uint64_t) 511;
                for (size_t k = 0; k < n; k++) {
                        bool written = k >= table[i].off && k < cut;

                        assert_int_equal(d[k], written ? 0xaa : 0x00);
                }

                /* The next write goes through whole. */
                assert_int_equal(io_pwrite(io, buf, 4, 0), 0);
        }
}

static void test_fault_passthrough_and_args(void **state) {
        static const IoFaultSpec bad[] = {
                { .op = IO_FAULT_OP_PWRITE, .nth = 0, .error = EIO },
                { .op = IO_FAULT_OP_PWRITE, .nth = 1, .error = 0 },
                { .op = IO_FAULT_OP_PWRITE, .nth = 1, .error = -EIO },
                { .op = _IO_FAULT_OP_MAX, .nth = 1, .error = EIO },
                { .op = IO_FAULT_OP_EVENT, .event = _IO_EV_MAX, .nth = 1, .error = EIO },
        };
        IoFaultSpec spec = { .op = IO_FAULT_OP_PWRITE, .nth = 1, .error = EIO, .always = true };
        _cleanup_(io_freep) IoBackend *mem = NULL;
        _cleanup_(io_freep) IoBackend *io = NULL;
        uint8_t buf[8];
        uint64_t v;

        assert_int_equal(io_memory_new("0123456789", 10, &mem), 0);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(io_fault_new(mem, &bad[i], &io), -EINVAL);
        assert_int_equal(io_fault_new(NULL, &spec, &io), -EINVAL);
        assert_int_equal(io_fault_new(mem, NULL, &io), -EINVAL);
        assert_null(io); /* and mem is still ours: freed by its cleanup, not twice */

        assert_int_equal(io_fault_new(mem, &spec, &io), 0);
        mem = NULL;

        /* Every operation the spec does not name reaches the memory backend. */
        assert_int_equal(io_pwrite(io, buf, 1, 0), -EIO);
        assert_int_equal(io_pread(io, buf, 4, 2), 0);
        assert_memory_equal(buf, "2345", 4);
        assert_int_equal(io_size(io, &v), 0);
        assert_int_equal(v, 10);
        assert_int_equal(io_punch_hole(io, 0, 2), 0);
        assert_int_equal(io_next_data(io, 3, &v), 0);
        assert_int_equal(v, 3);
        assert_int_equal(io_next_hole(io, 3, &v), 0);
        assert_int_equal(v, 10);
        assert_int_equal(io_truncate(io, 4), 0);
        assert_int_equal(io_flush(io), 0);
        assert_int_equal(io_event(io, IO_EV_FLUSH), 0);
        assert_int_equal(io_pread(io, buf, 4, 0), 0);
        assert_memory_equal(
                buf,
                "\0\0"
                "23",
                4);
        assert_int_equal(io_fault_injected(io), 1);
        assert_int_equal(io_fault_injected(io->next), 0); /* not a fault layer */
}

/* ---- io-log ---- */

typedef struct LogExpect {
        IoLogKind kind;
        uint64_t off;
        uint64_t len;
        const char *data;
        IoEvent event;
} LogExpect;

static void assert_log(IoBackend *log, const LogExpect *expect, size_t n_expect) {
        const IoLogEntry *e;
        size_t n = SIZE_MAX;

        e = io_log_entries(log, &n);
        assert_int_equal(n, n_expect);
        for (size_t i = 0; i < n; i++) {
                if (e[i].kind != expect[i].kind)
                        fail_msg(
                                "entry %zu: kind %d, expected %d",
                                i,
                                (int) e[i].kind,
                                (int) expect[i].kind);
                assert_int_equal(e[i].off, expect[i].off);
                assert_int_equal(e[i].len, expect[i].len);
                if (expect[i].kind == IO_LOG_WRITE)
                        assert_memory_equal(e[i].data, expect[i].data, e[i].len);
                if (expect[i].kind == IO_LOG_EVENT)
                        assert_int_equal(e[i].event, expect[i].event);
        }
}

/* Applies entries[0..n) to io, as the crash replayer does. */
static void replay(IoBackend *io, const IoLogEntry *e, size_t n) {
        for (size_t i = 0; i < n; i++)
                switch (e[i].kind) {
                case IO_LOG_WRITE:
                        assert_int_equal(io_pwrite(io, e[i].data, e[i].len, e[i].off), 0);
                        break;
                case IO_LOG_TRUNCATE:
                        assert_int_equal(io_truncate(io, e[i].off), 0);
                        break;
                case IO_LOG_PUNCH:
                        assert_int_equal(io_punch_hole(io, e[i].off, e[i].len), 0);
                        break;
                case IO_LOG_FLUSH:
                case IO_LOG_EVENT:
                        break;
                }
}

static void test_log_records(void **state) {
        static const LogExpect expect[] = {
                { IO_LOG_WRITE, 0, 5, "hello" },
                { IO_LOG_EVENT, .event = IO_EV_L2_UPDATE },
                { IO_LOG_FLUSH },
                { IO_LOG_WRITE, 100, 8, "ZZZZZZZZ" },
                { IO_LOG_TRUNCATE, 50 },
                { IO_LOG_PUNCH, 2, 2 },
                { IO_LOG_EVENT, .event = IO_EV_TRUNCATE },
                { IO_LOG_WRITE, 10, 0, "" },
                { IO_LOG_FLUSH },
        };
        _cleanup_(io_freep) IoBackend *log = NULL;
        _cleanup_(io_freep) IoBackend *copy = NULL;
        IoBackend *mem = NULL;
        char payload[8];
        uint8_t buf[5];
        const IoLogEntry *e;
        const uint8_t *d1, *d2;
        size_t n, n1 = 0, n2 = 0;
        uint64_t v;

        assert_int_equal(io_memory_new(NULL, 0, &mem), 0);
        assert_int_equal(io_log_new(mem, &log), 0);

        assert_int_equal(io_pwrite(log, "hello", 5, 0), 0);
        assert_int_equal(io_event(log, IO_EV_L2_UPDATE), 0);
        assert_int_equal(io_flush(log), 0);
        memset(payload, 'Z', sizeof(payload));
        assert_int_equal(io_pwrite(log, payload, sizeof(payload), 100), 0);
        memset(payload, '!', sizeof(payload)); /* the log kept its own copy */
        assert_int_equal(io_truncate(log, 50), 0);
        assert_int_equal(io_punch_hole(log, 2, 2), 0);
        assert_int_equal(io_event(log, IO_EV_TRUNCATE), 0);
        assert_int_equal(io_pwrite(log, payload, 0, 10), 0);
        /* Reads and queries pass through and are not recorded. */
        assert_int_equal(io_pread(log, buf, 5, 0), 0);
        assert_memory_equal(buf, "he\0\0o", 5);
        assert_int_equal(io_size(log, &v), 0);
        assert_int_equal(v, 50);
        assert_int_equal(io_next_data(log, 0, &v), 0);
        assert_int_equal(io_flush(log), 0);

        assert_log(log, expect, ELEMENTSOF(expect));

        /* Replaying the whole log onto an empty image gives the same bytes. */
        e = io_log_entries(log, &n);
        assert_int_equal(io_memory_new(NULL, 0, &copy), 0);
        replay(copy, e, n);
        d1 = io_memory_data(mem, &n1);
        d2 = io_memory_data(copy, &n2);
        assert_int_equal(n1, n2);
        assert_memory_equal(d1, d2, n1);

        n = 777;
        assert_null(io_log_entries(mem, &n)); /* not a log layer */
        assert_int_equal(n, 777);
        assert_int_equal(io_log_new(NULL, &copy), -EINVAL);
}

/* Operations that fail below the log are not recorded; torn writes above it are, as halves. */
static void test_log_with_faults(void **state) {
        static const LogExpect below[] = {
                { IO_LOG_WRITE, 0, 4, "aaaa" },
                { IO_LOG_WRITE, 8, 4, "cccc" },
                { IO_LOG_FLUSH },
        };
        static const LogExpect above[] = {
                { IO_LOG_WRITE, 508, 4, "abcd" }, /* the sector before 512 lands */
        };
        IoFaultSpec write2 = { .op = IO_FAULT_OP_PWRITE, .nth = 2, .error = ENOSPC };
        IoFaultSpec ev = {
                .op = IO_FAULT_OP_EVENT, .event = IO_EV_L1_UPDATE, .nth = 1, .error = EIO
        };
        IoFaultSpec torn = {
                .op = IO_FAULT_OP_PWRITE, .nth = 1, .error = EIO, .short_write = true
        };
        _cleanup_(io_freep) IoBackend *top = NULL;
        IoBackend *mem = NULL, *fault = NULL, *log = NULL, *fault2 = NULL;

        /* mem <- fault(2nd write) <- fault(l1_update) <- log */
        assert_int_equal(io_memory_new(NULL, 0, &mem), 0);
        assert_int_equal(io_fault_new(mem, &write2, &fault), 0);
        assert_int_equal(io_fault_new(fault, &ev, &fault2), 0);
        assert_int_equal(io_log_new(fault2, &log), 0);
        top = log;
        assert_int_equal(io_pwrite(log, "aaaa", 4, 0), 0);
        assert_int_equal(io_pwrite(log, "bbbb", 4, 4), -ENOSPC);
        assert_int_equal(io_event(log, IO_EV_L1_UPDATE), -EIO);
        assert_int_equal(io_pwrite(log, "cccc", 4, 8), 0);
        assert_int_equal(io_flush(log), 0);
        assert_log(log, below, ELEMENTSOF(below));
        top = io_free(top);

        /* mem <- log <- fault(torn write) */
        assert_int_equal(io_memory_new(NULL, 0, &mem), 0);
        assert_int_equal(io_log_new(mem, &log), 0);
        assert_int_equal(io_fault_new(log, &torn, &top), 0);
        assert_int_equal(io_pwrite(top, "abcdefgh", 8, 508), -EIO);
        assert_log(log, above, ELEMENTSOF(above));
}

#define BACKEND_TEST(kind, fn)                                                       \
        {                                                                            \
                .name = #kind ": " #fn, .test_func = fn, .setup_func = setup_##kind, \
                .teardown_func = teardown_backend                                    \
        }

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_event_names),
                cmocka_unit_test(test_dispatch_defaults),
                BACKEND_TEST(memory, test_rw_script),
                BACKEND_TEST(posix, test_rw_script),
                BACKEND_TEST(memory, test_punch_hole),
                BACKEND_TEST(posix, test_punch_hole),
                BACKEND_TEST(memory, test_seek_at_eof),
                BACKEND_TEST(posix, test_seek_at_eof),
                cmocka_unit_test(test_memory_copy_and_view),
                BACKEND_TEST(posix, test_posix_eintr_and_short),
                BACKEND_TEST(posix, test_posix_errors),
                BACKEND_TEST(posix, test_posix_open),
                BACKEND_TEST(posix, test_posix_sparse),
                BACKEND_TEST(posix, test_posix_seek_unsupported),
                BACKEND_TEST(posix, test_posix_locks),
                cmocka_unit_test(test_posix_locks_qemu_io),
                cmocka_unit_test(test_fault_table),
                cmocka_unit_test(test_fault_short_write),
                cmocka_unit_test(test_fault_passthrough_and_args),
                cmocka_unit_test(test_log_records),
                cmocka_unit_test(test_log_with_faults),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
