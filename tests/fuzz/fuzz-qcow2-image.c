/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the whole engine on an untrusted image held in memory. Parses the header and
 * tables, walks and checks every reference, simulates the zero pass and the plan (inspect),
 * then runs a real compaction on the in-memory copy. Any crash, sanitizer report or
 * post-check failure on an image the pre-check accepted is a bug.
 */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "io.h"
#include "qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        IoBackend *io = NULL;
        Qcow2Image *img = NULL;
        Qcow2Diag diag;
        Qcow2Info info;
        Qcow2CompactStats st = { 0 };
        int r;

        if (size > (8u << 20))
                return 0;
        if (io_memory_new(data, size, &io) < 0)
                return 0;
        if (qcow2_open(io, 0, &img, &diag) >= 0) {
                (void) qcow2_inspect(img, &(Qcow2InspectOptions){ .scan = true }, &info, &diag);
                img = qcow2_close(img);
        }
        if (qcow2_open(io, QCOW2_OPEN_WRITE, &img, &diag) >= 0) {
                r = qcow2_compact(img, &(Qcow2CompactOptions){ .batch_bytes = 4096 }, &st, &diag);
                /*
                 * A failed post-check (-ENOTRECOVERABLE) means the engine broke an image its
                 * pre-check had accepted: that is a bug, never an input problem.
                 */
                if (r == -ENOTRECOVERABLE)
                        abort();
                img = qcow2_close(img);
        }
        io_free(io);
        return 0;
}
