/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The D-Bus API: org.reclaim.Manager1 at /org/reclaim/Manager1 on the system bus
 * (docs/host.md, "D-Bus API"; the bus policy in units/org.reclaim.Manager1.conf lets only
 * root talk to it, and every method that changes something checks the caller's uid again).
 *
 * Methods
 *   ListVMs() -> a(sbuutt)               name, guest connected, disks, pending disks,
 *                                         last report bytes, last report time (usec)
 *   GetVM(s name) -> s b b t t a(sbttttsu)
 *                                         name, channel connected, agent ready, last report
 *                                         bytes and time; per disk: image, pending, expected
 *                                         gain, report time, last compaction time and gain,
 *                                         refusal ("" none), job id (0 none)
 *   Compact(s name, a{sv} options) -> au  queue every disk of a stopped VM (options: force b)
 *   CompactAll(a{sv} options) -> au      the nightly run: disks of stopped VMs passing their
 *                                         threshold, biggest gain first, inside the window
 *                                         (options: now b, to run outside it)
 *   Reclaim(s name, a{sv} options) -> t  ask the guest agent to reclaim now (options: mode s
 *                                         "auto"|"trim"|"zero", rate t, reserve t,
 *                                         reserve_percent u); returns the request's seq
 *   ListJobs() -> a(ussssttt)            id, vm, image, state, phase, done, total, gain
 *   CancelJob(u id)
 *   Reload()
 *   RefreshStatus()                      collect the status figures again (in a child)
 * Properties: Version s, NVMs u, NConnected u, NPendingDisks u, NRunningJobs u, NQueuedJobs u;
 *   the figures of `reclaimctl status` (status-refresh.c): StatusTime t (s since the epoch,
 *   0: none yet), Storages a(ssstttttttttdas), Images a(sssstttttttbas), StatusJSON s
 * Signals: JobNew(u s s), JobProgress(u s t t), JobRemoved(u s s s i t s) (id, vm, image,
 *   result "done"|"in-use"|"refused"|"failed"|"timeout"|"cancelled"|"window-closed", exit status,
 * bytes reclaimed, the helper's JSON), GuestReport(s t u), GuestProgress(s s t t).
 *
 * Strings from guests never reach the bus except a Progress mount point, which is checked
 * to be UTF-8 and bounded first.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "reclaim.pb-c.h"

#define ERROR_NO_SUCH_VM BUS_INTERFACE ".Error.NoSuchVM"
#define ERROR_NO_SUCH_JOB BUS_INTERFACE ".Error.NoSuchJob"
#define ERROR_IN_USE BUS_INTERFACE ".Error.InUse"
#define ERROR_NOT_CONNECTED BUS_INTERFACE ".Error.NotConnected"
#define ERROR_QUEUE_FULL BUS_INTERFACE ".Error.QueueFull"
#define ERROR_OUTSIDE_WINDOW BUS_INTERFACE ".Error.OutsideWindow"

/* The longest guest string (a mount point) we put into a signal. */
#define GUEST_STRING_MAX 4096u

static const char *job_state_to_string(JobState s) {
        return s == JOB_RUNNING ? "running" : "queued";
}

/* Whether s is valid UTF-8 and at most max bytes long. */
static bool string_is_safe(const char *s, size_t max) {
        const unsigned char *p = (const unsigned char *) s;
        size_t n = 0;

        while (*p) {
                unsigned c = *p, len;

                if (c < 0x80)
                        len = 1;
                else if ((c & 0xe0) == 0xc0 && c >= 0xc2)
                        len = 2;
                else if ((c & 0xf0) == 0xe0)
                        len = 3;
                else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
                        len = 4;
                else
                        return false;
                for (unsigned i = 1; i < len; i++)
                        if ((p[i] & 0xc0) != 0x80)
                                return false;
                /* overlong 3/4-byte forms and surrogates */
                if (len == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)))
                        return false;
                if (len == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
                        return false;
                p += len;
                n += len;
                if (n > max)
                        return false;
        }
        return true;
}

static const char *safe_string(const char *s) {
        return s && string_is_safe(s, SIZE_MAX) ? s : "";
}

/* Only root (or the daemon's own user, for tests under a private bus) may change things. */
static int check_caller(sd_bus_message *msg, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t uid;
        int r;

        r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID, &creds);
        if (r < 0)
                return r;
        r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0)
                return r;
        if (uid != 0 && uid != geteuid())
                return sd_bus_error_set(
                        error, SD_BUS_ERROR_ACCESS_DENIED, "Only root may do this.");
        return 0;
}

static Vm *find_vm_or_error(Manager *m, const char *name, sd_bus_error *error) {
        Vm *vm = manager_find_vm(m, name);

        if (!vm)
                (void) sd_bus_error_setf(error, ERROR_NO_SUCH_VM, "No VM named '%s'.", name);
        return vm;
}

static int method_list_vms(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(sbuutt)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < m->n_vms; i++) {
                const Vm *vm = m->vms[i];
                unsigned pending = 0;

                for (size_t k = 0; k < vm->n_disks; k++)
                        pending += vm->disks[k].pending;
                r = sd_bus_message_append(
                        reply,
                        "(sbuutt)",
                        vm->name,
                        (int) guest_channel_is_connected(vm->channel),
                        (uint32_t) vm->n_disks,
                        (uint32_t) pending,
                        vm->last_report_bytes,
                        vm->last_report_time);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_get_vm(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const char *name;
        Vm *vm;
        int r;

        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        vm = find_vm_or_error(m, name, error);
        if (!vm)
                return -ENOENT;
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append(
                reply,
                "sbbtt",
                vm->name,
                (int) guest_channel_is_connected(vm->channel),
                (int) guest_channel_is_ready(vm->channel),
                vm->last_report_bytes,
                vm->last_report_time);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(sbttttsu)");
        if (r < 0)
                return r;
        for (size_t k = 0; k < vm->n_disks; k++) {
                const VmDisk *d = &vm->disks[k];
                const Job *j = manager_job_for_path(m, d->path);

                r = sd_bus_message_append(
                        reply,
                        "(sbttttsu)",
                        safe_string(d->path),
                        (int) d->pending,
                        vm_disk_expected_gain(vm, d),
                        d->report_time,
                        d->last_compact_time,
                        d->last_compact_gain,
                        safe_string(d->refused),
                        j ? j->id : 0u);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

typedef struct Options {
        bool force, now;
        const char *mode;
        uint64_t rate, reserve;
        uint32_t reserve_percent;
} Options;

/* Reads an a{sv} of options; allowed: the keys this method knows ("force", "mode", ...). */
static int read_options(sd_bus_message *msg, const char *allowed, Options *o, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(msg, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(msg, 'e', "sv")) > 0) {
                const char *key;
                char want[32];

                r = sd_bus_message_read(msg, "s", &key);
                if (r < 0)
                        return r;
                (void) snprintf(want, sizeof(want), " %s ", key);
                if (strlen(key) > 20 || !strstr(allowed, want))
                        return sd_bus_error_setf(
                                error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'.", key);
                if (strcmp(key, "force") == 0 || strcmp(key, "now") == 0) {
                        int b = 0;
                        r = sd_bus_message_read(msg, "v", "b", &b);
                        *(key[0] == 'f' ? &o->force : &o->now) = b;
                } else if (strcmp(key, "mode") == 0)
                        r = sd_bus_message_read(msg, "v", "s", &o->mode);
                else if (strcmp(key, "rate") == 0)
                        r = sd_bus_message_read(msg, "v", "t", &o->rate);
                else if (strcmp(key, "reserve") == 0)
                        r = sd_bus_message_read(msg, "v", "t", &o->reserve);
                else
                        r = sd_bus_message_read(msg, "v", "u", &o->reserve_percent);
                if (r < 0)
                        return sd_bus_error_setf(
                                error,
                                SD_BUS_ERROR_INVALID_ARGS,
                                "Option '%s' has the wrong type.",
                                key);
                r = sd_bus_message_exit_container(msg);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(msg);
}

static int reply_job_ids(sd_bus_message *msg, const uint32_t *ids, size_t n) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_append_array(reply, 'u', ids, n * sizeof(uint32_t));
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_compact(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ uint32_t *ids = NULL;
        Manager *m = userdata;
        Options o = {};
        const char *name;
        size_t n = 0;
        Vm *vm;
        int r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = read_options(msg, " force ", &o, error);
        if (r < 0)
                return r;
        vm = find_vm_or_error(m, name, error);
        if (!vm)
                return -ENOENT;
        if (guest_channel_is_connected(vm->channel))
                return sd_bus_error_setf(
                        error,
                        ERROR_IN_USE,
                        "%s is running (its guest channel is connected); stop it first.",
                        vm->name);
        ids = calloc(MAX(vm->n_disks, (size_t) 1), sizeof(uint32_t));
        if (!ids)
                return -ENOMEM;
        for (size_t k = 0; k < vm->n_disks; k++) {
                VmDisk *d = &vm->disks[k];
                Job *j;

                /* an admin's request retries an image refused before (it may have been fixed) */
                d->refused = mfree(d->refused);
                r = manager_enqueue(m, vm, d, JOB_REQUESTED, o.force, &j);
                if (r == -EBUSY)
                        return sd_bus_error_setf(
                                error,
                                ERROR_IN_USE,
                                "%s is in use (a running VM, qemu-nbd or another program holds its image locks); stop it first.",
                                d->path);
                if (r == -ENOSPC)
                        return sd_bus_error_set(
                                error, ERROR_QUEUE_FULL, "Too many jobs are queued.");
                if (r < 0)
                        return sd_bus_error_set_errnof(error, r, "Cannot queue %s: %m", d->path);
                ids[n++] = j->id;
        }
        log_info("%s: compaction of %zu disk(s) requested over D-Bus.", vm->name, n);
        r = reply_job_ids(msg, ids, n);
        (void) manager_schedule(m);
        return r;
}

static int method_compact_all(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ uint32_t *ids = NULL;
        Manager *m = userdata;
        Options o = {};
        int n, r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = read_options(msg, " now ", &o, error);
        if (r < 0)
                return r;
        if (!o.now && !manager_in_window(m))
                return sd_bus_error_setf(
                        error,
                        ERROR_OUTSIDE_WINDOW,
                        "Outside the nightly window (%02d:%02d-%02d:%02d in reclaimd.conf); use the option 'now' (reclaimctl compact --all --now) to run anyway.",
                        m->config.window_start / 60,
                        m->config.window_start % 60,
                        m->config.window_end / 60,
                        m->config.window_end % 60);
        n = manager_enqueue_all(m, !o.now, &ids);
        if (n < 0)
                return n;
        return reply_job_ids(msg, ids, (size_t) n);
}

static int method_reclaim(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        Options o = {};
        const char *name;
        int mode = RECLAIM__MODE__MODE_UNSPECIFIED;
        int64_t seq;
        Vm *vm;
        int r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = sd_bus_message_read(msg, "s", &name);
        if (r < 0)
                return r;
        r = read_options(msg, " mode rate reserve reserve_percent ", &o, error);
        if (r < 0)
                return r;
        if (o.mode) {
                if (strcmp(o.mode, "auto") == 0)
                        mode = RECLAIM__MODE__MODE_AUTO;
                else if (strcmp(o.mode, "trim") == 0)
                        mode = RECLAIM__MODE__MODE_TRIM;
                else if (strcmp(o.mode, "zero") == 0)
                        mode = RECLAIM__MODE__MODE_ZERO;
                else
                        return sd_bus_error_setf(
                                error,
                                SD_BUS_ERROR_INVALID_ARGS,
                                "mode must be auto, trim or zero, not '%s'.",
                                o.mode);
        }
        if (o.reserve_percent > 100)
                return sd_bus_error_set(
                        error, SD_BUS_ERROR_INVALID_ARGS, "reserve_percent must be 0-100.");
        vm = find_vm_or_error(m, name, error);
        if (!vm)
                return -ENOENT;
        seq = guest_channel_request_reclaim(
                vm->channel, mode, o.rate, o.reserve, o.reserve_percent);
        if (seq == -ENOTCONN)
                return sd_bus_error_setf(
                        error,
                        ERROR_NOT_CONNECTED,
                        "The guest agent of %s is not connected (is the VM running, with reclaim-agent?).",
                        vm->name);
        if (seq < 0)
                return sd_bus_error_set_errnof(
                        error, (int) seq, "Cannot reach the guest of %s: %m", vm->name);
        return sd_bus_reply_method_return(msg, "t", (uint64_t) seq);
}

static int method_list_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        int r;

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_open_container(reply, 'a', "(ussssttt)");
        if (r < 0)
                return r;
        for (const Job *j = m->jobs; j; j = j->next) {
                r = sd_bus_message_append(
                        reply,
                        "(ussssttt)",
                        j->id,
                        j->vm_name,
                        safe_string(j->image),
                        job_state_to_string(j->state),
                        j->phase,
                        j->done,
                        j->total,
                        j->expected_gain);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_cancel_job(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        uint32_t id;
        int r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = sd_bus_message_read(msg, "u", &id);
        if (r < 0)
                return r;
        r = manager_cancel_job(m, id);
        if (r == -ENOENT)
                return sd_bus_error_setf(error, ERROR_NO_SUCH_JOB, "No job %" PRIu32 ".", id);
        if (r < 0)
                return r;
        log_info("Job %" PRIu32 " cancelled over D-Bus.", id);
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_reload(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        int r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = manager_reload(m);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Reload failed: %m");
        return sd_bus_reply_method_return(msg, NULL);
}

static int property_version(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", RECLAIM_VERSION);
}

static int property_count(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        Manager *m = userdata;
        uint32_t v = 0;

        if (strcmp(property, "NVMs") == 0)
                v = (uint32_t) m->n_vms;
        else if (strcmp(property, "NConnected") == 0)
                v = manager_n_connected(m);
        else if (strcmp(property, "NPendingDisks") == 0)
                v = manager_n_pending(m);
        else if (strcmp(property, "NRunningJobs") == 0)
                v = m->n_jobs;
        else if (strcmp(property, "NQueuedJobs") == 0)
                v = m->n_queued;
        return sd_bus_message_append(reply, "u", v);
}

/* A json number member as a double (NaN when null or missing). */
static double json_double_of(json_object *o, const char *key) {
        json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) ||
            !(json_object_is_type(v, json_type_double) || json_object_is_type(v, json_type_int)))
                return __builtin_nan("");
        return json_object_get_double(v);
}

static const char *json_string_of(json_object *o, const char *key) {
        json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_string))
                return "";
        return safe_string(json_object_get_string(v));
}

/* The "storages" array of the last status document, or NULL. */
static json_object *status_storages(const Manager *m) {
        json_object *a;

        if (!m->status_json || !json_object_object_get_ex(m->status_json, "storages", &a) ||
            !json_object_is_type(a, json_type_array))
                return NULL;
        return a;
}

static int append_warnings(sd_bus_message *reply, json_object *o) {
        json_object *w;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        if (o && json_object_object_get_ex(o, "warnings", &w) &&
            json_object_is_type(w, json_type_array))
                for (size_t i = 0; i < json_object_array_length(w); i++) {
                        json_object *e = json_object_array_get_idx(w, i);

                        if (json_object_is_type(e, json_type_string)) {
                                r = sd_bus_message_append(
                                        reply, "s", safe_string(json_object_get_string(e)));
                                if (r < 0)
                                        return r;
                        }
                }
        return sd_bus_message_close_container(reply);
}

/* Storages: a(ssstttttttttdas): mount point, source, fstype, capacity, used, free, virtual,
 * file, allocated, reclaimable, growth, shortfall, over-allocation ratio (NaN: no capacity),
 * warnings. */
static int property_storages(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        json_object *a = status_storages(userdata);
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(ssstttttttttdas)");
        for (size_t i = 0; r >= 0 && a && i < json_object_array_length(a); i++) {
                json_object *s = json_object_array_get_idx(a, i);

                r = sd_bus_message_open_container(reply, 'r', "ssstttttttttdas");
                if (r >= 0)
                        r = sd_bus_message_append(
                                reply,
                                "ssstttttttttd",
                                json_string_of(s, "storage"),
                                json_string_of(s, "source"),
                                json_string_of(s, "fstype"),
                                json_u64_of(s, "capacity_bytes"),
                                json_u64_of(s, "used_bytes"),
                                json_u64_of(s, "free_bytes"),
                                json_u64_of(s, "virtual_bytes"),
                                json_u64_of(s, "file_bytes"),
                                json_u64_of(s, "allocated_bytes"),
                                json_u64_of(s, "reclaimable_bytes"),
                                json_u64_of(s, "growth_bytes"),
                                json_u64_of(s, "shortfall_bytes"),
                                json_double_of(s, "over_allocation_ratio"));
                if (r >= 0)
                        r = append_warnings(reply, s);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

/* Images: a(sssstttttttbas): VM, disk, image, storage, virtual size, file size, allocated,
 * reclaimable, guest-reported bytes, last compaction time (s since the epoch, 0 never) and
 * gain, in use, warnings. */
static int property_images(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        json_object *a = status_storages(userdata);
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(sssstttttttbas)");
        for (size_t i = 0; r >= 0 && a && i < json_object_array_length(a); i++) {
                json_object *s = json_object_array_get_idx(a, i), *disks, *v;

                if (!json_object_object_get_ex(s, "disks", &disks) ||
                    !json_object_is_type(disks, json_type_array))
                        continue;
                for (size_t k = 0; r >= 0 && k < json_object_array_length(disks); k++) {
                        json_object *d = json_object_array_get_idx(disks, k);

                        r = sd_bus_message_open_container(reply, 'r', "sssstttttttbas");
                        if (r >= 0)
                                r = sd_bus_message_append(
                                        reply,
                                        "sssstttttttb",
                                        json_string_of(d, "vm"),
                                        json_string_of(d, "disk"),
                                        json_string_of(d, "image"),
                                        json_string_of(s, "storage"),
                                        json_u64_of(d, "virtual_size"),
                                        json_u64_of(d, "file_size"),
                                        json_u64_of(d, "allocated_bytes"),
                                        json_u64_of(d, "reclaimable_bytes"),
                                        json_u64_of(d, "guest_reported_bytes"),
                                        json_u64_of(d, "last_compaction_time"),
                                        json_u64_of(d, "last_compaction_gain"),
                                        (int) (json_object_object_get_ex(d, "in_use", &v) &&
                                               json_object_get_boolean(v)));
                        if (r >= 0)
                                r = append_warnings(reply, d);
                        if (r >= 0)
                                r = sd_bus_message_close_container(reply);
                }
        }
        if (r >= 0)
                r = sd_bus_message_close_container(reply);
        return r;
}

static int property_status_time(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        Manager *m = userdata;

        return sd_bus_message_append(reply, "t", json_u64_of(m->status_json, "time"));
}

static int property_status_json(
        sd_bus *bus,
        const char *path,
        const char *interface,
        const char *property,
        sd_bus_message *reply,
        void *userdata,
        sd_bus_error *error) {
        Manager *m = userdata;
        const char *s = m->status_json ?
                json_object_to_json_string_ext(m->status_json, JSON_C_TO_STRING_PLAIN) :
                "";

        return sd_bus_message_append(reply, "s", safe_string(s));
}

static int method_refresh_status(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        int r;

        r = check_caller(msg, error);
        if (r != 0)
                return r;
        r = manager_refresh_status(userdata);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Cannot collect the status figures: %m");
        return sd_bus_reply_method_return(msg, NULL);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("NVMs", "u", property_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("NConnected", "u", property_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY(
                "NPendingDisks", "u", property_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY(
                "NRunningJobs", "u", property_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("NQueuedJobs", "u", property_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY(
                "StatusTime",
                "t",
                property_status_time,
                0,
                SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION),
        SD_BUS_PROPERTY(
                "Storages",
                "a(ssstttttttttdas)",
                property_storages,
                0,
                SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION),
        SD_BUS_PROPERTY(
                "Images",
                "a(sssstttttttbas)",
                property_images,
                0,
                SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION),
        SD_BUS_PROPERTY(
                "StatusJSON",
                "s",
                property_status_json,
                0,
                SD_BUS_VTABLE_PROPERTY_EMITS_INVALIDATION),
        SD_BUS_METHOD_WITH_ARGS(
                "RefreshStatus", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_refresh_status, 0),
        SD_BUS_METHOD_WITH_ARGS(
                "ListVMs",
                SD_BUS_NO_ARGS,
                SD_BUS_RESULT("a(sbuutt)", vms),
                method_list_vms,
                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS(
                "GetVM",
                SD_BUS_ARGS("s", name),
                SD_BUS_RESULT(
                        "s",
                        name,
                        "b",
                        connected,
                        "b",
                        agent_ready,
                        "t",
                        last_report_bytes,
                        "t",
                        last_report_time,
                        "a(sbttttsu)",
                        disks),
                method_get_vm,
                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS(
                "Compact",
                SD_BUS_ARGS("s", name, "a{sv}", options),
                SD_BUS_RESULT("au", jobs),
                method_compact,
                0),
        SD_BUS_METHOD_WITH_ARGS(
                "CompactAll",
                SD_BUS_ARGS("a{sv}", options),
                SD_BUS_RESULT("au", jobs),
                method_compact_all,
                0),
        SD_BUS_METHOD_WITH_ARGS(
                "Reclaim",
                SD_BUS_ARGS("s", name, "a{sv}", options),
                SD_BUS_RESULT("t", request),
                method_reclaim,
                0),
        SD_BUS_METHOD_WITH_ARGS(
                "ListJobs",
                SD_BUS_NO_ARGS,
                SD_BUS_RESULT("a(ussssttt)", jobs),
                method_list_jobs,
                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS(
                "CancelJob", SD_BUS_ARGS("u", id), SD_BUS_NO_RESULT, method_cancel_job, 0),
        SD_BUS_METHOD_WITH_ARGS("Reload", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_reload, 0),
        SD_BUS_SIGNAL_WITH_ARGS("JobNew", SD_BUS_ARGS("u", id, "s", vm, "s", image), 0),
        SD_BUS_SIGNAL_WITH_ARGS(
                "JobProgress", SD_BUS_ARGS("u", id, "s", phase, "t", done, "t", total), 0),
        SD_BUS_SIGNAL_WITH_ARGS(
                "JobRemoved",
                SD_BUS_ARGS(
                        "u",
                        id,
                        "s",
                        vm,
                        "s",
                        image,
                        "s",
                        result,
                        "i",
                        status,
                        "t",
                        reclaimed,
                        "s",
                        json),
                0),
        SD_BUS_SIGNAL_WITH_ARGS(
                "GuestReport", SD_BUS_ARGS("s", vm, "t", bytes, "u", filesystems), 0),
        SD_BUS_SIGNAL_WITH_ARGS(
                "GuestProgress", SD_BUS_ARGS("s", vm, "s", mount_point, "t", done, "t", total), 0),
        SD_BUS_VTABLE_END,
};

int manager_bus_open(Manager *m) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0)
                return r;
        r = sd_bus_add_object_vtable(bus, NULL, BUS_PATH, BUS_INTERFACE, manager_vtable, m);
        if (r < 0)
                return r;
        r = sd_bus_request_name(bus, BUS_NAME, 0);
        if (r == -EEXIST || r == -EALREADY)
                return -EEXIST;
        if (r < 0)
                return r;
        r = sd_bus_attach_event(bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return r;
        log_info("D-Bus API on the system bus as %s.", BUS_NAME);
        m->bus = TAKE_PTR(bus);
        return 0;
}

void bus_emit_job_new(Manager *m, const Job *j) {
        if (m->bus)
                (void) sd_bus_emit_signal(
                        m->bus,
                        BUS_PATH,
                        BUS_INTERFACE,
                        "JobNew",
                        "uss",
                        j->id,
                        j->vm_name,
                        safe_string(j->image));
}

void bus_emit_job_progress(Manager *m, const Job *j) {
        if (m->bus)
                (void) sd_bus_emit_signal(
                        m->bus,
                        BUS_PATH,
                        BUS_INTERFACE,
                        "JobProgress",
                        "ustt",
                        j->id,
                        safe_string(j->phase),
                        j->done,
                        j->total);
}

void bus_emit_job_removed(
        Manager *m, const Job *j, const char *result, int status, uint64_t reclaimed) {
        if (m->bus)
                (void) sd_bus_emit_signal(
                        m->bus,
                        BUS_PATH,
                        BUS_INTERFACE,
                        "JobRemoved",
                        "usssits",
                        j->id,
                        j->vm_name,
                        safe_string(j->image),
                        result,
                        (int32_t) status,
                        reclaimed,
                        j->state == JOB_RUNNING ? safe_string(j->output) : "");
}

void bus_emit_guest_report(Manager *m, const Vm *vm) {
        if (m->bus)
                (void) sd_bus_emit_signal(
                        m->bus,
                        BUS_PATH,
                        BUS_INTERFACE,
                        "GuestReport",
                        "stu",
                        vm->name,
                        vm->last_report_bytes,
                        (uint32_t) vm->last_report_filesystems);
}

void bus_emit_guest_progress(
        Manager *m, const Vm *vm, const char *mount_point, uint64_t done, uint64_t total) {
        if (!m->bus)
                return;
        if (!string_is_safe(mount_point, GUEST_STRING_MAX))
                mount_point = ""; /* the guest's bytes are not ours to pass on */
        (void) sd_bus_emit_signal(
                m->bus,
                BUS_PATH,
                BUS_INTERFACE,
                "GuestProgress",
                "sstt",
                vm->name,
                mount_point,
                done,
                total);
}

void bus_emit_status_changed(Manager *m) {
        if (m->bus)
                (void) sd_bus_emit_properties_changed(
                        m->bus,
                        BUS_PATH,
                        BUS_INTERFACE,
                        "StatusTime",
                        "Storages",
                        "Images",
                        "StatusJSON",
                        NULL);
}

void bus_emit_counts_changed(Manager *m) {
        uint32_t *last = m->bus_counts, now[ELEMENTSOF(m->bus_counts)];

        if (!m->bus)
                return;
        now[0] = (uint32_t) m->n_vms;
        now[1] = manager_n_connected(m);
        now[2] = manager_n_pending(m);
        now[3] = m->n_jobs;
        now[4] = m->n_queued;
        if (memcmp(now, last, sizeof(now)) == 0)
                return;
        memcpy(last, now, sizeof(now));
        (void) sd_bus_emit_properties_changed(
                m->bus,
                BUS_PATH,
                BUS_INTERFACE,
                "NVMs",
                "NConnected",
                "NPendingDisks",
                "NRunningJobs",
                "NQueuedJobs",
                NULL);
}
