/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <stdio.h>
#include <string.h>

#include "log.h"

static int max_level = LOG_INFO;
static const char *program_name = NULL;

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

void log_set_program_name(const char *name) {
        program_name = name;
}

int log_internal(int level, int error, const char *file, int line, const char *fmt, ...) {
        int r = error < 0 ? error : -error;

        if (level > max_level)
                return r;

        int saved = errno;
        char buf[2048];
        va_list ap;

        /* Let "%m" print the error we were given, not whatever errno happens to hold. */
        errno = r < 0 ? -r : 0;
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);

        if (level >= LOG_DEBUG)
                (void) fprintf(
                        stderr,
                        "%s%s%s:%d: %s\n",
                        program_name ?: "",
                        program_name ? ": " : "",
                        file,
                        line,
                        buf);
        else
                (void) fprintf(
                        stderr, "%s%s%s\n", program_name ?: "", program_name ? ": " : "", buf);
        errno = saved;
        return r;
}
