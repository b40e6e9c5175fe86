/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>

#include "macro.h"
#include "token-bucket.h"

#define NSEC_PER_SEC UINT64_C(1000000000)

int token_bucket_init(TokenBucket *tb, uint64_t rate, uint64_t burst, uint64_t now_ns) {
        if (!tb || rate > TOKEN_BUCKET_MAX || burst > TOKEN_BUCKET_MAX)
                return -EINVAL;
        if (burst == 0)
                burst = MAX(rate, (uint64_t) 1);
        *tb = (TokenBucket){
                .rate = rate,
                .burst = burst,
                .level = (int64_t) burst,
                .last_ns = now_ns,
        };
        return 0;
}

void token_bucket_refill(TokenBucket *tb, uint64_t now_ns) {
        assert(tb);

        if (tb->rate == 0 || now_ns <= tb->last_ns)
                return;

        uint64_t elapsed = now_ns - tb->last_ns;
        tb->last_ns = now_ns;
        if (tb->level >= (int64_t) tb->burst) {
                tb->rem = 0;
                return;
        }

        /* 128-bit product: rate and elapsed are both up to 2^63, the carried remainder keeps
         * sub-byte accruals, so many tiny steps add up to exactly the same as one big one. */
        unsigned __int128 acc = (unsigned __int128) elapsed * tb->rate + tb->rem;
        unsigned __int128 add = acc / NSEC_PER_SEC;
        uint64_t room = (uint64_t) ((__int128) tb->burst - tb->level);

        if (add >= room) {
                tb->level = (int64_t) tb->burst;
                tb->rem = 0;
        } else {
                tb->level += (int64_t) add;
                tb->rem = (uint64_t) (acc % NSEC_PER_SEC);
        }
}

uint64_t token_bucket_delay_ns(TokenBucket *tb, uint64_t n, uint64_t now_ns) {
        assert(tb);

        if (tb->rate == 0)
                return 0;
        token_bucket_refill(tb, now_ns);

        /* A request above the burst waits for a full bucket, then goes into debt. */
        uint64_t want = MIN(n, tb->burst);
        if (tb->level >= 0 && (uint64_t) tb->level >= want)
                return 0;

        unsigned __int128 need = (unsigned __int128) ((__int128) want - tb->level);
        /* ceil((need * 1e9 - rem) / rate): the remainder already holds part of the next byte */
        unsigned __int128 num = need * NSEC_PER_SEC;
        num = num > tb->rem ? num - tb->rem : 0;
        unsigned __int128 ns = (num + tb->rate - 1) / tb->rate;
        return ns > UINT64_MAX ? UINT64_MAX : (uint64_t) ns;
}

void token_bucket_consume(TokenBucket *tb, uint64_t n, uint64_t now_ns) {
        assert(tb);

        if (tb->rate == 0)
                return;
        token_bucket_refill(tb, now_ns);

        __int128 level = (__int128) tb->level - (__int128) MIN(n, TOKEN_BUCKET_MAX);
        if (level < -(__int128) TOKEN_BUCKET_MAX)
                level = -(__int128) TOKEN_BUCKET_MAX;
        tb->level = (int64_t) level;
}

bool token_bucket_try_take(TokenBucket *tb, uint64_t n, uint64_t now_ns, uint64_t *ret_wait_ns) {
        uint64_t wait = token_bucket_delay_ns(tb, n, now_ns);

        if (wait > 0) {
                if (ret_wait_ns)
                        *ret_wait_ns = wait;
                return false;
        }
        token_bucket_consume(tb, n, now_ns);
        if (ret_wait_ns)
                *ret_wait_ns = 0;
        return true;
}
