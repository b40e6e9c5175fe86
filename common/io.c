/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The IoBackend dispatchers. They validate arguments once, so backends can assume a non-NULL
 * backend, non-NULL buffers for non-empty transfers and ranges that do not wrap around 2^64.
 * An op a layer leaves NULL goes to the layer below when there is one (nbdkit filters work
 * the same way); only the bottom layer falls back to the defaults documented in io.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "macro.h"

static const char *const io_event_table[_IO_EV_MAX] = {
        [IO_EV_REFBLOCK_UPDATE] = "refblock_update",
        [IO_EV_REFTABLE_UPDATE] = "reftable_update",
        [IO_EV_REFTABLE_WRITE] = "reftable_write",
        [IO_EV_L1_UPDATE] = "l1_update",
        [IO_EV_L1_WRITE] = "l1_write",
        [IO_EV_L2_UPDATE] = "l2_update",
        [IO_EV_L2_WRITE] = "l2_write",
        [IO_EV_DATA_COPY] = "data_copy",
        [IO_EV_HEADER_UPDATE] = "header_update",
        [IO_EV_SNAPSHOT_UPDATE] = "snapshot_update",
        [IO_EV_BITMAP_UPDATE] = "bitmap_update",
        [IO_EV_TRUNCATE] = "truncate",
        [IO_EV_FLUSH] = "flush",
};

/* Returns the static name of ev (the enum name, lowercased, without IO_EV_), or NULL. */
const char *io_event_to_string(IoEvent ev) {
        if ((unsigned) ev >= _IO_EV_MAX)
                return NULL;
        return io_event_table[ev];
}

/* Returns the IoEvent whose name is s (exact match), or -EINVAL. Borrows s. */
int io_event_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(io_event_table); i++)
                if (io_event_table[i] && strcmp(io_event_table[i], s) == 0)
                        return (int) i;
        return -EINVAL;
}

/* The nearest layer, from io downwards, whose ops implement `field`; NULL when none does. */
#define IO_FIND_LAYER(io, field)                              \
        ({                                                    \
                IoBackend *_l_ = (io);                        \
                while (_l_ && !(_l_->ops && _l_->ops->field)) \
                        _l_ = _l_->next;                      \
                _l_;                                          \
        })

static bool range_wraps(uint64_t off, uint64_t len) {
        uint64_t end;

        return ADD_OVERFLOW(off, len, &end);
}

/* Reads exactly len bytes at off into buf (borrowed). -EIO when the range ends past EOF. */
int io_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        IoBackend *l;

        if (!io || (!buf && len > 0) || range_wraps(off, len))
                return -EINVAL;
        l = IO_FIND_LAYER(io, pread);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->pread(l, buf, len, off);
}

/* Writes exactly len bytes from buf (borrowed) at off, growing the file when needed. */
int io_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off) {
        IoBackend *l;

        if (!io || (!buf && len > 0) || range_wraps(off, len))
                return -EINVAL;
        l = IO_FIND_LAYER(io, pwrite);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->pwrite(l, buf, len, off);
}

/* A write barrier: everything written before is durable when this returns 0. */
int io_flush(IoBackend *io) {
        IoBackend *l;

        if (!io)
                return -EINVAL;
        l = IO_FIND_LAYER(io, flush);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->flush(l);
}

/* Sets the file size (shrinking or growing with zeros). */
int io_truncate(IoBackend *io, uint64_t size) {
        IoBackend *l;

        if (!io)
                return -EINVAL;
        l = IO_FIND_LAYER(io, truncate);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->truncate(l, size);
}

/* Stores the current size in *ret (only on success). */
int io_size(IoBackend *io, uint64_t *ret) {
        IoBackend *l;

        if (!io || !ret)
                return -EINVAL;
        l = IO_FIND_LAYER(io, size);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->size(l, ret);
}

/* Deallocates [off, off+len) keeping the size. -EOPNOTSUPP when no layer can. */
int io_punch_hole(IoBackend *io, uint64_t off, uint64_t len) {
        IoBackend *l;

        if (!io || range_wraps(off, len))
                return -EINVAL;
        l = IO_FIND_LAYER(io, punch_hole);
        if (!l)
                return -EOPNOTSUPP;
        return l->ops->punch_hole(l, off, len);
}

/*
 * First offset >= off that may hold data, in *ret (the size when only holes follow or off is
 * at/after EOF). Without hole information everything below the size is data. Costs one
 * size query on the fallback path.
 */
int io_next_data(IoBackend *io, uint64_t off, uint64_t *ret) {
        IoBackend *l;
        uint64_t size;
        int r;

        if (!io || !ret)
                return -EINVAL;
        l = IO_FIND_LAYER(io, next_data);
        if (l)
                return l->ops->next_data(l, off, ret);

        r = io_size(io, &size);
        if (r < 0)
                return r;
        *ret = MIN(off, size);
        return 0;
}

void io_prefetch(IoBackend *io, uint64_t off, uint64_t len) {
        IoBackend *l;

        if (!io || len == 0 || range_wraps(off, len))
                return;
        l = IO_FIND_LAYER(io, prefetch);
        if (l)
                (void) l->ops->prefetch(l, off, len);
}

/*
 * First offset >= off inside a hole, in *ret; the size when no hole follows (every file has
 * an implicit hole at EOF, as with lseek(SEEK_HOLE)) or off is at/after EOF.
 */
int io_next_hole(IoBackend *io, uint64_t off, uint64_t *ret) {
        IoBackend *l;
        uint64_t size;
        int r;

        if (!io || !ret)
                return -EINVAL;
        l = IO_FIND_LAYER(io, next_hole);
        if (l)
                return l->ops->next_hole(l, off, ret);

        r = io_size(io, &size);
        if (r < 0)
                return r;
        *ret = size;
        return 0;
}

/*
 * Announces the metadata write that follows. Returns 0 when no layer cares, -EINVAL for an
 * unknown event, or a layer's -errno (the caller must then skip the write it announced).
 */
int io_event(IoBackend *io, IoEvent ev) {
        IoBackend *l;

        if (!io || (unsigned) ev >= _IO_EV_MAX)
                return -EINVAL;
        l = IO_FIND_LAYER(io, event);
        if (!l)
                return 0;
        return l->ops->event(l, ev);
}

/* Closes io and every layer below it, top first. Accepts NULL; always returns NULL. */
IoBackend *io_free(IoBackend *io) {
        while (io) {
                IoBackend *next = io->next;

                if (io->ops && io->ops->close)
                        io->ops->close(io);
                free(io);
                io = next;
        }
        return NULL;
}

/* pread on the layer below io; -EINVAL when io has none. */
int io_next_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        if (!io || !io->next)
                return -EINVAL;
        return io_pread(io->next, buf, len, off);
}

/* Allocates a layer; see io.h. Returns NULL on ENOMEM (nothing is taken over then). */
IoBackend *io_backend_new(const IoOps *ops, void *userdata, IoBackend *next) {
        IoBackend *io;

        assert(ops);

        io = malloc(sizeof(*io));
        if (!io)
                return NULL;
        *io = (IoBackend){
                .ops = ops,
                .next = next,
                .userdata = userdata,
        };
        return io;
}
