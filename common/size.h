/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Human sizes: parsing "50M", "2G", "4096" and printing "1.5 GiB". */

#include <stddef.h>
#include <stdint.h>

/*
 * Parses a size with an optional binary suffix (K, M, G, T, P, optionally followed by "iB" or
 * "B"; case-insensitive). Returns 0 and the value in *ret, -EINVAL for garbage, -ERANGE on
 * overflow. *ret is untouched on failure.
 */
int parse_size(const char *s, uint64_t *ret);

/* Formats v as "123 B", "4.0 KiB", "1.5 GiB" into buf; returns buf. */
char *format_bytes(char *buf, size_t len, uint64_t v);
#define FORMAT_BYTES_MAX 32
