/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for reclaim-agent's pure parts: the configuration keys and file (agent-config.c,
 * inih), the host policy and how a request is clamped to it and to the local configuration
 * (agent-message.c), and the reconnect back-off (channel.c). Table-driven.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "agent-config.h"
#include "agent-message.h"
#include "channel.h"
#include "macro.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

static void test_defaults(void **state) {
        AgentConfig c;

        assert_int_equal(agent_config_init(&c), 0);
        assert_int_equal(c.mode, AGENT_MODE_AUTO);
        assert_int_equal(c.rate, 50 * MiB);
        assert_int_equal(c.reserve.basis_points, 1000);
        assert_int_equal(c.reserve.bytes, 2 * GiB);
        assert_string_equal(c.reserve_spec, "10%,2G");
        assert_string_equal(c.port, "/dev/virtio-ports/org.reclaim.agent.0");
        assert_null(c.socket);
        assert_string_equal(c.control_socket, "/run/reclaim-agent/serve.sock");
        assert_int_equal(c.filesystems.n, 0);
        assert_int_equal(c.excludes.n, 0);
        agent_config_done(&c);
        agent_config_done(&c); /* idempotent on a zeroed config */
}

static void test_set(void **state) {
        static const struct {
                const char *key, *value;
                int r;
        } cases[] = {
                { "mode", "auto", 0 },
                { "mode", "trim", 0 },
                { "mode", "zero", 0 },
                { "mode", "fast", -EINVAL },
                { "mode", "", -EINVAL },
                { "rate", "0", 0 },
                { "rate", "50M", 0 },
                { "rate", "1.5M", -EINVAL },
                { "rate", "-1", -EINVAL },
                { "rate", "99999999999999999999", -EINVAL },
                { "reserve", "10%,2G", 0 },
                { "reserve", "0", 0 },
                { "reserve", "101%", -EINVAL },
                { "reserve", "10%,20%", -EINVAL },
                { "reserve", "", -EINVAL },
                { "filesystem", "/", 0 },
                { "filesystem", "home", -EINVAL },
                { "exclude", "/var", 0 },
                { "exclude", "", -EINVAL },
                { "port", "/dev/vport0p1", 0 },
                { "port", "vport0p1", -EINVAL },
                { "socket", "/run/x.sock", 0 },
                { "control_socket", "/tmp/serve.sock", 0 },
                { "control_socket", "serve.sock", -EINVAL },
                { "control_socket", "", -EINVAL },
                /* 107 characters: the most sun_path holds with its NUL */
                { "control_socket",
                  "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaa",
                  0 },
                { "control_socket",
                  "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                  "aaaaaaaaaaaaaaaaaaaaaaaaa",
                  -EINVAL },
                { "control-socket", "/tmp/serve.sock", -ENOENT },
                { "colour", "red", -ENOENT },
                { "Mode", "auto", -ENOENT },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                AgentConfig c;
                const char *reason = NULL;
                int r;

                assert_int_equal(agent_config_init(&c), 0);
                r = agent_config_set(&c, cases[i].key, cases[i].value, &reason);
                if (r != cases[i].r)
                        fail_msg(
                                "%s = '%s': %d, want %d",
                                cases[i].key,
                                cases[i].value,
                                r,
                                cases[i].r);
                if (r == -EINVAL && !reason)
                        fail_msg("%s = '%s': no reason", cases[i].key, cases[i].value);
                agent_config_done(&c);
        }
}

static void test_set_values(void **state) {
        AgentConfig c;

        assert_int_equal(agent_config_init(&c), 0);
        assert_int_equal(agent_config_set(&c, "mode", "zero", NULL), 0);
        assert_int_equal(agent_config_set(&c, "rate", "20M", NULL), 0);
        assert_int_equal(agent_config_set(&c, "reserve", "5%", NULL), 0);
        assert_int_equal(agent_config_set(&c, "filesystem", "/", NULL), 0);
        assert_int_equal(agent_config_set(&c, "filesystem", "/home", NULL), 0);
        assert_int_equal(agent_config_set(&c, "exclude", "/var", NULL), 0);
        /* a bad value leaves the config as it was */
        assert_int_equal(agent_config_set(&c, "rate", "x", NULL), -EINVAL);
        assert_int_equal(agent_config_set(&c, "reserve", "x", NULL), -EINVAL);
        assert_int_equal(c.mode, AGENT_MODE_ZERO);
        assert_int_equal(c.rate, 20 * MiB);
        assert_int_equal(c.reserve.basis_points, 500);
        assert_int_equal(c.reserve.bytes, 0);
        assert_string_equal(c.reserve_spec, "5%");
        assert_int_equal(c.filesystems.n, 2);
        assert_string_equal(c.filesystems.v[1], "/home");
        assert_int_equal(c.excludes.n, 1);
        agent_config_done(&c);
}

static void test_modes(void **state) {
        assert_int_equal(agent_mode_from_string("auto"), AGENT_MODE_AUTO);
        assert_int_equal(agent_mode_from_string("trim"), AGENT_MODE_TRIM);
        assert_int_equal(agent_mode_from_string("zero"), AGENT_MODE_ZERO);
        assert_int_equal(agent_mode_from_string("AUTO"), -EINVAL);
        assert_int_equal(agent_mode_from_string(NULL), -EINVAL);
        assert_string_equal(agent_mode_to_string(AGENT_MODE_ZERO), "zero");
        assert_null(agent_mode_to_string(_AGENT_MODE_MAX));
        assert_true(agent_mode_allows_trim(AGENT_MODE_AUTO));
        assert_true(agent_mode_allows_zero(AGENT_MODE_AUTO));
        assert_false(agent_mode_allows_zero(AGENT_MODE_TRIM));
        assert_false(agent_mode_allows_trim(AGENT_MODE_ZERO));
}

/* ---- the file ---- */

static char *write_temp(const char *content) {
        char *path = strdup("/tmp/test-agent-config.XXXXXX");
        int fd;

        assert_non_null(path);
        if (getenv("TMPDIR")) {
                free(path);
                assert_true(asprintf(&path, "%s/test-agent-config.XXXXXX", getenv("TMPDIR")) > 0);
        }
        fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, content, strlen(content)), (ssize_t) strlen(content));
        close(fd);
        return path;
}

static void test_load(void **state) {
        static const struct {
                const char *content;
                int r;
                const char *error; /* after "PATH:" */
        } cases[] = {
                { "", 0, NULL },
                { "[agent]\n", 0, NULL },
                { "; comment\n# comment\n[agent]\nmode = trim ; inline\n", 0, NULL },
                { "[agent]\nmode = fast\n", -EINVAL, "2: invalid value 'fast' for 'mode': " },
                { "[agent]\nmode = auto\ncolour = red\n", -EINVAL, "3: unknown key 'colour'" },
                { "mode = auto\n", -EINVAL, "1: key 'mode' outside the [agent] section" },
                { "[daemon]\nmode = auto\n", -EINVAL, "1: unknown section '[daemon]'" },
                { "[agent]\n\njust words\n", -EINVAL, "3: syntax error" },
                { "[agent]\nrate = 5Q\n", -EINVAL, "2: invalid value '5Q' for 'rate'" },
                { "[agent]\nreserve = 200%\n", -EINVAL, "2: invalid value '200%' for 'reserve'" },
                { "[agent]\nfilesystem = relative\n", -EINVAL, "2: invalid value 'relative'" },
                { "[agent]\n\ncontrol_socket = serve.sock\n",
                  -EINVAL,
                  "3: invalid value 'serve.sock' for 'control_socket'" },
                /* the first error wins */
                { "[agent]\nx = 1\ny = 2\n", -EINVAL, "2: unknown key 'x'" },
                { "[agent\n", -EINVAL, "1: syntax error" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *path = write_temp(cases[i].content);
                _cleanup_free_ char *error = NULL, *want = NULL;
                AgentConfig c;
                int r;

                assert_int_equal(agent_config_init(&c), 0);
                r = agent_config_load(&c, path, true, &error);
                (void) unlink(path);
                if (r != cases[i].r)
                        fail_msg("case %zu: %d, want %d (%s)", i, r, cases[i].r, error ?: "");
                if (cases[i].error) {
                        assert_true(asprintf(&want, "%s:%s", path, cases[i].error) > 0);
                        if (!error || strncmp(error, want, strlen(want)) != 0)
                                fail_msg(
                                        "case %zu: error '%s', want '%s...'",
                                        i,
                                        error ?: "(none)",
                                        want);
                } else
                        assert_null(error);
                agent_config_done(&c);
        }
}

static void test_load_values(void **state) {
        _cleanup_free_ char *path = write_temp(
                "[agent]\n"
                "mode = zero\n"
                "rate = 0\n"
                "reserve = 25%, 1G\n"
                "filesystem = /\n"
                "filesystem = /home\n"
                "exclude = /srv\n"
                "port = /dev/vport1p1\n");
        _cleanup_free_ char *error = NULL;
        AgentConfig c;

        assert_int_equal(agent_config_init(&c), 0);
        assert_int_equal(agent_config_load(&c, path, true, &error), 0);
        (void) unlink(path);
        assert_int_equal(c.mode, AGENT_MODE_ZERO);
        assert_int_equal(c.rate, 0);
        assert_int_equal(c.reserve.basis_points, 2500);
        assert_int_equal(c.reserve.bytes, GiB);
        assert_int_equal(c.filesystems.n, 2);
        assert_int_equal(c.excludes.n, 1);
        assert_string_equal(c.port, "/dev/vport1p1");
        agent_config_done(&c);
}

static void test_load_missing(void **state) {
        _cleanup_free_ char *error = NULL;
        AgentConfig c;

        assert_int_equal(agent_config_init(&c), 0);
        assert_int_equal(agent_config_load(&c, "/nonexistent/agent.conf", false, &error), 0);
        assert_null(error);
        assert_int_equal(agent_config_load(&c, "/nonexistent/agent.conf", true, &error), -ENOENT);
        assert_non_null(error);
        assert_non_null(strstr(error, "/nonexistent/agent.conf"));
        agent_config_done(&c);
}

static void test_load_long_line(void **state) {
        _cleanup_free_ char *content = NULL, *path = NULL, *error = NULL;
        AgentConfig c;
        size_t n = 1000;

        content = malloc(n + 64);
        assert_non_null(content);
        strcpy(content, "[agent]\nfilesystem = /");
        memset(content + strlen(content), 'a', n);
        strcpy(content + strlen("[agent]\nfilesystem = /") + n, "\nmode = trim\n");
        path = write_temp(content);
        assert_int_equal(agent_config_init(&c), 0);
        assert_int_equal(agent_config_load(&c, path, true, &error), -EINVAL);
        (void) unlink(path);
        assert_non_null(error);
        assert_non_null(strstr(error, ":2: line too long"));
        /* nothing of the long line was taken as a value */
        assert_int_equal(c.filesystems.n, 0);
        agent_config_done(&c);
}

/* ---- policy ---- */

static void test_policy_from_proto(void **state) {
        Reclaim__Policy p;
        Reclaim__Mode modes[] = { RECLAIM__MODE__MODE_ZERO, (Reclaim__Mode) 77 };
        AgentPolicy a;

        agent_policy_from_proto(NULL, &a);
        assert_true(a.allow_trim);
        assert_false(a.allow_auto);
        assert_false(a.allow_zero);

        reclaim__policy__init(&p);
        p.max_rate_bytes_per_sec = 7;
        p.min_reserve_percent = 250;
        agent_policy_from_proto(&p, &a);
        assert_true(a.allow_trim); /* empty: trim only */
        assert_false(a.allow_zero);
        assert_int_equal(a.max_rate, 7);
        assert_int_equal(a.min_reserve_percent, 100);

        p.allowed_modes = modes;
        p.n_allowed_modes = ELEMENTSOF(modes);
        agent_policy_from_proto(&p, &a);
        assert_false(a.allow_trim);
        assert_false(a.allow_auto);
        assert_true(a.allow_zero); /* 77 is unknown: ignored */
}

static void test_resolve(void **state) {
        enum { A = 1, T = 2, Z = 4 };
        static const struct {
                const char *name;
                unsigned allow; /* policy */
                uint64_t pol_rate, pol_bytes;
                uint32_t pol_pct;
                AgentMode local;
                uint64_t local_rate, local_bytes;
                uint32_t local_bp;
                int req_mode; /* wire */
                uint64_t req_rate, req_bytes;
                uint32_t req_pct;
                /* want */
                bool refused;
                AgentMode mode;
                uint64_t rate, bytes;
                uint32_t bp;
        } cases[] = {
                { "plain",
                  A | T | Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0 },
                { "rate capped by policy",
                  A,
                  10,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  100,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  10,
                  0,
                  0 },
                { "request rate below cap",
                  A,
                  10,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  5,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  5,
                  0,
                  0 },
                { "rate 0 -> policy max",
                  A,
                  10,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  10,
                  0,
                  0 },
                { "local rate caps too",
                  A,
                  10,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  3,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  3,
                  0,
                  0 },
                { "no caps: request rate",
                  A,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  9,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  9,
                  0,
                  0 },
                { "reserve floor from policy",
                  A,
                  0,
                  100,
                  20,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  50,
                  10,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  100,
                  2000 },
                { "reserve request above floor",
                  A,
                  0,
                  100,
                  20,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  500,
                  30,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  500,
                  3000 },
                { "local reserve floor",
                  A,
                  0,
                  100,
                  20,
                  AGENT_MODE_AUTO,
                  0,
                  1000,
                  2500,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  1000,
                  2500 },
                { "percent above 100",
                  A,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  300,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  10000 },
                { "mode not allowed",
                  T,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  3,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0 },
                { "auto not allowed",
                  T | Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0 },
                { "unknown mode",
                  A | T | Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  9,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0 },
                { "unspecified -> local",
                  A,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0 },
                { "unspecified, policy trim only",
                  T,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0 },
                { "unspecified, policy zero only",
                  Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_AUTO,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_ZERO,
                  0,
                  0,
                  0 },
                { "unspecified, nothing common",
                  Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0 },
                { "local trim narrows auto",
                  A,
                  0,
                  0,
                  0,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0 },
                { "local trim refuses zero",
                  Z,
                  0,
                  0,
                  0,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0,
                  3,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_TRIM,
                  0,
                  0,
                  0 },
                { "local zero narrows auto",
                  A,
                  0,
                  0,
                  0,
                  AGENT_MODE_ZERO,
                  0,
                  0,
                  0,
                  1,
                  0,
                  0,
                  0,
                  false,
                  AGENT_MODE_ZERO,
                  0,
                  0,
                  0 },
                { "local zero refuses trim",
                  T,
                  0,
                  0,
                  0,
                  AGENT_MODE_ZERO,
                  0,
                  0,
                  0,
                  2,
                  0,
                  0,
                  0,
                  true,
                  AGENT_MODE_ZERO,
                  0,
                  0,
                  0 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                AgentPolicy pol = {
                        .max_rate = cases[i].pol_rate,
                        .min_reserve_bytes = cases[i].pol_bytes,
                        .min_reserve_percent = cases[i].pol_pct,
                        .allow_auto = cases[i].allow & A,
                        .allow_trim = cases[i].allow & T,
                        .allow_zero = cases[i].allow & Z,
                };
                AgentConfig local = {
                        .mode = cases[i].local,
                        .rate = cases[i].local_rate,
                        .reserve = { .bytes = cases[i].local_bytes,
                                     .basis_points = cases[i].local_bp },
                };
                Reclaim__ReclaimRequest req;
                AgentRequestPlan plan;

                reclaim__reclaim_request__init(&req);
                req.mode = (Reclaim__Mode) cases[i].req_mode;
                req.rate_bytes_per_sec = cases[i].req_rate;
                req.reserve_bytes = cases[i].req_bytes;
                req.reserve_percent = cases[i].req_pct;
                agent_request_resolve(&req, &pol, &local, &plan);

                if (cases[i].refused != (plan.refuse_reason != NULL))
                        fail_msg(
                                "%s: refused %d, want %d",
                                cases[i].name,
                                plan.refuse_reason != NULL,
                                cases[i].refused);
                if (!cases[i].refused && plan.mode != cases[i].mode)
                        fail_msg("%s: mode %d, want %d", cases[i].name, plan.mode, cases[i].mode);
                if (plan.rate != cases[i].rate)
                        fail_msg(
                                "%s: rate %llu, want %llu",
                                cases[i].name,
                                (unsigned long long) plan.rate,
                                (unsigned long long) cases[i].rate);
                if (plan.reserve.bytes != cases[i].bytes)
                        fail_msg(
                                "%s: reserve bytes %llu, want %llu",
                                cases[i].name,
                                (unsigned long long) plan.reserve.bytes,
                                (unsigned long long) cases[i].bytes);
                if (plan.reserve.basis_points != cases[i].bp)
                        fail_msg(
                                "%s: reserve %u bp, want %u",
                                cases[i].name,
                                plan.reserve.basis_points,
                                cases[i].bp);
        }
}

static void test_mode_proto(void **state) {
        for (AgentMode m = 0; m < _AGENT_MODE_MAX; m++)
                assert_int_equal(agent_mode_from_proto(agent_mode_to_proto(m)), (int) m);
        assert_int_equal(agent_mode_from_proto(RECLAIM__MODE__MODE_UNSPECIFIED), -EINVAL);
        assert_int_equal(agent_mode_from_proto(42), -EINVAL);
}

static void test_backoff(void **state) {
        static const uint64_t want[] = { 100, 200, 400, 800, 1600, 2000, 2000 };
        AgentBackoff b;

        agent_backoff_init(&b, AGENT_BACKOFF_MIN_NS, AGENT_BACKOFF_MAX_NS);
        for (size_t i = 0; i < ELEMENTSOF(want); i++)
                assert_int_equal(agent_backoff_next(&b), want[i] * 1000 * 1000);
        agent_backoff_reset(&b);
        assert_int_equal(agent_backoff_next(&b), AGENT_BACKOFF_MIN_NS);
}

static void test_channel_args(void **state) {
        AgentChannel *c = NULL;
        char long_path[200];

        assert_int_equal(agent_channel_new(AGENT_CHANNEL_SOCKET, "relative", &c), -EINVAL);
        assert_int_equal(agent_channel_new(AGENT_CHANNEL_PORT, NULL, &c), -EINVAL);
        memset(long_path, 'a', sizeof(long_path) - 1);
        long_path[0] = '/';
        long_path[sizeof(long_path) - 1] = '\0';
        assert_int_equal(agent_channel_new(AGENT_CHANNEL_SOCKET, long_path, &c), -EINVAL);
        assert_null(c);

        /* nobody listens: "not yet", with the reason */
        assert_int_equal(agent_channel_new(AGENT_CHANNEL_SOCKET, "/nonexistent/agent.sock", &c), 0);
        int why = 0;
        assert_int_equal(agent_channel_connect(c, &why), 0);
        assert_int_equal(why, -ENOENT);
        assert_false(agent_channel_is_connected(c));
        assert_int_equal(agent_channel_fd(c), -1);
        c = agent_channel_free(c);

        assert_int_equal(agent_channel_new(AGENT_CHANNEL_PORT, "/nonexistent/vport", &c), 0);
        assert_int_equal(agent_channel_connect(c, &why), 0);
        assert_int_equal(why, -ENOENT);
        c = agent_channel_free(c);
        assert_null(agent_channel_free(NULL));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_set),
                cmocka_unit_test(test_set_values),
                cmocka_unit_test(test_modes),
                cmocka_unit_test(test_load),
                cmocka_unit_test(test_load_values),
                cmocka_unit_test(test_load_missing),
                cmocka_unit_test(test_load_long_line),
                cmocka_unit_test(test_policy_from_proto),
                cmocka_unit_test(test_resolve),
                cmocka_unit_test(test_mode_proto),
                cmocka_unit_test(test_backoff),
                cmocka_unit_test(test_channel_args),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
