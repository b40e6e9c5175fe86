/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for agent/zerofill.c: the reserve spec parser and arithmetic (table-driven), and
 * small real fills into a scratch directory under $TMPDIR (a few MiB, capped with max_bytes):
 * dry run, reserve refusal, O_TMPFILE and named-file modes, buffered mode, cancellation by
 * flag and by callback, the rate limit's lower bound, and argument errors. The big fills on
 * real loop-mounted ext4/xfs/btrfs are the integration tests (test-*.sh).
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "macro.h"
#include "zerofill.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

/* ---- reserve spec ---- */

static void test_reserve_parse_ok(void **state) {
        static const struct {
                const char *spec;
                uint32_t bp;
                uint64_t bytes;
        } cases[] = {
                { "10%", 1000, 0 },
                { "2G", 0, 2 * GiB },
                { "10%,2G", 1000, 2 * GiB },
                { "2G,10%", 1000, 2 * GiB },
                { " 10 % , 2G ", 1000, 2 * GiB },
                { "0", 0, 0 },
                { "0%", 0, 0 },
                { "100%", 10000, 0 },
                { "12.5%", 1250, 0 },
                { "0.01%", 1, 0 },
                { "99.99%", 9999, 0 },
                { "100.00%", 10000, 0 },
                { "512MiB", 0, 512 * MiB },
                { "4096", 0, 4096 },
                { "1k", 0, KiB },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                AgentReserve r = { 77, 77 };
                const char *reason = "unset";
                int k = agent_reserve_parse(cases[i].spec, &r, &reason);
                if (k != 0)
                        fail_msg("'%s': %d (%s)", cases[i].spec, k, reason);
                assert_string_equal(reason, "unset"); /* not touched on success */
                if (r.basis_points != cases[i].bp || r.bytes != cases[i].bytes)
                        fail_msg(
                                "'%s': %u bp + %llu bytes",
                                cases[i].spec,
                                r.basis_points,
                                (unsigned long long) r.bytes);
        }
}

static void test_reserve_parse_errors(void **state) {
        static const struct {
                const char *spec;
                int err;
                const char *reason; /* substring */
        } cases[] = {
                { NULL, -EINVAL, "no reserve" },
                { "", -EINVAL, "empty" },
                { "   ", -EINVAL, "empty" },
                { "abc", -EINVAL, "not a size or percentage" },
                { "2X", -EINVAL, "not a size or percentage" },
                { "-2G", -EINVAL, "not a size or percentage" },
                { "150%", -EINVAL, "above 100%" },
                { "100.01%", -EINVAL, "above 100%" },
                { "%", -EINVAL, "not a percentage" },
                { "-5%", -EINVAL, "not a percentage" },
                { "10%%", -EINVAL, "not a percentage" },
                { "ten%", -EINVAL, "not a percentage" },
                { "1.%", -EINVAL, "not a percentage" },
                { "1.234%", -EINVAL, "two decimals" },
                { "10%,20%", -EINVAL, "percentage given twice" },
                { "1G,2G", -EINVAL, "size given twice" },
                { "10%,", -EINVAL, "empty item" },
                { ",2G", -EINVAL, "empty item" },
                { "10%,,2G", -EINVAL, "empty item" },
                { "99999999999999999999G", -ERANGE, "too large" },
                { "17179869184G", -ERANGE, "too large" },
                { "99999999999999999999999%", -ERANGE, "too large" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                AgentReserve r = { 77, 77 };
                const char *reason = NULL;
                int k = agent_reserve_parse(cases[i].spec, &r, &reason);
                if (k != cases[i].err)
                        fail_msg("'%s': %d, want %d", cases[i].spec ?: "(null)", k, cases[i].err);
                assert_non_null(reason);
                if (!strstr(reason, cases[i].reason))
                        fail_msg(
                                "'%s': reason '%s' lacks '%s'",
                                cases[i].spec ?: "(null)",
                                reason,
                                cases[i].reason);
                /* untouched on failure */
                assert_int_equal(r.basis_points, 77);
                assert_int_equal(r.bytes, 77);
        }
        /* a NULL reason pointer is fine */
        assert_int_equal(agent_reserve_parse("abc", &(AgentReserve){}, NULL), -EINVAL);
        assert_int_equal(agent_reserve_parse("1G", NULL, NULL), -EINVAL);
}

static void test_reserve_bytes(void **state) {
        static const struct {
                AgentReserve r;
                uint64_t size;
                uint64_t want;
        } cases[] = {
                { { 1000, 0 }, 100 * GiB, 10 * GiB },
                /* "10%,2G": the larger wins */
                { { 1000, 2 * GiB }, 10 * GiB, 2 * GiB },
                { { 1000, 2 * GiB }, 100 * GiB, 10 * GiB },
                { { 0, 0 }, 100 * GiB, 0 },
                { { 0, 5 * GiB }, 1 * GiB, 5 * GiB }, /* more than the disk: never fills */
                { { 1250, 0 }, 8 * GiB, 1 * GiB },
                /* rounded up: a reserve is a floor */
                { { 1, 0 }, 1, 1 },
                { { 3333, 0 }, 10, 4 },
                /* no overflow at the top */
                { { 10000, 0 }, UINT64_MAX, UINT64_MAX },
                { { 5000, 0 }, UINT64_MAX, UINT64_C(1) << 63 },
                { { 9999, 0 }, UINT64_MAX, 18444899399302180660ull },
                { { 0, UINT64_MAX }, 0, UINT64_MAX },
                /* out-of-range percentage clamps to 100% */
                { { 20000, 0 }, 100, 100 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t got = agent_reserve_bytes(&cases[i].r, cases[i].size);
                if (got != cases[i].want)
                        fail_msg(
                                "case %zu: %llu, want %llu",
                                i,
                                (unsigned long long) got,
                                (unsigned long long) cases[i].want);
        }
        assert_int_equal(agent_reserve_bytes(NULL, 100), 0);
}

/* ---- real fills in a scratch directory ---- */

typedef struct Scratch {
        char dir[256];
} Scratch;

static int setup_scratch(void **state) {
        Scratch *s = calloc(1, sizeof(*s));
        const char *tmp = getenv("TMPDIR");

        if (!s)
                return -1;
        snprintf(s->dir, sizeof(s->dir), "%s/reclaim-zf.XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(s->dir)) {
                free(s);
                return -1;
        }
        *state = s;
        return 0;
}

static int teardown_scratch(void **state) {
        Scratch *s = *state;

        (void) rmdir(s->dir);
        free(s);
        return 0;
}

static unsigned count_entries(const char *dir) {
        DIR *d = opendir(dir);
        struct dirent *de;
        unsigned n = 0;

        assert_non_null(d);
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        n++;
        closedir(d);
        return n;
}

static void test_dry_run(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = { .dry_run = true, .reserve_spec = "1G" };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_true(res.dry_run);
        assert_int_equal(res.reserve, 1 * GiB);
        assert_true(res.fs_size > 0);
        if (res.free_before > res.reserve) {
                assert_int_equal(res.outcome, AGENT_ZEROFILL_OK);
                assert_true(res.bytes_zeroed <= res.free_before - res.reserve);
                assert_true(res.bytes_zeroed + 4096 > res.free_before - res.reserve);
        } else
                assert_int_equal(res.outcome, AGENT_ZEROFILL_STOPPED_AT_RESERVE);

        o.max_bytes = 5 * MiB + 100;
        o.reserve_spec = "0";
        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_OK);
        assert_int_equal(res.bytes_zeroed, 5 * MiB); /* rounded down to whole blocks */
        assert_int_equal(count_entries(s->dir), 0);
}

static void test_reserve_refuses(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = { .reserve_spec = "100%" };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_STOPPED_AT_RESERVE);
        assert_int_equal(res.bytes_zeroed, 0);
        assert_int_equal(res.error, 0);
        assert_int_equal(count_entries(s->dir), 0);
}

static void fill_small(const char *dir, AgentZerofillOptions *o, AgentZerofillResult *res) {
        o->max_bytes = 8 * MiB;
        o->chunk_size = 1 * MiB;
        assert_int_equal(agent_zerofill(dir, o, res), 0);
        if (res->outcome != AGENT_ZEROFILL_OK)
                fail_msg(
                        "outcome %s, error %s",
                        agent_zerofill_outcome_to_string(res->outcome),
                        strerror(-res->error));
        assert_int_equal(res->bytes_zeroed, 8 * MiB);
        assert_true(res->min_free <= res->free_before);
        assert_int_equal(count_entries(dir), 0); /* nothing left behind */
}

static void test_fill_tmpfile(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = {};
        AgentZerofillResult res;

        fill_small(s->dir, &o, &res);
        assert_true(res.tmpfile); /* ext4/xfs/btrfs/tmpfs all have O_TMPFILE */
        assert_true(res.idle_io);
        assert_false(res.nocompress);
}

static void test_fill_named_buffered(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = {
                .no_tmpfile = true, .no_direct = true, .keep_ioprio = true, .sync_interval = 1 * MiB
        };
        AgentZerofillResult res;

        fill_small(s->dir, &o, &res);
        assert_false(res.tmpfile);
        assert_false(res.direct_io);
        assert_false(res.idle_io);
}

static void test_cancel_flag(void **state) {
        Scratch *s = *state;
        static volatile sig_atomic_t cancel = 1;
        AgentZerofillOptions o = { .cancel = &cancel, .max_bytes = 8 * MiB };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_CANCELLED);
        assert_int_equal(res.bytes_zeroed, 0);
        assert_int_equal(count_entries(s->dir), 0);
}

static int stop_after_two(const AgentZerofillProgress *p, void *userdata) {
        unsigned *calls = userdata;

        assert_true(p->bytes_written > 0);
        assert_true(p->target >= p->bytes_written);
        return ++*calls >= 2;
}

static void test_cancel_progress(void **state) {
        Scratch *s = *state;
        unsigned calls = 0;
        AgentZerofillOptions o = {
                .max_bytes = 16 * MiB,
                .chunk_size = 1 * MiB,
                .progress = stop_after_two,
                .userdata = &calls,
        };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_CANCELLED);
        assert_int_equal(calls, 2);
        assert_int_equal(res.bytes_zeroed, 2 * MiB); /* flushed before the release */
        assert_int_equal(count_entries(s->dir), 0);
}

/* The bucket starts empty, so 2 MiB at 4 MiB/s cannot take less than half a second. The
 * accuracy over seconds is the integration tests' job (test-rate.sh). */
static void test_rate_lower_bound(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = { .rate = 4 * MiB, .max_bytes = 2 * MiB };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_OK);
        assert_int_equal(res.bytes_zeroed, 2 * MiB);
        assert_true(res.duration_ns >= UINT64_C(495000000));
}

static void test_require_nocompress(void **state) {
        Scratch *s = *state;
        AgentZerofillOptions o = { .require_nocompress = true, .max_bytes = 1 * MiB };
        AgentZerofillResult res;

        assert_int_equal(agent_zerofill(s->dir, &o, &res), 0);
        if (res.nocompress) /* TMPDIR on btrfs: then it works */
                assert_int_equal(res.outcome, AGENT_ZEROFILL_OK);
        else {
                assert_int_equal(res.outcome, AGENT_ZEROFILL_ERROR);
                assert_int_equal(res.error, -EOPNOTSUPP);
                assert_int_equal(res.bytes_zeroed, 0);
        }
        assert_int_equal(count_entries(s->dir), 0);
}

static void test_errors(void **state) {
        Scratch *s = *state;
        AgentZerofillResult res = { .bytes_zeroed = 42 };
        AgentZerofillOptions o = {};

        assert_int_equal(agent_zerofill(NULL, &o, &res), -EINVAL);
        assert_int_equal(agent_zerofill(s->dir, &o, NULL), -EINVAL);
        o.reserve_spec = "abc";
        assert_int_equal(agent_zerofill(s->dir, &o, &res), -EINVAL);
        o = (AgentZerofillOptions){ .chunk_size = AGENT_ZEROFILL_CHUNK_MAX + 1 };
        assert_int_equal(agent_zerofill(s->dir, &o, &res), -EINVAL);
        o = (AgentZerofillOptions){ .reserve = { .basis_points = 10001 } };
        assert_int_equal(agent_zerofill(s->dir, &o, &res), -EINVAL);
        assert_int_equal(res.bytes_zeroed, 42); /* untouched */

        /* the run is attempted and fails: reported in the result */
        assert_int_equal(agent_zerofill("/nonexistent/reclaim-test", NULL, &res), 0);
        assert_int_equal(res.outcome, AGENT_ZEROFILL_ERROR);
        assert_int_equal(res.error, -ENOENT);
        assert_int_equal(res.bytes_zeroed, 0);

        assert_string_equal(agent_zerofill_outcome_to_string(AGENT_ZEROFILL_OK), "ok");
        assert_string_equal(
                agent_zerofill_outcome_to_string(AGENT_ZEROFILL_STOPPED_AT_RESERVE),
                "stopped-at-reserve");
        assert_string_equal(
                agent_zerofill_outcome_to_string(AGENT_ZEROFILL_CANCELLED), "cancelled");
        assert_string_equal(agent_zerofill_outcome_to_string(AGENT_ZEROFILL_ERROR), "error");
}

#define SCRATCH_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup_scratch, teardown_scratch)

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_reserve_parse_ok),
                cmocka_unit_test(test_reserve_parse_errors),
                cmocka_unit_test(test_reserve_bytes),
                SCRATCH_TEST(test_dry_run),
                SCRATCH_TEST(test_reserve_refuses),
                SCRATCH_TEST(test_fill_tmpfile),
                SCRATCH_TEST(test_fill_named_buffered),
                SCRATCH_TEST(test_cancel_flag),
                SCRATCH_TEST(test_cancel_progress),
                SCRATCH_TEST(test_rate_lower_bound),
                SCRATCH_TEST(test_require_nocompress),
                SCRATCH_TEST(test_errors),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
