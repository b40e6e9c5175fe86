/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for host/registry/registry-pve.c: qemu-server/VMID.conf and storage.cfg from the
 * fixture trees (a PVE 8 host: dir, nfs, cifs, lvmthin, zfspool and rbd storages, snapshots,
 * a linked clone, cdroms, TPM and EFI disks, the channel in args:), every error case, a host
 * without storage.cfg, then corner cases in memory.
 */

#include "registry-test.h"

#define HOST FIXTURE("host")
#define BAD FIXTURE("bad")

static void test_host_pve(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(HOST, LOAD_PVE, &d);
        const char *dir = HOST "/etc/pve/qemu-server";
        const RegistryVm *vm;

        assert_int_equal(registry_size(r), 4);
        /* version order */
        assert_string_equal(registry_get(r, 0)->name, "vm-100");
        assert_string_equal(registry_get(r, 3)->name, "vm-103");

        vm = want_vm(r, "vm-101");
        assert_int_equal(vm->source, REGISTRY_SOURCE_PROXMOX);
        assert_string_equal(vm->source_file, HOST "/etc/pve/qemu-server/101.conf");
        /* scsi0 before efidisk0 (Proxmox's drive order); tpmstate0 is raw, ide2 a cdrom;
         * scsi1 exists only in the snapshot [before-upgrade] */
        assert_int_equal(vm->n_disks, 2);
        want_disk(
                vm,
                0,
                HOST,
                "/var/lib/vz/images/101/vm-101-disk-0.qcow2",
                "scsi0",
                "local",
                "dir",
                false);
        want_disk(
                vm,
                1,
                HOST,
                "/var/lib/vz/images/101/vm-101-disk-1.qcow2",
                "efidisk0",
                "local",
                "dir",
                false);
        assert_string_equal(vm->channel, HOST "/run/reclaim/101.sock");
        assert_int_equal(vm->auto_compact, -1);

        vm = want_vm(r, "vm-103");
        assert_null(vm->channel);
        assert_int_equal(vm->n_disks, 4);
        /* cifs without a path: mounted at /mnt/pve/ID */
        want_disk(
                vm,
                0,
                HOST,
                "/mnt/pve/smb/images/103/vm-103-disk-4.qcow2",
                "sata0",
                "smb",
                "cifs",
                false);
        /* a linked clone: its own file, the base is its backing file */
        want_disk(
                vm,
                1,
                HOST,
                "/var/lib/vz/images/103/vm-103-disk-3.qcow2",
                "scsi1",
                "local",
                "dir",
                false);
        /* content-dirs images=vm-images */
        want_disk(
                vm,
                2,
                HOST,
                "/srv/fast/vm-images/103/vm-103-disk-5.qcow2",
                "scsi2",
                "fast",
                "dir",
                false);
        want_disk(
                vm,
                3,
                HOST,
                "/mnt/pve/nas/images/103/vm-103-disk-1.qcow2",
                "virtio1",
                "nas",
                "nfs",
                false);

        vm = want_vm(r, "vm-100");
        want_disk(
                vm,
                0,
                HOST,
                "/var/lib/vz/images/100/base-100-disk-0.qcow2",
                "scsi0",
                "local",
                "dir",
                false);
        vm = want_vm(r, "vm-102");
        want_disk(
                vm,
                0,
                HOST,
                "/var/lib/vz/images/102/vm-102-disk-0.qcow2",
                "virtio0",
                "local",
                "dir",
                false);

        expect_diag(&d, LOG_DEBUG, "%s/101.conf:10: ide2: a cdrom; skipped", dir);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/101.conf:23: tpmstate0: 'local:101/vm-101-disk-2.raw' is not a qcow2 image; "
                "skipped",
                dir);
        expect_diag(&d, LOG_DEBUG, "%s/103.conf:4: ide2: a cdrom; skipped", dir);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/103.conf:10: scsi0: storage 'local-lvm' is lvmthin, which holds no qcow2 "
                "files; skipped",
                dir);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/103.conf:13: scsi3: storage 'tank' is zfspool, which holds no qcow2 files; "
                "skipped",
                dir);
        expect_diag(&d, LOG_DEBUG, "%s/103.conf:17: unused0: a detached volume; skipped", dir);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

static void test_bad_pve(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(BAD, LOAD_PVE, &d);
        const char *dir = BAD "/etc/pve/qemu-server", *cfg = BAD "/etc/pve/storage.cfg";
        const RegistryVm *vm;

        assert_int_equal(registry_size(r), 2);
        vm = want_vm(r, "vm-201");
        assert_int_equal(vm->n_disks, 2);
        /* the last scsi0 line counts, as in Proxmox */
        want_disk(
                vm,
                0,
                BAD,
                "/var/lib/vz/images/201/vm-201-disk-1.qcow2",
                "scsi0",
                "local",
                "dir",
                false);
        want_disk(vm, 1, BAD, "/srv/absolute/vm-201.qcow2", "virtio0", NULL, NULL, false);
        assert_null(vm->channel);
        vm = want_vm(r, "vm-202");
        assert_int_equal(vm->n_disks, 1);
        assert_null(vm->channel);

        expect_diag(&d, LOG_DEBUG, "%s: notes.conf: not VMID.conf; ignored", dir);
        expect_diag(&d, LOG_WARNING, "%s:5: cannot parse line (expected 'TYPE: ID'); ignored", cfg);
        expect_diag(&d, LOG_WARNING, "%s:7: property outside a storage definition; ignored", cfg);
        expect_diag(&d, LOG_WARNING, "%s:12: not an indented property; ignored", cfg);
        expect_diag(&d, LOG_WARNING, "%s:14: storage 'local' defined twice; the first counts", cfg);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s:21: storage 'weird': path 'relative/dir' is not absolute; ignored",
                cfg);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s:22: storage 'weird': invalid content-dirs 'images=../escape'; ignored",
                cfg);
        expect_diag(&d, LOG_WARNING, "%s/201.conf:4: cannot parse line; ignored", dir);
        expect_diag(
                &d, LOG_WARNING, "%s/201.conf:6: duplicate key 'scsi0'; the last one counts", dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/201.conf:7: scsi1: unknown storage 'missing' (not in %s); skipped",
                dir,
                cfg);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/201.conf:8: scsi2: storage 'vg' is lvm, which holds no qcow2 files; skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/201.conf:9: scsi3: cannot parse volume 'local:../../../etc/shadow.qcow2'; "
                "skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/201.conf:10: scsi4: storage 'nopath' has no path; skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/201.conf:11: scsi5: storage 'weird' has no path; skipped",
                dir);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/201.conf:13: virtio1: '/dev/disk/by-id/ata-SAMSUNG_SSD_870_S5Y1NX0R123456' is "
                "not a qcow2 image; skipped",
                dir);
        expect_diag(&d, LOG_DEBUG, "%s/201.conf:14: sata0: a cdrom; skipped", dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/201.conf:15: args: org.reclaim.agent.0 uses chardev 'nope', which is not "
                "defined; ignored",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/202.conf:1: args: chardev 'r' of org.reclaim.agent.0 does not listen (add "
                "server=on); ignored",
                dir);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

/* Without storage.cfg: reported once; volumes on storages cannot be resolved; paths can. */
static void test_no_storage_cfg(void **state) {
        const char *root = FIXTURE("no-storage-cfg");
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(root, LOAD_PVE, &d);
        const RegistryVm *vm;

        vm = want_vm(r, "vm-301");
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, root, "/srv/absolute/vm-301-disk-1.qcow2", "scsi1", NULL, NULL, false);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/etc/pve/storage.cfg: cannot read: No such file or directory; volumes on named "
                "storages cannot be resolved",
                root);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/etc/pve/qemu-server/301.conf:7: scsi0: cannot resolve "
                "'local:301/vm-301-disk-0.qcow2': storage.cfg was not read; skipped",
                root);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

static const char storage_cfg[] =
        "dir: local\n"
        "\tpath /var/lib/vz/\n"
        "\tcontent images\n"
        "# a comment inside a stanza does not end it\n"
        "\tdisable\n"
        "\n"
        "nfs: nas\n"
        "\tpath /mnt/pve/nas\n"
        "\n"
        "lvmthin: thin\n"
        "\tvgname pve\n";

static RegistryPveStorages *parse_storages(const char *text, TestDiags *d) {
        const RegistryReporter rep = { .on_error = test_diags_collect, .userdata = d };
        RegistryPveStorages *s = NULL;

        assert_int_equal(
                registry_parse_pve_storages(&rep, "/m/storage.cfg", text, strlen(text), &s), 0);
        assert_non_null(s);
        return s;
}

typedef struct PveCase {
        const char *name;
        const char *conf;
        const char *disk;    /* the first disk's path, or NULL: no disk */
        const char *channel; /* or NULL */
        int level;           /* of the one diagnostic expected (0: none) */
        const char *msg;     /* after "/m/555.conf:" */
} PveCase;

#define CH_DEV " -device virtserialport,chardev=c,name=org.reclaim.agent.0"

static const PveCase pve_cases[] = {
        { "trailing slash on path",
          "scsi0: local:555/vm-555-disk-0.qcow2\n",
          "/var/lib/vz/images/555/vm-555-disk-0.qcow2",
          NULL,
          0,
          NULL },
        { "file= form",
          "virtio0: file=local:555/a.qcow2,size=1G\n",
          "/var/lib/vz/images/555/a.qcow2",
          NULL,
          0,
          NULL },
        { "format=qcow2 decides",
          "virtio0: local:555/a.img,format=qcow2\n",
          "/var/lib/vz/images/555/a.img",
          NULL,
          0,
          NULL },
        { "format=raw decides",
          "virtio0: local:555/a.qcow2,format=raw\n",
          NULL,
          NULL,
          LOG_DEBUG,
          "1: virtio0: 'local:555/a.qcow2' is not a qcow2 image; skipped" },
        { "crlf", "scsi0: local:555/a.qcow2\r\n", "/var/lib/vz/images/555/a.qcow2", NULL, 0, NULL },
        { "no space after colon",
          "scsi0:local:555/a.qcow2\n",
          "/var/lib/vz/images/555/a.qcow2",
          NULL,
          0,
          NULL },
        { "pending section ignored", "[PENDING]\nscsi0: local:555/a.qcow2\n", NULL, NULL, 0, NULL },
        { "cloudinit section ignored",
          "[special:cloudinit]\nscsi0: local:555/a.qcow2\n",
          NULL,
          NULL,
          0,
          NULL },
        { "nfs default path",
          "sata0: nas:555/a.qcow2\n",
          "/mnt/pve/nas/images/555/a.qcow2",
          NULL,
          0,
          NULL },
        { "ide4 is not a drive", "ide4: local:555/a.qcow2\n", NULL, NULL, 0, NULL },
        { "scsi31 is not a drive", "scsi31: local:555/a.qcow2\n", NULL, NULL, 0, NULL },
        { "scsi01 is not a drive", "scsi01: local:555/a.qcow2\n", NULL, NULL, 0, NULL },
        { "efidisk1 is not a drive", "efidisk1: local:555/a.qcow2\n", NULL, NULL, 0, NULL },
        { "virtio15 is",
          "virtio15: local:555/a.qcow2\n",
          "/var/lib/vz/images/555/a.qcow2",
          NULL,
          0,
          NULL },
        { "empty volume",
          "scsi0: ,size=1G\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: scsi0: no volume; skipped" },
        { "none", "ide2: none,media=cdrom\n", NULL, NULL, LOG_DEBUG, "1: ide2: a cdrom; skipped" },
        { "physical cdrom",
          "ide2: cdrom,media=cdrom\n",
          NULL,
          NULL,
          LOG_DEBUG,
          "1: ide2: a cdrom; skipped" },
        { "iso volume",
          "ide0: local:iso/x.iso,media=cdrom\n",
          NULL,
          NULL,
          LOG_DEBUG,
          "1: ide0: a cdrom; skipped" },
        { "lvm volume",
          "scsi0: thin:vm-555-disk-0\n",
          NULL,
          NULL,
          LOG_DEBUG,
          "1: scsi0: storage 'thin' is lvmthin, which holds no qcow2 files; skipped" },
        { "bad volname",
          "scsi0: local:vm-555-disk-0.qcow2\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: scsi0: cannot parse volume 'local:vm-555-disk-0.qcow2'; skipped" },
        { "dot volname",
          "scsi0: local:555/..qcow2/../x.qcow2\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: scsi0: cannot parse volume 'local:555/..qcow2/../x.qcow2'; skipped" },
        { "no storage",
          "scsi0: 555/a.qcow2\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: scsi0: cannot parse volume '555/a.qcow2'; skipped" },
        { "same file twice",
          "scsi0: local:555/a.qcow2\nscsi1: local:555/a.qcow2\n",
          "/var/lib/vz/images/555/a.qcow2",
          NULL,
          LOG_WARNING,
          "2: scsi1: '/var/lib/vz/images/555/a.qcow2' is attached twice; skipped" },
        { "garbage", ": nothing\n", NULL, NULL, LOG_WARNING, "1: cannot parse line; ignored" },
        { "uppercase key",
          "SCSI0: local:555/a.qcow2\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: cannot parse line; ignored" },
        { "nul byte",
          "scsi0: local:555/a.qcow2\0\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: NUL byte in line; ignored" },
        /* the channel in args: */
        { "args server=on",
          "args: -chardev socket,id=c,path=/run/c.sock,server=on,wait=off" CH_DEV "\n",
          NULL,
          "/run/c.sock",
          0,
          NULL },
        { "args old flags",
          "args: -chardev socket,id=c,path=/run/c.sock,server,nowait" CH_DEV "\n",
          NULL,
          "/run/c.sock",
          0,
          NULL },
        { "args device first",
          "args:" CH_DEV " -chardev socket,path=/run/c.sock,server=y,id=c\n",
          NULL,
          "/run/c.sock",
          0,
          NULL },
        { "args double dash",
          "args: --chardev socket,id=c,path=/run/c.sock,server=on --device virtserialport,chardev=c,name=org.reclaim.agent.0\n",
          NULL,
          "/run/c.sock",
          0,
          NULL },
        { "args quoted",
          "args: -chardev 'socket,id=c,path=/run/c d.sock,server=on'" CH_DEV "\n",
          NULL,
          "/run/c d.sock",
          0,
          NULL },
        { "args comma escape",
          "args: -chardev socket,id=c,path=/run/a,,b.sock,server=on" CH_DEV "\n",
          NULL,
          "/run/a,b.sock",
          0,
          NULL },
        { "args virtconsole",
          "args: -chardev socket,id=c,path=/run/c.sock,server=on -device virtconsole,chardev=c,name=org.reclaim.agent.0\n",
          NULL,
          "/run/c.sock",
          0,
          NULL },
        { "args other port",
          "args: -chardev socket,id=c,path=/run/c.sock,server=on -device virtserialport,chardev=c,name=org.qemu.guest_agent.0\n",
          NULL,
          NULL,
          0,
          NULL },
        { "args server=off",
          "args: -chardev socket,id=c,path=/run/c.sock,server=off" CH_DEV "\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: chardev 'c' of org.reclaim.agent.0 does not listen (add server=on); ignored" },
        { "args tcp",
          "args: -chardev socket,id=c,host=127.0.0.1,port=4444,server=on" CH_DEV "\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: chardev 'c' of org.reclaim.agent.0 is not a UNIX socket; ignored" },
        { "args pty",
          "args: -chardev pty,id=c" CH_DEV "\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: chardev 'c' of org.reclaim.agent.0 is not a UNIX socket; ignored" },
        { "args relative",
          "args: -chardev socket,id=c,path=c.sock,server=on" CH_DEV "\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: 'c.sock' is not an absolute socket path of at most 107 bytes; ignored" },
        { "args no chardev",
          "args: -device virtserialport,name=org.reclaim.agent.0\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: org.reclaim.agent.0 has no chardev=; ignored" },
        { "args not a port",
          "args: -device virtio-net,chardev=c,name=org.reclaim.agent.0\n",
          NULL,
          NULL,
          LOG_WARNING,
          "1: args: org.reclaim.agent.0 is not a virtserialport; ignored" },
        { "args dangling", "args: -device", NULL, NULL, 0, NULL },
        { "args empty", "args:\n", NULL, NULL, 0, NULL },
};

static void test_memory_cases(void **state) {
        TestDiags sd = {};
        _cleanup_(registry_pve_storages_freep) RegistryPveStorages *st =
                parse_storages(storage_cfg, &sd);

        assert_int_equal(st->n_items, 3);
        assert_string_equal(st->items[0].id, "local");
        assert_string_equal(st->items[0].type, "dir");
        assert_string_equal(st->items[0].path, "/var/lib/vz/");
        assert_null(st->items[0].images_dir);
        assert_string_equal(st->items[1].type, "nfs");
        assert_string_equal(st->items[2].id, "thin");
        assert_null(st->items[2].path);
        assert_int_equal(sd.n, 0);
        test_diags_done(&sd);

        for (size_t i = 0; i < ELEMENTSOF(pve_cases); i++) {
                const PveCase *c = &pve_cases[i];
                TestDiags d = {};
                const RegistryReporter rep = { .on_error = test_diags_collect, .userdata = &d };
                RegistryVm *vm = NULL;
                size_t len = strlen(c->conf);
                int r;

                if (strcmp(c->name, "nul byte") == 0)
                        len += 2;
                r = registry_parse_pve(&rep, "/m/555.conf", "555", c->conf, len, st, &vm);
                if (r != 0) {
                        test_diags_dump(&d);
                        fail_msg("case '%s': %d", c->name, r);
                }
                assert_string_equal(vm->name, "vm-555");
                if (c->disk) {
                        if (vm->n_disks < 1)
                                fail_msg("case '%s': no disk", c->name);
                        assert_string_equal(vm->disks[0].path, c->disk);
                } else if (vm->n_disks != 0)
                        fail_msg("case '%s': disk %s", c->name, vm->disks[0].path);
                if (c->channel) {
                        if (!vm->channel)
                                fail_msg("case '%s': no channel", c->name);
                        assert_string_equal(vm->channel, c->channel);
                } else if (vm->channel)
                        fail_msg("case '%s': channel %s", c->name, vm->channel);
                if (c->level)
                        expect_diag(&d, c->level, "/m/555.conf:%s", c->msg);
                expect_no_other_diags(&d, LOG_DEBUG);
                registry_vm_free(vm);
                test_diags_done(&d);
        }
}

/* The order of drives is Proxmox's (ide, sata, scsi, virtio, efidisk, tpmstate), by index. */
static void test_memory_order(void **state) {
        static const char conf[] =
                "virtio0: /v0.qcow2\n"
                "scsi10: /s10.qcow2\n"
                "efidisk0: /e.qcow2\n"
                "scsi2: /s2.qcow2\n"
                "ide0: /i0.qcow2\n"
                "tpmstate0: /t.qcow2,format=qcow2\n"
                "sata5: /sa5.qcow2\n";
        static const char *const want[] = { "ide0",    "sata5",    "scsi2",    "scsi10",
                                            "virtio0", "efidisk0", "tpmstate0" };
        TestDiags d = {};
        const RegistryReporter rep = { .on_error = test_diags_collect, .userdata = &d };
        RegistryVm *vm = NULL;

        assert_int_equal(
                registry_parse_pve(&rep, "/m/1.conf", "1", conf, strlen(conf), NULL, &vm), 0);
        assert_int_equal(vm->n_disks, ELEMENTSOF(want));
        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                assert_string_equal(vm->disks[i].drive, want[i]);
                assert_null(vm->disks[i].storage);
        }
        assert_int_equal(d.n, 0);
        registry_vm_free(vm);

        /* a VMID that is not a number */
        assert_int_equal(registry_parse_pve(&rep, "/m/x.conf", "x1", "", 0, NULL, &vm), -EINVAL);
        expect_diag(&d, LOG_ERR, "/m/x.conf: 'x1' is not a VMID; skipped");
        test_diags_done(&d);
}

static void test_memory_storages(void **state) {
        static const char cfg[] =
                "dir: a\n"
                "\tpath /a   \n"
                "\tcontent-dirs iso=isos,images=vm/imgs\n"
                "\n"
                "dir:b\n"
                "\tpath /b\n"
                "\tcontent-dirs images=/abs\n"
                "\n"
                "bad id: x y\n"
                "\tpath /c\n"
                "\n"
                "\tstray\n";
        TestDiags d = {};
        _cleanup_(registry_pve_storages_freep) RegistryPveStorages *st = parse_storages(cfg, &d);

        assert_int_equal(st->n_items, 2);
        assert_string_equal(st->items[0].path, "/a");
        assert_string_equal(st->items[0].images_dir, "vm/imgs");
        assert_string_equal(st->items[1].id, "b");
        assert_null(st->items[1].images_dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "/m/storage.cfg:7: storage 'b': invalid content-dirs 'images=/abs'; ignored");
        expect_diag(
                &d,
                LOG_WARNING,
                "/m/storage.cfg:9: cannot parse storage header 'bad id: x y'; ignored");
        expect_diag(
                &d,
                LOG_WARNING,
                "/m/storage.cfg:12: property outside a storage definition; ignored");
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_host_pve),       cmocka_unit_test(test_bad_pve),
                cmocka_unit_test(test_no_storage_cfg), cmocka_unit_test(test_memory_cases),
                cmocka_unit_test(test_memory_order),   cmocka_unit_test(test_memory_storages),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
