/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Filesystem discovery for the agent: which mounted filesystems hold guest data on a local
 * block device, and how their free space can be handed back to the host.
 *
 * Discovery reads /proc/self/mountinfo and keeps local block-backed filesystems only: pseudo
 * filesystems (proc, sysfs, cgroup, devtmpfs, overlay, squashfs, ...), network and FUSE
 * filesystems (nfs, cifs, ceph, glusterfs, fuse.*, ...) and memory filesystems (tmpfs, ramfs)
 * are skipped. Each device (major:minor) is listed once whatever its bind mounts: a writable
 * mount beats a read-only one, then the mount of the filesystem's root ("/"), then the
 * shortest mount point, then the first in mountinfo order.
 *
 * Classification asks sysfs whether the block device passes discards
 * (/sys/dev/block/MAJ:MIN/queue/discard_max_bytes > 0, the parent disk's queue for a
 * partition): then FITRIM reaches the host and is all that is needed. Otherwise free space
 * must be filled with zeros, which is pointless on an encrypted device (zeros become
 * ciphertext) and impossible on a read-only mount.
 *
 * The mountinfo path and the sysfs root can be overridden so tests run on fixture files.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "macro.h"

#define AGENT_MOUNTINFO_PATH "/proc/self/mountinfo"
#define AGENT_SYSFS_ROOT "/sys"

typedef enum AgentFsMethod {
        AGENT_FS_METHOD_TRIM,        /* the device passes discards: FITRIM frees the blocks */
        AGENT_FS_METHOD_ZEROFILL,    /* no discard: fill the free space with zeros */
        AGENT_FS_METHOD_UNSUPPORTED, /* neither helps; AgentFs.reason says why */
} AgentFsMethod;

typedef struct AgentFs {
        /* from mountinfo (escapes such as \040 decoded) */
        int mount_id;
        char *mount_point;   /* e.g. "/home" */
        char *root;          /* root of the mount within the filesystem, "/" unless a bind */
        char *device;        /* mount source, e.g. "/dev/vda1" */
        char *fstype;        /* e.g. "ext4" */
        char *options;       /* per-mount options, e.g. "rw,relatime" */
        char *super_options; /* filesystem options, e.g. "rw,compress=zstd:3,subvol=/" */
        dev_t devnum;        /* major:minor as mountinfo shows it (btrfs: an anonymous 0:N) */
        bool read_only;      /* "ro" in the mount or the filesystem options */

        /* filled by agent_fs_classify() */
        dev_t block_devnum; /* the block device; 0 when it could not be found */
        AgentFsMethod method;
        const char *reason;         /* static text: why UNSUPPORTED, or a note; NULL if none */
        uint64_t discard_max_bytes; /* from sysfs; 0: no discard */
        bool encrypted;             /* dm-crypt somewhere below (dm/uuid "CRYPT-...") */
        bool compressed;            /* btrfs compress/compress-force: the fill file must be
                                     * marked no-compress/no-cow (agent_zerofill() does it) */
} AgentFs;

typedef struct AgentFsList {
        AgentFs *items;
        size_t n;
} AgentFsList;

/* agent_fs_enumerate() flags */
enum {
        /* Keep filesystems whose every mount is read-only (classified UNSUPPORTED, reason
         * "read-only") instead of leaving them out. */
        AGENT_FS_INCLUDE_READ_ONLY = 1 << 0,
};

/*
 * Parses one mountinfo line (without or with its trailing newline) into *ret: mount ID,
 * major:minor, root, mount point, options, fstype, source and super options, with octal
 * escapes decoded. Only the mountinfo fields are set; the classification fields are zero.
 * Returns 0, -EBADMSG for a malformed line, -ENOMEM. *ret is written only on success and owns
 * its strings (free with agent_fs_done()).
 */
int agent_mountinfo_parse_line(const char *line, AgentFs *ret);

/*
 * Decodes mountinfo's octal escapes ("\040" space, "\011" tab, "\012" newline, "\134"
 * backslash; any "\ooo") in place. A backslash not followed by three octal digits is kept.
 * Returns s.
 */
char *agent_mountinfo_unescape(char *s);

/*
 * True when a filesystem of this type, mounted from this source with these major:minor, is a
 * local block-backed filesystem the agent may work on. Pure function of its arguments.
 */
bool agent_fs_type_is_local_block(const char *fstype, const char *source, dev_t devnum);

/*
 * Finds option `name` in a comma-separated option string. Returns true when present
 * ("name" or "name=value"); then *ret_value (when not NULL) points at the value inside opts,
 * ending at the next comma or NUL, or is NULL for a bare option.
 */
bool agent_fs_option_find(const char *opts, const char *name, const char **ret_value);

/*
 * Reads mountinfo (NULL: /proc/self/mountinfo) and returns the local block-backed, writable
 * filesystems, each device once (see the top of this file for the choice among bind mounts).
 * Malformed lines are skipped. The list is not classified yet: call agent_fs_classify_all().
 * Returns 0 and a new list in *ret (caller frees with agent_fs_list_free(); it may be empty),
 * or -errno (-ENOENT when the file is missing, -ENOMEM). One pass over the file, no other I/O.
 */
int agent_fs_enumerate(const char *mountinfo_path, unsigned flags, AgentFsList **ret);

/*
 * Classifies one filesystem (borrowed, updated in place): finds its block device (for btrfs's
 * anonymous major:minor through the mount source and sysfs), reads discard_max_bytes (the
 * parent's queue for a partition), looks for dm-crypt (dm/uuid "CRYPT-" on the device or any
 * device below it) and btrfs compression. sysfs_root NULL means "/sys". Sets method/reason:
 *   read-only                      -> UNSUPPORTED "read-only"
 *   discard_max_bytes > 0          -> TRIM (zero-fill stays the fallback if FITRIM says
 *                                     "not supported")
 *   dm-crypt, no discard           -> UNSUPPORTED (zeros become ciphertext)
 *   otherwise                      -> ZEROFILL (btrfs with compression: compressed = true)
 * Missing sysfs files are not an error (no discard, not encrypted). Returns 0 or -ENOMEM.
 * Reads a handful of small sysfs files.
 */
int agent_fs_classify(AgentFs *fs, const char *sysfs_root);

/* agent_fs_classify() on every entry. Returns 0 or the first error. */
int agent_fs_classify_all(AgentFsList *l, const char *sysfs_root);

/* "trim", "zerofill", "unsupported". */
const char *agent_fs_method_to_string(AgentFsMethod m);

/* Frees the strings of *fs (not fs itself) and zeroes it. Accepts a zeroed AgentFs. */
void agent_fs_done(AgentFs *fs);

/* Frees the list and its entries. Accepts NULL; returns NULL. */
AgentFsList *agent_fs_list_free(AgentFsList *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(AgentFsList *, agent_fs_list_free);
