/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for reclaimd's pure parts: reclaimd.conf parsing (manager-config.c) and the
 * per-VM state files (state.c: round trip, damaged files rebuilt, unknown disks dropped).
 * Files live in a temporary directory. Table-driven.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "log.h"
#include "macro.h"
#include "manager.h"

static char tmpdir[] = "/tmp/test-reclaimd.XXXXXX";

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

static void test_config_defaults(void **state) {
        ManagerConfig c;

        assert_int_equal(manager_config_init(&c, "/var/lib/reclaim", "/usr/bin/reclaimctl"), 0);
        assert_int_equal(c.max_concurrent, 1);
        assert_int_equal(c.retry_interval_sec, 30);
        assert_int_equal(c.min_gain.kind, REGISTRY_MIN_GAIN_UNSET);
        assert_false(c.guest_allow_zero);
        manager_config_done(&c);
        manager_config_done(&c);
}

static void test_config_lines(void **state) {
        static const struct {
                const char *text;
                int r;
        } cases[] = {
                { "[daemon]\n", 0 },
                { "[daemon]\nmax_concurrent = 4\n", 0 },
                { "[daemon]\nmax_concurrent = 0\n", -EINVAL },
                { "[daemon]\nmax_concurrent = 65\n", -EINVAL },
                { "[daemon]\njob_timeout = 60 ; a comment\n", 0 },
                { "[daemon]\njob_timeout = -1\n", -EINVAL },
                { "[daemon]\nmin_gain = 1G\n", 0 },
                { "[daemon]\nmin_gain = 5%\n", 0 },
                { "[daemon]\nmin_gain = 101%\n", -EINVAL },
                { "[daemon]\nmin_gain = lots\n", -EINVAL },
                { "[daemon]\nstate_dir = relative\n", -EINVAL },
                { "[daemon]\nsocket_dir = relative\n", -EINVAL },
                { "[daemon]\nsocket_dir = /run/x\n", 0 },
                { "[daemon]\nguest_allow_zero = maybe\n", -EINVAL },
                { "[daemon]\nunknown = 1\n", -EINVAL },
                { "[other]\nmax_concurrent = 1\n", -EINVAL },
                { "max_concurrent = 1\n", -EINVAL },
                { "[daemon\n", -EINVAL },
                { "[daemon]\nwindow = 01:00-05:30\n", 0 },
                { "[daemon]\nwindow = 22:00-06:00\n", 0 },
                { "[daemon]\nwindow = 00:00-24:00\n", 0 },
                { "[daemon]\nwindow = any\n", 0 },
                { "[daemon]\nwindow = 01:00-01:00\n", -EINVAL },
                { "[daemon]\nwindow = 1:00-05:00\n", -EINVAL },
                { "[daemon]\nwindow = 01:60-05:00\n", -EINVAL },
                { "[daemon]\nwindow = 24:01-05:00\n", -EINVAL },
                { "[daemon]\nwindow = 01:00\n", -EINVAL },
                { "[daemon]\nwindow = 01:00-05:00x\n", -EINVAL },
                { "[daemon]\nwindow = -\n", -EINVAL },
                { "[thresholds]\nover_allocation_ratio = 2.5\nmin_free_percent = 10\n", 0 },
                { "[daemon]\nmax_concurrent = 1\n[thresholds]\nreclaimable_bytes = 100G\n", 0 },
                { "[thresholds]\nreclaimable_percent = 30\n", 0 },
                { "[thresholds]\nover_allocation_ratio = lots\n", -EINVAL },
                { "[thresholds]\nmin_free_percent = 101\n", -EINVAL },
                { "[thresholds]\nmax_concurrent = 1\n", -EINVAL },
        };
        char path[256];

        snprintf(path, sizeof(path), "%s/reclaimd.conf", tmpdir);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                ManagerConfig c;

                assert_int_equal(manager_config_init(&c, "/s", "/r"), 0);
                write_file(path, cases[i].text);
                if (manager_config_load(&c, path, false) != cases[i].r)
                        fail_msg("case %zu: %s", i, cases[i].text);
                manager_config_done(&c);
        }
}

static void test_config_values(void **state) {
        ManagerConfig c;
        char path[256];

        snprintf(path, sizeof(path), "%s/reclaimd.conf", tmpdir);
        write_file(
                path,
                "[daemon]\nstate_dir = /x\nmax_concurrent = 3\nmin_gain = 5%\n"
                "guest_max_rate = 100M\nguest_allow_zero = yes\nretry_interval = 2\n");
        assert_int_equal(manager_config_init(&c, "/s", "/r"), 0);
        assert_int_equal(manager_config_load(&c, path, false), 0);
        assert_string_equal(c.state_dir, "/x");
        assert_string_equal(c.reclaimctl, "/r");
        assert_int_equal(c.max_concurrent, 3);
        assert_int_equal(c.min_gain.kind, REGISTRY_MIN_GAIN_PERCENT);
        assert_int_equal(c.min_gain.value, 5);
        assert_int_equal(c.guest_max_rate, 100u << 20);
        assert_true(c.guest_allow_zero);
        assert_int_equal(c.retry_interval_sec, 2);
        assert_string_equal(c.socket_dir, DEFAULT_SOCKET_DIR);
        assert_int_equal(c.window_start, -1); /* no window: any time */
        assert_int_equal(c.window_end, -1);
        manager_config_done(&c);

        write_file(path, "[daemon]\nwindow = 22:30-06:00\n");
        assert_int_equal(manager_config_init(&c, "/s", "/r"), 0);
        assert_int_equal(manager_config_load(&c, path, false), 0);
        assert_int_equal(c.window_start, 22 * 60 + 30);
        assert_int_equal(c.window_end, 6 * 60);
        manager_config_done(&c);

        write_file(
                path,
                "[thresholds]\nover_allocation_ratio = 2.5\nmin_free_percent = 10\n"
                "reclaimable_bytes = 1G\nreclaimable_percent = 30\n");
        assert_int_equal(manager_config_init(&c, "/s", "/r"), 0);
        assert_int_equal(manager_config_load(&c, path, false), 0);
        assert_true(c.thresholds.over_allocation_ratio == 2.5);
        assert_int_equal(c.thresholds.min_free_percent, 10);
        assert_int_equal(c.thresholds.reclaimable_bytes, 1u << 30);
        assert_int_equal(c.thresholds.reclaimable_percent, 30);
        manager_config_done(&c);

        /* missing file: fine only when allowed */
        snprintf(path, sizeof(path), "%s/none.conf", tmpdir);
        assert_int_equal(manager_config_init(&c, "/s", "/r"), 0);
        assert_int_equal(manager_config_load(&c, path, true), 0);
        assert_int_equal(manager_config_load(&c, path, false), -ENOENT);
        manager_config_done(&c);
}

static char disk_a[] = "/img/a.qcow2", disk_b[] = "/img/b.qcow2", vm_name[] = "vm-1";

/* A VM with two disks in a Manager whose state dir is tmpdir. */
static void vm_setup(Manager *m, Vm *vm, VmDisk disks[2]) {
        *m = (Manager){ 0 };
        m->config.state_dir = tmpdir;
        disks[0] = (VmDisk){ .path = disk_a };
        disks[1] = (VmDisk){ .path = disk_b };
        *vm = (Vm){ .manager = m, .name = vm_name, .disks = disks, .n_disks = 2 };
}

static void test_state_round_trip(void **state) {
        Manager m;
        Vm vm;
        VmDisk disks[2];

        vm_setup(&m, &vm, disks);
        disks[0].pending = true;
        disks[0].reported_bytes = 123;
        disks[1].last_compact_gain = 456;
        disks[1].refused = strdup("encrypted");
        vm.last_report_bytes = 789;
        assert_int_equal(vm_state_save(&vm), 0);
        free(disks[1].refused);

        vm_setup(&m, &vm, disks);
        assert_int_equal(vm_state_load(&vm), 0);
        assert_true(disks[0].pending);
        assert_int_equal(disks[0].reported_bytes, 123);
        assert_false(disks[1].pending);
        assert_int_equal(disks[1].last_compact_gain, 456);
        assert_string_equal(disks[1].refused, "encrypted");
        assert_int_equal(vm.last_report_bytes, 789);
        free(disks[1].refused);

        /* one disk fewer in the configuration: the file wants rewriting (1), figures kept */
        vm_setup(&m, &vm, disks);
        vm.n_disks = 1;
        assert_int_equal(vm_state_load(&vm), 1);
        assert_true(disks[0].pending);
        /* no file at all: 1 as well */
        static char none[] = "vm-none";
        vm_setup(&m, &vm, disks);
        vm.name = none;
        assert_int_equal(vm_state_load(&vm), 1);
        assert_false(disks[0].pending);
}

static void test_state_damaged(void **state) {
        static const char *const damaged[] = {
                "", "{", "[]", "{\"disks\": 5}", "{\"disks\": [ 5 ]}", "\xff\xfe garbage",
        };
        char path[256];

        snprintf(path, sizeof(path), "%s/vms/vm-1.json", tmpdir);
        for (size_t i = 0; i < ELEMENTSOF(damaged); i++) {
                Manager m;
                Vm vm;
                VmDisk disks[2];

                vm_setup(&m, &vm, disks);
                assert_int_equal(vm_state_save(&vm), 0); /* creates vms/ */
                write_file(path, damaged[i]);
                disks[0].pending = true; /* must be reset by the rebuild */
                assert_int_equal(vm_state_load(&vm), 0);
                assert_false(disks[0].pending);
                /* rebuilt: loads cleanly now */
                disks[0].pending = true;
                assert_int_equal(vm_state_load(&vm), 0);
                assert_false(disks[0].pending);
        }
}

static int setup(void **state) {
        log_set_max_level(LOG_EMERG); /* the expected errors would clutter the TAP output */
        return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
        char cmd[512];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_config_defaults), cmocka_unit_test(test_config_lines),
                cmocka_unit_test(test_config_values),   cmocka_unit_test(test_state_round_trip),
                cmocka_unit_test(test_state_damaged),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
