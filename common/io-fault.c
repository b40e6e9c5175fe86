/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * io-fault: error injection (QEMU blkdebug / nbdkit error filter). One IoFaultSpec per layer;
 * stack several layers for several faults. Operations the spec does not name pass through
 * untouched, by the dispatchers' forwarding of NULL ops.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "io.h"
#include "log.h"
#include "macro.h"

typedef struct FaultState {
        IoFaultSpec spec;
        uint64_t matched;  /* matching calls seen so far */
        uint64_t injected; /* of those, how many were failed */
} FaultState;

static FaultState *fault_state(IoBackend *io) {
        return io->userdata;
}

/* Counts one call of kind op (and ev, for events); true when this one must fail. */
static bool fault_hit(FaultState *f, IoFaultOp op, IoEvent ev) {
        if (f->spec.op != op || (op == IO_FAULT_OP_EVENT && f->spec.event != ev))
                return false;

        f->matched++;
        if (f->matched < f->spec.nth || (f->matched > f->spec.nth && !f->spec.always))
                return false;

        f->injected++;
        log_debug(
                "io-fault: failing call %" PRIu64 " of op %d with errno %d",
                f->matched,
                (int) op,
                f->spec.error);
        return true;
}

static int fault_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        FaultState *f = fault_state(io);

        if (fault_hit(f, IO_FAULT_OP_PREAD, 0))
                return -f->spec.error;
        return io_next_pread(io, buf, len, off);
}

static int fault_pwrite(IoBackend *io, const void *buf, size_t len, uint64_t off) {
        FaultState *f = fault_state(io);
        int r;

        if (!fault_hit(f, IO_FAULT_OP_PWRITE, 0))
                return io_pwrite(io->next, buf, len, off);

        if (f->spec.short_write) {
                /*
                 * A torn write, as a disk can tear it: the whole 512-byte sectors before the
                 * middle of the buffer land, the caller sees an error. Disks never tear inside
                 * a sector (QEMU relies on that too), so neither does this.
                 */
                uint64_t cut = (off + len / 2) & ~(uint64_t) 511;
                if (cut > off) {
                        r = io_pwrite(io->next, buf, (size_t) (cut - off), off);
                        if (r < 0)
                                return r;
                }
        }
        return -f->spec.error;
}

static int fault_flush(IoBackend *io) {
        FaultState *f = fault_state(io);

        if (fault_hit(f, IO_FAULT_OP_FLUSH, 0))
                return -f->spec.error;
        return io_flush(io->next);
}

static int fault_truncate(IoBackend *io, uint64_t size) {
        FaultState *f = fault_state(io);

        if (fault_hit(f, IO_FAULT_OP_TRUNCATE, 0))
                return -f->spec.error;
        return io_truncate(io->next, size);
}

static int fault_event(IoBackend *io, IoEvent ev) {
        FaultState *f = fault_state(io);

        if (fault_hit(f, IO_FAULT_OP_EVENT, ev))
                return -f->spec.error;
        return io_event(io->next, ev);
}

static void fault_close(IoBackend *io) {
        free(io->userdata);
        io->userdata = NULL;
}

static const IoOps fault_ops = {
        .name = "fault",
        .pread = fault_pread,
        .pwrite = fault_pwrite,
        .flush = fault_flush,
        .truncate = fault_truncate,
        .event = fault_event,
        .close = fault_close,
};

/*
 * Stores in *ret a new fault layer on top of below (ownership of below moves to the new layer
 * on success only) that fails calls as spec (copied) says. Returns -EINVAL for a spec with an
 * unknown op or event, nth == 0, or error <= 0.
 */
int io_fault_new(IoBackend *below, const IoFaultSpec *spec, IoBackend **ret) {
        _cleanup_free_ FaultState *f = NULL;
        IoBackend *io;

        if (!below || !spec || !ret)
                return -EINVAL;
        if ((unsigned) spec->op >= _IO_FAULT_OP_MAX || spec->nth == 0 || spec->error <= 0)
                return -EINVAL;
        if (spec->op == IO_FAULT_OP_EVENT && (unsigned) spec->event >= _IO_EV_MAX)
                return -EINVAL;

        f = malloc(sizeof(*f));
        if (!f)
                return -ENOMEM;
        *f = (FaultState){
                .spec = *spec,
        };

        io = io_backend_new(&fault_ops, f, below);
        if (!io)
                return -ENOMEM;
        TAKE_PTR(f);

        *ret = io;
        return 0;
}

/* How many calls the fault layer io has failed so far; 0 when io is not an io-fault layer. */
uint64_t io_fault_injected(IoBackend *io) {
        if (!io || io->ops != &fault_ops)
                return 0;
        return fault_state(io)->injected;
}
