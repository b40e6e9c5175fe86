/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaim-agent: the guest agent. Hands free space back to the host by FITRIM where discards
 * reach the virtual disk and by zero-filling elsewhere, and talks to the host's reclaimd over
 * the virtio-serial port org.reclaim.agent.0 (docs/agent.md, docs/protocol.md).
 *
 *   reclaim-agent run    one pass over the filesystems, then a Report to the host if one is there
 *   reclaim-agent serve  wait for the host's requests (started by udev when the port appears)
 *   reclaim-agent list   what the agent would do on each filesystem
 *
 * Exit status: 0 done; 1 runtime error (a filesystem failed, the loop failed); 2 usage or
 * configuration error.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "agent-config.h"
#include "agent-run.h"
#include "agent-serve.h"
#include "fs-enum.h"
#include "log.h"
#include "macro.h"
#include "size.h"

#define EXIT_USAGE 2

static volatile sig_atomic_t arg_cancel = 0;      /* first SIGTERM/SIGINT: stop the work */
static volatile sig_atomic_t arg_stop_report = 0; /* second one: do not wait for the host */

static const char *arg_config_file = NULL;
static const char *arg_mode = NULL, *arg_rate = NULL, *arg_reserve = NULL;
static const char *arg_port = NULL, *arg_socket = NULL, *arg_control_socket = NULL;
static AgentStrv arg_filesystems = {}, arg_excludes = {};
static bool arg_dry_run = false, arg_json = false;
static bool usage_error = false; /* exit 2 rather than 1 */

static int usage(int r) {
        usage_error = true;
        return r;
}

static void on_signal(int sig) {
        if (arg_cancel)
                arg_stop_report = 1;
        arg_cancel = 1;
}

static int help(void) {
        printf("Usage: reclaim-agent run|serve|list [OPTIONS]\n"
               "\n"
               "Hand the free space of this guest's filesystems back to the host.\n"
               "\n"
               "Verbs:\n"
               "  run                   One pass: FITRIM or zero-fill each filesystem, then\n"
               "                        send a report to the host if one is listening\n"
               "  serve                 Wait for the host's requests on the port\n"
               "  list                  Show the filesystems and what would be done\n"
               "\n"
               "Options:\n"
               "  -c --config FILE      Configuration file (default %s)\n"
               "     --mode MODE        auto, trim or zero (default auto)\n"
               "     --rate RATE        Zero-fill rate in bytes/s, e.g. 50M; 0 = unlimited\n"
               "     --reserve SPEC     Free space to keep, e.g. 10%%,2G (the larger wins)\n"
               "     --filesystem PATH  Only this filesystem (repeatable)\n"
               "     --exclude PATH     Leave this filesystem alone (repeatable)\n"
               "     --port PATH        virtio-serial port (default %s)\n"
               "     --socket PATH      Talk over a UNIX socket instead of the port\n"
               "     --control-socket PATH\n"
               "                        serve's local socket for the reports of runs that\n"
               "                        find the port held (default %s)\n"
               "     --dry-run          Report what would be done; write nothing\n"
               "     --json             Print the result as JSON (run, list)\n"
               "  -v --verbose          Debug logging\n"
               "  -h --help             Show this help\n"
               "     --version          Show the version\n",
               AGENT_CONFIG_FILE_DEFAULT,
               AGENT_PORT_DEFAULT,
               AGENT_CONTROL_SOCKET_DEFAULT);
        return 0;
}

static int parse_argv(int argc, char *argv[], const char **ret_verb) {
        enum {
                OPT_VERSION = 0x100,
                OPT_MODE,
                OPT_RATE,
                OPT_RESERVE,
                OPT_FILESYSTEM,
                OPT_EXCLUDE,
                OPT_PORT,
                OPT_SOCKET,
                OPT_CONTROL_SOCKET,
                OPT_DRY_RUN,
                OPT_JSON,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, OPT_VERSION },
                { "verbose", no_argument, NULL, 'v' },
                { "config", required_argument, NULL, 'c' },
                { "mode", required_argument, NULL, OPT_MODE },
                { "rate", required_argument, NULL, OPT_RATE },
                { "reserve", required_argument, NULL, OPT_RESERVE },
                { "filesystem", required_argument, NULL, OPT_FILESYSTEM },
                { "exclude", required_argument, NULL, OPT_EXCLUDE },
                { "port", required_argument, NULL, OPT_PORT },
                { "socket", required_argument, NULL, OPT_SOCKET },
                { "control-socket", required_argument, NULL, OPT_CONTROL_SOCKET },
                { "dry-run", no_argument, NULL, OPT_DRY_RUN },
                { "json", no_argument, NULL, OPT_JSON },
                {},
        };
        int c, r;

        while ((c = getopt_long(argc, argv, "hvc:", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        *ret_verb = "help";
                        return 0;
                case OPT_VERSION:
                        *ret_verb = "version";
                        return 0;
                case 'v':
                        log_set_max_level(LOG_DEBUG);
                        break;
                case 'c':
                        arg_config_file = optarg;
                        break;
                case OPT_MODE:
                        arg_mode = optarg;
                        break;
                case OPT_RATE:
                        arg_rate = optarg;
                        break;
                case OPT_RESERVE:
                        arg_reserve = optarg;
                        break;
                case OPT_FILESYSTEM:
                        r = agent_strv_push(&arg_filesystems, optarg);
                        if (r < 0)
                                return log_error_errno(r, "Out of memory");
                        break;
                case OPT_EXCLUDE:
                        r = agent_strv_push(&arg_excludes, optarg);
                        if (r < 0)
                                return log_error_errno(r, "Out of memory");
                        break;
                case OPT_PORT:
                        arg_port = optarg;
                        break;
                case OPT_SOCKET:
                        arg_socket = optarg;
                        break;
                case OPT_CONTROL_SOCKET:
                        arg_control_socket = optarg;
                        break;
                case OPT_DRY_RUN:
                        arg_dry_run = true;
                        break;
                case OPT_JSON:
                        arg_json = true;
                        break;
                default:
                        /* getopt printed the complaint */
                        return usage(-EINVAL);
                }
        }
        if (optind >= argc)
                return usage(
                        log_error_errno(-EINVAL, "Missing verb: run, serve or list (see --help)"));
        if (optind + 1 < argc)
                return usage(
                        log_error_errno(-EINVAL, "Unexpected argument '%s'", argv[optind + 1]));
        *ret_verb = argv[optind];
        return 0;
}

/* One command-line value through the same parser as the file's. */
static int apply_option(AgentConfig *c, const char *key, const char *value) {
        const char *reason = NULL;
        int r;

        if (!value)
                return 0;
        r = agent_config_set(c, key, value, &reason);
        if (r == -EINVAL)
                return usage(log_error_errno(
                        r, "Invalid --%s '%s': %s", key, value, reason ?: "invalid value"));
        if (r < 0)
                return log_error_errno(r, "Cannot apply --%s: %m", key);
        return 0;
}

static int load_config(AgentConfig *c) {
        _cleanup_free_ char *error = NULL;
        int r;

        r = agent_config_init(c);
        if (r < 0)
                return log_error_errno(r, "Out of memory");
        r = agent_config_load(
                c, arg_config_file ?: AGENT_CONFIG_FILE_DEFAULT, arg_config_file != NULL, &error);
        if (r < 0) {
                if (error)
                        log_error("%s", error);
                else
                        log_error_errno(r, "Cannot read the configuration: %m");
                return usage(r);
        }

        /* The command line wins. --filesystem replaces the file's list; --exclude adds to
         * it, so the admin's excludes in the file always hold. */
        r = apply_option(c, "mode", arg_mode);
        r = r ?: apply_option(c, "rate", arg_rate);
        r = r ?: apply_option(c, "reserve", arg_reserve);
        r = r ?: apply_option(c, "port", arg_port);
        r = r ?: apply_option(c, "socket", arg_socket);
        r = r ?: apply_option(c, "control_socket", arg_control_socket);
        if (r < 0)
                return r;
        if (arg_filesystems.n > 0)
                agent_strv_done(&c->filesystems);
        for (size_t i = 0; i < arg_filesystems.n; i++) {
                r = apply_option(c, "filesystem", arg_filesystems.v[i]);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < arg_excludes.n; i++) {
                r = apply_option(c, "exclude", arg_excludes.v[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int select_targets(const AgentConfig *c, AgentRunTargets **ret) {
        _cleanup_(agent_fs_list_freep) AgentFsList *all = NULL;
        int r;

        r = agent_fs_enumerate(NULL, AGENT_FS_INCLUDE_READ_ONLY, &all);
        if (r < 0)
                return log_error_errno(r, "Failed to read the mount table: %m");
        r = agent_fs_classify_all(all, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to classify the filesystems: %m");
        r = agent_run_select(all, &c->filesystems, &c->excludes, ret);
        if (r < 0)
                return log_error_errno(r, "Failed to choose the filesystems: %m");
        return 0;
}

static void json_object_putp(json_object **p) {
        if (*p)
                json_object_put(*p);
}

/* Adds v (taking it; NULL is a JSON null) under key. Returns 0 or -ENOMEM. */
static int json_add(json_object *o, const char *key, json_object *v) {
        if (json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

static int print_json(json_object *o) {
        const char *s = json_object_to_json_string_ext(
                o,
                JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);

        if (!s)
                return log_error_errno(-ENOMEM, "Out of memory");
        puts(s);
        if (fflush(stdout) != 0)
                return log_error_errno(negative_errno(), "Failed to write the output: %m");
        return 0;
}

static int verb_list(const AgentConfig *c) {
        _cleanup_(agent_run_targets_freep) AgentRunTargets *t = NULL;
        _cleanup_(json_object_putp) json_object *root = NULL;
        json_object *a = NULL;
        int r;

        r = select_targets(c, &t);
        if (r < 0)
                return r;

        if (!arg_json) {
                printf("%-24s %-8s %-20s %-12s %-8s %s\n",
                       "MOUNT",
                       "TYPE",
                       "DEVICE",
                       "CLASS",
                       "ACTION",
                       "NOTE");
                for (size_t i = 0; i < t->n; i++) {
                        const AgentRunTarget *x = &t->items[i];
                        const char *reason;
                        AgentMethod m = agent_run_planned_method(x, c->mode, &reason);

                        printf("%-24s %-8s %-20s %-12s %-8s %s\n",
                               x->mount_point,
                               x->fstype[0] ? x->fstype : "-",
                               x->device[0] ? x->device : "-",
                               x->error < 0 ? "error" : agent_fs_method_to_string(x->method),
                               agent_method_to_string(m),
                               x->error < 0   ? strerror(-x->error) :
                                       reason ?:
                                                "");
                }
                return 0;
        }

        root = json_object_new_object();
        if (!root)
                return log_error_errno(-ENOMEM, "Out of memory");
        a = json_object_new_array();
        r = json_add(root, "mode", json_object_new_string(agent_mode_to_string(c->mode)));
        r = r ?: json_add(root, "filesystems", a);
        if (r < 0)
                return log_error_errno(r, "Out of memory");
        for (size_t i = 0; i < t->n; i++) {
                const AgentRunTarget *x = &t->items[i];
                const char *reason;
                AgentMethod m = agent_run_planned_method(x, c->mode, &reason);
                json_object *o = json_object_new_object();

                if (!o || json_object_array_add(a, o) < 0) {
                        json_object_put(o);
                        return log_error_errno(-ENOMEM, "Out of memory");
                }
                if (x->error < 0)
                        reason = strerror(-x->error);
                r = json_add(o, "mount_point", json_object_new_string(x->mount_point));
                r = r ?: json_add(o, "device", json_object_new_string(x->device));
                r = r ?: json_add(o, "fstype", json_object_new_string(x->fstype));
                r = r ?:
                        json_add(
                                o,
                                "classification",
                                json_object_new_string(
                                        x->error < 0 ? "error" :
                                                       agent_fs_method_to_string(x->method)));
                r = r ?: json_add(o, "action", json_object_new_string(agent_method_to_string(m)));
                r = r ?: json_add(o, "reason", reason ? json_object_new_string(reason) : NULL);
                if (r < 0)
                        return log_error_errno(r, "Out of memory");
        }
        return print_json(root);
}

static int verb_run(const AgentConfig *c) {
        _cleanup_(agent_run_targets_freep) AgentRunTargets *t = NULL;
        _cleanup_(agent_run_report_freep) AgentRunReport *rep = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        bool sent = false;
        int r, via = 0;

        r = select_targets(c, &t);
        if (r < 0)
                return r;
        if (t->n == 0)
                log_info("No filesystem to work on");

        AgentRunOptions o = {
                .mode = c->mode,
                .rate = c->rate,
                .reserve = c->reserve,
                .dry_run = arg_dry_run,
                .cancel = &arg_cancel,
        };
        r = agent_run(t, &o, &rep);
        if (r < 0)
                return log_error_errno(r, "The reclaim run failed: %m");
        if (arg_cancel)
                log_notice("Cancelled by a signal");

        /* A dry run is not news for the host: it schedules compaction on real reports. */
        if (!arg_dry_run) {
                r = agent_report_once(
                        c,
                        rep,
                        arg_cancel ? AGENT_REPORT_TIMEOUT_NS / 5 : AGENT_REPORT_TIMEOUT_NS,
                        &arg_stop_report);
                if (r < 0)
                        log_warning_errno(r, "Cannot send the report: %m");
                sent = r > 0;
                via = r;
        }

        if (arg_json) {
                r = agent_run_report_to_json(rep, &j);
                if (r < 0)
                        return log_error_errno(r, "Out of memory");
                r = json_add(j, "report_sent", json_object_new_boolean(sent));
                /* "serve": reclaim-agent serve held the port and took the report for the host */
                r = r ?:
                        json_add(
                                j,
                                "report_via",
                                !sent ? NULL :
                                        json_object_new_string(
                                                via == AGENT_REPORT_VIA_SERVE ? "serve" :
                                                        c->socket             ? "socket" :
                                                                                "port"));
                if (r < 0)
                        return log_error_errno(r, "Out of memory");
                r = print_json(j);
                if (r < 0)
                        return r;
        }
        if (agent_run_report_has_errors(rep))
                return -EIO; /* each failure was logged with its filesystem */
        return 0;
}

static int verb_serve(const AgentConfig *c) {
        return agent_serve(c, arg_dry_run);
}

static const struct {
        const char *name;
        int (*fn)(const AgentConfig *c);
} verbs[] = {
        { "run", verb_run },
        { "serve", verb_serve },
        { "list", verb_list },
};

static int run_verb(int argc, char *argv[]) {
        _cleanup_(agent_config_done) AgentConfig config = {};
        struct sigaction sa = { .sa_handler = on_signal };
        const char *verb = NULL;
        int r;

        log_set_program_name("reclaim-agent");
        r = parse_argv(argc, argv, &verb);
        if (r < 0)
                return r;
        if (strcmp(verb, "help") == 0)
                return help();
        if (strcmp(verb, "version") == 0) {
                printf("reclaim-agent %s\n", RECLAIM_VERSION);
                return 0;
        }

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if (strcmp(verb, verbs[i].name) != 0)
                        continue;
                r = load_config(&config);
                if (r < 0)
                        return r;
                /* No SA_RESTART: a sleeping fill wakes up and sees the flag at once. serve
                 * blocks these and reads them from a signalfd instead. */
                (void) sigaction(SIGTERM, &sa, NULL);
                (void) sigaction(SIGINT, &sa, NULL);
                (void) signal(SIGPIPE, SIG_IGN);
                return verbs[i].fn(&config);
        }
        return usage(log_error_errno(-EINVAL, "Unknown verb '%s': run, serve or list", verb));
}

/* Returns the exit status. */
static int run(int argc, char *argv[]) {
        int r = run_verb(argc, argv);

        agent_strv_done(&arg_filesystems);
        agent_strv_done(&arg_excludes);
        return usage_error ? EXIT_USAGE : r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

int main(int argc, char *argv[]) {
        return run(argc, argv);
}
