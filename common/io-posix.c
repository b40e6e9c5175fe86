/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * io-posix: a real file or block device, plus QEMU's image locks.
 *
 * Offsets must fit in off_t (int64_t); larger ones are -EINVAL before any syscall.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"
#include "log.h"
#include "macro.h"

typedef struct PosixState {
        int fd;
        bool is_blockdev;
        bool qemu_locked; /* we hold the QEMU lock bytes below (io_posix_lock_qemu succeeded) */
        uint64_t wb_lo, wb_hi, wb_bytes; /* written since the last write-back start */
} PosixState;

/* block/file-posix.c: RAW_LOCK_PERM_BASE, RAW_LOCK_SHARED_BASE */
#define QEMU_LOCK_PERM_BASE 100
#define QEMU_LOCK_SHARED_BASE 200
/* Permission bits 0-3 plus bit 4 (GRAPH_MOD), which QEMU <= 6.1 may still lock. */
#define QEMU_LOCK_NBITS 5

/*
 * What a read-write QEMU user holds (100 consistent read, 101 write, 103 resize; 201/203: does
 * not share write/resize), plus 200 (does not share consistent read), which also keeps out
 * force-share (-U) readers that need consistent reads, such as `qemu-img check -U`.
 */
static const uint16_t qemu_own_lock_bytes[] = { 100, 101, 103, 200, 201, 203 };

/* Written bytes that start their write-back (see posix_writeback_note). */
#define POSIX_WRITEBACK_BYTES (8u << 20)
#define POSIX_WRITEBACK_SPAN (64u << 20)

static PosixState *posix_state(IoBackend *io) {
        return io->userdata;
}

static void posix_writeback_start(PosixState *s) {
        if (s->wb_hi > s->wb_lo)
                (void) sync_file_range(
                        s->fd,
                        (off_t) s->wb_lo,
                        (off_t) (s->wb_hi - s->wb_lo),
                        SYNC_FILE_RANGE_WRITE);
        s->wb_lo = s->wb_hi = s->wb_bytes = 0;
}

/*
 * Every 8 MiB written (copies go to ascending destinations), the written range starts its
 * write-back: a hint, never a barrier; the flush still decides what is durable, and writes
 * between two flushes may land in any order anyway (docs/on-disk-safety.md). Without it
 * nothing reaches the disk before the batch's fdatasync, which then writes hundreds of MiB
 * while the CPU waits; started early, the disk writes while the next chunks are copied.
 */
static void posix_writeback_note(PosixState *s, uint64_t off, uint64_t len) {
        if (s->wb_bytes > 0 && MAX(s->wb_hi, off + len) - MIN(s->wb_lo, off) > POSIX_WRITEBACK_SPAN)
                posix_writeback_start(s); /* far from the range so far: start that one alone */
        if (s->wb_bytes == 0) {
                s->wb_lo = off;
                s->wb_hi = off + len;
        } else {
                s->wb_lo = MIN(s->wb_lo, off);
                s->wb_hi = MAX(s->wb_hi, off + len);
        }
        s->wb_bytes += len;
        if (s->wb_bytes >= POSIX_WRITEBACK_BYTES)
                posix_writeback_start(s);
}

static bool off_ok(uint64_t off, uint64_t len) {
        /* The dispatcher already ruled out wrap-around; off_t is signed 64-bit. */
        return off <= INT64_MAX && len <= INT64_MAX - off;
}

static int posix_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        PosixState *s = posix_state(io);
        uint8_t *p = buf;

        if (!off_ok(off, len))
                return -EINVAL;

        while (len > 0) {
                ssize_t n = pread(s->fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO; /* EOF before the range ended */
                p += n;
                len -= (size_t) n;
                off += (uint64_t) n;
        }
        return 0;
}

static int posix_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off) {
        PosixState *s = posix_state(io);
        const uint8_t *p = buf;
        const uint64_t total = len;

        if (!off_ok(off, len))
                return -EINVAL;

        while (len > 0) {
                ssize_t n = pwrite(s->fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO; /* no progress and no error: do not spin */
                p += n;
                len -= (size_t) n;
                off += (uint64_t) n;
        }
        posix_writeback_note(s, off - total, total);
        return 0;
}

static int posix_flush(IoBackend *io) {
        PosixState *s = posix_state(io);

        /*
         * fdatasync is enough: the size is metadata that fdatasync does persist when it changed,
         * and timestamps do not matter. Only EINTR is retried; after an I/O error the page cache
         * may have dropped the dirty pages, so a retry could report a false success.
         */
        s->wb_lo = s->wb_hi = s->wb_bytes = 0; /* fdatasync writes it all */
        for (;;) {
                if (fdatasync(s->fd) >= 0)
                        return 0;
                if (errno != EINTR)
                        return -errno;
        }
}

static int posix_truncate(IoBackend *io, uint64_t size) {
        PosixState *s = posix_state(io);

        if (size > INT64_MAX)
                return -EINVAL;
        for (;;) {
                if (ftruncate(s->fd, (off_t) size) >= 0)
                        return 0;
                if (errno != EINTR)
                        return -errno;
        }
}

static int posix_size(IoBackend *io, uint64_t *ret) {
        PosixState *s = posix_state(io);
        struct stat st;

        if (s->is_blockdev) {
                uint64_t sz;

                /* st_size is 0 for block devices (qcow2 on LVM) */
                if (ioctl(s->fd, BLKGETSIZE64, &sz) < 0)
                        return -errno;
                *ret = sz;
                return 0;
        }

        if (fstat(s->fd, &st) < 0)
                return -errno;
        if (st.st_size < 0)
                return -EIO;
        *ret = (uint64_t) st.st_size;
        return 0;
}

static int posix_punch_hole(IoBackend *io, uint64_t off, uint64_t len) {
        PosixState *s = posix_state(io);

        if (len == 0)
                return 0; /* fallocate() rejects len 0 with EINVAL */
        if (!off_ok(off, len))
                return -EINVAL;
        for (;;) {
                if (fallocate(
                            s->fd,
                            FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                            (off_t) off,
                            (off_t) len) >= 0)
                        return 0;
                if (errno != EINTR)
                        return -errno;
        }
}

/* SEEK_DATA / SEEK_HOLE with the fallbacks io.h promises. */
static int posix_seek(IoBackend *io, uint64_t off, int whence, uint64_t *ret) {
        PosixState *s = posix_state(io);
        uint64_t size;
        off_t o;
        int r;

        /*
         * lseek first: the size is only needed at or past EOF (ENXIO) and for the fallbacks. A
         * scan between holes calls this twice per run, so an fstat per call doubled the cost.
         */
        if (off <= INT64_MAX) {
                o = lseek(s->fd, (off_t) off, whence);
                if (o >= 0) {
                        *ret = (uint64_t) o;
                        return 0;
                }
                if (errno != ENXIO && errno != EINVAL && errno != EOPNOTSUPP)
                        return -errno;
        }
        /*
         * ENXIO: at/after EOF, or (SEEK_DATA) only holes follow. EINVAL/EOPNOTSUPP: no hole
         * reporting here (old kernels, some network or FUSE filesystems).
         */
        bool no_holes = off <= INT64_MAX && errno != ENXIO;
        r = posix_size(io, &size);
        if (r < 0)
                return r;
        if (off >= size || !no_holes) {
                *ret = size;
                return 0;
        }
        *ret = whence == SEEK_DATA ? off : size;
        return 0;
}

static int posix_next_data(IoBackend *io, uint64_t off, uint64_t *ret) {
        return posix_seek(io, off, SEEK_DATA, ret);
}

static int posix_next_hole(IoBackend *io, uint64_t off, uint64_t *ret) {
        return posix_seek(io, off, SEEK_HOLE, ret);
}

static int posix_prefetch(IoBackend *io, uint64_t off, uint64_t len) {
        /* Queues read-ahead and returns: many ranges announced at once are read in parallel. */
        int r = posix_fadvise(posix_state(io)->fd, (off_t) off, (off_t) len, POSIX_FADV_WILLNEED);
        return r > 0 ? -r : 0;
}

static void posix_close(IoBackend *io) {
        PosixState *s = posix_state(io);

        if (!s)
                return;
        /* Closing the last fd of the open file description drops its OFD locks. */
        closep(&s->fd);
        free(s);
        io->userdata = NULL;
}

static const IoOps posix_ops = {
        .name = "posix",
        .pread = posix_pread,
        .pwrite = posix_pwrite,
        .flush = posix_flush,
        .truncate = posix_truncate,
        .size = posix_size,
        .punch_hole = posix_punch_hole,
        .next_data = posix_next_data,
        .next_hole = posix_next_hole,
        .prefetch = posix_prefetch,
        .close = posix_close,
};

/*
 * Opens path (borrowed) read-write or read-only, O_CLOEXEC. Regular files and block devices
 * only (-EISDIR for a directory, -EINVAL for anything else). On success stores a new backend
 * in *ret; the caller frees it with io_free. Cost: open + fstat.
 */
int io_posix_open(const char *path, bool writable, IoBackend **ret) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ PosixState *s = NULL;
        struct stat st;
        IoBackend *io;

        if (!path || !ret)
                return -EINVAL;

        fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                return -EINVAL;

        s = malloc(sizeof(*s));
        if (!s)
                return -ENOMEM;
        *s = (PosixState){
                .fd = -1,
                .is_blockdev = S_ISBLK(st.st_mode),
        };

        io = io_backend_new(&posix_ops, s, NULL);
        if (!io)
                return -ENOMEM;
        s->fd = TAKE_FD(fd);
        TAKE_PTR(s);

        *ret = io;
        return 0;
}

/* The io-posix layer at or below io, or NULL. */
static IoBackend *posix_find(IoBackend *io) {
        for (; io; io = io->next)
                if (io->ops == &posix_ops)
                        return io;
        return NULL;
}

/*
 * The fd of the io-posix layer at or below io (borrowed: valid until io_free), or -1 when the
 * stack has no io-posix layer. Filters on top are looked through.
 */
int io_posix_fd(IoBackend *io) {
        IoBackend *p = posix_find(io);

        return p ? posix_state(p)->fd : -1;
}

static int ofd_lock_byte(int fd, short type, uint64_t byte) {
        struct flock fl = {
                .l_type = type,
                .l_whence = SEEK_SET,
                .l_start = (off_t) byte,
                .l_len = 1,
                .l_pid = 0, /* must be 0 for OFD locks */
        };

        if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
                return -errno;
        return 0;
}

static void qemu_unlock_bytes(int fd, size_t n) {
        for (size_t i = 0; i < n; i++)
                (void) ofd_lock_byte(fd, F_UNLCK, qemu_own_lock_bytes[i]);
}

static int qemu_probe_fd(int fd) {
        static const unsigned bases[] = { QEMU_LOCK_PERM_BASE, QEMU_LOCK_SHARED_BASE };
        int found = 0;

        for (size_t b = 0; b < ELEMENTSOF(bases); b++)
                for (unsigned i = 0; i < QEMU_LOCK_NBITS; i++) {
                        /*
                         * Ask whether an exclusive lock would conflict, as QEMU's
                         * qemu_lock_fd_test() does. Locks of our own open file description
                         * never conflict, so every hit is a foreign holder.
                         */
                        struct flock fl = {
                                .l_type = F_WRLCK,
                                .l_whence = SEEK_SET,
                                .l_start = (off_t) (bases[b] + i),
                                .l_len = 1,
                                .l_pid = 0,
                        };

                        if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
                                return -errno;
                        if (fl.l_type != F_UNLCK) {
                                log_debug("QEMU lock byte %u is held elsewhere", bases[b] + i);
                                found++;
                        }
                }
        return found;
}

/*
 * Returns how many of the QEMU lock bytes 100-104/200-204 another open file description holds
 * (> 0: the image is in use), 0 when none, -errno on failure (-EINVAL when io has no io-posix
 * layer). Changes nothing. Cost: 10 fcntl calls, no I/O.
 */
int io_posix_probe_qemu_locks(IoBackend *io) {
        int fd = io_posix_fd(io);

        if (fd < 0)
                return -EINVAL;
        return qemu_probe_fd(fd);
}

/*
 * Takes QEMU's image locks the way a read-write QEMU does (apply first, then check, which is
 * race-free against a QEMU starting at the same moment: one of the two sees the other).
 * Returns 0 when we now hold the image exclusively (idempotent), -EBUSY when another process
 * holds a lock byte (our bytes are released again), other -errno on failure (e.g. -EINVAL on
 * a filesystem without OFD locks). The locks last until the fd is closed by io_free.
 * Cost: 16 fcntl calls, no I/O.
 */
int io_posix_lock_qemu(IoBackend *io) {
        IoBackend *p = posix_find(io);
        PosixState *s;
        size_t n;
        int r;

        if (!p)
                return -EINVAL;
        s = posix_state(p);
        if (s->qemu_locked)
                return 0;

        for (n = 0; n < ELEMENTSOF(qemu_own_lock_bytes); n++) {
                r = ofd_lock_byte(s->fd, F_RDLCK, qemu_own_lock_bytes[n]);
                if (r < 0) {
                        /* QEMU only takes read locks, but someone may hold a write lock. */
                        if (r == -EAGAIN || r == -EACCES)
                                r = -EBUSY;
                        goto fail_release;
                }
        }

        r = qemu_probe_fd(s->fd);
        if (r < 0)
                goto fail_release;
        if (r > 0) {
                r = -EBUSY;
                goto fail_release;
        }

        s->qemu_locked = true;
        return 0;

fail_release:
        qemu_unlock_bytes(s->fd, n);
        return r;
}
