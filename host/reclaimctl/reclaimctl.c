/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimctl: the admin CLI. A verb table (wireguard-tools style); each verb parses its own
 * options and returns an exit status:
 *   0 done (also "nothing to do"), 1 error, 2 usage, 3 image in use, 4 image refused.
 * VMs are named through the registry (host/registry: vms.d, libvirt, Proxmox).
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "log.h"
#include "macro.h"
#include "progress.h"
#include "qcow2.h"
#include "reclaimctl.h"
#include "registry.h"
#include "size.h"

/* NULL: under arg_root (or /) */
const char *arg_root = NULL;
const char *arg_config_dir = NULL;
const char *arg_state_dir = NULL;
bool arg_no_daemon = false;

static int exit_status_for(int r) {
        if (r == -EBUSY)
                return EXIT_IN_USE;
        if (qcow2_error_is_refusal(r))
                return EXIT_REFUSED;
        return EXIT_ERROR;
}

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void progress_cb(const char *phase, uint64_t done, uint64_t total, void *userdata) {
        progress_update(userdata, phase, done, total);
}

/* compact's progress: the bar, and "PHASE DONE TOTAL" lines on --progress-fd for reclaimd
 * (on a phase change or a new permille, so a 1 TiB scan writes about a thousand lines). */
typedef struct CompactProgress {
        Progress *bar;
        int fd;
        char phase[32];
        uint64_t permille;
} CompactProgress;

static void compact_progress_cb(const char *phase, uint64_t done, uint64_t total, void *userdata) {
        CompactProgress *p = userdata;
        uint64_t permille = total ?
                (uint64_t) ((long double) MIN(done, total) * 1000.0L / (long double) total) :
                0;
        char line[128];
        int n;

        progress_update(p->bar, phase, done, total);
        if (p->fd < 0 ||
            (strncmp(phase, p->phase, sizeof(p->phase)) == 0 && permille == p->permille))
                return;
        (void) snprintf(p->phase, sizeof(p->phase), "%s", phase);
        p->permille = permille;
        n = snprintf(line, sizeof(line), "%s %" PRIu64 " %" PRIu64 "\n", p->phase, done, total);
        /* best effort: a reader that went away must not stop the compaction */
        if (n > 0 && write(p->fd, line, (size_t) MIN(n, (int) sizeof(line) - 1)) < 0 &&
            errno == EPIPE)
                p->fd = -1;
}

void json_add_u64(json_object *o, const char *key, uint64_t v) {
        json_object_object_add(
                o, key, json_object_new_int64((int64_t) MIN(v, (uint64_t) INT64_MAX)));
}

void json_print(json_object *o) {
        puts(json_object_to_json_string_ext(
                o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
}

/*
 * Opens IMAGE for reading or writing; writable opens take QEMU's locks (-EBUSY when held).
 * On failure *ret_error gets the message (caller frees and logs it).
 */
static int open_image(
        const char *path,
        bool writable,
        bool lock,
        IoBackend **ret_io,
        bool *ret_in_use,
        char **ret_error) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        int r;

        r = io_posix_open(path, writable, &io);
        if (r < 0) {
                if (asprintf(ret_error, "Cannot open %s: %s", path, strerror(-r)) < 0)
                        *ret_error = NULL;
                return r;
        }
        if (lock) {
                r = io_posix_lock_qemu(io);
                if (r == -EBUSY) {
                        if (asprintf(
                                    ret_error,
                                    "%s is in use (a running VM, qemu-nbd or another program "
                                    "holds its image locks); stop it first",
                                    path) < 0)
                                *ret_error = NULL;
                        return r;
                }
                if (r < 0) {
                        if (asprintf(ret_error, "Cannot lock %s: %s", path, strerror(-r)) < 0)
                                *ret_error = NULL;
                        return r;
                }
        } else if (ret_in_use) {
                r = io_posix_probe_qemu_locks(io);
                *ret_in_use = r > 0;
        }
        *ret_io = TAKE_PTR(io);
        return 0;
}

static void print_help_inspect(FILE *f) {
        fprintf(f, "Usage: reclaimctl inspect IMAGE [--json] [--no-scan]\n");
}

static int verb_inspect(int argc, char *argv[]) {
        static const struct option options[] = {
                { "json", no_argument, NULL, 'j' },
                { "no-scan", no_argument, NULL, 'n' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(io_freep) IoBackend *io = NULL;
        _cleanup_(qcow2_closep) Qcow2Image *img = NULL;
        _cleanup_(progress_freep) Progress *bar = NULL;
        _cleanup_free_ char *error = NULL;
        bool json = false, scan = true, in_use = false;
        Qcow2Diag diag = { { 0 } };
        Qcow2Info info;
        const char *path;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'j':
                        json = true;
                        break;
                case 'n':
                        scan = false;
                        break;
                case 'h':
                        print_help_inspect(stdout);
                        return EXIT_OK;
                default:
                        print_help_inspect(stderr);
                        return EXIT_USAGE;
                }
        if (argc - optind != 1) {
                log_error("inspect takes exactly one IMAGE argument.");
                print_help_inspect(stderr);
                return EXIT_USAGE;
        }
        path = argv[optind];

        r = open_image(path, false, false, &io, &in_use, &error);
        if (r < 0) {
                log_error("%s", error ?: strerror(-r));
                return EXIT_ERROR;
        }
        r = qcow2_open(io, 0, &img, &diag);
        if (r < 0) {
                log_error("%s: %s", path, diag.message);
                return exit_status_for(r);
        }
        bar = progress_new(stderr, !json && isatty(STDERR_FILENO));
        r = qcow2_inspect(
                img,
                &(Qcow2InspectOptions){ .scan = scan, .progress = progress_cb, .userdata = bar },
                &info,
                &diag);
        progress_finish(bar);
        if (r < 0) {
                log_error("%s: %s", path, diag.message);
                return exit_status_for(r);
        }

        if (json) {
                _cleanup_(json_object_put_nullp) json_object *o = json_object_new_object();
                json_object_object_add(o, "image", json_object_new_string(path));
                json_add_u64(o, "format_version", info.format_version);
                json_add_u64(o, "cluster_size", info.cluster_size);
                json_add_u64(o, "refcount_bits", info.refcount_bits);
                json_add_u64(o, "virtual_size", info.virtual_size);
                json_add_u64(o, "file_size", info.file_size);
                json_add_u64(o, "allocated_bytes", info.allocated_bytes);
                json_add_u64(o, "data_clusters", info.data_clusters);
                json_add_u64(o, "zero_data_clusters", info.zero_data_clusters);
                json_add_u64(o, "zero_flag_clusters", info.zero_flag_clusters);
                json_add_u64(o, "compressed_clusters", info.compressed_clusters);
                json_add_u64(o, "leaked_clusters", info.leaked_clusters);
                json_add_u64(o, "snapshots", info.snapshots);
                json_add_u64(o, "bitmaps", info.bitmaps);
                json_object_object_add(
                        o,
                        "backing_file",
                        info.has_backing_file ? json_object_new_string(info.backing_file) : NULL);
                json_object_object_add(
                        o, "preallocated", json_object_new_boolean(info.preallocated));
                json_object_object_add(o, "in_use", json_object_new_boolean(in_use));
                json_object_object_add(o, "scanned", json_object_new_boolean(info.scanned));
                json_object_object_add(o, "compactable", json_object_new_boolean(info.compactable));
                json_object_object_add(
                        o,
                        "refusal",
                        info.compactable ? NULL : json_object_new_string(info.refusal));
                json_add_u64(o, "reclaimable_bytes", info.reclaimable_bytes);
                json_add_u64(o, "compacted_size_estimate", info.compacted_size_estimate);
                json_print(o);
                return EXIT_OK;
        }

        char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX], d[FORMAT_BYTES_MAX];
        printf("image:              %s%s\n", path, in_use ? "  (in use)" : "");
        printf("format:             qcow2 v%u, %s clusters, %u-bit refcounts\n",
               info.format_version,
               format_bytes(a, sizeof(a), info.cluster_size),
               info.refcount_bits);
        printf("virtual size:       %s\n", format_bytes(a, sizeof(a), info.virtual_size));
        printf("file size:          %s (%s allocated in it)\n",
               format_bytes(a, sizeof(a), info.file_size),
               format_bytes(b, sizeof(b), info.allocated_bytes));
        if (info.has_backing_file)
                printf("backing file:       %s\n", info.backing_file);
        printf("data clusters:      %" PRIu64 " (%" PRIu64 " all-zero%s), %" PRIu64
               " zero-flagged, %" PRIu64 " compressed\n",
               info.data_clusters,
               info.zero_data_clusters,
               info.scanned ? "" : ", not scanned",
               info.zero_flag_clusters,
               info.compressed_clusters);
        printf("snapshots:          %u\n", info.snapshots);
        if (info.bitmaps)
                printf("bitmaps:            %u\n", info.bitmaps);
        if (info.leaked_clusters)
                printf("leaked clusters:    %" PRIu64 " (repaired by compact)\n",
                       info.leaked_clusters);
        if (info.preallocated)
                printf("preallocated:       yes (compact skips it unless --force)\n");
        if (info.compactable)
                printf("reclaimable:        %s (compacted size about %s)\n",
                       format_bytes(a, sizeof(a), info.reclaimable_bytes),
                       format_bytes(d, sizeof(d), info.compacted_size_estimate));
        else
                printf("compactable:        no: %s\n", info.refusal);
        return EXIT_OK;
}

static void print_help_compact(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl compact --image IMAGE [--dry-run] [--force] [--json]\n"
                "       reclaimctl compact VM [--dry-run] [--force] [--json]\n"
                "       reclaimctl compact --all [--now] [--json]\n");
}

/* ---- the VM registry ---- */

static void registry_diag(const RegistryDiag *d, void *userdata) {
        /* the notes are about configuration files, not about where in reclaimctl they arose:
         * printed like the other levels, without the source location debug messages get */
        if (d->level > log_get_max_level())
                return;
        (void) log_full_errno(MIN(d->level, LOG_INFO), 0, "%s", d->text);
}

/*
 * Loads the registry from the configured roots. *ret_where gets the directories searched,
 * for messages. Returns 0 or a negative errno (logged).
 */
int load_registry(Registry **ret, char **ret_where) {
        _cleanup_(registry_paths_done) RegistryPaths paths = {};
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_free_ char *vms_d = NULL;
        int r;

        r = registry_paths_init(&paths, arg_root);
        if (r < 0)
                return log_error_errno(r, "Cannot set up the configuration paths: %m");
        if (arg_config_dir) {
                if (asprintf(&vms_d, "%s/vms.d", arg_config_dir) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory.");
                r = registry_paths_set(&paths.vms_d, vms_d);
                if (r < 0)
                        return log_error_errno(r, "Cannot set up the configuration paths: %m");
        }
        r = registry_load(&paths, registry_diag, NULL, &reg);
        if (r < 0)
                return log_error_errno(r, "Cannot load the VM registry: %m");
        if (ret_where &&
            asprintf(
                    ret_where,
                    "%s, %s, %s",
                    paths.vms_d,
                    paths.libvirt_qemu,
                    paths.pve_qemu_server) < 0)
                return log_error_errno(-ENOMEM, "Out of memory.");
        *ret = TAKE_PTR(reg);
        return 0;
}

/* ---- compact ---- */

static int
compact_failed(const char *image, int status, json_object **ret_json, const char *fmt, ...)
        _printf_(4, 5);

/* Logs why image failed; with ret_json, also describes it as {image, error, exit_status}. */
static int
compact_failed(const char *image, int status, json_object **ret_json, const char *fmt, ...) {
        _cleanup_free_ char *m = NULL;
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vasprintf(&m, fmt, ap);
        va_end(ap);
        log_error("%s", n >= 0 ? m : "out of memory");
        if (ret_json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "image", json_object_new_string(image));
                json_object_object_add(o, "error", json_object_new_string(n >= 0 ? m : ""));
                json_object_object_add(o, "exit_status", json_object_new_int(status));
                *ret_json = o;
        }
        return status;
}

/*
 * Compacts one image: lock, open, compact, report. Prints the text summary unless req->json;
 * with req->json, *ret_json gets the per-image object (on failure: image, error and
 * exit_status). Returns an exit status (EXIT_*). Holds the image's locks until it returns.
 */
static int compact_image(const char *image, const CompactRequest *req, json_object **ret_json) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        _cleanup_(qcow2_closep) Qcow2Image *img = NULL;
        _cleanup_(progress_freep) Progress *bar = NULL;
        _cleanup_free_ char *error = NULL;
        Qcow2CompactOptions opts = req->opts;
        Qcow2CompactStats st = { 0 };
        Qcow2Diag diag = { { 0 } };
        json_object **want_json = req->json ? ret_json : NULL;
        uint64_t t0;
        int r;

        t0 = now_ms();
        /*
         * A dry run only reads, but it still must not run against a live image: it takes the
         * same locks a real run takes, so its answer is the one a real run would give.
         */
        r = open_image(image, !opts.dry_run, true, &io, NULL, &error);
        if (r < 0)
                return compact_failed(
                        image, exit_status_for(r), want_json, "%s", error ?: strerror(-r));
        r = qcow2_open(io, opts.dry_run ? 0 : QCOW2_OPEN_WRITE, &img, &diag);
        if (r < 0)
                return compact_failed(
                        image,
                        exit_status_for(r),
                        want_json,
                        "%s: refused: %s",
                        image,
                        diag.message);
        bar = progress_new(stderr, !req->json && isatty(STDERR_FILENO));
        CompactProgress prog = { .bar = bar, .fd = req->progress_fd, .permille = UINT64_MAX };
        opts.progress = compact_progress_cb;
        opts.userdata = &prog;
        r = qcow2_compact(img, &opts, &st, &diag);
        progress_finish(bar);
        if (r < 0)
                return compact_failed(
                        image,
                        exit_status_for(r),
                        want_json,
                        "%s: %s: %s",
                        image,
                        qcow2_error_is_refusal(r) ? "refused" : "compaction failed",
                        diag.message[0] ? diag.message : strerror(-r));
        uint64_t duration = now_ms() - t0;

        if (req->json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "image", json_object_new_string(image));
                json_add_u64(o, "file_size_before", st.file_size_before);
                json_add_u64(o, "file_size_after", st.file_size_after);
                json_add_u64(o, "clusters_zeroed", st.clusters_zeroed);
                json_add_u64(o, "clusters_moved", st.clusters_moved);
                json_add_u64(o, "bytes_moved", st.bytes_moved);
                json_add_u64(o, "bytes_written", st.bytes_written);
                json_add_u64(o, "image_end", st.image_end);
                json_add_u64(o, "leaks_repaired", st.leaks_repaired);
                json_add_u64(o, "duration_ms", duration);
                json_object_object_add(o, "dry_run", json_object_new_boolean(st.dry_run));
                json_object_object_add(
                        o,
                        "skipped",
                        st.skipped_preallocated ? json_object_new_string("preallocated") : NULL);
                *ret_json = o;
                return EXIT_OK;
        }

        char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX], d[FORMAT_BYTES_MAX], m[FORMAT_BYTES_MAX];
        if (st.skipped_preallocated) {
                printf("%s: skipped: the image looks preallocated (every cluster allocated in order); "
                       "compacting would undo the preallocation. Use --force to compact it anyway.\n",
                       image);
                return EXIT_OK;
        }
        printf("%s%s: %s -> %s (%s %s); %" PRIu64 " zero clusters released, %" PRIu64
               " clusters moved (%s) in %.1f s\n",
               image,
               st.dry_run ? " (dry run)" : "",
               format_bytes(a, sizeof(a), st.file_size_before),
               format_bytes(b, sizeof(b), st.file_size_after),
               st.dry_run ? "would reclaim" : "reclaimed",
               format_bytes(d, sizeof(d), st.file_size_before - st.file_size_after),
               st.clusters_zeroed,
               st.clusters_moved,
               format_bytes(m, sizeof(m), st.bytes_moved),
               (double) duration / 1000.0);
        if (st.image_end && st.image_end < st.file_size_after)
                printf("%s: the image now ends at %s; the file is a block device and was not resized\n",
                       image,
                       format_bytes(a, sizeof(a), st.image_end));
        return EXIT_OK;
}

/* The rank of an exit status when several disks report: error > refused > in use > done. */
int exit_status_rank(int status) {
        switch (status) {
        case EXIT_OK:
                return 0;
        case EXIT_IN_USE:
                return 1;
        case EXIT_REFUSED:
                return 2;
        default:
                return 3;
        }
}

/*
 * compact --all without reclaimd: every disk of every VM with auto_compact not "no", in
 * registry order. A disk in use (its VM runs) is skipped, not an error. Returns the worst
 * exit status of the others.
 */
static int compact_all_direct(const CompactRequest *req) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        json_object *disks = NULL;
        const RegistryVm *vm;
        int status = EXIT_OK;

        if (load_registry(&reg, NULL) < 0)
                return EXIT_ERROR;
        if (req->json) {
                o = json_object_new_object();
                disks = json_object_new_array();
                json_object_object_add(o, "vm", NULL);
                json_object_object_add(o, "disks", disks);
        }
        REGISTRY_FOREACH_VM(vm, reg, i) {
                if (vm->auto_compact == 0) {
                        log_info("%s: auto_compact = no, skipped.", vm->name);
                        continue;
                }
                for (size_t k = 0; k < vm->n_disks; k++) {
                        json_object *d = NULL;
                        int s = compact_image(vm->disks[k].path, req, &d);

                        if (d)
                                json_object_array_add(disks, d);
                        if (s == EXIT_IN_USE)
                                continue; /* a running VM: the next night */
                        if (exit_status_rank(s) > exit_status_rank(status))
                                status = s;
                }
        }
        if (o)
                json_print(o);
        return status;
}

/* Compacts every disk of the VM called name, in order; returns the worst exit status. */
static int compact_vm_direct(const char *name, const CompactRequest *req) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        _cleanup_free_ char *where = NULL;
        const RegistryVm *vm;
        json_object *disks = NULL;
        int status = EXIT_OK;

        if (load_registry(&reg, &where) < 0)
                return EXIT_ERROR;
        vm = registry_find(reg, name);
        if (!vm) {
                log_error("no VM named %s (looked in %s)", name, where);
                return EXIT_ERROR;
        }
        if (req->json) {
                o = json_object_new_object();
                disks = json_object_new_array();
                json_object_object_add(o, "vm", json_object_new_string(vm->name));
                json_object_object_add(o, "disks", disks);
        }
        if (vm->n_disks == 0 && !req->json)
                printf("%s: no qcow2 disk; nothing to do\n", vm->name);
        for (size_t i = 0; i < vm->n_disks; i++) {
                json_object *d = NULL;
                int s;

                s = compact_image(vm->disks[i].path, req, &d);
                if (d)
                        json_object_array_add(disks, d);
                if (exit_status_rank(s) > exit_status_rank(status))
                        status = s;
        }
        if (o)
                json_print(o);
        return status;
}

static int verb_compact(int argc, char *argv[]) {
        static const struct option options[] = {
                { "image", required_argument, NULL, 'i' },
                { "dry-run", no_argument, NULL, 'n' },
                { "force", no_argument, NULL, 'f' },
                { "json", no_argument, NULL, 'j' },
                { "batch-size", required_argument, NULL, 'b' },
                { "progress-fd", required_argument, NULL, 'p' },
                { "all", no_argument, NULL, 'a' },
                { "now", no_argument, NULL, 'N' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        CompactRequest req = { .progress_fd = -1 };
        const char *image = NULL;
        bool all = false;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "i:nfh", options, NULL)) >= 0)
                switch (c) {
                case 'i':
                        image = optarg;
                        break;
                case 'n':
                        req.opts.dry_run = true;
                        break;
                case 'f':
                        req.opts.force = true;
                        break;
                case 'a':
                        all = true;
                        break;
                case 'N':
                        req.now = true;
                        break;
                case 'j':
                        req.json = true;
                        break;
                case 'b':
                        r = parse_size(optarg, &req.opts.batch_bytes);
                        if (r < 0 || req.opts.batch_bytes == 0) {
                                log_error("Invalid --batch-size: %s", optarg);
                                return EXIT_USAGE;
                        }
                        break;
                case 'p': {
                        char *end;
                        long v;

                        errno = 0;
                        v = strtol(optarg, &end, 10);
                        req.progress_fd =
                                errno == 0 && *optarg && !*end && v >= 0 && v <= INT32_MAX ?
                                (int) v :
                                -1;
                        if (req.progress_fd < 0 || fcntl(req.progress_fd, F_GETFD) < 0) {
                                log_error("Invalid --progress-fd: %s", optarg);
                                return EXIT_USAGE;
                        }
                        /* the fd is a pipe to reclaimd: no SIGPIPE if it goes away */
                        (void) signal(SIGPIPE, SIG_IGN);
                        break;
                }
                case 'h':
                        print_help_compact(stdout);
                        return EXIT_OK;
                default:
                        print_help_compact(stderr);
                        return EXIT_USAGE;
                }
        if (req.now && !all) {
                log_error("--now goes with --all.");
                return EXIT_USAGE;
        }
        if (all) {
                if (image || argc - optind != 0 || req.opts.dry_run || req.opts.force) {
                        log_error("--all takes no VM, --image, --dry-run or --force.");
                        return EXIT_USAGE;
                }
                if (req.opts.batch_bytes == 0 && !arg_no_daemon) {
                        r = bus_compact_all(&req);
                        if (r != -ESRCH)
                                return r;
                        log_info("reclaimd is not running; compacting every stopped VM directly.");
                }
                return compact_all_direct(&req);
        }
        if (!image) {
                if (argc - optind == 1) {
                        /* A dry run only reads: the daemon is not needed. */
                        if (!req.opts.dry_run && req.opts.batch_bytes == 0 && !arg_no_daemon) {
                                r = bus_compact_vm(argv[optind], &req);
                                if (r != -ESRCH)
                                        return r;
                                log_debug("reclaimd is not running; compacting directly.");
                        }
                        return compact_vm_direct(argv[optind], &req);
                }
                if (argc - optind > 1)
                        log_error("compact takes one VM name.");
                else
                        log_error("compact needs --image IMAGE or a VM name.");
                print_help_compact(stderr);
                return EXIT_USAGE;
        }
        if (argc - optind != 0) {
                log_error("Unexpected argument: %s", argv[optind]);
                return EXIT_USAGE;
        }

        /* a failed image prints nothing on stdout, as the contract says */
        _cleanup_(json_object_put_nullp) json_object *o = NULL;
        r = compact_image(image, &req, &o);
        if (r == EXIT_OK && o)
                json_print(o);
        return r;
}

/* ---- list ---- */

int parse_json_only(int argc, char *argv[], int nargs, void (*help)(FILE *f), bool *json) {
        static const struct option options[] = {
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'j':
                        *json = true;
                        break;
                case 'h':
                        help(stdout);
                        return EXIT_OK;
                default:
                        help(stderr);
                        return EXIT_USAGE;
                }
        if (argc - optind != nargs) {
                if (argc - optind > nargs)
                        log_error("Unexpected argument: %s", argv[optind + nargs]);
                help(stderr);
                return EXIT_USAGE;
        }
        return -1;
}

static void print_help_list(FILE *f) {
        fprintf(f, "Usage: reclaimctl list [--json]\n");
}

/* The size of a disk's file (of the device, for a block device). Returns 0 or -errno. */
static int disk_size(const char *path, uint64_t *ret) {
        _cleanup_close_ int fd = -1;
        struct stat st;
        off_t end;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISREG(st.st_mode)) {
                *ret = (uint64_t) st.st_size;
                return 0;
        }
        if (!S_ISBLK(st.st_mode))
                return -EBADFD;
        end = lseek(fd, 0, SEEK_END);
        if (end < 0)
                return -errno;
        *ret = (uint64_t) end;
        return 0;
}

static const char *disk_size_error(int r) {
        return r == -EBADFD ? "not a regular file or block device" : strerror(-r);
}

static json_object *json_string_or_null(const char *s) {
        return s ? json_object_new_string(s) : NULL;
}

static json_object *list_vm_json(const RegistryVm *vm) {
        json_object *o = json_object_new_object(), *disks = json_object_new_array(), *g = NULL;

        json_object_object_add(o, "name", json_object_new_string(vm->name));
        json_object_object_add(
                o, "source", json_object_new_string(registry_source_to_string(vm->source)));
        json_object_object_add(o, "source_file", json_object_new_string(vm->source_file));
        json_object_object_add(o, "overrides_file", json_string_or_null(vm->overrides_file));
        json_object_object_add(o, "channel", json_string_or_null(vm->channel));
        json_object_object_add(
                o,
                "auto_compact",
                vm->auto_compact < 0 ? NULL : json_object_new_boolean(vm->auto_compact));
        if (vm->min_gain.kind != REGISTRY_MIN_GAIN_UNSET) {
                g = json_object_new_object();
                json_add_u64(
                        g,
                        vm->min_gain.kind == REGISTRY_MIN_GAIN_PERCENT ? "percent" : "bytes",
                        vm->min_gain.value);
        }
        json_object_object_add(o, "min_gain", g);
        BusVmSummary sum;
        bool have = bus_vm_summary(vm->name, &sum) == 0;
        json_object_object_add(
                o, "guest_connected", have ? json_object_new_boolean(sum.connected) : NULL);
        json_object_object_add(
                o, "pending_disks", have ? json_object_new_int64(sum.pending) : NULL);
        for (size_t i = 0; i < vm->n_disks; i++) {
                const RegistryDisk *d = &vm->disks[i];
                json_object *dj = json_object_new_object();
                uint64_t size;
                int r;

                json_object_object_add(dj, "path", json_object_new_string(d->path));
                json_object_object_add(dj, "format", json_object_new_string(d->format));
                json_object_object_add(dj, "drive", json_string_or_null(d->drive));
                json_object_object_add(dj, "storage", json_string_or_null(d->storage));
                json_object_object_add(dj, "storage_type", json_string_or_null(d->storage_type));
                json_object_object_add(dj, "block", json_object_new_boolean(d->block));
                r = disk_size(d->path, &size);
                if (r < 0) {
                        json_object_object_add(dj, "file_size", NULL);
                        json_object_object_add(
                                dj, "error", json_object_new_string(disk_size_error(r)));
                } else {
                        json_add_u64(dj, "file_size", size);
                        json_object_object_add(dj, "error", NULL);
                }
                json_object_array_add(disks, dj);
        }
        json_object_object_add(o, "disks", disks);
        return o;
}

static void list_vm_text(const RegistryVm *vm) {
        char a[FORMAT_BYTES_MAX];

        printf("%s (%s, %s)\n", vm->name, registry_source_to_string(vm->source), vm->source_file);
        if (vm->overrides_file)
                printf("  policy:  %s\n", vm->overrides_file);
        printf("  channel: %s\n", vm->channel ?: "-");
        BusVmSummary sum;
        if (bus_vm_summary(vm->name, &sum) == 0)
                printf("  reclaimd: guest %s, %" PRIu32 " disk(s) pending\n",
                       sum.connected ? "connected" : "not connected",
                       sum.pending);
        if (vm->auto_compact >= 0)
                printf("  auto_compact: %s\n", vm->auto_compact ? "yes" : "no");
        if (vm->min_gain.kind == REGISTRY_MIN_GAIN_PERCENT)
                printf("  min_gain: %" PRIu64 "%%\n", vm->min_gain.value);
        else if (vm->min_gain.kind == REGISTRY_MIN_GAIN_BYTES)
                printf("  min_gain: %s\n", format_bytes(a, sizeof(a), vm->min_gain.value));
        if (vm->n_disks == 0)
                printf("  no qcow2 disk\n");
        for (size_t i = 0; i < vm->n_disks; i++) {
                const RegistryDisk *d = &vm->disks[i];
                uint64_t size;
                int r = disk_size(d->path, &size);

                printf("  %-9s %s  %s%s%s%s\n",
                       d->drive ?: "disk",
                       d->path,
                       r < 0 ? disk_size_error(r) : format_bytes(a, sizeof(a), size),
                       d->storage ? "  [" : "",
                       d->storage ?: "",
                       d->storage ? "]" : "");
        }
}

static int verb_list(int argc, char *argv[]) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_free_ char *where = NULL;
        const RegistryVm *vm;
        bool json = false;
        int r;

        r = parse_json_only(argc, argv, 0, print_help_list, &json);
        if (r >= 0)
                return r;
        if (load_registry(&reg, &where) < 0)
                return EXIT_ERROR;

        if (json) {
                _cleanup_(json_object_put_nullp) json_object *o = json_object_new_object();
                json_object *vms = json_object_new_array();

                json_object_object_add(o, "vms", vms);
                REGISTRY_FOREACH_VM(vm, reg, i) {
                        json_object_array_add(vms, list_vm_json(vm));
                }
                json_print(o);
                return EXIT_OK;
        }
        if (registry_size(reg) == 0) {
                printf("No VMs (looked in %s).\n", where);
                return EXIT_OK;
        }
        REGISTRY_FOREACH_VM(vm, reg, i) {
                if (i > 0)
                        putchar('\n');
                list_vm_text(vm);
        }
        return EXIT_OK;
}

typedef struct Verb {
        const char *name;
        int (*fn)(int argc, char *argv[]);
        const char *help;
} Verb;

static const Verb verbs[] = {
        { "inspect", verb_inspect, "Show an image's allocation and what compaction would reclaim" },
        { "compact", verb_compact, "Compact a stopped VM's qcow2 disks (or one image) in place" },
        { "list", verb_list, "List the VMs found in vms.d, libvirt and Proxmox configuration" },
        { "status",
          verb_status,
          "Show per storage how over-allocated the host is (--check); or one VM" },
        { "metrics", verb_metrics, "Print the status figures for Prometheus (--textfile DIR)" },
        { "reclaim", verb_reclaim, "Ask a running VM's guest agent to free its space now" },
        { "jobs", verb_jobs, "List reclaimd's queued and running compactions" },
        { "cancel", verb_cancel, "Cancel one of reclaimd's compaction jobs" },
};

static void print_help(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl [--root DIR] [--config-dir DIR] [--state-dir DIR] [--no-daemon] [-v]\n"
                "                  VERB [ARGS...]\n\n"
                "Give thin-provisioned qcow2 images their disk space back.\n\nVerbs:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].help);
        fprintf(f,
                "\ncompact VM, status VM, list go through reclaimd when it runs (--no-daemon: never);\n"
                "reclaim, jobs and cancel need it.\n"
                "\nExit status: 0 done, 1 error, 2 usage, 3 image in use, 4 image refused\n"
                "(for a VM, the worst over its disks: 1, then 4, then 3), 5 status --check:\n"
                "a threshold is crossed.\n"
                "See reclaimctl(1).\n");
}

/*
 * "--name VALUE" or "--name=VALUE" at argv[*i]: sets *ret (advancing *i past VALUE) and
 * returns 1; 0 when argv[*i] is another option; -EINVAL when VALUE is missing.
 */
static int global_option_value(int argc, char *argv[], int *i, const char *name, const char **ret) {
        const char *a = argv[*i];
        size_t n = strlen(name);

        if (strncmp(a, name, n) != 0)
                return 0;
        if (a[n] == '=') {
                *ret = a + n + 1;
                return 1;
        }
        if (a[n] != '\0')
                return 0;
        if (*i + 1 >= argc)
                return -EINVAL;
        *ret = argv[++*i];
        return 1;
}

static int run(int argc, char *argv[]) {
        static const char *const valued[] = { "--root", "--config-dir", "--state-dir" };
        const char **targets[] = { &arg_root, &arg_config_dir, &arg_state_dir };
        int i;

        log_set_program_name("reclaimctl");
        /* Global options come before the verb; the verb parses the rest. */
        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                const char *a = argv[i];
                bool taken = false;

                if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
                        print_help(stdout);
                        return EXIT_OK;
                } else if (strcmp(a, "--version") == 0) {
                        printf("reclaimctl %s\n", RECLAIM_VERSION);
                        return EXIT_OK;
                } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
                        log_set_max_level(LOG_DEBUG);
                        continue;
                } else if (strcmp(a, "--no-daemon") == 0) {
                        arg_no_daemon = true;
                        continue;
                }
                for (size_t k = 0; k < ELEMENTSOF(valued) && !taken; k++) {
                        int r = global_option_value(argc, argv, &i, valued[k], targets[k]);
                        if (r < 0) {
                                log_error("%s needs a value.", valued[k]);
                                return EXIT_USAGE;
                        }
                        taken = r > 0;
                }
                if (!taken) {
                        log_error("Unknown option: %s", a);
                        print_help(stderr);
                        return EXIT_USAGE;
                }
        }
        if (arg_root && arg_root[0] != '/') {
                log_error("--root needs an absolute path: %s", arg_root);
                return EXIT_USAGE;
        }
        if (i >= argc) {
                print_help(stderr);
                return EXIT_USAGE;
        }
        for (size_t v = 0; v < ELEMENTSOF(verbs); v++)
                if (strcmp(argv[i], verbs[v].name) == 0)
                        return verbs[v].fn(argc - i, argv + i);
        if (strcmp(argv[i], "help") == 0) {
                print_help(stdout);
                return EXIT_OK;
        }
        log_error("Unknown verb: %s", argv[i]);
        print_help(stderr);
        return EXIT_USAGE;
}

int main(int argc, char *argv[]) {
        return run(argc, argv);
}
