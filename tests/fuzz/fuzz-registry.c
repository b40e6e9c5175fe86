/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the VM registry's three parsers on hostile configuration files, from memory.
 *
 * Input: byte 0 picks the parser (modulo 4), the rest is the file:
 *   0  vms.d/NAME.conf (inih)
 *   1  libvirt domain XML (libxml2)
 *   2  Proxmox qemu-server/VMID.conf, resolved against a fixed storage.cfg
 *   3  Proxmox storage.cfg, then a fixed VMID.conf resolved against it
 * Every result must be well-formed: a valid VM name, absolute disk paths, qcow2 only, at most
 * REGISTRY_MAX_DISKS disks, no disk twice, a channel that fits a UNIX socket address; every
 * diagnostic has a message and a known level; no more than the per-file cap (plus summaries).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "registry-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                 \
        do {                     \
                if (!(x))        \
                        abort(); \
        } while (0)

static const char storage_cfg[] =
        "dir: local\n"
        "\tpath /var/lib/vz\n"
        "\tcontent iso,vztmpl,backup,images\n"
        "\n"
        "lvmthin: local-lvm\n"
        "\tthinpool data\n"
        "\tvgname pve\n"
        "\n"
        "nfs: nas\n"
        "\tpath /mnt/pve/nas\n"
        "\tcontent-dirs images=vm\n"
        "\n"
        "cifs: smb\n"
        "\tcontent images\n";

static const char pve_conf[] =
        "args: -chardev socket,id=c,path=/run/c.sock,server=on "
        "-device virtserialport,chardev=c,name=org.reclaim.agent.0\n"
        "efidisk0: local:101/vm-101-disk-1.qcow2,size=528K\n"
        "ide2: none,media=cdrom\n"
        "sata0: smb:101/vm-101-disk-4.qcow2\n"
        "scsi0: local:101/vm-101-disk-0.qcow2,size=32G\n"
        "scsi1: nas:100/base-100-disk-0.qcow2/101/vm-101-disk-2.qcow2\n"
        "scsi2: local-lvm:vm-101-disk-3\n"
        "virtio0: /srv/a.qcow2\n"
        "[snap]\n"
        "scsi3: local:101/vm-101-disk-5.qcow2\n";

typedef struct Counter {
        unsigned n;
} Counter;

static void on_diag(const RegistryDiag *d, void *userdata) {
        Counter *c = userdata;

        CHECK(d->level == LOG_ERR || d->level == LOG_WARNING || d->level == LOG_DEBUG);
        CHECK(d->error <= 0);
        CHECK(d->message && d->text && strstr(d->text, d->message));
        c->n++;
}

static void check_vm(const RegistryVm *vm) {
        CHECK(registry_vm_name_is_valid(vm->name));
        CHECK(registry_source_to_string(vm->source));
        CHECK(vm->source_file);
        CHECK(vm->n_disks <= REGISTRY_MAX_DISKS);
        CHECK(vm->auto_compact >= -1 && vm->auto_compact <= 1);
        if (vm->min_gain.kind == REGISTRY_MIN_GAIN_PERCENT)
                CHECK(vm->min_gain.value <= 100);
        for (size_t i = 0; i < vm->n_disks; i++) {
                CHECK(registry_path_is_absolute(vm->disks[i].path));
                CHECK(strcmp(vm->disks[i].format, "qcow2") == 0);
                CHECK(!vm->disks[i].storage == !vm->disks[i].storage_type);
                for (size_t j = 0; j < i; j++)
                        CHECK(strcmp(vm->disks[i].path, vm->disks[j].path) != 0);
        }
        if (vm->channel) {
                CHECK(registry_path_is_absolute(vm->channel));
                CHECK(strlen(vm->channel) <= REGISTRY_MAX_SOCKET_PATH);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Counter c = {};
        const RegistryReporter rep = { .on_error = on_diag, .userdata = &c };
        RegistryPveStorages *st = NULL;
        RegistryVm *vm = NULL;
        const char *text;
        size_t len;
        int r;

        if (size < 1 || size > (1u << 20))
                return 0;
        text = (const char *) data + 1;
        len = size - 1;

        switch (data[0] % 4) {
        case 0:
                r = registry_parse_vms_d(&rep, "/fuzz/vms.d/vm-1.conf", text, len, &vm);
                CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
                /* each error line, the "more errors" line and the summary */
                CHECK(c.n <= REGISTRY_MAX_DIAGS_PER_FILE + 2);
                break;
        case 1:
                r = registry_parse_libvirt(&rep, "/fuzz/qemu/x.xml", text, len, &vm);
                CHECK(r == 0 || r == -EINVAL || r == -ENOMEM);
                CHECK(c.n <= REGISTRY_MAX_DIAGS_PER_FILE + 1);
                break;
        case 2:
                r = registry_parse_pve_storages(
                        &rep, "/fuzz/storage.cfg", storage_cfg, sizeof(storage_cfg) - 1, &st);
                if (r < 0)
                        return 0;
                CHECK(c.n == 0);
                r = registry_parse_pve(&rep, "/fuzz/101.conf", "101", text, len, st, &vm);
                CHECK(r == 0 || r == -ENOMEM);
                CHECK(c.n <= REGISTRY_MAX_DIAGS_PER_FILE + 1);
                break;
        default:
                r = registry_parse_pve_storages(&rep, "/fuzz/storage.cfg", text, len, &st);
                CHECK(r == 0 || r == -ENOMEM);
                if (r < 0)
                        return 0;
                CHECK(c.n <= REGISTRY_MAX_DIAGS_PER_FILE + 1);
                for (size_t i = 0; i < st->n_items; i++) {
                        CHECK(st->items[i].id && st->items[i].type);
                        CHECK(!st->items[i].path || registry_path_is_absolute(st->items[i].path));
                        for (size_t j = 0; j < i; j++)
                                CHECK(strcmp(st->items[i].id, st->items[j].id) != 0);
                }
                c.n = 0;
                r = registry_parse_pve(
                        &rep, "/fuzz/101.conf", "101", pve_conf, sizeof(pve_conf) - 1, st, &vm);
                CHECK(r == 0 || r == -ENOMEM);
                break;
        }
        if (vm)
                check_vm(vm);
        registry_vm_free(vm);
        registry_pve_storages_free(st);
        return 0;
}
