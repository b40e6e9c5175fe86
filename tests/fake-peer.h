/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * What the scripted peers the shell tests drive share (tests/agent/fake-host.c, the host end of
 * a guest port; tests/reclaimd/fake-qemu.c, QEMU's end of a VM's channel): fail() prints
 * "FAIL: message" on standard output, where the test collects the peer's log, then exits 1;
 * fake_listen() binds a UNIX stream socket at a path.
 */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

/* Listens on a UNIX stream socket at path (an old file there is removed); fails on error. */
static inline int fake_listen(const char *path, int backlog) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                fail("socket path too long");
        strcpy(sa.sun_path, path);
        (void) unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(fd, backlog) < 0)
                fail("listen on %s: %s", path, strerror(errno));
        return fd;
}
