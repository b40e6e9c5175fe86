/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The reference map: every owner of every host cluster (QCOW2-NOTES §1.10), counted the way
 * `qemu-img check` counts them (QEMU's calculate_refcounts), then compared with the on-disk
 * refcounts. Corruption (refcount below references, overlaps, misaligned or out-of-file
 * references, reserved bits, COPIED mismatches) is refused with -EUCLEAN and a message naming
 * the first problem; leaks are counted and repaired later by qcow2_repair_leaks().
 */

#include "qcow2-internal.h"

typedef struct WalkCtx {
        Qcow2Image *img;
        Qcow2Diag *diag;
        uint8_t *copied_set;   /* bitmap: referenced from the active tree with COPIED */
        uint8_t *copied_clear; /* bitmap: referenced from the active tree without COPIED */
        uint8_t *l2buf;
        uint64_t last_host; /* for the preallocation heuristic */
        L1Ref *refs;        /* every L1 entry seen, grown as needed */
        size_t nb_refs, max_refs;
        Stream *streams; /* every compressed entry path seen, grown as needed */
        size_t nb_streams, max_streams;
} WalkCtx;

static inline void bit_set(uint8_t *bm, uint64_t i) {
        bm[i / 8] |= (uint8_t) (1U << (i % 8));
}
static inline bool bit_get(const uint8_t *bm, uint64_t i) {
        return bm[i / 8] & (1U << (i % 8));
}

void qcow2_walk_reset(Qcow2Image *img) {
        img->refcount = mfree(img->refcount);
        img->kind = mfree(img->kind);
        img->rb_dirty_lo = mfree(img->rb_dirty_lo);
        img->rb_dirty_hi = mfree(img->rb_dirty_hi);
        img->rb_dirty_list = mfree(img->rb_dirty_list);
        img->l1refs = mfree(img->l1refs);
        img->nb_l1refs = 0;
        img->cjoin = mfree(img->cjoin);
        img->streams = mfree(img->streams);
        img->nb_streams = 0;
        img->overcounted = mfree(img->overcounted);
        img->oc = mfree(img->oc);
        img->nb_oc = 0;
        img->pending = mfree(img->pending);
        img->rb_dirty_n = 0;
        img->walked = false;
        img->leaked_clusters = img->leaks_past_eof = img->partial_leaks = 0;
        img->stale_refcounts = 0;
        img->data_clusters = img->zero_alloc_clusters = img->zero_plain_clusters = 0;
        img->compressed_clusters = img->l2_tables = img->guest_allocated = 0;
}

static int add_ref(WalkCtx *ctx, uint64_t off, uint64_t len, ClusterKind kind) {
        Qcow2Image *img = ctx->img;
        uint64_t first, last;

        if (len == 0)
                return 0;
        if (off + len < off || off >= QCOW2_MAX_HOST_OFFSET)
                return qcow2_diag(
                        ctx->diag,
                        -EUCLEAN,
                        "%s offset 0x%" PRIx64 " is invalid",
                        cluster_kind_to_string(kind),
                        off);
        first = cluster_of(img, off);
        last = cluster_of(img, off + len - 1);
        if (last >= img->nb_clusters)
                return qcow2_diag(
                        ctx->diag,
                        -EUCLEAN,
                        "%s at 0x%" PRIx64 " lies past the end of the file (truncated image?)",
                        cluster_kind_to_string(kind),
                        off);
        for (uint64_t c = first; c <= last; c++) {
                if (img->kind[c] != CK_FREE && img->kind[c] != kind)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "cluster %" PRIu64 " (offset 0x%" PRIx64
                                ") is used both as %s and as %s",
                                c,
                                offset_of(img, c),
                                cluster_kind_to_string(img->kind[c]),
                                cluster_kind_to_string(kind));
                img->kind[c] = (uint8_t) kind;
                if (img->refcount[c] == UINT32_MAX)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "cluster %" PRIu64 " has too many references",
                                c);
                img->refcount[c]++;
        }
        return 0;
}

static int note_copied(WalkCtx *ctx, uint64_t off, bool copied) {
        uint64_t c = cluster_of(ctx->img, off);
        bit_set(copied ? ctx->copied_set : ctx->copied_clear, c);
        return 0;
}

int qcow2_read_l2(Qcow2Image *img, uint64_t off, uint8_t *buf) {
        /* QEMU writes tables as whole clusters: one cut by the end of the file was truncated. */
        if (off + img->cluster_size > img->file_size)
                return -EUCLEAN;
        return io_pread(img->io, buf, img->cluster_size, off);
}

/* Reads len bytes of a metadata table, refusing one that the end of the file cuts. */
static int read_table_bytes(WalkCtx *ctx, void *buf, uint64_t len, uint64_t off, const char *what) {
        if (off + len < off || off + len > ctx->img->file_size)
                return qcow2_diag(
                        ctx->diag,
                        -EUCLEAN,
                        "truncated image: the %s at 0x%" PRIx64 " is cut by the end of the file",
                        what,
                        off);
        int r = io_pread(ctx->img->io, buf, len, off);
        if (r < 0)
                return qcow2_diag(
                        ctx->diag,
                        r,
                        "cannot read the %s at 0x%" PRIx64 ": %s",
                        what,
                        off,
                        strerror(-r));
        return 0;
}

/* One more path to the compressed stream at [off, off + len); merged after the walk. */
static int add_stream(WalkCtx *ctx, uint64_t off, uint64_t len) {
        if (ctx->nb_streams == ctx->max_streams) {
                size_t c = MAX(ctx->max_streams * 2, (size_t) 64);
                Stream *s = realloc(ctx->streams, c * sizeof(Stream));
                if (!s)
                        return -ENOMEM;
                ctx->streams = s;
                ctx->max_streams = c;
        }
        ctx->streams[ctx->nb_streams++] = (Stream){ .off = off, .len = (uint32_t) len, .refs = 1 };
        return 0;
}

int qcow2_stream_cmp(const void *a, const void *b) {
        const Stream *x = a, *y = b;
        if (x->off != y->off)
                return x->off < y->off ? -1 : 1;
        return x->len < y->len ? -1 : x->len > y->len;
}

/* Sorts the recorded paths and merges those of one stream into one entry with its count. */
static void merge_streams(WalkCtx *ctx) {
        size_t n = 0;

        if (ctx->nb_streams == 0)
                return;
        qsort(ctx->streams, ctx->nb_streams, sizeof(Stream), qcow2_stream_cmp);
        for (size_t i = 0; i < ctx->nb_streams; i++) {
                if (n > 0 && qcow2_stream_cmp(&ctx->streams[n - 1], &ctx->streams[i]) == 0) {
                        ctx->streams[n - 1].refs += ctx->streams[i].refs;
                        continue;
                }
                ctx->streams[n++] = ctx->streams[i];
        }
        ctx->nb_streams = n;
}

static int walk_l2(WalkCtx *ctx, uint64_t l1_index, const uint8_t *l2, bool active) {
        Qcow2Image *img = ctx->img;
        uint64_t reserved =
                L2E_STD_RESERVED_MASK | (img->l2_entry_size == 16 ? QCOW_OFLAG_ZERO : 0);
        int r;

        for (uint64_t j = 0; j < img->l2_entries; j++) {
                uint64_t e = rd64(l2 + j * img->l2_entry_size);
                L2Type t = qcow2_l2_type(img, e);
                uint64_t off = e & L2E_OFFSET_MASK;

                if (t == L2_COMPRESSED) {
                        uint64_t coff, clen;
                        if (e & QCOW_OFLAG_COPIED)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "compressed cluster with COPIED flag (L1 index %" PRIu64
                                        ")",
                                        l1_index);
                        qcow2_compressed_range(img, e, &coff, &clen);
                        if (img->l2_entry_size == 16 && l2e_bitmap(img, l2, j))
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "compressed cluster with a subcluster bitmap");
                        if (clen > 0 && coff + clen > coff &&
                            cluster_of(img, coff + clen - 1) < img->nb_clusters)
                                for (uint64_t c = cluster_of(img, coff);
                                     c < cluster_of(img, coff + clen - 1);
                                     c++)
                                        bm_set(img->cjoin, c);
                        r = add_ref(ctx, coff, clen, CK_COMPRESSED);
                        if (r < 0)
                                return r;
                        r = add_stream(ctx, coff, clen);
                        if (r < 0)
                                return r;
                        if (active)
                                img->compressed_clusters++;
                        continue;
                }
                if (img->version < 3 && (e & QCOW_OFLAG_ZERO))
                        return qcow2_diag(ctx->diag, -EUCLEAN, "zero flag in a version 2 image");
                if (e & reserved)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "L2 entry with reserved bits set: 0x%016" PRIx64,
                                e);
                if (img->l2_entry_size == 16) {
                        uint64_t bm = rd64(l2 + j * 16 + 8);
                        if ((bm & (bm >> 32)) & 0xffffffffULL)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "subcluster both allocated and zero (L2 entry 0x%016" PRIx64
                                        ")",
                                        e);
                        if (!off && (bm & 0xffffffffULL))
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "unallocated cluster with allocated subclusters");
                }
                switch (t) {
                case L2_NORMAL:
                case L2_ZERO_ALLOC:
                        if (!IS_ALIGNED(off, img->cluster_size))
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "data cluster offset 0x%" PRIx64 " is not cluster aligned",
                                        off);
                        r = add_ref(ctx, off, img->cluster_size, CK_DATA);
                        if (r < 0)
                                return r;
                        if (active) {
                                note_copied(ctx, off, e & QCOW_OFLAG_COPIED);
                                if (t == L2_NORMAL)
                                        img->data_clusters++;
                                else
                                        img->zero_alloc_clusters++;
                                img->guest_allocated++;
                                if (off <= ctx->last_host)
                                        img->guest_monotone = false;
                                ctx->last_host = off;
                        }
                        break;
                case L2_ZERO_PLAIN:
                        if (active)
                                img->zero_plain_clusters++;
                        break;
                default:
                        break;
                }
        }
        return 0;
}

static int walk_l1(WalkCtx *ctx, const uint64_t *l1, uint32_t l1_size, uint32_t table) {
        bool active = table == 0;
        Qcow2Image *img = ctx->img;
        int r;

        for (uint32_t i = 0; i < l1_size; i++) {
                uint64_t e = l1[i];
                uint64_t off = e & L1E_OFFSET_MASK;

                if (e & L1E_RESERVED_MASK)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "L1 entry %u has reserved bits set: 0x%016" PRIx64,
                                i,
                                e);
                if (!off)
                        continue;
                if (!IS_ALIGNED(off, img->cluster_size))
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "L2 table offset 0x%" PRIx64 " is not cluster aligned",
                                off);
                r = add_ref(ctx, off, img->cluster_size, CK_L2);
                if (r < 0)
                        return r;
                if (ctx->nb_refs == ctx->max_refs) {
                        size_t n = MAX(ctx->max_refs * 2, (size_t) 1024);
                        L1Ref *p = realloc(ctx->refs, n * sizeof(L1Ref));
                        if (!p)
                                return -ENOMEM;
                        ctx->refs = p;
                        ctx->max_refs = n;
                }
                ctx->refs[ctx->nb_refs++] =
                        (L1Ref){ .l2 = cluster_of(img, off), .table = table, .index = i };
                if (active) {
                        note_copied(ctx, off, e & QCOW_OFLAG_COPIED);
                        img->l2_tables++;
                }
                r = read_table_bytes(ctx, ctx->l2buf, img->cluster_size, off, "L2 table");
                if (r < 0)
                        return r;
                r = walk_l2(ctx, i, ctx->l2buf, active);
                if (r < 0)
                        return r;
                if (active && (i & 63) == 0)
                        qcow2_progress(img, "check", i, l1_size);
        }
        return 0;
}

static int walk_snapshots(WalkCtx *ctx) {
        Qcow2Image *img = ctx->img;
        int r;

        for (uint32_t i = 0; i < img->nb_snapshots; i++) {
                Snapshot *s = &img->snapshots[i];
                _cleanup_free_ uint64_t *l1 = NULL;
                uint64_t bytes = (uint64_t) s->l1_size * 8;

                if (s->l1_size == 0)
                        continue;
                r = add_ref(ctx, s->l1_offset, ALIGN_UP(bytes, img->cluster_size), CK_SNAPSHOT_L1);
                if (r < 0)
                        return r;
                l1 = malloc(bytes);
                if (!l1)
                        return -ENOMEM;
                r = read_table_bytes(ctx, l1, bytes, s->l1_offset, "snapshot L1 table");
                if (r < 0)
                        return r;
                for (uint32_t k = 0; k < s->l1_size; k++)
                        l1[k] = be64toh(l1[k]);
                r = walk_l1(ctx, l1, s->l1_size, i + 1);
                if (r < 0)
                        return r;
                free(s->l1);
                s->l1 = TAKE_PTR(l1);
        }
        if (img->nb_snapshots > 0)
                return add_ref(
                        ctx,
                        img->snapshots_offset,
                        ALIGN_UP(img->snapshots_size, img->cluster_size),
                        CK_SNAPSHOT_TABLE);
        return 0;
}

static int walk_bitmaps(WalkCtx *ctx) {
        Qcow2Image *img = ctx->img;
        int r;

        if (!img->bitmaps)
                return 0;
        r =
                add_ref(ctx,
                        img->bitmap_dir_offset,
                        ALIGN_UP(img->bitmap_dir_size, img->cluster_size),
                        CK_BITMAP_DIR);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
                Bitmap *b = &img->bitmaps[i];
                _cleanup_free_ uint64_t *t = NULL;
                uint64_t bytes = (uint64_t) b->table_size * 8;

                if (bytes == 0)
                        continue;
                r = add_ref(
                        ctx, b->table_offset, ALIGN_UP(bytes, img->cluster_size), CK_BITMAP_TABLE);
                if (r < 0)
                        return r;
                t = malloc(bytes);
                if (!t)
                        return -ENOMEM;
                r = read_table_bytes(ctx, t, bytes, b->table_offset, "bitmap table");
                if (r < 0)
                        return r;
                for (uint32_t k = 0; k < b->table_size; k++) {
                        uint64_t e = be64toh(t[k]);
                        t[k] = e;
                        if (e & BME_RESERVED_MASK)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "bitmap table entry with reserved bits");
                        if (e & BME_OFFSET_MASK) {
                                r =
                                        add_ref(ctx,
                                                e & BME_OFFSET_MASK,
                                                img->cluster_size,
                                                CK_BITMAP_DATA);
                                if (r < 0)
                                        return r;
                        }
                }
                free(b->table);
                b->table = TAKE_PTR(t);
        }
        return 0;
}

static int walk_refcount_structure(WalkCtx *ctx) {
        Qcow2Image *img = ctx->img;
        int r;

        r =
                add_ref(ctx,
                        img->reftable_offset,
                        (uint64_t) img->reftable_clusters * img->cluster_size,
                        CK_REFTABLE);
        if (r < 0)
                return r;
        for (uint64_t i = 0; i < img->reftable_entries; i++) {
                uint64_t e = img->reftable[i];
                uint64_t off = e & REFT_OFFSET_MASK;
                if (e & REFT_RESERVED_MASK)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "refcount table entry %" PRIu64 " has reserved bits",
                                i);
                if (!off)
                        continue;
                if (!IS_ALIGNED(off, img->cluster_size))
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "refcount block %" PRIu64 " is not cluster aligned",
                                i);
                if (off >= offset_of(img, img->nb_clusters))
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "refcount block %" PRIu64 " is outside the image",
                                i);
                r = add_ref(ctx, off, img->cluster_size, CK_REFBLOCK);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void mark_dirty_entry(Qcow2Image *img, uint64_t i, uint32_t e) {
        if (img->rb_dirty_lo[i] >= img->rb_dirty_hi[i]) {
                img->rb_dirty_list[img->rb_dirty_n++] = i;
                img->rb_dirty_lo[i] = e;
                img->rb_dirty_hi[i] = e + 1;
        } else {
                img->rb_dirty_lo[i] = MIN(img->rb_dirty_lo[i], e);
                img->rb_dirty_hi[i] = MAX(img->rb_dirty_hi[i], e + 1);
        }
}

/* Compare computed references with the on-disk refcounts (QEMU's compare_refcounts). */
static int compare_refcounts(WalkCtx *ctx) {
        Qcow2Image *img = ctx->img;
        _cleanup_free_ uint8_t *block = malloc(img->cluster_size);
        uint64_t nb_blocks_needed = DIV_ROUND_UP(img->nb_clusters, img->rb_entries);
        int r;

        if (!block)
                return -ENOMEM;
        for (uint64_t i = 0; i < MAX(nb_blocks_needed, img->reftable_entries); i++) {
                uint64_t first = i << img->rb_bits;
                uint64_t off = i < img->reftable_entries ? img->reftable[i] & REFT_OFFSET_MASK : 0;

                if (!off) {
                        /* No block: every cluster in its range must be unreferenced. */
                        for (uint64_t c = first; c < MIN(first + img->rb_entries, img->nb_clusters);
                             c++)
                                if (img->refcount[c] && img->tolerate_stale)
                                        img->stale_refcounts++;
                                else if (img->refcount[c])
                                        return qcow2_diag(
                                                ctx->diag,
                                                -EUCLEAN,
                                                "cluster %" PRIu64
                                                " refcount=0 reference=%u (no refcount block)",
                                                c,
                                                img->refcount[c]);
                        continue;
                }
                r = read_table_bytes(ctx, block, img->cluster_size, off, "refcount block");
                if (r < 0)
                        return r;
                for (uint64_t e = 0; e < img->rb_entries; e++) {
                        uint64_t c = first + e;
                        uint64_t v = qcow2_refblock_get(img, block, e);
                        if (c >= img->nb_clusters) {
                                if (v) {
                                        img->leaks_past_eof++;
                                        mark_dirty_entry(img, i, (uint32_t) e);
                                }
                                continue;
                        }
                        uint64_t want = img->refcount[c];
                        if (want > img->refcount_max)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "cluster %" PRIu64 " has %" PRIu64
                                        " references, more than %u-bit refcounts hold",
                                        c,
                                        want,
                                        img->refcount_bits);
                        if (v < want && img->tolerate_stale) {
                                /* a running VM's lazy or in-flight refcount update */
                                img->stale_refcounts++;
                                continue;
                        }
                        if (v < want)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "cluster %" PRIu64 " refcount=%" PRIu64
                                        " reference=%" PRIu64,
                                        c,
                                        v,
                                        want);
                        if (img->kind[c] == CK_REFBLOCK && v != 1)
                                return qcow2_diag(
                                        ctx->diag,
                                        -EUCLEAN,
                                        "refcount block at cluster %" PRIu64
                                        " has refcount %" PRIu64,
                                        c,
                                        v);
                        if (v > want) {
                                if (want == 0) {
                                        img->leaked_clusters++;
                                        mark_dirty_entry(img, i, (uint32_t) e);
                                } else {
                                        /* Referenced, but counted too high: keep it as it is. */
                                        if (v > UINT32_MAX)
                                                return qcow2_diag(
                                                        ctx->diag,
                                                        -EUCLEAN,
                                                        "cluster %" PRIu64
                                                        " has an absurd refcount",
                                                        c);
                                        img->refcount[c] = (uint32_t) v;
                                        bm_set(img->overcounted, c);
                                        if (img->nb_oc % 64 == 0) {
                                                void *q = realloc(
                                                        img->oc,
                                                        (img->nb_oc + 64) * sizeof(*img->oc));
                                                if (!q)
                                                        return -ENOMEM;
                                                img->oc = q;
                                        }
                                        img->oc[img->nb_oc].cluster = c;
                                        img->oc[img->nb_oc++].refs = (uint32_t) want;
                                        img->partial_leaks++;
                                }
                        }
                }
        }
        return 0;
}

/* spec: COPIED "must be set iff the refcount is exactly 1" (active tree only). */
static int check_copied(WalkCtx *ctx) {
        Qcow2Image *img = ctx->img;

        if (img->tolerate_stale) /* COPIED follows the refcounts, which may be stale */
                return 0;
        for (uint64_t c = 0; c < img->nb_clusters; c++) {
                if (bit_get(ctx->copied_set, c) && img->refcount[c] != 1)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "OFLAG_COPIED set on %s cluster %" PRIu64 " with refcount %u",
                                cluster_kind_to_string(img->kind[c]),
                                c,
                                img->refcount[c]);
                if (bit_get(ctx->copied_clear, c) && img->refcount[c] == 1)
                        return qcow2_diag(
                                ctx->diag,
                                -EUCLEAN,
                                "OFLAG_COPIED missing on %s cluster %" PRIu64 " with refcount 1",
                                cluster_kind_to_string(img->kind[c]),
                                c);
        }
        return 0;
}

static void walk_ctx_done(WalkCtx *ctx) {
        free(ctx->refs);
        free(ctx->streams);
}

static int cmp_l1ref(const void *a, const void *b) {
        const L1Ref *x = a, *y = b;
        if (x->l2 != y->l2)
                return x->l2 < y->l2 ? -1 : 1;
        if (x->table != y->table)
                return x->table < y->table ? -1 : 1;
        return x->index < y->index ? -1 : x->index > y->index;
}

int qcow2_walk(Qcow2Image *img, Qcow2Diag *diag) {
        _cleanup_free_ uint8_t *copied_set = NULL, *copied_clear = NULL, *l2buf = NULL;
        _cleanup_(walk_ctx_done) WalkCtx ctx = { .img = img, .diag = diag };
        uint64_t bitmap_bytes;
        int r;

        qcow2_walk_reset(img);
        r = io_size(img->io, &img->file_size);
        if (r < 0)
                return r;
        img->nb_clusters = size_to_clusters(img, img->file_size);
        /* A reftable entry covers rb_entries clusters; bound what the walk may allocate. */
        if (img->nb_clusters > (UINT64_C(1) << 34))
                return qcow2_diag(
                        diag,
                        -EOPNOTSUPP,
                        "image file too large to map (%" PRIu64 " clusters)",
                        img->nb_clusters);

        bitmap_bytes = DIV_ROUND_UP(img->nb_clusters, 8) + 1;
        img->refcount = calloc(img->nb_clusters + 1, sizeof(uint32_t));
        img->kind = calloc(img->nb_clusters + 1, 1);
        img->rb_dirty_lo = calloc(img->reftable_entries + 1, sizeof(uint32_t));
        img->rb_dirty_hi = calloc(img->reftable_entries + 1, sizeof(uint32_t));
        img->rb_dirty_list = calloc(img->reftable_entries + 1, sizeof(uint64_t));
        copied_set = calloc(1, bitmap_bytes);
        img->cjoin = calloc(1, bitmap_bytes);
        img->overcounted = calloc(1, bitmap_bytes);
        copied_clear = calloc(1, bitmap_bytes);
        l2buf = malloc(img->cluster_size);
        if (!img->refcount || !img->kind || !img->rb_dirty_lo || !img->rb_dirty_hi || !img->cjoin ||
            !img->overcounted || !img->rb_dirty_list || !copied_set || !copied_clear || !l2buf)
                return -ENOMEM;
        ctx.copied_set = copied_set;
        ctx.copied_clear = copied_clear;
        ctx.l2buf = l2buf;
        img->guest_monotone = true;

        r = add_ref(&ctx, 0, img->cluster_size, CK_HEADER);
        if (r < 0)
                return r;
        if (img->l1_size > 0) {
                r =
                        add_ref(&ctx,
                                img->l1_offset,
                                ALIGN_UP((uint64_t) img->l1_size * 8, img->cluster_size),
                                CK_L1);
                if (r < 0)
                        return r;
        }
        r = walk_l1(&ctx, img->l1, img->l1_size, 0);
        if (r < 0)
                return r;
        r = walk_snapshots(&ctx);
        if (r < 0)
                return r;
        r = walk_bitmaps(&ctx);
        if (r < 0)
                return r;
        if (img->has_crypto_ext && img->crypto_length > 0) {
                r =
                        add_ref(&ctx,
                                img->crypto_offset,
                                ALIGN_UP(img->crypto_length, img->cluster_size),
                                CK_CRYPTO);
                if (r < 0)
                        return r;
        }
        r = walk_refcount_structure(&ctx);
        if (r < 0)
                return r;
        r = compare_refcounts(&ctx);
        if (r < 0)
                return r;
        r = check_copied(&ctx);
        if (r < 0)
                return r;
        qcow2_progress(img, "check", img->l1_size, img->l1_size);
        if (ctx.nb_refs > 0) /* qsort's base must not be NULL, even for zero elements */
                qsort(ctx.refs, ctx.nb_refs, sizeof(L1Ref), cmp_l1ref);
        img->nb_l1refs = ctx.nb_refs;
        img->l1refs = TAKE_PTR(ctx.refs);
        merge_streams(&ctx);
        img->nb_streams = ctx.nb_streams;
        img->streams = TAKE_PTR(ctx.streams);
        img->walked = true;
        return 0;
}

uint64_t *qcow2_l1_table(Qcow2Image *img, uint32_t t, uint32_t *ret_size, uint64_t *ret_offset) {
        if (t == 0) {
                *ret_size = img->l1_size;
                *ret_offset = img->l1_offset;
                return img->l1;
        }
        Snapshot *s = &img->snapshots[t - 1];
        *ret_size = s->l1_size;
        *ret_offset = s->l1_offset;
        return s->l1;
}

size_t qcow2_l2_next(const Qcow2Image *img, size_t i, uint64_t *ret_cluster, uint64_t *ret_paths) {
        size_t k = i;
        uint64_t c = img->l1refs[i].l2;
        while (k < img->nb_l1refs && img->l1refs[k].l2 == c)
                k++;
        *ret_cluster = c;
        *ret_paths = k - i;
        return k;
}

uint64_t qcow2_l2_paths(const Qcow2Image *img, uint64_t c) {
        size_t lo = 0, hi = img->nb_l1refs;
        while (lo < hi) { /* first entry with l2 >= c */
                size_t mid = lo + (hi - lo) / 2;
                if (img->l1refs[mid].l2 < c)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        uint64_t n = 0;
        for (size_t i = lo; i < img->nb_l1refs && img->l1refs[i].l2 == c; i++)
                n++;
        return n;
}

int qcow2_l1_write_span(Qcow2Image *img, uint32_t t, uint64_t lo, uint64_t hi) {
        _cleanup_free_ uint8_t *buf = NULL;
        uint32_t size;
        uint64_t off;
        uint64_t *l1 = qcow2_l1_table(img, t, &size, &off);

        if (hi <= lo)
                return 0;
        if (hi > size)
                return -EINVAL;
        buf = malloc((hi - lo) * 8);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = lo; i < hi; i++)
                wr64(buf + (i - lo) * 8, l1[i]);
        return qcow2_write(
                img,
                t == 0 ? IO_EV_L1_UPDATE : IO_EV_SNAPSHOT_UPDATE,
                buf,
                (hi - lo) * 8,
                off + lo * 8);
}

int qcow2_repair_leaks(Qcow2Image *img, uint64_t *ret_repaired) {
        int r;

        if (img->rb_dirty_n == 0) {
                *ret_repaired = 0;
                return 0;
        }
        /* Lowering a refcount that nothing references can only remove a leak. */
        r = qcow2_rc_commit(img);
        if (r < 0)
                return r;
        *ret_repaired = img->leaked_clusters + img->leaks_past_eof;
        img->leaked_clusters = img->leaks_past_eof = 0;
        return 0;
}
