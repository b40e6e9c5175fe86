/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for common/token-bucket.c: the rate and burst arithmetic, driven by a fake clock
 * (plain numbers in nanoseconds), so nothing sleeps.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "macro.h"
#include "token-bucket.h"

#define SEC UINT64_C(1000000000)
#define MSEC UINT64_C(1000000)
#define MiB (UINT64_C(1) << 20)

static void test_init_args(void **state) {
        TokenBucket tb;

        assert_int_equal(token_bucket_init(NULL, 1, 1, 0), -EINVAL);
        assert_int_equal(token_bucket_init(&tb, TOKEN_BUCKET_MAX + 1, 1, 0), -EINVAL);
        assert_int_equal(token_bucket_init(&tb, 1, TOKEN_BUCKET_MAX + 1, 0), -EINVAL);

        /* burst 0 = one second's worth */
        assert_int_equal(token_bucket_init(&tb, 1000, 0, 0), 0);
        assert_int_equal(tb.burst, 1000);
        assert_int_equal(tb.level, 1000);
        /* ... but at least one byte */
        assert_int_equal(token_bucket_init(&tb, 0, 0, 0), 0);
        assert_int_equal(tb.burst, 1);
}

static void test_unlimited(void **state) {
        TokenBucket tb;

        assert_int_equal(token_bucket_init(&tb, 0, 0, 0), 0);
        for (int i = 0; i < 100; i++) {
                assert_int_equal(token_bucket_delay_ns(&tb, UINT64_MAX, 0), 0);
                assert_true(token_bucket_try_take(&tb, 1ull << 40, 0, NULL));
        }
}

/* Table: a bucket, then a script of (time, request) -> expected wait. */
static void test_delay_table(void **state) {
        static const struct {
                uint64_t rate, burst;
                uint64_t drain; /* consumed at t=0 after init */
                uint64_t at_ns, n;
                uint64_t want_ns;
        } cases[] = {
                /* full bucket: whatever fits goes now */
                { 1000, 1000, 0, 0, 1000, 0 },
                { 1000, 1000, 0, 0, 1, 0 },
                /* empty bucket: n bytes need n/rate seconds */
                { 1000, 1000, 1000, 0, 1000, 1 * SEC },
                { 1000, 1000, 1000, 0, 1, 1 * MSEC },
                { 1000, 1000, 1000, 0, 500, 500 * MSEC },
                /* time already passed counts */
                { 1000, 1000, 1000, 250 * MSEC, 500, 250 * MSEC },
                { 1000, 1000, 1000, 2 * SEC, 1000, 0 },
                /* over the burst: wait for a full bucket only */
                { 1000, 100, 100, 0, 5000, 100 * MSEC },
                { 1000, 100, 0, 0, 5000, 0 },
                /* in debt: pay it back first */
                { 1000, 100, 600, 0, 100, 600 * MSEC },
                /* 20 MB/s, 4 MiB chunks (the zero-fill's shape) */
                { 20000000, 4 * MiB, 4 * MiB, 0, 4 * MiB, 209715200 },
                /* rounding: 3 bytes/s, 1 byte -> ceil(1e9/3) */
                { 3, 3, 3, 0, 1, 333333334 },
                /* huge rate and time: no overflow */
                { TOKEN_BUCKET_MAX, TOKEN_BUCKET_MAX, TOKEN_BUCKET_MAX, 0, 1, 1 },
                { 1, TOKEN_BUCKET_MAX, TOKEN_BUCKET_MAX, 0, TOKEN_BUCKET_MAX, UINT64_MAX },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                TokenBucket tb;

                assert_int_equal(token_bucket_init(&tb, cases[i].rate, cases[i].burst, 0), 0);
                token_bucket_consume(&tb, cases[i].drain, 0);
                uint64_t got = token_bucket_delay_ns(&tb, cases[i].n, cases[i].at_ns);
                if (got != cases[i].want_ns)
                        fail_msg(
                                "case %zu: delay %llu, want %llu",
                                i,
                                (unsigned long long) got,
                                (unsigned long long) cases[i].want_ns);
        }
}

/* Waiting exactly the returned delay always makes the request possible: simulate a writer
 * that sleeps what it is told and check the long-run average equals the rate. */
static void test_paced_average(void **state) {
        static const struct {
                uint64_t rate, burst, chunk;
        } cases[] = {
                { 20000000, 4 * MiB, 4 * MiB },
                { 20000000, 1 * MiB, 4 * MiB }, /* chunk above the burst: debt */
                { 1000, 10, 3 },
                { 7, 7, 1 },
                { 123456789, 65536, 65536 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                TokenBucket tb;
                uint64_t now = 0, sent = 0;

                assert_int_equal(token_bucket_init(&tb, cases[i].rate, cases[i].burst, 0), 0);
                token_bucket_consume(&tb, cases[i].burst, 0); /* start empty */
                for (int k = 0; k < 2000; k++) {
                        uint64_t wait;
                        while (!token_bucket_try_take(&tb, cases[i].chunk, now, &wait)) {
                                assert_true(wait > 0);
                                now += wait;
                        }
                        sent += cases[i].chunk;
                }
                /* sent bytes over elapsed time, within one chunk of exact */
                double expect = (double) now * (double) cases[i].rate / 1e9;
                double slack = (double) MAX(cases[i].chunk, cases[i].burst) + 1.0;
                if ((double) sent > expect + slack || (double) sent < expect - slack)
                        fail_msg(
                                "case %zu: sent %llu in %llu ns, rate gives %.0f",
                                i,
                                (unsigned long long) sent,
                                (unsigned long long) now,
                                expect);
        }
}

static void test_burst_cap(void **state) {
        TokenBucket tb;

        assert_int_equal(token_bucket_init(&tb, 1000, 500, 0), 0);
        /* a long idle time refills only up to the burst */
        token_bucket_refill(&tb, 3600 * SEC);
        assert_int_equal(tb.level, 500);
        assert_true(token_bucket_try_take(&tb, 500, 3600 * SEC, NULL));
        assert_int_equal(tb.level, 0);
        uint64_t wait = 0;
        assert_false(token_bucket_try_take(&tb, 1, 3600 * SEC, &wait));
        assert_int_equal(wait, 1 * MSEC);
        assert_int_equal(tb.level, 0); /* a refused try takes nothing */
}

static void test_fractional_accrual(void **state) {
        TokenBucket a, b;

        /* 1000 steps of 1 us at 1 byte/ms accrue exactly what one 1 ms step does */
        assert_int_equal(token_bucket_init(&a, 1000, 10, 0), 0);
        assert_int_equal(token_bucket_init(&b, 1000, 10, 0), 0);
        token_bucket_consume(&a, 10, 0);
        token_bucket_consume(&b, 10, 0);
        for (uint64_t t = 1000; t <= 1000000; t += 1000)
                token_bucket_refill(&a, t);
        token_bucket_refill(&b, 1000000);
        assert_int_equal(a.level, 1);
        assert_int_equal(b.level, 1);
        assert_int_equal(a.rem, b.rem);
}

static void test_clock_backwards(void **state) {
        TokenBucket tb;

        assert_int_equal(token_bucket_init(&tb, 1000, 1000, 5 * SEC), 0);
        token_bucket_consume(&tb, 1000, 5 * SEC);
        token_bucket_refill(&tb, 1 * SEC); /* ignored */
        assert_int_equal(tb.level, 0);
        /* measured from the last time the bucket saw, never negative */
        assert_int_equal(token_bucket_delay_ns(&tb, 100, 1 * SEC), 100 * MSEC);
        token_bucket_refill(&tb, 5 * SEC + 100 * MSEC);
        assert_int_equal(tb.level, 100);
}

static void test_debt_clamped(void **state) {
        TokenBucket tb;

        assert_int_equal(token_bucket_init(&tb, 1, 1, 0), 0);
        token_bucket_consume(&tb, UINT64_MAX, 0);
        token_bucket_consume(&tb, UINT64_MAX, 0);
        assert_true(tb.level == -(int64_t) TOKEN_BUCKET_MAX);
        assert_int_equal(token_bucket_delay_ns(&tb, 1, 0), UINT64_MAX);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_init_args),       cmocka_unit_test(test_unlimited),
                cmocka_unit_test(test_delay_table),     cmocka_unit_test(test_paced_average),
                cmocka_unit_test(test_burst_cap),       cmocka_unit_test(test_fractional_accrual),
                cmocka_unit_test(test_clock_backwards), cmocka_unit_test(test_debt_clamped),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
