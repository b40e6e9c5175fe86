/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Proxmox VE: /etc/pve/qemu-server/VMID.conf and /etc/pve/storage.cfg.
 *
 * A VM config is "key: value" lines; '#' lines are the description. The first "[name]"
 * header starts the snapshots (and [PENDING], [special:cloudinit]); those are other
 * configurations of the same VM and are ignored. Disks are ideN, sataN, scsiN, virtioN,
 * efidisk0 and tpmstate0, each a property string "VOLUME[,key=value...]" where VOLUME is
 * STORAGE:VOLNAME, an absolute path, "none" or "cdrom". Only qcow2 files are kept: volumes on
 * dir, nfs and cifs storages resolve to PATH/images/VMID/NAME; LVM, ZFS, Ceph ... volumes are
 * block devices or objects, not qcow2 files, and are skipped with a note.
 *
 * The channel comes from "args:", the only place a Proxmox VM can get an extra chardev:
 *   -chardev socket,id=X,path=/run/reclaim/101.sock,server=on,wait=off
 *   -device virtserialport,chardev=X,name=org.reclaim.agent.0
 *
 * storage.cfg is PVE's section config: "TYPE: ID" at column 0, then indented "key value"
 * lines, up to a blank line. Malformed lines are reported and skipped, as Proxmox does.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "registry-internal.h"

#define CHANNEL_NAME "org.reclaim.agent.0"

/* ---- lines ---- */

typedef struct LineReader {
        const char *data;
        size_t size;
        size_t pos;
        unsigned line;
} LineReader;

/* The next line without its newline (and without a trailing '\r'); false at the end. */
static bool next_line(LineReader *lr, const char **ret, size_t *ret_len) {
        const char *start, *nl;
        size_t len;

        if (lr->pos >= lr->size)
                return false;
        start = lr->data + lr->pos;
        nl = memchr(start, '\n', lr->size - lr->pos);
        len = nl ? (size_t) (nl - start) : lr->size - lr->pos;
        lr->pos += len + (nl ? 1 : 0);
        lr->line++;
        if (len > 0 && start[len - 1] == '\r')
                len--;
        *ret = start;
        *ret_len = len;
        return true;
}

static bool is_blank(char c) {
        return c == ' ' || c == '\t';
}

/* Trims blanks at both ends of [*s, *s + *n). */
static void trim(const char **s, size_t *n) {
        while (*n > 0 && is_blank(**s)) {
                (*s)++;
                (*n)--;
        }
        while (*n > 0 && is_blank((*s)[*n - 1]))
                (*n)--;
}

typedef struct Notes {
        const RegistryReporter *rep;
        const char *path;
        unsigned shown;
        unsigned suppressed;
        int suppressed_level;
} Notes;

static void notef(Notes *n, int level, unsigned line, const char *fmt, ...) _printf_(4, 5);

static void notef(Notes *n, int level, unsigned line, const char *fmt, ...) {
        _cleanup_free_ char *m = NULL;
        va_list ap;
        int r;

        if (n->shown >= REGISTRY_MAX_DIAGS_PER_FILE) {
                if (n->suppressed++ == 0 || level < n->suppressed_level)
                        n->suppressed_level = level;
                return;
        }
        n->shown++;
        va_start(ap, fmt);
        r = vasprintf(&m, fmt, ap);
        va_end(ap);
        if (r >= 0)
                registry_report(
                        n->rep, level, level <= LOG_WARNING ? -EINVAL : 0, n->path, line, "%s", m);
}

static void notes_finish(Notes *n) {
        if (n->suppressed > 0)
                registry_report(
                        n->rep,
                        n->suppressed_level,
                        0,
                        n->path,
                        0,
                        "%u more notes not shown",
                        n->suppressed);
}

static bool valid_id_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_' || c == '.';
}

static bool valid_id(const char *s, size_t n) {
        if (n == 0 || n > 64)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!valid_id_char(s[i]))
                        return false;
        return true;
}

/* ---- storage.cfg ---- */

RegistryPveStorages *registry_pve_storages_free(RegistryPveStorages *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n_items; i++) {
                free(s->items[i].id);
                free(s->items[i].type);
                free(s->items[i].path);
                free(s->items[i].images_dir);
        }
        free(s->items);
        free(s->file);
        free(s);
        return NULL;
}

static const RegistryPveStorage *find_storage(const RegistryPveStorages *s, const char *id) {
        for (size_t i = 0; s && i < s->n_items; i++)
                if (strcmp(s->items[i].id, id) == 0)
                        return &s->items[i];
        return NULL;
}

/* A relative directory without "." or ".." components. */
static bool valid_subdir(const char *s) {
        if (!s || !*s || s[0] == '/')
                return false;
        for (const char *p = s; *p;) {
                size_t n = strcspn(p, "/");
                if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
                        return false;
                p += n;
                if (*p == '/')
                        p++;
        }
        return true;
}

/* "content-dirs images=foo,iso=bar": the images directory, or NULL when not given. */
static int parse_content_dirs(const char *v, char **ret) {
        const char *p = v;

        while (*p) {
                size_t n = strcspn(p, ",");
                if (n > 7 && strncmp(p, "images=", 7) == 0) {
                        _cleanup_free_ char *d = strndup(p + 7, n - 7);
                        if (!d)
                                return -ENOMEM;
                        if (!valid_subdir(d))
                                return -EINVAL;
                        free(*ret);
                        *ret = TAKE_PTR(d);
                }
                p += n;
                if (*p == ',')
                        p++;
        }
        return 0;
}

static int storage_set(
        Notes *notes,
        RegistryPveStorage *st,
        unsigned line,
        const char *key,
        size_t klen,
        const char *val,
        size_t vlen) {
        _cleanup_free_ char *v = registry_memdup_str(val, vlen);

        if (!v)
                return -ENOMEM;
        if (klen == 4 && strncmp(key, "path", 4) == 0) {
                if (!registry_path_is_absolute(v)) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "storage '%s': path '%s' is not absolute; ignored",
                              st->id,
                              v);
                        return 0;
                }
                free(st->path);
                st->path = TAKE_PTR(v);
        } else if (klen == 12 && strncmp(key, "content-dirs", 12) == 0) {
                int r = parse_content_dirs(v, &st->images_dir);
                if (r == -EINVAL)
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "storage '%s': invalid content-dirs '%s'; ignored",
                              st->id,
                              v);
                else if (r < 0)
                        return r;
        }
        return 0;
}

int registry_parse_pve_storages(
        const RegistryReporter *rep,
        const char *path,
        const char *data,
        size_t size,
        RegistryPveStorages **ret) {
        _cleanup_(registry_pve_storages_freep) RegistryPveStorages *s = NULL;
        Notes notes = { .rep = rep, .path = path };
        LineReader lr = { .data = data ?: "", .size = size };
        RegistryPveStorage *cur = NULL; /* the stanza being read; NULL outside or when ignored */
        bool in_stanza = false;
        const char *l;
        size_t n;
        int r;

        if (!path || (!data && size > 0) || !ret)
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->file = strdup(path);
        if (!s->file)
                return -ENOMEM;

        while (next_line(&lr, &l, &n)) {
                const char *k, *v, *colon;
                size_t kn, vn;

                if (n > 0 && l[0] == '#')
                        continue;
                if (memchr(l, '\0', n)) {
                        notef(&notes, LOG_WARNING, lr.line, "NUL byte in line; ignored");
                        continue;
                }
                k = l;
                kn = n;
                trim(&k, &kn);
                if (kn == 0) {
                        in_stanza = false; /* a blank line ends a stanza */
                        cur = NULL;
                        continue;
                }
                if (in_stanza) {
                        /* "\tkey value" or "\tflag", up to the next blank line */
                        if (!is_blank(l[0])) {
                                notef(&notes,
                                      LOG_WARNING,
                                      lr.line,
                                      "not an indented property; ignored");
                                continue;
                        }
                        if (!cur)
                                continue;
                        v = k;
                        while (v < k + kn && !is_blank(*v))
                                v++;
                        vn = (size_t) (k + kn - v);
                        size_t key_len = (size_t) (v - k);
                        trim(&v, &vn);
                        r = storage_set(&notes, cur, lr.line, k, key_len, v, vn);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (is_blank(l[0])) {
                        notef(&notes,
                              LOG_WARNING,
                              lr.line,
                              "property outside a storage definition; ignored");
                        continue;
                }
                /* "TYPE: ID" */
                colon = memchr(k, ':', kn);
                in_stanza = true;
                cur = NULL;
                if (!colon) {
                        notef(&notes,
                              LOG_WARNING,
                              lr.line,
                              "cannot parse line (expected 'TYPE: ID'); ignored");
                        continue;
                }
                const char *t = k, *id = colon + 1;
                size_t tn = (size_t) (colon - k), idn = (size_t) (k + kn - id);
                trim(&id, &idn);
                if (!valid_id(t, tn) || !valid_id(id, idn)) {
                        notef(&notes,
                              LOG_WARNING,
                              lr.line,
                              "cannot parse storage header '%.*s'; ignored",
                              (int) MIN(kn, (size_t) 80),
                              k);
                        continue;
                }
                _cleanup_free_ char *ids = registry_memdup_str(id, idn);
                if (!ids)
                        return -ENOMEM;
                if (find_storage(s, ids)) {
                        notef(&notes,
                              LOG_WARNING,
                              lr.line,
                              "storage '%s' defined twice; the first counts",
                              ids);
                        continue;
                }
                RegistryPveStorage *items = reallocarray(s->items, s->n_items + 1, sizeof(*items));
                if (!items)
                        return -ENOMEM;
                s->items = items;
                cur = &s->items[s->n_items];
                *cur = (RegistryPveStorage){ .id = TAKE_PTR(ids),
                                             .type = registry_memdup_str(t, tn),
                                             .line = lr.line };
                s->n_items++;
                if (!cur->type)
                        return -ENOMEM;
        }
        notes_finish(&notes);
        *ret = TAKE_PTR(s);
        return 0;
}

/* ---- qemu-server/VMID.conf ---- */

/* The drive keys, in the order Proxmox itself walks them. */
static const struct {
        const char *prefix;
        unsigned max;
} drive_kinds[] = {
        { "ide", 3 },     { "sata", 5 },    { "scsi", 30 },
        { "virtio", 15 }, { "efidisk", 0 }, { "tpmstate", 0 },
};

/* The rank of a drive key (kind * 100 + index), or -1 when key is not a drive. */
static int drive_rank(const char *key, size_t n) {
        for (size_t i = 0; i < ELEMENTSOF(drive_kinds); i++) {
                size_t pl = strlen(drive_kinds[i].prefix);
                unsigned idx = 0;

                if (n <= pl || n > pl + 2 || strncmp(key, drive_kinds[i].prefix, pl) != 0)
                        continue;
                for (size_t j = pl; j < n; j++) {
                        if (key[j] < '0' || key[j] > '9')
                                return -1;
                        idx = idx * 10 + (unsigned) (key[j] - '0');
                }
                if ((n - pl == 2 && key[pl] == '0') || idx > drive_kinds[i].max)
                        return -1;
                return (int) (i * 100 + idx);
        }
        return -1;
}

typedef struct Drive {
        int rank;
        unsigned line;
        char key[16];
        char *value;
} Drive;

typedef struct PveConf {
        Drive drives[REGISTRY_MAX_DISKS]; /* at most 4 + 6 + 31 + 16 + 1 + 1 distinct keys */
        size_t n_drives;
        char *args;
        unsigned args_line;
} PveConf;

static void pve_conf_done(PveConf *c) {
        for (size_t i = 0; i < c->n_drives; i++)
                free(c->drives[i].value);
        free(c->args);
}

static int cmp_drives(const void *a, const void *b) {
        const Drive *x = a, *y = b;
        return (x->rank > y->rank) - (x->rank < y->rank);
}

/* The property string's volume ("file=" or the first bare item), media and format. */
typedef struct DriveSpec {
        char *file;
        bool cdrom;
        char *format;
} DriveSpec;

static void drive_spec_done(DriveSpec *d) {
        free(d->file);
        free(d->format);
}

static int parse_drive_spec(const char *v, DriveSpec *ret) {
        DriveSpec d = {};
        const char *p = v;
        bool first = true;

        while (*p) {
                size_t n = strcspn(p, ",");
                const char *eq = memchr(p, '=', n);
                char **dst = NULL;
                const char *val = NULL;
                size_t vn = 0;

                if (!eq && first) {
                        dst = &d.file;
                        val = p;
                        vn = n;
                } else if (eq && (size_t) (eq - p) == 4 && strncmp(p, "file", 4) == 0) {
                        dst = &d.file;
                        val = eq + 1;
                        vn = n - 5;
                } else if (eq && (size_t) (eq - p) == 6 && strncmp(p, "format", 6) == 0) {
                        dst = &d.format;
                        val = eq + 1;
                        vn = n - 7;
                } else if (eq && (size_t) (eq - p) == 5 && strncmp(p, "media", 5) == 0)
                        d.cdrom = n - 6 == 5 && strncmp(eq + 1, "cdrom", 5) == 0;
                if (dst) {
                        free(*dst);
                        *dst = strndup(val, vn);
                        if (!*dst) {
                                drive_spec_done(&d);
                                return -ENOMEM;
                        }
                }
                first = false;
                p += n;
                if (*p == ',')
                        p++;
        }
        *ret = d;
        return 0;
}

static bool ends_with(const char *s, const char *suffix) {
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* format= when given, else the file name decides (Proxmox names qcow2 volumes *.qcow2) */
static bool is_qcow2(const DriveSpec *spec) {
        if (spec->format)
                return strcmp(spec->format, "qcow2") == 0;
        return ends_with(spec->file, ".qcow2");
}

static bool all_digits(const char *s, size_t n) {
        if (n == 0 || n > 9)
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] < '0' || s[i] > '9')
                        return false;
        return true;
}

/* A path component: not empty, not "." or "..", no '/'. */
static bool valid_component(const char *s, size_t n) {
        return n > 0 && n < 256 && !(n == 1 && s[0] == '.') &&
                !(n == 2 && s[0] == '.' && s[1] == '.') && !memchr(s, '/', n);
}

/*
 * An image volume name: "VMID/NAME", or a linked clone's "BASEVMID/BASENAME/VMID/NAME" (its
 * file is VMID/NAME, the base is its backing file). Sets *ret to "VMID/NAME" (a new string).
 */
static int parse_volname(const char *vol, char **ret) {
        const char *parts[4];
        size_t lens[4], n = 0;
        const char *p = vol;

        while (n < 4) {
                size_t l = strcspn(p, "/");
                parts[n] = p;
                lens[n++] = l;
                p += l;
                if (*p != '/')
                        break;
                p++;
        }
        if (*p || (n != 2 && n != 4))
                return -EINVAL;
        if (!all_digits(parts[0], lens[0]) || !valid_component(parts[1], lens[1]))
                return -EINVAL;
        if (n == 4 && (!all_digits(parts[2], lens[2]) || !valid_component(parts[3], lens[3])))
                return -EINVAL;
        if (asprintf(
                    ret,
                    "%.*s/%.*s",
                    (int) lens[n - 2],
                    parts[n - 2],
                    (int) lens[n - 1],
                    parts[n - 1]) < 0)
                return -ENOMEM;
        return 0;
}

static int
add_drive(Notes *notes, RegistryVm *vm, const RegistryPveStorages *storages, const Drive *d) {
        _cleanup_(drive_spec_done) DriveSpec spec = {};
        _cleanup_free_ char *path = NULL, *volume = NULL, *sid = NULL;
        const RegistryPveStorage *st = NULL;
        const char *colon;
        int r;

        r = parse_drive_spec(d->value, &spec);
        if (r < 0)
                return r;
        if (!spec.file || !*spec.file) {
                notef(notes, LOG_WARNING, d->line, "%s: no volume; skipped", d->key);
                return 0;
        }
        if (spec.cdrom || strcmp(spec.file, "none") == 0 || strcmp(spec.file, "cdrom") == 0) {
                notef(notes, LOG_DEBUG, d->line, "%s: a cdrom; skipped", d->key);
                return 0;
        }
        if (registry_path_is_absolute(spec.file)) {
                if (!is_qcow2(&spec)) {
                        notef(notes,
                              LOG_DEBUG,
                              d->line,
                              "%s: '%s' is not a qcow2 image; skipped",
                              d->key,
                              spec.file);
                        return 0;
                }
                path = TAKE_PTR(spec.file);
        } else {
                colon = strchr(spec.file, ':');
                if (!colon || !valid_id(spec.file, (size_t) (colon - spec.file))) {
                        notef(notes,
                              LOG_WARNING,
                              d->line,
                              "%s: cannot parse volume '%s'; skipped",
                              d->key,
                              spec.file);
                        return 0;
                }
                sid = strndup(spec.file, (size_t) (colon - spec.file));
                if (!sid)
                        return -ENOMEM;
                if (!storages) {
                        notef(notes,
                              LOG_WARNING,
                              d->line,
                              "%s: cannot resolve '%s': storage.cfg was not read; skipped",
                              d->key,
                              spec.file);
                        return 0;
                }
                st = find_storage(storages, sid);
                if (!st) {
                        notef(notes,
                              LOG_WARNING,
                              d->line,
                              "%s: unknown storage '%s' (not in %s); skipped",
                              d->key,
                              sid,
                              storages->file);
                        return 0;
                }
                bool is_dir = strcmp(st->type, "dir") == 0;
                if (!is_dir && strcmp(st->type, "nfs") != 0 && strcmp(st->type, "cifs") != 0) {
                        notef(notes,
                              LOG_DEBUG,
                              d->line,
                              "%s: storage '%s' is %s, which holds no qcow2 files; skipped",
                              d->key,
                              sid,
                              st->type);
                        return 0;
                }
                if (!is_qcow2(&spec)) {
                        notef(notes,
                              LOG_DEBUG,
                              d->line,
                              "%s: '%s' is not a qcow2 image; skipped",
                              d->key,
                              spec.file);
                        return 0;
                }
                r = parse_volname(colon + 1, &volume);
                if (r == -EINVAL) {
                        notef(notes,
                              LOG_WARNING,
                              d->line,
                              "%s: cannot parse volume '%s'; skipped",
                              d->key,
                              spec.file);
                        return 0;
                }
                if (r < 0)
                        return r;
                /* nfs and cifs storages are mounted at /mnt/pve/ID unless "path" says otherwise */
                if (!st->path && is_dir) {
                        notef(notes,
                              LOG_WARNING,
                              d->line,
                              "%s: storage '%s' has no path; skipped",
                              d->key,
                              sid);
                        return 0;
                }
                if (st->path)
                        r = asprintf(
                                &path,
                                "%s%s%s/%s",
                                st->path,
                                ends_with(st->path, "/") ? "" : "/",
                                st->images_dir ?: "images",
                                volume);
                else
                        r = asprintf(
                                &path,
                                "/mnt/pve/%s/%s/%s",
                                st->id,
                                st->images_dir ?: "images",
                                volume);
                if (r < 0)
                        return -ENOMEM;
        }
        if (registry_vm_has_disk(vm, path)) {
                notef(notes,
                      LOG_WARNING,
                      d->line,
                      "%s: '%s' is attached twice; skipped",
                      d->key,
                      path);
                return 0;
        }
        r = registry_vm_add_disk(
                vm,
                path,
                "qcow2",
                d->key,
                st ? st->id : NULL,
                st ? st->type : NULL,
                !st && strncmp(path, "/dev/", 5) == 0);
        if (r == -E2BIG) {
                notef(notes, LOG_WARNING, d->line, "%s: too many disks; skipped", d->key);
                return 0;
        }
        return r;
}

/* ---- args: -chardev / -device ---- */

typedef struct Words {
        char **w;
        size_t n;
} Words;

static void words_done(Words *w) {
        for (size_t i = 0; i < w->n; i++)
                free(w->w[i]);
        free(w->w);
        *w = (Words){};
}

/* Splits s into words (blanks separate; '...' and "..." quote, as PVE's split_args). */
static int split_words(const char *s, Words *ret) {
        _cleanup_(words_done) Words w = {};

        for (const char *p = s;;) {
                _cleanup_free_ char *word = NULL;
                size_t len = 0;
                char **nw;

                while (is_blank(*p))
                        p++;
                if (!*p)
                        break;
                word = malloc(strlen(p) + 1);
                if (!word)
                        return -ENOMEM;
                while (*p && !is_blank(*p)) {
                        if (*p == '\'' || *p == '"') {
                                char q = *p++;
                                while (*p && *p != q)
                                        word[len++] = *p++;
                                if (*p == q)
                                        p++;
                        } else
                                word[len++] = *p++;
                }
                word[len] = '\0';
                nw = reallocarray(w.w, w.n + 1, sizeof(char *));
                if (!nw)
                        return -ENOMEM;
                w.w = nw;
                w.w[w.n++] = TAKE_PTR(word);
        }
        *ret = w;
        w = (Words){};
        return 0;
}

/*
 * The value of key in a QEMU option string ("driver,key=value,flag"; ",," is a literal comma),
 * or for key NULL the leading bare item. Returns 1 and a new string in *ret (a bare "key" gives
 * "on"), 0 when absent, -ENOMEM.
 */
static int qemu_opt(const char *opts, const char *key, char **ret) {
        size_t klen = key ? strlen(key) : 0;
        bool first = true;

        for (const char *p = opts; *p || first;) {
                _cleanup_free_ char *item = malloc(strlen(p) + 1);
                size_t n = 0;

                if (!item)
                        return -ENOMEM;
                while (*p) {
                        if (*p == ',') {
                                if (p[1] == ',') {
                                        item[n++] = ',';
                                        p += 2;
                                        continue;
                                }
                                break;
                        }
                        item[n++] = *p++;
                }
                item[n] = '\0';
                if (*p == ',')
                        p++;
                char *eq = strchr(item, '=');
                if (!key) {
                        if (first && !eq) {
                                *ret = TAKE_PTR(item);
                                return 1;
                        }
                        return 0;
                }
                if (eq && (size_t) (eq - item) == klen && strncmp(item, key, klen) == 0) {
                        *ret = strdup(eq + 1);
                        return *ret ? 1 : -ENOMEM;
                }
                if (!eq && strcmp(item, key) == 0 && !first) {
                        *ret = strdup("on");
                        return *ret ? 1 : -ENOMEM;
                }
                first = false;
                if (!*p)
                        break;
        }
        return 0;
}

static bool is_true(const char *v) {
        return v &&
                (strcmp(v, "on") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 ||
                 strcmp(v, "y") == 0);
}

static bool is_option(const char *word, const char *name) {
        /* QEMU takes "-device" and "--device" alike */
        if (word[0] != '-')
                return false;
        word += word[1] == '-' ? 2 : 1;
        return strcmp(word, name) == 0;
}

/* The chardev id of our virtserialport in w, or NULL (*ret) when there is none. */
static int find_channel_device(Notes *notes, const Words *w, unsigned line, char **ret) {
        for (size_t i = 0; i + 1 < w->n; i++) {
                _cleanup_free_ char *driver = NULL, *name = NULL, *cd = NULL;
                int r;

                if (!is_option(w->w[i], "device"))
                        continue;
                if ((r = qemu_opt(w->w[i + 1], NULL, &driver)) < 0 ||
                    (r = qemu_opt(w->w[i + 1], "name", &name)) < 0 ||
                    (r = qemu_opt(w->w[i + 1], "chardev", &cd)) < 0)
                        return r;
                if (!name || strcmp(name, CHANNEL_NAME) != 0)
                        continue;
                if (!driver ||
                    (strcmp(driver, "virtserialport") != 0 && strcmp(driver, "virtconsole") != 0)) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "args: " CHANNEL_NAME " is not a virtserialport; ignored");
                        continue;
                }
                if (!cd) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "args: " CHANNEL_NAME " has no chardev=; ignored");
                        continue;
                }
                *ret = TAKE_PTR(cd);
                return 0;
        }
        *ret = NULL;
        return 0;
}

/* Finds our virtserialport in args and the listening socket behind it. */
static int parse_args_channel(Notes *notes, RegistryVm *vm, const char *args, unsigned line) {
        _cleanup_(words_done) Words w = {};
        _cleanup_free_ char *chardev_id = NULL;
        int r;

        r = split_words(args, &w);
        if (r < 0)
                return r;
        r = find_channel_device(notes, &w, line, &chardev_id);
        if (r < 0 || !chardev_id)
                return r;
        for (size_t i = 0; i + 1 < w.n; i++) {
                _cleanup_free_ char *backend = NULL, *id = NULL, *path = NULL, *server = NULL;

                if (!is_option(w.w[i], "chardev"))
                        continue;
                r = qemu_opt(w.w[i + 1], "id", &id);
                if (r < 0)
                        return r;
                if (!id || strcmp(id, chardev_id) != 0)
                        continue;
                if ((r = qemu_opt(w.w[i + 1], NULL, &backend)) < 0 ||
                    (r = qemu_opt(w.w[i + 1], "path", &path)) < 0 ||
                    (r = qemu_opt(w.w[i + 1], "server", &server)) < 0)
                        return r;
                if (!backend || strcmp(backend, "socket") != 0 || !path) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "args: chardev '%s' of " CHANNEL_NAME
                              " is not a UNIX socket; ignored",
                              chardev_id);
                        return 0;
                }
                if (!is_true(server)) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "args: chardev '%s' of " CHANNEL_NAME
                              " does not listen (add server=on); ignored",
                              chardev_id);
                        return 0;
                }
                if (!registry_path_is_absolute(path) || strlen(path) > REGISTRY_MAX_SOCKET_PATH) {
                        notef(notes,
                              LOG_WARNING,
                              line,
                              "args: '%s' is not an absolute socket path of at most %d bytes; "
                              "ignored",
                              path,
                              REGISTRY_MAX_SOCKET_PATH);
                        return 0;
                }
                return registry_strdup_replace(&vm->channel, path);
        }
        notef(notes,
              LOG_WARNING,
              line,
              "args: " CHANNEL_NAME " uses chardev '%s', which is not defined; ignored",
              chardev_id);
        return 0;
}

int registry_parse_pve(
        const RegistryReporter *rep,
        const char *path,
        const char *vmid,
        const char *data,
        size_t size,
        const RegistryPveStorages *storages,
        RegistryVm **ret_vm) {
        _cleanup_(registry_vm_freep) RegistryVm *vm = NULL;
        _cleanup_(pve_conf_done) PveConf conf = {};
        _cleanup_free_ char *name = NULL;
        Notes notes = { .rep = rep, .path = path };
        LineReader lr = { .data = data ?: "", .size = size };
        const char *l;
        size_t n;
        int r;

        if (!path || !vmid || (!data && size > 0) || !ret_vm)
                return -EINVAL;
        if (!all_digits(vmid, strlen(vmid))) {
                registry_report(
                        rep, LOG_ERR, -EINVAL, path, 0, "'%s' is not a VMID; skipped", vmid);
                return -EINVAL;
        }
        if (asprintf(&name, "vm-%s", vmid) < 0)
                return -ENOMEM;

        while (next_line(&lr, &l, &n)) {
                const char *k = l, *v;
                size_t kn = 0, vn;
                int rank;

                if (n == 0 || l[0] == '#')
                        continue;
                if (l[0] == '[')
                        break; /* snapshots, [PENDING], [special:...]: not the current config */
                if (memchr(l, '\0', n)) {
                        notef(&notes, LOG_WARNING, lr.line, "NUL byte in line; ignored");
                        continue;
                }
                while (kn < n &&
                       ((l[kn] >= 'a' && l[kn] <= 'z') ||
                        (kn > 0 &&
                         ((l[kn] >= '0' && l[kn] <= '9') || l[kn] == '_' || l[kn] == '-'))))
                        kn++;
                if (kn == 0 || kn >= n || l[kn] != ':') {
                        v = l;
                        vn = n;
                        trim(&v, &vn);
                        if (vn > 0)
                                notef(&notes, LOG_WARNING, lr.line, "cannot parse line; ignored");
                        continue;
                }
                v = l + kn + 1;
                vn = n - kn - 1;
                trim(&v, &vn);

                rank = drive_rank(k, kn);
                if (rank >= 0) {
                        Drive *d = NULL;
                        for (size_t i = 0; i < conf.n_drives; i++)
                                if (conf.drives[i].rank == rank)
                                        d = &conf.drives[i];
                        if (d) {
                                notef(&notes,
                                      LOG_WARNING,
                                      lr.line,
                                      "duplicate key '%s'; the last one counts",
                                      d->key);
                                free(d->value);
                        } else {
                                d = &conf.drives[conf.n_drives++];
                                memcpy(d->key, k, kn);
                                d->key[kn] = '\0';
                                d->rank = rank;
                        }
                        d->line = lr.line;
                        d->value = registry_memdup_str(v, vn);
                        if (!d->value)
                                return -ENOMEM;
                } else if (kn == 4 && strncmp(k, "args", 4) == 0) {
                        free(conf.args);
                        conf.args = registry_memdup_str(v, vn);
                        if (!conf.args)
                                return -ENOMEM;
                        conf.args_line = lr.line;
                } else if (kn > 6 && strncmp(k, "unused", 6) == 0)
                        notef(&notes,
                              LOG_DEBUG,
                              lr.line,
                              "%.*s: a detached volume; skipped",
                              (int) kn,
                              k);
        }

        vm = registry_vm_new(name, REGISTRY_SOURCE_PROXMOX, path);
        if (!vm)
                return -ENOMEM;
        if (conf.n_drives > 0)
                qsort(conf.drives, conf.n_drives, sizeof(Drive), cmp_drives);
        for (size_t i = 0; i < conf.n_drives; i++) {
                r = add_drive(&notes, vm, storages, &conf.drives[i]);
                if (r < 0)
                        return r;
        }
        if (conf.args) {
                r = parse_args_channel(&notes, vm, conf.args, conf.args_line);
                if (r < 0)
                        return r;
        }
        notes_finish(&notes);
        *ret_vm = TAKE_PTR(vm);
        return 0;
}
