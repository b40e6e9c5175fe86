/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Shared by the registry's parsers, its tests and its fuzz target. Every parser works on a
 * file already read into memory, so the fuzzer and the tests need no files.
 */

#include "macro.h"
#include "registry.h"

/* The most disks one VM may have (Proxmox allows 4 + 6 + 31 + 16 + 2 = 59). */
#define REGISTRY_MAX_DISKS 64
/* The most diagnostics one file may produce; the rest are summed up in one line. */
#define REGISTRY_MAX_DIAGS_PER_FILE 20
/* sizeof(((struct sockaddr_un) {}).sun_path) - 1 */
#define REGISTRY_MAX_SOCKET_PATH 107

typedef struct RegistryReporter {
        RegistryErrorFn on_error;
        void *userdata;
} RegistryReporter;

/*
 * Reports one diagnostic (see RegistryDiag); file may be NULL, line 0. Formatting failures
 * (out of memory) drop the message. Costs nothing when rep->on_error is NULL.
 */
void registry_report(
        const RegistryReporter *rep,
        int level,
        int error,
        const char *file,
        unsigned line,
        const char *fmt,
        ...) _printf_(6, 7);

/* A new, empty VM (auto_compact -1); NULL on ENOMEM. Copies both strings. */
RegistryVm *registry_vm_new(const char *name, RegistrySource source, const char *source_file);

/* Frees vm and what it owns; accepts NULL; returns NULL. */
RegistryVm *registry_vm_free(RegistryVm *vm);
DEFINE_TRIVIAL_CLEANUP_FUNC(RegistryVm *, registry_vm_free);

/*
 * Appends a disk; copies every string (format NULL means "qcow2"; the others may be NULL).
 * Returns 0, -E2BIG past REGISTRY_MAX_DISKS, or -ENOMEM (vm unchanged).
 */
int registry_vm_add_disk(
        RegistryVm *vm,
        const char *path,
        const char *format,
        const char *drive,
        const char *storage,
        const char *storage_type,
        bool block);

/* Whether vm has a disk at path already. */
bool registry_vm_has_disk(const RegistryVm *vm, const char *path);

/* Replaces *field with a copy of value (NULL clears it). Returns 0 or -ENOMEM. */
int registry_strdup_replace(char **field, const char *value);

/*
 * A NUL-terminated copy of the n bytes at s, which need not be terminated (strndup() may read
 * past them looking for a NUL). NULL on ENOMEM.
 */
char *registry_memdup_str(const char *s, size_t n);

/* Whether s is an absolute path (starts with '/', no empty string). */
bool registry_path_is_absolute(const char *s);

/*
 * vms.d: parses one NAME.conf held in data (size bytes, need not be NUL-terminated). path
 * names the file in messages; NAME (its basename without ".conf") is the default VM name.
 * Returns 0 and a new VM in *ret_vm (caller frees), -EINVAL when the file has errors (each
 * reported at its line; the VM is skipped), or -ENOMEM.
 */
int registry_parse_vms_d(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryVm **ret_vm);

/*
 * libvirt: parses one domain XML. Documents with a DOCTYPE are refused (no DTD, no entities,
 * no network). Returns 0 and a new VM in *ret_vm (caller frees), -EINVAL (reported; skipped)
 * or -ENOMEM.
 */
int registry_parse_libvirt(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryVm **ret_vm);

/* Proxmox storage.cfg, parsed: the storages that matter to us. */
typedef struct RegistryPveStorage {
        char *id;
        char *type;       /* "dir", "nfs", "lvmthin", ... */
        char *path;       /* the "path" property; NULL when not given */
        char *images_dir; /* from "content-dirs images=..."; NULL: "images" */
        unsigned line;    /* where its header is, for messages */
} RegistryPveStorage;

typedef struct RegistryPveStorages {
        char *file; /* storage.cfg's path, for messages */
        RegistryPveStorage *items;
        size_t n_items;
} RegistryPveStorages;

/*
 * Parses storage.cfg. Malformed lines are reported (LOG_WARNING) and skipped, as Proxmox
 * does. Returns 0 and a new list in *ret (caller frees with registry_pve_storages_free()),
 * or -ENOMEM.
 */
int registry_parse_pve_storages(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryPveStorages **ret);

/* Frees s; accepts NULL; returns NULL. */
RegistryPveStorages *registry_pve_storages_free(RegistryPveStorages *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(RegistryPveStorages *, registry_pve_storages_free);

/*
 * Proxmox: parses qemu-server/VMID.conf (the VM is "vm-VMID"). Volumes are resolved through
 * storages (borrowed; NULL when storage.cfg could not be read). Only the current config
 * counts: everything from the first "[section]" on (snapshots, pending changes) is ignored.
 * Returns 0 and a new VM in *ret_vm (caller frees), -EINVAL (vmid not a number; reported)
 * or -ENOMEM.
 */
int registry_parse_pve(
        const RegistryReporter *rep,
        const char *path,
        const char *vmid,
        const char *data,
        size_t size,
        const RegistryPveStorages *storages,
        RegistryVm **ret_vm);
