/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The manager: event loop, signals, watchdog, the VMs from the registry and their state.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

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

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        manager_jobs_abort(m);
        manager_free_vms(m);
        m->retry_timer = sd_event_source_disable_unref(m->retry_timer);
        sd_event_unref(m->event);
        manager_config_done(&m->config);
        registry_paths_done(&m->paths);
        return mfree(m);
}

Vm *manager_find_vm(Manager *m, const char *name) {
        for (size_t i = 0; i < m->n_vms; i++)
                if (strcmp(m->vms[i]->name, name) == 0)
                        return m->vms[i];
        return NULL;
}

void manager_update_status(Manager *m) {
        unsigned connected = 0, pending = 0;

        for (size_t i = 0; i < m->n_vms; i++) {
                if (guest_channel_is_connected(m->vms[i]->channel))
                        connected++;
                for (size_t k = 0; k < m->vms[i]->n_disks; k++)
                        if (m->vms[i]->disks[k].pending)
                                pending++;
        }
        (void) sd_notifyf(
                false,
                "STATUS=%zu VMs, %u channels connected, %u disks pending, %u jobs running",
                m->n_vms,
                connected,
                pending,
                m->n_jobs);
}

static void registry_diag_cb(const RegistryDiag *diag, void *userdata) {
        log_full_errno(diag->level, 0, "%s", diag->text);
}

/* Builds the Vm for a registry VM, with its state loaded. Returns 0 or -ENOMEM. */
static int vm_new(Manager *m, const RegistryVm *rvm, Vm **ret) {
        Vm *vm;

        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        vm->manager = m;
        vm->min_gain = rvm->min_gain;
        vm->name = strdup(rvm->name);
        vm->channel_path = rvm->channel ? strdup(rvm->channel) : NULL;
        vm->disks = calloc(MAX(rvm->n_disks, (size_t) 1), sizeof(VmDisk));
        if (!vm->name || (rvm->channel && !vm->channel_path) || !vm->disks) {
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
        if (vm_state_load(vm) < 0) {
                vm_free(vm);
                return -ENOMEM;
        }
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

        manager_free_vms(m);
        m->vms = vms;
        m->n_vms = n;
        for (size_t i = 0; i < n; i++) {
                Vm *vm = vms[i];

                (void) vm_state_save(vm); /* a new VM gets its file; a damaged one was redone */
                if (!vm->channel_path)
                        continue;
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

int manager_new(ManagerConfig *config, RegistryPaths *paths, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        if (!config || !paths || !ret)
                return -EINVAL;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;

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

        m->config = *config;
        *config = (ManagerConfig){ 0 };
        m->paths = *paths;
        *paths = (RegistryPaths){ 0 };
        *ret = TAKE_PTR(m);
        return 0;
}

int manager_startup(Manager *m) {
        int r;

        r = manager_load_vms(m);
        if (r < 0)
                return r;
        return manager_schedule(m);
}

int manager_reload(Manager *m) {
        int r;

        log_info("Reloading the VM registry.");
        (void) sd_notify(false, "RELOADING=1");
        r = manager_load_vms(m);
        (void) sd_notify(false, "READY=1");
        if (r < 0)
                return r;
        return manager_schedule(m);
}
