/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * io-memory: the whole "file" in one growable heap buffer, for tests, fuzzers and crash
 * replay. Behaves like io-posix on a filesystem without hole reporting: growth reads as
 * zeros, punched ranges read as zeros, and next_data/next_hole are left NULL so the
 * dispatchers treat everything below the size as data.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "macro.h"

typedef struct MemoryState {
        uint8_t *buf;
        size_t size; /* bytes of file content */
        size_t cap;  /* bytes allocated; [size, cap) is garbage */
} MemoryState;

static MemoryState *memory_state(IoBackend *io) {
        return io->userdata;
}

/* Sets the size to new_size, zero-filling any growth. */
static int memory_resize(MemoryState *m, uint64_t new_size) {
        if (new_size > SIZE_MAX)
                return -EFBIG;

        if (new_size > m->cap) {
                size_t cap = MAX(m->cap, (size_t) 4096);
                uint8_t *b;

                while (cap < new_size)
                        cap = cap > SIZE_MAX / 2 ? (size_t) new_size : cap * 2;
                b = realloc(m->buf, cap);
                if (!b)
                        return -ENOMEM;
                m->buf = b;
                m->cap = cap;
        }
        if (new_size > m->size)
                memset(m->buf + m->size, 0, (size_t) new_size - m->size);
        m->size = (size_t) new_size;
        return 0;
}

static int memory_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        MemoryState *m = memory_state(io);

        if (len == 0)
                return 0;
        if (off > m->size || len > m->size - off)
                return -EIO; /* like a short read at EOF */
        memcpy(buf, m->buf + off, len);
        return 0;
}

static int memory_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off) {
        MemoryState *m = memory_state(io);
        int r;

        if (len == 0)
                return 0;
        if (off + len > m->size) {
                r = memory_resize(m, off + len);
                if (r < 0)
                        return r;
        }
        memcpy(m->buf + off, buf, len);
        return 0;
}

static int memory_flush(IoBackend *io) {
        return 0;
}

static int memory_truncate(IoBackend *io, uint64_t size) {
        return memory_resize(memory_state(io), size);
}

static int memory_size(IoBackend *io, uint64_t *ret) {
        *ret = memory_state(io)->size;
        return 0;
}

static int memory_punch_hole(IoBackend *io, uint64_t off, uint64_t len) {
        MemoryState *m = memory_state(io);

        /* KEEP_SIZE semantics: the part past EOF is ignored. */
        if (off >= m->size)
                return 0;
        memset(m->buf + off, 0, (size_t) MIN(len, (uint64_t) (m->size - off)));
        return 0;
}

static void memory_close(IoBackend *io) {
        MemoryState *m = memory_state(io);

        if (!m)
                return;
        free(m->buf);
        free(m);
        io->userdata = NULL;
}

static const IoOps memory_ops = {
        .name = "memory",
        .pread = memory_pread,
        .pwrite = memory_pwrite,
        .flush = memory_flush,
        .truncate = memory_truncate,
        .size = memory_size,
        .punch_hole = memory_punch_hole,
        .close = memory_close,
};

/*
 * Stores in *ret a new memory backend whose contents are a copy of data[0..len) (data is
 * borrowed and may be NULL when len is 0). The caller frees it with io_free.
 */
int io_memory_new(const void *data, size_t len, IoBackend **ret) {
        _cleanup_free_ MemoryState *m = NULL;
        IoBackend *io;
        int r;

        if ((!data && len > 0) || !ret)
                return -EINVAL;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        r = memory_resize(m, len);
        if (r < 0)
                return r;
        if (len > 0)
                memcpy(m->buf, data, len);

        io = io_backend_new(&memory_ops, m, NULL);
        if (!io) {
                free(m->buf);
                return -ENOMEM;
        }
        TAKE_PTR(m);

        *ret = io;
        return 0;
}

/*
 * Borrowed view of the contents of the memory backend io, valid until the next write or
 * truncate; its length goes to *ret_len (may be NULL). Returns NULL when io is not io-memory
 * (then *ret_len is untouched); an empty backend may return NULL with *ret_len = 0.
 */
const uint8_t *io_memory_data(IoBackend *io, size_t *ret_len) {
        MemoryState *m;

        if (!io || io->ops != &memory_ops)
                return NULL;
        m = memory_state(io);
        if (ret_len)
                *ret_len = m->size;
        return m->buf;
}
