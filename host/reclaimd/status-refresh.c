/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The host-wide figures of `reclaimctl status` (host/status/), published as D-Bus properties
 * (Storages, Images, StatusTime, StatusJSON). Collecting reads every image's metadata, which can
 * take seconds on a cold cache with hundreds of images, so it never runs on the event loop: a
 * forked child loads the registry, calls status_collect() and writes the JSON document to a
 * pipe; the daemon keeps the last document it parsed. Refreshed at startup, every
 * STATUS_REFRESH_USEC, after every compaction and on RefreshStatus(); one child at a time (a
 * request while one runs is remembered and served when it ends), killed after
 * STATUS_TIMEOUT_USEC. The nightly run also uses the figures: an image's metadata estimate
 * counts as its expected gain when no guest report says more.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "status.h"

static void status_child_done(Manager *m) {
        m->status_child = sd_event_source_disable_unref(m->status_child);
        m->status_out = sd_event_source_disable_unref(m->status_out);
        m->status_timeout = sd_event_source_disable_unref(m->status_timeout);
        if (m->status_fd >= 0)
                (void) close(m->status_fd);
        m->status_fd = -1;
        m->status_buf = mfree(m->status_buf);
        m->status_len = m->status_cap = 0;
        m->status_pid = 0;
}

/* In the child: collect and write the JSON document to fd. Never returns. */
static _noreturn_ void status_child_run(Manager *m, int fd) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(status_report_freep) StatusReport *report = NULL;
        _cleanup_free_ char *cache = NULL;
        FILE *f;
        int r;

        r = registry_load(&m->paths, NULL, NULL, &reg);
        if (r < 0)
                _exit(2);
        if (asprintf(&cache, "%s/" STATUS_SCAN_CACHE_NAME, m->config.state_dir) < 0)
                _exit(3);
        r = status_collect(
                reg,
                &(StatusOptions){ .state_dir = m->config.state_dir,
                                  .thresholds = m->config.thresholds,
                                  .scan_cache = cache },
                &report);
        if (r < 0)
                _exit(4);
        f = fdopen(fd, "w");
        if (!f || status_render_json(report, f) < 0 || fclose(f) != 0)
                _exit(5);
        _exit(0);
}

static int status_out_cb(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        for (;;) {
                ssize_t n;

                if (m->status_len == m->status_cap) {
                        size_t cap = m->status_cap ? m->status_cap * 2 : 65536;
                        char *b;

                        if (cap > STATUS_JSON_MAX) {
                                log_warning(
                                        "The status document is larger than %u bytes; ignored.",
                                        STATUS_JSON_MAX);
                                (void) kill(m->status_pid, SIGKILL);
                                m->status_out = sd_event_source_disable_unref(m->status_out);
                                return 0;
                        }
                        b = realloc(m->status_buf, cap + 1);
                        if (!b)
                                return log_error_errno(-ENOMEM, "Out of memory.");
                        m->status_buf = b;
                        m->status_cap = cap;
                }
                n = read(
                        m->status_fd, m->status_buf + m->status_len, m->status_cap - m->status_len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return 0; /* EAGAIN: more later */
                if (n == 0) {
                        m->status_out = sd_event_source_disable_unref(m->status_out);
                        return 0;
                }
                m->status_len += (size_t) n;
        }
}

static int status_timeout_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;

        log_warning("Collecting the status figures took too long; killed.");
        (void) kill(m->status_pid, SIGKILL);
        return 0;
}

static int status_child_cb(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Manager *m = userdata;
        json_object *o = NULL;
        bool again;

        if (m->status_out)
                (void) status_out_cb(NULL, m->status_fd, EPOLLIN, m);
        if (si->si_code == CLD_EXITED && si->si_status == 0 && m->status_buf) {
                m->status_buf[m->status_len] = '\0';
                o = json_tokener_parse(m->status_buf);
        }
        if (o && json_object_is_type(o, json_type_object)) {
                if (m->status_json)
                        (void) json_object_put(m->status_json);
                m->status_json = o;
                bus_emit_status_changed(m);
        } else {
                if (o)
                        (void) json_object_put(o);
                log_warning(
                        "Collecting the status figures failed (%s %d).",
                        si->si_code == CLD_EXITED ? "exit status" : "signal",
                        si->si_status);
        }
        status_child_done(m);
        again = m->status_again;
        m->status_again = false;
        if (again)
                (void) manager_refresh_status(m);
        return 0;
}

int manager_refresh_status(Manager *m) {
        _cleanup_close_ int rfd = -1, wfd = -1;
        int fds[2], r;
        pid_t pid;

        if (m->status_pid > 0) {
                m->status_again = true;
                return 0;
        }
        if (pipe2(fds, O_CLOEXEC) < 0)
                return log_error_errno(errno, "Failed to create a pipe: %m");
        rfd = fds[0];
        wfd = fds[1];
        pid = fork();
        if (pid < 0)
                return log_error_errno(errno, "Failed to fork: %m");
        if (pid == 0) {
                sigset_t all;

                /* the daemon's signals stay blocked in the child: SIGTERM must kill it */
                (void) sigemptyset(&all);
                (void) sigprocmask(SIG_SETMASK, &all, NULL);
                (void) close(rfd);
                status_child_run(m, wfd);
        }
        (void) close(TAKE_FD(wfd));
        (void) fcntl(rfd, F_SETFL, O_NONBLOCK);
        m->status_fd = TAKE_FD(rfd);
        m->status_pid = pid;
        r = sd_event_add_child(m->event, &m->status_child, pid, WEXITED, status_child_cb, m);
        if (r >= 0)
                r = sd_event_add_io(
                        m->event, &m->status_out, m->status_fd, EPOLLIN, status_out_cb, m);
        if (r >= 0)
                r = sd_event_add_time_relative(
                        m->event,
                        &m->status_timeout,
                        CLOCK_MONOTONIC,
                        STATUS_TIMEOUT_USEC,
                        USEC_PER_SEC,
                        status_timeout_cb,
                        m);
        if (r < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                status_child_done(m);
                return log_error_errno(r, "Failed to watch the status collection: %m");
        }
        (void) sd_event_source_set_priority(m->status_child, SD_EVENT_PRIORITY_IDLE);
        (void) sd_event_source_set_priority(m->status_out, SD_EVENT_PRIORITY_IDLE);
        return 0;
}

void manager_status_abort(Manager *m) {
        if (m->status_pid > 0) {
                (void) kill(m->status_pid, SIGKILL);
                (void) waitpid(m->status_pid, NULL, 0);
        }
        status_child_done(m);
        if (m->status_json)
                (void) json_object_put(m->status_json);
        m->status_json = NULL;
}

/* The image's object in the last document (borrowed), or NULL. */
json_object *manager_status_image(const Manager *m, const char *path) {
        json_object *storages, *disks, *v;

        if (!m->status_json || !json_object_object_get_ex(m->status_json, "storages", &storages) ||
            !json_object_is_type(storages, json_type_array))
                return NULL;
        for (size_t i = 0; i < json_object_array_length(storages); i++) {
                json_object *st = json_object_array_get_idx(storages, i);

                if (!json_object_object_get_ex(st, "disks", &disks) ||
                    !json_object_is_type(disks, json_type_array))
                        continue;
                for (size_t k = 0; k < json_object_array_length(disks); k++) {
                        json_object *d = json_object_array_get_idx(disks, k);

                        if (json_object_object_get_ex(d, "image", &v) &&
                            strcmp(json_object_get_string(v) ?: "", path) == 0)
                                return d;
                }
        }
        return NULL;
}

uint64_t json_u64_of(json_object *o, const char *key) {
        json_object *v;
        int64_t i;

        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return 0;
        i = json_object_get_int64(v);
        return i < 0 ? 0 : (uint64_t) i;
}
