/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Opening an image: header, header extensions, snapshot table and bitmap directory, each
 * bounded and validated before anything is allocated from its sizes.
 */

#include <stdarg.h>

#include "qcow2-internal.h"

int qcow2_diag(Qcow2Diag *diag, int r, const char *fmt, ...) {
        if (diag) {
                va_list ap;
                va_start(ap, fmt);
                (void) vsnprintf(diag->message, sizeof(diag->message), fmt, ap);
                va_end(ap);
        }
        return r;
}

bool qcow2_error_is_refusal(int r) {
        return r == -EMEDIUMTYPE || r == -EOPNOTSUPP || r == -EUCLEAN;
}

const char *cluster_kind_to_string(ClusterKind k) {
        static const char *const names[_CK_MAX] = {
                [CK_FREE] = "free",
                [CK_HEADER] = "header",
                [CK_L1] = "L1 table",
                [CK_L2] = "L2 table",
                [CK_DATA] = "data",
                [CK_COMPRESSED] = "compressed data",
                [CK_REFTABLE] = "refcount table",
                [CK_REFBLOCK] = "refcount block",
                [CK_SNAPSHOT_TABLE] = "snapshot table",
                [CK_SNAPSHOT_L1] = "snapshot L1 table",
                [CK_BITMAP_DIR] = "bitmap directory",
                [CK_BITMAP_TABLE] = "bitmap table",
                [CK_BITMAP_DATA] = "bitmap data",
                [CK_CRYPTO] = "encryption header",
        };
        return (unsigned) k < _CK_MAX ? names[k] : "?";
}

int qcow2_write(Qcow2Image *img, IoEvent ev, const void *buf, size_t len, uint64_t off) {
        int r;

        if (!(img->flags & QCOW2_OPEN_WRITE))
                return -EROFS;
        /* We never grow the file: everything we write lands inside it. */
        if (off + len > img->file_size || off + len < off)
                return -EUCLEAN;
        r = io_event(img->io, ev);
        if (r < 0)
                return r;
        r = io_pwrite(img->io, buf, len, off);
        if (r < 0)
                return r;
        img->bytes_written += len;
        return 0;
}

int qcow2_flush(Qcow2Image *img) {
        int r = io_event(img->io, IO_EV_FLUSH);
        if (r < 0)
                return r;
        r = io_flush(img->io);
        if (r < 0)
                return r;
        img->flushes++;
        return 0;
}

void qcow2_progress(Qcow2Image *img, const char *phase, uint64_t done, uint64_t total) {
        if (img->progress)
                img->progress(phase, done, total, img->progress_userdata);
}

L2Type qcow2_l2_type(const Qcow2Image *img, uint64_t entry) {
        if (entry & QCOW_OFLAG_COMPRESSED)
                return L2_COMPRESSED;
        uint64_t off = entry & L2E_OFFSET_MASK;
        /* spec: bit 0 is the zero flag for standard entries only (v3, no extended L2) */
        bool zero = img->version >= 3 && img->l2_entry_size == 8 && (entry & QCOW_OFLAG_ZERO);
        if (zero)
                return off ? L2_ZERO_ALLOC : L2_ZERO_PLAIN;
        if (off)
                return L2_NORMAL;
        return L2_UNALLOCATED;
}

void qcow2_compressed_range(
        const Qcow2Image *img, uint64_t entry, uint64_t *ret_off, uint64_t *ret_len) {
        /* spec: "Compressed Clusters Descriptor": offset in bits 0..x-1, extra sectors above */
        uint64_t coff = entry & img->coffset_mask;
        uint64_t nb_sectors = ((entry >> img->csize_shift) & img->csize_mask) + 1;
        *ret_off = coff;
        *ret_len = nb_sectors * 512 - (coff & 511);
}

int qcow2_update_header_l1(Qcow2Image *img, uint64_t l1_offset) {
        uint8_t buf[12];
        /* l1_size and l1_table_offset are written together, as QEMU does when it grows L1 */
        wr32(buf, img->l1_size);
        wr64(buf + 4, l1_offset);
        int r = qcow2_write(img, IO_EV_HEADER_UPDATE, buf, sizeof(buf), QCOW2_HDR_L1);
        if (r < 0)
                return r;
        img->l1_offset = l1_offset;
        return 0;
}

int qcow2_update_header_reftable(Qcow2Image *img, uint64_t reftable_offset, uint32_t clusters) {
        uint8_t buf[12];
        wr64(buf, reftable_offset);
        wr32(buf + 8, clusters);
        int r = qcow2_write(img, IO_EV_HEADER_UPDATE, buf, sizeof(buf), QCOW2_HDR_REFTABLE);
        if (r < 0)
                return r;
        img->reftable_offset = reftable_offset;
        img->reftable_clusters = clusters;
        return 0;
}

static void set_refusal(Qcow2Image *img, int code, const char *fmt, ...) _printf_(3, 4);
static void set_refusal(Qcow2Image *img, int code, const char *fmt, ...) {
        va_list ap;

        if (img->refusal_code)
                return; /* keep the first (most fundamental) reason */
        img->refusal_code = code;
        va_start(ap, fmt);
        (void) vsnprintf(img->refusal, sizeof(img->refusal), fmt, ap);
        va_end(ap);
}

/* A NUL-terminated copy of len bytes that are not NUL-terminated on disk (never reads past). */
static char *memdup_str(const uint8_t *src, size_t len) {
        char *s = malloc(len + 1);
        if (!s)
                return NULL;
        memcpy(s, src, len);
        s[len] = 0;
        return s;
}

static void copy_string(char *dst, size_t dstsz, const uint8_t *src, size_t len) {
        size_t n = MIN(len, dstsz - 1);
        memcpy(dst, src, n);
        dst[n] = 0;
}

static int parse_extensions(Qcow2Image *img, const uint8_t *hdr, Qcow2Diag *diag) {
        uint64_t pos = img->version >= 3 ? img->header_length : QCOW2_V2_HEADER_SIZE;
        uint64_t end = img->cluster_size;
        bool seen_bitmaps = false, seen_crypto = false, seen_backing_fmt = false;

        /* The backing file name, if any, lies after the extensions: they end before it. */
        if (img->backing_offset > 0)
                end = MIN(end, img->backing_offset);

        while (pos + 8 <= end) {
                uint32_t type = rd32(hdr + pos);
                uint32_t len = rd32(hdr + pos + 4);

                if (type == QCOW2_EXT_END)
                        return 0;
                pos += 8;
                if (len > end - pos)
                        return qcow2_diag(
                                diag,
                                -EMEDIUMTYPE,
                                "header extension 0x%08x is longer than the header cluster",
                                type);
                const uint8_t *d = hdr + pos;
                switch (type) {
                case QCOW2_EXT_BACKING_FORMAT:
                        if (seen_backing_fmt)
                                return qcow2_diag(
                                        diag, -EMEDIUMTYPE, "duplicate backing format extension");
                        seen_backing_fmt = true;
                        copy_string(img->backing_format, sizeof(img->backing_format), d, len);
                        break;
                case QCOW2_EXT_FEATURE_TABLE:
                        break; /* names only */
                case QCOW2_EXT_BITMAPS:
                        if (seen_bitmaps)
                                return qcow2_diag(
                                        diag, -EMEDIUMTYPE, "duplicate bitmaps extension");
                        seen_bitmaps = true;
                        if (len < 24)
                                return qcow2_diag(
                                        diag,
                                        -EMEDIUMTYPE,
                                        "bitmaps extension too short (%u bytes)",
                                        len);
                        img->has_bitmaps_ext = true;
                        img->bitmaps_ext_pos = pos;
                        img->nb_bitmaps = rd32(d);
                        img->bitmap_dir_size = rd64(d + 8);
                        img->bitmap_dir_offset = rd64(d + 16);
                        break;
                case QCOW2_EXT_CRYPTO:
                        if (seen_crypto)
                                return qcow2_diag(
                                        diag, -EMEDIUMTYPE, "duplicate encryption extension");
                        seen_crypto = true;
                        if (len < 16)
                                return qcow2_diag(
                                        diag, -EMEDIUMTYPE, "encryption extension too short");
                        img->has_crypto_ext = true;
                        img->crypto_offset = rd64(d);
                        img->crypto_length = rd64(d + 8);
                        break;
                case QCOW2_EXT_DATA_FILE:
                        img->has_data_file_ext = true;
                        break;
                default:
                        if (!img->unknown_ext_type)
                                img->unknown_ext_type = type;
                        break;
                }
                pos += ALIGN_UP((uint64_t) len, 8);
        }
        return 0;
}

static int parse_header(Qcow2Image *img, const uint8_t *hdr, size_t hdr_len, Qcow2Diag *diag) {
        if (hdr_len < QCOW2_V2_HEADER_SIZE || rd32(hdr) != QCOW2_MAGIC)
                return qcow2_diag(diag, -EMEDIUMTYPE, "not a qcow2 image (bad magic)");

        img->version = rd32(hdr + 4);
        if (img->version != 2 && img->version != 3)
                return qcow2_diag(diag, -EMEDIUMTYPE, "unsupported qcow2 version %u", img->version);
        if (img->version >= 3 && hdr_len < QCOW2_V3_HEADER_MIN)
                return qcow2_diag(
                        diag, -EMEDIUMTYPE, "truncated image: the file ends inside the header");

        img->backing_offset = rd64(hdr + 8);
        img->backing_size = rd32(hdr + 16);
        img->cluster_bits = rd32(hdr + 20);
        img->virtual_size = rd64(hdr + 24);
        img->crypt_method = rd32(hdr + 32);
        img->l1_size = rd32(hdr + 36);
        img->l1_offset = rd64(hdr + 40);
        img->reftable_offset = rd64(hdr + 48);
        img->reftable_clusters = rd32(hdr + 56);
        img->nb_snapshots = rd32(hdr + 60);
        img->snapshots_offset = rd64(hdr + 64);

        if (img->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
            img->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return qcow2_diag(
                        diag,
                        -EMEDIUMTYPE,
                        "invalid cluster_bits %u (must be 9..21)",
                        img->cluster_bits);
        img->cluster_size = 1ULL << img->cluster_bits;
        if (hdr_len < img->cluster_size)
                return qcow2_diag(
                        diag,
                        -EMEDIUMTYPE,
                        "truncated image: the file is smaller than its header cluster");

        if (img->version >= 3) {
                img->incompat = rd64(hdr + 72);
                img->compat = rd64(hdr + 80);
                img->autoclear = rd64(hdr + 88);
                img->refcount_order = rd32(hdr + 96);
                img->header_length = rd32(hdr + 100);
                if (img->header_length < QCOW2_V3_HEADER_MIN || img->header_length % 8 != 0 ||
                    img->header_length > img->cluster_size)
                        return qcow2_diag(
                                diag, -EMEDIUMTYPE, "invalid header_length %u", img->header_length);
                if (img->header_length > 104)
                        img->compression_type = hdr[104];
        } else {
                img->refcount_order = 4;
                img->header_length = QCOW2_V2_HEADER_SIZE;
        }

        if (img->refcount_order > 6)
                return qcow2_diag(
                        diag,
                        -EMEDIUMTYPE,
                        "invalid refcount_order %u (must be 0..6)",
                        img->refcount_order);
        img->refcount_bits = 1U << img->refcount_order;
        img->refcount_max =
                img->refcount_bits == 64 ? UINT64_MAX : (1ULL << img->refcount_bits) - 1;

        uint64_t unknown = img->incompat & ~QCOW2_INCOMPAT_KNOWN;
        if (unknown)
                return qcow2_diag(
                        diag,
                        -EOPNOTSUPP,
                        "unknown incompatible feature bits 0x%" PRIx64 " (made by a newer QEMU?)",
                        unknown);

        img->l2_entry_size = (img->incompat & QCOW2_INCOMPAT_EXTL2) ? 16 : 8;
        if (img->l2_entry_size == 16 && img->cluster_bits < 14)
                return qcow2_diag(
                        diag, -EMEDIUMTYPE, "extended L2 entries need clusters of 16 KiB or more");
        img->l2_bits = img->cluster_bits - (img->l2_entry_size == 16 ? 4 : 3);
        img->l2_entries = 1ULL << img->l2_bits;
        img->rb_bits = img->cluster_bits + 3 - img->refcount_order;
        img->rb_entries = 1ULL << img->rb_bits;
        img->csize_shift = 62 - (img->cluster_bits - 8);
        img->csize_mask = (1ULL << (img->cluster_bits - 8)) - 1;
        img->coffset_mask = (1ULL << img->csize_shift) - 1;

        if (img->compression_type > 1)
                return qcow2_diag(
                        diag, -EOPNOTSUPP, "unknown compression type %u", img->compression_type);

        /* Backing file name: inside cluster 0, at most 1023 bytes (spec and QEMU's limit). */
        if (img->backing_offset) {
                if (img->backing_size == 0 || img->backing_size > QCOW2_MAX_BACKING_NAME ||
                    img->backing_offset >= img->cluster_size ||
                    img->backing_size > img->cluster_size - img->backing_offset)
                        return qcow2_diag(diag, -EMEDIUMTYPE, "invalid backing file name location");
                if (img->backing_offset < img->header_length)
                        return qcow2_diag(
                                diag, -EMEDIUMTYPE, "backing file name overlaps the header");
                copy_string(
                        img->backing_file,
                        sizeof(img->backing_file),
                        hdr + img->backing_offset,
                        img->backing_size);
        }

        /* L1: bounded, aligned, and large enough for the virtual size. */
        if ((uint64_t) img->l1_size * 8 > QCOW2_MAX_L1_BYTES)
                return qcow2_diag(
                        diag, -EMEDIUMTYPE, "L1 table too large (%u entries)", img->l1_size);
        uint64_t guest_clusters = DIV_ROUND_UP(img->virtual_size, img->cluster_size);
        uint64_t l1_needed = DIV_ROUND_UP(guest_clusters, img->l2_entries);
        if (img->virtual_size > 0 && img->l1_size < l1_needed)
                return qcow2_diag(
                        diag,
                        -EUCLEAN,
                        "L1 table too small for the virtual size (%u < %" PRIu64 ")",
                        img->l1_size,
                        l1_needed);
        if (img->l1_size > 0 &&
            (!IS_ALIGNED(img->l1_offset, img->cluster_size) || img->l1_offset == 0 ||
             img->l1_offset >= QCOW2_MAX_HOST_OFFSET))
                return qcow2_diag(
                        diag, -EUCLEAN, "L1 table offset 0x%" PRIx64 " is invalid", img->l1_offset);

        if (img->reftable_clusters == 0 ||
            (uint64_t) img->reftable_clusters * img->cluster_size > QCOW2_MAX_REFTABLE_BYTES ||
            !IS_ALIGNED(img->reftable_offset, img->cluster_size) || img->reftable_offset == 0 ||
            img->reftable_offset >= QCOW2_MAX_HOST_OFFSET)
                return qcow2_diag(
                        diag,
                        -EUCLEAN,
                        "refcount table location is invalid (offset 0x%" PRIx64 ", %u clusters)",
                        img->reftable_offset,
                        img->reftable_clusters);
        img->reftable_entries = (uint64_t) img->reftable_clusters * img->cluster_size / 8;

        if (img->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
                return qcow2_diag(diag, -EMEDIUMTYPE, "too many snapshots (%u)", img->nb_snapshots);
        if (img->nb_snapshots > 0 &&
            (!IS_ALIGNED(img->snapshots_offset, img->cluster_size) || img->snapshots_offset == 0))
                return qcow2_diag(diag, -EUCLEAN, "snapshot table offset is invalid");

        return parse_extensions(img, hdr, diag);
}

static int read_table(
        Qcow2Image *img,
        uint64_t off,
        uint64_t nb_entries,
        uint64_t **ret,
        const char *what,
        Qcow2Diag *diag) {
        _cleanup_free_ uint64_t *t = NULL;
        uint64_t bytes;
        int r;

        if (MUL_OVERFLOW(nb_entries, 8, &bytes) || off + bytes < off ||
            off + bytes > img->file_size)
                return qcow2_diag(
                        diag,
                        -EUCLEAN,
                        "%s at 0x%" PRIx64 " extends past the end of the file",
                        what,
                        off);
        t = malloc(MAX(bytes, (uint64_t) 8));
        if (!t)
                return -ENOMEM;
        if (bytes > 0) {
                r = io_pread(img->io, t, bytes, off);
                if (r < 0)
                        return qcow2_diag(diag, r, "cannot read the %s: %s", what, strerror(-r));
        }
        for (uint64_t i = 0; i < nb_entries; i++)
                t[i] = be64toh(t[i]);
        *ret = TAKE_PTR(t);
        return 0;
}

static int read_snapshots(Qcow2Image *img, Qcow2Diag *diag) {
        _cleanup_free_ uint8_t *buf = NULL;
        uint64_t pos = 0, avail;
        int r;

        if (img->nb_snapshots == 0)
                return 0;
        if (img->snapshots_offset >= img->file_size)
                return qcow2_diag(diag, -EUCLEAN, "snapshot table lies past the end of the file");
        /* The table's byte size is not stored: read what can be there, bounded by QEMU's limit. */
        avail = MIN(img->file_size - img->snapshots_offset, (uint64_t) 64 << 20);
        buf = malloc(avail);
        img->snapshots = calloc(img->nb_snapshots, sizeof(Snapshot));
        if (!buf || !img->snapshots)
                return -ENOMEM;
        r = io_pread(img->io, buf, avail, img->snapshots_offset);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot read the snapshot table: %s", strerror(-r));

        for (uint32_t i = 0; i < img->nb_snapshots; i++) {
                Snapshot *s = &img->snapshots[i];
                /* Entries are padded to 8 bytes, but the file may end before the last padding. */
                if (pos > avail || avail - pos < 40)
                        return qcow2_diag(diag, -EUCLEAN, "snapshot table is truncated");
                const uint8_t *e = buf + pos;
                s->l1_offset = rd64(e);
                s->l1_size = rd32(e + 8);
                uint16_t id_len = rd16(e + 12), name_len = rd16(e + 14);
                uint32_t extra = rd32(e + 36);
                uint64_t len = 40ULL + extra + id_len + name_len;
                if (len > avail - pos || extra > (1u << 20))
                        return qcow2_diag(diag, -EUCLEAN, "snapshot table is truncated");
                if ((uint64_t) s->l1_size * 8 > QCOW2_MAX_L1_BYTES ||
                    (s->l1_size && (!IS_ALIGNED(s->l1_offset, img->cluster_size) || !s->l1_offset)))
                        return qcow2_diag(diag, -EUCLEAN, "snapshot %u has an invalid L1 table", i);
                s->entry_off = pos;
                s->id = memdup_str(e + 40 + extra, id_len);
                s->name = memdup_str(e + 40 + extra + id_len, name_len);
                if (!s->id || !s->name)
                        return -ENOMEM;
                pos += ALIGN_UP(len, 8);
        }
        img->snapshots_size = pos;
        img->snap_raw = calloc(1, pos + 1);
        if (!img->snap_raw)
                return -ENOMEM;
        memcpy(img->snap_raw, buf, MIN(pos, avail));
        return 0;
}

static int read_bitmaps(Qcow2Image *img, Qcow2Diag *diag) {
        _cleanup_free_ uint8_t *buf = NULL;
        uint64_t pos = 0;
        int r;

        if (!img->has_bitmaps_ext || !(img->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
                return 0; /* without the autoclear bit, QEMU ignores (and drops) the bitmaps */
        if (img->nb_bitmaps == 0 || img->nb_bitmaps > QCOW2_MAX_BITMAPS ||
            img->bitmap_dir_size > (64u << 20) || img->bitmap_dir_size < 24ULL * img->nb_bitmaps ||
            !IS_ALIGNED(img->bitmap_dir_offset, img->cluster_size) || img->bitmap_dir_offset == 0 ||
            img->bitmap_dir_offset + img->bitmap_dir_size > img->file_size)
                return qcow2_diag(diag, -EUCLEAN, "bitmaps extension is invalid");
        buf = malloc(img->bitmap_dir_size);
        img->bitmaps = calloc(img->nb_bitmaps, sizeof(Bitmap));
        if (!buf || !img->bitmaps)
                return -ENOMEM;
        r = io_pread(img->io, buf, img->bitmap_dir_size, img->bitmap_dir_offset);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot read the bitmap directory: %s", strerror(-r));
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
                Bitmap *b = &img->bitmaps[i];
                if (pos > img->bitmap_dir_size || img->bitmap_dir_size - pos < 24)
                        return qcow2_diag(diag, -EUCLEAN, "bitmap directory is truncated");
                const uint8_t *e = buf + pos;
                b->table_offset = rd64(e);
                b->table_size = rd32(e + 8);
                b->flags = rd32(e + 12);
                b->granularity_bits = e[17];
                uint16_t name_len = rd16(e + 18);
                uint32_t extra = rd32(e + 20);
                uint64_t len = 24ULL + extra + name_len;
                if (len > img->bitmap_dir_size - pos)
                        return qcow2_diag(diag, -EUCLEAN, "bitmap directory is truncated");
                if (!IS_ALIGNED(b->table_offset, img->cluster_size) || !b->table_offset ||
                    (uint64_t) b->table_size * 8 > QCOW2_MAX_L1_BYTES)
                        return qcow2_diag(diag, -EUCLEAN, "bitmap %u has an invalid table", i);
                b->entry_off = pos;
                b->name = memdup_str(e + 24 + extra, name_len);
                if (!b->name)
                        return -ENOMEM;
                pos += ALIGN_UP(len, 8);
        }
        img->bitmap_dir_raw = TAKE_PTR(buf);
        return 0;
}

/* Decides, once, whether compaction may touch this image (DESIGN.md "Refuse what it cannot move").
 */
static void classify(Qcow2Image *img) {
        if (img->incompat & QCOW2_INCOMPAT_CORRUPT)
                set_refusal(
                        img,
                        -EUCLEAN,
                        "the image is marked corrupt (QEMU found an inconsistency); "
                        "repair it with 'qemu-img check -r all' first");
        if (img->incompat & QCOW2_INCOMPAT_DIRTY)
                set_refusal(
                        img,
                        -EUCLEAN,
                        "the image is dirty (not closed cleanly, refcounts may be "
                        "stale); open it once with QEMU or run 'qemu-img check -r all'");
        if (img->crypt_method != 0 || img->has_crypto_ext)
                set_refusal(
                        img,
                        -EOPNOTSUPP,
                        "the image is encrypted (the host offset is part of the "
                        "cipher, so clusters cannot be moved)");
        if ((img->incompat & QCOW2_INCOMPAT_DATA_FILE) || img->has_data_file_ext)
                set_refusal(
                        img,
                        -EOPNOTSUPP,
                        "the image uses an external data file (guest data is not "
                        "in this file)");
        if (img->unknown_ext_type)
                set_refusal(
                        img,
                        -EOPNOTSUPP,
                        "unknown header extension 0x%08x (it might own clusters)",
                        img->unknown_ext_type);
        for (uint32_t i = 0; img->bitmaps && i < img->nb_bitmaps; i++)
                if (img->bitmaps[i].flags & BME_FLAG_IN_USE)
                        set_refusal(
                                img,
                                -EUCLEAN,
                                "persistent bitmap '%s' is marked in use (QEMU did not "
                                "close it cleanly, its contents are not trustworthy)",
                                img->bitmaps[i].name);
}

int qcow2_open(IoBackend *io, unsigned flags, Qcow2Image **ret, Qcow2Diag *diag) {
        _cleanup_(qcow2_closep) Qcow2Image *img = NULL;
        _cleanup_free_ uint8_t *hdr = NULL;
        size_t hdr_len;
        int r;

        if (!io || !ret)
                return -EINVAL;
        img = calloc(1, sizeof(*img));
        if (!img)
                return -ENOMEM;
        img->io = io;
        img->flags = flags;

        r = io_size(io, &img->file_size);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot get the file size: %s", strerror(-r));
        if (img->file_size < QCOW2_V2_HEADER_SIZE) {
                uint8_t magic[4] = { 0 };
                if (img->file_size >= 4 && io_pread(io, magic, 4, 0) >= 0 &&
                    rd32(magic) == QCOW2_MAGIC)
                        return qcow2_diag(
                                diag,
                                -EMEDIUMTYPE,
                                "truncated image: the file ends inside the header");
                return qcow2_diag(diag, -EMEDIUMTYPE, "not a qcow2 image (file too small)");
        }

        /*
         * Read the header cluster and no more: a first small read tells the cluster size, then
         * the rest of cluster 0. Reading a fixed 2 MiB would read guest data clusters of
         * images with small clusters (status walks hundreds of images: metadata only).
         */
        hdr_len = MIN(img->file_size, (uint64_t) QCOW2_HEADER_PROBE);
        hdr = calloc(1, hdr_len);
        if (!hdr)
                return -ENOMEM;
        r = io_pread(io, hdr, hdr_len, 0);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot read the header: %s", strerror(-r));
        if (rd32(hdr) == QCOW2_MAGIC && rd32(hdr + 20) >= QCOW2_MIN_CLUSTER_BITS &&
            rd32(hdr + 20) <= QCOW2_MAX_CLUSTER_BITS) {
                size_t want = MIN(img->file_size, (uint64_t) 1 << rd32(hdr + 20));

                if (want > hdr_len) {
                        uint8_t *q = realloc(hdr, want);

                        if (!q)
                                return -ENOMEM;
                        hdr = q;
                        r = io_pread(io, hdr + hdr_len, want - hdr_len, hdr_len);
                        if (r < 0)
                                return qcow2_diag(
                                        diag, r, "cannot read the header: %s", strerror(-r));
                        hdr_len = want;
                }
        }

        r = parse_header(img, hdr, hdr_len, diag);
        if (r < 0)
                return r;

        r = read_table(img, img->l1_offset, img->l1_size, &img->l1, "L1 table", diag);
        if (r < 0)
                return r;
        r = read_table(
                img,
                img->reftable_offset,
                img->reftable_entries,
                &img->reftable,
                "refcount table",
                diag);
        if (r < 0)
                return r;
        r = read_snapshots(img, diag);
        if (r < 0)
                return r;
        r = read_bitmaps(img, diag);
        if (r < 0)
                return r;

        classify(img);
        if ((flags & QCOW2_OPEN_WRITE) && img->refusal_code)
                return qcow2_diag(diag, img->refusal_code, "%s", img->refusal);

        *ret = TAKE_PTR(img);
        return 0;
}

Qcow2Image *qcow2_close(Qcow2Image *img) {
        if (!img)
                return NULL;
        qcow2_walk_reset(img);
        free(img->slen_cache);
        free(img->l1);
        free(img->reftable);
        for (uint32_t i = 0; img->snapshots && i < img->nb_snapshots; i++) {
                free(img->snapshots[i].id);
                free(img->snapshots[i].name);
        }
        for (uint32_t i = 0; img->snapshots && i < img->nb_snapshots; i++)
                free(img->snapshots[i].l1);
        free(img->snapshots);
        free(img->snap_raw);
        free(img->bitmap_dir_raw);
        for (uint32_t i = 0; img->bitmaps && i < img->nb_bitmaps; i++)
                free(img->bitmaps[i].name), free(img->bitmaps[i].table);
        free(img->bitmaps);
        free(img);
        return NULL;
}
