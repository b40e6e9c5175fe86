/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The [thresholds] section of reclaimd.conf (docs/man/reclaimd.conf.5), and the small part of
 * the file status needs: [daemon] state_dir. The rest of [daemon] is reclaimd's to check.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "macro.h"
#include "size.h"
#include "status.h"

static int set_error(char *error, size_t n, const char *fmt, ...) _printf_(3, 4);

static int set_error(char *error, size_t n, const char *fmt, ...) {
        va_list ap;

        if (error && n > 0) {
                va_start(ap, fmt);
                (void) vsnprintf(error, n, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

/* A decimal integer 0..max, nothing else. */
static int parse_percent(const char *s, unsigned max, unsigned *ret) {
        unsigned long v;
        char *end;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno != 0 || *end != '\0' || v > max)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

/* "3", "2.5": a finite ratio 0..1000000 (0: off). */
static int parse_ratio(const char *s, double *ret) {
        char *end;
        double v;

        if (!s || ((*s < '0' || *s > '9') && *s != '.'))
                return -EINVAL;
        errno = 0;
        v = strtod(s, &end);
        if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 || v > 1e6)
                return -EINVAL;
        *ret = v;
        return 0;
}

int status_thresholds_set(
        StatusThresholds *t, const char *key, const char *value, char *error, size_t error_size) {
        unsigned p;
        uint64_t b;
        double d;

        if (!t || !key || !value)
                return -EINVAL;
        if (strcmp(key, "over_allocation_ratio") == 0) {
                if (parse_ratio(value, &d) < 0)
                        return set_error(
                                error,
                                error_size,
                                "over_allocation_ratio must be a number such as 3 or 2.5, not '%s'",
                                value);
                t->over_allocation_ratio = d;
        } else if (strcmp(key, "min_free_percent") == 0) {
                if (parse_percent(value, 100, &p) < 0)
                        return set_error(
                                error,
                                error_size,
                                "min_free_percent must be 0-100, not '%s'",
                                value);
                t->min_free_percent = p;
        } else if (strcmp(key, "reclaimable_bytes") == 0) {
                if (parse_size(value, &b) < 0)
                        return set_error(
                                error,
                                error_size,
                                "reclaimable_bytes must be a size, not '%s'",
                                value);
                t->reclaimable_bytes = b;
        } else if (strcmp(key, "reclaimable_percent") == 0) {
                if (parse_percent(value, 100, &p) < 0)
                        return set_error(
                                error,
                                error_size,
                                "reclaimable_percent must be 0-100, not '%s'",
                                value);
                t->reclaimable_percent = p;
        } else {
                (void) set_error(error, error_size, "unknown key '%s' in [thresholds]", key);
                return -ENOENT;
        }
        return 0;
}

typedef struct ConfigParser {
        StatusConfig *config;
        char error[256]; /* the first error; empty while none */
        bool oom;
} ConfigParser;

static int config_handler(void *user, const char *section, const char *key, const char *value) {
        ConfigParser *p = user;
        char error[256];

        if (p->error[0] != '\0')
                return 0;
        if (strcmp(section, "thresholds") == 0) {
                if (status_thresholds_set(
                            &p->config->thresholds, key, value, error, sizeof(error)) < 0) {
                        snprintf(p->error, sizeof(p->error), "%s", error);
                        return 0;
                }
                return 1;
        }
        if (strcmp(section, "daemon") == 0) {
                char *s;

                if (strcmp(key, "state_dir") != 0)
                        return 1; /* reclaimd's: it checks them */
                if (value[0] != '/') {
                        snprintf(p->error, sizeof(p->error), "state_dir must be an absolute path");
                        return 0;
                }
                s = strdup(value);
                if (!s) {
                        p->oom = true;
                        snprintf(p->error, sizeof(p->error), "out of memory");
                        return 0;
                }
                free(p->config->state_dir);
                p->config->state_dir = s;
                return 1;
        }
        if (section[0] == '\0')
                snprintf(p->error, sizeof(p->error), "key '%s' outside a section", key);
        else
                snprintf(p->error, sizeof(p->error), "unknown section [%s]", section);
        return 0;
}

int status_config_load(StatusConfig *c, const char *path, bool missing_ok, char **ret_error) {
        ConfigParser p = { .config = c };
        FILE *f;
        int r;

        if (!c || !path || !ret_error)
                return -EINVAL;
        f = fopen(path, "re");
        if (!f) {
                r = -errno;
                if (r == -ENOENT && missing_ok)
                        return 0;
                if (asprintf(ret_error, "%s: %s", path, strerror(-r)) < 0)
                        return -ENOMEM;
                return r;
        }
        r = ini_parse_file(f, config_handler, &p);
        (void) fclose(f);
        if (r < 0 || p.oom)
                return -ENOMEM;
        if (r > 0) {
                if (asprintf(
                            ret_error,
                            "%s:%d: %s",
                            path,
                            r,
                            p.error[0] ? p.error : "syntax error") < 0)
                        return -ENOMEM;
                return -EINVAL;
        }
        return 0;
}

void status_config_done(StatusConfig *c) {
        if (!c)
                return;
        c->state_dir = mfree(c->state_dir);
}
