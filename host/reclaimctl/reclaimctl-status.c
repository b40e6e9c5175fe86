/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimctl status [--json] [--check] and reclaimctl metrics [--textfile DIR]: the host's
 * over-allocation figures (host/status), read from image metadata only, without taking any
 * image lock. Thresholds come from the [thresholds] section of reclaimd.conf.
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "reclaimctl.h"
#include "status.h"

#define DEFAULT_CONFIG_DIR "/etc/reclaim"
#define TEXTFILE_NAME "reclaim.prom"

static const char *arg_config = NULL;

/* "/etc/reclaim" under --root, unless --config-dir says otherwise. Caller frees. */
static char *rooted(const char *path) {
        char *s;

        if (!arg_root || strcmp(arg_root, "/") == 0)
                return strdup(path);
        if (asprintf(&s, "%s%s", arg_root, path) < 0)
                return NULL;
        return s;
}

/*
 * Everything a report needs: configuration (thresholds, state dir), registry, figures.
 * Returns 0 with *ret (caller frees), or -errno (logged).
 */
static int collect(bool scan, StatusReport **ret) {
        _cleanup_(registry_freep) Registry *reg = NULL;
        _cleanup_(status_report_freep) StatusReport *report = NULL;
        _cleanup_free_ char *conf = NULL, *error = NULL, *default_state = NULL, *cache = NULL;
        StatusConfig config = {};
        const char *state_dir;
        int r;

        if (arg_config)
                conf = strdup(arg_config);
        else if (arg_config_dir) {
                if (asprintf(&conf, "%s/reclaimd.conf", arg_config_dir) < 0)
                        conf = NULL;
        } else
                conf = rooted(DEFAULT_CONFIG_DIR "/reclaimd.conf");
        default_state = rooted(DEFAULT_STATE_DIR);
        if (!conf || !default_state)
                return log_error_errno(-ENOMEM, "Out of memory.");

        /* an explicit --config must exist; the default file may be missing */
        r = status_config_load(&config, conf, !arg_config, &error);
        if (r < 0) {
                status_config_done(&config);
                if (r == -ENOMEM)
                        return log_error_errno(r, "Out of memory.");
                log_error("%s", error ?: "cannot read the configuration");
                return r;
        }
        state_dir = arg_state_dir ?: config.state_dir ?: default_state;
        if (asprintf(&cache, "%s/" STATUS_SCAN_CACHE_NAME, state_dir) < 0) {
                status_config_done(&config);
                return log_error_errno(-ENOMEM, "Out of memory.");
        }

        r = load_registry(&reg, NULL);
        if (r >= 0) {
                r = status_collect(
                        reg,
                        &(StatusOptions){ .state_dir = state_dir,
                                          .thresholds = config.thresholds,
                                          .scan_cache = cache,
                                          .scan = scan },
                        &report);
                if (r < 0)
                        (void) log_error_errno(r, "Cannot collect the status: %m");
        }
        if (r >= 0 && scan) {
                (void) mkdir(state_dir, 0755);
                r = status_scan_cache_save(report, cache);
                if (r < 0)
                        (void) log_error_errno(r, "Cannot write %s: %m", cache);
        }
        status_config_done(&config);
        if (r >= 0)
                *ret = TAKE_PTR(report);
        return r;
}

static void print_help_status(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl status [--json] [--check] [--scan] [--config FILE]\n"
                "       reclaimctl status VM [--json]\n"
                "  --json          one JSON document\n"
                "  --scan          also read the data of stopped VMs' images whose cached scan\n"
                "                  is missing or stale (slow), and cache the results\n"
                "  --check         exit 5 when a threshold in [thresholds] is crossed\n"
                "  --config FILE   reclaimd.conf to read the thresholds from\n");
}

int verb_status(int argc, char *argv[]) {
        static const struct option options[] = {
                { "json", no_argument, NULL, 'j' }, { "check", no_argument, NULL, 'c' },
                { "scan", no_argument, NULL, 's' }, { "config", required_argument, NULL, 'C' },
                { "help", no_argument, NULL, 'h' }, {},
        };
        _cleanup_(status_report_freep) StatusReport *report = NULL;
        bool json = false, check = false, scan = false;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'j':
                        json = true;
                        break;
                case 'c':
                        check = true;
                        break;
                case 's':
                        scan = true;
                        break;
                case 'C':
                        arg_config = optarg;
                        break;
                case 'h':
                        print_help_status(stdout);
                        return EXIT_OK;
                default:
                        print_help_status(stderr);
                        return EXIT_USAGE;
                }
        if (argc - optind == 1 && !check && !scan && !arg_config)
                return verb_status_vm(argc, argv); /* status VM */
        if (argc - optind != 0) {
                log_error("Unexpected argument: %s", argv[optind]);
                print_help_status(stderr);
                return EXIT_USAGE;
        }
        if (collect(scan, &report) < 0)
                return EXIT_ERROR;
        r = json ? status_render_json(report, stdout) : status_render_text(report, stdout);
        if (r < 0) {
                log_error_errno(r, "Cannot write the status: %m");
                return EXIT_ERROR;
        }
        if (check && report->n_warnings > 0) {
                log_warning(
                        "%zu warning%s (thresholds crossed or images unreadable).",
                        report->n_warnings,
                        report->n_warnings == 1 ? "" : "s");
                return EXIT_THRESHOLD;
        }
        return EXIT_OK;
}

static void print_help_metrics(FILE *f) {
        fprintf(f,
                "Usage: reclaimctl metrics [--textfile DIR] [--config FILE]\n"
                "  --textfile DIR  write DIR/" TEXTFILE_NAME
                " atomically (node_exporter's\n"
                "                  textfile collector) instead of printing\n"
                "  --config FILE   reclaimd.conf to read the thresholds from\n");
}

/*
 * Writes the exposition to DIR/reclaim.prom: a temporary file in DIR, fsync, rename over the
 * old one. node_exporter reads the directory at any moment and must never see half a file;
 * its collector ignores names that do not end in .prom, so the temporary file is invisible.
 */
static int write_textfile(const StatusReport *report, const char *dir) {
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        _cleanup_close_ int fd = -1;
        FILE *f;
        int r;

        if (asprintf(&path, "%s/" TEXTFILE_NAME, dir) < 0 ||
            asprintf(&tmp, "%s/." TEXTFILE_NAME ".XXXXXX", dir) < 0)
                return log_error_errno(-ENOMEM, "Out of memory.");
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0)
                return log_error_errno(-errno, "Cannot create a file in %s: %m", dir);
        /* readable by node_exporter, which runs as another user */
        if (fchmod(fd, 0644) < 0) {
                r = -errno;
                goto fail_unlink;
        }
        f = fdopen(fd, "w");
        if (!f) {
                r = -errno;
                goto fail_unlink;
        }
        fd = -1; /* the stream owns it now */
        r = status_render_prometheus(report, f);
        if (r >= 0 && fsync(fileno(f)) < 0)
                r = -errno;
        if (fclose(f) != 0 && r >= 0)
                r = -errno;
        if (r < 0)
                goto fail_unlink;
        if (rename(tmp, path) < 0) {
                r = -errno;
                goto fail_unlink;
        }
        return 0;

fail_unlink:
        (void) unlink(tmp);
        return log_error_errno(r, "Cannot write %s: %m", path);
}

int verb_metrics(int argc, char *argv[]) {
        static const struct option options[] = {
                { "textfile", required_argument, NULL, 't' },
                { "config", required_argument, NULL, 'C' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        _cleanup_(status_report_freep) StatusReport *report = NULL;
        const char *textfile = NULL;
        int c, r;

        optind = 0;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 't':
                        textfile = optarg;
                        break;
                case 'C':
                        arg_config = optarg;
                        break;
                case 'h':
                        print_help_metrics(stdout);
                        return EXIT_OK;
                default:
                        print_help_metrics(stderr);
                        return EXIT_USAGE;
                }
        if (argc - optind != 0) {
                log_error("Unexpected argument: %s", argv[optind]);
                print_help_metrics(stderr);
                return EXIT_USAGE;
        }
        if (collect(false, &report) < 0)
                return EXIT_ERROR;
        if (textfile)
                return write_textfile(report, textfile) < 0 ? EXIT_ERROR : EXIT_OK;
        r = status_render_prometheus(report, stdout);
        if (r < 0) {
                log_error_errno(r, "Cannot write the metrics: %m");
                return EXIT_ERROR;
        }
        return EXIT_OK;
}
