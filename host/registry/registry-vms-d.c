/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vms.d/NAME.conf: one VM per file, or policy for a discovered VM.
 *
 *   [vm]
 *   name = vm-101            ; default: NAME
 *   disk = /abs/path.qcow2   ; repeatable
 *   channel = /run/reclaim/vm-101.sock
 *   auto_compact = yes|no
 *   min_gain = 1G|10%
 *
 * Parsed with inih through our own reader: it counts lines (this inih passes none to the
 * handler), refuses overlong lines instead of letting inih split them, strips leading blanks
 * so that no line is ever taken as a continuation of the previous value, and checks section
 * headers where their line number is known. Any error skips the whole file.
 */

#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "registry-internal.h"
#include "size.h"

typedef struct VmsdParser {
        const RegistryReporter *rep;
        const char *path;
        const char *data;
        size_t size;
        size_t pos;
        unsigned line;   /* of the line inih is handling */
        unsigned errors; /* reported so far */
        bool seen_vm;    /* a [vm] header was read */
        bool in_vm;      /* the current section is [vm] */
        bool oom;
        bool have_name, have_channel, have_auto_compact, have_min_gain;
        RegistryVm *vm;
} VmsdParser;

static void vmsd_error(VmsdParser *p, unsigned line, const char *fmt, ...) _printf_(3, 4);

static void vmsd_error(VmsdParser *p, unsigned line, const char *fmt, ...) {
        _cleanup_free_ char *m = NULL;
        va_list ap;
        int n;

        if (p->errors++ >= REGISTRY_MAX_DIAGS_PER_FILE)
                return;
        va_start(ap, fmt);
        n = vasprintf(&m, fmt, ap);
        va_end(ap);
        if (n < 0) {
                p->oom = true;
                return;
        }
        registry_report(p->rep, LOG_ERR, -EINVAL, p->path, line, "%s", m);
}

/* A "[name]" line: only [vm] is ours, once. */
static void vmsd_check_section(VmsdParser *p, const char *s) {
        const char *end = strchr(s, ']');
        size_t n;

        if (!end)
                return; /* inih reports the syntax error */
        n = (size_t) (end - s - 1);
        p->in_vm = n == 2 && strncmp(s + 1, "vm", 2) == 0;
        if (!p->in_vm)
                vmsd_error(
                        p, p->line, "unknown section '[%.*s]'", (int) MIN(n, (size_t) 64), s + 1);
        else if (p->seen_vm)
                vmsd_error(p, p->line, "duplicate section '[vm]'");
        p->seen_vm = p->seen_vm || p->in_vm;
}

static char *vmsd_reader(char *str, int num, void *stream) {
        VmsdParser *p = stream;
        const char *start, *nl;
        size_t len, skip;

        if (p->pos >= p->size || num < 3)
                return NULL;
        start = p->data + p->pos;
        nl = memchr(start, '\n', p->size - p->pos);
        len = nl ? (size_t) (nl - start) : p->size - p->pos;
        p->pos += len + (nl ? 1 : 0);
        p->line++;

        str[0] = '\0';
        if (memchr(start, '\0', len)) {
                vmsd_error(p, p->line, "NUL byte in line");
                return str;
        }
        if (len > (size_t) num - 2) {
                vmsd_error(p, p->line, "line too long (at most %d characters)", num - 2);
                return str;
        }
        skip = 0;
        if (p->line == 1 && len >= 3 && memcmp(start, "\xef\xbb\xbf", 3) == 0)
                skip = 3; /* a UTF-8 byte order mark, as inih allows */
        while (skip < len && (start[skip] == ' ' || start[skip] == '\t'))
                skip++;
        memcpy(str, start + skip, len - skip);
        str[len - skip] = '\0';

        if (str[0] == '[')
                vmsd_check_section(p, str);
        else if (str[0] != '\0' && str[0] != '\r' && !strchr(";#", str[0]) && !strpbrk(str, "=:")) {
                vmsd_error(p, p->line, "syntax error (expected '[vm]' or 'key = value')");
                str[0] = '\0';
        }
        return str;
}

static int parse_bool(const char *v) {
        static const char *const yes[] = { "yes", "true", "on", "1" };
        static const char *const no[] = { "no", "false", "off", "0" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(v, yes[i]) == 0)
                        return 1;
                if (strcasecmp(v, no[i]) == 0)
                        return 0;
        }
        return -EINVAL;
}

/* "10%" (0-100) or a size ("1G", "512M", "4096"). */
static int parse_min_gain(const char *v, RegistryMinGain *ret) {
        size_t n = strlen(v);
        uint64_t x;
        int r;

        if (n > 1 && v[n - 1] == '%') {
                size_t digits = strspn(v, "0123456789");
                if (digits != n - 1 || digits > 3)
                        return -EINVAL;
                x = strtoull(v, NULL, 10);
                if (x > 100)
                        return -ERANGE;
                *ret = (RegistryMinGain){ .kind = REGISTRY_MIN_GAIN_PERCENT, .value = x };
                return 0;
        }
        r = parse_size(v, &x);
        if (r < 0)
                return r;
        *ret = (RegistryMinGain){ .kind = REGISTRY_MIN_GAIN_BYTES, .value = x };
        return 0;
}

/* Marks a key seen; reports a second occurrence. Returns false for a duplicate. */
static bool vmsd_once(VmsdParser *p, bool *seen, const char *key) {
        if (*seen) {
                vmsd_error(p, p->line, "duplicate key '%s'", key);
                return false;
        }
        *seen = true;
        return true;
}

static int vmsd_handler(void *user, const char *section, const char *key, const char *value) {
        VmsdParser *p = user;
        RegistryVm *vm = p->vm;
        int r;

        /* always 1: errors are ours to report (at the right line), inih's only for syntax */
        if (!p->in_vm) {
                if (section[0] == '\0')
                        vmsd_error(p, p->line, "key '%s' outside the [vm] section", key);
                return 1; /* an unknown section was reported at its header */
        }
        if (strcmp(key, "name") == 0) {
                if (!vmsd_once(p, &p->have_name, key))
                        return 1;
                if (!registry_vm_name_is_valid(value)) {
                        vmsd_error(p, p->line, "invalid VM name '%s'", value);
                        return 1;
                }
                if (registry_strdup_replace(&vm->name, value) < 0)
                        p->oom = true;
        } else if (strcmp(key, "disk") == 0) {
                if (!registry_path_is_absolute(value)) {
                        vmsd_error(p, p->line, "disk path must be absolute: '%s'", value);
                        return 1;
                }
                if (registry_vm_has_disk(vm, value)) {
                        vmsd_error(p, p->line, "disk '%s' listed twice", value);
                        return 1;
                }
                r = registry_vm_add_disk(vm, value, NULL, NULL, NULL, NULL, false);
                if (r == -E2BIG)
                        vmsd_error(p, p->line, "too many disks (at most %d)", REGISTRY_MAX_DISKS);
                else if (r < 0)
                        p->oom = true;
        } else if (strcmp(key, "channel") == 0) {
                if (!vmsd_once(p, &p->have_channel, key))
                        return 1;
                if (!registry_path_is_absolute(value)) {
                        vmsd_error(p, p->line, "channel path must be absolute: '%s'", value);
                        return 1;
                }
                if (strlen(value) > REGISTRY_MAX_SOCKET_PATH) {
                        vmsd_error(
                                p,
                                p->line,
                                "channel path too long for a UNIX socket (at most %d bytes)",
                                REGISTRY_MAX_SOCKET_PATH);
                        return 1;
                }
                if (registry_strdup_replace(&vm->channel, value) < 0)
                        p->oom = true;
        } else if (strcmp(key, "auto_compact") == 0) {
                if (!vmsd_once(p, &p->have_auto_compact, key))
                        return 1;
                r = parse_bool(value);
                if (r < 0) {
                        vmsd_error(
                                p,
                                p->line,
                                "invalid value '%s' for 'auto_compact' (expected yes or no)",
                                value);
                        return 1;
                }
                vm->auto_compact = r;
        } else if (strcmp(key, "min_gain") == 0) {
                if (!vmsd_once(p, &p->have_min_gain, key))
                        return 1;
                r = parse_min_gain(value, &vm->min_gain);
                if (r < 0)
                        vmsd_error(
                                p,
                                p->line,
                                "invalid value '%s' for 'min_gain' (expected a size such as 1G, "
                                "or a percentage 0-100%%)",
                                value);
        } else
                vmsd_error(p, p->line, "unknown key '%s'", key);
        return 1;
}

int registry_parse_vms_d(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryVm **ret_vm) {
        _cleanup_(registry_vm_freep) RegistryVm *vm = NULL;
        _cleanup_free_ char *default_name = NULL;
        const char *base;
        size_t n;
        int e;

        if (!path || (!data && size > 0) || !ret_vm)
                return -EINVAL;
        base = strrchr(path, '/');
        base = base ? base + 1 : path;
        n = strlen(base);
        if (n > 5 && strcmp(base + n - 5, ".conf") == 0)
                n -= 5;
        default_name = strndup(base, n);
        if (!default_name)
                return -ENOMEM;

        vm = registry_vm_new(default_name, REGISTRY_SOURCE_VMS_D, path);
        if (!vm)
                return -ENOMEM;
        VmsdParser p = { .rep = rep, .path = path, .data = data ?: "", .size = size, .vm = vm };
        e = ini_parse_stream(vmsd_reader, &p, vmsd_handler, &p);
        if (e == -2 || p.oom)
                return -ENOMEM;
        if (e > 0)
                /* inih's own complaint about a line our reader let through ("[vm" ...) */
                vmsd_error(&p, (unsigned) e, "syntax error (expected '[vm]' or 'key = value')");
        if (p.errors == 0 && !p.seen_vm)
                vmsd_error(&p, 0, "no [vm] section");
        if (p.errors == 0 && !p.have_name && !registry_vm_name_is_valid(vm->name))
                vmsd_error(&p, 0, "the file name does not make a valid VM name; set name =");
        if (p.oom)
                return -ENOMEM;
        if (p.errors > 0) {
                if (p.errors > REGISTRY_MAX_DIAGS_PER_FILE)
                        registry_report(
                                rep,
                                LOG_ERR,
                                -EINVAL,
                                path,
                                0,
                                "%u more errors not shown",
                                p.errors - REGISTRY_MAX_DIAGS_PER_FILE);
                registry_report(
                        rep,
                        LOG_ERR,
                        -EINVAL,
                        path,
                        0,
                        "VM '%s' skipped (%u error%s)",
                        vm->name,
                        p.errors,
                        p.errors == 1 ? "" : "s");
                return -EINVAL;
        }
        *ret_vm = TAKE_PTR(vm);
        return 0;
}
