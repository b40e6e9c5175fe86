/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The VM registry: turns the host's configuration into VMs with disks and guest channels.
 *
 * Three sources, read in this order:
 *   vms.d    /etc/reclaim/vms.d/NAME.conf        plain VMs and per-VM policy (INI, inih)
 *   libvirt  /etc/libvirt/qemu/NAME.xml          domain XML (libxml2, no DTD, no network)
 *   proxmox  /etc/pve/qemu-server/VMID.conf      VM "vm-VMID"; volumes resolved through
 *            /etc/pve/storage.cfg
 *
 * Only configuration is read: no image is opened and no socket is touched. A file that cannot
 * be used is reported through the RegistryErrorFn and skipped; loading never fails because of
 * what a file contains. No globals, no logging (diagnostics go to the callback), no policy.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <syslog.h>

typedef enum RegistrySource {
        REGISTRY_SOURCE_VMS_D,
        REGISTRY_SOURCE_LIBVIRT,
        REGISTRY_SOURCE_PROXMOX,
        _REGISTRY_SOURCE_MAX,
} RegistrySource;

/* "vms.d", "libvirt", "proxmox"; NULL for a value out of range. */
const char *registry_source_to_string(RegistrySource s);

typedef struct RegistryDisk {
        char *path;         /* absolute (the root prefix included, see RegistryPaths.root) */
        char *format;       /* "qcow2": the only format the registry returns */
        char *drive;        /* "scsi0", "vda", ...; NULL for vms.d disks */
        char *storage;      /* Proxmox storage id ("local"); NULL when the source has none */
        char *storage_type; /* that storage's type ("dir", "nfs", "cifs"); NULL likewise */
        bool block;         /* a block device holding a qcow2 image (libvirt type='block') */
} RegistryDisk;

typedef enum RegistryMinGainKind {
        REGISTRY_MIN_GAIN_UNSET,
        REGISTRY_MIN_GAIN_BYTES,   /* value: bytes */
        REGISTRY_MIN_GAIN_PERCENT, /* value: 0-100, of the image's file size */
} RegistryMinGainKind;

typedef struct RegistryMinGain {
        RegistryMinGainKind kind;
        uint64_t value;
} RegistryMinGain;

typedef struct RegistryVm {
        char *name;
        RegistrySource source;
        char *source_file;    /* the file the VM came from (root prefix included) */
        char *overrides_file; /* a vms.d file that set policy/channel on a discovered VM, or NULL */
        RegistryDisk *disks;  /* in the order the source lists them */
        size_t n_disks;
        char *channel;    /* host end of org.reclaim.agent.0 (a UNIX socket QEMU serves), or NULL */
        int auto_compact; /* -1 not set, 0 no, 1 yes (vms.d only) */
        RegistryMinGain min_gain;
} RegistryVm;

typedef struct Registry Registry;

/*
 * Where the sources live. A NULL member skips that source (storage.cfg: Proxmox volumes on
 * named storages cannot be resolved). root, when not NULL or "/", is prefixed to every path
 * found *inside* the configuration (disks, channel sockets), as systemd's --root does, so a
 * copy of a host's /etc and images under one directory reads as that host would.
 */
typedef struct RegistryPaths {
        char *root;
        char *vms_d;           /* default /etc/reclaim/vms.d */
        char *libvirt_qemu;    /* default /etc/libvirt/qemu */
        char *pve_qemu_server; /* default /etc/pve/qemu-server */
        char *pve_storage_cfg; /* default /etc/pve/storage.cfg */
} RegistryPaths;

/*
 * Fills *ret with the default paths, each under root (NULL or "" or "/" means the real root).
 * Returns 0, -EINVAL (ret NULL, root relative) or -ENOMEM; *ret is untouched on failure.
 * The strings are owned by *ret: release them with registry_paths_done().
 */
int registry_paths_init(RegistryPaths *ret, const char *root);

/*
 * Replaces one member with a copy of value (NULL: skip that source). field must point into
 * a RegistryPaths. Returns 0, -EINVAL or -ENOMEM (then the old value stays).
 */
int registry_paths_set(char **field, const char *value);

/* Frees the strings of p and sets them to NULL; p itself is the caller's. Accepts NULL. */
void registry_paths_done(RegistryPaths *p);

/*
 * What the loader reports. level is LOG_ERR when a file or VM was skipped, LOG_WARNING when
 * part of one was ignored or one definition overrode another, LOG_DEBUG for notes (a cdrom
 * or a volume on LVM skipped). error is a -errno (-EINVAL for bad content). file may be NULL;
 * line is 0 when the message is not about one line. text is "FILE:LINE: message" (or
 * "FILE: message", or the message alone). All strings are valid during the call only.
 */
typedef struct RegistryDiag {
        int level;
        int error;
        const char *file;
        unsigned line;
        const char *message;
        const char *text;
} RegistryDiag;

typedef void (*RegistryErrorFn)(const RegistryDiag *diag, void *userdata);

/*
 * Reads every source in paths and merges them:
 *   - names are unique; a vms.d VM with disks replaces a discovered (libvirt or Proxmox) VM of
 *     the same name (LOG_WARNING); a vms.d file without disks only adds its policy and channel
 *     to the discovered VM of that name (LOG_ERR when there is none);
 *   - within one source the first file (by name) wins; libvirt wins over Proxmox.
 * on_error (may be NULL) gets every diagnostic, in order. I/O: reads each config file once
 * (at most REGISTRY_MAX_FILE_SIZE bytes each), opens no image.
 * Returns 0 and a new Registry in *ret (caller frees with registry_free()), -EINVAL for bad
 * arguments or -ENOMEM. A missing directory is not an error (no VMs from that source).
 */
int registry_load(
        const RegistryPaths *paths, RegistryErrorFn on_error, void *userdata, Registry **ret);

#define REGISTRY_MAX_FILE_SIZE (4u << 20)

/* Frees r and everything it owns; accepts NULL; returns NULL. */
Registry *registry_free(Registry *r);

static inline void registry_freep(Registry **r) {
        if (*r)
                *r = registry_free(*r);
}

/* The number of VMs; they are sorted by name in version order (vm-99 before vm-100). */
size_t registry_size(const Registry *r);

/* The i-th VM (borrowed, valid until registry_free()), or NULL when i is out of range. */
const RegistryVm *registry_get(const Registry *r, size_t i);

/* The VM called name (borrowed), or NULL when there is none. O(n) string compares. */
const RegistryVm *registry_find(const Registry *r, const char *name);

#define REGISTRY_FOREACH_VM(vm, r, i) for (size_t i = 0; ((vm) = registry_get((r), i)); i++)

/* Whether s may name a VM: 1-255 bytes, no '/', no control characters, not "." or "..". */
bool registry_vm_name_is_valid(const char *s);
