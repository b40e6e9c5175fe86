/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Collecting the status report (status.h): per image the engine's metadata walk and reclaimd's
 * state file, per storage statvfs and the sums.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "io.h"
#include "macro.h"
#include "qcow2.h"
#include "status.h"

static uint64_t now_realtime_usec(void);

/* ---- mountinfo ---- */

typedef struct Mount {
        unsigned major, minor;
        char *target;
        char *source;
        char *fstype;
} Mount;

typedef struct MountTable {
        Mount *mounts;
        size_t n;
} MountTable;

static void mount_table_done(MountTable *t) {
        for (size_t i = 0; i < t->n; i++) {
                free(t->mounts[i].target);
                free(t->mounts[i].source);
                free(t->mounts[i].fstype);
        }
        t->mounts = mfree(t->mounts);
        t->n = 0;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo (octal). */
static char *unescape_octal(const char *s) {
        char *out = malloc(strlen(s) + 1), *o = out;

        if (!out)
                return NULL;
        while (*s) {
                if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
                    s[3] >= '0' && s[3] <= '7') {
                        *o++ = (char) ((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
                        s += 4;
                } else
                        *o++ = *s++;
        }
        *o = '\0';
        return out;
}

/*
 * "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
 * (proc(5)). A line that does not parse is skipped. Returns 0 or -ENOMEM; a file that cannot
 * be opened gives an empty table (storages are then named by device number).
 */
static int mount_table_load(MountTable *t, const char *path) {
        _cleanup_free_ char *line = NULL;
        size_t cap = 0;
        FILE *f;
        int r = 0;

        f = fopen(path, "re");
        if (!f)
                return 0;
        while (getline(&line, &cap, f) > 0) {
                char target[4096], source[4096], fstype[256];
                unsigned major, minor;
                const char *dash;
                Mount *q;

                line[strcspn(line, "\n")] = '\0';
                if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &major, &minor, target) != 3)
                        continue;
                dash = strstr(line, " - ");
                if (!dash || sscanf(dash + 3, "%255s %4095s", fstype, source) != 2)
                        continue;
                q = realloc(t->mounts, (t->n + 1) * sizeof(*q));
                if (!q) {
                        r = -ENOMEM;
                        break;
                }
                t->mounts = q;
                q = &t->mounts[t->n];
                *q = (Mount){ .major = major, .minor = minor };
                q->target = unescape_octal(target);
                q->source = unescape_octal(source);
                q->fstype = strdup(fstype);
                t->n++;
                if (!q->target || !q->source || !q->fstype) {
                        r = -ENOMEM;
                        break;
                }
        }
        (void) fclose(f);
        return r;
}

static bool path_has_prefix(const char *path, const char *prefix) {
        size_t n = strlen(prefix);

        if (strcmp(prefix, "/") == 0)
                return true;
        return strncmp(path, prefix, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/*
 * The mount of dev that holds path: of the mounts of that device (a filesystem may be mounted
 * at several places, or in parts: bind mounts, btrfs subvolumes), the longest target that is
 * a prefix of path, else the first. NULL when the device is not mounted (borrowed).
 */
static const Mount *mount_find(const MountTable *t, dev_t dev, const char *path) {
        const Mount *best = NULL, *first = NULL;

        for (size_t i = 0; i < t->n; i++) {
                const Mount *m = &t->mounts[i];

                if (m->major != major(dev) || m->minor != minor(dev))
                        continue;
                if (!first)
                        first = m;
                if (path && path_has_prefix(path, m->target) &&
                    (!best || strlen(m->target) > strlen(best->target)))
                        best = m;
        }
        return best ?: first;
}

/* ---- state files ---- */

static inline void json_object_putp(json_object **o) {
        if (*o)
                (void) json_object_put(*o);
}

static json_object *json_new_u64(uint64_t v) {
        return json_object_new_int64((int64_t) MIN(v, (uint64_t) INT64_MAX));
}

static uint64_t json_u64(json_object *o, const char *key) {
        json_object *v;
        int64_t i;

        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_int))
                return 0;
        i = json_object_get_int64(v);
        return i < 0 ? 0 : (uint64_t) i;
}

/*
 * STATE_DIR/vms/NAME.json (host/reclaimd/state.c), or NULL when there is none or it does not
 * parse (reclaimd rebuilds a damaged one; status just shows nothing known). Caller puts it.
 */
static json_object *state_load(const char *state_dir, const char *vm) {
        _cleanup_free_ char *path = NULL;
        json_object *o;

        if (!state_dir || asprintf(&path, "%s/vms/%s.json", state_dir, vm) < 0)
                return NULL;
        if (access(path, F_OK) < 0)
                return NULL;
        o = json_object_from_file(path);
        if (o && !json_object_is_type(o, json_type_object)) {
                (void) json_object_put(o);
                return NULL;
        }
        return o;
}

/* The state's entry for the disk at path (borrowed from state), or NULL. */
static json_object *state_disk(json_object *state, const char *path) {
        json_object *disks, *d, *v;

        if (!state || !json_object_object_get_ex(state, "disks", &disks) ||
            !json_object_is_type(disks, json_type_array))
                return NULL;
        for (size_t i = 0; i < json_object_array_length(disks); i++) {
                d = json_object_array_get_idx(disks, i);
                if (json_object_is_type(d, json_type_object) &&
                    json_object_object_get_ex(d, "image", &v) &&
                    json_object_is_type(v, json_type_string) &&
                    strcmp(json_object_get_string(v), path) == 0)
                        return d;
        }
        return NULL;
}

/* ---- one image ---- */

static int set_error(StatusImage *im, int r, const char *what, const char *detail) {
        im->error = r;
        free(im->error_message);
        if (asprintf(&im->error_message, "%s: %s", what, detail) < 0) {
                im->error_message = NULL;
                return -ENOMEM;
        }
        return 0;
}

/*
 * Reads one image's metadata into im (read-only, no locks taken). *ret_st gets the file's
 * stat (for grouping) and *ret_have_st whether it could be taken. Returns 0 (problems are
 * recorded in im->error) or -ENOMEM.
 */
/* The cache entry for im (borrowed from cache) when it is still valid, else NULL. */
static json_object *scan_cache_find(json_object *cache, const StatusImage *im) {
        json_object *images, *e, *v;

        if (!cache || !json_object_object_get_ex(cache, "images", &images) ||
            !json_object_is_type(images, json_type_array))
                return NULL;
        for (size_t i = 0; i < json_object_array_length(images); i++) {
                e = json_object_array_get_idx(images, i);
                if (!json_object_is_type(e, json_type_object) ||
                    !json_object_object_get_ex(e, "image", &v) ||
                    !json_object_is_type(v, json_type_string) ||
                    strcmp(json_object_get_string(v), im->path) != 0)
                        continue;
                if (json_u64(e, "inode") == im->inode &&
                    json_u64(e, "file_size") == im->file_size &&
                    json_u64(e, "mtime_nsec") == im->mtime_nsec)
                        return e;
                return NULL;
        }
        return NULL;
}

static int
image_read(StatusImage *im, json_object *cache, bool scan, struct stat *ret_st, bool *ret_have_st) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        _cleanup_(qcow2_closep) Qcow2Image *img = NULL;
        Qcow2Diag diag = { { 0 } };
        Qcow2Info info;
        int r, fd;

        *ret_have_st = false;
        r = io_posix_open(im->path, false, &io);
        if (r < 0) {
                /* still group it: with the file, or the directory it should be in */
                _cleanup_free_ char *dir = strdup(im->path);
                char *slash = dir ? strrchr(dir, '/') : NULL;

                if (slash && slash != dir)
                        *slash = '\0';
                if (stat(im->path, ret_st) >= 0 || (slash && stat(dir, ret_st) >= 0))
                        *ret_have_st = true;
                return set_error(im, r, "cannot open", strerror(-r));
        }
        fd = io_posix_fd(io);
        if (fstat(fd, ret_st) < 0)
                return set_error(im, -errno, "cannot stat", strerror(errno));
        *ret_have_st = true;
        im->block = S_ISBLK(ret_st->st_mode);
        im->inode = (uint64_t) ret_st->st_ino;
        im->mtime_nsec =
                (uint64_t) ret_st->st_mtim.tv_sec * 1000000000 + (uint64_t) ret_st->st_mtim.tv_nsec;
        if (!im->block)
                im->disk_usage_bytes = (uint64_t) ret_st->st_blocks * 512;
        /* probing takes no lock: a QEMU starting now is never disturbed */
        im->in_use = io_posix_probe_qemu_locks(io) > 0;

        r = qcow2_open(io, 0, &img, &diag);
        if (r < 0)
                return set_error(im, r, "not readable as qcow2", diag.message);
        /* no scan: metadata only; live: a running VM's refcounts may lag behind */
        r = qcow2_inspect(img, &(Qcow2InspectOptions){ .live = true }, &info, &diag);
        if (r < 0)
                return set_error(im, r, "metadata walk failed", diag.message);

        im->virtual_size = info.virtual_size;
        im->file_size = info.file_size;
        im->allocated_bytes = info.allocated_bytes;
        if (im->block)
                im->disk_usage_bytes = info.file_size;
        im->metadata_reclaimable_bytes = info.reclaimable_bytes;
        im->compactable = info.compactable;
        im->preallocated = info.preallocated;
        im->stale_refcounts = info.stale_refcounts;
        if (!info.compactable) {
                im->note = strdup(info.refusal);
                if (!im->note)
                        return -ENOMEM;
        }
        if (info.allocated_bytes == 0 && !info.compactable) {
                /* the walk stopped early (corrupt, or changing under us): the file's size is
                 * the best figure for what it holds */
                im->allocated_bytes = info.file_size;
        }

        json_object *e = scan_cache_find(cache, im);
        if (e) {
                im->scanned = true;
                im->scan_time_usec = json_u64(e, "time");
                im->scan_reclaimable_bytes = json_u64(e, "reclaimable_bytes");
        } else if (scan && !im->in_use && info.compactable) {
                /* a running VM's data changes under the scan: only stopped ones are scanned */
                r = qcow2_inspect(img, &(Qcow2InspectOptions){ .scan = true }, &info, &diag);
                if (r >= 0 && info.scanned) {
                        im->scanned = true;
                        im->scan_time_usec = now_realtime_usec();
                        im->scan_reclaimable_bytes = info.reclaimable_bytes;
                }
        }
        return 0;
}

static void image_apply_state(StatusImage *im, json_object *disk) {
        bool pending = false;
        json_object *v;

        if (!disk)
                return;
        im->last_compaction_usec = json_u64(disk, "last_compaction_time");
        im->last_compaction_gain = json_u64(disk, "last_compaction_gain");
        im->report_time_usec = json_u64(disk, "report_time");
        im->report_bytes = json_u64(disk, "reported_bytes");
        if (json_object_object_get_ex(disk, "pending", &v))
                pending = json_object_get_boolean(v);
        /* a report older than the last compaction was already acted on */
        if (pending || im->report_time_usec > im->last_compaction_usec)
                im->reported_bytes = json_u64(disk, "reported_bytes");
}

/*
 * The estimate (docs/monitoring.md "What reclaimable means"): the planner's result over the
 * metadata (free clusters inside the file, leaks, zero-flagged or all-zero-known clusters
 * still holding space, the tail a compaction would cut), plus what the guest reported freeing
 * since the last compaction (clusters that now hold zeros, which only the data scan would
 * see), never more than the file. A valid scan result replaces all of that: it is exact.
 */
static uint64_t image_estimate(const StatusImage *im) {
        uint64_t e;

        if (im->error)
                return 0;
        if (im->scanned) /* the image has not changed since its data was scanned */
                return MIN(im->scan_reclaimable_bytes, im->file_size);
        if (ADD_OVERFLOW(im->metadata_reclaimable_bytes, im->reported_bytes, &e))
                e = UINT64_MAX;
        return MIN(e, im->file_size);
}

/* ---- the report ---- */

typedef struct StorageKey {
        dev_t dev;
        bool block;
} StorageKey;

static uint64_t now_realtime_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void storage_free_fields(StatusStorage *s) {
        free(s->name);
        free(s->source);
        free(s->fstype);
}

StatusReport *status_report_free(StatusReport *r) {
        if (!r)
                return NULL;
        for (size_t i = 0; i < r->n_storages; i++)
                storage_free_fields(&r->storages[i]);
        free(r->storages);
        for (size_t i = 0; i < r->n_images; i++) {
                StatusImage *im = &r->images[i];
                free(im->vm);
                free(im->disk);
                free(im->path);
                free(im->note);
                free(im->error_message);
        }
        free(r->images);
        for (size_t i = 0; i < r->n_vms; i++)
                free(r->vms[i].name);
        free(r->vms);
        free(r);
        return NULL;
}

const char *status_warning_to_string(unsigned bit) {
        switch (bit) {
        case STATUS_WARN_RATIO:
                return "ratio";
        case STATUS_WARN_FREE:
                return "free";
        case STATUS_WARN_RECLAIMABLE:
                return "reclaimable";
        case STATUS_WARN_ERROR:
                return "error";
        default:
                return NULL;
        }
}

/*
 * The storage for an image with stat st (have_st false: unknown, grouped under "-"). Adds it
 * when new. Returns its index or -ENOMEM.
 */
static int storage_get(
        StatusReport *r,
        StorageKey **keys,
        const MountTable *mt,
        const StatusImage *im,
        const struct stat *st,
        bool have_st) {
        StorageKey k = { .dev = 0, .block = false };
        StatusStorage *s;
        const Mount *m = NULL;
        void *q;

        if (have_st) {
                k.block = S_ISBLK(st->st_mode);
                k.dev = k.block ? st->st_rdev : st->st_dev;
        }
        for (size_t i = 0; i < r->n_storages; i++)
                if ((*keys)[i].dev == k.dev && (*keys)[i].block == k.block)
                        return (int) i;

        q = realloc(*keys, (r->n_storages + 1) * sizeof(StorageKey));
        if (!q)
                return -ENOMEM;
        *keys = q;
        q = realloc(r->storages, (r->n_storages + 1) * sizeof(StatusStorage));
        if (!q)
                return -ENOMEM;
        r->storages = q;
        s = &r->storages[r->n_storages];
        *s = (StatusStorage){};
        (*keys)[r->n_storages] = k;
        r->n_storages++;

        if (!have_st) {
                s->name = strdup("-");
                s->source = strdup("-");
                s->fstype = strdup("-");
        } else if (k.block) {
                s->name = strdup(im->path);
                s->source = strdup(im->path);
                s->fstype = strdup("block");
        } else {
                m = mount_find(mt, k.dev, im->path);
                if (m) {
                        s->name = strdup(m->target);
                        s->source = strdup(m->source);
                        s->fstype = strdup(m->fstype);
                } else {
                        if (asprintf(&s->name, "dev:%u:%u", major(k.dev), minor(k.dev)) < 0)
                                s->name = NULL;
                        s->source = strdup("-");
                        s->fstype = strdup("-");
                }
        }
        if (!s->name || !s->source || !s->fstype)
                return -ENOMEM;

        if (have_st && k.block) {
                /* a qcow2 image on a device (an LV): the device is all the room it has */
                s->capacity_bytes = im->file_size;
                s->used_bytes = MIN(im->allocated_bytes, im->file_size);
                s->free_bytes = s->capacity_bytes - s->used_bytes;
        } else if (have_st) {
                struct statvfs v;
                /* the image's own path: statvfs of the mount point could name another mount
                 * stacked on top */
                if (statvfs(im->path, &v) >= 0 || (m && statvfs(m->target, &v) >= 0)) {
                        uint64_t fr = v.f_frsize ?: v.f_bsize;
                        s->capacity_bytes = (uint64_t) v.f_blocks * fr;
                        s->used_bytes = (uint64_t) (v.f_blocks - v.f_bfree) * fr;
                        s->free_bytes = (uint64_t) v.f_bavail * fr;
                }
        }
        return (int) (r->n_storages - 1);
}

static int image_add(
        StatusReport *r,
        size_t *cap,
        const RegistryVm *vm,
        const RegistryDisk *d,
        json_object *state) {
        StatusImage *im;
        const char *base;

        if (r->n_images == *cap) {
                size_t n = *cap ? *cap * 2 : 16;
                void *q = realloc(r->images, n * sizeof(StatusImage));
                if (!q)
                        return -ENOMEM;
                r->images = q;
                *cap = n;
        }
        im = &r->images[r->n_images++];
        *im = (StatusImage){};
        base = strrchr(d->path, '/');
        im->vm = strdup(vm->name);
        im->disk = strdup(d->drive ?: (base ? base + 1 : d->path));
        im->path = strdup(d->path);
        if (!im->vm || !im->disk || !im->path)
                return -ENOMEM;
        /* (vm, disk) names a metric series: two files of one VM with the same name get "-2" */
        for (unsigned n = 2;; n++) {
                bool dup = false;
                char *q;

                for (size_t i = 0; i + 1 < r->n_images && !dup; i++)
                        dup = strcmp(r->images[i].vm, im->vm) == 0 &&
                                strcmp(r->images[i].disk, im->disk) == 0;
                if (!dup)
                        break;
                if (asprintf(&q, "%s-%u", d->drive ?: (base ? base + 1 : d->path), n) < 0)
                        return -ENOMEM;
                free(im->disk);
                im->disk = q;
        }
        image_apply_state(im, state_disk(state, d->path));
        return 0;
}

static int cmp_image_storage(const void *a, const void *b) {
        const StatusImage *x = a, *y = b;
        return x->storage < y->storage ? -1 : x->storage > y->storage;
}

/* Sums and thresholds over the collected images. */
static void report_finish(StatusReport *r) {
        const StatusThresholds *t = &r->thresholds;

        for (size_t i = 0; i < r->n_images; i++) {
                StatusImage *im = &r->images[i];
                StatusStorage *s = &r->storages[im->storage];
                uint64_t full;

                im->reclaimable_bytes = image_estimate(im);
                if (im->error)
                        im->warnings |= STATUS_WARN_ERROR;
                if (!im->error && t->reclaimable_percent > 0 && im->file_size > 0 &&
                    (double) im->reclaimable_bytes * 100.0 >=
                            (double) t->reclaimable_percent * (double) im->file_size &&
                    im->reclaimable_bytes > 0)
                        im->warnings |= STATUS_WARN_RECLAIMABLE;

                s->n_images++;
                s->virtual_bytes += im->virtual_size;
                s->file_bytes += im->file_size;
                s->allocated_bytes += im->allocated_bytes;
                s->disk_usage_bytes += im->disk_usage_bytes;
                s->reclaimable_bytes += im->reclaimable_bytes;
                /* a full image holds every guest cluster; what it holds now is in allocated
                 * (metadata included, which makes this a slight underestimate of the growth) */
                full = im->virtual_size;
                if (full > im->allocated_bytes)
                        s->growth_bytes += full - im->allocated_bytes;
                s->warnings |= im->warnings;
        }
        for (size_t i = 0; i < r->n_storages; i++) {
                StatusStorage *s = &r->storages[i];
                bool own = false;

                if (s->capacity_bytes > 0)
                        s->over_allocation_ratio =
                                (double) s->virtual_bytes / (double) s->capacity_bytes;
                s->shortfall_bytes =
                        s->growth_bytes > s->free_bytes ? s->growth_bytes - s->free_bytes : 0;
                if (t->over_allocation_ratio > 0 && s->capacity_bytes > 0 &&
                    s->over_allocation_ratio > t->over_allocation_ratio)
                        s->warnings |= STATUS_WARN_RATIO, own = true;
                if (t->min_free_percent > 0 && s->capacity_bytes > 0 &&
                    (double) s->free_bytes * 100.0 <
                            (double) t->min_free_percent * (double) s->capacity_bytes)
                        s->warnings |= STATUS_WARN_FREE, own = true;
                if (t->reclaimable_bytes > 0 && s->reclaimable_bytes >= t->reclaimable_bytes)
                        s->warnings |= STATUS_WARN_RECLAIMABLE, own = true;
                r->warnings |= s->warnings;
                r->n_warnings += own;
        }
        for (size_t i = 0; i < r->n_images; i++)
                r->n_warnings += r->images[i].warnings != 0;
}

int status_collect(const Registry *reg, const StatusOptions *opts, StatusReport **ret) {
        _cleanup_(status_report_freep) StatusReport *r = NULL;
        _cleanup_free_ StorageKey *keys = NULL;
        _cleanup_(mount_table_done) MountTable mt = {};
        _cleanup_(json_object_putp) json_object *cache = NULL;
        const RegistryVm *vm;
        size_t cap = 0;
        uint64_t t0;
        int k;

        if (!reg || !opts || !ret)
                return -EINVAL;
        t0 = now_monotonic_usec();
        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->thresholds = opts->thresholds;
        r->time_usec = now_realtime_usec();
        if (mount_table_load(&mt, opts->mountinfo ?: "/proc/self/mountinfo") < 0)
                return -ENOMEM;
        /* a missing or damaged cache is an empty one: it only ever saves work */
        if (opts->scan_cache && access(opts->scan_cache, F_OK) >= 0)
                cache = json_object_from_file(opts->scan_cache);

        r->vms = calloc(registry_size(reg) + 1, sizeof(StatusVm));
        if (!r->vms)
                return -ENOMEM;
        REGISTRY_FOREACH_VM(vm, reg, i) {
                _cleanup_(json_object_putp) json_object *state = NULL;
                StatusVm *sv = &r->vms[r->n_vms++];
                json_object *report;

                sv->name = strdup(vm->name);
                if (!sv->name)
                        return -ENOMEM;
                state = state_load(opts->state_dir, vm->name);
                if (state && json_object_object_get_ex(state, "last_report", &report)) {
                        sv->last_report_usec = json_u64(report, "time");
                        sv->last_report_bytes = json_u64(report, "bytes");
                        sv->last_report_filesystems =
                                (uint32_t) MIN(json_u64(report, "filesystems"), UINT32_MAX);
                }
                for (size_t d = 0; d < vm->n_disks; d++) {
                        struct stat st;
                        bool have_st;
                        int s;

                        k = image_add(r, &cap, vm, &vm->disks[d], state);
                        if (k < 0)
                                return k;
                        k = image_read(
                                &r->images[r->n_images - 1], cache, opts->scan, &st, &have_st);
                        if (k < 0)
                                return k;
                        s = storage_get(r, &keys, &mt, &r->images[r->n_images - 1], &st, have_st);
                        if (s < 0)
                                return s;
                        r->images[r->n_images - 1].storage = (size_t) s;
                }
        }
        /* stable sort: insertion order within one storage (qsort is not stable) */
        for (size_t i = 1; i < r->n_images; i++)
                for (size_t j = i; j > 0 && cmp_image_storage(&r->images[j - 1], &r->images[j]) > 0;
                     j--) {
                        StatusImage tmp = r->images[j - 1];
                        r->images[j - 1] = r->images[j];
                        r->images[j] = tmp;
                }
        report_finish(r);
        r->duration_usec = now_monotonic_usec() - t0;
        *ret = TAKE_PTR(r);
        return 0;
}

int status_scan_cache_save(const StatusReport *r, const char *path) {
        _cleanup_(json_object_putp) json_object *root = NULL;
        _cleanup_free_ char *tmp = NULL, *dir = NULL;
        _cleanup_close_ int fd = -1, dfd = -1;
        json_object *images;
        const char *text;
        size_t n;
        char *slash;
        int k;

        if (!r || !path)
                return -EINVAL;
        root = json_object_new_object();
        images = json_object_new_array();
        if (!root || !images) {
                (void) json_object_put(images);
                return -ENOMEM;
        }
        json_object_object_add(root, "images", images);
        for (size_t i = 0; i < r->n_images; i++) {
                const StatusImage *im = &r->images[i];
                json_object *e;

                if (!im->scanned)
                        continue;
                e = json_object_new_object();
                if (!e)
                        return -ENOMEM;
                json_object_object_add(e, "image", json_object_new_string(im->path));
                json_object_object_add(e, "inode", json_new_u64(im->inode));
                json_object_object_add(e, "file_size", json_new_u64(im->file_size));
                json_object_object_add(e, "mtime_nsec", json_new_u64(im->mtime_nsec));
                json_object_object_add(e, "time", json_new_u64(im->scan_time_usec));
                json_object_object_add(
                        e, "reclaimable_bytes", json_new_u64(im->scan_reclaimable_bytes));
                json_object_array_add(images, e);
        }
        text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY);

        if (asprintf(&tmp, "%s.XXXXXX", path) < 0)
                return -ENOMEM;
        dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        slash = strrchr(dir, '/');
        if (slash)
                *(slash == dir ? slash + 1 : slash) = '\0';
        /* durability: data, fsync, rename over the old file, fsync the directory */
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        k = fchmod(fd, 0644) < 0 ? -errno : 0;
        for (n = strlen(text); k >= 0 && n > 0;) {
                ssize_t w = write(fd, text, n);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        k = -errno;
                else
                        text += w, n -= (size_t) w;
        }
        if (k >= 0 && fsync(fd) < 0)
                k = -errno;
        if (k >= 0 && rename(tmp, path) < 0)
                k = -errno;
        if (k < 0) {
                (void) unlink(tmp);
                return k;
        }
        dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0)
                (void) fsync(dfd);
        return 0;
}
