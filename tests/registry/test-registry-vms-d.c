/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for host/registry/registry-vms-d.c: the vms.d files of the fixture trees (good
 * ones; every error, named FILE:LINE, skipping only its own VM), then inih corner cases in
 * memory (comments, CRLF, BOM, continuation lines, values, limits).
 */

#include "registry-test.h"

#define HOST FIXTURE("host")
#define BAD FIXTURE("bad")

static void test_host_vms_d(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(HOST, LOAD_VMS_D, &d);
        const RegistryVm *vm;

        assert_int_equal(registry_size(r), 2);

        vm = want_vm(r, "vm-300");
        assert_int_equal(vm->source, REGISTRY_SOURCE_VMS_D);
        assert_string_equal(vm->source_file, HOST "/etc/reclaim/vms.d/vm-300.conf");
        assert_null(vm->overrides_file);
        assert_int_equal(vm->n_disks, 2);
        want_disk(vm, 0, HOST, "/srv/vms/vm-300/system.qcow2", NULL, NULL, NULL, false);
        want_disk(vm, 1, HOST, "/srv/vms/vm-300/data.qcow2", NULL, NULL, NULL, false);
        assert_string_equal(vm->channel, HOST "/run/reclaim/vm-300.sock");
        assert_int_equal(vm->auto_compact, 1);
        assert_int_equal(vm->min_gain.kind, REGISTRY_MIN_GAIN_BYTES);
        assert_int_equal(vm->min_gain.value, UINT64_C(1) << 30);

        /* name = overrides the file name */
        vm = want_vm(r, "vm-102");
        assert_string_equal(vm->source_file, HOST "/etc/reclaim/vms.d/legacy.conf");
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, HOST, "/srv/legacy/vm-102.qcow2", NULL, NULL, NULL, false);
        assert_null(vm->channel);
        assert_int_equal(vm->auto_compact, -1);
        assert_int_equal(vm->min_gain.kind, REGISTRY_MIN_GAIN_UNSET);
        assert_null(registry_find(r, "legacy"));

        /* policy only, and nothing discovered to apply it to (libvirt not loaded) */
        expect_diag(
                &d,
                LOG_ERR,
                "%s: VM 'web01' has no disk, and no libvirt or Proxmox VM has that name; skipped",
                HOST "/etc/reclaim/vms.d/web01.conf");
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

static void test_bad_vms_d(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(BAD, LOAD_VMS_D, &d);
        const RegistryVm *vm;
        const char *dir = BAD "/etc/reclaim/vms.d";

        /* the good files still load */
        assert_int_equal(registry_size(r), 2);
        vm = want_vm(r, "good");
        want_disk(vm, 0, BAD, "/srv/good.qcow2", NULL, NULL, NULL, false);
        assert_string_equal(vm->channel, BAD "/run/reclaim/good.sock");
        vm = want_vm(r, "twin");
        assert_string_equal(vm->source_file, BAD "/etc/reclaim/vms.d/dup-a.conf");
        want_disk(vm, 0, BAD, "/srv/twin-a.qcow2", NULL, NULL, NULL, false);

        expect_diag(&d, LOG_ERR, "%s/bad-key.conf:4: unknown key 'dsik'", dir);
        expect_diag(&d, LOG_ERR, "%s/bad-key.conf: VM 'bad-key' skipped (1 error)", dir);
        expect_diag(&d, LOG_ERR, "%s/bad-section.conf:4: unknown section '[options]'", dir);
        expect_diag(&d, LOG_ERR, "%s/bad-section.conf: VM 'bad-section' skipped (1 error)", dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/bad-value.conf:3: invalid value 'sometimes' for 'auto_compact' (expected yes "
                "or no)",
                dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/bad-value.conf:4: invalid value '200%%' for 'min_gain' (expected a size such "
                "as 1G, or a percentage 0-100%%)",
                dir);
        expect_diag(&d, LOG_ERR, "%s/bad-value.conf: VM 'bad-value' skipped (2 errors)", dir);
        expect_diag(&d, LOG_ERR, "%s/dup-key.conf:3: duplicate key 'name'", dir);
        expect_diag(&d, LOG_ERR, "%s/dup-key.conf:5: disk '/srv/f.qcow2' listed twice", dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/dup-key.conf:6: channel path must be absolute: 'relative.sock'",
                dir);
        expect_diag(&d, LOG_ERR, "%s/dup-key.conf: VM 'one' skipped (3 errors)", dir);
        expect_diag(&d, LOG_ERR, "%s/empty.conf: no [vm] section", dir);
        expect_diag(&d, LOG_ERR, "%s/empty.conf: VM 'empty' skipped (1 error)", dir);
        expect_diag(
                &d, LOG_ERR, "%s/long-line.conf:2: line too long (at most 198 characters)", dir);
        expect_diag(&d, LOG_ERR, "%s/long-line.conf: VM 'long-line' skipped (1 error)", dir);
        expect_diag(&d, LOG_ERR, "%s/outside.conf:1: key 'disk' outside the [vm] section", dir);
        expect_diag(&d, LOG_ERR, "%s/outside.conf: VM 'outside' skipped (1 error)", dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/relative-disk.conf:2: disk path must be absolute: 'images/e.qcow2'",
                dir);
        expect_diag(
                &d, LOG_ERR, "%s/relative-disk.conf: VM 'relative-disk' skipped (1 error)", dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/syntax.conf:2: syntax error (expected '[vm]' or 'key = value')",
                dir);
        expect_diag(&d, LOG_ERR, "%s/syntax.conf: VM 'syntax' skipped (1 error)", dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/dup-b.conf: VM 'twin' is already defined in %s/dup-a.conf; this definition is "
                "ignored",
                dir,
                dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/orphan.conf: VM 'orphan' has no disk, and no libvirt or Proxmox VM has that "
                "name; skipped",
                dir);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

/* A missing directory is no error: no VMs, a debug note. */
static void test_missing_dir(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(FIXTURE("does-not-exist"), LOAD_ALL, &d);

        assert_int_equal(registry_size(r), 0);
        assert_null(registry_get(r, 0));
        expect_no_other_diags(&d, LOG_WARNING);
        assert_int_equal(d.n, 3); /* one note per directory */
        test_diags_done(&d);
}

typedef struct MemCase {
        const char *name;
        const char *text;
        /* NULL: parses; else the first error, "LINE: message" */
        const char *error;
} MemCase;

static const MemCase mem_cases[] = {
        { "comments", "; top\n# hash\n[vm] ; trailing\ndisk = /a.qcow2 ; inline\n", NULL },
        { "crlf", "[vm]\r\ndisk = /a.qcow2\r\nauto_compact = Yes\r\n", NULL },
        { "bom", "\xef\xbb\xbf[vm]\ndisk = /a.qcow2\n", NULL },
        { "no final newline", "[vm]\ndisk = /a.qcow2", NULL },
        { "colon separator", "[vm]\ndisk: /a.qcow2\n", NULL },
        { "indented keys", "[vm]\n  disk = /a.qcow2\n\tchannel = /run/x.sock\n", NULL },
        { "percent 0", "[vm]\ndisk = /a.qcow2\nmin_gain = 0%\n", NULL },
        { "percent 100", "[vm]\ndisk = /a.qcow2\nmin_gain = 100%\n", NULL },
        { "size suffix", "[vm]\ndisk = /a.qcow2\nmin_gain = 512MiB\n", NULL },
        { "bool words", "[vm]\ndisk = /a.qcow2\nauto_compact = off\n", NULL },
        /* a continuation line is an error, not a second value of the key above */
        { "continuation",
          "[vm]\ndisk = /a.qcow2\n   /b.qcow2\n",
          "3: syntax error (expected '[vm]' or 'key = value')" },
        { "two vm sections", "[vm]\ndisk = /a.qcow2\n[vm]\n", "3: duplicate section '[vm]'" },
        { "section case", "[VM]\ndisk = /a.qcow2\n", "1: unknown section '[VM]'" },
        { "unclosed section",
          "[vm\ndisk = /a.qcow2\n",
          "1: syntax error (expected '[vm]' or 'key = value')" },
        { "key case", "[vm]\nDisk = /a.qcow2\n", "2: unknown key 'Disk'" },
        { "empty disk", "[vm]\ndisk =\n", "2: disk path must be absolute: ''" },
        { "percent 101",
          "[vm]\ndisk = /a\nmin_gain = 101%\n",
          "3: invalid value '101%' for 'min_gain' (expected a size such as 1G, or a percentage 0-100%)" },
        { "percent junk",
          "[vm]\ndisk = /a\nmin_gain = 1.5%\n",
          "3: invalid value '1.5%' for 'min_gain' (expected a size such as 1G, or a percentage 0-100%)" },
        { "size junk",
          "[vm]\ndisk = /a\nmin_gain = lots\n",
          "3: invalid value 'lots' for 'min_gain' (expected a size such as 1G, or a percentage 0-100%)" },
        { "size overflow",
          "[vm]\ndisk = /a\nmin_gain = 99999999999P\n",
          "3: invalid value '99999999999P' for 'min_gain' (expected a size such as 1G, or a percentage 0-100%)" },
        { "bad name", "[vm]\nname = a/b\ndisk = /a\n", "2: invalid VM name 'a/b'" },
        { "dot name", "[vm]\nname = ..\ndisk = /a\n", "2: invalid VM name '..'" },
        { "duplicate channel",
          "[vm]\nchannel = /a.sock\nchannel = /b.sock\n",
          "3: duplicate key 'channel'" },
        { "duplicate policy",
          "[vm]\nauto_compact = yes\nauto_compact = no\n",
          "3: duplicate key 'auto_compact'" },
        { "long channel",
          "[vm]\nchannel = /run/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.sock\n",
          "2: channel path too long for a UNIX socket (at most 107 bytes)" },
        { "nul byte", "[vm]\ndisk = /a\0b\n", "2: NUL byte in line" },
        { "key before section",
          "name = x\n[vm]\ndisk = /a\n",
          "1: key 'name' outside the [vm] section" },
};

static void test_memory_cases(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(mem_cases); i++) {
                const MemCase *c = &mem_cases[i];
                TestDiags d = {};
                const RegistryReporter rep = { .on_error = test_diags_collect, .userdata = &d };
                RegistryVm *vm = NULL;
                size_t len = strlen(c->text);
                int r;

                /* the NUL case: its text goes on past the NUL */
                if (strcmp(c->name, "nul byte") == 0)
                        len = sizeof("[vm]\ndisk = /a\0b\n") - 1;
                r = registry_parse_vms_d(&rep, "/m/vm-9.conf", c->text, len, &vm);
                if (!c->error) {
                        if (r != 0) {
                                test_diags_dump(&d);
                                fail_msg("case '%s': %d", c->name, r);
                        }
                        assert_non_null(vm);
                        assert_string_equal(vm->name, "vm-9");
                        expect_no_other_diags(&d, LOG_DEBUG);
                        registry_vm_free(vm);
                } else {
                        if (r != -EINVAL) {
                                test_diags_dump(&d);
                                fail_msg("case '%s': %d, want -EINVAL", c->name, r);
                        }
                        assert_null(vm);
                        assert_true(d.n >= 2);
                        expect_diag(&d, LOG_ERR, "/m/vm-9.conf:%s", c->error);
                }
                test_diags_done(&d);
        }
}

static void test_memory_values(void **state) {
        static const char text[] =
                "[vm]\n"
                "name = vm-7\n"
                "disk = /a.qcow2 ; first\n"
                "disk = /b.qcow2\n"
                "channel = /run/reclaim/vm-7.sock\n"
                "auto_compact = FALSE\n"
                "min_gain = 25%\n";
        TestDiags d = {};
        RegistryVm *vm = NULL;

        assert_int_equal(test_parse(registry_parse_vms_d, "/x/other.conf", text, &d, &vm), 0);
        assert_string_equal(vm->name, "vm-7");
        assert_int_equal(vm->source, REGISTRY_SOURCE_VMS_D);
        assert_string_equal(vm->source_file, "/x/other.conf");
        assert_int_equal(vm->n_disks, 2);
        want_disk(vm, 0, NULL, "/a.qcow2", NULL, NULL, NULL, false);
        want_disk(vm, 1, NULL, "/b.qcow2", NULL, NULL, NULL, false);
        assert_string_equal(vm->channel, "/run/reclaim/vm-7.sock");
        assert_int_equal(vm->auto_compact, 0);
        assert_int_equal(vm->min_gain.kind, REGISTRY_MIN_GAIN_PERCENT);
        assert_int_equal(vm->min_gain.value, 25);
        assert_int_equal(d.n, 0);
        registry_vm_free(vm);
        test_diags_done(&d);
}

/* 64 disks are fine, the 65th is an error; errors past 20 are counted, not listed. */
static void test_memory_limits(void **state) {
        char *text = NULL;
        size_t len = 0;
        FILE *f;
        TestDiags d = {};
        RegistryVm *vm = NULL;

        f = open_memstream(&text, &len);
        assert_non_null(f);
        fputs("[vm]\n", f);
        for (int i = 0; i < REGISTRY_MAX_DISKS; i++)
                fprintf(f, "disk = /d%d.qcow2\n", i);
        fclose(f);
        assert_int_equal(test_parse(registry_parse_vms_d, "/m/many.conf", text, &d, &vm), 0);
        assert_int_equal(vm->n_disks, REGISTRY_MAX_DISKS);
        vm = registry_vm_free(vm);
        free(text);

        f = open_memstream(&text, &len);
        assert_non_null(f);
        fputs("[vm]\n", f);
        for (int i = 0; i <= REGISTRY_MAX_DISKS; i++)
                fprintf(f, "disk = /d%d.qcow2\n", i);
        fclose(f);
        assert_int_equal(test_parse(registry_parse_vms_d, "/m/many.conf", text, &d, &vm), -EINVAL);
        expect_diag(
                &d,
                LOG_ERR,
                "/m/many.conf:%d: too many disks (at most 64)",
                REGISTRY_MAX_DISKS + 2);
        expect_diag(&d, LOG_ERR, "/m/many.conf: VM 'many' skipped (1 error)");
        expect_no_other_diags(&d, LOG_DEBUG);
        free(text);
        test_diags_done(&d);

        f = open_memstream(&text, &len);
        assert_non_null(f);
        fputs("[vm]\n", f);
        for (int i = 0; i < 50; i++)
                fprintf(f, "bogus%d = 1\n", i);
        fclose(f);
        assert_int_equal(test_parse(registry_parse_vms_d, "/m/noisy.conf", text, &d, &vm), -EINVAL);
        assert_int_equal(d.n, REGISTRY_MAX_DIAGS_PER_FILE + 2);
        expect_diag(&d, LOG_ERR, "/m/noisy.conf: 30 more errors not shown");
        expect_diag(&d, LOG_ERR, "/m/noisy.conf: VM 'noisy' skipped (50 errors)");
        free(text);
        test_diags_done(&d);
}

/* Bad arguments are programming errors reported as -EINVAL, not crashes. */
static void test_memory_arguments(void **state) {
        RegistryVm *vm = NULL;

        assert_int_equal(registry_parse_vms_d(NULL, NULL, "", 0, &vm), -EINVAL);
        assert_int_equal(registry_parse_vms_d(NULL, "/x.conf", NULL, 3, &vm), -EINVAL);
        assert_int_equal(registry_parse_vms_d(NULL, "/x.conf", "", 0, NULL), -EINVAL);
        /* no reporter: errors are still errors */
        assert_int_equal(registry_parse_vms_d(NULL, "/x.conf", "junk\n", 5, &vm), -EINVAL);
        assert_null(vm);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_host_vms_d),       cmocka_unit_test(test_bad_vms_d),
                cmocka_unit_test(test_missing_dir),      cmocka_unit_test(test_memory_cases),
                cmocka_unit_test(test_memory_values),    cmocka_unit_test(test_memory_limits),
                cmocka_unit_test(test_memory_arguments),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
