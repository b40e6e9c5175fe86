/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * reclaim-agent's settings: built-in defaults, then /etc/reclaim/agent.conf (inih, one
 * [agent] section), then the command line. The same key parser serves the file and the
 * options, so "--rate 50M" and "rate = 50M" accept exactly the same values.
 *
 *     [agent]
 *     mode = auto              ; auto | trim | zero
 *     rate = 50M               ; zero-fill bytes per second, 0 = unlimited
 *     reserve = 10%,2G         ; never let free space fall below the larger of the two
 *     filesystem = /           ; repeatable: only these (default: every eligible one)
 *     exclude = /var/lib/big   ; repeatable
 *     port = /dev/virtio-ports/org.reclaim.agent.0
 *     control_socket = /run/reclaim-agent/serve.sock  ; where serve takes run's reports
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "zerofill.h"

#define AGENT_CONFIG_FILE_DEFAULT "/etc/reclaim/agent.conf"
#define AGENT_PORT_DEFAULT "/dev/virtio-ports/org.reclaim.agent.0"
/* serve listens here for the reports of runs that find the port held (docs/agent.md). */
#define AGENT_CONTROL_SOCKET_DEFAULT "/run/reclaim-agent/serve.sock"
#define AGENT_MODE_DEFAULT AGENT_MODE_AUTO
#define AGENT_RATE_DEFAULT (UINT64_C(50) << 20)
#define AGENT_RESERVE_DEFAULT "10%,2G"
/* Longest path accepted for filesystem, exclude, port and socket (control_socket: sun_path). */
#define AGENT_CONFIG_PATH_MAX 4095

typedef enum AgentMode {
        AGENT_MODE_AUTO, /* FITRIM where discard works, zero-fill elsewhere */
        AGENT_MODE_TRIM, /* FITRIM only */
        AGENT_MODE_ZERO, /* zero-fill only */
        _AGENT_MODE_MAX,
} AgentMode;

/* A growable list of owned strings. */
typedef struct AgentStrv {
        char **v;
        size_t n;
} AgentStrv;

typedef struct AgentConfig {
        AgentMode mode;
        uint64_t rate;         /* bytes per second; 0 = unlimited */
        AgentReserve reserve;  /* parsed from reserve_spec */
        char *reserve_spec;    /* as given, for messages and --json */
        AgentStrv filesystems; /* only these; empty = every eligible filesystem */
        AgentStrv excludes;
        char *port;           /* the virtio-serial port device */
        char *socket;         /* a UNIX socket instead of the port (tests); NULL: use the port */
        char *control_socket; /* serve's local socket for run's hand-over (docs/agent.md) */
} AgentConfig;

/* Appends a copy of s. Returns 0 or -ENOMEM (the list is unchanged then). */
int agent_strv_push(AgentStrv *l, const char *s);

/* Frees every string and the array; leaves an empty list. */
void agent_strv_done(AgentStrv *l);

/* "auto", "trim", "zero"; NULL for anything else. */
const char *agent_mode_to_string(AgentMode m);

/* Parses "auto", "trim" or "zero". Returns the mode (>= 0) or -EINVAL. */
int agent_mode_from_string(const char *s);

/* True when mode m may free space with FITRIM / with zero-fill. */
bool agent_mode_allows_trim(AgentMode m);
bool agent_mode_allows_zero(AgentMode m);

/*
 * Fills *c with the built-in defaults (mode auto, rate 50M, reserve "10%,2G", the default
 * port and control socket, no filesystem or exclude). Returns 0 or -ENOMEM; on failure *c is left
 * empty (safe to pass to agent_config_done()).
 */
int agent_config_init(AgentConfig *c);

/* Frees what *c owns and zeroes it. Accepts a zeroed AgentConfig. */
void agent_config_done(AgentConfig *c);

/*
 * Sets one key ("mode", "rate", "reserve", "filesystem", "exclude", "port", "socket",
 * "control_socket") from its
 * text value; filesystem and exclude append. Returns 0; -ENOENT for an unknown key; -EINVAL for
 * a bad value, then *ret_reason (when not NULL) points at a static explanation for the user;
 * -ERANGE for a number that overflows; -ENOMEM. *c is unchanged on failure. Borrows key and
 * value.
 */
int agent_config_set(AgentConfig *c, const char *key, const char *value, const char **ret_reason);

/*
 * Reads an inih file into *c (its keys override what *c holds; filesystem and exclude append).
 * A missing file is fine when must_exist is false (returns 0, *c untouched). Returns 0 on
 * success; on a bad file returns -EINVAL (or -ENOMEM, or -errno from opening or reading it)
 * and stores in *ret_error a new message naming the file and line ("FILE:LINE: unknown key
 * 'x'", "FILE:LINE: invalid value 'v' for 'rate': ...", "FILE:LINE: syntax error ...";
 * caller frees); *ret_error is NULL when no message could be built. On failure *c may hold
 * the keys read before the bad line: the caller exits. Borrows path. One pass over the file.
 */
int agent_config_load(AgentConfig *c, const char *path, bool must_exist, char **ret_error);
