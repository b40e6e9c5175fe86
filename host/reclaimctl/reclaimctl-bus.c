/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimctl's verbs on top of reclaimd's D-Bus API (org.reclaim.Manager1, docs/host.md):
 * compact VM (queue and follow), status VM, reclaim VM, jobs, cancel JOB. The system bus is
 * found as every sd-bus client finds it (DBUS_SYSTEM_BUS_ADDRESS, else the standard socket).
 *
 * Following a job: the signal matches are installed before the method call, so no JobProgress
 * or JobRemoved can be missed; a NameOwnerChanged match notices a daemon that goes away.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include "log.h"
#include "progress.h"
#include "reclaimctl.h"
#include "size.h"

#define BUS_NAME "org.reclaim.Manager1"
#define BUS_PATH "/org/reclaim/Manager1"
#define BUS_INTERFACE "org.reclaim.Manager1"
#define BUS_ERROR_PREFIX BUS_INTERFACE ".Error."

/* While following a guest's reclaim: how often to ask whether it is still connected. */
#define GUEST_CHECK_USEC (5 * UINT64_C(1000000))

/*
 * Connects to the system bus and checks that reclaimd owns its name. Returns 0, or -ESRCH
 * when there is no bus or no daemon (the caller decides whether that is an error).
 */
static int bus_open(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int has = 0, r;

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                log_debug_errno(r, "No system bus: %m");
                return -ESRCH;
        }
        r = sd_bus_call_method(
                bus,
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                &error,
                &reply,
                "s",
                BUS_NAME);
        if (r >= 0)
                r = sd_bus_message_read(reply, "b", &has);
        if (r < 0) {
                log_debug(
                        "Cannot ask the bus about %s: %s", BUS_NAME, error.message ?: strerror(-r));
                return -ESRCH;
        }
        if (!has)
                return -ESRCH;
        *ret = TAKE_PTR(bus);
        return 0;
}

static int bus_open_or_fail(sd_bus **ret) {
        int r = bus_open(ret);

        if (r == -ESRCH)
                log_error("reclaimd is not running (no %s on the system bus).", BUS_NAME);
        return r;
}

/* Logs a failed call; returns the exit status it maps to. */
static int call_failed(const char *what, const sd_bus_error *error, int r) {
        if (sd_bus_error_has_name(error, BUS_ERROR_PREFIX "InUse")) {
                log_error("%s", error->message);
                return EXIT_IN_USE;
        }
        if (error && error->message && sd_bus_error_is_set(error))
                log_error("%s: %s", what, error->message);
        else
                log_error("%s: %s", what, strerror(-r));
        return EXIT_ERROR;
}

static int add_owner_match(sd_bus *bus, sd_bus_message_handler_t cb, void *userdata) {
        return sd_bus_add_match(
                bus,
                NULL,
                "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='" BUS_NAME "'",
                cb,
                userdata);
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error);

/*
 * Subscribes to two of reclaimd's signals (before the call that makes them, so none is missed)
 * and to its name going away (*gone set). Returns 0, or -errno (logged).
 */
static int subscribe(
        sd_bus *bus,
        const char *a,
        sd_bus_message_handler_t a_cb,
        const char *b,
        sd_bus_message_handler_t b_cb,
        void *userdata,
        bool *gone) {
        int r;

        r = sd_bus_match_signal(bus, NULL, BUS_NAME, BUS_PATH, BUS_INTERFACE, a, a_cb, userdata);
        if (r >= 0)
                r = sd_bus_match_signal(
                        bus, NULL, BUS_NAME, BUS_PATH, BUS_INTERFACE, b, b_cb, userdata);
        if (r >= 0)
                r = add_owner_match(bus, on_owner_changed, gone);
        if (r < 0)
                return log_error_errno(r, "Cannot subscribe to reclaimd's signals: %m");
        return 0;
}

/* "HH:MM:SS" style local time of a CLOCK_REALTIME usec, or "never". */
static const char *format_time(char *buf, size_t size, uint64_t usec) {
        time_t t = (time_t) (usec / 1000000);
        struct tm tm;

        if (usec == 0 || !localtime_r(&t, &tm) ||
            strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm) == 0)
                return "never";
        return buf;
}

/* ---- compact VM through the daemon ---- */

typedef struct FollowedJob {
        uint32_t id;
        bool done;
        char *image;
        char *result;
        int status;
        uint64_t reclaimed;
        char *json;
} FollowedJob;

typedef struct Follow {
        const char *vm;
        FollowedJob *jobs;
        size_t n_jobs, n_done;
        bool daemon_gone;
        Progress *bar;
        bool json;
} Follow;

static FollowedJob *follow_find(Follow *f, uint32_t id) {
        for (size_t i = 0; i < f->n_jobs; i++)
                if (f->jobs[i].id == id)
                        return &f->jobs[i];
        return NULL;
}

static int on_job_progress(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Follow *f = userdata;
        const char *phase;
        uint64_t done, total;
        uint32_t id;
        char label[64];

        if (sd_bus_message_read(m, "ustt", &id, &phase, &done, &total) < 0 || !follow_find(f, id))
                return 0;
        (void) snprintf(label, sizeof(label), "job %" PRIu32 " %s", id, phase);
        progress_update(f->bar, label, done, total);
        return 0;
}

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Follow *f = userdata;
        const char *vm, *image, *result, *json;
        FollowedJob *j;
        uint64_t reclaimed;
        uint32_t id;
        int32_t status;

        if (sd_bus_message_read(
                    m, "usssits", &id, &vm, &image, &result, &status, &reclaimed, &json) < 0)
                return 0;
        j = follow_find(f, id);
        if (!j || j->done)
                return 0;
        j->done = true;
        j->status = status;
        j->reclaimed = reclaimed;
        j->image = strdup(image);
        j->result = strdup(result);
        j->json = strdup(json);
        f->n_done++;
        return 0;
}

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *name, *old_owner, *new_owner;
        bool *gone = userdata;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) >= 0 &&
            new_owner[0] == '\0')
                *gone = true;
        return 0;
}

/* The exit status a finished job maps to. */
static int job_exit_status(const FollowedJob *j) {
        if (strcmp(j->result, "done") == 0 || strcmp(j->result, "window-closed") == 0)
                return EXIT_OK;
        if (strcmp(j->result, "in-use") == 0)
                return EXIT_IN_USE;
        if (strcmp(j->result, "refused") == 0)
                return EXIT_REFUSED;
        return EXIT_ERROR;
}

/* One finished job: a text line, or its object for the JSON array. */
static void job_report(const FollowedJob *j, json_object *disks) {
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        json_object *v;
        char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX], c[FORMAT_BYTES_MAX];
        const char *error = NULL;
        uint64_t before = 0, after = 0;

        if (j->json && j->json[0])
                o = json_tokener_parse(j->json);
        if (o && json_object_object_get_ex(o, "error", &v) &&
            json_object_is_type(v, json_type_string))
                error = json_object_get_string(v);
        if (disks) {
                if (!o || strcmp(j->result, "done") != 0) {
                        json_object *e = json_object_new_object();

                        json_object_object_add(e, "image", json_object_new_string(j->image));
                        json_object_object_add(
                                e, "error", json_object_new_string(error ?: j->result));
                        json_object_object_add(
                                e, "exit_status", json_object_new_int(job_exit_status(j)));
                        json_object_array_add(disks, e);
                } else
                        json_object_array_add(disks, TAKE_PTR(o));
                return;
        }
        if (job_exit_status(j) != EXIT_OK) {
                if (strcmp(j->result, "in-use") == 0)
                        log_error(
                                "%s is in use (a running VM, qemu-nbd or another program holds its image locks); stop it first",
                                j->image);
                else
                        log_error(
                                "%s: %s%s%s", j->image, j->result, error ? ": " : "", error ?: "");
                return;
        }
        if (o && json_object_object_get_ex(o, "file_size_before", &v))
                before = (uint64_t) json_object_get_int64(v);
        if (o && json_object_object_get_ex(o, "file_size_after", &v))
                after = (uint64_t) json_object_get_int64(v);
        if (strcmp(j->result, "window-closed") == 0)
                printf("%s: not started before the nightly window closed; it stays for the next night\n",
                       j->image);
        else if (o && json_object_object_get_ex(o, "skipped", &v) && v)
                printf("%s: skipped: %s (use --force to compact it anyway)\n",
                       j->image,
                       json_object_get_string(v));
        else
                printf("%s: %s -> %s (reclaimed %s) [reclaimd job %" PRIu32 "]\n",
                       j->image,
                       format_bytes(a, sizeof(a), before),
                       format_bytes(b, sizeof(b), after),
                       format_bytes(c, sizeof(c), j->reclaimed),
                       j->id);
}

/* name NULL: CompactAll (the nightly run). */
static int bus_compact(const char *name, const CompactRequest *req) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(progress_freep) Progress *bar = NULL;
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        Follow f = { .vm = name, .json = req->json };
        const uint32_t *ids;
        size_t size;
        int status = EXIT_OK, r;

        r = bus_open(&bus);
        if (r < 0)
                return r;
        if (subscribe(
                    bus,
                    "JobProgress",
                    on_job_progress,
                    "JobRemoved",
                    on_job_removed,
                    &f,
                    &f.daemon_gone) < 0)
                return EXIT_ERROR;

        r = sd_bus_message_new_method_call(
                bus, &call, BUS_NAME, BUS_PATH, BUS_INTERFACE, name ? "Compact" : "CompactAll");
        if (r >= 0 && name)
                r = sd_bus_message_append(call, "s", name);
        if (r >= 0)
                r = req->opts.force ? sd_bus_message_append(call, "a{sv}", 1, "force", "b", 1) :
                        req->now    ? sd_bus_message_append(call, "a{sv}", 1, "now", "b", 1) :
                                      sd_bus_message_append(call, "a{sv}", 0);
        if (r < 0) {
                log_error_errno(r, "Cannot build the request: %m");
                return EXIT_ERROR;
        }
        r = sd_bus_call(bus, call, 0, &error, &reply);
        if (r < 0) {
                if (sd_bus_error_has_name(&error, SD_BUS_ERROR_SERVICE_UNKNOWN) ||
                    sd_bus_error_has_name(&error, SD_BUS_ERROR_NAME_HAS_NO_OWNER))
                        return -ESRCH; /* it went away between the check and the call */
                return call_failed(name ?: "compact --all", &error, r);
        }
        r = sd_bus_message_read_array(reply, 'u', (const void **) &ids, &size);
        if (r < 0) {
                log_error_errno(r, "Bad reply from reclaimd: %m");
                return EXIT_ERROR;
        }
        f.n_jobs = size / sizeof(uint32_t);
        f.jobs = calloc(MAX(f.n_jobs, (size_t) 1), sizeof(FollowedJob));
        if (!f.jobs) {
                log_error_errno(-ENOMEM, "Out of memory.");
                return EXIT_ERROR;
        }
        for (size_t i = 0; i < f.n_jobs; i++)
                f.jobs[i].id = ids[i];
        if (f.n_jobs == 0 && !req->json)
                printf("%s: nothing to do\n", name ?: "no stopped VM has a disk worth compacting;");
        else if (!req->json)
                log_info("%s: %zu disk(s) queued in reclaimd.", name ?: "all VMs", f.n_jobs);

        bar = progress_new(stderr, !req->json && isatty(STDERR_FILENO));
        f.bar = bar;
        while (f.n_done < f.n_jobs && !f.daemon_gone) {
                r = sd_bus_process(bus, NULL);
                if (r < 0) {
                        log_error_errno(r, "Lost the connection to the bus: %m");
                        break;
                }
                if (r > 0)
                        continue;
                r = sd_bus_wait(bus, UINT64_MAX);
                if (r < 0 && r != -EINTR) {
                        log_error_errno(r, "Lost the connection to the bus: %m");
                        break;
                }
        }
        progress_finish(bar);
        if (req->json) {
                o = json_object_new_object();
                json_object_object_add(o, "vm", name ? json_object_new_string(name) : NULL);
        }
        json_object *disks = o ? json_object_new_array() : NULL;
        for (size_t i = 0; i < f.n_jobs; i++) {
                FollowedJob *j = &f.jobs[i];
                int s;

                if (!j->done) {
                        log_error(
                                "reclaimd stopped before job %" PRIu32
                                " ended; the image stays valid, run the compaction again.",
                                j->id);
                        s = EXIT_ERROR;
                } else if (!j->image || !j->result || !j->json) {
                        log_error_errno(-ENOMEM, "Out of memory.");
                        s = EXIT_ERROR;
                } else {
                        job_report(j, disks);
                        s = job_exit_status(j);
                }
                if (exit_status_rank(s) > exit_status_rank(status))
                        status = s;
                free(j->image);
                free(j->result);
                free(j->json);
        }
        free(f.jobs);
        if (o) {
                json_object_object_add(o, "disks", disks);
                json_print(o);
        }
        return status;
}

int bus_compact_vm(const char *name, const CompactRequest *req) {
        return bus_compact(name, req);
}

int bus_compact_all(const CompactRequest *req) {
        return bus_compact(NULL, req);
}

/* ---- list: the daemon's view ---- */

static struct {
        bool loaded;
        int error;
        size_t n;
        char **names;
        BusVmSummary *vms;
} list_cache;

static int list_cache_load(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *name;
        int connected, r;
        uint32_t n_disks, pending;
        uint64_t bytes, time;

        list_cache.loaded = true;
        r = bus_open(&bus);
        if (r < 0)
                return list_cache.error = r;
        r = sd_bus_call_method(
                bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "ListVMs", &error, &reply, NULL);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(sbuutt)");
        while (r >= 0 &&
               (r = sd_bus_message_read(
                        reply, "(sbuutt)", &name, &connected, &n_disks, &pending, &bytes, &time)) >
                       0) {
                char **nn = reallocarray(list_cache.names, list_cache.n + 1, sizeof(char *));
                BusVmSummary *nv;

                if (nn)
                        list_cache.names = nn;
                nv = nn ? reallocarray(list_cache.vms, list_cache.n + 1, sizeof(BusVmSummary)) :
                          NULL;
                if (nv)
                        list_cache.vms = nv;
                if (!nn || !nv || !(list_cache.names[list_cache.n] = strdup(name)))
                        return list_cache.error = -ENOMEM;
                list_cache.vms[list_cache.n++] = (BusVmSummary){ connected, pending };
        }
        if (r < 0)
                log_debug("ListVMs failed: %s", error.message ?: strerror(-r));
        return list_cache.error = r < 0 ? -ESRCH : 0;
}

int bus_vm_summary(const char *name, BusVmSummary *ret) {
        if (arg_no_daemon)
                return -ESRCH;
        if (!list_cache.loaded)
                (void) list_cache_load();
        if (list_cache.error < 0)
                return list_cache.error;
        for (size_t i = 0; i < list_cache.n; i++)
                if (strcmp(list_cache.names[i], name) == 0) {
                        *ret = list_cache.vms[i];
                        return 0;
                }
        return -ENOENT;
}

/* ---- status VM ---- */

typedef struct VmStatusDisk {
        char *image;
        bool pending;
        uint64_t gain, report_time, compact_time, compact_gain;
        char *refused;
        uint32_t job;
} VmStatusDisk;

typedef struct VmStatus {
        bool from_daemon;
        bool connected, ready;
        uint64_t report_bytes, report_time;
        VmStatusDisk *disks;
        size_t n_disks;
} VmStatus;

static void vm_status_done(VmStatus *s) {
        for (size_t i = 0; i < s->n_disks; i++) {
                free(s->disks[i].image);
                free(s->disks[i].refused);
        }
        free(s->disks);
}

/* Appends d (its strings unset) with copies of image and refused (may be NULL). */
static int
vm_status_add_disk(VmStatus *s, const VmStatusDisk *d, const char *image, const char *refused) {
        VmStatusDisk *n = reallocarray(s->disks, s->n_disks + 1, sizeof(*n));

        if (!n)
                return -ENOMEM;
        s->disks = n;
        n[s->n_disks] = *d;
        n[s->n_disks].image = strdup(image);
        n[s->n_disks].refused = refused ? strdup(refused) : NULL;
        if (!n[s->n_disks].image || (refused && !n[s->n_disks].refused)) {
                free(n[s->n_disks].image);
                free(n[s->n_disks].refused);
                return -ENOMEM;
        }
        s->n_disks++;
        return 0;
}

/* From reclaimd: 0, -ESRCH (no daemon), or an exit status > 0 (logged). */
static int vm_status_from_bus(const char *name, VmStatus *s) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *vm_name;
        int connected, ready, r;

        if (arg_no_daemon)
                return -ESRCH;
        r = bus_open(&bus);
        if (r < 0)
                return r;
        r = sd_bus_call_method(
                bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "GetVM", &error, &reply, "s", name);
        if (r < 0)
                return call_failed(name, &error, r);
        r = sd_bus_message_read(
                reply, "sbbtt", &vm_name, &connected, &ready, &s->report_bytes, &s->report_time);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(sbttttsu)");
        while (r >= 0) {
                VmStatusDisk d = {};
                const char *image, *refused;
                int pending;

                r = sd_bus_message_read(
                        reply,
                        "(sbttttsu)",
                        &image,
                        &pending,
                        &d.gain,
                        &d.report_time,
                        &d.compact_time,
                        &d.compact_gain,
                        &refused,
                        &d.job);
                if (r <= 0)
                        break;
                d.pending = pending;
                r = vm_status_add_disk(s, &d, image, refused[0] ? refused : NULL);
        }
        if (r < 0)
                return call_failed(name, &error, r);
        s->from_daemon = true;
        s->connected = connected;
        s->ready = ready;
        return 0;
}

static uint64_t json_u64(json_object *o, const char *key) {
        json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return 0;
        return (uint64_t) MAX(json_object_get_int64(v), (int64_t) 0);
}

/* Without the daemon: the registry's disks and reclaimd's state file. 0 or an exit status. */
static int vm_status_from_files(const char *name, VmStatus *s) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(json_object_put_nullp) json_object *state = NULL;
        _cleanup_free_ char *where = NULL, *path = NULL;
        const RegistryVm *vm;
        json_object *report = NULL, *disks = NULL;

        if (load_registry(&reg, &where) < 0)
                return EXIT_ERROR;
        vm = registry_find(reg, name);
        if (!vm) {
                log_error("no VM named %s (looked in %s)", name, where);
                return EXIT_ERROR;
        }
        if (asprintf(&path, "%s/vms/%s.json", arg_state_dir ?: DEFAULT_STATE_DIR, vm->name) < 0)
                return log_error_errno(-ENOMEM, "Out of memory."), EXIT_ERROR;
        state = json_object_from_file(path); /* missing or damaged: no figures */
        if (state && json_object_object_get_ex(state, "last_report", &report)) {
                s->report_bytes = json_u64(report, "bytes");
                s->report_time = json_u64(report, "time");
        }
        if (state)
                (void) json_object_object_get_ex(state, "disks", &disks);
        for (size_t i = 0; i < vm->n_disks; i++) {
                VmStatusDisk d = {};
                const char *image = vm->disks[i].path, *refused = NULL;
                size_t n = disks && json_object_is_type(disks, json_type_array) ?
                        json_object_array_length(disks) :
                        0;

                for (size_t k = 0; k < n; k++) {
                        json_object *e = json_object_array_get_idx(disks, k), *v;

                        if (!json_object_object_get_ex(e, "image", &v) ||
                            strcmp(json_object_get_string(v) ?: "", image) != 0)
                                continue;
                        d.pending = json_object_object_get_ex(e, "pending", &v) &&
                                json_object_get_boolean(v);
                        d.report_time = json_u64(e, "report_time");
                        d.compact_time = json_u64(e, "last_compaction_time");
                        d.compact_gain = json_u64(e, "last_compaction_gain");
                        d.gain = d.report_time > d.compact_time ? json_u64(e, "reported_bytes") : 0;
                        if (json_object_object_get_ex(e, "refused", &v) &&
                            json_object_is_type(v, json_type_string))
                                refused = json_object_get_string(v);
                }
                if (vm_status_add_disk(s, &d, image, refused) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory."), EXIT_ERROR;
        }
        return 0;
}

static void print_help_status_vm(FILE *f) {
        fprintf(f, "Usage: reclaimctl status VM [--json]\n");
}

int verb_status_vm(int argc, char *argv[]) {
        _cleanup_(vm_status_done) VmStatus s = {};
        bool json = false;
        const char *name;
        int r;

        r = parse_json_only(argc, argv, 1, print_help_status_vm, &json);
        if (r >= 0)
                return r;
        name = argv[optind];
        r = vm_status_from_bus(name, &s);
        if (r == -ESRCH)
                r = vm_status_from_files(name, &s);
        if (r != 0)
                return r;

        if (json) {
                _cleanup_(json_object_put_nullp) json_object *o = json_object_new_object();
                json_object *disks = json_object_new_array(), *rep = json_object_new_object();

                json_object_object_add(o, "vm", json_object_new_string(name));
                json_object_object_add(o, "daemon", json_object_new_boolean(s.from_daemon));
                json_object_object_add(
                        o,
                        "guest_connected",
                        s.from_daemon ? json_object_new_boolean(s.connected) : NULL);
                json_object_object_add(
                        o, "agent_ready", s.from_daemon ? json_object_new_boolean(s.ready) : NULL);
                json_add_u64(rep, "bytes", s.report_bytes);
                json_add_u64(rep, "time", s.report_time);
                json_object_object_add(o, "last_report", rep);
                for (size_t i = 0; i < s.n_disks; i++) {
                        const VmStatusDisk *d = &s.disks[i];
                        json_object *e = json_object_new_object();

                        json_object_object_add(e, "image", json_object_new_string(d->image));
                        json_object_object_add(e, "pending", json_object_new_boolean(d->pending));
                        json_add_u64(e, "expected_gain", d->gain);
                        json_add_u64(e, "report_time", d->report_time);
                        json_add_u64(e, "last_compaction_time", d->compact_time);
                        json_add_u64(e, "last_compaction_gain", d->compact_gain);
                        json_object_object_add(
                                e,
                                "refused",
                                d->refused ? json_object_new_string(d->refused) : NULL);
                        json_object_object_add(
                                e, "job", d->job ? json_object_new_int64(d->job) : NULL);
                        json_object_array_add(disks, e);
                }
                json_object_object_add(o, "disks", disks);
                json_print(o);
                return EXIT_OK;
        }

        char a[FORMAT_BYTES_MAX], t[64];
        printf("%s\n", name);
        if (s.from_daemon)
                printf("  guest:       %s\n",
                       s.ready             ? "agent connected" :
                               s.connected ? "channel connected, no agent yet" :
                                             "not connected (VM stopped, or no agent)");
        else
                printf("  guest:       unknown (reclaimd is not running; figures from its state files)\n");
        if (s.report_time)
                printf("  last report: %s, %s freed\n",
                       format_time(t, sizeof(t), s.report_time),
                       format_bytes(a, sizeof(a), s.report_bytes));
        else
                printf("  last report: none\n");
        if (s.n_disks == 0)
                printf("  no qcow2 disk\n");
        for (size_t i = 0; i < s.n_disks; i++) {
                const VmStatusDisk *d = &s.disks[i];

                printf("  disk %s\n", d->image);
                if (d->refused)
                        printf("    refused:   %s (an explicit `reclaimctl compact %s` retries it)\n",
                               d->refused,
                               name);
                printf("    pending:   %s", d->pending ? "yes" : "no");
                if (d->gain)
                        printf(" (expected gain %s)", format_bytes(a, sizeof(a), d->gain));
                putchar('\n');
                if (d->compact_time)
                        printf("    compacted: %s, %s reclaimed\n",
                               format_time(t, sizeof(t), d->compact_time),
                               format_bytes(a, sizeof(a), d->compact_gain));
                else
                        printf("    compacted: never\n");
                if (d->job)
                        printf("    job:       %" PRIu32 " (see reclaimctl jobs)\n", d->job);
        }
        return EXIT_OK;
}

/* ---- jobs, cancel ---- */

static void print_help_jobs(FILE *f) {
        fprintf(f, "Usage: reclaimctl jobs [--json]\n");
}

int verb_jobs(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        json_object *arr = NULL;
        bool json = false;
        size_t n = 0;
        int r;

        r = parse_json_only(argc, argv, 0, print_help_jobs, &json);
        if (r >= 0)
                return r;
        if (bus_open_or_fail(&bus) < 0)
                return EXIT_ERROR;
        r = sd_bus_call_method(
                bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "ListJobs", &error, &reply, NULL);
        if (r >= 0)
                r = sd_bus_message_enter_container(reply, 'a', "(ussssttt)");
        if (r < 0)
                return call_failed("ListJobs", &error, r);
        if (json) {
                o = json_object_new_object();
                arr = json_object_new_array();
                json_object_object_add(o, "jobs", arr);
        }
        for (;;) {
                const char *vm, *image, *state, *phase;
                uint64_t done, total, gain;
                uint32_t id;
                char g[FORMAT_BYTES_MAX];

                r = sd_bus_message_read(
                        reply,
                        "(ussssttt)",
                        &id,
                        &vm,
                        &image,
                        &state,
                        &phase,
                        &done,
                        &total,
                        &gain);
                if (r < 0)
                        return call_failed("ListJobs", &error, r);
                if (r == 0)
                        break;
                if (json) {
                        json_object *e = json_object_new_object();

                        json_object_object_add(e, "id", json_object_new_int64(id));
                        json_object_object_add(e, "vm", json_object_new_string(vm));
                        json_object_object_add(e, "image", json_object_new_string(image));
                        json_object_object_add(e, "state", json_object_new_string(state));
                        json_object_object_add(
                                e, "phase", phase[0] ? json_object_new_string(phase) : NULL);
                        json_add_u64(e, "done", done);
                        json_add_u64(e, "total", total);
                        json_add_u64(e, "expected_gain", gain);
                        json_object_array_add(arr, e);
                        continue;
                }
                if (n++ == 0)
                        printf("%-6s %-16s %-8s %-14s %-10s %s\n",
                               "JOB",
                               "VM",
                               "STATE",
                               "PROGRESS",
                               "GAIN",
                               "IMAGE");
                char progress[32] = "-";
                if (phase[0])
                        (void) snprintf(
                                progress,
                                sizeof(progress),
                                "%s %3u%%",
                                phase,
                                total ? (unsigned) ((long double) MIN(done, total) * 100.0L / (long double) total) :
                                        0u);
                printf("%-6" PRIu32 " %-16s %-8s %-14s %-10s %s\n",
                       id,
                       vm,
                       state,
                       progress,
                       gain ? format_bytes(g, sizeof(g), gain) : "-",
                       image);
        }
        if (json)
                json_print(o);
        else if (n == 0)
                printf("No jobs.\n");
        return EXIT_OK;
}

static void print_help_cancel(FILE *f) {
        fprintf(f, "Usage: reclaimctl cancel JOB\n");
}

int verb_cancel(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        unsigned long v;
        char *end;
        int r;

        if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
                print_help_cancel(stdout);
                return EXIT_OK;
        }
        if (argc != 2) {
                print_help_cancel(stderr);
                return EXIT_USAGE;
        }
        errno = 0;
        v = strtoul(argv[1], &end, 10);
        if (errno != 0 || !argv[1][0] || *end || argv[1][0] == '-' || v == 0 || v > UINT32_MAX) {
                log_error("Not a job number: %s", argv[1]);
                return EXIT_USAGE;
        }
        if (bus_open_or_fail(&bus) < 0)
                return EXIT_ERROR;
        r = sd_bus_call_method(
                bus,
                BUS_NAME,
                BUS_PATH,
                BUS_INTERFACE,
                "CancelJob",
                &error,
                NULL,
                "u",
                (uint32_t) v);
        if (r < 0)
                return call_failed("cancel", &error, r);
        printf("Job %lu cancelled.\n", v);
        return EXIT_OK;
}

/* ---- reclaim VM ---- */

typedef struct ReclaimFollow {
        const char *vm;
        Progress *bar;
        bool reported;
        uint64_t bytes;
        uint32_t filesystems;
        bool daemon_gone;
} ReclaimFollow;

static int on_guest_progress(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        ReclaimFollow *f = userdata;
        const char *vm, *mount;
        uint64_t done, total;
        char label[64];

        if (sd_bus_message_read(m, "sstt", &vm, &mount, &done, &total) < 0 ||
            strcmp(vm, f->vm) != 0)
                return 0;
        (void) snprintf(label, sizeof(label), "guest %s", mount);
        progress_update(f->bar, label, done, total);
        return 0;
}

static int on_guest_report(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        ReclaimFollow *f = userdata;
        const char *vm;
        uint64_t bytes;
        uint32_t n;

        if (sd_bus_message_read(m, "stu", &vm, &bytes, &n) < 0 || strcmp(vm, f->vm) != 0)
                return 0;
        f->reported = true;
        f->bytes = bytes;
        f->filesystems = n;
        return 0;
}

/* Whether the VM's guest agent is still connected: 1, 0, or -errno. */
static int guest_connected(sd_bus *bus, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *n;
        int connected, ready, r;
        uint64_t a, b;

        r = sd_bus_call_method(
                bus, BUS_NAME, BUS_PATH, BUS_INTERFACE, "GetVM", NULL, &reply, "s", name);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "sbbtt", &n, &connected, &ready, &a, &b);
        return r < 0 ? r : ready;
}

/* {vm, request} and, after the report, {bytes, filesystems}. */
static void print_reclaim_json(const char *vm, uint64_t seq, const ReclaimFollow *f) {
        _cleanup_(json_object_put_nullp) json_object *o = json_object_new_object();

        json_object_object_add(o, "vm", json_object_new_string(vm));
        json_add_u64(o, "request", seq);
        if (f) {
                json_add_u64(o, "bytes", f->bytes);
                json_add_u64(o, "filesystems", f->filesystems);
        }
        json_print(o);
}

static void print_help_reclaim(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl reclaim VM [--mode auto|trim|zero] [--rate SIZE] [--reserve SIZE|PERCENT%%]\n"
                "                            [--no-wait] [--json]\n");
}

int verb_reclaim(int argc, char *argv[]) {
        static const struct option options[] = {
                { "mode", required_argument, NULL, 'm' },
                { "rate", required_argument, NULL, 'r' },
                { "reserve", required_argument, NULL, 'R' },
                { "no-wait", no_argument, NULL, 'n' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(progress_freep) Progress *bar = NULL;
        const char *mode = NULL;
        uint64_t rate = 0, reserve = 0, seq = 0;
        uint32_t reserve_percent = 0;
        bool wait = true, json = false;
        ReclaimFollow f = {};
        int c, r, n_opts = 0;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'm':
                        if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "trim") != 0 &&
                            strcmp(optarg, "zero") != 0) {
                                log_error("--mode must be auto, trim or zero, not %s", optarg);
                                return EXIT_USAGE;
                        }
                        mode = optarg;
                        break;
                case 'r':
                        if (parse_size(optarg, &rate) < 0 || rate == 0) {
                                log_error("Invalid --rate: %s", optarg);
                                return EXIT_USAGE;
                        }
                        break;
                case 'R': {
                        size_t l = strlen(optarg);

                        if (l > 1 && optarg[l - 1] == '%') {
                                char *end;
                                unsigned long p;

                                errno = 0;
                                p = strtoul(optarg, &end, 10);
                                if (errno || end != optarg + l - 1 || p > 100 || optarg[0] == '-') {
                                        log_error("Invalid --reserve: %s", optarg);
                                        return EXIT_USAGE;
                                }
                                reserve_percent = (uint32_t) p;
                        } else if (parse_size(optarg, &reserve) < 0) {
                                log_error("Invalid --reserve: %s", optarg);
                                return EXIT_USAGE;
                        }
                        break;
                }
                case 'n':
                        wait = false;
                        break;
                case 'j':
                        json = true;
                        break;
                case 'h':
                        print_help_reclaim(stdout);
                        return EXIT_OK;
                default:
                        print_help_reclaim(stderr);
                        return EXIT_USAGE;
                }
        if (argc - optind != 1) {
                print_help_reclaim(stderr);
                return EXIT_USAGE;
        }
        f.vm = argv[optind];
        if (bus_open_or_fail(&bus) < 0)
                return EXIT_ERROR;
        if (wait) {
                if (subscribe(
                            bus,
                            "GuestProgress",
                            on_guest_progress,
                            "GuestReport",
                            on_guest_report,
                            &f,
                            &f.daemon_gone) < 0)
                        return EXIT_ERROR;
        }
        r = sd_bus_message_new_method_call(
                bus, &call, BUS_NAME, BUS_PATH, BUS_INTERFACE, "Reclaim");
        if (r >= 0)
                r = sd_bus_message_append(call, "s", f.vm);
        n_opts = !!mode + !!rate + !!reserve + !!reserve_percent;
        if (r >= 0)
                r = sd_bus_message_open_container(call, 'a', "{sv}");
        if (r >= 0 && mode)
                r = sd_bus_message_append(call, "{sv}", "mode", "s", mode);
        if (r >= 0 && rate)
                r = sd_bus_message_append(call, "{sv}", "rate", "t", rate);
        if (r >= 0 && reserve)
                r = sd_bus_message_append(call, "{sv}", "reserve", "t", reserve);
        if (r >= 0 && reserve_percent)
                r = sd_bus_message_append(call, "{sv}", "reserve_percent", "u", reserve_percent);
        if (r >= 0)
                r = sd_bus_message_close_container(call);
        if (r < 0) {
                log_error_errno(r, "Cannot build the request: %m");
                return EXIT_ERROR;
        }
        log_debug("Reclaim(%s) with %d option(s).", f.vm, n_opts);
        r = sd_bus_call(bus, call, 0, &error, &reply);
        if (r >= 0)
                r = sd_bus_message_read(reply, "t", &seq);
        if (r < 0)
                return call_failed(f.vm, &error, r);
        if (!wait) {
                if (json)
                        print_reclaim_json(f.vm, seq, NULL);
                else
                        printf("Asked the guest of %s to reclaim (request %" PRIu64 ").\n",
                               f.vm,
                               seq);
                return EXIT_OK;
        }

        bar = progress_new(stderr, !json && isatty(STDERR_FILENO));
        f.bar = bar;
        uint64_t next_check = 0;
        while (!f.reported && !f.daemon_gone) {
                struct timespec ts;
                uint64_t now;

                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        break;
                if (r > 0)
                        continue;
                (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                now = (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
                if (now >= next_check) {
                        r = guest_connected(bus, f.vm);
                        if (r <= 0)
                                break;
                        next_check = now + GUEST_CHECK_USEC;
                }
                r = sd_bus_wait(bus, GUEST_CHECK_USEC);
                if (r < 0 && r != -EINTR)
                        break;
        }
        progress_finish(bar);
        if (!f.reported) {
                if (f.daemon_gone)
                        log_error("reclaimd stopped before the guest of %s reported.", f.vm);
                else
                        log_error("The guest agent of %s disconnected before it reported.", f.vm);
                return EXIT_ERROR;
        }
        char a[FORMAT_BYTES_MAX];
        if (json)
                print_reclaim_json(f.vm, seq, &f);
        else
                printf("%s: the guest freed %s on %" PRIu32 " filesystem(s).\n",
                       f.vm,
                       format_bytes(a, sizeof(a), f.bytes),
                       f.filesystems);
        return EXIT_OK;
}
