/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The manager: event loop, signals, watchdog, the VMs from the registry and their state.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "macro.h"
#include "manager.h"

static Vm *vm_free(Vm *vm) {
        if (!vm)
                return NULL;
        guest_channel_free(vm->channel);
        for (size_t i = 0; i < vm->n_disks; i++) {
                free(vm->disks[i].path);
                free(vm->disks[i].refused);
        }
        free(vm->disks);
        free(vm->name);
        free(vm->channel_path);
        return mfree(vm);
}

static void manager_free_vms(Manager *m) {
        for (size_t i = 0; i < m->n_vms; i++)
                vm_free(m->vms[i]);
        m->vms = mfree(m->vms);
        m->n_vms = 0;
}

static void manager_unwatch(Manager *m) {
        for (size_t i = 0; i < m->n_watches; i++)
                sd_event_source_disable_unref(m->watches[i]);
        m->watches = mfree(m->watches);
        m->n_watches = 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        manager_jobs_abort(m);
        manager_status_abort(m);
        m->status_timer = sd_event_source_disable_unref(m->status_timer);
        manager_free_vms(m);
        manager_unwatch(m);
        m->reload_timer = sd_event_source_disable_unref(m->reload_timer);
        m->retry_timer = sd_event_source_disable_unref(m->retry_timer);
        m->bus = sd_bus_flush_close_unref(m->bus);
        sd_event_unref(m->event);
        manager_config_done(&m->config);
        registry_paths_done(&m->paths);
        free(m->config_path);
        return mfree(m);
}

Vm *manager_find_vm(Manager *m, const char *name) {
        for (size_t i = 0; i < m->n_vms; i++)
                if (strcmp(m->vms[i]->name, name) == 0)
                        return m->vms[i];
        return NULL;
}

unsigned manager_n_connected(const Manager *m) {
        unsigned n = 0;

        for (size_t i = 0; i < m->n_vms; i++)
                if (guest_channel_is_connected(m->vms[i]->channel))
                        n++;
        return n;
}

unsigned manager_n_pending(const Manager *m) {
        unsigned n = 0;

        for (size_t i = 0; i < m->n_vms; i++)
                for (size_t k = 0; k < m->vms[i]->n_disks; k++)
                        if (m->vms[i]->disks[k].pending)
                                n++;
        return n;
}

bool manager_in_window(const Manager *m) {
        int s = m->config.window_start, e = m->config.window_end, now;
        struct tm tm;
        time_t t;

        if (s < 0 || e < 0)
                return true;
        t = time(NULL);
        if (!localtime_r(&t, &tm))
                return true;
        now = tm.tm_hour * 60 + tm.tm_min;
        if (s <= e)
                return now >= s && now < e;
        return now >= s || now < e; /* wraps past midnight, e.g. 22:00-06:00 */
}

void manager_update_status(Manager *m) {
        (void) sd_notifyf(
                false,
                "STATUS=%zu VMs, %u channels connected, %u disks pending, %u jobs running, "
                "%u queued",
                m->n_vms,
                manager_n_connected(m),
                manager_n_pending(m),
                m->n_jobs,
                m->n_queued);
        bus_emit_counts_changed(m);
}

static void registry_diag_cb(const RegistryDiag *diag, void *userdata) {
        log_full_errno(diag->level, 0, "%s", diag->text);
}

/* Builds the Vm for a registry VM, with its state loaded. Returns 0 or -ENOMEM. */
static int vm_new(Manager *m, const RegistryVm *rvm, Vm **ret) {
        Vm *vm;
        int r;

        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        vm->manager = m;
        vm->min_gain = rvm->min_gain;
        vm->auto_compact = rvm->auto_compact != 0; /* unset: yes */
        vm->name = strdup(rvm->name);
        if (rvm->channel)
                vm->channel_path = strdup(rvm->channel);
        else if (asprintf(&vm->channel_path, "%s/%s.sock", m->config.socket_dir, rvm->name) < 0)
                vm->channel_path = NULL; /* the conventional place: QEMU serves it there */
        vm->disks = calloc(MAX(rvm->n_disks, (size_t) 1), sizeof(VmDisk));
        if (!vm->name || !vm->channel_path || !vm->disks) {
                vm_free(vm);
                return -ENOMEM;
        }
        for (size_t i = 0; i < rvm->n_disks; i++) {
                vm->disks[i].path = strdup(rvm->disks[i].path);
                if (!vm->disks[i].path) {
                        vm_free(vm);
                        return -ENOMEM;
                }
                vm->n_disks++;
        }
        r = vm_state_load(vm);
        if (r < 0) {
                vm_free(vm);
                return -ENOMEM;
        }
        vm->state_dirty = r > 0;
        *ret = vm;
        return 0;
}

/* Replaces the VM list with the registry's. Channels start connecting from the event loop. */
static int manager_load_vms(Manager *m) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        const RegistryVm *rvm;
        Vm **vms;
        size_t n = 0;
        int r;

        r = registry_load(&m->paths, registry_diag_cb, m, &reg);
        if (r < 0)
                return log_error_errno(r, "Failed to load the VM registry: %m");

        vms = calloc(MAX(registry_size(reg), (size_t) 1), sizeof(Vm *));
        if (!vms)
                return log_error_errno(-ENOMEM, "Out of memory.");
        REGISTRY_FOREACH_VM(rvm, reg, i) {
                r = vm_new(m, rvm, &vms[n]);
                if (r < 0) {
                        for (size_t k = 0; k < n; k++)
                                vm_free(vms[k]);
                        free(vms);
                        return log_error_errno(r, "Out of memory.");
                }
                n++;
        }

        /* A VM whose channel path did not change keeps its connection (and its guest's
         * in-memory figures): a reload must not disconnect every guest. */
        for (size_t i = 0; i < n; i++) {
                Vm *old = manager_find_vm(m, vms[i]->name);

                if (!old || !old->channel || !vms[i]->channel_path || !old->channel_path ||
                    strcmp(old->channel_path, vms[i]->channel_path) != 0)
                        continue;
                vms[i]->channel = TAKE_PTR(old->channel);
                guest_channel_set_vm(vms[i]->channel, vms[i]);
        }
        manager_free_vms(m);
        m->vms = vms;
        m->n_vms = n;
        for (size_t i = 0; i < n; i++) {
                Vm *vm = vms[i];

                /* A new VM gets its file (a damaged one was redone while loading). Only
                 * then: a reload of hundreds of VMs must not cost hundreds of fsyncs. */
                if (vm->state_dirty && vm_state_save(vm) >= 0)
                        vm->state_dirty = false;
                if (vm->channel)
                        continue; /* kept from before the reload */
                r = guest_channel_new(vm, &vm->channel);
                if (r < 0)
                        log_error_errno(r, "%s: failed to set up the channel: %m", vm->name);
        }
        log_info("%zu VM(s) loaded.", n);
        return 0;
}

static int on_exit_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Manager *m = userdata;

        (void) sd_notify(false, "STOPPING=1");
        return sd_event_exit(m->event, 0);
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        (void) manager_reload(userdata);
        return 0;
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        (void) manager_schedule(userdata);
        return 0;
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        (void) manager_refresh_status(m);
        (void) sd_event_source_set_time_relative(s, STATUS_REFRESH_USEC);
        return 0;
}

static int on_reload_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_info("VM configuration changed on disk.");
        (void) manager_reload(m);
        return 0;
}

/* A registry file changed: reload once the files have been quiet for RELOAD_DELAY_USEC
 * (an editor or libvirt writes several files, or one file in several steps). */
static int on_registry_inotify(sd_event_source *s, const struct inotify_event *ev, void *userdata) {
        Manager *m = userdata;
        int r;

        if (ev->mask & IN_Q_OVERFLOW)
                log_debug("inotify queue overflow; reloading.");
        r = sd_event_source_set_time_relative(m->reload_timer, RELOAD_DELAY_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->reload_timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_warning_errno(r, "Failed to schedule a reload: %m");
        return 0;
}

int manager_watch_registry(Manager *m) {
        const char *dirs[4];
        _cleanup_free_ char *storage_dir = NULL;
        size_t n_dirs = 0;
        int r;

        manager_unwatch(m);
        if (m->paths.vms_d)
                dirs[n_dirs++] = m->paths.vms_d;
        if (m->paths.libvirt_qemu)
                dirs[n_dirs++] = m->paths.libvirt_qemu;
        if (m->paths.pve_qemu_server)
                dirs[n_dirs++] = m->paths.pve_qemu_server;
        if (m->paths.pve_storage_cfg) {
                /* storage.cfg is replaced by rename: watch its directory */
                char *slash;

                storage_dir = strdup(m->paths.pve_storage_cfg);
                if (!storage_dir)
                        return -ENOMEM;
                slash = strrchr(storage_dir, '/');
                if (slash && slash != storage_dir) {
                        *slash = '\0';
                        dirs[n_dirs++] = storage_dir;
                }
        }
        m->watches = calloc(n_dirs, sizeof(sd_event_source *));
        if (!m->watches)
                return -ENOMEM;
        for (size_t i = 0; i < n_dirs; i++) {
                struct stat st;

                /* a directory that does not exist (no libvirt here) is simply not watched;
                 * SIGHUP picks it up if it appears later */
                if (stat(dirs[i], &st) < 0 || !S_ISDIR(st.st_mode))
                        continue;
                r = sd_event_add_inotify(
                        m->event,
                        &m->watches[m->n_watches],
                        dirs[i],
                        IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE |
                                IN_ONLYDIR,
                        on_registry_inotify,
                        m);
                if (r < 0) {
                        log_warning_errno(
                                r, "Cannot watch %s for changes (reload with SIGHUP): %m", dirs[i]);
                        continue;
                }
                log_debug("Watching %s for changes.", dirs[i]);
                m->n_watches++;
        }
        return 0;
}

int manager_new(ManagerConfig *config, RegistryPaths *paths, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        if (!config || !paths || !ret)
                return -EINVAL;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->status_fd = -1;

        r = sd_event_default(&m->event);
        if (r < 0)
                return r;
        r = sd_event_add_signal(m->event, NULL, SIGTERM, on_exit_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, on_exit_signal, m);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGHUP, on_sighup, m);
        if (r < 0)
                return r;
        r = sd_event_set_watchdog(m->event, true);
        if (r < 0)
                return r;
        /* created disabled; manager_schedule() arms it when a disk has to wait */
        r = sd_event_add_time(m->event, &m->retry_timer, CLOCK_MONOTONIC, 0, 0, on_retry, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->retry_timer, SD_EVENT_OFF);
        r = sd_event_add_time(
                m->event, &m->reload_timer, CLOCK_MONOTONIC, 0, 0, on_reload_timer, m);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(m->reload_timer, SD_EVENT_OFF);

        m->config = *config;
        *config = (ManagerConfig){ 0 };
        m->paths = *paths;
        *paths = (RegistryPaths){ 0 };
        *ret = TAKE_PTR(m);
        return 0;
}

int manager_startup(Manager *m) {
        int r;

        r = manager_bus_open(m);
        if (r == -EEXIST)
                return log_error_errno(
                        r,
                        "Another process owns %s on the system bus; is reclaimd already running?",
                        BUS_NAME);
        if (r < 0)
                log_warning_errno(r, "No D-Bus API: cannot use the system bus: %m");
        r = manager_load_vms(m);
        if (r < 0)
                return r;
        r = manager_watch_registry(m);
        if (r < 0)
                log_warning_errno(r, "Cannot watch the VM configuration (reload with SIGHUP): %m");
        /* the status figures: now (in a child), then every STATUS_REFRESH_USEC */
        r = sd_event_add_time_relative(
                m->event, &m->status_timer, CLOCK_MONOTONIC, 0, USEC_PER_SEC, on_status_timer, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->status_timer, SD_EVENT_ON);
        if (r < 0)
                log_warning_errno(r, "Cannot schedule the status figures: %m");
        return manager_schedule(m);
}

int manager_set_config_path(Manager *m, const char *path, bool missing_ok) {
        char *p = strdup(path);

        if (!p)
                return -ENOMEM;
        free(m->config_path);
        m->config_path = p;
        m->config_missing_ok = missing_ok;
        return 0;
}

/* Re-reads reclaimd.conf into m->config; on any error the old configuration stays. */
static void manager_reload_config(Manager *m) {
        ManagerConfig c;
        int r;

        if (!m->config_path)
                return;
        r = manager_config_init(&c, m->config.state_dir, m->config.reclaimctl);
        if (r < 0) {
                log_error_errno(r, "Out of memory.");
                return;
        }
        r = manager_config_load(&c, m->config_path, m->config_missing_ok);
        if (r < 0) {
                log_error(
                        "Keeping the previous configuration (%s could not be used).",
                        m->config_path);
                manager_config_done(&c);
                return;
        }
        if (strcmp(c.state_dir, m->config.state_dir) != 0 ||
            strcmp(c.reclaimctl, m->config.reclaimctl) != 0)
                log_warning("state_dir and reclaimctl take effect when reclaimd restarts.");
        /* those two stay; everything else is the file's */
        char *sd = TAKE_PTR(m->config.state_dir), *rc = TAKE_PTR(m->config.reclaimctl);
        manager_config_done(&m->config);
        free(c.state_dir);
        free(c.reclaimctl);
        c.state_dir = sd;
        c.reclaimctl = rc;
        m->config = c;
}

int manager_reload(Manager *m) {
        int r;

        log_info("Reloading the configuration and the VM registry.");
        (void) sd_notify(false, "RELOADING=1");
        manager_reload_config(m);
        r = manager_load_vms(m);
        if (r >= 0) {
                (void) manager_watch_registry(m); /* directories may have appeared */
                (void) manager_refresh_status(m); /* VMs may have come or gone */
        }
        (void) sd_notify(false, "READY=1");
        if (r < 0)
                return r;
        return manager_schedule(m);
}
