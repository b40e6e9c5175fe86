/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What reclaimctl.c shares with the verbs that live in their own files. */

#include "registry.h"

/* The global options (NULL: not given). */
extern const char *arg_root;
extern const char *arg_config_dir;
extern const char *arg_state_dir;

/*
 * Loads the VM registry from the configured roots (diagnostics logged). *ret_where (may be
 * NULL) gets the directories searched, for messages. Returns 0 or a negative errno (logged).
 */
int reclaimctl_load_registry(Registry **ret, char **ret_where);

/* reclaimctl-status.c */
int verb_status(int argc, char *argv[]);
int verb_metrics(int argc, char *argv[]);
