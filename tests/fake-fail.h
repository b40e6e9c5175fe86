/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * fail() for the scripted peers the shell tests drive (tests/agent/fake-host.c,
 * tests/reclaimd/fake-qemu.c): "FAIL: message" on standard output, where the test collects the
 * peer's log, then exit 1.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "macro.h"

static _noreturn_ void fail(const char *fmt, ...) _printf_(1, 2);

static _noreturn_ void fail(const char *fmt, ...) {
        va_list ap;

        fputs("FAIL: ", stdout);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
        fflush(stdout);
        exit(1);
}
