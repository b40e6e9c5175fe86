/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Rendering a status report: text for people, JSON for scripts, Prometheus text exposition
 * (format 0.0.4) for node_exporter's textfile collector. The metric and label names are a
 * contract (docs/monitoring.md): dashboards and alert rules depend on them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "macro.h"
#include "size.h"
#include "status.h"

#define USEC_PER_SEC UINT64_C(1000000)

static int stream_result(FILE *f) {
        if (fflush(f) != 0 || ferror(f))
                return -EIO;
        return 0;
}

/* "2026-11-27 05:10 UTC", or "never" for 0. */
static const char *format_time(char *buf, size_t n, uint64_t usec) {
        time_t t = (time_t) (usec / USEC_PER_SEC);
        struct tm tm;

        if (usec == 0 || !gmtime_r(&t, &tm) || strftime(buf, n, "%Y-%m-%d %H:%M UTC", &tm) == 0)
                return "never";
        return buf;
}

static void warnings_text(char *buf, size_t n, unsigned w) {
        size_t used = 0;

        buf[0] = '\0';
        for (unsigned bit = 1; bit <= STATUS_WARN_ERROR; bit <<= 1)
                if ((w & bit) && used < n) {
                        int k = snprintf(
                                buf + used,
                                n - used,
                                "%s%s",
                                used ? "," : "",
                                status_warning_to_string(bit));
                        if (k > 0)
                                used += (size_t) k;
                }
}

/* ---- text ---- */

static void storage_text(const StatusReport *r, const StatusStorage *s, FILE *f) {
        char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX], c[FORMAT_BYTES_MAX], d[FORMAT_BYTES_MAX];
        const StatusThresholds *t = &r->thresholds;

        fprintf(f,
                "%s (%s, %s)%s\n",
                s->name,
                s->fstype,
                s->source,
                s->warnings ? "  WARNING" : "");
        if (s->capacity_bytes > 0)
                fprintf(f,
                        "  capacity %s, used %s, free %s (%.1f%%)\n",
                        format_bytes(a, sizeof(a), s->capacity_bytes),
                        format_bytes(b, sizeof(b), s->used_bytes),
                        format_bytes(c, sizeof(c), s->free_bytes),
                        100.0 * (double) s->free_bytes / (double) s->capacity_bytes);
        else
                fprintf(f, "  capacity unknown\n");
        fprintf(f,
                "  %zu image%s: virtual %s, files %s, allocated %s, on disk %s\n",
                s->n_images,
                s->n_images == 1 ? "" : "s",
                format_bytes(a, sizeof(a), s->virtual_bytes),
                format_bytes(b, sizeof(b), s->file_bytes),
                format_bytes(c, sizeof(c), s->allocated_bytes),
                format_bytes(d, sizeof(d), s->disk_usage_bytes));
        if (s->capacity_bytes > 0)
                fprintf(f,
                        "  over-allocation %.2f (virtual / capacity)\n",
                        s->over_allocation_ratio);
        if (s->shortfall_bytes)
                fprintf(f,
                        "  if every image filled up: %s more, %s more than is free\n",
                        format_bytes(a, sizeof(a), s->growth_bytes),
                        format_bytes(b, sizeof(b), s->shortfall_bytes));
        else
                fprintf(f,
                        "  if every image filled up: %s more, which fits\n",
                        format_bytes(a, sizeof(a), s->growth_bytes));
        fprintf(f, "  reclaimable %s\n", format_bytes(a, sizeof(a), s->reclaimable_bytes));
        if (s->warnings & STATUS_WARN_RATIO)
                fprintf(f,
                        "  warning: over-allocation %.2f above %g\n",
                        s->over_allocation_ratio,
                        t->over_allocation_ratio);
        if (s->warnings & STATUS_WARN_FREE)
                fprintf(f, "  warning: free space below %u%%\n", t->min_free_percent);
        if ((s->warnings & STATUS_WARN_RECLAIMABLE) && t->reclaimable_bytes > 0 &&
            s->reclaimable_bytes >= t->reclaimable_bytes)
                fprintf(f,
                        "  warning: reclaimable at or above %s\n",
                        format_bytes(a, sizeof(a), t->reclaimable_bytes));
}

/* Column widths of the VM and disk names. */
typedef struct Widths {
        int vm, disk;
} Widths;

static void image_text(const StatusImage *im, const Widths *cw, FILE *f) {
        char v[FORMAT_BYTES_MAX], fs[FORMAT_BYTES_MAX], al[FORMAT_BYTES_MAX], re[FORMAT_BYTES_MAX],
                g[FORMAT_BYTES_MAX], rb[FORMAT_BYTES_MAX], t1[32], t2[32], w[64];
        char last[64], report[80];

        if (im->error) {
                fprintf(f,
                        "  %-*s %-*s %s: %s  WARNING\n",
                        cw->vm,
                        im->vm,
                        cw->disk,
                        im->disk,
                        im->path,
                        im->error_message ?: "error");
                return;
        }
        if (im->last_compaction_usec)
                snprintf(
                        last,
                        sizeof(last),
                        "%s (-%s)",
                        format_time(t1, sizeof(t1), im->last_compaction_usec),
                        format_bytes(g, sizeof(g), im->last_compaction_gain));
        else
                snprintf(last, sizeof(last), "never");
        if (im->report_time_usec)
                /* the report's own figure; "compacted since" when the last compaction acted
                 * on it (then it no longer counts in the reclaimable estimate) */
                snprintf(
                        report,
                        sizeof(report),
                        "%s (%s freed%s)",
                        format_time(t2, sizeof(t2), im->report_time_usec),
                        format_bytes(rb, sizeof(rb), im->report_bytes),
                        im->report_time_usec <= im->last_compaction_usec ? ", compacted since" :
                                                                           "");
        else
                snprintf(report, sizeof(report), "none");
        warnings_text(w, sizeof(w), im->warnings);
        fprintf(f,
                "  %-*s %-*s %10s %10s %10s %11s  %-30s %s%s%s%s\n",
                cw->vm,
                im->vm,
                cw->disk,
                im->disk,
                format_bytes(v, sizeof(v), im->virtual_size),
                format_bytes(fs, sizeof(fs), im->file_size),
                format_bytes(al, sizeof(al), im->allocated_bytes),
                format_bytes(re, sizeof(re), im->reclaimable_bytes),
                last,
                report,
                im->in_use ? "  [running]" : "",
                im->warnings ? "  WARNING: " : "",
                w);
        if (im->scanned)
                fprintf(f,
                        "  %-*s %-*s reclaimable from a data scan of %s\n",
                        cw->vm,
                        "",
                        cw->disk,
                        "",
                        format_time(t1, sizeof(t1), im->scan_time_usec));
        if (im->note)
                fprintf(f,
                        "  %-*s %-*s not compactable now: %s\n",
                        cw->vm,
                        "",
                        cw->disk,
                        "",
                        im->note);
}

int status_render_text(const StatusReport *r, FILE *f) {
        Widths wd = { .vm = 8, .disk = 8 };

        if (!r || !f)
                return -EINVAL;
        for (size_t i = 0; i < r->n_images; i++) {
                wd.vm = MAX(wd.vm, (int) MIN(strlen(r->images[i].vm), (size_t) 40));
                wd.disk = MAX(wd.disk, (int) MIN(strlen(r->images[i].disk), (size_t) 40));
        }
        if (r->n_images == 0)
                fprintf(f, "No qcow2 disks found.\n");
        for (size_t i = 0; i < r->n_storages; i++) {
                const StatusStorage *s = &r->storages[i];

                if (i > 0)
                        fputc('\n', f);
                storage_text(r, s, f);
                fprintf(f,
                        "\n  %-*s %-*s %10s %10s %10s %11s  %-30s %s\n",
                        wd.vm,
                        "VM",
                        wd.disk,
                        "DISK",
                        "VIRTUAL",
                        "FILE",
                        "ALLOCATED",
                        "RECLAIMABLE",
                        "LAST COMPACTION",
                        "GUEST REPORT");
                for (size_t k = 0; k < r->n_images; k++)
                        if (r->images[k].storage == i)
                                image_text(&r->images[k], &wd, f);
        }
        if (r->n_warnings > 0)
                fprintf(f, "\n%zu warning%s.\n", r->n_warnings, r->n_warnings == 1 ? "" : "s");
        return stream_result(f);
}

/* ---- JSON ---- */

static json_object *ju64(uint64_t v) {
        return json_object_new_int64((int64_t) MIN(v, (uint64_t) INT64_MAX));
}

/* Seconds since the epoch, or null for 0 (never). */
static json_object *jtime(uint64_t usec) {
        return usec ? ju64(usec / USEC_PER_SEC) : NULL;
}

static json_object *jwarnings(unsigned w) {
        json_object *a = json_object_new_array();

        for (unsigned bit = 1; bit <= STATUS_WARN_ERROR; bit <<= 1)
                if (w & bit)
                        json_object_array_add(
                                a, json_object_new_string(status_warning_to_string(bit)));
        return a;
}

static json_object *image_json(const StatusImage *im) {
        json_object *o = json_object_new_object();

        json_object_object_add(o, "vm", json_object_new_string(im->vm));
        json_object_object_add(o, "disk", json_object_new_string(im->disk));
        json_object_object_add(o, "image", json_object_new_string(im->path));
        json_object_object_add(o, "block", json_object_new_boolean(im->block));
        json_object_object_add(o, "in_use", json_object_new_boolean(im->in_use));
        json_object_object_add(
                o,
                "error",
                im->error ? json_object_new_string(im->error_message ?: "error") : NULL);
        json_object_object_add(o, "virtual_size", ju64(im->virtual_size));
        json_object_object_add(o, "file_size", ju64(im->file_size));
        json_object_object_add(o, "allocated_bytes", ju64(im->allocated_bytes));
        json_object_object_add(o, "disk_usage_bytes", ju64(im->disk_usage_bytes));
        json_object_object_add(o, "reclaimable_bytes", ju64(im->reclaimable_bytes));
        json_object_object_add(
                o, "metadata_reclaimable_bytes", ju64(im->metadata_reclaimable_bytes));
        json_object_object_add(
                o,
                "reclaimable_source",
                im->error           ? NULL :
                        im->scanned ? json_object_new_string("scan") :
                                      json_object_new_string("metadata"));
        json_object_object_add(o, "scan_time", jtime(im->scanned ? im->scan_time_usec : 0));
        json_object_object_add(o, "guest_reported_bytes", ju64(im->reported_bytes));
        json_object_object_add(o, "guest_report_time", jtime(im->report_time_usec));
        json_object_object_add(o, "last_compaction_time", jtime(im->last_compaction_usec));
        json_object_object_add(
                o,
                "last_compaction_gain",
                im->last_compaction_usec ? ju64(im->last_compaction_gain) : NULL);
        json_object_object_add(
                o, "compactable", json_object_new_boolean(!im->error && im->compactable));
        json_object_object_add(o, "preallocated", json_object_new_boolean(im->preallocated));
        json_object_object_add(o, "stale_refcounts", ju64(im->stale_refcounts));
        json_object_object_add(o, "note", im->note ? json_object_new_string(im->note) : NULL);
        json_object_object_add(o, "warnings", jwarnings(im->warnings));
        return o;
}

int status_render_json(const StatusReport *r, FILE *f) {
        json_object *root, *th, *storages, *vms;

        if (!r || !f)
                return -EINVAL;
        root = json_object_new_object();
        th = json_object_new_object();
        storages = json_object_new_array();
        vms = json_object_new_array();
        json_object_object_add(root, "time", ju64(r->time_usec / USEC_PER_SEC));
        json_object_object_add(root, "duration_ms", ju64(r->duration_usec / 1000));
        json_object_object_add(
                th,
                "over_allocation_ratio",
                json_object_new_double(r->thresholds.over_allocation_ratio));
        json_object_object_add(th, "min_free_percent", ju64(r->thresholds.min_free_percent));
        json_object_object_add(th, "reclaimable_bytes", ju64(r->thresholds.reclaimable_bytes));
        json_object_object_add(th, "reclaimable_percent", ju64(r->thresholds.reclaimable_percent));
        json_object_object_add(root, "thresholds", th);
        json_object_object_add(root, "warnings", ju64(r->n_warnings));

        for (size_t i = 0; i < r->n_storages; i++) {
                const StatusStorage *s = &r->storages[i];
                json_object *o = json_object_new_object(), *imgs = json_object_new_array();

                json_object_object_add(o, "storage", json_object_new_string(s->name));
                json_object_object_add(o, "source", json_object_new_string(s->source));
                json_object_object_add(o, "fstype", json_object_new_string(s->fstype));
                json_object_object_add(o, "capacity_bytes", ju64(s->capacity_bytes));
                json_object_object_add(o, "used_bytes", ju64(s->used_bytes));
                json_object_object_add(o, "free_bytes", ju64(s->free_bytes));
                json_object_object_add(o, "images", ju64(s->n_images));
                json_object_object_add(o, "virtual_bytes", ju64(s->virtual_bytes));
                json_object_object_add(o, "file_bytes", ju64(s->file_bytes));
                json_object_object_add(o, "allocated_bytes", ju64(s->allocated_bytes));
                json_object_object_add(o, "disk_usage_bytes", ju64(s->disk_usage_bytes));
                json_object_object_add(o, "reclaimable_bytes", ju64(s->reclaimable_bytes));
                json_object_object_add(o, "growth_bytes", ju64(s->growth_bytes));
                json_object_object_add(o, "shortfall_bytes", ju64(s->shortfall_bytes));
                json_object_object_add(
                        o,
                        "over_allocation_ratio",
                        s->capacity_bytes ? json_object_new_double(s->over_allocation_ratio) :
                                            NULL);
                json_object_object_add(o, "warnings", jwarnings(s->warnings));
                for (size_t k = 0; k < r->n_images; k++)
                        if (r->images[k].storage == i)
                                json_object_array_add(imgs, image_json(&r->images[k]));
                json_object_object_add(o, "disks", imgs);
                json_object_array_add(storages, o);
        }
        json_object_object_add(root, "storages", storages);
        for (size_t i = 0; i < r->n_vms; i++) {
                const StatusVm *v = &r->vms[i];
                json_object *o = json_object_new_object();

                json_object_object_add(o, "vm", json_object_new_string(v->name));
                json_object_object_add(o, "last_report_time", jtime(v->last_report_usec));
                json_object_object_add(
                        o,
                        "last_report_bytes",
                        v->last_report_usec ? ju64(v->last_report_bytes) : NULL);
                json_object_object_add(
                        o,
                        "last_report_filesystems",
                        v->last_report_usec ? ju64(v->last_report_filesystems) : NULL);
                json_object_array_add(vms, o);
        }
        json_object_object_add(root, "vms", vms);
        fprintf(f,
                "%s\n",
                json_object_to_json_string_ext(
                        root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        (void) json_object_put(root);
        return stream_result(f);
}

/* ---- Prometheus ---- */

/* A label value: backslash, double quote and line feed escaped (exposition format). */
static void prom_label(FILE *f, const char *name, const char *value, bool first) {
        fprintf(f, "%s%s=\"", first ? "" : ",", name);
        for (const char *p = value; *p; p++) {
                if (*p == '\\')
                        fputs("\\\\", f);
                else if (*p == '"')
                        fputs("\\\"", f);
                else if (*p == '\n')
                        fputs("\\n", f);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

static void prom_family(FILE *f, const char *name, const char *help) {
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

static void prom_u64(FILE *f, uint64_t v) {
        fprintf(f, " %" PRIu64 "\n", v);
}

static void prom_seconds(FILE *f, uint64_t usec) {
        fprintf(f, " %" PRIu64 ".%06" PRIu64 "\n", usec / USEC_PER_SEC, usec % USEC_PER_SEC);
}

typedef enum StorageField {
        SF_CAPACITY,
        SF_USED,
        SF_FREE,
        SF_IMAGES,
        SF_VIRTUAL,
        SF_FILE,
        SF_ALLOCATED,
        SF_DISK_USAGE,
        SF_RECLAIMABLE,
        SF_GROWTH,
        SF_SHORTFALL,
        SF_WARNING,
} StorageField;

static const struct {
        const char *name;
        const char *help;
} storage_families[] = {
        [SF_CAPACITY] = { "reclaim_storage_capacity_bytes",
                          "Size of the filesystem holding the images." },
        [SF_USED] = { "reclaim_storage_used_bytes", "Bytes used on the filesystem (by anything)." },
        [SF_FREE] = { "reclaim_storage_free_bytes", "Bytes available on the filesystem." },
        [SF_IMAGES] = { "reclaim_storage_images", "qcow2 images on the filesystem." },
        [SF_VIRTUAL] = { "reclaim_storage_virtual_bytes", "Sum of the images' virtual sizes." },
        [SF_FILE] = { "reclaim_storage_file_bytes", "Sum of the images' file sizes." },
        [SF_ALLOCATED] = { "reclaim_storage_allocated_bytes",
                           "Sum of the images' clusters in use." },
        [SF_DISK_USAGE] = { "reclaim_storage_disk_usage_bytes",
                            "Sum of what the image files occupy on the filesystem." },
        [SF_RECLAIMABLE] = { "reclaim_storage_reclaimable_bytes",
                             "Estimated bytes compaction could give back." },
        [SF_GROWTH] = { "reclaim_storage_growth_bytes",
                        "Bytes the images would still take if every one filled up." },
        [SF_SHORTFALL] = { "reclaim_storage_shortfall_bytes",
                           "Growth beyond the free space (0: it would fit)." },
        [SF_WARNING] = { "reclaim_storage_warning",
                         "1 when a configured threshold is crossed on this storage." },
};

static uint64_t storage_value(const StatusStorage *s, StorageField k) {
        switch (k) {
        case SF_CAPACITY:
                return s->capacity_bytes;
        case SF_USED:
                return s->used_bytes;
        case SF_FREE:
                return s->free_bytes;
        case SF_IMAGES:
                return s->n_images;
        case SF_VIRTUAL:
                return s->virtual_bytes;
        case SF_FILE:
                return s->file_bytes;
        case SF_ALLOCATED:
                return s->allocated_bytes;
        case SF_DISK_USAGE:
                return s->disk_usage_bytes;
        case SF_RECLAIMABLE:
                return s->reclaimable_bytes;
        case SF_GROWTH:
                return s->growth_bytes;
        case SF_SHORTFALL:
                return s->shortfall_bytes;
        case SF_WARNING:
                return s->warnings != 0;
        }
        return 0;
}

typedef enum ImageField {
        IF_VIRTUAL,
        IF_FILE,
        IF_ALLOCATED,
        IF_DISK_USAGE,
        IF_RECLAIMABLE,
        IF_REPORTED,
        IF_IN_USE,
        IF_COMPACTABLE,
        IF_ERROR,
        IF_WARNING,
} ImageField;

static const struct {
        const char *name;
        const char *help;
        bool needs_data; /* only for images that could be read */
} image_families[] = {
        [IF_VIRTUAL] = { "reclaim_image_virtual_bytes", "Virtual size of the disk image.", true },
        [IF_FILE] = { "reclaim_image_file_bytes", "Size of the image file.", true },
        [IF_ALLOCATED] = { "reclaim_image_allocated_bytes",
                           "Clusters in use in the image (refcount > 0).",
                           true },
        [IF_DISK_USAGE] = { "reclaim_image_disk_usage_bytes",
                            "What the image file occupies on its filesystem.",
                            true },
        [IF_RECLAIMABLE] = { "reclaim_image_reclaimable_bytes",
                             "Estimated bytes compaction could give back (metadata and guest reports).",
                             true },
        [IF_REPORTED] = { "reclaim_image_guest_reported_bytes",
                          "Bytes the guest reported freeing since the last compaction.",
                          false },
        [IF_IN_USE] = { "reclaim_image_in_use",
                        "1 when a running VM (or another QEMU process) holds the image.",
                        true },
        [IF_COMPACTABLE] = { "reclaim_image_compactable",
                             "1 when compaction would accept the image now.",
                             true },
        [IF_ERROR] = { "reclaim_image_read_error", "1 when the image could not be read.", false },
        [IF_WARNING] = { "reclaim_image_warning",
                         "1 when a configured threshold is crossed for this image, or it could not be read.",
                         false },
};

static uint64_t image_value(const StatusImage *im, ImageField k) {
        switch (k) {
        case IF_VIRTUAL:
                return im->virtual_size;
        case IF_FILE:
                return im->file_size;
        case IF_ALLOCATED:
                return im->allocated_bytes;
        case IF_DISK_USAGE:
                return im->disk_usage_bytes;
        case IF_RECLAIMABLE:
                return im->reclaimable_bytes;
        case IF_REPORTED:
                return im->reported_bytes;
        case IF_IN_USE:
                return im->in_use;
        case IF_COMPACTABLE:
                return im->compactable;
        case IF_ERROR:
                return im->error != 0;
        case IF_WARNING:
                return im->warnings != 0;
        }
        return 0;
}

static void image_labels(FILE *f, const StatusReport *r, const StatusImage *im) {
        fputc('{', f);
        prom_label(f, "storage", r->storages[im->storage].name, true);
        prom_label(f, "vm", im->vm, false);
        prom_label(f, "disk", im->disk, false);
        fputc('}', f);
}

static void storage_label(FILE *f, const StatusStorage *s) {
        fputc('{', f);
        prom_label(f, "storage", s->name, true);
        fputc('}', f);
}

int status_render_prometheus(const StatusReport *r, FILE *f) {
        const StatusThresholds *t;
        bool any;

        if (!r || !f)
                return -EINVAL;
        t = &r->thresholds;

        prom_family(f, "reclaim_status_timestamp_seconds", "When these figures were collected.");
        fputs("reclaim_status_timestamp_seconds", f);
        prom_seconds(f, r->time_usec);
        prom_family(f, "reclaim_status_duration_seconds", "How long collecting the figures took.");
        fputs("reclaim_status_duration_seconds", f);
        prom_seconds(f, r->duration_usec);
        prom_family(f, "reclaim_status_warnings", "Rows (storages and images) with a warning.");
        fprintf(f, "reclaim_status_warnings");
        prom_u64(f, r->n_warnings);

        /* the configured thresholds, so alert rules and dashboards can follow the config */
        if (t->over_allocation_ratio > 0) {
                prom_family(
                        f,
                        "reclaim_threshold_over_allocation_ratio",
                        "Configured over-allocation ratio above which a storage warns.");
                fprintf(f,
                        "reclaim_threshold_over_allocation_ratio %.10g\n",
                        t->over_allocation_ratio);
        }
        if (t->min_free_percent > 0) {
                prom_family(
                        f,
                        "reclaim_threshold_min_free_ratio",
                        "Configured free-space fraction below which a storage warns.");
                fprintf(f, "reclaim_threshold_min_free_ratio %.10g\n", t->min_free_percent / 100.0);
        }

        prom_family(
                f,
                "reclaim_storage_info",
                "A storage (filesystem holding images): its device and type, value 1.");
        for (size_t i = 0; i < r->n_storages; i++) {
                const StatusStorage *s = &r->storages[i];
                fputs("reclaim_storage_info{", f);
                prom_label(f, "storage", s->name, true);
                prom_label(f, "source", s->source, false);
                prom_label(f, "fstype", s->fstype, false);
                fputs("} 1\n", f);
        }
        for (size_t k = 0; k < ELEMENTSOF(storage_families); k++) {
                prom_family(f, storage_families[k].name, storage_families[k].help);
                for (size_t i = 0; i < r->n_storages; i++) {
                        fputs(storage_families[k].name, f);
                        storage_label(f, &r->storages[i]);
                        prom_u64(f, storage_value(&r->storages[i], (StorageField) k));
                }
        }
        prom_family(
                f,
                "reclaim_storage_over_allocation_ratio",
                "Sum of the images' virtual sizes divided by the filesystem's capacity.");
        for (size_t i = 0; i < r->n_storages; i++)
                if (r->storages[i].capacity_bytes > 0) {
                        fputs("reclaim_storage_over_allocation_ratio", f);
                        storage_label(f, &r->storages[i]);
                        fprintf(f, " %.10g\n", r->storages[i].over_allocation_ratio);
                }

        for (size_t k = 0; k < ELEMENTSOF(image_families); k++) {
                prom_family(f, image_families[k].name, image_families[k].help);
                for (size_t i = 0; i < r->n_images; i++) {
                        const StatusImage *im = &r->images[i];

                        if (image_families[k].needs_data && im->error)
                                continue;
                        fputs(image_families[k].name, f);
                        image_labels(f, r, im);
                        prom_u64(f, image_value(im, (ImageField) k));
                }
        }
        /* never compacted: no sample (a 0 timestamp would read as 1970) */
        prom_family(
                f,
                "reclaim_image_last_compaction_timestamp_seconds",
                "When the image was last compacted.");
        for (size_t i = 0; i < r->n_images; i++)
                if (r->images[i].last_compaction_usec) {
                        fputs("reclaim_image_last_compaction_timestamp_seconds", f);
                        image_labels(f, r, &r->images[i]);
                        prom_seconds(f, r->images[i].last_compaction_usec);
                }
        prom_family(
                f,
                "reclaim_image_last_compaction_reclaimed_bytes",
                "Bytes the last compaction of the image gave back.");
        for (size_t i = 0; i < r->n_images; i++)
                if (r->images[i].last_compaction_usec) {
                        fputs("reclaim_image_last_compaction_reclaimed_bytes", f);
                        image_labels(f, r, &r->images[i]);
                        prom_u64(f, r->images[i].last_compaction_gain);
                }

        prom_family(
                f,
                "reclaim_image_scan_timestamp_seconds",
                "When the image's data was last scanned (its reclaimable bytes are then exact).");
        for (size_t i = 0; i < r->n_images; i++)
                if (r->images[i].scanned) {
                        fputs("reclaim_image_scan_timestamp_seconds", f);
                        image_labels(f, r, &r->images[i]);
                        prom_seconds(f, r->images[i].scan_time_usec);
                }

        prom_family(
                f,
                "reclaim_vm_last_report_timestamp_seconds",
                "When the VM's guest agent last reported freeing space.");
        any = false;
        for (size_t i = 0; i < r->n_vms; i++)
                if (r->vms[i].last_report_usec) {
                        fputs("reclaim_vm_last_report_timestamp_seconds{", f);
                        prom_label(f, "vm", r->vms[i].name, true);
                        fputc('}', f);
                        prom_seconds(f, r->vms[i].last_report_usec);
                        any = true;
                }
        prom_family(
                f,
                "reclaim_vm_last_report_freed_bytes",
                "Bytes the guest agent freed in its last report.");
        for (size_t i = 0; any && i < r->n_vms; i++)
                if (r->vms[i].last_report_usec) {
                        fputs("reclaim_vm_last_report_freed_bytes{", f);
                        prom_label(f, "vm", r->vms[i].name, true);
                        fputc('}', f);
                        prom_u64(f, r->vms[i].last_report_bytes);
                }
        return stream_result(f);
}
