/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target for the configuration parsers that read files an admin writes (and that tests
 * and packagers generate): the agent's agent.conf and, when built, reclaimd's reclaimd.conf.
 * The input goes into a memfd and each parser reads it through /proc/self/fd/N, as it reads
 * a real file. A crash or sanitizer report is a bug; a refusal is the expected answer.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent-config.h"
#include "log.h"
#ifdef FUZZ_RECLAIMD
#        include "manager.h"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        char path[64];
        int fd;

        if (size > (1u << 20))
                return 0;
        log_set_max_level(LOG_CRIT); /* parse errors are logged; keep the fuzzer quiet */
        fd = memfd_create("fuzz-config", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        if (write(fd, data, size) != (ssize_t) size) {
                close(fd);
                return 0;
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

        AgentConfig ac;
        if (agent_config_init(&ac) >= 0) {
                char *err = NULL;
                (void) agent_config_load(&ac, path, true, &err);
                free(err);
                agent_config_done(&ac);
        }
#ifdef FUZZ_RECLAIMD
        ManagerConfig mc;
        if (manager_config_init(&mc, "/var/lib/reclaim", "/usr/bin/reclaimctl") >= 0) {
                (void) manager_config_load(&mc, path, false);
                manager_config_done(&mc);
        }
#endif
        close(fd);
        return 0;
}
