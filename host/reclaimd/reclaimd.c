/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimd: the host daemon. Keeps one channel per VM to its guest agent, marks disks worth
 * compacting from the guests' reports, and compacts them in place once the VM has stopped
 * (channel hangup and no QEMU image lock), one supervised reclaimctl helper per image.
 *
 * Exit status: 0 after SIGTERM/SIGINT, 1 on a runtime error, 2 on a usage or configuration
 * error.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include "log.h"
#include "macro.h"
#include "manager.h"

#define DEFAULT_CONFIG_DIR "/etc/reclaim"
#define DEFAULT_STATE_DIR "/var/lib/reclaim"
#define DEFAULT_RECLAIMCTL RECLAIMCTL_PATH /* set by meson: BINDIR/reclaimctl */

static const char *arg_config = NULL;
static const char *arg_config_dir = NULL;
static const char *arg_state_dir = NULL;
static const char *arg_root = NULL;
static const char *arg_reclaimctl = NULL;

static void help(FILE *f) {
        fprintf(f,
                "Usage: reclaimd [OPTIONS]\n\n"
                "Host daemon of reclaim: guest channels and in-place qcow2 compaction.\n\n"
                "  -h --help              show this help\n"
                "     --version           show the version\n"
                "     --config FILE       configuration file (default %s/reclaimd.conf)\n"
                "     --config-dir DIR    configuration directory (default %s)\n"
                "     --state-dir DIR     state directory (default %s)\n"
                "     --root DIR          read the VM configuration under DIR\n"
                "     --reclaimctl PATH   the compaction helper (default %s)\n"
                "  -v --verbose           log debug messages\n",
                DEFAULT_CONFIG_DIR,
                DEFAULT_CONFIG_DIR,
                DEFAULT_STATE_DIR,
                DEFAULT_RECLAIMCTL);
}

/* Returns 1 to go on, 0 to exit successfully (--help), -EINVAL on a usage error (logged). */
static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_CONFIG,
                ARG_CONFIG_DIR,
                ARG_STATE_DIR,
                ARG_ROOT,
                ARG_RECLAIMCTL
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "config-dir", required_argument, NULL, ARG_CONFIG_DIR },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "root", required_argument, NULL, ARG_ROOT },
                { "reclaimctl", required_argument, NULL, ARG_RECLAIMCTL },
                { "verbose", no_argument, NULL, 'v' },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "hv", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help(stdout);
                        return 0;
                case ARG_VERSION:
                        printf("reclaimd %s\n", RECLAIM_VERSION);
                        return 0;
                case ARG_CONFIG:
                        arg_config = optarg;
                        break;
                case ARG_CONFIG_DIR:
                        arg_config_dir = optarg;
                        break;
                case ARG_STATE_DIR:
                        arg_state_dir = optarg;
                        break;
                case ARG_ROOT:
                        arg_root = optarg;
                        break;
                case ARG_RECLAIMCTL:
                        arg_reclaimctl = optarg;
                        break;
                case 'v':
                        log_set_max_level(LOG_DEBUG);
                        break;
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(-EINVAL, "Unexpected argument: %s", argv[optind]);
        if (arg_root && arg_root[0] != '/')
                return log_error_errno(-EINVAL, "--root needs an absolute path: %s", arg_root);
        return 1;
}

/* Resolves configuration and paths; returns 0, -EINVAL (bad configuration, logged), -ENOMEM. */
static int load_config(ManagerConfig *config, RegistryPaths *paths, char **ret_conf) {
        _cleanup_free_ char *conf = NULL, *vms_d = NULL;
        int r;

        r = manager_config_init(
                config, arg_state_dir ?: DEFAULT_STATE_DIR, arg_reclaimctl ?: DEFAULT_RECLAIMCTL);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");
        if (arg_config)
                conf = strdup(arg_config);
        else if (asprintf(&conf, "%s/reclaimd.conf", arg_config_dir ?: DEFAULT_CONFIG_DIR) < 0)
                conf = NULL;
        if (!conf)
                return log_error_errno(-ENOMEM, "Out of memory.");
        r = manager_config_load(config, conf, !arg_config);
        if (r < 0)
                return r;
        /* The command line wins over the file. */
        if (arg_state_dir &&
            (r = manager_config_init_string(&config->state_dir, arg_state_dir)) < 0)
                return log_error_errno(r, "Out of memory.");
        if (arg_reclaimctl &&
            (r = manager_config_init_string(&config->reclaimctl, arg_reclaimctl)) < 0)
                return log_error_errno(r, "Out of memory.");

        r = registry_paths_init(paths, arg_root);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the registry paths: %m");
        if (arg_config_dir) {
                if (asprintf(&vms_d, "%s/vms.d", arg_config_dir) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory.");
                r = registry_paths_set(&paths->vms_d, vms_d);
                if (r < 0)
                        return log_error_errno(r, "Out of memory.");
        }
        *ret_conf = TAKE_PTR(conf);
        return 0;
}

static int run(int argc, char *argv[]) {
        _cleanup_(manager_freep) Manager *m = NULL;
        _cleanup_free_ char *conf = NULL;
        ManagerConfig config = { 0 };
        RegistryPaths paths = { 0 };
        sigset_t mask;
        int r;

        log_set_program_name("reclaimd");
        r = parse_argv(argc, argv);
        if (r <= 0)
                return r < 0 ? 2 : 0;

        r = load_config(&config, &paths, &conf);
        if (r < 0) {
                manager_config_done(&config);
                registry_paths_done(&paths);
                return r == -ENOMEM ? 1 : 2; /* the configuration cannot be used */
        }

        /* sd-event delivers these through signalfd and child sources: block them first. */
        (void) sigemptyset(&mask);
        (void) sigaddset(&mask, SIGTERM);
        (void) sigaddset(&mask, SIGINT);
        (void) sigaddset(&mask, SIGHUP);
        (void) sigaddset(&mask, SIGCHLD);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
                manager_config_done(&config);
                registry_paths_done(&paths);
                log_error_errno(errno, "Failed to block signals: %m");
                return 1;
        }

        r = manager_new(&config, &paths, &m);
        manager_config_done(&config);
        registry_paths_done(&paths);
        if (r >= 0)
                r = manager_set_config_path(m, conf, !arg_config);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the manager: %m");
                return 1;
        }
        r = manager_startup(m);
        if (r < 0)
                return 1; /* logged */

        (void) sd_notify(false, "READY=1");
        manager_update_status(m);
        r = sd_event_loop(m->event);
        if (r < 0) {
                log_error_errno(r, "Event loop failed: %m");
                return 1;
        }
        return r;
}

int main(int argc, char *argv[]) {
        return run(argc, argv);
}
