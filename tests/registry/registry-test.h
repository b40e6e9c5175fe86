/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Helpers for the registry's unit tests: a diagnostics collector that tests match exactly
 * ("FILE:LINE: message"), and loaders for the fixture trees under tests/registry/fixtures.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "registry-internal.h"
#include "registry.h"

#ifndef REGISTRY_FIXTURE_DIR
#        error "REGISTRY_FIXTURE_DIR must be defined by the build"
#endif
#define FIXTURE(name) REGISTRY_FIXTURE_DIR "/" name

typedef struct TestDiag {
        int level;
        int error;
        char *text;
        bool matched;
} TestDiag;

typedef struct TestDiags {
        TestDiag *v;
        size_t n;
} TestDiags;

static inline void test_diags_collect(const RegistryDiag *d, void *userdata) {
        TestDiags *t = userdata;

        t->v = realloc(t->v, (t->n + 1) * sizeof(*t->v));
        assert_non_null(t->v);
        t->v[t->n] = (TestDiag){ .level = d->level, .error = d->error, .text = strdup(d->text) };
        assert_non_null(t->v[t->n].text);
        /* the pieces agree with the whole */
        assert_non_null(d->message);
        assert_non_null(strstr(d->text, d->message));
        if (d->file)
                assert_memory_equal(d->text, d->file, strlen(d->file));
        t->n++;
}

static inline void test_diags_done(TestDiags *t) {
        for (size_t i = 0; i < t->n; i++)
                free(t->v[i].text);
        free(t->v);
        *t = (TestDiags){};
}

static inline void test_diags_dump(const TestDiags *t) {
        for (size_t i = 0; i < t->n; i++)
                print_message(
                        "#   [%d%s] %s\n",
                        t->v[i].level,
                        t->v[i].matched ? " ok" : "",
                        t->v[i].text);
}

static inline void expect_diag(TestDiags *t, int level, const char *fmt, ...) _printf_(3, 4);

/* There is an unmatched diagnostic at level whose text is exactly the formatted string. */
static inline void expect_diag(TestDiags *t, int level, const char *fmt, ...) {
        char want[4096];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(want, sizeof(want), fmt, ap);
        va_end(ap);
        for (size_t i = 0; i < t->n; i++)
                if (!t->v[i].matched && t->v[i].level == level && strcmp(t->v[i].text, want) == 0) {
                        t->v[i].matched = true;
                        return;
                }
        test_diags_dump(t);
        fail_msg("no diagnostic [%d] '%s'", level, want);
}

/* Every diagnostic at level max_level or more severe has been expected. */
static inline void expect_no_other_diags(const TestDiags *t, int max_level) {
        for (size_t i = 0; i < t->n; i++)
                if (!t->v[i].matched && t->v[i].level <= max_level) {
                        test_diags_dump(t);
                        fail_msg("unexpected diagnostic [%d] '%s'", t->v[i].level, t->v[i].text);
                }
}

enum {
        LOAD_VMS_D = 1 << 0,
        LOAD_LIBVIRT = 1 << 1,
        LOAD_PVE = 1 << 2,
        LOAD_ALL = LOAD_VMS_D | LOAD_LIBVIRT | LOAD_PVE,
};

/* Loads the sources in mask from the fixture tree under root (absolute). */
static inline Registry *test_load(const char *root, unsigned mask, TestDiags *diags) {
        RegistryPaths p;
        Registry *r = NULL;

        assert_int_equal(registry_paths_init(&p, root), 0);
        if (!(mask & LOAD_VMS_D))
                assert_int_equal(registry_paths_set(&p.vms_d, NULL), 0);
        if (!(mask & LOAD_LIBVIRT))
                assert_int_equal(registry_paths_set(&p.libvirt_qemu, NULL), 0);
        if (!(mask & LOAD_PVE))
                assert_int_equal(registry_paths_set(&p.pve_qemu_server, NULL), 0);
        assert_int_equal(registry_load(&p, test_diags_collect, diags, &r), 0);
        registry_paths_done(&p);
        assert_non_null(r);
        return r;
}

/* The VM called name, which must exist. */
static inline const RegistryVm *want_vm(const Registry *r, const char *name) {
        const RegistryVm *vm = registry_find(r, name);
        if (!vm)
                fail_msg("no VM '%s'", name);
        return vm;
}

/* Disk i of vm is at root + path, with drive/storage (NULL: none). */
static inline void want_disk(
        const RegistryVm *vm,
        size_t i,
        const char *root,
        const char *path,
        const char *drive,
        const char *storage,
        const char *storage_type,
        bool block) {
        char full[4096];

        assert_true(i < vm->n_disks);
        snprintf(full, sizeof(full), "%s%s", root ?: "", path);
        assert_string_equal(vm->disks[i].path, full);
        assert_string_equal(vm->disks[i].format, "qcow2");
        if (drive)
                assert_string_equal(vm->disks[i].drive, drive);
        else
                assert_null(vm->disks[i].drive);
        if (storage)
                assert_string_equal(vm->disks[i].storage, storage);
        else
                assert_null(vm->disks[i].storage);
        if (storage_type)
                assert_string_equal(vm->disks[i].storage_type, storage_type);
        else
                assert_null(vm->disks[i].storage_type);
        assert_int_equal(vm->disks[i].block, block);
}

/* Parses text with one of the registry's in-memory parsers, collecting diagnostics. */
typedef int (*TestParseFn)(
        const RegistryReporter *, const char *, const char *, size_t, RegistryVm **);

static inline int
test_parse(TestParseFn fn, const char *path, const char *text, TestDiags *diags, RegistryVm **ret) {
        const RegistryReporter rep = { .on_error = test_diags_collect, .userdata = diags };
        return fn(&rep, path, text, strlen(text), ret);
}
