/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for agent/fs-enum.c: mountinfo parsing on fixture files (a Debian guest, bind
 * mounts, escapes, mounts to skip, read-only mounts, btrfs subvolumes, dm-crypt, malformed
 * lines) and discard/crypt classification against a fixture sysfs tree
 * (tests/agent/fixtures/sysfs, laid out like the real one, symlinks included).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <cmocka.h>

#include "fs-enum.h"
#include "macro.h"

#ifndef AGENT_FIXTURE_DIR
#        error "AGENT_FIXTURE_DIR must be defined by the build"
#endif
#define FIXTURE(name) AGENT_FIXTURE_DIR "/" name
#define SYSFS FIXTURE("sysfs")

typedef struct Want {
        const char *mount_point;
        const char *device;
        unsigned maj, min;
        const char *fstype;
        const char *root;
        bool read_only;
} Want;

typedef struct WantClass {
        const char *mount_point;
        AgentFsMethod method;
        const char *reason; /* substring; NULL: no reason */
        bool discard;
        bool encrypted;
        bool compressed;
        unsigned block_maj, block_min;
} WantClass;

static AgentFsList *enumerate(const char *path, unsigned flags) {
        AgentFsList *l = NULL;
        int r = agent_fs_enumerate(path, flags, &l);

        if (r < 0)
                fail_msg("agent_fs_enumerate(%s): %s", path, strerror(-r));
        assert_non_null(l);
        return l;
}

static void check_list(const char *fixture, unsigned flags, const Want *want, size_t n) {
        _cleanup_(agent_fs_list_freep) AgentFsList *l = enumerate(fixture, flags);

        if (l->n != n) {
                for (size_t i = 0; i < l->n; i++)
                        print_message("# got %s\n", l->items[i].mount_point);
                fail_msg("%s: %zu filesystems, want %zu", fixture, l->n, n);
        }
        for (size_t i = 0; i < n; i++) {
                const AgentFs *fs = &l->items[i];
                assert_string_equal(fs->mount_point, want[i].mount_point);
                assert_string_equal(fs->device, want[i].device);
                assert_int_equal(major(fs->devnum), want[i].maj);
                assert_int_equal(minor(fs->devnum), want[i].min);
                assert_string_equal(fs->fstype, want[i].fstype);
                assert_string_equal(fs->root, want[i].root ?: "/");
                assert_int_equal(fs->read_only, want[i].read_only);
                assert_non_null(fs->options);
                assert_non_null(fs->super_options);
        }
}

static void check_classes(const char *fixture, unsigned flags, const WantClass *want, size_t n) {
        _cleanup_(agent_fs_list_freep) AgentFsList *l = enumerate(fixture, flags);

        assert_int_equal(agent_fs_classify_all(l, SYSFS), 0);
        assert_int_equal(l->n, n);
        for (size_t i = 0; i < n; i++) {
                const AgentFs *fs = &l->items[i];
                assert_string_equal(fs->mount_point, want[i].mount_point);
                if (fs->method != want[i].method)
                        fail_msg(
                                "%s: method %s, want %s (reason %s)",
                                fs->mount_point,
                                agent_fs_method_to_string(fs->method),
                                agent_fs_method_to_string(want[i].method),
                                fs->reason ?: "-");
                if (want[i].reason) {
                        assert_non_null(fs->reason);
                        if (!strstr(fs->reason, want[i].reason))
                                fail_msg(
                                        "%s: reason '%s' lacks '%s'",
                                        fs->mount_point,
                                        fs->reason,
                                        want[i].reason);
                } else if (fs->reason)
                        fail_msg("%s: unexpected reason '%s'", fs->mount_point, fs->reason);
                assert_int_equal(fs->discard_max_bytes > 0, want[i].discard);
                assert_int_equal(fs->encrypted, want[i].encrypted);
                assert_int_equal(fs->compressed, want[i].compressed);
                assert_int_equal(major(fs->block_devnum), want[i].block_maj);
                assert_int_equal(minor(fs->block_devnum), want[i].block_min);
        }
}

static void test_debian(void **state) {
        static const Want want[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
                { "/home", "/dev/vdb1", 254, 17, "ext4" },
                { "/boot/efi", "/dev/vda15", 254, 15, "vfat" },
                { "/var/lib/data", "/dev/mapper/vg0-data", 253, 0, "xfs" },
        };
        static const WantClass cls[] = {
                /* partition: the disk's queue decides */
                { "/", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 254, 1 },
                { "/home", AGENT_FS_METHOD_TRIM, NULL, true, false, false, 254, 17 },
                { "/boot/efi", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 254, 15 },
                /* LVM on a plain partition: not encrypted */
                { "/var/lib/data", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 253, 0 },
        };

        check_list(FIXTURE("mountinfo-debian"), 0, want, ELEMENTSOF(want));
        check_classes(FIXTURE("mountinfo-debian"), 0, cls, ELEMENTSOF(cls));
}

static void test_bind_mounts(void **state) {
        static const Want want[] = {
                /* the mount of the filesystem's root wins over bind mounts of subtrees */
                { "/", "/dev/vda1", 254, 1, "ext4" },
                /* no mount of "/": the shortest mount point */
                { "/d", "/dev/vdb1", 254, 17, "ext4", "/data" },
                /* writable beats read-only, then "/" beats a subtree */
                { "/zz-rw", "/dev/mapper/vg0-data", 253, 0, "xfs" },
        };

        check_list(FIXTURE("mountinfo-bind"), 0, want, ELEMENTSOF(want));
}

static void test_escaped(void **state) {
        static const Want want[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
                { "/mnt/my disk", "/dev/vdb1", 254, 17, "ext4" },
                { "/mnt/tab\tand\\backslash", "/dev/disk/by-label/odd label", 254, 18, "ext4" },
                { "/mnt/trailing ", "/dev/vdb3", 254, 19, "xfs" },
                /* not an escape: kept as is */
                { "/mnt/not\\04escape\\9", "/dev/vdb4", 254, 20, "xfs" },
        };

        check_list(FIXTURE("mountinfo-escaped"), 0, want, ELEMENTSOF(want));
}

static void test_skip(void **state) {
        static const Want want[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
        };

        /* overlay, tmpfs, nfs, nfs4, fuse.*, fuseblk, cifs, ceph, glusterfs, squashfs, ramfs,
         * zfs, 9p, virtiofs, iso9660: all out */
        check_list(FIXTURE("mountinfo-skip"), 0, want, ELEMENTSOF(want));
        check_list(FIXTURE("mountinfo-skip"), AGENT_FS_INCLUDE_READ_ONLY, want, ELEMENTSOF(want));
}

static void test_read_only(void **state) {
        static const Want want[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
        };
        static const Want want_all[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
                { "/mnt/ro", "/dev/vdb1", 254, 17, "ext4", NULL, true },
                { "/mnt/sb-ro", "/dev/vdb2", 254, 18, "ext4", NULL, true },
        };
        static const WantClass cls[] = {
                { "/", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 254, 1 },
                /* read-only wins over "discard works" */
                { "/mnt/ro",
                  AGENT_FS_METHOD_UNSUPPORTED,
                  "read-only",
                  true,
                  false,
                  false,
                  254,
                  17 },
                { "/mnt/sb-ro",
                  AGENT_FS_METHOD_UNSUPPORTED,
                  "read-only",
                  true,
                  false,
                  false,
                  254,
                  18 },
        };

        check_list(FIXTURE("mountinfo-readonly"), 0, want, ELEMENTSOF(want));
        check_list(
                FIXTURE("mountinfo-readonly"),
                AGENT_FS_INCLUDE_READ_ONLY,
                want_all,
                ELEMENTSOF(want_all));
        check_classes(
                FIXTURE("mountinfo-readonly"), AGENT_FS_INCLUDE_READ_ONLY, cls, ELEMENTSOF(cls));
}

static void test_btrfs(void **state) {
        static const Want want[] = {
                /* subvolume mounts share 0:33; none is the root, "/" is the shortest */
                { "/", "/dev/vdc", 0, 33, "btrfs", "/@" },
                { "/srv", "/dev/vdd", 0, 34, "btrfs" },
                { "/mnt/forced", "/dev/mapper/missing-device", 0, 35, "btrfs" },
                { "/mnt/nocomp", "/dev/vde", 0, 36, "btrfs" },
        };
        static const WantClass cls[] = {
                /* anonymous 0:33 resolved through the source and class/block/vdc/dev */
                { "/", AGENT_FS_METHOD_ZEROFILL, "compression", false, false, true, 254, 32 },
                { "/srv", AGENT_FS_METHOD_TRIM, NULL, true, false, false, 254, 64 },
                { "/mnt/forced", AGENT_FS_METHOD_ZEROFILL, "not found", false, false, true, 0, 0 },
                { "/mnt/nocomp", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 254, 80 },
        };

        check_list(FIXTURE("mountinfo-btrfs"), 0, want, ELEMENTSOF(want));
        check_classes(FIXTURE("mountinfo-btrfs"), 0, cls, ELEMENTSOF(cls));
}

static void test_crypt(void **state) {
        static const WantClass cls[] = {
                /* LUKS on a partition, no discard: filling is pointless */
                { "/", AGENT_FS_METHOD_UNSUPPORTED, "dm-crypt", false, true, false, 253, 1 },
                /* LVM on top of that LUKS: found through slaves/ */
                { "/home", AGENT_FS_METHOD_UNSUPPORTED, "dm-crypt", false, true, false, 253, 2 },
                /* crypt with allow-discards: FITRIM goes through */
                { "/srv", AGENT_FS_METHOD_TRIM, NULL, true, true, false, 253, 3 },
                /* device not in sysfs: no discard known, zero-fill */
                { "/mnt/gone", AGENT_FS_METHOD_ZEROFILL, NULL, false, false, false, 254, 48 },
        };

        check_classes(FIXTURE("mountinfo-crypt"), 0, cls, ELEMENTSOF(cls));
}

static void test_malformed(void **state) {
        static const Want want[] = {
                { "/", "/dev/vda1", 254, 1, "ext4" },
                /* several optional fields before the separator */
                { "/mnt/ok", "/dev/vdb5", 254, 21, "ext4" },
        };

        check_list(FIXTURE("mountinfo-malformed"), 0, want, ELEMENTSOF(want));
}

static void test_parse_line_table(void **state) {
        static const struct {
                const char *line;
                int want;
        } cases[] = {
                { "26 1 254:1 / / rw - ext4 /dev/vda1 rw\n", 0 },
                { "26 1 254:1 / / rw shared:1 master:2 - ext4 /dev/vda1 rw", 0 },
                { "", -EBADMSG },
                { "26 1 254:1 / / rw", -EBADMSG },
                { "26 1 254:1 / / rw -", -EBADMSG },
                { "26 1 254:1 / / rw - ext4", -EBADMSG },
                { "26 1 254:1 / / rw - ext4 /dev/vda1", -EBADMSG },
                { "26 1 254:1 / / rw - ext4 /dev/vda1 rw junk", -EBADMSG },
                { "26 1 254 / / rw - ext4 /dev/vda1 rw", -EBADMSG },
                { "26 1 254:1x / / rw - ext4 /dev/vda1 rw", -EBADMSG },
                { "-1 1 254:1 / / rw - ext4 /dev/vda1 rw", -EBADMSG },
                { "99999999999 1 254:1 / / rw - ext4 /dev/vda1 rw", -EBADMSG },
                { "26 1 254:1 / / rw - ext4 /dev/vda1 rw", 0 },
                { "26  1 254:1 / / rw - ext4 /dev/vda1 rw", -EBADMSG },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                AgentFs fs = {};
                int r = agent_mountinfo_parse_line(cases[i].line, &fs);
                if (r != cases[i].want)
                        fail_msg("case %zu '%s': %d, want %d", i, cases[i].line, r, cases[i].want);
                if (r == 0) {
                        assert_int_equal(fs.mount_id, 26);
                        assert_string_equal(fs.fstype, "ext4");
                        assert_false(fs.read_only);
                } else
                        assert_null(fs.mount_point); /* untouched on failure */
                agent_fs_done(&fs);
        }
        assert_int_equal(agent_mountinfo_parse_line(NULL, &(AgentFs){}), -EINVAL);
}

static void test_unescape_table(void **state) {
        static const struct {
                const char *in, *out;
        } cases[] = {
                { "", "" },
                { "plain", "plain" },
                { "a\\040b", "a b" },
                { "\\011\\012\\134", "\t\n\\" },
                { "\\040\\040", "  " },
                { "end\\04", "end\\04" },
                { "\\400", "\\400" }, /* above \377: not an escape */
                { "\\08a", "\\08a" },
                { "x\\", "x\\" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char buf[64];
                snprintf(buf, sizeof(buf), "%s", cases[i].in);
                assert_string_equal(agent_mountinfo_unescape(buf), cases[i].out);
        }
        assert_null(agent_mountinfo_unescape(NULL));
}

static void test_option_find(void **state) {
        const char *opts = "rw,relatime,compress=zstd:3,space_cache=v2,subvol=/@,ro";
        const char *v = "unset";

        assert_true(agent_fs_option_find(opts, "rw", &v));
        assert_null(v);
        assert_true(agent_fs_option_find(opts, "compress", &v));
        assert_int_equal(strncmp(v, "zstd:3,", 7), 0);
        assert_true(agent_fs_option_find(opts, "ro", NULL));
        assert_true(agent_fs_option_find(opts, "subvol", &v));
        assert_int_equal(strncmp(v, "/@,", 3), 0);
        assert_false(agent_fs_option_find(opts, "compress-force", NULL));
        assert_false(agent_fs_option_find(opts, "relatim", NULL));
        assert_false(agent_fs_option_find(opts, "space", NULL));
        assert_false(agent_fs_option_find("rw,relatime", "ro", NULL));
        assert_false(agent_fs_option_find("", "ro", NULL));
        assert_false(agent_fs_option_find(NULL, "ro", NULL));
        assert_false(agent_fs_option_find("ro", "", NULL));
        assert_true(agent_fs_option_find("compress-force=lzo", "compress-force", &v));
        assert_string_equal(v, "lzo");
}

static void test_type_table(void **state) {
        static const struct {
                const char *type, *source;
                unsigned maj;
                bool want;
        } cases[] = {
                { "ext4", "/dev/vda1", 254, true },     { "xfs", "/dev/mapper/vg-root", 253, true },
                { "vfat", "/dev/vda15", 254, true },    { "btrfs", "/dev/vdc", 0, true },
                { "btrfs", "rootfs", 0, false },        { "zfs", "tank/data", 0, false },
                { "nfs4", "srv:/x", 0, false },         { "nfs", "/dev/looks-local", 0, false },
                { "tmpfs", "tmpfs", 0, false },         { "tmpfs", "/dev/shm", 0, false },
                { "ramfs", "ramfs", 0, false },         { "overlay", "overlay", 0, false },
                { "squashfs", "/dev/loop3", 7, false }, { "fuse.sshfs", "u@h:/", 0, false },
                { "fuseblk", "/dev/sdc1", 8, false },   { "fuse", "/dev/fuse", 0, false },
                { "cifs", "//nas/share", 0, false },    { "ceph", "1.2.3.4:/", 0, false },
                { "glusterfs", "g:/v", 0, false },      { "proc", "proc", 0, false },
                { "sysfs", "sysfs", 0, false },         { "cgroup2", "cgroup2", 0, false },
                { "devtmpfs", "udev", 0, false },       { "", "/dev/vda1", 254, false },
                { NULL, "/dev/vda1", 254, false },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                if (agent_fs_type_is_local_block(
                            cases[i].type, cases[i].source, makedev(cases[i].maj, 1)) !=
                    cases[i].want)
                        fail_msg(
                                "case %zu (%s, %s): want %d",
                                i,
                                cases[i].type ?: "(null)",
                                cases[i].source,
                                cases[i].want);
}

static void test_errors(void **state) {
        AgentFsList *l = (AgentFsList *) 0x1;

        assert_int_equal(agent_fs_enumerate(FIXTURE("no-such-file"), 0, &l), -ENOENT);
        assert_ptr_equal(l, (AgentFsList *) 0x1); /* untouched */
        assert_int_equal(agent_fs_enumerate(NULL, 0, NULL), -EINVAL);
        assert_int_equal(agent_fs_classify(NULL, SYSFS), -EINVAL);
        assert_int_equal(agent_fs_classify_all(NULL, SYSFS), -EINVAL);
        assert_null(agent_fs_list_free(NULL));
        agent_fs_done(NULL);
        assert_string_equal(agent_fs_method_to_string(AGENT_FS_METHOD_TRIM), "trim");
        assert_string_equal(agent_fs_method_to_string(AGENT_FS_METHOD_ZEROFILL), "zerofill");
        assert_string_equal(agent_fs_method_to_string(AGENT_FS_METHOD_UNSUPPORTED), "unsupported");
}

/* The real machine: must parse without error; every entry classifies. */
static void test_live(void **state) {
        _cleanup_(agent_fs_list_freep) AgentFsList *l = NULL;

        assert_int_equal(agent_fs_enumerate(NULL, 0, &l), 0);
        assert_int_equal(agent_fs_classify_all(l, NULL), 0);
        for (size_t i = 0; i < l->n; i++)
                print_message(
                        "# %s %s %s %s%s%s\n",
                        l->items[i].mount_point,
                        l->items[i].fstype,
                        l->items[i].device,
                        agent_fs_method_to_string(l->items[i].method),
                        l->items[i].reason ? ": " : "",
                        l->items[i].reason ?: "");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_debian),
                cmocka_unit_test(test_bind_mounts),
                cmocka_unit_test(test_escaped),
                cmocka_unit_test(test_skip),
                cmocka_unit_test(test_read_only),
                cmocka_unit_test(test_btrfs),
                cmocka_unit_test(test_crypt),
                cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_parse_line_table),
                cmocka_unit_test(test_unescape_table),
                cmocka_unit_test(test_option_find),
                cmocka_unit_test(test_type_table),
                cmocka_unit_test(test_errors),
                cmocka_unit_test(test_live),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
