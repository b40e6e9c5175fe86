/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Small helpers used everywhere: cleanup attributes, ownership transfer, overflow-checked
 * arithmetic and array sizes. Header only; depends on libc alone.
 */

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _pure_ __attribute__((pure))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

/* Returns the value of *p and sets *p to NULL: hands ownership from a _cleanup_ local. */
#define TAKE_PTR(p)                         \
        ({                                  \
                __typeof__(p) *_pp_ = &(p); \
                __typeof__(p) _p_ = *_pp_;  \
                *_pp_ = NULL;               \
                _p_;                        \
        })

#define TAKE_FD(fd)                 \
        ({                          \
                int *_pfd_ = &(fd); \
                int _fd_ = *_pfd_;  \
                *_pfd_ = -1;        \
                _fd_;               \
        })

#define XCONCATENATE(x, y) x##y
#define CONCATENATE(x, y) XCONCATENATE(x, y)
#define UNIQ_T(x, uniq) CONCATENATE(__unique_prefix_, CONCATENATE(x, uniq))
#define UNIQ __COUNTER__

/* MIN/MAX evaluate each argument once and nest without shadowing (unique temporaries). */
#define MIN(a, b) __MIN(UNIQ, (a), UNIQ, (b))
#define __MIN(aq, a, bq, b)                                                    \
        ({                                                                     \
                const __typeof__(a) UNIQ_T(A, aq) = (a);                       \
                const __typeof__(b) UNIQ_T(B, bq) = (b);                       \
                UNIQ_T(A, aq) < UNIQ_T(B, bq) ? UNIQ_T(A, aq) : UNIQ_T(B, bq); \
        })
#define MAX(a, b) __MAX(UNIQ, (a), UNIQ, (b))
#define __MAX(aq, a, bq, b)                                                    \
        ({                                                                     \
                const __typeof__(a) UNIQ_T(A, aq) = (a);                       \
                const __typeof__(b) UNIQ_T(B, bq) = (b);                       \
                UNIQ_T(A, aq) > UNIQ_T(B, bq) ? UNIQ_T(A, aq) : UNIQ_T(B, bq); \
        })

#define DIV_ROUND_UP(x, y) (((x) + (y) -1) / (y))
#define ALIGN_DOWN(x, a) ((x) & ~((__typeof__(x)) (a) -1))
#define ALIGN_UP(x, a) ALIGN_DOWN((x) + (a) -1, (a))
#define IS_ALIGNED(x, a) (((x) & ((__typeof__(x)) (a) -1)) == 0)

/* Overflow-checked arithmetic: true when the result overflowed (then *r is unspecified). */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow((a), (b), (r))

#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func) \
        static inline void func##p(type *p) {   \
                if (*p)                         \
                        *p = func(*p);          \
        }

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void closep(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                (void) close(*fd);
                errno = saved;
        }
}
#define _cleanup_close_ _cleanup_(closep)

static inline int negative_errno(void) {
        /* errno is always positive after a failed libc call; guard against 0 anyway */
        return errno > 0 ? -errno : -EIO;
}

/* "Not supported" in every spelling the kernel uses (fstrim's tri-state needs this). */
static inline bool ERRNO_IS_NOT_SUPPORTED(int r) {
        int e = r < 0 ? -r : r;
        return e == EOPNOTSUPP || e == ENOTTY || e == ENOSYS || e == EAFNOSUPPORT ||
                e == EPFNOSUPPORT || e == EPROTONOSUPPORT || e == ESOCKTNOSUPPORT || e == EINVAL;
}
