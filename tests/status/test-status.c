/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for libstatus: the [thresholds] keys (table-driven), reclaimd.conf loading
 * (FILE:LINE errors, state_dir, reclaimd's own keys skipped), and a report over a registry
 * whose disks are missing (error rows, state files read, Prometheus label escaping). Real
 * images are covered by tests/status/test-status.sh.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "macro.h"
#include "status.h"

static char tmpdir[] = "/tmp/test-status.XXXXXX";

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        assert_non_null(f);
        assert_int_equal(fputs(text, f) >= 0, 1);
        assert_int_equal(fclose(f), 0);
}

static void test_thresholds_set(void **state) {
        static const struct {
                const char *key, *value;
                int r;
        } cases[] = {
                { "over_allocation_ratio", "3", 0 },
                { "over_allocation_ratio", "2.5", 0 },
                { "over_allocation_ratio", "0", 0 },
                { "over_allocation_ratio", "-1", -EINVAL },
                { "over_allocation_ratio", "nan", -EINVAL },
                { "over_allocation_ratio", "inf", -EINVAL },
                { "over_allocation_ratio", "3x", -EINVAL },
                { "over_allocation_ratio", "", -EINVAL },
                { "min_free_percent", "10", 0 },
                { "min_free_percent", "100", 0 },
                { "min_free_percent", "101", -EINVAL },
                { "min_free_percent", "10%", -EINVAL },
                { "reclaimable_bytes", "100G", 0 },
                { "reclaimable_bytes", "lots", -EINVAL },
                { "reclaimable_percent", "25", 0 },
                { "reclaimable_percent", "-5", -EINVAL },
                { "no_such_key", "1", -ENOENT },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                StatusThresholds t = { .min_free_percent = 7 }, before = t;
                char error[128] = "";
                int r = status_thresholds_set(
                        &t, cases[i].key, cases[i].value, error, sizeof(error));

                if (r != cases[i].r)
                        fail_msg("case %zu: %s=%s: %d", i, cases[i].key, cases[i].value, r);
                if (r < 0) {
                        assert_true(strstr(error, cases[i].key) != NULL);
                        assert_memory_equal(&t, &before, sizeof(t));
                }
        }
}

static void test_config_load(void **state) {
        static const struct {
                const char *text;
                int r;
                const char *where; /* in the error message */
        } cases[] = {
                { "", 0, NULL },
                { "[daemon]\nmax_concurrent = 2\nstate_dir = /srv/state\n", 0, NULL },
                { "[thresholds]\nover_allocation_ratio = 3\n", 0, NULL },
                { "[daemon]\nstate_dir = rel\n", -EINVAL, ":2: state_dir" },
                { "[thresholds]\nmin_free_percent = 10\nover_allocation_ratio = x\n",
                  -EINVAL,
                  ":3: over_allocation_ratio" },
                { "[thresholds]\nbogus = 1\n", -EINVAL, ":2: unknown key 'bogus'" },
                { "[nope]\na = 1\n", -EINVAL, ":2: unknown section [nope]" },
                { "a = 1\n", -EINVAL, ":1: key 'a' outside a section" },
        };
        char path[256];

        snprintf(path, sizeof(path), "%s/reclaimd.conf", tmpdir);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                StatusConfig c = {};
                _cleanup_free_ char *error = NULL;
                int r;

                write_file(path, cases[i].text);
                r = status_config_load(&c, path, false, &error);
                if (r != cases[i].r)
                        fail_msg("case %zu: %d (%s)", i, r, error ?: "");
                if (cases[i].where) {
                        assert_non_null(error);
                        if (!strstr(error, cases[i].where) || strncmp(error, path, strlen(path)))
                                fail_msg("case %zu: message '%s'", i, error);
                }
                status_config_done(&c);
        }

        StatusConfig c = {};
        _cleanup_free_ char *error = NULL;
        write_file(
                path,
                "[daemon]\nstate_dir = /srv/state\n[thresholds]\nover_allocation_ratio = 2.5\n"
                "min_free_percent = 10\nreclaimable_bytes = 1G\nreclaimable_percent = 30\n");
        assert_int_equal(status_config_load(&c, path, false, &error), 0);
        assert_string_equal(c.state_dir, "/srv/state");
        assert_true(c.thresholds.over_allocation_ratio == 2.5);
        assert_int_equal(c.thresholds.min_free_percent, 10);
        assert_int_equal(c.thresholds.reclaimable_bytes, UINT64_C(1) << 30);
        assert_int_equal(c.thresholds.reclaimable_percent, 30);
        status_config_done(&c);
        status_config_done(&c); /* idempotent */

        snprintf(path, sizeof(path), "%s/missing.conf", tmpdir);
        assert_int_equal(status_config_load(&c, path, true, &error), 0);
        assert_int_equal(status_config_load(&c, path, false, &error), -ENOENT);
        assert_non_null(strstr(error, "missing.conf"));
}

/* A registry of two VMs whose disks do not exist, and a state file for one of them. */
static void test_collect_missing(void **state) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(status_report_freep) StatusReport *r = NULL;
        _cleanup_free_ char *out = NULL;
        RegistryPaths paths = {};
        char dir[256], p[512], statedir[256];
        size_t n = 0;
        FILE *f;

        snprintf(dir, sizeof(dir), "%s/vms.d", tmpdir);
        snprintf(statedir, sizeof(statedir), "%s/state", tmpdir);
        (void) mkdir(dir, 0755);
        (void) mkdir(statedir, 0755);
        snprintf(p, sizeof(p), "%s/state/vms", tmpdir);
        (void) mkdir(p, 0755);
        snprintf(p, sizeof(p), "%s/a.conf", dir);
        write_file(p, "[vm]\ndisk = /nonexistent/a.qcow2\n");
        snprintf(p, sizeof(p), "%s/b\"q.conf", dir);
        write_file(p, "[vm]\ndisk = /nonexistent/b.qcow2\ndisk = /nonexistent/x/b.qcow2\n");
        snprintf(p, sizeof(p), "%s/state/vms/a.json", tmpdir);
        write_file(
                p,
                "{ \"vm\": \"a\", \"last_report\": { \"time\": 1700000000000000, \"bytes\": 5, "
                "\"filesystems\": 1 }, \"disks\": [ { \"image\": \"/nonexistent/a.qcow2\", "
                "\"pending\": true, \"reported_bytes\": 4096, \"report_time\": 1700000000000000, "
                "\"last_compaction_time\": 1600000000000000, \"last_compaction_gain\": 77 } ] }\n");

        assert_int_equal(registry_paths_init(&paths, NULL), 0);
        assert_int_equal(registry_paths_set(&paths.vms_d, dir), 0);
        assert_int_equal(registry_paths_set(&paths.libvirt_qemu, NULL), 0);
        assert_int_equal(registry_paths_set(&paths.pve_qemu_server, NULL), 0);
        assert_int_equal(registry_paths_set(&paths.pve_storage_cfg, NULL), 0);
        assert_int_equal(registry_load(&paths, NULL, NULL, &reg), 0);
        registry_paths_done(&paths);
        assert_int_equal(registry_size(reg), 2);

        assert_int_equal(status_collect(reg, NULL, &r), -EINVAL);
        assert_int_equal(
                status_collect(
                        reg,
                        &(StatusOptions){ .state_dir = statedir,
                                          .thresholds = { .min_free_percent = 10 } },
                        &r),
                0);
        assert_int_equal(r->n_images, 3);
        assert_int_equal(r->n_vms, 2);
        for (size_t i = 0; i < r->n_images; i++) {
                assert_true(r->images[i].error < 0);
                assert_true(r->images[i].warnings & STATUS_WARN_ERROR);
                assert_int_equal(r->images[i].reclaimable_bytes, 0);
        }
        /* same file name twice in one VM: the second series gets its own disk label */
        assert_string_equal(r->images[1].disk, "b.qcow2");
        assert_string_equal(r->images[2].disk, "b.qcow2-2");
        assert_string_equal(r->images[0].vm, "a");
        assert_int_equal(r->images[0].reported_bytes, 4096);
        assert_int_equal(r->images[0].last_compaction_gain, 77);
        assert_int_equal(r->vms[0].last_report_usec, UINT64_C(1700000000000000));
        assert_int_equal(r->vms[0].last_report_bytes, 5);
        assert_true(r->n_warnings >= 3);

        f = open_memstream(&out, &n);
        assert_non_null(f);
        assert_int_equal(status_render_prometheus(r, f), 0);
        assert_int_equal(fclose(f), 0);
        assert_non_null(strstr(out, "# TYPE reclaim_image_read_error gauge\n"));
        assert_non_null(strstr(out, "vm=\"b\\\"q\""));
        assert_non_null(
                strstr(out,
                       "reclaim_vm_last_report_timestamp_seconds{vm=\"a\"} "
                       "1700000000.000000\n"));
        assert_non_null(strstr(out, "reclaim_image_last_compaction_reclaimed_bytes{"));
        /* rows that could not be read carry no size samples */
        assert_null(strstr(out, "reclaim_image_virtual_bytes{"));
        out = mfree(out);

        f = open_memstream(&out, &n);
        assert_non_null(f);
        assert_int_equal(status_render_json(r, f), 0);
        assert_int_equal(fclose(f), 0);
        assert_non_null(strstr(out, "\"last_compaction_gain\":77"));
        out = mfree(out);

        f = open_memstream(&out, &n);
        assert_non_null(f);
        assert_int_equal(status_render_text(r, f), 0);
        assert_int_equal(fclose(f), 0);
        assert_non_null(strstr(out, "warnings."));
}

static int setup(void **state) {
        return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
        char cmd[512];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_thresholds_set),
                cmocka_unit_test(test_config_load),
                cmocka_unit_test(test_collect_missing),
        };

        return cmocka_run_group_tests(tests, setup, teardown);
}
