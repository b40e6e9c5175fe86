/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for host/registry/registry-libvirt.c: the domain XML of the fixture trees (as
 * virt-install and virsh write it: qcow2 file and block disks kept; cdrom, raw, network disks
 * skipped; our channel only when QEMU listens), every refusal (not well-formed, DOCTYPE with
 * entities, external entities, no name, not a domain), then corner cases in memory.
 */

#include <time.h>

#include "registry-test.h"

#define HOST FIXTURE("host")
#define BAD FIXTURE("bad")

static void test_host_libvirt(void **state) {
        TestDiags d = {};
        _cleanup_(registry_freep) Registry *r = test_load(HOST, LOAD_LIBVIRT, &d);
        const char *dir = HOST "/etc/libvirt/qemu";
        const RegistryVm *vm;

        /* networks/default.xml and autostart/ are not read: only *.xml files right there */
        assert_int_equal(registry_size(r), 2);

        vm = want_vm(r, "web01");
        assert_int_equal(vm->source, REGISTRY_SOURCE_LIBVIRT);
        assert_string_equal(vm->source_file, HOST "/etc/libvirt/qemu/web01.xml");
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, HOST, "/var/lib/libvirt/images/web01.qcow2", "vda", NULL, NULL, false);
        /* the guest agent's and spice's channels are not ours */
        assert_string_equal(vm->channel, HOST "/run/reclaim/web01.sock");
        assert_int_equal(vm->auto_compact, -1);

        vm = want_vm(r, "db01");
        assert_int_equal(vm->n_disks, 2);
        want_disk(
                vm, 0, HOST, "/var/lib/libvirt/images/db01-system.qcow2", "vda", NULL, NULL, false);
        want_disk(vm, 1, HOST, "/dev/vg0/db01-data", "vdc", NULL, NULL, true);
        assert_null(vm->channel);

        expect_diag(
                &d,
                LOG_WARNING,
                "%s/db01.xml:102: channel org.reclaim.agent.0 has mode='connect': QEMU must listen "
                "(mode='bind')",
                dir);
        expect_diag(
                &d, LOG_DEBUG, "%s/db01.xml:45: disk vdb: format 'raw', not qcow2; skipped", dir);
        expect_diag(
                &d,
                LOG_DEBUG,
                "%s/db01.xml:57: disk vdd: type='network' is not a local file or block device; "
                "skipped",
                dir);
        expect_diag(&d, LOG_DEBUG, "%s/db01.xml:68: disk sda: device='cdrom'; skipped", dir);
        expect_diag(&d, LOG_DEBUG, "%s/web01.xml:49: disk sda: device='cdrom'; skipped", dir);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

static void test_bad_libvirt(void **state) {
        TestDiags d = {};
        struct timespec t0, t1;
        const char *dir = BAD "/etc/libvirt/qemu";
        const RegistryVm *vm;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        _cleanup_(registry_freep) Registry *r = test_load(BAD, LOAD_LIBVIRT, &d);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        /* the entity bomb is refused, not expanded: well under a second */
        assert_true(t1.tv_sec - t0.tv_sec < 2);

        assert_int_equal(registry_size(r), 1);
        vm = want_vm(r, "libtwin");
        assert_string_equal(vm->source_file, BAD "/etc/libvirt/qemu/twin1.xml");
        assert_int_equal(vm->n_disks, 1);
        want_disk(vm, 0, BAD, "/var/lib/libvirt/images/libtwin.qcow2", "vdb", NULL, NULL, false);
        assert_null(vm->channel);

        expect_diag(
                &d,
                LOG_ERR,
                "%s/broken.xml:9: not well-formed XML: Premature end of data in tag domain line 1; "
                "skipped",
                dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/isolated.xml:1: root element is <network>, not <domain>; skipped",
                dir);
        expect_diag(
                &d,
                LOG_ERR,
                "%s/laughs.xml:14: not well-formed XML: Detected an entity reference loop; skipped",
                dir);
        expect_diag(&d, LOG_ERR, "%s/noname.xml:1: no <name>; skipped", dir);
        /* external entities and an external DTD: refused before anything is fetched */
        expect_diag(
                &d,
                LOG_ERR,
                "%s/xxe.xml: a DOCTYPE is not allowed in a libvirt domain XML; skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/twin1.xml:5: disk vda: source 'images/relative.qcow2' is not an absolute path; "
                "skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/twin1.xml:15: disk vdc: '/var/lib/libvirt/images/libtwin.qcow2' is listed "
                "twice; skipped",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/twin1.xml:20: channel org.reclaim.agent.0 has type='pty'; only type='unix' can "
                "be used",
                dir);
        expect_diag(
                &d,
                LOG_WARNING,
                "%s/twin2.xml: VM 'libtwin' is already defined in %s/twin1.xml; this definition "
                "is ignored",
                dir,
                dir);
        expect_no_other_diags(&d, LOG_DEBUG);
        test_diags_done(&d);
}

#define DOMAIN(devices) "<domain type='kvm'><name>m</name><devices>" devices "</devices></domain>"
#define QCOW2_DISK(attrs, src)                                           \
        "<disk " attrs "><driver name='qemu' type='qcow2'/><source " src \
        "/>"                                                             \
        "<target dev='vdz' bus='virtio'/></disk>"
#define CHANNEL(type, source)                                \
        "<channel type='" type "'>" source                   \
        "<target type='virtio' name='org.reclaim.agent.0'/>" \
        "</channel>"

typedef struct MemCase {
        const char *name;
        const char *xml;
        int want_r;
        size_t want_disks;
        const char *want_channel;
        int level;       /* of the one diagnostic expected, 0: none */
        const char *msg; /* "/m/x.xml:LINE: ..." after the prefix */
} MemCase;

static const MemCase mem_cases[] = {
        { "type defaults to file",
          DOMAIN(QCOW2_DISK("device='disk'", "file='/a.qcow2'")),
          0,
          1,
          NULL,
          0,
          NULL },
        { "device defaults to disk",
          DOMAIN(QCOW2_DISK("type='file'", "file='/a.qcow2'")),
          0,
          1,
          NULL,
          0,
          NULL },
        { "block needs dev",
          DOMAIN(QCOW2_DISK("type='block'", "file='/a.qcow2'")),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: disk vdz: no source; skipped" },
        { "no driver type",
          DOMAIN("<disk type='file'><source file='/a.img'/><target dev='vda'/></disk>"),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: disk vda: format 'raw', not qcow2; skipped" },
        { "volume disk",
          DOMAIN("<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='default' volume='a.qcow2'/></disk>"),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: disk #0: type='volume' is not a local file or block device; skipped" },
        { "floppy",
          DOMAIN(QCOW2_DISK("type='file' device='floppy'", "file='/f.qcow2'")),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: disk vdz: device='floppy'; skipped" },
        { "lun",
          DOMAIN(QCOW2_DISK("type='block' device='lun'", "dev='/dev/sdb'")),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: disk vdz: device='lun'; skipped" },
        { "bind channel",
          DOMAIN(CHANNEL("unix", "<source mode='bind' path='/run/r.sock'/>")),
          0,
          0,
          "/run/r.sock",
          0,
          NULL },
        { "channel without path",
          DOMAIN(CHANNEL("unix", "<source mode='bind'/>")),
          0,
          0,
          NULL,
          LOG_DEBUG,
          "1: channel org.reclaim.agent.0 has no path: libvirt picks one when the domain starts; set <source path=...>" },
        { "channel without source",
          DOMAIN(CHANNEL("unix", "")),
          0,
          0,
          NULL,
          LOG_WARNING,
          "1: channel org.reclaim.agent.0 has mode='': QEMU must listen (mode='bind')" },
        { "relative channel",
          DOMAIN(CHANNEL("unix", "<source mode='bind' path='r.sock'/>")),
          0,
          0,
          NULL,
          LOG_WARNING,
          "1: channel org.reclaim.agent.0: 'r.sock' is not an absolute socket path of at most 107 bytes; ignored" },
        { "second channel",
          DOMAIN(CHANNEL("unix", "<source mode='bind' path='/run/a.sock'/>")
                         CHANNEL("unix", "<source mode='bind' path='/run/b.sock'/>")),
          0,
          0,
          "/run/a.sock",
          LOG_WARNING,
          "1: a second channel org.reclaim.agent.0; ignored" },
        { "other channel name",
          DOMAIN("<channel type='unix'><source mode='bind' path='/run/x.sock'/><target type='virtio' name='org.reclaim.agent.1'/></channel>"),
          0,
          0,
          NULL,
          0,
          NULL },
        { "guestfwd is not virtio",
          DOMAIN("<channel type='unix'><source mode='bind' path='/run/x.sock'/><target type='guestfwd' name='org.reclaim.agent.0'/></channel>"),
          0,
          0,
          NULL,
          0,
          NULL },
        { "disks outside devices",
          "<domain><name>m</name>" QCOW2_DISK("", "file='/a.qcow2'") "</domain>",
          0,
          0,
          NULL,
          0,
          NULL },
        { "no devices", "<domain><name>m</name></domain>", 0, 0, NULL, 0, NULL },
        { "name with newline",
          "<domain><name>a\nb</name></domain>",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "1: invalid <name>; skipped" },
        { "empty name",
          "<domain><name></name></domain>",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "1: invalid <name>; skipped" },
        { "slash in name",
          "<domain><name>a/b</name></domain>",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "1: invalid <name>; skipped" },
        { "undefined entity",
          "<domain><name>&foo;</name></domain>",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "1: not well-formed XML: Entity 'foo' not defined; skipped" },
        { "predefined entities", "<domain><name>a&amp;b</name></domain>", 0, 0, NULL, 0, NULL },
        { "empty document",
          "",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "1: not well-formed XML: Document is empty; skipped" },
        { "internal DTD without entities",
          "<!DOCTYPE domain><domain><name>m</name></domain>",
          -EINVAL,
          0,
          NULL,
          LOG_ERR,
          "a DOCTYPE is not allowed in a libvirt domain XML; skipped" },
        { "xinclude is not processed",
          "<domain xmlns:xi='http://www.w3.org/2001/XInclude'><name>m</name><devices><xi:include href='/etc/passwd' parse='text'/></devices></domain>",
          0,
          0,
          NULL,
          0,
          NULL },
};

static void test_memory_cases(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(mem_cases); i++) {
                const MemCase *c = &mem_cases[i];
                TestDiags d = {};
                RegistryVm *vm = NULL;
                int r;

                r = test_parse(registry_parse_libvirt, "/m/x.xml", c->xml, &d, &vm);
                if (r != c->want_r) {
                        test_diags_dump(&d);
                        fail_msg("case '%s': %d, want %d", c->name, r, c->want_r);
                }
                if (r == 0) {
                        if (vm->n_disks != c->want_disks)
                                fail_msg("case '%s': %zu disks", c->name, vm->n_disks);
                        if (c->want_channel)
                                assert_string_equal(vm->channel, c->want_channel);
                        else
                                assert_null(vm->channel);
                        registry_vm_free(vm);
                } else
                        assert_null(vm);
                if (c->level) {
                        if (c->msg[0] >= '0' && c->msg[0] <= '9')
                                expect_diag(&d, c->level, "/m/x.xml:%s", c->msg);
                        else
                                expect_diag(&d, c->level, "/m/x.xml: %s", c->msg);
                }
                expect_no_other_diags(&d, LOG_DEBUG);
                test_diags_done(&d);
        }
}

/* Depth beyond libxml2's limit (256 without XML_PARSE_HUGE) is refused, not recursed into. */
static void test_memory_deep(void **state) {
        char *xml = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&xml, &len);
        TestDiags d = {};
        RegistryVm *vm = NULL;

        assert_non_null(f);
        fputs("<domain><name>deep</name>", f);
        for (int i = 0; i < 5000; i++)
                fputs("<a>", f);
        for (int i = 0; i < 5000; i++)
                fputs("</a>", f);
        fputs("</domain>", f);
        fclose(f);
        assert_int_equal(test_parse(registry_parse_libvirt, "/m/deep.xml", xml, &d, &vm), -EINVAL);
        assert_int_equal(d.n, 1);
        assert_int_equal(d.v[0].level, LOG_ERR);
        assert_non_null(strstr(d.v[0].text, "not well-formed XML"));
        free(xml);
        test_diags_done(&d);
}

/* Many skipped devices: the notes are capped, the rest counted at their worst level. */
static void test_memory_many_notes(void **state) {
        char *xml = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&xml, &len);
        TestDiags d = {};
        RegistryVm *vm = NULL;

        assert_non_null(f);
        fputs("<domain><name>many</name><devices>", f);
        for (int i = 0; i < 30; i++)
                fputs("<disk type='file' device='cdrom'/>", f);
        for (int i = 0; i < 70; i++)
                fprintf(f, "<disk><driver type='qcow2'/><source file='/d%d.qcow2'/></disk>", i);
        fputs("</devices></domain>", f);
        fclose(f);
        assert_int_equal(test_parse(registry_parse_libvirt, "/m/many.xml", xml, &d, &vm), 0);
        assert_int_equal(vm->n_disks, REGISTRY_MAX_DISKS);
        assert_int_equal(d.n, REGISTRY_MAX_DIAGS_PER_FILE + 1);
        expect_diag(&d, LOG_WARNING, "/m/many.xml: 16 more notes not shown");
        registry_vm_free(vm);
        free(xml);
        test_diags_done(&d);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_host_libvirt),      cmocka_unit_test(test_bad_libvirt),
                cmocka_unit_test(test_memory_cases),      cmocka_unit_test(test_memory_deep),
                cmocka_unit_test(test_memory_many_notes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
