/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The registry itself: paths, reading the configuration directories, and merging what the
 * parsers (registry-vms-d.c, registry-libvirt.c, registry-pve.c) return.
 */

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "registry-internal.h"

struct Registry {
        RegistryVm **vms; /* sorted by name, version order */
        size_t n_vms;
};

static const char *const source_names[_REGISTRY_SOURCE_MAX] = {
        [REGISTRY_SOURCE_VMS_D] = "vms.d",
        [REGISTRY_SOURCE_LIBVIRT] = "libvirt",
        [REGISTRY_SOURCE_PROXMOX] = "proxmox",
};

const char *registry_source_to_string(RegistrySource s) {
        if ((unsigned) s >= _REGISTRY_SOURCE_MAX)
                return NULL;
        return source_names[s];
}

/* ---- diagnostics ---- */

void registry_report(
        const RegistryReporter *rep,
        int level,
        int error,
        const char *file,
        unsigned line,
        const char *fmt,
        ...) {
        _cleanup_free_ char *message = NULL, *text = NULL;
        va_list ap;
        int n;

        if (!rep || !rep->on_error)
                return;
        va_start(ap, fmt);
        n = vasprintf(&message, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if (file && line > 0)
                n = asprintf(&text, "%s:%u: %s", file, line, message);
        else if (file)
                n = asprintf(&text, "%s: %s", file, message);
        else
                n = asprintf(&text, "%s", message);
        if (n < 0)
                return;
        rep->on_error(
                &(const RegistryDiag){
                        .level = level,
                        .error = error,
                        .file = file,
                        .line = line,
                        .message = message,
                        .text = text,
                },
                rep->userdata);
}

/* ---- small helpers ---- */

int registry_strdup_replace(char **field, const char *value) {
        char *copy = NULL;

        if (value) {
                copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
        }
        free(*field);
        *field = copy;
        return 0;
}

char *registry_memdup_str(const char *s, size_t n) {
        char *p;

        if (n == SIZE_MAX)
                return NULL;
        p = malloc(n + 1);
        if (!p)
                return NULL;
        memcpy(p, s, n);
        p[n] = '\0';
        return p;
}

bool registry_path_is_absolute(const char *s) {
        return s && s[0] == '/';
}

bool registry_vm_name_is_valid(const char *s) {
        size_t n;

        if (!s)
                return false;
        n = strlen(s);
        if (n == 0 || n > 255 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
                return false;
        for (const char *p = s; *p; p++)
                if (*p == '/' || (unsigned char) *p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

/* ---- VMs ---- */

RegistryVm *registry_vm_new(const char *name, RegistrySource source, const char *source_file) {
        _cleanup_(registry_vm_freep) RegistryVm *vm = NULL;

        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return NULL;
        vm->source = source;
        vm->auto_compact = -1;
        vm->name = strdup(name);
        vm->source_file = strdup(source_file);
        if (!vm->name || !vm->source_file)
                return NULL;
        return TAKE_PTR(vm);
}

static void disk_done(RegistryDisk *d) {
        free(d->path);
        free(d->format);
        free(d->drive);
        free(d->storage);
        free(d->storage_type);
}

RegistryVm *registry_vm_free(RegistryVm *vm) {
        if (!vm)
                return NULL;
        for (size_t i = 0; i < vm->n_disks; i++)
                disk_done(&vm->disks[i]);
        free(vm->disks);
        free(vm->name);
        free(vm->source_file);
        free(vm->overrides_file);
        free(vm->channel);
        free(vm);
        return NULL;
}

static int strdup_opt(const char *s, char **ret) {
        if (!s) {
                *ret = NULL;
                return 0;
        }
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

int registry_vm_add_disk(
        RegistryVm *vm,
        const char *path,
        const char *format,
        const char *drive,
        const char *storage,
        const char *storage_type,
        bool block) {
        RegistryDisk d = { .block = block };
        RegistryDisk *disks;

        if (!vm || !path)
                return -EINVAL;
        if (vm->n_disks >= REGISTRY_MAX_DISKS)
                return -E2BIG;
        if (strdup_opt(path, &d.path) < 0 || strdup_opt(format ?: "qcow2", &d.format) < 0 ||
            strdup_opt(drive, &d.drive) < 0 || strdup_opt(storage, &d.storage) < 0 ||
            strdup_opt(storage_type, &d.storage_type) < 0) {
                disk_done(&d);
                return -ENOMEM;
        }
        disks = reallocarray(vm->disks, vm->n_disks + 1, sizeof(*disks));
        if (!disks) {
                disk_done(&d);
                return -ENOMEM;
        }
        disks[vm->n_disks++] = d;
        vm->disks = disks;
        return 0;
}

bool registry_vm_has_disk(const RegistryVm *vm, const char *path) {
        for (size_t i = 0; i < vm->n_disks; i++)
                if (strcmp(vm->disks[i].path, path) == 0)
                        return true;
        return false;
}

/* ---- paths ---- */

static int path_join(const char *root, const char *path, char **ret) {
        size_t n;

        /* root "/" or "" adds nothing; a trailing '/' on root is not doubled */
        if (!root)
                root = "";
        n = strlen(root);
        while (n > 0 && root[n - 1] == '/')
                n--;
        if (asprintf(ret, "%.*s%s", (int) n, root, path) < 0)
                return -ENOMEM;
        return 0;
}

int registry_paths_init(RegistryPaths *ret, const char *root) {
        static const struct {
                size_t offset;
                const char *path;
        } defaults[] = {
                { offsetof(RegistryPaths, vms_d), "/etc/reclaim/vms.d" },
                { offsetof(RegistryPaths, libvirt_qemu), "/etc/libvirt/qemu" },
                { offsetof(RegistryPaths, pve_qemu_server), "/etc/pve/qemu-server" },
                { offsetof(RegistryPaths, pve_storage_cfg), "/etc/pve/storage.cfg" },
        };
        RegistryPaths p = {};

        if (!ret)
                return -EINVAL;
        if (root && (root[0] == '\0' || strcmp(root, "/") == 0))
                root = NULL;
        if (root && !registry_path_is_absolute(root))
                return -EINVAL;
        if (strdup_opt(root, &p.root) < 0)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(defaults); i++)
                if (path_join(
                            root,
                            defaults[i].path,
                            (char **) ((uint8_t *) &p + defaults[i].offset)) < 0) {
                        registry_paths_done(&p);
                        return -ENOMEM;
                }
        *ret = p;
        return 0;
}

int registry_paths_set(char **field, const char *value) {
        if (!field)
                return -EINVAL;
        return registry_strdup_replace(field, value);
}

void registry_paths_done(RegistryPaths *p) {
        if (!p)
                return;
        p->root = mfree(p->root);
        p->vms_d = mfree(p->vms_d);
        p->libvirt_qemu = mfree(p->libvirt_qemu);
        p->pve_qemu_server = mfree(p->pve_qemu_server);
        p->pve_storage_cfg = mfree(p->pve_storage_cfg);
}

/* ---- reading files ---- */

/*
 * Reads the regular file name (relative to dir_fd, or absolute) into a NUL-terminated buffer
 * of at most REGISTRY_MAX_FILE_SIZE bytes. Returns 0, -EBADFD (not a regular file), -EFBIG,
 * or another -errno.
 */
static int read_file_at(int dir_fd, const char *name, char **ret_data, size_t *ret_size) {
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t size = 0, cap = 0;
        struct stat st;

        /* O_NONBLOCK: a FIFO dropped into a config directory must not hang the loader */
        fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if ((uint64_t) st.st_size > REGISTRY_MAX_FILE_SIZE)
                return -EFBIG;
        for (;;) {
                ssize_t n;

                if (size + 1 >= cap) {
                        size_t ncap = cap ? cap * 2 : MAX((size_t) st.st_size + 2, (size_t) 4096);
                        char *p;

                        if (ncap > REGISTRY_MAX_FILE_SIZE + 2)
                                ncap = REGISTRY_MAX_FILE_SIZE + 2;
                        if (ncap <= cap)
                                return -EFBIG;
                        p = realloc(buf, ncap);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                        cap = ncap;
                }
                n = read(fd, buf + size, cap - size - 1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        break;
                size += (size_t) n;
                if (size > REGISTRY_MAX_FILE_SIZE)
                        return -EFBIG;
        }
        buf[size] = '\0';
        *ret_data = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

static const char *read_error_string(int r) {
        if (r == -EBADFD)
                return "not a regular file";
        if (r == -EFBIG)
                return "file too large";
        return strerror(-r);
}

typedef struct NameList {
        char **names;
        size_t n;
} NameList;

static void name_list_done(NameList *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->names[i]);
        free(l->names);
        *l = (NameList){};
}

static int cmp_strings(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

/*
 * Lists the entries of dir whose name ends in suffix (hidden ones excluded), sorted. A missing
 * directory gives an empty list (and a debug note); an unreadable one is reported.
 * Returns 0 (*ret_fd: the open directory, or -1 when there is none), or -ENOMEM.
 */
static int list_dir(
        const RegistryReporter *rep,
        const char *dir,
        const char *suffix,
        int *ret_fd,
        NameList *ret) {
        _cleanup_(name_list_done) NameList l = {};
        DIR *d;
        struct dirent *de;
        size_t slen = strlen(suffix);
        int fd;

        d = opendir(dir);
        if (!d) {
                int r = negative_errno();
                registry_report(
                        rep,
                        r == -ENOENT ? LOG_DEBUG : LOG_ERR,
                        r,
                        dir,
                        0,
                        "cannot open directory: %s",
                        strerror(-r));
                *ret_fd = -1;
                *ret = (NameList){};
                return 0;
        }
        while ((errno = 0, de = readdir(d))) {
                size_t n = strlen(de->d_name);
                char **names;

                if (de->d_name[0] == '.' || n <= slen || strcmp(de->d_name + n - slen, suffix) != 0)
                        continue;
                names = reallocarray(l.names, l.n + 1, sizeof(char *));
                if (!names) {
                        (void) closedir(d);
                        return -ENOMEM;
                }
                l.names = names;
                l.names[l.n] = strdup(de->d_name);
                if (!l.names[l.n]) {
                        (void) closedir(d);
                        return -ENOMEM;
                }
                l.n++;
        }
        if (errno != 0)
                registry_report(
                        rep, LOG_ERR, -errno, dir, 0, "cannot read directory: %s", strerror(errno));
        if (l.n > 0)
                qsort(l.names, l.n, sizeof(char *), cmp_strings);
        fd = fcntl(dirfd(d), F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
                int r = negative_errno();
                (void) closedir(d);
                registry_report(rep, LOG_ERR, r, dir, 0, "cannot open directory: %s", strerror(-r));
                *ret_fd = -1;
                *ret = (NameList){};
                return 0;
        }
        (void) closedir(d);
        *ret_fd = fd;
        *ret = l;
        l = (NameList){};
        return 0;
}

/* A growing array of VMs, each with the order it was found in (first wins on duplicates). */
typedef struct VmList {
        RegistryVm **vms;
        size_t n;
} VmList;

static void vm_list_done(VmList *l) {
        for (size_t i = 0; i < l->n; i++)
                registry_vm_free(l->vms[i]);
        free(l->vms);
        *l = (VmList){};
}

/* Appends vm (takes ownership, also on failure). */
static int vm_list_push(VmList *l, RegistryVm *vm) {
        RegistryVm **vms = reallocarray(l->vms, l->n + 1, sizeof(*vms));

        if (!vms) {
                registry_vm_free(vm);
                return -ENOMEM;
        }
        vms[l->n++] = vm;
        l->vms = vms;
        return 0;
}

typedef int (*ParseFn)(
        const RegistryReporter *rep,
        const char *path,
        const char *name,
        const char *data,
        size_t size,
        const void *extra,
        RegistryVm **ret_vm);

static int parse_vms_d_file(
        const RegistryReporter *rep,
        const char *path,
        const char *name,
        const char *data,
        size_t size,
        const void *extra,
        RegistryVm **ret_vm) {
        return registry_parse_vms_d(rep, path, data, size, ret_vm);
}

static int parse_libvirt_file(
        const RegistryReporter *rep,
        const char *path,
        const char *name,
        const char *data,
        size_t size,
        const void *extra,
        RegistryVm **ret_vm) {
        return registry_parse_libvirt(rep, path, data, size, ret_vm);
}

static int parse_pve_file(
        const RegistryReporter *rep,
        const char *path,
        const char *name,
        const char *data,
        size_t size,
        const void *extra,
        RegistryVm **ret_vm) {
        _cleanup_free_ char *vmid = strndup(name, strlen(name) - strlen(".conf"));

        if (!vmid)
                return -ENOMEM;
        return registry_parse_pve(rep, path, vmid, data, size, extra, ret_vm);
}

/* Whether a qemu-server entry is a VM config: "VMID.conf", VMID all digits. */
static bool pve_name_is_vmid_conf(const char *name) {
        size_t n = strspn(name, "0123456789");
        return n > 0 && n <= 9 && strcmp(name + n, ".conf") == 0;
}

/* Reads and parses every file of names (in dir_fd, under dir), appending the VMs to out. */
static int load_files(
        const RegistryReporter *rep,
        const char *dir,
        int dir_fd,
        const NameList *names,
        ParseFn parse,
        const void *extra,
        VmList *out) {
        for (size_t i = 0; i < names->n; i++) {
                _cleanup_free_ char *path = NULL, *data = NULL;
                RegistryVm *vm = NULL;
                size_t size;
                int r;

                if (asprintf(&path, "%s/%s", dir, names->names[i]) < 0)
                        return -ENOMEM;
                r = read_file_at(dir_fd, names->names[i], &data, &size);
                if (r == -ENOMEM)
                        return r;
                if (r < 0) {
                        registry_report(
                                rep,
                                r == -EBADFD ? LOG_DEBUG : LOG_ERR,
                                r,
                                path,
                                0,
                                "cannot read: %s; skipped",
                                read_error_string(r));
                        continue;
                }
                r = parse(rep, path, names->names[i], data, size, extra, &vm);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        continue;
                r = vm_list_push(out, vm);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int load_dir(
        const RegistryReporter *rep,
        const char *dir,
        const char *suffix,
        ParseFn parse,
        VmList *out) {
        _cleanup_(name_list_done) NameList names = {};
        _cleanup_close_ int fd = -1;
        int r;

        if (!dir)
                return 0;
        r = list_dir(rep, dir, suffix, &fd, &names);
        if (r < 0 || fd < 0)
                return r;
        return load_files(rep, dir, fd, &names, parse, NULL, out);
}

static int load_pve(const RegistryReporter *rep, const RegistryPaths *paths, VmList *out) {
        _cleanup_(registry_pve_storages_freep) RegistryPveStorages *storages = NULL;
        _cleanup_(name_list_done) NameList all = {}, names = {};
        _cleanup_close_ int fd = -1;
        int r;

        if (!paths->pve_qemu_server)
                return 0;
        r = list_dir(rep, paths->pve_qemu_server, ".conf", &fd, &all);
        if (r < 0 || fd < 0)
                return r;
        /* keep the VMID.conf files only (not the containers' lxc/ nor stray files) */
        for (size_t i = 0; i < all.n; i++) {
                if (!pve_name_is_vmid_conf(all.names[i])) {
                        registry_report(
                                rep,
                                LOG_DEBUG,
                                0,
                                paths->pve_qemu_server,
                                0,
                                "%s: not VMID.conf; ignored",
                                all.names[i]);
                        continue;
                }
                char **n = reallocarray(names.names, names.n + 1, sizeof(char *));
                if (!n)
                        return -ENOMEM;
                names.names = n;
                names.names[names.n++] = TAKE_PTR(all.names[i]);
        }
        if (names.n == 0)
                return 0;

        /* storage.cfg only matters on a host that has VMs */
        if (paths->pve_storage_cfg) {
                _cleanup_free_ char *data = NULL;
                size_t size;

                r = read_file_at(AT_FDCWD, paths->pve_storage_cfg, &data, &size);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        registry_report(
                                rep,
                                LOG_ERR,
                                r,
                                paths->pve_storage_cfg,
                                0,
                                "cannot read: %s; volumes on named storages cannot be resolved",
                                read_error_string(r));
                else {
                        r = registry_parse_pve_storages(
                                rep, paths->pve_storage_cfg, data, size, &storages);
                        if (r < 0)
                                return r;
                }
        }
        return load_files(rep, paths->pve_qemu_server, fd, &names, parse_pve_file, storages, out);
}

/* ---- merging ---- */

/* Prefixes root to every path found inside the configuration. */
static int apply_root(const char *root, RegistryVm *vm) {
        char *p;

        if (!root)
                return 0;
        for (size_t i = 0; i < vm->n_disks; i++) {
                if (path_join(root, vm->disks[i].path, &p) < 0)
                        return -ENOMEM;
                free(vm->disks[i].path);
                vm->disks[i].path = p;
        }
        if (vm->channel) {
                if (path_join(root, vm->channel, &p) < 0)
                        return -ENOMEM;
                free(vm->channel);
                vm->channel = p;
        }
        return 0;
}

static int cmp_vm_names(const void *a, const void *b) {
        const RegistryVm *x = *(RegistryVm *const *) a, *y = *(RegistryVm *const *) b;
        return strverscmp(x->name, y->name);
}

static ssize_t vm_list_find(const VmList *l, const char *name) {
        for (size_t i = 0; i < l->n; i++)
                if (l->vms[i] && strcmp(l->vms[i]->name, name) == 0)
                        return (ssize_t) i;
        return -1;
}

/*
 * Moves the VMs of src into dst; a name dst holds already is reported with level and
 * dropped (the first definition wins).
 */
static int merge_unique(const RegistryReporter *rep, int level, VmList *src, VmList *dst) {
        for (size_t i = 0; i < src->n; i++) {
                RegistryVm *vm = TAKE_PTR(src->vms[i]);
                ssize_t j = vm_list_find(dst, vm->name);

                if (j >= 0) {
                        registry_report(
                                rep,
                                level,
                                -EEXIST,
                                vm->source_file,
                                0,
                                "VM '%s' is already defined in %s; this definition is ignored",
                                vm->name,
                                dst->vms[j]->source_file);
                        registry_vm_free(vm);
                        continue;
                }
                if (vm_list_push(dst, vm) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* Applies a vms.d file without disks to the discovered VM of the same name. */
static int apply_overlay(RegistryVm *target, const RegistryVm *overlay) {
        if (registry_strdup_replace(&target->overrides_file, overlay->source_file) < 0)
                return -ENOMEM;
        if (overlay->channel && registry_strdup_replace(&target->channel, overlay->channel) < 0)
                return -ENOMEM;
        if (overlay->auto_compact >= 0)
                target->auto_compact = overlay->auto_compact;
        if (overlay->min_gain.kind != REGISTRY_MIN_GAIN_UNSET)
                target->min_gain = overlay->min_gain;
        return 0;
}

/* Merges the vms.d VMs (local, each name once) into the discovered ones. */
static int merge_local(const RegistryReporter *rep, VmList *local, VmList *found) {
        for (size_t i = 0; i < local->n; i++) {
                _cleanup_(registry_vm_freep) RegistryVm *vm = TAKE_PTR(local->vms[i]);
                ssize_t j = vm_list_find(found, vm->name);

                if (vm->n_disks == 0) {
                        if (j < 0) {
                                registry_report(
                                        rep,
                                        LOG_ERR,
                                        -ENOENT,
                                        vm->source_file,
                                        0,
                                        "VM '%s' has no disk, and no libvirt or Proxmox VM has "
                                        "that name; skipped",
                                        vm->name);
                                continue;
                        }
                        if (apply_overlay(found->vms[j], vm) < 0)
                                return -ENOMEM;
                        continue;
                }
                if (j >= 0) {
                        registry_report(
                                rep,
                                LOG_WARNING,
                                -EEXIST,
                                vm->source_file,
                                0,
                                "VM '%s' overrides the %s VM defined in %s",
                                vm->name,
                                registry_source_to_string(found->vms[j]->source),
                                found->vms[j]->source_file);
                        registry_vm_free(found->vms[j]);
                        found->vms[j] = TAKE_PTR(vm);
                        continue;
                }
                if (vm_list_push(found, TAKE_PTR(vm)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

int registry_load(
        const RegistryPaths *paths, RegistryErrorFn on_error, void *userdata, Registry **ret) {
        const RegistryReporter rep = { .on_error = on_error, .userdata = userdata };
        _cleanup_(vm_list_done) VmList local_raw = {}, local = {}, libvirt = {}, pve = {},
                                       found = {};
        _cleanup_(registry_freep) Registry *reg = NULL;
        int r;

        if (!paths || !ret)
                return -EINVAL;

        r = load_dir(&rep, paths->vms_d, ".conf", parse_vms_d_file, &local_raw);
        if (r < 0)
                return r;
        r = load_dir(&rep, paths->libvirt_qemu, ".xml", parse_libvirt_file, &libvirt);
        if (r < 0)
                return r;
        r = load_pve(&rep, paths, &pve);
        if (r < 0)
                return r;

        VmList *all[] = { &local_raw, &libvirt, &pve };
        for (size_t i = 0; i < ELEMENTSOF(all); i++)
                for (size_t j = 0; j < all[i]->n; j++)
                        if (apply_root(paths->root, all[i]->vms[j]) < 0)
                                return -ENOMEM;

        /* vms.d: one file per name (the first); discovered: libvirt before Proxmox */
        r = merge_unique(&rep, LOG_ERR, &local_raw, &local);
        if (r < 0)
                return r;
        r = merge_unique(&rep, LOG_WARNING, &libvirt, &found);
        if (r < 0)
                return r;
        r = merge_unique(&rep, LOG_WARNING, &pve, &found);
        if (r < 0)
                return r;
        r = merge_local(&rep, &local, &found);
        if (r < 0)
                return r;

        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return -ENOMEM;
        if (found.n > 0)
                qsort(found.vms, found.n, sizeof(RegistryVm *), cmp_vm_names);
        reg->vms = TAKE_PTR(found.vms);
        reg->n_vms = found.n;
        found.n = 0;
        *ret = TAKE_PTR(reg);
        return 0;
}

Registry *registry_free(Registry *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n_vms; i++)
                registry_vm_free(r->vms[i]);
        free(r->vms);
        free(r);
        return NULL;
}

size_t registry_size(const Registry *r) {
        return r ? r->n_vms : 0;
}

const RegistryVm *registry_get(const Registry *r, size_t i) {
        if (!r || i >= r->n_vms)
                return NULL;
        return r->vms[i];
}

const RegistryVm *registry_find(const Registry *r, const char *name) {
        if (!r || !name)
                return NULL;
        /* linear: a host has hundreds of VMs at most, and strcmp is the only exact test */
        for (size_t i = 0; i < r->n_vms; i++)
                if (strcmp(r->vms[i]->name, name) == 0)
                        return r->vms[i];
        return NULL;
}
