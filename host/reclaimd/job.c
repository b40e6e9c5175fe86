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
 * looks stopped), it passes min_gain and the nightly window (if set) is open. Before starting,
 * the image's QEMU lock bytes are probed; a holder means the VM (or qemu-nbd, a backup...)
 * still uses it: the disk waits for the retry timer. reclaimctl takes the locks itself and
 * exits 3 if it lost a race. One job per storage filesystem (st_dev) at a time,
 * max_concurrent in all.
 *
 * Jobs asked for over D-Bus (Compact, CompactAll) wait in a queue, in order, and start before
 * the automatic ones. Each job has an id (JobNew, JobProgress and JobRemoved signals name it);
 * the helper writes its progress as "PHASE DONE TOTAL" lines on fd 3 (--progress-fd).
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
#include <stdlib.h>
#include <systemd/sd-journal.h>

#include "io.h"
#include "log.h"
#include "macro.h"
#include "manager.h"

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t monotonic_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000;
}

static Job *job_free(Job *j) {
        if (!j)
                return NULL;
        j->child = sd_event_source_disable_unref(j->child);
        j->out = sd_event_source_disable_unref(j->out);
        j->progress = sd_event_source_disable_unref(j->progress);
        j->timeout = sd_event_source_disable_unref(j->timeout);
        if (j->out_fd >= 0)
                (void) close(j->out_fd);
        if (j->progress_fd >= 0)
                (void) close(j->progress_fd);
        free(j->vm_name);
        free(j->image);
        return mfree(j);
}

static void job_unlink(Manager *m, Job *j) {
        for (Job **p = &m->jobs; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        if (j->state == JOB_RUNNING)
                                m->n_jobs--;
                        else
                                m->n_queued--;
                        return;
                }
}

/* Appends j to the job list (the queue order is the list order). */
static void job_link(Manager *m, Job *j) {
        Job **p = &m->jobs;

        while (*p)
                p = &(*p)->next;
        j->next = NULL;
        *p = j;
        if (j->state == JOB_RUNNING)
                m->n_jobs++;
        else
                m->n_queued++;
}

Job *manager_job_for_path(Manager *m, const char *path) {
        for (Job *j = m->jobs; j; j = j->next)
                if (strcmp(j->image, path) == 0)
                        return j;
        return NULL;
}

Job *manager_find_job(Manager *m, uint32_t id) {
        for (Job *j = m->jobs; j; j = j->next)
                if (j->id == id)
                        return j;
        return NULL;
}

bool manager_job_running(Manager *m, const char *path) {
        return manager_job_for_path(m, path) != NULL;
}

static bool job_dev_busy(Manager *m, dev_t dev) {
        for (Job *j = m->jobs; j; j = j->next)
                if (j->state == JOB_RUNNING && j->dev == dev)
                        return true;
        return false;
}

static VmDisk *vm_find_disk(Vm *vm, const char *path) {
        if (vm)
                for (size_t i = 0; i < vm->n_disks; i++)
                        if (strcmp(vm->disks[i].path, path) == 0)
                                return &vm->disks[i];
        return NULL;
}

uint64_t vm_disk_expected_gain(const Vm *vm, const VmDisk *d) {
        uint64_t gain = 0;
        json_object *img;

        /* a report older than the last compaction was already acted on */
        if (d->report_time != 0 && d->report_time > d->last_compact_time)
                gain = d->reported_bytes;
        /* the metadata estimate (or a cached data scan) of the last status figures, if they
         * were collected after the last compaction and the image is not in use */
        img = vm ? manager_status_image(vm->manager, d->path) : NULL;
        if (img &&
            json_u64_of(vm->manager->status_json, "time") * USEC_PER_SEC > d->last_compact_time) {
                json_object *v;

                if (!json_object_object_get_ex(img, "in_use", &v) || !json_object_get_boolean(v))
                        gain = MAX(gain, json_u64_of(img, "reclaimable_bytes"));
        }
        return gain;
}

bool vm_disk_worth_compacting(const Vm *vm, const VmDisk *d) {
        RegistryMinGain g = vm->min_gain.kind != REGISTRY_MIN_GAIN_UNSET ?
                vm->min_gain :
                vm->manager->config.min_gain;
        struct stat st;

        uint64_t gain = vm_disk_expected_gain(vm, d);

        switch (g.kind) {
        case REGISTRY_MIN_GAIN_BYTES:
                return gain >= g.value;
        case REGISTRY_MIN_GAIN_PERCENT:
                if (stat(d->path, &st) < 0 || st.st_size <= 0)
                        return gain > 0;
                /* gain * 100 >= value * size, without overflow */
                return (long double) gain * 100.0L >=
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

/* One "PHASE DONE TOTAL" line from the helper; anything else is ignored. */
static void job_progress_line(Job *j, const char *line) {
        char phase[sizeof(j->phase)];
        unsigned long long done, total;
        uint64_t now = monotonic_usec();
        bool changed;

        if (sscanf(line, "%31s %llu %llu", phase, &done, &total) != 3)
                return;
        changed = strcmp(phase, j->phase) != 0;
        memcpy(j->phase, phase, sizeof(phase));
        j->done = done;
        j->total = total;
        if (changed || now - j->progress_signal_usec >= JOB_PROGRESS_SIGNAL_USEC) {
                j->progress_signal_usec = now;
                bus_emit_job_progress(j->manager, j);
        }
}

static int job_progress_cb(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Job *j = userdata;
        char buf[1024];
        ssize_t n;

        n = read(j->progress_fd, buf, sizeof(buf));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (n <= 0) {
                j->progress = sd_event_source_disable_unref(j->progress);
                return 0;
        }
        for (ssize_t i = 0; i < n; i++) {
                if (buf[i] == '\n') {
                        j->progress_line[j->progress_line_len] = '\0';
                        job_progress_line(j, j->progress_line);
                        j->progress_line_len = 0;
                } else if (j->progress_line_len < sizeof(j->progress_line) - 1)
                        j->progress_line[j->progress_line_len++] = buf[i];
        }
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

/* Records a job's end: state of its disk, log, JobRemoved. */
static void job_finish(Job *j, const siginfo_t *si) {
        Manager *m = j->manager;
        Vm *vm = manager_find_vm(m, j->vm_name);
        VmDisk *d = vm_find_disk(vm, j->image);
        char msg[512];
        const char *result;
        uint64_t reclaimed = 0, before = 0, after = 0;
        json_object *o = NULL, *v;
        int status = -1;

        job_read_output(j);
        j->output[j->output_len] = '\0';
        if (si->si_code == CLD_EXITED)
                status = si->si_status;

        if (status == 0 || status == 4)
                o = json_tokener_parse(j->output);
        if (j->cancelled) {
                result = "cancelled";
                job_log_result(j, LOG_NOTICE, 0, "cancelled");
                if (d)
                        d->pending = false;
        } else if (status == 0) {
                result = "done";
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
                result = "in-use";
                job_log_result(j, LOG_INFO, 0, "in use, will retry");
        } else if (status == 4) {
                const char *why = "refused";

                result = "refused";
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
                result = j->killed ? "timeout" : "failed";
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
        bus_emit_job_removed(m, j, result, status, reclaimed);
}

static int job_child_cb(sd_event_source *s, const siginfo_t *si, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;

        job_unlink(m, j);
        job_finish(j, si);
        job_free(j);
        (void) manager_refresh_status(m); /* the image's figures changed */
        manager_update_status(m);
        (void) manager_schedule(m);
        return 0;
}

/* Ends a job that never ran (in use, cancelled, VM gone): JobRemoved, freed. */
static void job_drop(Manager *m, Job *j, const char *result, int status) {
        job_unlink(m, j);
        bus_emit_job_removed(m, j, result, status, 0);
        job_free(j);
}

/* A new queued job for vm's disk d (not linked). NULL when out of memory. */
static Job *job_new(Manager *m, const Vm *vm, const VmDisk *d, JobOrigin origin, bool force) {
        Job *j = calloc(1, sizeof(*j));

        if (!j)
                return NULL;
        j->out_fd = -1;
        j->progress_fd = -1;
        j->manager = m;
        j->state = JOB_QUEUED;
        j->origin = origin;
        j->force = force;
        j->expected_gain = vm_disk_expected_gain(vm, d);
        j->vm_name = strdup(vm->name);
        j->image = strdup(d->path);
        if (!j->vm_name || !j->image)
                return job_free(j);
        if (++m->last_job_id == 0) /* 0 means "no job" on the bus */
                m->last_job_id = 1;
        j->id = m->last_job_id;
        return j;
}

/* Forks and execs the helper for a queued job j (linked). Returns 0 (j runs), or -errno
 * (logged; j stays queued). */
static int job_start(Manager *m, Job *j, dev_t dev) {
        _cleanup_close_ int pipe_r = -1, pipe_w = -1, prog_r = -1, prog_w = -1;
        char a_compact[] = "compact", a_image[] = "--image", a_json[] = "--json",
             a_progress[] = "--progress-fd=3", a_force[] = "--force";
        char *argv[] = {
                m->config.reclaimctl,      a_compact, a_image, j->image, a_json, a_progress,
                j->force ? a_force : NULL, NULL
        };
        int fds[2], r;
        pid_t pid;

        if (pipe2(fds, O_CLOEXEC) < 0)
                return log_error_errno(errno, "Failed to create a pipe: %m");
        pipe_r = fds[0];
        pipe_w = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
                return log_error_errno(errno, "Failed to create a pipe: %m");
        prog_r = fds[0];
        prog_w = fds[1];

        pid = fork();
        if (pid < 0)
                return log_error_errno(errno, "Failed to fork: %m");
        if (pid == 0) {
                /* child: only async-signal-safe calls until exec */
                sigset_t all;
                int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

                (void) sigemptyset(&all);
                (void) sigprocmask(SIG_SETMASK, &all, NULL);
                /* fd 3 first: prog_w may itself be 0-2 only if those were closed */
                if (null_fd < 0 || dup2(prog_w, 3) < 0 || dup2(null_fd, STDIN_FILENO) < 0 ||
                    dup2(pipe_w, STDOUT_FILENO) < 0)
                        _exit(127);
                execv(m->config.reclaimctl, argv);
                _exit(127);
        }
        j->pid = pid;
        j->dev = dev;
        (void) close(TAKE_FD(pipe_w));
        (void) close(TAKE_FD(prog_w));
        (void) fcntl(pipe_r, F_SETFL, O_NONBLOCK);
        (void) fcntl(prog_r, F_SETFL, O_NONBLOCK);
        j->out_fd = TAKE_FD(pipe_r);
        j->progress_fd = TAKE_FD(prog_r);
        /* counted as running from here on: the child exists whatever happens below */
        m->n_queued--;
        m->n_jobs++;
        j->state = JOB_RUNNING;

        r = sd_event_add_child(m->event, &j->child, pid, WEXITED, job_child_cb, j);
        if (r >= 0)
                r = sd_event_add_io(m->event, &j->out, j->out_fd, EPOLLIN, job_out_cb, j);
        if (r >= 0)
                r = sd_event_add_io(
                        m->event, &j->progress, j->progress_fd, EPOLLIN, job_progress_cb, j);
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
                log_error_errno(r, "Failed to watch the compaction of %s: %m", j->image);
                job_drop(m, j, "failed", -1);
                return r;
        }
        /* Priority below the channels: a burst of helper output never delays guest traffic. */
        (void) sd_event_source_set_priority(j->child, SD_EVENT_PRIORITY_IDLE);
        (void) sd_event_source_set_priority(j->progress, SD_EVENT_PRIORITY_IDLE);

        log_info(
                "%s: compacting %s (job %" PRIu32 ", pid %d).",
                j->vm_name,
                j->image,
                j->id,
                (int) pid);
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

int manager_enqueue(Manager *m, Vm *vm, VmDisk *d, JobOrigin origin, bool force, Job **ret) {
        Job *j = manager_job_for_path(m, d->path);
        dev_t dev;
        int r;

        if (j) {
                *ret = j;
                return 0;
        }
        if (origin == JOB_REQUESTED) {
                if (guest_channel_is_connected(vm->channel))
                        return -EBUSY;
                r = image_probe_locks(d->path, &dev);
                if (r < 0)
                        return r;
                if (r > 0)
                        return -EBUSY;
        }
        if (m->n_queued >= JOB_QUEUE_MAX)
                return -ENOSPC;
        j = job_new(m, vm, d, origin, force);
        if (!j)
                return -ENOMEM;
        job_link(m, j);
        bus_emit_job_new(m, j);
        *ret = j;
        return 0;
}

typedef struct Candidate {
        Vm *vm;
        VmDisk *disk;
        uint64_t gain;
} Candidate;

static int candidate_cmp(const void *a, const void *b) {
        const Candidate *x = a, *y = b;

        /* biggest gain first; equal gains keep registry order */
        if (x->gain != y->gain)
                return x->gain > y->gain ? -1 : 1;
        return x < y ? -1 : x > y;
}

/*
 * The disks of stopped VMs that want compacting, biggest expected gain first: pending ones
 * (automatic) or, with all, every one passing its threshold. Returns the count, or -ENOMEM.
 */
static int collect_candidates(Manager *m, bool all, Candidate **ret) {
        Candidate *c = NULL;
        size_t n = 0, cap = 0;

        for (size_t i = 0; i < m->n_vms; i++) {
                Vm *vm = m->vms[i];

                if (guest_channel_is_connected(vm->channel))
                        continue; /* the VM runs: its hangup brings us back */
                if (!vm->auto_compact)
                        continue; /* auto_compact = no: only an admin's Compact */
                for (size_t k = 0; k < vm->n_disks; k++) {
                        VmDisk *d = &vm->disks[k];

                        if (d->refused || manager_job_running(m, d->path))
                                continue;
                        if (all ? !vm_disk_worth_compacting(vm, d) ||
                                            vm_disk_expected_gain(vm, d) == 0 :
                                  !d->pending)
                                continue;
                        if (n == cap) {
                                Candidate *nc;

                                cap = cap ? cap * 2 : 16;
                                nc = reallocarray(c, cap, sizeof(*c));
                                if (!nc) {
                                        free(c);
                                        return -ENOMEM;
                                }
                                c = nc;
                        }
                        c[n++] = (Candidate){ vm, d, vm_disk_expected_gain(vm, d) };
                }
        }
        if (n > 1)
                qsort(c, n, sizeof(*c), candidate_cmp);
        *ret = c;
        return (int) MIN(n, (size_t) INT32_MAX);
}

int manager_enqueue_all(Manager *m, bool window, uint32_t **ret_ids) {
        _cleanup_free_ Candidate *c = NULL;
        _cleanup_free_ uint32_t *ids = NULL;
        int n, queued = 0, r;

        n = collect_candidates(m, true, &c);
        if (n < 0)
                return n;
        ids = calloc(MAX(n, 1), sizeof(uint32_t));
        if (!ids)
                return -ENOMEM;
        for (int i = 0; i < n; i++) {
                Job *j;

                r = manager_enqueue(m, c[i].vm, c[i].disk, JOB_SCHEDULED, false, &j);
                if (r == -ENOSPC)
                        break;
                if (r < 0)
                        return r;
                if (j->state == JOB_QUEUED && j->origin == JOB_SCHEDULED)
                        j->window = window;
                ids[queued++] = j->id;
        }
        log_info("Nightly run: %d disk(s) queued.", queued);
        (void) manager_schedule(m);
        if (ret_ids)
                *ret_ids = TAKE_PTR(ids);
        return queued;
}

int manager_cancel_job(Manager *m, uint32_t id) {
        Job *j = manager_find_job(m, id);
        Vm *vm;
        VmDisk *d;

        if (!j)
                return -ENOENT;
        vm = manager_find_vm(m, j->vm_name);
        d = vm_find_disk(vm, j->image);
        if (j->state == JOB_QUEUED) {
                log_info(
                        "%s: job %" PRIu32 " on %s cancelled before it started.",
                        j->vm_name,
                        id,
                        j->image);
                if (d) {
                        d->pending = false;
                        (void) vm_state_save(vm);
                }
                job_drop(m, j, "cancelled", -1);
                manager_update_status(m);
                return 0;
        }
        /* The engine orders its writes so that a kill leaves a valid image (leaks at worst,
         * repaired by the next run); the child callback records the end. */
        j->cancelled = true;
        (void) kill(j->pid, SIGKILL);
        return 0;
}

/* Tries to start the queued job j. Returns true when it ran or ended, false to keep waiting. */
static bool schedule_queued(Manager *m, Job *j, bool *waiting) {
        Vm *vm = manager_find_vm(m, j->vm_name);
        VmDisk *d = vm_find_disk(vm, j->image);
        dev_t dev = 0;
        int r;

        if (!vm || !d) {
                job_drop(m, j, "failed", -1); /* the VM or disk left the configuration */
                return true;
        }
        if (j->window && !manager_in_window(m)) {
                log_info(
                        "%s: job %" PRIu32 " on %s did not start before the window closed.",
                        vm->name,
                        j->id,
                        j->image);
                job_drop(m, j, "window-closed", -1);
                return true;
        }
        if (guest_channel_is_connected(vm->channel)) {
                log_info(
                        "%s: running again; job %" PRIu32 " on %s dropped.",
                        vm->name,
                        j->id,
                        j->image);
                job_drop(m, j, "in-use", 3);
                return true;
        }
        r = image_probe_locks(d->path, &dev);
        if (r != 0) {
                if (r < 0)
                        log_warning_errno(r, "%s: cannot probe %s: %m", vm->name, d->path);
                else
                        log_info(
                                "%s: %s is in use; job %" PRIu32 " dropped.",
                                vm->name,
                                d->path,
                                j->id);
                job_drop(m, j, r < 0 ? "failed" : "in-use", r < 0 ? 1 : 3);
                return true;
        }
        if (job_dev_busy(m, dev)) {
                *waiting = true;
                return false;
        }
        if (job_start(m, j, dev) < 0)
                return true; /* dropped by job_start */
        return true;
}

/* Re-arms the retry timer unless it is armed already. */
static int arm_retry(Manager *m) {
        int enabled = SD_EVENT_OFF, r;

        (void) sd_event_source_get_enabled(m->retry_timer, &enabled);
        /* An armed timer is left alone: re-arming it on every call would let frequent calls
         * (a flapping channel) push the retry out forever. */
        if (enabled != SD_EVENT_OFF)
                return 0;
        r = sd_event_source_set_time_relative(
                m->retry_timer, m->config.retry_interval_sec * USEC_PER_SEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->retry_timer, SD_EVENT_ONESHOT);
        if (r < 0)
                return log_error_errno(r, "Failed to arm the retry timer: %m");
        return 0;
}

int manager_schedule(Manager *m) {
        _cleanup_free_ Candidate *c = NULL;
        bool waiting = false;
        int n;

        /* 1. The queue (admin and nightly requests), in order. */
        for (Job *j = m->jobs, *next; j; j = next) {
                next = j->next;
                if (j->state != JOB_QUEUED)
                        continue;
                if (m->n_jobs >= m->config.max_concurrent &&
                    !(j->window && !manager_in_window(m))) {
                        waiting = true;
                        continue; /* later ones may still have to be dropped (window closed) */
                }
                (void) schedule_queued(m, j, &waiting);
        }

        /* 2. Pending disks of stopped VMs, biggest expected gain first, inside the window. */
        if (!manager_in_window(m)) {
                if (manager_n_pending(m) > 0)
                        waiting = true; /* the window timer brings us back as well */
                goto done;
        }
        n = collect_candidates(m, false, &c);
        if (n < 0)
                return log_error_errno(n, "Out of memory.");
        for (int i = 0; i < n; i++) {
                Vm *vm = c[i].vm;
                VmDisk *d = c[i].disk;
                dev_t dev = 0;
                Job *j;
                int r;

                if (m->n_jobs >= m->config.max_concurrent) {
                        waiting = true;
                        break;
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
                r = manager_enqueue(m, vm, d, JOB_AUTO, false, &j);
                if (r < 0) {
                        waiting = true;
                        continue;
                }
                if (job_start(m, j, dev) < 0)
                        waiting = true;
        }
done:
        if (waiting)
                (void) arm_retry(m);
        manager_update_status(m);
        return 0;
}

void manager_jobs_abort(Manager *m) {
        while (m->jobs) {
                Job *j = m->jobs;

                if (j->state == JOB_RUNNING) {
                        (void) kill(j->pid, SIGKILL);
                        (void) waitpid(j->pid, NULL, 0);
                }
                job_unlink(m, j);
                job_free(j);
        }
}
