/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "fs-enum.h"
#include "log.h"
#include "macro.h"

/* dm devices can stack (LVM on LUKS on a partition ...); deeper than this is a loop or junk. */
#define SLAVES_MAX_DEPTH 8

/*
 * Filesystem types that never hold guest data on a local block device. Pseudo and memory
 * filesystems have nothing to reclaim; network filesystems live on another machine's disks;
 * read-only image formats (squashfs, erofs, iso9660 ...) cannot be written. Every "fuse*" type
 * is skipped as well (checked by prefix): a FUSE daemon decides where the bytes go.
 */
static const char *const skip_types[] = {
        /* pseudo */
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devtmpfs",
        "devpts",
        "securityfs",
        "debugfs",
        "tracefs",
        "pstore",
        "bpf",
        "configfs",
        "mqueue",
        "hugetlbfs",
        "autofs",
        "binfmt_misc",
        "efivarfs",
        "selinuxfs",
        "rpc_pipefs",
        "nfsd",
        "nsfs",
        "pipefs",
        "sockfs",
        /* memory */
        "tmpfs",
        "ramfs",
        /* layered or read-only images */
        "overlay",
        "overlayfs",
        "aufs",
        "unionfs",
        "squashfs",
        "erofs",
        "cramfs",
        "romfs",
        "iso9660",
        "udf",
        /* network and host-shared */
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "ceph",
        "glusterfs",
        "9p",
        "virtiofs",
        "afs",
        "coda",
        "lustre",
        "gpfs",
        "beegfs",
        "orangefs",
        "davfs",
        "vboxsf",
        "vmhgfs",
};

static bool startswith(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool streq_ptr(const char *a, const char *b) {
        return a && b && strcmp(a, b) == 0;
}

/* Compares an option value as agent_fs_option_find() returns it (ends at ',' or NUL). */
static bool option_value_is(const char *v, const char *s) {
        size_t len = strlen(s);

        return v && strncmp(v, s, len) == 0 && (v[len] == '\0' || v[len] == ',');
}

/* btrfs compress=ALG[:LEVEL] or compress-force=...; "no" (or a bare "compress=") is off. */
static bool btrfs_option_compresses(const char *opts, const char *name) {
        const char *v;

        if (!agent_fs_option_find(opts, name, &v))
                return false;
        return !option_value_is(v, "no") && !option_value_is(v, "");
}

char *agent_mountinfo_unescape(char *s) {
        char *r, *w;

        if (!s)
                return NULL;
        for (r = w = s; *r;) {
                if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
                    r[3] >= '0' && r[3] <= '7') {
                        *w++ = (char) (((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
                        r += 4;
                } else
                        *w++ = *r++;
        }
        *w = '\0';
        return s;
}

bool agent_fs_option_find(const char *opts, const char *name, const char **ret_value) {
        size_t len;

        if (!opts || !name || !*name)
                return false;
        len = strlen(name);
        for (const char *p = opts; *p;) {
                const char *end = strchrnul(p, ',');

                if ((size_t) (end - p) >= len && strncmp(p, name, len) == 0 &&
                    (p + len == end || p[len] == '=')) {
                        if (ret_value)
                                *ret_value = p[len] == '=' ? p + len + 1 : NULL;
                        return true;
                }
                p = *end ? end + 1 : end;
        }
        return false;
}

bool agent_fs_type_is_local_block(const char *fstype, const char *source, dev_t devnum) {
        if (!fstype || !*fstype)
                return false;
        if (startswith(fstype, "fuse"))
                return false;
        for (size_t i = 0; i < ELEMENTSOF(skip_types); i++)
                if (strcmp(fstype, skip_types[i]) == 0)
                        return false;
        if (major(devnum) != 0)
                return true;
        /* An anonymous major:minor (btrfs, bcachefs) is still block-backed when it was
         * mounted from a device node; nfs ("srv:/x"), zfs ("pool/ds") and friends are not. */
        return source && startswith(source, "/dev/");
}

void agent_fs_done(AgentFs *fs) {
        if (!fs)
                return;
        free(fs->mount_point);
        free(fs->root);
        free(fs->device);
        free(fs->fstype);
        free(fs->options);
        free(fs->super_options);
        *fs = (AgentFs){};
}

AgentFsList *agent_fs_list_free(AgentFsList *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n; i++)
                agent_fs_done(&l->items[i]);
        free(l->items);
        free(l);
        return NULL;
}

static void agent_fs_donep(AgentFs *fs) {
        agent_fs_done(fs);
}

static int dup_unescaped(const char *s, char **ret) {
        char *c = strdup(s);

        if (!c)
                return -ENOMEM;
        *ret = agent_mountinfo_unescape(c);
        return 0;
}

static int parse_devnum(const char *s, dev_t *ret) {
        unsigned maj, min;
        int n = -1;

        if (sscanf(s, "%u:%u%n", &maj, &min, &n) != 2 || n < 0 || s[n] != '\0')
                return -EBADMSG;
        *ret = makedev(maj, min);
        return 0;
}

static int parse_mount_id(const char *s, int *ret) {
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT_MAX)
                return -EBADMSG;
        *ret = (int) v;
        return 0;
}

int agent_mountinfo_parse_line(const char *line, AgentFs *ret) {
        _cleanup_free_ char *copy = NULL;
        _cleanup_(agent_fs_donep) AgentFs fs = {};
        /* mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER */
        const char *f[6] = {}, *type = NULL, *source = NULL, *super = NULL;
        size_t nf = 0;
        bool dash = false;
        char *p, *tok;
        int r;

        if (!line || !ret)
                return -EINVAL;
        copy = strdup(line);
        if (!copy)
                return -ENOMEM;
        copy[strcspn(copy, "\n")] = '\0';

        p = copy;
        while ((tok = strsep(&p, " "))) {
                if (nf < ELEMENTSOF(f))
                        f[nf++] = tok;
                else if (!dash) {
                        if (strcmp(tok, "-") == 0)
                                dash = true;
                } else if (!type)
                        type = tok;
                else if (!source)
                        source = tok;
                else if (!super)
                        super = tok;
                else
                        return -EBADMSG;
        }
        if (nf < ELEMENTSOF(f) || !dash || !type || !source || !super || !*type || !*f[3] || !*f[4])
                return -EBADMSG;

        r = parse_mount_id(f[0], &fs.mount_id);
        if (r < 0)
                return r;
        r = parse_devnum(f[2], &fs.devnum);
        if (r < 0)
                return r;
        if (dup_unescaped(f[3], &fs.root) < 0 || dup_unescaped(f[4], &fs.mount_point) < 0 ||
            dup_unescaped(f[5], &fs.options) < 0 || dup_unescaped(type, &fs.fstype) < 0 ||
            dup_unescaped(source, &fs.device) < 0 || dup_unescaped(super, &fs.super_options) < 0)
                return -ENOMEM;
        fs.read_only = agent_fs_option_find(fs.options, "ro", NULL) ||
                agent_fs_option_find(fs.super_options, "ro", NULL);

        *ret = fs;
        fs = (AgentFs){};
        return 0;
}

/* True when candidate a is a better representative of its device than b. */
static bool mount_better(const AgentFs *a, const AgentFs *b) {
        bool a_root = streq_ptr(a->root, "/"), b_root = streq_ptr(b->root, "/");
        size_t la = strlen(a->mount_point), lb = strlen(b->mount_point);

        if (a->read_only != b->read_only)
                return !a->read_only;
        if (a_root != b_root)
                return a_root;
        return la < lb;
}

static int list_append(AgentFsList *l, AgentFs *fs) {
        AgentFs *items = reallocarray(l->items, l->n + 1, sizeof(AgentFs));

        if (!items)
                return -ENOMEM;
        l->items = items;
        l->items[l->n++] = *fs;
        *fs = (AgentFs){};
        return 0;
}

int agent_fs_enumerate(const char *mountinfo_path, unsigned flags, AgentFsList **ret) {
        _cleanup_(agent_fs_list_freep) AgentFsList *l = NULL;
        _cleanup_free_ char *line = NULL;
        FILE *f;
        size_t cap = 0;
        ssize_t len;
        unsigned lineno = 0;
        int r = 0;

        if (!ret)
                return -EINVAL;
        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;

        f = fopen(mountinfo_path ?: AGENT_MOUNTINFO_PATH, "re");
        if (!f)
                return negative_errno();

        while ((len = getline(&line, &cap, f)) >= 0) {
                _cleanup_(agent_fs_donep) AgentFs fs = {};
                size_t i;

                lineno++;
                r = agent_mountinfo_parse_line(line, &fs);
                if (r == -ENOMEM)
                        break;
                if (r < 0) {
                        log_debug_errno(r, "mountinfo line %u malformed, skipped: %m", lineno);
                        r = 0;
                        continue;
                }
                if (!agent_fs_type_is_local_block(fs.fstype, fs.device, fs.devnum))
                        continue;

                for (i = 0; i < l->n; i++)
                        if (l->items[i].devnum == fs.devnum)
                                break;
                if (i == l->n) {
                        r = list_append(l, &fs);
                        if (r < 0)
                                break;
                } else if (mount_better(&fs, &l->items[i])) {
                        agent_fs_done(&l->items[i]);
                        l->items[i] = fs;
                        fs = (AgentFs){};
                }
        }
        if (r >= 0 && ferror(f))
                r = -EIO;
        (void) fclose(f);
        if (r < 0)
                return r;

        if (!(flags & AGENT_FS_INCLUDE_READ_ONLY)) {
                size_t w = 0;
                for (size_t i = 0; i < l->n; i++) {
                        if (l->items[i].read_only)
                                agent_fs_done(&l->items[i]);
                        else
                                l->items[w++] = l->items[i];
                }
                l->n = w;
        }

        *ret = TAKE_PTR(l);
        return 0;
}

/* Reads a small sysfs file into buf (NUL-terminated, trailing newline removed). */
static int read_small_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = -1;
        ssize_t n;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return negative_errno();
        n = read(fd, buf, size - 1);
        if (n < 0)
                return negative_errno();
        buf[n] = '\0';
        buf[strcspn(buf, "\n")] = '\0';
        return 0;
}

static int read_u64_file(const char *path, uint64_t *ret) {
        char buf[64], *end;
        unsigned long long v;
        int r;

        r = read_small_file(path, buf, sizeof(buf));
        if (r < 0)
                return r;
        errno = 0;
        v = strtoull(buf, &end, 10);
        if (errno != 0 || end == buf || *end != '\0' || buf[0] == '-')
                return -EBADMSG;
        *ret = v;
        return 0;
}

static int path_join(char **ret, const char *a, const char *b) {
        return asprintf(ret, "%s/%s", a, b) < 0 ? -ENOMEM : 0;
}

/* The block device behind an anonymous major:minor, via the mount source and
 * {sysfs}/class/block/NAME/dev. 0 in *ret when it cannot be found. */
static int resolve_source_devnum(const char *sysfs, const char *source, dev_t *ret) {
        _cleanup_free_ char *resolved = NULL, *path = NULL;
        const char *name;
        char buf[64];

        *ret = 0;
        if (!source || !startswith(source, "/dev/"))
                return 0;
        /* /dev/mapper/x and /dev/disk/by-uuid/... are symlinks to the kernel name */
        resolved = realpath(source, NULL);
        name = strrchr(resolved && startswith(resolved, "/dev/") ? resolved : source, '/') + 1;
        if (!*name)
                return 0;
        if (asprintf(&path, "%s/class/block/%s/dev", sysfs, name) < 0)
                return -ENOMEM;
        if (read_small_file(path, buf, sizeof(buf)) < 0)
                return 0;
        if (parse_devnum(buf, ret) < 0)
                *ret = 0;
        return 0;
}

static bool dm_uuid_is_crypt(const char *devdir) {
        _cleanup_free_ char *path = NULL;
        char buf[256];

        if (path_join(&path, devdir, "dm/uuid") < 0)
                return false;
        return read_small_file(path, buf, sizeof(buf)) >= 0 && startswith(buf, "CRYPT-");
}

/* dm-crypt on this device or any device below it (through slaves/). */
static int device_is_encrypted(const char *devdir, unsigned depth, bool *ret) {
        _cleanup_free_ char *slaves = NULL;
        DIR *d;
        struct dirent *de;
        int r = 0;

        if (dm_uuid_is_crypt(devdir)) {
                *ret = true;
                return 0;
        }
        *ret = false;
        if (depth >= SLAVES_MAX_DEPTH)
                return 0;
        if (path_join(&slaves, devdir, "slaves") < 0)
                return -ENOMEM;
        d = opendir(slaves);
        if (!d)
                return 0;
        while (!*ret && (de = readdir(d))) {
                _cleanup_free_ char *sub = NULL;

                if (de->d_name[0] == '.')
                        continue;
                if (path_join(&sub, slaves, de->d_name) < 0) {
                        r = -ENOMEM;
                        break;
                }
                r = device_is_encrypted(sub, depth + 1, ret);
                if (r < 0)
                        break;
        }
        (void) closedir(d);
        return r;
}

int agent_fs_classify(AgentFs *fs, const char *sysfs_root) {
        _cleanup_free_ char *devdir = NULL, *partition = NULL, *queue = NULL, *real = NULL;
        const char *sysfs = sysfs_root ?: AGENT_SYSFS_ROOT, *base;
        struct stat st;
        int r;

        if (!fs || !fs->fstype)
                return -EINVAL;

        fs->block_devnum = 0;
        fs->discard_max_bytes = 0;
        fs->encrypted = false;
        fs->reason = NULL;
        fs->compressed = strcmp(fs->fstype, "btrfs") == 0 &&
                (btrfs_option_compresses(fs->super_options, "compress") ||
                 btrfs_option_compresses(fs->super_options, "compress-force"));

        if (major(fs->devnum) != 0)
                fs->block_devnum = fs->devnum;
        else {
                r = resolve_source_devnum(sysfs, fs->device, &fs->block_devnum);
                if (r < 0)
                        return r;
        }

        if (fs->block_devnum != 0) {
                if (asprintf(
                            &devdir,
                            "%s/dev/block/%u:%u",
                            sysfs,
                            major(fs->block_devnum),
                            minor(fs->block_devnum)) < 0)
                        return -ENOMEM;
                /* A partition has no queue of its own: the disk's is one level up in the
                 * device tree (dev/block/MAJ:MIN is a symlink into it). */
                base = devdir;
                if (path_join(&partition, devdir, "partition") < 0)
                        return -ENOMEM;
                if (stat(partition, &st) >= 0) {
                        real = realpath(devdir, NULL);
                        if (real) {
                                char *slash = strrchr(real, '/');
                                if (slash && slash != real) {
                                        *slash = '\0';
                                        base = real;
                                }
                        }
                }
                if (path_join(&queue, base, "queue/discard_max_bytes") < 0)
                        return -ENOMEM;
                if (read_u64_file(queue, &fs->discard_max_bytes) < 0)
                        fs->discard_max_bytes = 0;
                /* crypt sits on the device itself (the partition for LUKS on vda2) */
                r = device_is_encrypted(devdir, 0, &fs->encrypted);
                if (r < 0)
                        return r;
        }

        if (fs->read_only) {
                fs->method = AGENT_FS_METHOD_UNSUPPORTED;
                fs->reason = "read-only";
        } else if (fs->discard_max_bytes > 0)
                fs->method = AGENT_FS_METHOD_TRIM;
        else if (fs->encrypted) {
                fs->method = AGENT_FS_METHOD_UNSUPPORTED;
                fs->reason =
                        "dm-crypt without discard: zeros are written as ciphertext, filling "
                        "is pointless";
        } else {
                fs->method = AGENT_FS_METHOD_ZEROFILL;
                if (fs->block_devnum == 0)
                        fs->reason = "block device not found in sysfs; assuming no discard";
                else if (fs->compressed)
                        fs->reason = "btrfs compression: the fill file is marked no-compress";
        }
        return 0;
}

int agent_fs_classify_all(AgentFsList *l, const char *sysfs_root) {
        int r;

        if (!l)
                return -EINVAL;
        for (size_t i = 0; i < l->n; i++) {
                r = agent_fs_classify(&l->items[i], sysfs_root);
                if (r < 0)
                        return r;
        }
        return 0;
}

const char *agent_fs_method_to_string(AgentFsMethod m) {
        switch (m) {
        case AGENT_FS_METHOD_TRIM:
                return "trim";
        case AGENT_FS_METHOD_ZEROFILL:
                return "zerofill";
        case AGENT_FS_METHOD_UNSUPPORTED:
                return "unsupported";
        }
        return "unknown";
}
