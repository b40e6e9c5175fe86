/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libvirt domain XML (/etc/libvirt/qemu/NAME.xml), as libvirt writes it:
 *
 *   <domain type='kvm'>
 *     <name>web01</name>
 *     <devices>
 *       <disk type='file' device='disk'>
 *         <driver name='qemu' type='qcow2'/>
 *         <source file='/var/lib/libvirt/images/web01.qcow2'/>
 *         <target dev='vda' bus='virtio'/>
 *       </disk>
 *       <channel type='unix'>
 *         <source mode='bind' path='/run/reclaim/web01.sock'/>
 *         <target type='virtio' name='org.reclaim.agent.0'/>
 *       </channel>
 *
 * Kept: qcow2 disks that are files (type='file', source file=) or block devices (type='block',
 * source dev=), device='disk'. Skipped with a note: cdroms, floppies, LUNs, raw disks,
 * network and pool volumes. The channel is ours when its target is virtio
 * org.reclaim.agent.0 and QEMU listens on it (source mode='bind').
 *
 * The input is treated as hostile: no network (XML_PARSE_NONET), no entity substitution, no
 * DTD loading, libxml2's default depth and size limits, and any document with a DOCTYPE is
 * refused outright (libvirt never writes one).
 */

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "registry-internal.h"

#define CHANNEL_NAME "org.reclaim.agent.0"

static inline void xml_freep(xmlChar **p) {
        if (*p)
                xmlFree(*p);
}
#define _cleanup_xml_ _cleanup_(xml_freep)

static inline xmlDocPtr xml_doc_free(xmlDocPtr d) {
        xmlFreeDoc(d);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(xmlDocPtr, xml_doc_free);

static inline xmlParserCtxtPtr xml_ctxt_free(xmlParserCtxtPtr c) {
        xmlFreeParserCtxt(c);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(xmlParserCtxtPtr, xml_ctxt_free);

typedef struct LibvirtParser {
        const RegistryReporter *rep;
        const char *path;
        unsigned diags;
        int suppressed_level; /* the most severe of the notes not shown */
        RegistryVm *vm;
} LibvirtParser;

static bool is_element(const xmlNode *n, const char *name) {
        return n && n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, (const xmlChar *) name) == 0;
}

static xmlNode *first_child(const xmlNode *parent, const char *name) {
        for (xmlNode *c = parent ? parent->children : NULL; c; c = c->next)
                if (is_element(c, name))
                        return c;
        return NULL;
}

static xmlChar *prop(const xmlNode *n, const char *name) {
        return n ? xmlGetNoNsProp(n, (const xmlChar *) name) : NULL;
}

static unsigned line_of(const xmlNode *n) {
        long l = xmlGetLineNo(n);
        return l > 0 && l <= UINT_MAX ? (unsigned) l : 0;
}

static bool streq_x(const xmlChar *a, const char *b) {
        return a && strcmp((const char *) a, b) == 0;
}

static void note(LibvirtParser *p, int level, const xmlNode *node, const char *fmt, ...)
        _printf_(4, 5);

/* Reports one note about node (capped per file; the worst level of the rest is kept). */
static void note(LibvirtParser *p, int level, const xmlNode *node, const char *fmt, ...) {
        _cleanup_free_ char *m = NULL;
        va_list ap;
        int n;

        if (p->diags++ >= REGISTRY_MAX_DIAGS_PER_FILE) {
                p->suppressed_level = MIN(p->suppressed_level, level);
                return;
        }
        va_start(ap, fmt);
        n = vasprintf(&m, fmt, ap);
        va_end(ap);
        if (n >= 0)
                registry_report(p->rep, level, 0, p->path, line_of(node), "%s", m);
}

static int parse_disk(LibvirtParser *p, const xmlNode *disk, unsigned index) {
        _cleanup_xml_ xmlChar *type = prop(disk, "type"), *device = prop(disk, "device"),
                              *dev = prop(first_child(disk, "target"), "dev"),
                              *format = prop(first_child(disk, "driver"), "type"), *src = NULL;
        const xmlNode *source = first_child(disk, "source");
        char label[64];
        bool block;
        int r;

        if (dev && xmlStrlen(dev) < 32)
                snprintf(label, sizeof(label), "disk %s", (const char *) dev);
        else
                snprintf(label, sizeof(label), "disk #%u", index);

        /* libvirt's defaults: type='file', device='disk' */
        if (device && !streq_x(device, "disk")) {
                note(p, LOG_DEBUG, disk, "%s: device='%s'; skipped", label, (const char *) device);
                return 0;
        }
        block = streq_x(type, "block");
        if (type && !block && !streq_x(type, "file")) {
                note(p,
                     LOG_DEBUG,
                     disk,
                     "%s: type='%s' is not a local file or block device; skipped",
                     label,
                     (const char *) type);
                return 0;
        }
        src = prop(source, block ? "dev" : "file");
        if (!src) {
                note(p, LOG_DEBUG, disk, "%s: no source; skipped", label);
                return 0;
        }
        if (!streq_x(format, "qcow2")) {
                note(p,
                     LOG_DEBUG,
                     disk,
                     "%s: format '%s', not qcow2; skipped",
                     label,
                     format ? (const char *) format : "raw");
                return 0;
        }
        if (!registry_path_is_absolute((const char *) src)) {
                note(p,
                     LOG_WARNING,
                     disk,
                     "%s: source '%s' is not an absolute path; skipped",
                     label,
                     (const char *) src);
                return 0;
        }
        if (registry_vm_has_disk(p->vm, (const char *) src)) {
                note(p,
                     LOG_WARNING,
                     disk,
                     "%s: '%s' is listed twice; skipped",
                     label,
                     (const char *) src);
                return 0;
        }
        r = registry_vm_add_disk(
                p->vm, (const char *) src, "qcow2", (const char *) dev, NULL, NULL, block);
        if (r == -E2BIG) {
                note(p, LOG_WARNING, disk, "%s: too many disks; skipped", label);
                return 0;
        }
        return r;
}

static int parse_channel(LibvirtParser *p, const xmlNode *ch) {
        const xmlNode *target = first_child(ch, "target"), *source = first_child(ch, "source");
        _cleanup_xml_ xmlChar *type = prop(ch, "type"), *ttype = prop(target, "type"),
                              *name = prop(target, "name"), *mode = prop(source, "mode"),
                              *path = prop(source, "path");

        if (!streq_x(ttype, "virtio") || !streq_x(name, CHANNEL_NAME))
                return 0; /* the guest agent's, spice's ...: not ours */
        if (!streq_x(type, "unix")) {
                note(p,
                     LOG_WARNING,
                     ch,
                     "channel " CHANNEL_NAME " has type='%s'; only type='unix' can be used",
                     type ? (const char *) type : "");
                return 0;
        }
        if (!streq_x(mode, "bind")) {
                note(p,
                     LOG_WARNING,
                     ch,
                     "channel " CHANNEL_NAME " has mode='%s': QEMU must listen (mode='bind')",
                     mode ? (const char *) mode : "");
                return 0;
        }
        if (!path) {
                note(p,
                     LOG_DEBUG,
                     ch,
                     "channel " CHANNEL_NAME
                     " has no path: libvirt picks one when the domain "
                     "starts; set <source path=...>");
                return 0;
        }
        if (!registry_path_is_absolute((const char *) path) ||
            xmlStrlen(path) > REGISTRY_MAX_SOCKET_PATH) {
                note(p,
                     LOG_WARNING,
                     ch,
                     "channel " CHANNEL_NAME
                     ": '%s' is not an absolute socket path of at most "
                     "%d bytes; ignored",
                     (const char *) path,
                     REGISTRY_MAX_SOCKET_PATH);
                return 0;
        }
        if (p->vm->channel) {
                note(p, LOG_WARNING, ch, "a second channel " CHANNEL_NAME "; ignored");
                return 0;
        }
        return registry_strdup_replace(&p->vm->channel, (const char *) path);
}

/* libxml2's messages end in a newline; ours do not. */
static void report_xml_error(const RegistryReporter *rep, const char *path, xmlParserCtxtPtr c) {
        const xmlError *e = xmlCtxtGetLastError(c);
        const char *msg = e && e->message ? e->message : "unknown error";
        size_t n = strlen(msg);

        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
                n--;
        registry_report(
                rep,
                LOG_ERR,
                -EINVAL,
                path,
                e && e->line > 0 ? (unsigned) e->line : 0,
                "not well-formed XML: %.*s; skipped",
                (int) n,
                msg);
}

int registry_parse_libvirt(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryVm **ret_vm) {
        _cleanup_(xml_ctxt_freep) xmlParserCtxtPtr ctxt = NULL;
        _cleanup_(xml_doc_freep) xmlDocPtr doc = NULL;
        _cleanup_(registry_vm_freep) RegistryVm *vm = NULL;
        _cleanup_xml_ xmlChar *name = NULL;
        const xmlNode *root, *devices;
        unsigned n_disks = 0;
        int r;

        if (!path || (!data && size > 0) || !ret_vm)
                return -EINVAL;
        if (size > INT_MAX || size > REGISTRY_MAX_FILE_SIZE) {
                registry_report(rep, LOG_ERR, -EFBIG, path, 0, "file too large; skipped");
                return -EINVAL;
        }

        xmlInitParser();
        ctxt = xmlNewParserCtxt();
        if (!ctxt)
                return -ENOMEM;
        /* no XML_PARSE_NOENT, DTDLOAD, DTDATTR, XINCLUDE or HUGE: nothing is fetched or
         * expanded, and libxml2 keeps its limits on depth and text size */
        doc = xmlCtxtReadMemory(
                ctxt,
                data ?: "",
                (int) size,
                NULL,
                NULL,
                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!doc) {
                report_xml_error(rep, path, ctxt);
                return -EINVAL;
        }
        if (doc->intSubset || doc->extSubset) {
                registry_report(
                        rep,
                        LOG_ERR,
                        -EINVAL,
                        path,
                        doc->intSubset ? line_of((const xmlNode *) doc->intSubset) : 0,
                        "a DOCTYPE is not allowed in a libvirt domain XML; skipped");
                return -EINVAL;
        }
        root = xmlDocGetRootElement(doc);
        if (!is_element(root, "domain")) {
                registry_report(
                        rep,
                        LOG_ERR,
                        -EINVAL,
                        path,
                        root ? line_of(root) : 0,
                        "root element is <%.32s>, not <domain>; skipped",
                        root ? (const char *) root->name : "");
                return -EINVAL;
        }
        const xmlNode *name_node = first_child(root, "name");
        if (name_node)
                name = xmlNodeGetContent(name_node);
        if (!name || !registry_vm_name_is_valid((const char *) name)) {
                registry_report(
                        rep,
                        LOG_ERR,
                        -EINVAL,
                        path,
                        name_node ? line_of(name_node) : line_of(root),
                        "%s; skipped",
                        name ? "invalid <name>" : "no <name>");
                return -EINVAL;
        }

        vm = registry_vm_new((const char *) name, REGISTRY_SOURCE_LIBVIRT, path);
        if (!vm)
                return -ENOMEM;
        LibvirtParser p = { .rep = rep, .path = path, .vm = vm, .suppressed_level = LOG_DEBUG };
        devices = first_child(root, "devices");
        for (const xmlNode *c = devices ? devices->children : NULL; c; c = c->next) {
                if (is_element(c, "disk"))
                        r = parse_disk(&p, c, n_disks++);
                else if (is_element(c, "channel"))
                        r = parse_channel(&p, c);
                else
                        continue;
                if (r < 0)
                        return r;
        }
        if (p.diags > REGISTRY_MAX_DIAGS_PER_FILE)
                registry_report(
                        rep,
                        p.suppressed_level,
                        0,
                        path,
                        0,
                        "%u more notes not shown",
                        p.diags - REGISTRY_MAX_DIAGS_PER_FILE);
        *ret_vm = TAKE_PTR(vm);
        return 0;
}
