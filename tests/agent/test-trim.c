/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for agent/trim.c: fstrim's three-way result. ioctl() is wrapped at link time
 * (-Wl,--wrap=ioctl) so every errno the kernel may answer FITRIM with can be played back;
 * unarmed, the wrapper calls through (a pipe then gives the kernel's own ENOTTY).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <cmocka.h>

#include "macro.h"
#include "trim.h"

static struct {
        bool armed;
        int err;           /* fail with this errno; 0: succeed */
        uint64_t trimmed;  /* range.len to report on success */
        uint64_t seen_len; /* range.len / minlen the caller passed */
        uint64_t seen_minlen;
        unsigned calls;
} wrap;

int __real_ioctl(int fd, unsigned long req, ...);
int __wrap_ioctl(int fd, unsigned long req, ...);

int __wrap_ioctl(int fd, unsigned long req, ...) {
        va_list ap;
        void *arg;

        va_start(ap, req);
        arg = va_arg(ap, void *);
        va_end(ap);

        if (!wrap.armed || req != FITRIM)
                return __real_ioctl(fd, req, arg);

        struct fstrim_range *range = arg;
        wrap.calls++;
        wrap.seen_len = range->len;
        wrap.seen_minlen = range->minlen;
        if (wrap.err) {
                errno = wrap.err;
                return -1;
        }
        range->len = wrap.trimmed;
        return 0;
}

static int setup(void **state) {
        wrap = (typeof(wrap)){};
        return 0;
}

static void test_errno_table(void **state) {
        static const struct {
                int err;
                int want;
        } cases[] = {
                { 0, 0 },
                /* the filesystem or the device below cannot discard */
                { EOPNOTSUPP, AGENT_TRIM_NOT_SUPPORTED },
                { ENOTTY, AGENT_TRIM_NOT_SUPPORTED },
                { ENOSYS, AGENT_TRIM_NOT_SUPPORTED },
                { EINVAL, AGENT_TRIM_NOT_SUPPORTED },
                /* real errors */
                { EIO, -EIO },
                { EPERM, -EPERM },
                { EROFS, -EROFS },
                { ENOMEM, -ENOMEM },
                { EFAULT, -EFAULT },
        };
        _cleanup_close_ int fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        assert_true(fd >= 0);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                uint64_t trimmed = 0xdead;

                wrap = (typeof(wrap)){ .armed = true, .err = cases[i].err, .trimmed = 12345 };
                int r = agent_trim_fd(fd, 4096, &trimmed);
                if (r != cases[i].want)
                        fail_msg(
                                "errno %s: got %d, want %d",
                                strerrorname_np(cases[i].err) ?: "0",
                                r,
                                cases[i].want);
                assert_int_equal(wrap.calls, 1);
                assert_int_equal(wrap.seen_len, UINT64_MAX); /* the whole filesystem */
                assert_int_equal(wrap.seen_minlen, 4096);
                /* ret_trimmed only on "done" */
                assert_int_equal(trimmed, r == 0 ? 12345 : 0xdead);
        }
}

static void test_trim_path(void **state) {
        uint64_t trimmed = 0;

        wrap = (typeof(wrap)){ .armed = true, .trimmed = 1 << 20 };
        assert_int_equal(agent_trim(".", 0, &trimmed), 0);
        assert_int_equal(trimmed, 1 << 20);
        assert_int_equal(agent_trim(".", 0, NULL), 0);

        /* opening the mount point fails: never reaches the ioctl */
        wrap.calls = 0;
        assert_int_equal(agent_trim("/nonexistent/reclaim-test", 0, &trimmed), -ENOENT);
        assert_int_equal(agent_trim("/dev/null", 0, &trimmed), -ENOTDIR);
        assert_int_equal(agent_trim(NULL, 0, &trimmed), -EINVAL);
        assert_int_equal(agent_trim_fd(-1, 0, &trimmed), -EBADF);
        assert_int_equal(wrap.calls, 0);
}

/* Unarmed: the kernel itself answers FITRIM on a pipe with ENOTTY -> not supported. */
static void test_real_enotty(void **state) {
        int p[2];
        uint64_t trimmed = 7;

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(agent_trim_fd(p[0], 0, &trimmed), AGENT_TRIM_NOT_SUPPORTED);
        assert_int_equal(trimmed, 7);
        (void) close(p[0]);
        (void) close(p[1]);
}

static void test_to_string(void **state) {
        assert_string_equal(agent_trim_result_to_string(0), "done");
        assert_string_equal(agent_trim_result_to_string(AGENT_TRIM_NOT_SUPPORTED), "not supported");
        assert_string_equal(agent_trim_result_to_string(-EIO), "error");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_errno_table, setup),
                cmocka_unit_test_setup(test_trim_path, setup),
                cmocka_unit_test_setup(test_real_enotty, setup),
                cmocka_unit_test_setup(test_to_string, setup),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
