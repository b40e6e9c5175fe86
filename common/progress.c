/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "progress.h"

#define BAR_WIDTH 40

struct Progress {
        FILE *out;
        bool enabled;
        bool drawn;
        char phase[32];
        int percent;
};

Progress *progress_new(FILE *out, bool enabled) {
        Progress *p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        p->out = out;
        p->enabled = enabled;
        p->percent = -1;
        return p;
}

void progress_update(Progress *p, const char *phase, uint64_t done, uint64_t total) {
        char bar[BAR_WIDTH + 1];
        int percent;

        if (!p || !p->enabled)
                return;
        percent = total ? (int) (MIN(done, total) * 100 / total) : 100;
        if (percent == p->percent && strncmp(phase, p->phase, sizeof(p->phase)) == 0)
                return;
        p->percent = percent;
        snprintf(p->phase, sizeof(p->phase), "%s", phase);
        int fill = percent * BAR_WIDTH / 100;
        memset(bar, '#', (size_t) fill);
        memset(bar + fill, '.', (size_t) (BAR_WIDTH - fill));
        bar[BAR_WIDTH] = 0;
        fprintf(p->out, "\r%-8s [%s] %3d%%", phase, bar, percent);
        fflush(p->out);
        p->drawn = true;
}

void progress_finish(Progress *p) {
        if (!p || !p->enabled || !p->drawn)
                return;
        fprintf(p->out, "\r%*s\r", BAR_WIDTH + 20, "");
        fflush(p->out);
        p->drawn = false;
}

Progress *progress_free(Progress *p) {
        if (p)
                progress_finish(p);
        free(p);
        return NULL;
}
