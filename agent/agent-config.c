/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "agent-config.h"
#include "macro.h"
#include "size.h"

static const char *const mode_names[_AGENT_MODE_MAX] = {
        [AGENT_MODE_AUTO] = "auto",
        [AGENT_MODE_TRIM] = "trim",
        [AGENT_MODE_ZERO] = "zero",
};

int agent_strv_push(AgentStrv *l, const char *s) {
        _cleanup_free_ char *copy = NULL;
        char **nv;

        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        nv = reallocarray(l->v, l->n + 1, sizeof(char *));
        if (!nv)
                return -ENOMEM;
        l->v = nv;
        l->v[l->n++] = TAKE_PTR(copy);
        return 0;
}

void agent_strv_done(AgentStrv *l) {
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i]);
        free(l->v);
        l->v = NULL;
        l->n = 0;
}

const char *agent_mode_to_string(AgentMode m) {
        if ((unsigned) m >= _AGENT_MODE_MAX)
                return NULL;
        return mode_names[m];
}

int agent_mode_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(mode_names); i++)
                if (strcmp(s, mode_names[i]) == 0)
                        return (int) i;
        return -EINVAL;
}

bool agent_mode_allows_trim(AgentMode m) {
        return m == AGENT_MODE_AUTO || m == AGENT_MODE_TRIM;
}

bool agent_mode_allows_zero(AgentMode m) {
        return m == AGENT_MODE_AUTO || m == AGENT_MODE_ZERO;
}

int agent_config_init(AgentConfig *c) {
        int r;

        *c = (AgentConfig){
                .mode = AGENT_MODE_DEFAULT,
                .rate = AGENT_RATE_DEFAULT,
        };
        r = agent_reserve_parse(AGENT_RESERVE_DEFAULT, &c->reserve, NULL);
        if (r < 0)
                return r;
        c->reserve_spec = strdup(AGENT_RESERVE_DEFAULT);
        c->port = strdup(AGENT_PORT_DEFAULT);
        c->control_socket = strdup(AGENT_CONTROL_SOCKET_DEFAULT);
        if (!c->reserve_spec || !c->port || !c->control_socket) {
                agent_config_done(c);
                return -ENOMEM;
        }
        return 0;
}

void agent_config_done(AgentConfig *c) {
        free(c->reserve_spec);
        free(c->port);
        free(c->socket);
        free(c->control_socket);
        agent_strv_done(&c->filesystems);
        agent_strv_done(&c->excludes);
        *c = (AgentConfig){};
}

static int check_path(const char *value, const char **reason) {
        if (value[0] != '/') {
                *reason = "expected an absolute path";
                return -EINVAL;
        }
        if (strlen(value) > AGENT_CONFIG_PATH_MAX) {
                *reason = "path too long";
                return -EINVAL;
        }
        return 0;
}

static int replace_string(char **p, const char *value) {
        char *copy = strdup(value);

        if (!copy)
                return -ENOMEM;
        free(*p);
        *p = copy;
        return 0;
}

static bool is_path_key(const char *key) {
        return strcmp(key, "filesystem") == 0 || strcmp(key, "exclude") == 0 ||
                strcmp(key, "port") == 0 || strcmp(key, "socket") == 0 ||
                strcmp(key, "control_socket") == 0;
}

static int invalid(const char **ret_reason, const char *reason) {
        if (ret_reason)
                *ret_reason = reason;
        return -EINVAL;
}

int agent_config_set(AgentConfig *c, const char *key, const char *value, const char **ret_reason) {
        const char *reason = NULL;
        int r;

        if (!c || !key || !value)
                return -EINVAL;

        if (strcmp(key, "mode") == 0) {
                r = agent_mode_from_string(value);
                if (r < 0)
                        return invalid(ret_reason, "expected auto, trim or zero");
                c->mode = (AgentMode) r;
                return 0;
        }
        if (strcmp(key, "rate") == 0) {
                uint64_t rate;

                r = parse_size(value, &rate);
                if (r == -ERANGE)
                        return invalid(ret_reason, "number too large");
                if (r < 0)
                        return invalid(
                                ret_reason,
                                "expected bytes per second such as 50M, or 0 for unlimited");
                c->rate = rate;
                return 0;
        }
        if (strcmp(key, "reserve") == 0) {
                AgentReserve reserve;

                r = agent_reserve_parse(value, &reserve, &reason);
                if (r < 0)
                        return invalid(ret_reason, reason ?: "expected e.g. 10%,2G");
                r = replace_string(&c->reserve_spec, value);
                if (r < 0)
                        return r;
                c->reserve = reserve;
                return 0;
        }
        if (is_path_key(key)) {
                r = check_path(value, &reason);
                if (r < 0)
                        return invalid(ret_reason, reason);
                if (strcmp(key, "filesystem") == 0)
                        return agent_strv_push(&c->filesystems, value);
                if (strcmp(key, "exclude") == 0)
                        return agent_strv_push(&c->excludes, value);
                if (strcmp(key, "port") == 0)
                        return replace_string(&c->port, value);
                if (strcmp(key, "control_socket") == 0) {
                        /* serve binds it and run connects to it: it must fit sun_path. */
                        if (strlen(value) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
                                return invalid(ret_reason, "path too long for a socket");
                        return replace_string(&c->control_socket, value);
                }
                return replace_string(&c->socket, value);
        }
        return -ENOENT;
}

/* ---- the file ---- */

typedef struct LoadContext {
        AgentConfig *config;
        const char *path;
        FILE *f;
        unsigned line; /* of the line inih is handling: our reader counts them */
        unsigned error_line;
        char *error; /* the first error, without "FILE:LINE: " */
        int error_code;
} LoadContext;

static void load_error(LoadContext *ctx, int code, const char *fmt, ...) _printf_(3, 4);

static void load_error(LoadContext *ctx, int code, const char *fmt, ...) {
        va_list ap;

        if (ctx->error_line > 0)
                return; /* keep the first one */
        ctx->error_line = ctx->line;
        ctx->error_code = code;
        va_start(ap, fmt);
        if (vasprintf(&ctx->error, fmt, ap) < 0)
                ctx->error = NULL;
        va_end(ap);
}

/* A "[name]" line: only [agent] is ours. Checked here, where the line number is known, so an
 * unknown section is reported at its header (and even when it holds no keys). */
static void check_section(LoadContext *ctx, const char *line) {
        const char *start = line + strspn(line, " \t"), *end;

        if (*start != '[')
                return;
        end = strchr(start, ']');
        if (!end)
                return; /* inih reports the syntax error */
        if ((size_t) (end - start - 1) != strlen("agent") || strncmp(start + 1, "agent", 5) != 0)
                load_error(ctx, -EINVAL, "unknown section '%.*s'", (int) (end - start + 1), start);
}

/*
 * inih's reader: fgets, plus the line count (this inih has no line numbers in handlers) and
 * overlong lines: inih would parse the rest of such a line as a line of its own, so the whole
 * line is consumed and handed over as an empty one, and the error recorded.
 */
static char *load_reader(char *str, int num, void *stream) {
        LoadContext *ctx = stream;
        size_t len;

        if (!fgets(str, num, ctx->f))
                return NULL;
        ctx->line++;
        len = strlen(str);
        if (len > 0 && str[len - 1] != '\n' && !feof(ctx->f)) {
                int ch;

                while ((ch = fgetc(ctx->f)) != EOF && ch != '\n')
                        ;
                load_error(ctx, -EINVAL, "line too long (at most %d characters)", num - 2);
                str[0] = '\0';
                return str;
        }
        check_section(ctx, str);
        return str;
}

static int load_handler(void *user, const char *section, const char *name, const char *value) {
        LoadContext *ctx = user;
        const char *reason = NULL;
        int r;

        if (strcmp(section, "agent") != 0) {
                /* an unknown section was reported at its header line already */
                if (section[0] == '\0')
                        load_error(ctx, -EINVAL, "key '%s' outside the [agent] section", name);
                return 0;
        }
        r = agent_config_set(ctx->config, name, value, &reason);
        if (r == -ENOENT) {
                load_error(ctx, -EINVAL, "unknown key '%s'", name);
                return 0;
        }
        if (r == -EINVAL) {
                load_error(
                        ctx,
                        -EINVAL,
                        "invalid value '%s' for '%s': %s",
                        value,
                        name,
                        reason ?: "invalid");
                return 0;
        }
        if (r < 0) {
                load_error(ctx, r, "cannot set '%s': %s", name, strerror(-r));
                return 0;
        }
        return 1;
}

int agent_config_load(AgentConfig *c, const char *path, bool must_exist, char **ret_error) {
        LoadContext ctx = { .config = c, .path = path };
        bool io_error;
        int r, e;

        if (!c || !path || !ret_error)
                return -EINVAL;
        *ret_error = NULL;

        ctx.f = fopen(path, "re");
        if (!ctx.f) {
                r = negative_errno();
                if (r == -ENOENT && !must_exist)
                        return 0;
                if (asprintf(ret_error, "%s: cannot open: %s", path, strerror(-r)) < 0)
                        *ret_error = NULL;
                return r;
        }
        e = ini_parse_stream(load_reader, &ctx, load_handler, &ctx);
        io_error = ferror(ctx.f);
        (void) fclose(ctx.f);

        if (e == -2)
                r = -ENOMEM;
        else if (e > 0 && (ctx.error_line == 0 || (unsigned) e < ctx.error_line)) {
                /* inih's own complaint, before any of ours: neither "[section]" nor "k = v" */
                ctx.error_line = 0;
                free(ctx.error);
                ctx.error = NULL;
                ctx.line = (unsigned) e;
                load_error(&ctx, -EINVAL, "syntax error (expected '[section]' or 'key = value')");
                r = -EINVAL;
        } else if (ctx.error_line > 0)
                r = ctx.error_code;
        else
                r = io_error ? -EIO : 0;

        if (r < 0) {
                if (ctx.error_line > 0 && ctx.error) {
                        if (asprintf(ret_error, "%s:%u: %s", path, ctx.error_line, ctx.error) < 0)
                                *ret_error = NULL;
                } else if (asprintf(ret_error, "%s: %s", path, strerror(-r)) < 0)
                        *ret_error = NULL;
        }
        free(ctx.error);
        return r;
}
