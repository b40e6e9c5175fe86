/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include "log.h"
#include "macro.h"
#include "trim.h"

int agent_trim_fd(int fd, uint64_t minlen, uint64_t *ret_trimmed) {
        /* The whole filesystem: start 0, len "everything"; the filesystem clamps it. */
        struct fstrim_range range = {
                .start = 0,
                .len = UINT64_MAX,
                .minlen = minlen,
        };

        if (fd < 0)
                return -EBADF;
        if (ioctl(fd, FITRIM, &range) < 0) {
                int r = negative_errno();

                if (ERRNO_IS_NOT_SUPPORTED(r)) {
                        log_debug_errno(r, "FITRIM not supported: %m");
                        return AGENT_TRIM_NOT_SUPPORTED;
                }
                return r;
        }
        if (ret_trimmed)
                *ret_trimmed = range.len;
        return 0;
}

int agent_trim(const char *mount_point, uint64_t minlen, uint64_t *ret_trimmed) {
        _cleanup_close_ int fd = -1;

        if (!mount_point)
                return -EINVAL;
        /* fstrim opens read-only too: FITRIM needs CAP_SYS_ADMIN, not a writable fd. */
        fd = open(mount_point, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return negative_errno();
        return agent_trim_fd(fd, minlen, ret_trimmed);
}

const char *agent_trim_result_to_string(int r) {
        if (r == 0)
                return "done";
        if (r == AGENT_TRIM_NOT_SUPPORTED)
                return "not supported";
        return "error";
}
