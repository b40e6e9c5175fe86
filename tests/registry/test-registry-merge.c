/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for host/registry/registry.c: loading every source of a fixture host and merging
 * them (a vms.d VM replaces a discovered one, a vms.d file without disks adds policy to it,
 * libvirt before Proxmox), the paths and their root prefix, lookups and the public API's
 * argument checks.
 */

#include <sys/stat.h>
#include <unistd.h>

#include "registry-test.h"

#define HOST FIXTURE("host")
#define BAD FIXTURE("bad")

static void test_host_all(void **state) {
        static const char *const names[] = { "db01",   "vm-100", "vm-101", "vm-102",
                                             "vm-103", "vm-300", "web01" };
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(HOST, LOAD_ALL, &d);
        const RegistryVm *vm;

        assert_int_equal(registry_size(r), ELEMENTSOF(names));
        REGISTRY_FOREACH_VM(vm, r, i) {
                assert_string_equal(vm->name, names[i]);
                assert_ptr_equal(registry_find(r, names[i]), vm);
        }
        assert_null(registry_get(r, ELEMENTSOF(names)));

        /* a vms.d VM with disks replaces the Proxmox one of the same name */
        vm = want_vm(r, "vm-102");
        assert_int_equal(vm->source, REGISTRY_SOURCE_VMS_D);
        assert_string_equal(vm->source_file, HOST "/etc/reclaim/vms.d/legacy.conf");
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, HOST, "/srv/legacy/vm-102.qcow2", NULL, NULL, NULL, false);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/etc/reclaim/vms.d/legacy.conf: VM 'vm-102' overrides the proxmox VM defined "
                "in %s/etc/pve/qemu-server/102.conf",
                HOST,
                HOST);

        /* a vms.d file without disks: policy on the libvirt VM, disks and channel untouched */
        vm = want_vm(r, "web01");
        assert_int_equal(vm->source, REGISTRY_SOURCE_LIBVIRT);
        assert_string_equal(vm->source_file, HOST "/etc/libvirt/qemu/web01.xml");
        assert_string_equal(vm->overrides_file, HOST "/etc/reclaim/vms.d/web01.conf");
        assert_int_equal(vm->n_disks, 1);
        assert_string_equal(vm->channel, HOST "/run/reclaim/web01.sock");
        assert_int_equal(vm->auto_compact, 0);
        assert_int_equal(vm->min_gain.kind, REGISTRY_MIN_GAIN_PERCENT);
        assert_int_equal(vm->min_gain.value, 10);

        vm = want_vm(r, "vm-101");
        assert_null(vm->overrides_file);
        assert_int_equal(vm->auto_compact, -1);

        expect_diag(
                &d,
                LOG_WARNING,
                "%s/etc/libvirt/qemu/db01.xml:102: channel org.reclaim.agent.0 has mode='connect': "
                "QEMU must listen (mode='bind')",
                HOST);
        expect_no_other_diags(&d, LOG_WARNING);
        test_diags_done(&d);
}

/* The error tree: everything bad is reported, nothing is fatal, the good VMs load. */
static void test_bad_all(void **state) {
        static const char *const names[] = { "good", "libtwin", "twin", "vm-201", "vm-202" };
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(BAD, LOAD_ALL, &d);
        const RegistryVm *vm;

        assert_int_equal(registry_size(r), ELEMENTSOF(names));
        REGISTRY_FOREACH_VM(vm, r, i) {
                assert_string_equal(vm->name, names[i]);
        }
        for (size_t i = 0; i < d.n; i++)
                assert_true(d.v[i].error <= 0);
        test_diags_done(&d);
}

/* An overlay sets the channel too; a second overlay for the same VM is an error. */
static void test_overlay(void **state) {
        char root[] = "/tmp/registry-test-......", path[512];
        TestDiags d = {};
        Registry *r = NULL;
        const RegistryVm *vm;
        FILE *f;

        memset(strchr(root, '.'), 'X', 6); /* mkdtemp's template */
        assert_non_null(mkdtemp(root));
        snprintf(path, sizeof(path), "%s/etc", root);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/etc/reclaim", root);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/etc/reclaim/vms.d", root);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/etc/pve", root);
        assert_int_equal(mkdir(path, 0755), 0);
        snprintf(path, sizeof(path), "%s/etc/pve/qemu-server", root);
        assert_int_equal(mkdir(path, 0755), 0);

        snprintf(path, sizeof(path), "%s/etc/pve/qemu-server/7.conf", root);
        assert_non_null(f = fopen(path, "we"));
        fputs("scsi0: /images/7.qcow2\n", f);
        fclose(f);
        snprintf(path, sizeof(path), "%s/etc/reclaim/vms.d/a.conf", root);
        assert_non_null(f = fopen(path, "we"));
        fputs("[vm]\nname = vm-7\nchannel = /run/reclaim/7.sock\n", f);
        fclose(f);
        snprintf(path, sizeof(path), "%s/etc/reclaim/vms.d/b.conf", root);
        assert_non_null(f = fopen(path, "we"));
        fputs("[vm]\nname = vm-7\nmin_gain = 2G\n", f);
        fclose(f);
        /* a FIFO is not read (and does not hang the loader) */
        snprintf(path, sizeof(path), "%s/etc/reclaim/vms.d/fifo.conf", root);
        assert_int_equal(mkfifo(path, 0600), 0);

        r = test_load(root, LOAD_ALL, &d);
        vm = want_vm(r, "vm-7");
        assert_int_equal(vm->source, REGISTRY_SOURCE_PROXMOX);
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, root, "/images/7.qcow2", "scsi0", NULL, NULL, false);
        snprintf(path, sizeof(path), "%s/run/reclaim/7.sock", root);
        assert_string_equal(vm->channel, path);
        assert_int_equal(vm->min_gain.kind, REGISTRY_MIN_GAIN_UNSET);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/etc/reclaim/vms.d/b.conf: VM 'vm-7' is already defined in "
                "%s/etc/reclaim/vms.d/a.conf; this definition is ignored",
                root,
                root);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/etc/reclaim/vms.d/fifo.conf: cannot read: not a regular file; skipped",
                root);
        /* (a Proxmox host always has one) */
        expect_diag(
                &d,
                LOG_ERR,
                "%s/etc/pve/storage.cfg: cannot read: No such file or directory; volumes on named "
                "storages cannot be resolved",
                root);
        expect_no_other_diags(&d, LOG_WARNING);
        registry_free(r);
        test_diags_done(&d);

        snprintf(path, sizeof(path), "rm -rf '%s'", root);
        assert_int_equal(system(path), 0);
}

static void test_paths(void **state) {
        RegistryPaths p;

        assert_int_equal(registry_paths_init(&p, NULL), 0);
        assert_null(p.root);
        assert_string_equal(p.vms_d, "/etc/reclaim/vms.d");
        assert_string_equal(p.libvirt_qemu, "/etc/libvirt/qemu");
        assert_string_equal(p.pve_qemu_server, "/etc/pve/qemu-server");
        assert_string_equal(p.pve_storage_cfg, "/etc/pve/storage.cfg");
        registry_paths_done(&p);
        assert_null(p.vms_d);
        registry_paths_done(&p); /* twice is fine */
        registry_paths_done(NULL);

        assert_int_equal(registry_paths_init(&p, "/"), 0);
        assert_null(p.root);
        assert_string_equal(p.vms_d, "/etc/reclaim/vms.d");
        registry_paths_done(&p);

        assert_int_equal(registry_paths_init(&p, "/srv/host//"), 0);
        assert_string_equal(p.root, "/srv/host//");
        assert_string_equal(p.vms_d, "/srv/host/etc/reclaim/vms.d");
        assert_string_equal(p.pve_storage_cfg, "/srv/host/etc/pve/storage.cfg");
        assert_int_equal(registry_paths_set(&p.vms_d, "/cfg/vms.d"), 0);
        assert_string_equal(p.vms_d, "/cfg/vms.d");
        assert_int_equal(registry_paths_set(&p.vms_d, NULL), 0);
        assert_null(p.vms_d);
        assert_int_equal(registry_paths_set(NULL, "x"), -EINVAL);
        registry_paths_done(&p);

        p.vms_d = (char *) 1; /* untouched on failure */
        assert_int_equal(registry_paths_init(&p, "relative"), -EINVAL);
        assert_ptr_equal(p.vms_d, (char *) 1);
        assert_int_equal(registry_paths_init(NULL, NULL), -EINVAL);
}

static void test_api(void **state) {
        RegistryPaths p = {};
        Registry *r = (Registry *) 1;

        assert_int_equal(registry_load(NULL, NULL, NULL, &r), -EINVAL);
        assert_ptr_equal(r, (Registry *) 1);
        assert_int_equal(registry_load(&p, NULL, NULL, NULL), -EINVAL);
        /* every source skipped: an empty registry */
        assert_int_equal(registry_load(&p, NULL, NULL, &r), 0);
        assert_int_equal(registry_size(r), 0);
        assert_null(registry_find(r, "x"));
        assert_null(registry_find(r, NULL));
        r = registry_free(r);
        assert_null(r);
        assert_null(registry_free(NULL));
        assert_int_equal(registry_size(NULL), 0);
        assert_null(registry_get(NULL, 0));
        assert_null(registry_find(NULL, "x"));

        assert_string_equal(registry_source_to_string(REGISTRY_SOURCE_VMS_D), "vms.d");
        assert_string_equal(registry_source_to_string(REGISTRY_SOURCE_LIBVIRT), "libvirt");
        assert_string_equal(registry_source_to_string(REGISTRY_SOURCE_PROXMOX), "proxmox");
        assert_null(registry_source_to_string(_REGISTRY_SOURCE_MAX));
        assert_null(registry_source_to_string((RegistrySource) -1));

        assert_true(registry_vm_name_is_valid("vm-101"));
        assert_true(registry_vm_name_is_valid("My VM (old)"));
        assert_true(registry_vm_name_is_valid("..."));
        assert_false(registry_vm_name_is_valid(NULL));
        assert_false(registry_vm_name_is_valid(""));
        assert_false(registry_vm_name_is_valid("."));
        assert_false(registry_vm_name_is_valid(".."));
        assert_false(registry_vm_name_is_valid("a/b"));
        assert_false(registry_vm_name_is_valid("a\tb"));
        assert_false(registry_vm_name_is_valid("a\x7f"));

        char long_name[300];
        memset(long_name, 'a', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        assert_false(registry_vm_name_is_valid(long_name));
        long_name[255] = '\0';
        assert_true(registry_vm_name_is_valid(long_name));
}

/* Loading without a callback works and gives the same VMs. */
static void test_no_callback(void **state) {
        RegistryPaths p;
        Registry *r = NULL;

        assert_int_equal(registry_paths_init(&p, BAD), 0);
        assert_int_equal(registry_load(&p, NULL, NULL, &r), 0);
        assert_int_equal(registry_size(r), 5);
        registry_free(r);
        registry_paths_done(&p);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_host_all), cmocka_unit_test(test_bad_all),
                cmocka_unit_test(test_overlay),  cmocka_unit_test(test_paths),
                cmocka_unit_test(test_api),      cmocka_unit_test(test_no_callback),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
