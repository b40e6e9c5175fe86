/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A one-line progress bar for terminals: "compact  scan  [#########.........]  45%".
 * Disabled (all calls no-ops) when the stream is not a terminal or when asked.
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct Progress Progress;

/* New bar on `out` (borrowed). enabled=false makes every call a no-op. Caller frees. */
Progress *progress_new(FILE *out, bool enabled);
/* Redraws when the phase or the whole-percent value changed. */
void progress_update(Progress *p, const char *phase, uint64_t done, uint64_t total);
/* Clears the line. */
void progress_finish(Progress *p);
Progress *progress_free(Progress *p);
static inline void progress_freep(Progress **p) {
        if (*p)
                *p = progress_free(*p);
}
