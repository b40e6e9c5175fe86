/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * FITRIM on a mounted filesystem, with util-linux fstrim's three-way result: done (and how many
 * bytes the filesystem discarded), not supported (by the filesystem or the device below it:
 * the caller falls back to zero-filling), or a real error.
 */

#include <stdint.h>

/* agent_trim() returns this (> 0) when the filesystem or device cannot discard. */
#define AGENT_TRIM_NOT_SUPPORTED 1

/*
 * Discards the free space of the filesystem mounted at mount_point (borrowed), in free extents
 * of at least minlen bytes (0: the filesystem's own minimum). Returns:
 *   0                         done; *ret_trimmed (when not NULL) = bytes the filesystem
 *                             reports discarded (range.len after the ioctl)
 *   AGENT_TRIM_NOT_SUPPORTED  FITRIM failed with a "not supported" errno (EOPNOTSUPP, ENOTTY,
 *                             ENOSYS, EINVAL ..., see ERRNO_IS_NOT_SUPPORTED())
 *   -errno                    opening the mount point or the ioctl failed otherwise
 * *ret_trimmed is written only when 0 is returned. Cost: the filesystem walks its free-space
 * maps and sends discards; seconds on a large filesystem.
 */
int agent_trim(const char *mount_point, uint64_t minlen, uint64_t *ret_trimmed);

/* agent_trim() on an open file descriptor of any file or directory of the filesystem
 * (borrowed, not closed). Same returns. */
int agent_trim_fd(int fd, uint64_t minlen, uint64_t *ret_trimmed);

/* "done", "not supported" or "error" for a return value of agent_trim(). */
const char *agent_trim_result_to_string(int r);
