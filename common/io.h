/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Stackable I/O backends (nbdkit-filter style). Every byte the qcow2 engine reads or writes
 * goes through an IoBackend, so tests can swap the real file for memory, inject faults, or
 * record a write log and replay any crash state.
 *
 * All functions return >= 0 on success and -errno on failure. Offsets and lengths are
 * uint64_t. pread/pwrite are "full": a short transfer is an error (-EIO for reads past EOF).
 *
 * Events: before each metadata write the engine calls io_event(io, IO_EV_*). Backends that do
 * not care pass it down; io-fault can fail on an event, io-log records it.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

typedef enum IoEvent {
        IO_EV_REFBLOCK_UPDATE, /* refcount block write (raise or lower) */
        IO_EV_REFTABLE_UPDATE, /* refcount table entry write */
        IO_EV_REFTABLE_WRITE,  /* whole refcount table written to a new place */
        IO_EV_L1_UPDATE,       /* L1 entry write */
        IO_EV_L1_WRITE,        /* whole L1 table written to a new place */
        IO_EV_L2_UPDATE,       /* L2 entries rewritten in place */
        IO_EV_L2_WRITE,        /* L2 table copied to a new place */
        IO_EV_DATA_COPY,       /* data cluster copied to a new place */
        IO_EV_HEADER_UPDATE,   /* header field group rewritten */
        IO_EV_SNAPSHOT_UPDATE, /* snapshot table / entry write */
        IO_EV_BITMAP_UPDATE,   /* bitmap directory / table write */
        IO_EV_TRUNCATE,        /* file truncated */
        IO_EV_FLUSH,           /* a barrier */
        _IO_EV_MAX,
} IoEvent;

const char *io_event_to_string(IoEvent ev);
/* Returns the event for a name as printed by io_event_to_string, or -EINVAL. */
int io_event_from_string(const char *s);

typedef struct IoBackend IoBackend;

typedef struct IoOps {
        const char *name;
        int (*pread)(IoBackend *io, void *buf, size_t len, uint64_t off);
        int (*pwrite)(IoBackend *io, const void *buf, size_t len, uint64_t off);
        int (*flush)(IoBackend *io);
        int (*truncate)(IoBackend *io, uint64_t size);
        /* Current size in bytes, returned in *ret. */
        int (*size)(IoBackend *io, uint64_t *ret);
        /* Optional (NULL = -EOPNOTSUPP): deallocate a range inside the file, size unchanged. */
        int (*punch_hole)(IoBackend *io, uint64_t off, uint64_t len);
        /*
         * Optional (NULL = everything is data): the first offset >= off that may hold data, in
         * *ret (== size when only holes follow). Like lseek(SEEK_DATA); used to skip holes.
         */
        int (*next_data)(IoBackend *io, uint64_t off, uint64_t *ret);
        /* Optional: the first offset >= off inside a hole (or size), like lseek(SEEK_HOLE). */
        int (*next_hole)(IoBackend *io, uint64_t off, uint64_t *ret);
        /* Optional (NULL = nothing): the range will be read soon; start reading it ahead. */
        int (*prefetch)(IoBackend *io, uint64_t off, uint64_t len);
        /* Optional: called by io_event(); a negative return fails the operation that follows. */
        int (*event)(IoBackend *io, IoEvent ev);
        void (*close)(IoBackend *io);
} IoOps;

struct IoBackend {
        const IoOps *ops;
        IoBackend *next; /* the layer below (filters), or NULL */
        void *userdata;  /* backend private state */
};

/* Thin dispatchers. */
int io_pread(IoBackend *io, void *buf, size_t len, uint64_t off);
int io_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off);
int io_flush(IoBackend *io);
int io_truncate(IoBackend *io, uint64_t size);
int io_size(IoBackend *io, uint64_t *ret);
int io_punch_hole(IoBackend *io, uint64_t off, uint64_t len);
int io_next_data(IoBackend *io, uint64_t off, uint64_t *ret);
int io_next_hole(IoBackend *io, uint64_t off, uint64_t *ret);
/* A hint that [off, off+len) will be read soon (asynchronous read-ahead); never fails a caller. */
void io_prefetch(IoBackend *io, uint64_t off, uint64_t len);
int io_event(IoBackend *io, IoEvent ev);

/* Closes the whole stack (this layer and every layer below). Accepts NULL; returns NULL. */
IoBackend *io_free(IoBackend *io);
static inline void io_freep(IoBackend **io) {
        if (*io)
                *io = io_free(*io);
}

/*
 * Filters pass calls they do not implement to io->next with these helpers.
 */
int io_next_pread(IoBackend *io, void *buf, size_t len, uint64_t off);

/*
 * For backend implementers. A NULL op in a layer that has io->next set is passed to the layer
 * below by the dispatchers; the NULL defaults documented in IoOps apply to the bottom layer.
 *
 * io_backend_new() allocates a layer with ops (borrowed, normally static) and userdata on top
 * of next (NULL for a bottom layer). On success the layer owns userdata and next; on failure
 * (NULL, only ENOMEM) the caller still does. io_free() calls ops->close, which releases
 * userdata (never the IoBackend or io->next), then frees the IoBackend itself and goes on
 * with next; so every layer must come from io_backend_new().
 */
IoBackend *io_backend_new(const IoOps *ops, void *userdata, IoBackend *next);

/* ---- io-posix: a real file ---- */

/*
 * Opens path (O_CLOEXEC; O_RDWR when writable, else O_RDONLY). Returns a new backend, caller
 * frees with io_free (closing the fd, which drops any OFD lock).
 */
int io_posix_open(const char *path, bool writable, IoBackend **ret);
/* The fd under a posix backend (borrowed), or -1 if io is not io-posix. */
int io_posix_fd(IoBackend *io);

/*
 * QEMU image locks (block/file-posix.c): byte 100+i = "I hold permission i", 200+i = "I do not
 * share permission i". QEMU takes them as OFD read locks of length 1.
 *
 * io_posix_lock_qemu(): take read locks on 100, 101, 103, 200, 201, 203 (what a read-write
 * QEMU user holds, plus 200 so that -U readers needing consistent reads are kept out too),
 * then probe 100-104 and 200-204 for any foreign holder. Returns 0 when we hold the image
 * exclusively, -EBUSY when another process holds a QEMU lock byte (our locks are released
 * again), other -errno on failure. The locks live as long as the fd.
 */
int io_posix_lock_qemu(IoBackend *io);

/*
 * Probe only, no side effects: > 0 when another open file description holds a lock on one of
 * bytes 100-104 / 200-204 (a running QEMU or qemu-nbd), 0 when none, -errno on failure.
 */
int io_posix_probe_qemu_locks(IoBackend *io);

/* ---- io-memory: a growable buffer (tests, fuzzers, crash replay) ---- */

/* A new memory backend holding a copy of data[0..len). Caller frees with io_free. */
int io_memory_new(const void *data, size_t len, IoBackend **ret);
/* Borrowed view of the current contents (valid until the next write or truncate). */
const uint8_t *io_memory_data(IoBackend *io, size_t *ret_len);

/* ---- io-fault: error injection on top of another backend ---- */

typedef enum IoFaultOp {
        IO_FAULT_OP_PREAD,
        IO_FAULT_OP_PWRITE,
        IO_FAULT_OP_FLUSH,
        IO_FAULT_OP_TRUNCATE,
        IO_FAULT_OP_EVENT, /* fail at the named event (.event) */
        _IO_FAULT_OP_MAX,
} IoFaultOp;

typedef struct IoFaultSpec {
        IoFaultOp op;
        IoEvent event;    /* for IO_FAULT_OP_EVENT */
        uint64_t nth;     /* fail the nth matching call (1-based) */
        int error;        /* positive errno to return, e.g. EIO or ENOSPC */
        bool always;      /* keep failing every matching call after the nth */
        bool short_write; /* pwrite: land the sectors before the middle, then fail */
} IoFaultSpec;

/* Wraps `below` (takes ownership on success; on failure the caller still owns it). */
int io_fault_new(IoBackend *below, const IoFaultSpec *spec, IoBackend **ret);
/* How many faults were injected so far. */
uint64_t io_fault_injected(IoBackend *io);

/* ---- io-log: a write log for crash replay (dm-log-writes-like) ---- */

typedef enum IoLogKind {
        IO_LOG_WRITE,
        IO_LOG_FLUSH,
        IO_LOG_TRUNCATE,
        IO_LOG_PUNCH,
        IO_LOG_EVENT,
} IoLogKind;

typedef struct IoLogEntry {
        IoLogKind kind;
        uint64_t off;  /* write/punch offset, truncate size */
        uint64_t len;  /* write/punch length */
        uint8_t *data; /* write payload (owned by the log) */
        IoEvent event; /* for IO_LOG_EVENT */
} IoLogEntry;

/*
 * Wraps `below` (takes ownership on success; on failure the caller still owns it) and records
 * every mutation that reaches it and that the layer below completed.
 */
int io_log_new(IoBackend *below, IoBackend **ret);
/* Borrowed array of entries, valid until the next operation recorded through io or io_free. */
const IoLogEntry *io_log_entries(IoBackend *io, size_t *ret_n);
