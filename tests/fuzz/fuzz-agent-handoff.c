/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for serve's control socket (agent-handoff.c): the input is what a local client
 * sends. It goes through a real connection to a real AgentHandoff, and the server is run
 * until it returns a message (answered like serve does) or drops the client. A crash, a
 * sanitizer report, an allocation beyond the frame cap or a server stuck on one client is a
 * bug; dropping the client is the expected answer to almost everything.
 */

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent-handoff.h"
#include "channel.h"
#include "log.h"
#include "rpc-frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static AgentHandoff *server;
static char dir[64], path[96];

static void cleanup(void) {
        server = agent_handoff_free(server);
        (void) rmdir(dir);
}

static int server_get(void) {
        if (server)
                return 0;
        snprintf(dir, sizeof(dir), "/tmp/fuzz-handoff.XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/serve.sock", dir);
        if (agent_handoff_new(path, &server) < 0)
                return -1;
        atexit(cleanup);
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        /* One frame and some: more only sits unread in the socket. */
        if (size > RPC_FRAME_HEADER_SIZE + RPC_MAX_FRAME + 4096)
                return 0;
        log_set_max_level(LOG_CRIT);
        if (server_get() < 0)
                abort();
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                abort();
        memcpy(sa.sun_path, path, strlen(path));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                abort();
        /* Fits in the socket buffer (the default is far above 70 KiB). */
        if (size > 0 && send(fd, data, size, MSG_NOSIGNAL) != (ssize_t) size)
                abort();
        (void) shutdown(fd, SHUT_WR);

        for (int i = 0; i < 1000; i++) {
                struct pollfd p = { .fd = agent_handoff_fd(server), .events = POLLIN };
                struct pollfd c = { .fd = fd, .events = POLLIN };
                Reclaim__Envelope *m = NULL;
                int r;

                (void) poll(&p, 1, 10);
                r = agent_handoff_process(server, &m);
                if (r < 0)
                        abort();
                if (r > 0) {
                        if (m->body_case != RECLAIM__ENVELOPE__BODY_REPORT || !m->report)
                                abort();
                        (void) agent_handoff_ack(server, m->seq);
                        reclaim__envelope__free_unpacked(m, NULL);
                        break;
                }
                if (poll(&c, 1, 0) > 0)
                        break; /* dropped */
        }
        /* Whatever happened, the server is back to listening. */
        if (agent_handoff_deadline(server) != UINT64_MAX)
                abort();
        (void) close(fd);
        return 0;
}
