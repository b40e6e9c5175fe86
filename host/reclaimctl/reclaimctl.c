/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimctl: the admin CLI. A verb table (wireguard-tools style); each verb parses its own
 * options and returns an exit status:
 *   0 done (also "nothing to do"), 1 error, 2 usage, 3 image in use, 4 image refused.
 */

#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "log.h"
#include "macro.h"
#include "progress.h"
#include "qcow2.h"
#include "size.h"

enum {
        EXIT_OK = 0,
        EXIT_ERROR = 1,
        EXIT_USAGE = 2,
        EXIT_IN_USE = 3,
        EXIT_REFUSED = 4,
};

static const char *arg_config_dir = "/etc/reclaim";
static const char *arg_state_dir = "/var/lib/reclaim";

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

static void json_add_u64(json_object *o, const char *key, uint64_t v) {
        json_object_object_add(
                o, key, json_object_new_int64((int64_t) MIN(v, (uint64_t) INT64_MAX)));
}

static void json_print(json_object *o) {
        puts(json_object_to_json_string_ext(
                o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
}

static inline json_object *json_object_put_null(json_object *o) {
        (void) json_object_put(o);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put_null);

/* Opens IMAGE for reading or writing; writable opens take QEMU's locks (-EBUSY when held). */
static int
open_image(const char *path, bool writable, bool lock, IoBackend **ret_io, bool *ret_in_use) {
        _cleanup_(io_freep) IoBackend *io = NULL;
        int r;

        r = io_posix_open(path, writable, &io);
        if (r < 0)
                return log_error_errno(r, "Cannot open %s: %m", path);
        if (lock) {
                r = io_posix_lock_qemu(io);
                if (r == -EBUSY)
                        return log_error_errno(
                                r,
                                "%s is in use (a running VM, qemu-nbd or another program "
                                "holds its image locks); stop it first",
                                path);
                if (r < 0)
                        return log_error_errno(r, "Cannot lock %s: %m", path);
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

        r = open_image(path, false, false, &io, &in_use);
        if (r < 0)
                return EXIT_ERROR;
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
                "       reclaimctl compact VM\n");
}

static int verb_compact(int argc, char *argv[]) {
        static const struct option options[] = {
                { "image", required_argument, NULL, 'i' },
                { "dry-run", no_argument, NULL, 'n' },
                { "force", no_argument, NULL, 'f' },
                { "json", no_argument, NULL, 'j' },
                { "batch-size", required_argument, NULL, 'b' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(io_freep) IoBackend *io = NULL;
        _cleanup_(qcow2_closep) Qcow2Image *img = NULL;
        _cleanup_(progress_freep) Progress *bar = NULL;
        Qcow2CompactOptions opts = { 0 };
        Qcow2CompactStats st = { 0 };
        Qcow2Diag diag = { { 0 } };
        const char *image = NULL;
        bool json = false;
        uint64_t t0;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "i:nfh", options, NULL)) >= 0)
                switch (c) {
                case 'i':
                        image = optarg;
                        break;
                case 'n':
                        opts.dry_run = true;
                        break;
                case 'f':
                        opts.force = true;
                        break;
                case 'j':
                        json = true;
                        break;
                case 'b':
                        r = parse_size(optarg, &opts.batch_bytes);
                        if (r < 0 || opts.batch_bytes == 0) {
                                log_error("Invalid --batch-size: %s", optarg);
                                return EXIT_USAGE;
                        }
                        break;
                case 'h':
                        print_help_compact(stdout);
                        return EXIT_OK;
                default:
                        print_help_compact(stderr);
                        return EXIT_USAGE;
                }
        if (!image) {
                if (argc - optind == 1) {
                        /* The VM registry (vms.d, libvirt, Proxmox) is not part of this build. */
                        log_error(
                                "Cannot resolve VM '%s': no VM registry in this version; "
                                "use --image PATH.",
                                argv[optind]);
                        return EXIT_ERROR;
                }
                log_error("compact needs --image IMAGE or a VM name.");
                print_help_compact(stderr);
                return EXIT_USAGE;
        }
        if (argc - optind != 0) {
                log_error("Unexpected argument: %s", argv[optind]);
                return EXIT_USAGE;
        }

        t0 = now_ms();
        /*
         * A dry run only reads, but it still must not run against a live image: it takes the
         * same locks a real run takes, so its answer is the one a real run would give.
         */
        r = open_image(image, !opts.dry_run, true, &io, NULL);
        if (r < 0)
                return exit_status_for(r);
        r = qcow2_open(io, opts.dry_run ? 0 : QCOW2_OPEN_WRITE, &img, &diag);
        if (r < 0) {
                log_error("%s: refused: %s", image, diag.message);
                return exit_status_for(r);
        }
        bar = progress_new(stderr, !json && isatty(STDERR_FILENO));
        opts.progress = progress_cb;
        opts.userdata = bar;
        r = qcow2_compact(img, &opts, &st, &diag);
        progress_finish(bar);
        if (r < 0) {
                if (qcow2_error_is_refusal(r))
                        log_error(
                                "%s: refused: %s",
                                image,
                                diag.message[0] ? diag.message : strerror(-r));
                else
                        log_error(
                                "%s: compaction failed: %s",
                                image,
                                diag.message[0] ? diag.message : strerror(-r));
                return exit_status_for(r);
        }
        uint64_t duration = now_ms() - t0;

        if (json) {
                _cleanup_(json_object_put_nullp) json_object *o = json_object_new_object();
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
                json_print(o);
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

typedef struct Verb {
        const char *name;
        int (*fn)(int argc, char *argv[]);
        const char *help;
} Verb;

static const Verb verbs[] = {
        { "inspect", verb_inspect, "Show an image's allocation and what compaction would reclaim" },
        { "compact", verb_compact, "Compact a stopped VM's qcow2 image in place" },
};

static void print_help(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl [--config-dir DIR] [--state-dir DIR] [-v] VERB [ARGS...]\n\n"
                "Give thin-provisioned qcow2 images their disk space back.\n\nVerbs:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                fprintf(f, "  %-10s %s\n", verbs[i].name, verbs[i].help);
        fprintf(f,
                "\nExit status: 0 done, 1 error, 2 usage, 3 image in use, 4 image refused.\n"
                "See reclaimctl(1).\n");
}

static int run(int argc, char *argv[]) {
        int i;

        log_set_program_name("reclaimctl");
        /* Global options come before the verb; the verb parses the rest. */
        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                const char *a = argv[i];
                if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
                        print_help(stdout);
                        return EXIT_OK;
                } else if (strcmp(a, "--version") == 0) {
                        printf("reclaimctl %s\n", RECLAIM_VERSION);
                        return EXIT_OK;
                } else if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0)
                        log_set_max_level(LOG_DEBUG);
                else if (
                        (strcmp(a, "--config-dir") == 0 || strcmp(a, "--state-dir") == 0) &&
                        i + 1 < argc) {
                        if (a[2] == 'c')
                                arg_config_dir = argv[++i];
                        else
                                arg_state_dir = argv[++i];
                } else {
                        log_error("Unknown option: %s", a);
                        print_help(stderr);
                        return EXIT_USAGE;
                }
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
