/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for the local hand-off (agent-handoff.c): the header check (the 64 KiB cap before
 * any allocation), the CRC and body check, and serve's side on a real socket in $TMPDIR: bad
 * clients are dropped without an answer, a Report is returned and answered with a Pong.
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent-handoff.h"
#include "agent-message.h"
#include "channel.h"
#include "macro.h"
#include "rpc-frame.h"
#include "rpc-message.h"

static void put_le32(uint8_t *p, uint32_t v) {
        p[0] = (uint8_t) v;
        p[1] = (uint8_t) (v >> 8);
        p[2] = (uint8_t) (v >> 16);
        p[3] = (uint8_t) (v >> 24);
}

static void test_parse_header(void **state) {
        static const struct {
                uint32_t magic, len;
                size_t max;
                int r;
        } cases[] = {
                { RPC_FRAME_MAGIC, 1, RPC_MAX_FRAME, 0 },
                { RPC_FRAME_MAGIC, RPC_MAX_FRAME, RPC_MAX_FRAME, 0 },
                { RPC_FRAME_MAGIC, RPC_MAX_FRAME + 1, RPC_MAX_FRAME, -EMSGSIZE },
                { RPC_FRAME_MAGIC, UINT32_MAX, RPC_MAX_FRAME, -EMSGSIZE },
                /* max above the protocol's cap: the cap still holds */
                { RPC_FRAME_MAGIC, RPC_MAX_FRAME + 1, SIZE_MAX, -EMSGSIZE },
                { RPC_FRAME_MAGIC, 4097, 4096, -EMSGSIZE },
                { RPC_FRAME_MAGIC, 0, RPC_MAX_FRAME, -EBADMSG },
                { 0x4d4c4353, 10, RPC_MAX_FRAME, -EBADMSG },
                { 0, 10, RPC_MAX_FRAME, -EBADMSG },
        };
        uint32_t len = 12345;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint8_t h[RPC_FRAME_HEADER_SIZE] = {};
                uint32_t got = 777;
                int r;

                put_le32(h, cases[i].magic);
                put_le32(h + 4, cases[i].len);
                r = agent_handoff_parse_header(h, cases[i].max, &got);
                if (r != cases[i].r)
                        fail_msg("case %zu: %d, want %d", i, r, cases[i].r);
                if (r == 0)
                        assert_int_equal(got, cases[i].len);
                else
                        assert_int_equal(got, 777); /* untouched on failure */
        }
        assert_int_equal(agent_handoff_parse_header(NULL, RPC_MAX_FRAME, &len), -EINVAL);
}

static AgentRunReport *one_fs_report(void) {
        AgentRunReport *rep = calloc(1, sizeof(*rep));

        assert_non_null(rep);
        rep->items = calloc(1, sizeof(*rep->items));
        assert_non_null(rep->items);
        rep->n = 1;
        rep->mode = AGENT_MODE_TRIM;
        rep->duration_ms = 42;
        rep->items[0].mount_point = strdup("/srv");
        rep->items[0].device = strdup("/dev/vdb1");
        rep->items[0].fstype = strdup("ext4");
        rep->items[0].method = AGENT_METHOD_TRIM;
        rep->items[0].outcome = AGENT_OUTCOME_OK;
        rep->items[0].bytes = 123456789;
        return rep;
}

/* A packed Ping, as a whole frame (caller frees). */
static uint8_t *ping_frame(size_t *ret_len) {
        Reclaim__Envelope m;
        Reclaim__Ping p;
        uint8_t *f = NULL;

        reclaim__ping__init(&p);
        p.nonce = 7;
        rpc_message_init(&m, 3);
        m.body_case = RECLAIM__ENVELOPE__BODY_PING;
        m.ping = &p;
        assert_int_equal(rpc_message_pack(&m, &f, ret_len), 0);
        return f;
}

static void test_unpack(void **state) {
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = one_fs_report();
        _cleanup_free_ uint8_t *f = NULL, *p = NULL;
        Reclaim__Envelope *m = NULL;
        size_t len, plen;

        assert_int_equal(agent_pack_report(rep, 5, 0, &f, &len), 0);
        assert_true(len > RPC_FRAME_HEADER_SIZE);
        assert_int_equal(
                agent_handoff_unpack(
                        f,
                        f + RPC_FRAME_HEADER_SIZE,
                        len - RPC_FRAME_HEADER_SIZE,
                        RECLAIM__ENVELOPE__BODY_REPORT,
                        &m),
                0);
        assert_int_equal(m->seq, 5);
        assert_int_equal(m->in_reply_to, 0);
        assert_int_equal(m->report->n_filesystems, 1);
        assert_int_equal(m->report->filesystems[0]->bytes, 123456789);
        assert_string_equal(m->report->filesystems[0]->mount_point, "/srv");
        reclaim__envelope__free_unpacked(m, NULL);
        m = NULL;

        /* the right frame but another body wanted */
        assert_int_equal(
                agent_handoff_unpack(
                        f,
                        f + RPC_FRAME_HEADER_SIZE,
                        len - RPC_FRAME_HEADER_SIZE,
                        RECLAIM__ENVELOPE__BODY_PONG,
                        &m),
                -EBADMSG);
        assert_null(m);

        /* a payload byte flipped: the CRC does not match */
        f[len - 1] ^= 1;
        assert_int_equal(
                agent_handoff_unpack(
                        f,
                        f + RPC_FRAME_HEADER_SIZE,
                        len - RPC_FRAME_HEADER_SIZE,
                        RECLAIM__ENVELOPE__BODY_REPORT,
                        &m),
                -EBADMSG);
        f[len - 1] ^= 1;
        /* the length in the header does not match the payload */
        assert_int_equal(
                agent_handoff_unpack(
                        f,
                        f + RPC_FRAME_HEADER_SIZE,
                        len - RPC_FRAME_HEADER_SIZE - 1,
                        RECLAIM__ENVELOPE__BODY_REPORT,
                        &m),
                -EBADMSG);

        /* a valid frame that is not a Report */
        p = ping_frame(&plen);
        assert_int_equal(
                agent_handoff_unpack(
                        p,
                        p + RPC_FRAME_HEADER_SIZE,
                        plen - RPC_FRAME_HEADER_SIZE,
                        RECLAIM__ENVELOPE__BODY_REPORT,
                        &m),
                -EBADMSG);
        assert_null(m);
}

/* ---- serve's side on a real socket ---- */

typedef struct Fixture {
        char dir[64];
        char path[96];
        AgentHandoff *h;
} Fixture;

static int setup(void **state) {
        Fixture *fx = calloc(1, sizeof(*fx));
        const char *tmp = getenv("TMPDIR") ?: "/tmp";

        if (!fx || strlen(tmp) > 30)
                tmp = "/tmp";
        snprintf(fx->dir, sizeof(fx->dir), "%s/handoff.XXXXXX", tmp);
        if (!mkdtemp(fx->dir))
                return -1;
        snprintf(fx->path, sizeof(fx->path), "%s/run/serve.sock", fx->dir);
        if (agent_handoff_new(fx->path, &fx->h) < 0)
                return -1;
        *state = fx;
        return 0;
}

static int teardown(void **state) {
        Fixture *fx = *state;
        char run[128];

        fx->h = agent_handoff_free(fx->h);
        snprintf(run, sizeof(run), "%s/run", fx->dir);
        (void) rmdir(run);
        (void) rmdir(fx->dir);
        free(fx);
        return 0;
}

static int client_connect(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        memcpy(sa.sun_path, path, strlen(path));
        assert_int_equal(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        return fd;
}

/* Runs the server until it returns a message or closes client_fd's connection (the client
 * sees EOF), at most 3 s. Returns the message or NULL. */
static Reclaim__Envelope *serve_once(AgentHandoff *h, int client_fd) {
        uint64_t deadline = agent_now_ns() + UINT64_C(3000000000);

        while (agent_now_ns() < deadline) {
                struct pollfd p = { .fd = agent_handoff_fd(h), .events = agent_handoff_events(h) };
                struct pollfd c = { .fd = client_fd, .events = POLLIN };
                Reclaim__Envelope *m = NULL;
                int r;

                (void) poll(&p, 1, 50);
                r = agent_handoff_process(h, &m);
                assert_true(r >= 0);
                if (r > 0)
                        return m;
                if (poll(&c, 1, 0) > 0)
                        return NULL; /* dropped: EOF (or a reset) on the client's side */
        }
        fail_msg("the server neither returned a message nor dropped the client");
        return NULL;
}

/* The client sends data, closes its writing end and expects no answer but EOF. */
static void bad_client(Fixture *fx, const void *data, size_t len) {
        int fd = client_connect(fx->path);
        char buf[16];

        if (len > 0)
                assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t) len);
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_null(serve_once(fx->h, fd));
        assert_true(recv(fd, buf, sizeof(buf), 0) <= 0);
        (void) close(fd);
        /* back to listening, no client left */
        assert_int_equal(agent_handoff_deadline(fx->h), UINT64_MAX);
}

static void test_server_modes(void **state) {
        Fixture *fx = *state;
        struct stat st;
        char run[128];

        assert_int_equal(stat(fx->path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0600);
        snprintf(run, sizeof(run), "%s/run", fx->dir);
        assert_int_equal(stat(run, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0700);
}

static void test_server_bad_clients(void **state) {
        Fixture *fx = *state;
        uint8_t h[RPC_FRAME_HEADER_SIZE];
        _cleanup_free_ uint8_t *p = NULL;
        size_t plen;

        bad_client(fx, "not a frame at all, just words\n", 31);
        bad_client(fx, "RC", 2); /* half a header */

        put_le32(h, RPC_FRAME_MAGIC);
        put_le32(h + 4, RPC_MAX_FRAME + 1); /* refused before allocating */
        put_le32(h + 8, 0);
        bad_client(fx, h, sizeof(h));

        put_le32(h + 4, 100); /* announces 100 bytes, sends none */
        bad_client(fx, h, sizeof(h));

        p = ping_frame(&plen);
        bad_client(fx, p, plen); /* valid, but not a Report */
}

static void test_server_report(void **state) {
        Fixture *fx = *state;
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = one_fs_report();
        _cleanup_free_ uint8_t *f = NULL;
        Reclaim__Envelope *m, *ack = NULL;
        uint8_t buf[256];
        size_t len;
        ssize_t n;
        uint32_t alen;
        int fd;

        assert_int_equal(agent_pack_report(rep, 9, 0, &f, &len), 0);
        fd = client_connect(fx->path);
        assert_int_equal(send(fd, f, len, MSG_NOSIGNAL), (ssize_t) len);
        m = serve_once(fx->h, fd);
        assert_non_null(m);
        assert_int_equal(m->body_case, RECLAIM__ENVELOPE__BODY_REPORT);
        assert_int_equal(m->seq, 9);
        assert_int_equal(m->report->filesystems[0]->bytes, 123456789);
        reclaim__envelope__free_unpacked(m, NULL);
        assert_int_equal(agent_handoff_ack(fx->h, 9), 0);
        assert_int_equal(agent_handoff_ack(fx->h, 9), -ENOTCONN);

        n = recv(fd, buf, sizeof(buf), MSG_WAITALL);
        assert_true(n > (ssize_t) RPC_FRAME_HEADER_SIZE);
        assert_int_equal(agent_handoff_parse_header(buf, AGENT_HANDOFF_ACK_MAX, &alen), 0);
        assert_int_equal(alen + RPC_FRAME_HEADER_SIZE, (uint32_t) n);
        assert_int_equal(
                agent_handoff_unpack(
                        buf, buf + RPC_FRAME_HEADER_SIZE, alen, RECLAIM__ENVELOPE__BODY_PONG, &ack),
                0);
        assert_int_equal(ack->in_reply_to, 9);
        reclaim__envelope__free_unpacked(ack, NULL);
        (void) close(fd);
}

/* A second serve must not take a running serve's socket; a stale one (nobody listening) is
 * replaced. */
static void test_server_takeover(void **state) {
        Fixture *fx = *state;
        AgentHandoff *h2 = NULL;
        struct stat st;

        assert_int_equal(agent_handoff_new(fx->path, &h2), -EADDRINUSE);
        assert_null(h2);
        assert_int_equal(stat(fx->path, &st), 0);

        /* the first one goes away without removing its file (as if killed) */
        fx->h = agent_handoff_free(fx->h);
        {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

                assert_true(fd >= 0);
                memcpy(sa.sun_path, fx->path, strlen(fx->path));
                assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
                (void) close(fd); /* bound, never listened: a stale file */
        }
        assert_int_equal(agent_handoff_new(fx->path, &fx->h), 0);
        assert_int_equal(stat(fx->path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_send_without_serve(void **state) {
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = one_fs_report();

        assert_int_equal(agent_handoff_send("/nonexistent/serve.sock", rep, 1000000, NULL), 0);
        assert_int_equal(agent_handoff_send(NULL, rep, 1000000, NULL), -EINVAL);
}

static void test_new_errors(void **state) {
        AgentHandoff *h = NULL;

        assert_int_equal(agent_handoff_new("relative.sock", &h), -EINVAL);
        assert_int_equal(
                agent_handoff_new(
                        "/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock",
                        &h),
                -EINVAL);
        /* a file that is not a socket is never removed */
        assert_int_equal(agent_handoff_new("/dev/null", &h), -EEXIST);
        assert_null(h);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_header),
                cmocka_unit_test(test_unpack),
                cmocka_unit_test(test_new_errors),
                cmocka_unit_test(test_send_without_serve),
                cmocka_unit_test_setup_teardown(test_server_modes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_server_bad_clients, setup, teardown),
                cmocka_unit_test_setup_teardown(test_server_report, setup, teardown),
                cmocka_unit_test_setup_teardown(test_server_takeover, setup, teardown),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
