/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * io-log: records every write (with a copy of its payload), flush, truncate, punch and event
 * that passes through it, in order, like dm-log-writes. Crash tests replay any prefix of the
 * log onto a copy of the starting image.
 *
 * An operation is recorded only once the layer below has completed it: a failed operation
 * has an unknown effect and the engine treats it as not done. The entry (and its payload
 * copy) is prepared *before* the operation is passed down, so a successful operation is never
 * missing from the log for lack of memory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "macro.h"

typedef struct LogState {
        IoLogEntry *entries;
        size_t n;
        size_t cap;
} LogState;

static LogState *log_state(IoBackend *io) {
        return io->userdata;
}

/* Makes room for one more entry. */
static int log_reserve(LogState *l) {
        IoLogEntry *e;
        size_t cap;

        if (l->n < l->cap)
                return 0;
        if (l->cap > SIZE_MAX / 2 / sizeof(IoLogEntry))
                return -ENOMEM;
        cap = MAX(l->cap * 2, (size_t) 64);
        e = realloc(l->entries, cap * sizeof(IoLogEntry));
        if (!e)
                return -ENOMEM;
        l->entries = e;
        l->cap = cap;
        return 0;
}

/*
 * r is the result of the operation just passed down (after log_reserve). Appends entry when
 * it succeeded, otherwise frees entry's payload. Returns r.
 */
static int log_commit(LogState *l, int r, IoLogEntry entry) {
        if (r < 0) {
                free(entry.data);
                return r;
        }
        l->entries[l->n++] = entry;
        return r;
}

static int log_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off) {
        LogState *l = log_state(io);
        uint8_t *copy = NULL;
        int r;

        r = log_reserve(l);
        if (r < 0)
                return r;
        if (len > 0) {
                copy = malloc(len);
                if (!copy)
                        return -ENOMEM;
                memcpy(copy, buf, len);
        }

        r = io_pwrite(io->next, buf, len, off);
        return log_commit(
                l,
                r,
                (IoLogEntry){
                        .kind = IO_LOG_WRITE,
                        .off = off,
                        .len = len,
                        .data = copy,
                });
}

static int log_flush(IoBackend *io) {
        LogState *l = log_state(io);
        int r;

        r = log_reserve(l);
        if (r < 0)
                return r;
        return log_commit(l, io_flush(io->next), (IoLogEntry){ .kind = IO_LOG_FLUSH });
}

static int log_truncate(IoBackend *io, uint64_t size) {
        LogState *l = log_state(io);
        int r;

        r = log_reserve(l);
        if (r < 0)
                return r;
        return log_commit(
                l,
                io_truncate(io->next, size),
                (IoLogEntry){ .kind = IO_LOG_TRUNCATE, .off = size });
}

static int log_punch_hole(IoBackend *io, uint64_t off, uint64_t len) {
        LogState *l = log_state(io);
        int r;

        r = log_reserve(l);
        if (r < 0)
                return r;
        return log_commit(
                l,
                io_punch_hole(io->next, off, len),
                (IoLogEntry){ .kind = IO_LOG_PUNCH, .off = off, .len = len });
}

static int log_event(IoBackend *io, IoEvent ev) {
        LogState *l = log_state(io);
        int r;

        r = log_reserve(l);
        if (r < 0)
                return r;
        return log_commit(
                l, io_event(io->next, ev), (IoLogEntry){ .kind = IO_LOG_EVENT, .event = ev });
}

static void log_close(IoBackend *io) {
        LogState *l = log_state(io);

        if (!l)
                return;
        for (size_t i = 0; i < l->n; i++)
                free(l->entries[i].data);
        free(l->entries);
        free(l);
        io->userdata = NULL;
}

static const IoOps log_ops = {
        .name = "log",
        .pwrite = log_pwrite,
        .flush = log_flush,
        .truncate = log_truncate,
        .punch_hole = log_punch_hole,
        .event = log_event,
        .close = log_close,
};

/*
 * Stores in *ret a new log layer on top of below (ownership of below moves to the new layer
 * on success only). Reads, size and hole queries pass through unrecorded. Memory grows with
 * every recorded write's payload until io_free.
 */
int io_log_new(IoBackend *below, IoBackend **ret) {
        _cleanup_free_ LogState *l = NULL;
        IoBackend *io;

        if (!below || !ret)
                return -EINVAL;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;

        io = io_backend_new(&log_ops, l, below);
        if (!io)
                return -ENOMEM;
        TAKE_PTR(l);

        *ret = io;
        return 0;
}

/*
 * The entries recorded by the log layer io, oldest first (borrowed, valid until the next
 * operation on io or io_free); their count goes to *ret_n. Returns NULL when io is not an
 * io-log layer (then *ret_n is untouched); an empty log may return NULL with *ret_n = 0.
 */
const IoLogEntry *io_log_entries(IoBackend *io, size_t *ret_n) {
        LogState *l;

        if (!io || !ret_n || io->ops != &log_ops)
                return NULL;
        l = log_state(io);
        *ret_n = l->n;
        return l->entries;
}
