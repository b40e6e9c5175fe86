/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Compaction jobs. Each runs `reclaimctl compact --image PATH --json` as a child process
 * supervised with sd_event_add_child(): a crash of the engine cannot take the daemon down,
 * and the event loop never blocks on image I/O. A job that outlives job_timeout is killed
 * with SIGKILL; the engine is crash-safe (every batch is ordered so that an interruption
 * only leaks clusters, which the next run repairs), so the image stays valid and the disk
 * simply stays pending.
 *
 * Scheduling: a pending disk is a candidate when its VM's channel is not connected (the VM
 * looks stopped) and it passes min_gain. Before starting, the image's QEMU lock bytes are
 * probed; a holder means the VM (or qemu-nbd, a backup...) still uses it: the disk waits for
 * the retry timer. reclaimctl takes the locks itself and exits 3 if it lost a race.
 * One job per storage filesystem (st_dev) at a time, max_concurrent in all.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-journal.h>

#include "io.h"
#include "log.h"
#include "macro.h"
#include "manager.h"

struct Job {
        Manager *manager;
        Job *next;
        char *vm_name;
        char *image;
        dev_t dev;
        pid_t pid;
        int out_fd;
        sd_event_source *child;
        sd_event_source *out;
        sd_event_source *timeout;
        bool killed;
        char output[JOB_OUTPUT_MAX];
        size_t output_len;
};

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static Job *job_free(Job *j) {
        if (!j)
                return NULL;
        j->child = sd_event_source_disable_unref(j->child);
        j->out = sd_event_source_disable_unref(j->out);
        j->timeout = sd_event_source_disable_unref(j->timeout);
        if (j->out_fd >= 0)
                (void) close(j->out_fd);
        free(j->vm_name);
        free(j->image);
        return mfree(j);
}

static void job_unlink(Manager *m, Job *j) {
        for (Job **p = &m->jobs; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        m->n_jobs--;
                        return;
                }
}

bool manager_job_running(Manager *m, const char *path) {
        for (Job *j = m->jobs; j; j = j->next)
                if (strcmp(j->image, path) == 0)
                        return true;
        return false;
}

static bool job_dev_busy(Manager *m, dev_t dev) {
        for (Job *j = m->jobs; j; j = j->next)
                if (j->dev == dev)
                        return true;
        return false;
}

bool vm_disk_worth_compacting(const Vm *vm, const VmDisk *d) {
        RegistryMinGain g = vm->min_gain.kind != REGISTRY_MIN_GAIN_UNSET ?
                vm->min_gain :
                vm->manager->config.min_gain;
        struct stat st;

        switch (g.kind) {
        case REGISTRY_MIN_GAIN_BYTES:
                return d->reported_bytes >= g.value;
        case REGISTRY_MIN_GAIN_PERCENT:
                if (stat(d->path, &st) < 0 || st.st_size <= 0)
                        return d->reported_bytes > 0;
                /* reported * 100 >= value * size, without overflow */
                return (long double) d->reported_bytes * 100.0L >=
                        (long double) g.value * (long double) st.st_size;
        default:
                return true;
        }
}

/* Drains the helper's stdout; keeps at most JOB_OUTPUT_MAX bytes, discards the rest. */
static void job_read_output(Job *j) {
        for (;;) {
                char buf[4096];
                ssize_t n = read(j->out_fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return;
                size_t take = MIN((size_t) n, sizeof(j->output) - 1 - j->output_len);
                memcpy(j->output + j->output_len, buf, take);
                j->output_len += take;
        }
}

static int job_out_cb(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Job *j = userdata;

        job_read_output(j);
        if (revents & (EPOLLHUP | EPOLLERR))
                j->out = sd_event_source_disable_unref(j->out);
        return 0;
}

static int job_timeout_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;

        log_warning(
                "%s: compaction of %s exceeded %" PRIu64 " s, killing it.",
                j->vm_name,
                j->image,
                j->manager->config.job_timeout_sec);
        j->killed = true;
        (void) kill(j->pid, SIGKILL);
        return 0;
}

/* Logs to the journal with structured fields when running under systemd, else to stderr. */
static void job_log_result(const Job *j, int priority, uint64_t reclaimed, const char *msg) {
        if (getenv("JOURNAL_STREAM"))
                (void) sd_journal_send(
                        "MESSAGE=%s: %s: %s",
                        j->vm_name,
                        j->image,
                        msg,
                        "PRIORITY=%i",
                        priority,
                        "VM=%s",
                        j->vm_name,
                        "IMAGE=%s",
                        j->image,
                        "RECLAIMED_BYTES=%" PRIu64,
                        reclaimed,
                        "SYSLOG_IDENTIFIER=reclaimd",
                        NULL);
        else
                log_full_errno(priority, 0, "%s: %s: %s", j->vm_name, j->image, msg);
}

static void job_finish(Job *j, const siginfo_t *si) {
        Manager *m = j->manager;
        Vm *vm = manager_find_vm(m, j->vm_name);
        VmDisk *d = NULL;
        char msg[512];
        uint64_t reclaimed = 0, before = 0, after = 0;
        json_object *o = NULL, *v;
        int status = -1;

        job_read_output(j);
        j->output[j->output_len] = '\0';
        if (si->si_code == CLD_EXITED)
                status = si->si_status;

        if (vm)
                for (size_t i = 0; i < vm->n_disks; i++)
                        if (strcmp(vm->disks[i].path, j->image) == 0)
                                d = &vm->disks[i];

        if (status == 0 || status == 4)
                o = json_tokener_parse(j->output);
        if (status == 0) {
                if (o && json_object_object_get_ex(o, "file_size_before", &v))
                        before = (uint64_t) json_object_get_int64(v);
                if (o && json_object_object_get_ex(o, "file_size_after", &v))
                        after = (uint64_t) json_object_get_int64(v);
                reclaimed = before > after ? before - after : 0;
                (void) snprintf(
                        msg,
                        sizeof(msg),
                        "compacted, %" PRIu64 " -> %" PRIu64 " bytes (%" PRIu64 " reclaimed)",
                        before,
                        after,
                        reclaimed);
                job_log_result(j, LOG_INFO, reclaimed, msg);
                if (d) {
                        d->pending = false;
                        d->failures = 0;
                        d->last_compact_time = realtime_usec();
                        d->last_compact_gain = reclaimed;
                }
        } else if (status == 3) {
                job_log_result(j, LOG_INFO, 0, "in use, will retry");
        } else if (status == 4) {
                const char *why = "refused";

                if (o && json_object_object_get_ex(o, "error", &v) &&
                    json_object_is_type(v, json_type_string))
                        why = json_object_get_string(v);
                (void) snprintf(msg, sizeof(msg), "refused, not retried: %s", why);
                job_log_result(j, LOG_WARNING, 0, msg);
                if (d) {
                        d->pending = false;
                        free(d->refused);
                        d->refused = strdup(why);
                }
        } else {
                if (j->killed)
                        (void) snprintf(msg, sizeof(msg), "killed after the time limit");
                else if (status >= 0)
                        (void) snprintf(
                                msg, sizeof(msg), "compaction failed (exit status %d)", status);
                else
                        (void) snprintf(
                                msg, sizeof(msg), "compaction died (signal %d)", si->si_status);
                job_log_result(j, LOG_ERR, 0, msg);
                if (d && ++d->failures >= JOB_MAX_FAILURES) {
                        log_error(
                                "%s: %s failed %u times; waiting for the next report.",
                                j->vm_name,
                                j->image,
                                d->failures);
                        d->pending = false;
                }
        }
        if (o)
                (void) json_object_put(o);
        if (vm && d)
                (void) vm_state_save(vm);
}

static int job_child_cb(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;

        job_unlink(m, j);
        job_finish(j, si);
        job_free(j);
        manager_update_status(m);
        (void) manager_schedule(m);
        return 0;
}

/* Forks and execs the helper for image. Returns 0 and a new running Job, or -errno (logged). */
static int job_start(Manager *m, const Vm *vm, const VmDisk *d, dev_t dev) {
        _cleanup_close_ int pipe_r = -1, pipe_w = -1;
        int fds[2], r;
        Job *j;
        pid_t pid;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return log_error_errno(errno, "Failed to create a pipe: %m");
        pipe_r = fds[0];
        pipe_w = fds[1];

        j = calloc(1, sizeof(*j));
        if (!j)
                return log_error_errno(-ENOMEM, "Out of memory.");
        j->out_fd = -1;
        j->manager = m;
        j->dev = dev;
        j->vm_name = strdup(vm->name);
        j->image = strdup(d->path);
        if (!j->vm_name || !j->image) {
                job_free(j);
                return log_error_errno(-ENOMEM, "Out of memory.");
        }

        pid = fork();
        if (pid < 0) {
                r = -errno;
                job_free(j);
                return log_error_errno(r, "Failed to fork: %m");
        }
        if (pid == 0) {
                /* child: only async-signal-safe calls until exec */
                sigset_t all;
                int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

                (void) sigemptyset(&all);
                (void) sigprocmask(SIG_SETMASK, &all, NULL);
                if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 ||
                    dup2(pipe_w, STDOUT_FILENO) < 0)
                        _exit(127);
                execl(m->config.reclaimctl,
                      m->config.reclaimctl,
                      "compact",
                      "--image",
                      d->path,
                      "--json",
                      (char *) NULL);
                _exit(127);
        }
        j->pid = pid;
        (void) close(TAKE_FD(pipe_w));
        (void) fcntl(pipe_r, F_SETFL, O_NONBLOCK);
        j->out_fd = TAKE_FD(pipe_r);

        r = sd_event_add_child(m->event, &j->child, pid, WEXITED, job_child_cb, j);
        if (r >= 0)
                r = sd_event_add_io(m->event, &j->out, j->out_fd, EPOLLIN, job_out_cb, j);
        if (r >= 0)
                r = sd_event_add_time_relative(
                        m->event,
                        &j->timeout,
                        CLOCK_MONOTONIC,
                        m->config.job_timeout_sec * USEC_PER_SEC,
                        USEC_PER_SEC,
                        job_timeout_cb,
                        j);
        if (r < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                job_free(j);
                return log_error_errno(r, "Failed to watch the compaction of %s: %m", d->path);
        }
        /* Priority below the channels: a burst of helper output never delays guest traffic. */
        (void) sd_event_source_set_priority(j->child, SD_EVENT_PRIORITY_IDLE);

        j->next = m->jobs;
        m->jobs = j;
        m->n_jobs++;
        log_info("%s: compacting %s (pid %d).", vm->name, d->path, (int) pid);
        return 0;
}

/* > 0 when QEMU (or another user of its lock protocol) holds the image, 0 when not, -errno. */
static int image_probe_locks(const char *path, dev_t *ret_dev) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        struct stat st;
        int r;

        r = io_posix_open(path, false, &io);
        if (r < 0)
                return r;
        if (fstat(io_posix_fd(io), &st) < 0)
                return -errno;
        r = io_posix_probe_qemu_locks(io);
        if (r < 0)
                return r;
        *ret_dev = S_ISBLK(st.st_mode) ? st.st_rdev : st.st_dev;
        return r;
}

int manager_schedule(Manager *m) {
        bool waiting = false;

        for (size_t i = 0; i < m->n_vms; i++) {
                Vm *vm = m->vms[i];

                if (guest_channel_is_connected(vm->channel))
                        continue; /* the VM runs: its hangup brings us back */
                for (size_t k = 0; k < vm->n_disks; k++) {
                        VmDisk *d = &vm->disks[k];
                        dev_t dev = 0;
                        int r;

                        if (!d->pending || d->refused || manager_job_running(m, d->path))
                                continue;
                        if (m->n_jobs >= m->config.max_concurrent) {
                                waiting = true;
                                continue;
                        }
                        r = image_probe_locks(d->path, &dev);
                        if (r < 0) {
                                log_warning_errno(r, "%s: cannot probe %s: %m", vm->name, d->path);
                                waiting = true;
                                continue;
                        }
                        if (r > 0) {
                                log_info(
                                        "%s: %s is still in use, retrying in %" PRIu64 " s.",
                                        vm->name,
                                        d->path,
                                        m->config.retry_interval_sec);
                                waiting = true;
                                continue;
                        }
                        if (job_dev_busy(m, dev)) {
                                waiting = true;
                                continue;
                        }
                        if (job_start(m, vm, d, dev) < 0)
                                waiting = true;
                }
        }

        int enabled = SD_EVENT_OFF;
        (void) sd_event_source_get_enabled(m->retry_timer, &enabled);
        /* An armed timer is left alone: re-arming it on every call would let frequent calls
         * (a flapping channel) push the retry out forever. */
        if (waiting && enabled == SD_EVENT_OFF) {
                int r = sd_event_source_set_time_relative(
                        m->retry_timer, m->config.retry_interval_sec * USEC_PER_SEC);
                if (r >= 0)
                        r = sd_event_source_set_enabled(m->retry_timer, SD_EVENT_ONESHOT);
                if (r < 0)
                        return log_error_errno(r, "Failed to arm the retry timer: %m");
        }
        manager_update_status(m);
        return 0;
}

void manager_jobs_abort(Manager *m) {
        while (m->jobs) {
                Job *j = m->jobs;

                (void) kill(j->pid, SIGKILL);
                (void) waitpid(j->pid, NULL, 0);
                job_unlink(m, j);
                job_free(j);
        }
}
