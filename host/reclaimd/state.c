/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Per-VM state: STATE_DIR/vms/NAME.json. What survives a restart: which disks are pending, the
 * figures of the last guest report, and the last compaction of each disk.
 *
 *   { "vm": "vm-101",
 *     "last_report": { "time": USEC, "bytes": N, "filesystems": N },
 *     "disks": [ { "image": PATH, "pending": true, "reported_bytes": N, "report_time": USEC,
 *                  "last_compaction_time": USEC, "last_compaction_gain": N,
 *                  "failures": N, "refused": "why" }, ... ] }
 *
 * The file is ours, but a crash of the filesystem or an admin's editor can still damage it:
 * a file that does not parse is logged and rewritten from the defaults, never fatal. Disks
 * are matched by path, so a disk removed from the VM's configuration drops out of the state.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>

#include "log.h"
#include "macro.h"
#include "manager.h"

static inline void json_object_putp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

static int state_dir_path(const Vm *vm, char **ret) {
        char *p;

        if (asprintf(&p, "%s/vms", vm->manager->config.state_dir) < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

static int state_file_path(const Vm *vm, char **ret) {
        char *p;

        if (asprintf(&p, "%s/vms/%s.json", vm->manager->config.state_dir, vm->name) < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

static uint64_t json_get_u64(json_object *o, const char *key) {
        json_object *v;
        int64_t i;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return 0;
        i = json_object_get_int64(v);
        return i < 0 ? 0 : (uint64_t) i;
}

static json_object *json_u64(uint64_t v) {
        return json_object_new_int64(v > INT64_MAX ? INT64_MAX : (int64_t) v);
}

/* Applies a parsed state object to vm. Returns 0, 1 when the file's disks are not exactly
 * vm's (it should be rewritten), or -EBADMSG when its shape is wrong. */
static int state_apply(Vm *vm, json_object *root) {
        json_object *disks, *report;
        size_t matched = 0;

        if (!json_object_is_type(root, json_type_object))
                return -EBADMSG;
        if (!json_object_object_get_ex(root, "disks", &disks) ||
            !json_object_is_type(disks, json_type_array))
                return -EBADMSG;
        if (json_object_object_get_ex(root, "last_report", &report) &&
            json_object_is_type(report, json_type_object)) {
                vm->last_report_time = json_get_u64(report, "time");
                vm->last_report_bytes = json_get_u64(report, "bytes");
                uint64_t n = json_get_u64(report, "filesystems");
                vm->last_report_filesystems = n > UINT32_MAX ? UINT32_MAX : (unsigned) n;
        }

        for (size_t i = 0; i < json_object_array_length(disks); i++) {
                json_object *d = json_object_array_get_idx(disks, i), *v;
                const char *image;

                if (!json_object_is_type(d, json_type_object) ||
                    !json_object_object_get_ex(d, "image", &v) ||
                    !json_object_is_type(v, json_type_string))
                        return -EBADMSG;
                image = json_object_get_string(v);
                for (size_t k = 0; k < vm->n_disks; k++) {
                        VmDisk *disk = &vm->disks[k];

                        if (strcmp(disk->path, image) != 0)
                                continue;
                        matched++;
                        disk->pending = json_object_object_get_ex(d, "pending", &v) &&
                                json_object_get_boolean(v);
                        disk->reported_bytes = json_get_u64(d, "reported_bytes");
                        disk->report_time = json_get_u64(d, "report_time");
                        disk->last_compact_time = json_get_u64(d, "last_compaction_time");
                        disk->last_compact_gain = json_get_u64(d, "last_compaction_gain");
                        uint64_t f = json_get_u64(d, "failures");
                        disk->failures = f > JOB_MAX_FAILURES ? JOB_MAX_FAILURES : (unsigned) f;
                        if (json_object_object_get_ex(d, "refused", &v) &&
                            json_object_is_type(v, json_type_string)) {
                                free(disk->refused);
                                disk->refused = strdup(json_object_get_string(v));
                                if (!disk->refused)
                                        return -ENOMEM;
                        }
                }
        }
        return matched == vm->n_disks && matched == json_object_array_length(disks) ? 0 : 1;
}

int vm_state_load(Vm *vm) {
        _cleanup_free_ char *path = NULL;
        _cleanup_(json_object_putp) json_object *root = NULL;
        int r;

        r = state_file_path(vm, &path);
        if (r < 0)
                return r;
        if (access(path, F_OK) < 0)
                return 1; /* first run for this VM */

        root = json_object_from_file(path);
        r = root ? state_apply(vm, root) : -EBADMSG;
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                log_warning(
                        "%s: damaged state file (%s), rebuilding it.",
                        path,
                        root                             ? "unexpected content" :
                                json_util_get_last_err() ?:
                                                           "parse error");
                for (size_t i = 0; i < vm->n_disks; i++) {
                        VmDisk *d = &vm->disks[i];
                        d->pending = false;
                        d->reported_bytes = d->report_time = 0;
                        d->last_compact_time = d->last_compact_gain = 0;
                        d->failures = 0;
                        d->refused = mfree(d->refused);
                }
                vm->last_report_time = vm->last_report_bytes = 0;
                vm->last_report_filesystems = 0;
                (void) vm_state_save(vm);
                return 0;
        }
        return r;
}

static json_object *state_build(const Vm *vm) {
        json_object *root = json_object_new_object(), *report = json_object_new_object(),
                    *disks = json_object_new_array();

        if (!root || !report || !disks) {
                (void) json_object_put(root);
                (void) json_object_put(report);
                (void) json_object_put(disks);
                return NULL;
        }
        json_object_object_add(root, "vm", json_object_new_string(vm->name));
        json_object_object_add(report, "time", json_u64(vm->last_report_time));
        json_object_object_add(report, "bytes", json_u64(vm->last_report_bytes));
        json_object_object_add(report, "filesystems", json_u64(vm->last_report_filesystems));
        json_object_object_add(root, "last_report", report);
        for (size_t i = 0; i < vm->n_disks; i++) {
                const VmDisk *d = &vm->disks[i];
                json_object *o = json_object_new_object();

                if (!o)
                        continue;
                json_object_object_add(o, "image", json_object_new_string(d->path));
                json_object_object_add(o, "pending", json_object_new_boolean(d->pending));
                json_object_object_add(o, "reported_bytes", json_u64(d->reported_bytes));
                json_object_object_add(o, "report_time", json_u64(d->report_time));
                json_object_object_add(o, "last_compaction_time", json_u64(d->last_compact_time));
                json_object_object_add(o, "last_compaction_gain", json_u64(d->last_compact_gain));
                json_object_object_add(o, "failures", json_u64(d->failures));
                if (d->refused)
                        json_object_object_add(o, "refused", json_object_new_string(d->refused));
                (void) json_object_array_add(disks, o);
        }
        json_object_object_add(root, "disks", disks);
        return root;
}

static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int vm_state_save(Vm *vm) {
        _cleanup_free_ char *dir = NULL, *path = NULL, *tmp = NULL;
        _cleanup_(json_object_putp) json_object *root = NULL;
        _cleanup_close_ int fd = -1, dfd = -1;
        const char *text;
        int r;

        if (state_dir_path(vm, &dir) < 0 || state_file_path(vm, &path) < 0 ||
            asprintf(&tmp, "%s.tmp", path) < 0)
                return log_error_errno(-ENOMEM, "Out of memory.");
        root = state_build(vm);
        if (!root)
                return log_error_errno(-ENOMEM, "Out of memory.");
        text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY);

        if (mkdir(vm->manager->config.state_dir, 0755) < 0 && errno != EEXIST)
                return log_error_errno(
                        errno, "Failed to create %s: %m", vm->manager->config.state_dir);
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return log_error_errno(errno, "Failed to create %s: %m", dir);

        /* Durability order: data in the temp file, fsync, rename over the old file, then fsync
         * the directory so the rename itself survives a crash. A crash at any point leaves the
         * old file or the new one, never a mix. */
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return log_error_errno(errno, "Failed to create %s: %m", tmp);
        r = write_all(fd, text, strlen(text));
        if (r >= 0)
                r = write_all(fd, "\n", 1);
        if (r >= 0 && fsync(fd) < 0)
                r = -errno;
        if (r < 0) {
                (void) unlink(tmp);
                return log_error_errno(r, "Failed to write %s: %m", tmp);
        }
        if (rename(tmp, path) < 0) {
                r = -errno;
                (void) unlink(tmp);
                return log_error_errno(r, "Failed to rename %s to %s: %m", tmp, path);
        }
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                return log_error_errno(errno, "Failed to sync %s: %m", dir);
        return 0;
}
