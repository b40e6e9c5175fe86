/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * reclaimd.conf: the [daemon] section, and [thresholds] through libstatus
 * (docs/man/reclaimd.conf.5). inih reports only the line
 * of the first error, so the handler keeps the first message and the caller prints it with
 * FILE:LINE.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "log.h"
#include "macro.h"
#include "manager.h"
#include "size.h"
#include "status.h"

int manager_config_init(ManagerConfig *c, const char *state_dir, const char *reclaimctl) {
        _cleanup_free_ char *s = NULL, *r = NULL;

        if (!c || !state_dir || !reclaimctl)
                return -EINVAL;
        s = strdup(state_dir);
        r = strdup(reclaimctl);
        if (!s || !r)
                return -ENOMEM;
        *c = (ManagerConfig){
                .socket_dir = strdup(DEFAULT_SOCKET_DIR),
                .state_dir = TAKE_PTR(s),
                .reclaimctl = TAKE_PTR(r),
                .max_concurrent = 1,
                .job_timeout_sec = 6 * 3600,
                .retry_interval_sec = 30,
                .min_gain = { .kind = REGISTRY_MIN_GAIN_UNSET },
                .window_start = -1,
                .window_end = -1,
        };
        if (!c->socket_dir) {
                manager_config_done(c);
                return -ENOMEM;
        }
        return 0;
}

int manager_config_init_string(char **field, const char *value) {
        char *s;

        if (!field || !value)
                return -EINVAL;
        s = strdup(value);
        if (!s)
                return -ENOMEM;
        free(*field);
        *field = s;
        return 0;
}

void manager_config_done(ManagerConfig *c) {
        if (!c)
                return;
        c->state_dir = mfree(c->state_dir);
        c->socket_dir = mfree(c->socket_dir);
        c->reclaimctl = mfree(c->reclaimctl);
}

typedef struct ConfigParser {
        ManagerConfig *config;
        char error[256]; /* the first error; empty while none */
} ConfigParser;

static int config_error(ConfigParser *p, const char *fmt, ...) _printf_(2, 3);

static int config_error(ConfigParser *p, const char *fmt, ...) {
        va_list ap;

        if (p->error[0] == '\0') {
                va_start(ap, fmt);
                (void) vsnprintf(p->error, sizeof(p->error), fmt, ap);
                va_end(ap);
        }
        return 0; /* tells inih this line is bad */
}

static int parse_uint(const char *s, uint64_t max, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || *end != '\0')
                return -EINVAL;
        if (v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

static int parse_bool(const char *s, bool *ret) {
        if (strcmp(s, "yes") == 0 || strcmp(s, "true") == 0 || strcmp(s, "1") == 0 ||
            strcmp(s, "on") == 0)
                *ret = true;
        else if (
                strcmp(s, "no") == 0 || strcmp(s, "false") == 0 || strcmp(s, "0") == 0 ||
                strcmp(s, "off") == 0)
                *ret = false;
        else
                return -EINVAL;
        return 0;
}

/* "HH:MM" -> minutes after midnight; -EINVAL unless 00:00-24:00 exactly so. */
static int parse_hhmm(const char *s, size_t len, int *ret) {
        unsigned h, m;
        char buf[6];
        int n = 0;

        if (len != 5)
                return -EINVAL;
        memcpy(buf, s, 5);
        buf[5] = '\0';
        if (sscanf(buf, "%2u:%2u%n", &h, &m, &n) != 2 || n != 5 || m > 59 || h > 24 ||
            (h == 24 && m != 0))
                return -EINVAL;
        *ret = (int) (h * 60 + m);
        return 0;
}

/* "01:00-05:30" (may wrap past midnight: "22:00-06:00") or "any". */
static int parse_window(const char *s, int *ret_start, int *ret_end) {
        const char *dash = strchr(s, '-');
        int a, b;

        if (strcmp(s, "any") == 0) {
                *ret_start = *ret_end = -1;
                return 0;
        }
        if (!dash || parse_hhmm(s, (size_t) (dash - s), &a) < 0 ||
            parse_hhmm(dash + 1, strlen(dash + 1), &b) < 0 || a == b)
                return -EINVAL;
        *ret_start = a;
        *ret_end = b;
        return 0;
}

/* "10G", "1048576" or "5%". */
static int parse_min_gain(const char *s, RegistryMinGain *ret) {
        size_t n = strlen(s);
        uint64_t v;

        if (n > 1 && s[n - 1] == '%') {
                char buf[32];

                if (n - 1 >= sizeof(buf))
                        return -EINVAL;
                memcpy(buf, s, n - 1);
                buf[n - 1] = '\0';
                if (parse_uint(buf, 100, &v) < 0)
                        return -EINVAL;
                *ret = (RegistryMinGain){ .kind = REGISTRY_MIN_GAIN_PERCENT, .value = v };
                return 0;
        }
        if (parse_size(s, &v) < 0)
                return -EINVAL;
        *ret = (RegistryMinGain){ .kind = REGISTRY_MIN_GAIN_BYTES, .value = v };
        return 0;
}

static int config_handler(void *user, const char *section, const char *key, const char *value) {
        ConfigParser *p = user;
        ManagerConfig *c = p->config;
        uint64_t v;
        bool b;

        if (strcmp(section, "thresholds") == 0) {
                char error[256];

                /* one parser for both programs: reclaimctl status reads the same keys */
                if (status_thresholds_set(&c->thresholds, key, value, error, sizeof(error)) < 0)
                        return config_error(p, "%s", error);
                return 1;
        }
        if (strcmp(section, "daemon") != 0)
                return config_error(p, "key '%s' outside the [daemon] section", key);

        if (strcmp(key, "state_dir") == 0 || strcmp(key, "reclaimctl") == 0 ||
            strcmp(key, "socket_dir") == 0) {
                char **field = key[1] == 't' ? &c->state_dir :
                        key[1] == 'e'        ? &c->reclaimctl :
                                               &c->socket_dir;
                char *s;

                if (value[0] != '/')
                        return config_error(p, "%s must be an absolute path", key);
                s = strdup(value);
                if (!s)
                        return config_error(p, "out of memory");
                free(*field);
                *field = s;
        } else if (strcmp(key, "max_concurrent") == 0) {
                if (parse_uint(value, 64, &v) < 0 || v == 0)
                        return config_error(p, "max_concurrent must be 1-64, not '%s'", value);
                c->max_concurrent = (unsigned) v;
        } else if (strcmp(key, "job_timeout") == 0) {
                if (parse_uint(value, 7 * 86400, &v) < 0 || v == 0)
                        return config_error(
                                p, "job_timeout must be 1-604800 seconds, not '%s'", value);
                c->job_timeout_sec = v;
        } else if (strcmp(key, "retry_interval") == 0) {
                if (parse_uint(value, 86400, &v) < 0 || v == 0)
                        return config_error(
                                p, "retry_interval must be 1-86400 seconds, not '%s'", value);
                c->retry_interval_sec = v;
        } else if (strcmp(key, "min_gain") == 0) {
                if (parse_min_gain(value, &c->min_gain) < 0)
                        return config_error(
                                p, "min_gain must be a size or a percentage, not '%s'", value);
        } else if (strcmp(key, "guest_max_rate") == 0) {
                if (parse_size(value, &c->guest_max_rate) < 0)
                        return config_error(p, "guest_max_rate must be a size, not '%s'", value);
        } else if (strcmp(key, "guest_min_reserve") == 0) {
                if (parse_size(value, &c->guest_min_reserve) < 0)
                        return config_error(p, "guest_min_reserve must be a size, not '%s'", value);
        } else if (strcmp(key, "guest_min_reserve_percent") == 0) {
                if (parse_uint(value, 100, &v) < 0)
                        return config_error(
                                p, "guest_min_reserve_percent must be 0-100, not '%s'", value);
                c->guest_min_reserve_percent = (unsigned) v;
        } else if (strcmp(key, "window") == 0) {
                if (parse_window(value, &p->config->window_start, &p->config->window_end) < 0)
                        return config_error(
                                p, "window must be HH:MM-HH:MM (or 'any'), not '%s'", value);
        } else if (strcmp(key, "guest_allow_zero") == 0) {
                if (parse_bool(value, &b) < 0)
                        return config_error(
                                p, "guest_allow_zero must be yes or no, not '%s'", value);
                c->guest_allow_zero = b;
        } else
                return config_error(p, "unknown key '%s'", key);
        return 1;
}

int manager_config_load(ManagerConfig *c, const char *path, bool missing_ok) {
        ConfigParser p = { .config = c };
        FILE *f;
        int r;

        if (!c || !path)
                return -EINVAL;
        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && missing_ok)
                        return 0;
                return log_error_errno(errno, "Failed to open %s: %m", path);
        }
        r = ini_parse_file(f, config_handler, &p);
        (void) fclose(f);
        if (r < 0)
                return log_error_errno(-ENOMEM, "%s: out of memory", path);
        if (r > 0)
                return log_error_errno(
                        -EINVAL, "%s:%d: %s", path, r, p.error[0] ? p.error : "syntax error");
        return 0;
}
