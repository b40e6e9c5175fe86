/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <strings.h>

#include "macro.h"
#include "size.h"

int parse_size(const char *s, uint64_t *ret) {
        static const struct {
                char c;
                unsigned shift;
        } suffixes[] = { { 'K', 10 }, { 'M', 20 }, { 'G', 30 }, { 'T', 40 }, { 'P', 50 } };
        uint64_t v = 0;
        const char *p = s;

        if (!s || !ret)
                return -EINVAL;
        while (isspace((unsigned char) *p))
                p++;
        if (!isdigit((unsigned char) *p))
                return -EINVAL;
        for (; isdigit((unsigned char) *p); p++) {
                if (MUL_OVERFLOW(v, 10, &v) || ADD_OVERFLOW(v, (uint64_t) (*p - '0'), &v))
                        return -ERANGE;
        }
        if (*p) {
                unsigned shift = 0;
                bool found = false;
                for (size_t i = 0; i < ELEMENTSOF(suffixes); i++)
                        if (toupper((unsigned char) *p) == suffixes[i].c) {
                                shift = suffixes[i].shift;
                                found = true;
                        }
                if (found) {
                        p++;
                        if (strcasecmp(p, "iB") == 0)
                                p += 2;
                        else if (strcasecmp(p, "B") == 0)
                                p += 1;
                } else if (strcasecmp(p, "B") == 0)
                        p += 1;
                if (*p)
                        return -EINVAL;
                if (shift && v > (UINT64_MAX >> shift))
                        return -ERANGE;
                v <<= shift;
        }
        *ret = v;
        return 0;
}

char *format_bytes(char *buf, size_t len, uint64_t v) {
        static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };

        if (v < 1024) {
                snprintf(buf, len, "%" PRIu64 " B", v);
                return buf;
        }
        double d = (double) v;
        size_t u = 0;
        d /= 1024.0;
        while (d >= 1024.0 && u + 1 < ELEMENTSOF(units)) {
                d /= 1024.0;
                u++;
        }
        snprintf(buf, len, "%.1f %s", d, units[u]);
        return buf;
}
