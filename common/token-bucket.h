/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A token bucket rate limiter in bytes: tokens accrue at `rate` bytes per second up to `burst`
 * bytes. The caller supplies the time (nanoseconds on any monotonic clock, e.g.
 * CLOCK_MONOTONIC), so the arithmetic is testable without sleeping and the bucket never reads
 * a clock itself.
 *
 * A request larger than the burst is allowed once the bucket is full and drives the level
 * negative (a debt that later refills pay back), so the long-run average never exceeds the
 * rate, whatever the request size. Rate 0 means unlimited: every request may go at once.
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct TokenBucket {
        uint64_t rate;  /* bytes per second; 0 = unlimited */
        uint64_t burst; /* capacity in bytes (>= 1 when rate > 0) */
        int64_t level;  /* tokens now; negative while a large request is being paid back */
        uint64_t last_ns;
        uint64_t rem; /* carried remainder of rate * elapsed_ns, in units of 1/1e9 byte */
} TokenBucket;

#define TOKEN_BUCKET_MAX ((uint64_t) INT64_MAX)

/*
 * Initialises *tb at time now_ns with a full bucket. burst 0 means "one second at the rate"
 * (at least 1 byte). Returns 0, or -EINVAL when tb is NULL or rate/burst exceed
 * TOKEN_BUCKET_MAX. No allocation; nothing to free.
 */
int token_bucket_init(TokenBucket *tb, uint64_t rate, uint64_t burst, uint64_t now_ns);

/* Adds the tokens accrued since the last call (capped at the burst). A clock that goes back
 * is treated as no time having passed. */
void token_bucket_refill(TokenBucket *tb, uint64_t now_ns);

/*
 * Returns how many nanoseconds the caller must wait, from now_ns, before n bytes may go: 0 when
 * the bucket holds n tokens already, or is full (n larger than the burst). Refills first; takes
 * nothing. Always 0 for an unlimited bucket. Saturates at UINT64_MAX.
 */
uint64_t token_bucket_delay_ns(TokenBucket *tb, uint64_t n, uint64_t now_ns);

/*
 * Takes n tokens at now_ns whether or not they are there (the level may go negative; it is
 * clamped at -TOKEN_BUCKET_MAX). Use after token_bucket_delay_ns() returned 0, or to account
 * for bytes that went anyway.
 */
void token_bucket_consume(TokenBucket *tb, uint64_t n, uint64_t now_ns);

/*
 * token_bucket_delay_ns() and, when it is 0, token_bucket_consume(): returns true when the n
 * bytes may go now (and took the tokens); false otherwise, with the wait in *ret_wait_ns when
 * ret_wait_ns is not NULL.
 */
bool token_bucket_try_take(TokenBucket *tb, uint64_t n, uint64_t now_ns, uint64_t *ret_wait_ns);
