/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the engine over in-memory images: header validation, refcount arithmetic for
 * every width, the reference walk and its corruption findings, the zero pass and the planner.
 * Images are built here by a small independent writer (build_image), and guest contents are
 * read back by an independent reader (guest_read), so the engine is checked against code
 * that shares nothing with it.
 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>
#include <zstd.h>

#include "io.h"
#include "qcow2-internal.h"

/* ---- a tiny qcow2 writer ---- */

typedef struct Spec {
        unsigned cluster_bits;
        unsigned refcount_order;
        unsigned version;
        uint64_t virtual_size;
        /* per guest cluster: 0 = unallocated, 1..255 = fill byte, 256 = real zeros,
         * 257 = zero flag (v3), 258 = zero flag with a host cluster (zero-alloc) */
        const uint16_t *content;
        size_t n_content;
        bool backing;
        size_t free_gap_every; /* leave a free cluster after every Nth data cluster (0: none) */
} Spec;

enum { C_ZEROS = 256, C_ZFLAG = 257, C_ZALLOC = 258 };

typedef struct Built {
        uint8_t *data;
        size_t len;
} Built;

static void put64(uint8_t *p, uint64_t v) {
        wr64(p, v);
}

static void set_rc(const Spec *s, uint8_t *img, uint64_t rb_off, uint64_t idx, uint64_t v) {
        Qcow2Image fake = { .refcount_order = s->refcount_order,
                            .refcount_bits = 1U << s->refcount_order };
        qcow2_refblock_set(&fake, img + rb_off, idx, v);
}

/* Smallest cluster count holding `nonrb` clusters plus the refcount blocks describing them. */
static uint64_t min_clusters(uint64_t nonrb, uint64_t rb_entries) {
        uint64_t k = 1;
        while (k * rb_entries < nonrb + k)
                k++;
        return nonrb + k;
}

/*
 * Layout: 0 header, 1 reftable, 2..2+k-1 refcount blocks, then the L1, then L2 tables and
 * data interleaved in guest order.
 */
static Built build_image(const Spec *s) {
        uint64_t cs = 1ULL << s->cluster_bits;
        uint64_t l2_entries = cs / 8;
        uint64_t guest_clusters = DIV_ROUND_UP(s->virtual_size, cs);
        uint64_t l1_size = DIV_ROUND_UP(guest_clusters, l2_entries);
        uint64_t l1_clusters = MAX(DIV_ROUND_UP(l1_size * 8, cs), (uint64_t) 1);
        uint64_t rb_entries = cs * 8 / (1U << s->refcount_order);
        uint64_t k = 1;
        while (k * rb_entries < 2 + k + l1_clusters + l1_size + guest_clusters * 2 + 4)
                k++;
        uint64_t max_clusters = 2 + k + l1_clusters + l1_size + guest_clusters * 2 + 4;
        uint64_t l1_start = 2 + k;
        Built b;

        assert_true(k <= cs / 8); /* one reftable cluster is enough */
        b.data = calloc(max_clusters, cs);
        assert_non_null(b.data);
        uint8_t *h = b.data;
        wr32(h, QCOW2_MAGIC);
        wr32(h + 4, s->version);
        wr32(h + 20, s->cluster_bits);
        put64(h + 24, s->virtual_size);
        wr32(h + 36, (uint32_t) l1_size);
        put64(h + 40, l1_start * cs);
        put64(h + 48, 1 * cs);
        wr32(h + 56, 1);
        if (s->version == 3) {
                wr32(h + 96, s->refcount_order);
                wr32(h + 100, 112);
        }
        if (s->backing) {
                const char *name = "base.qcow2";
                put64(h + 8, 512);
                wr32(h + 16, (uint32_t) strlen(name));
                memcpy(h + 512, name, strlen(name));
        }
        for (uint64_t i = 0; i < k; i++)
                put64(b.data + cs + i * 8, (2 + i) * cs);

        uint64_t next = l1_start + l1_clusters;
        uint64_t *l2_of = calloc(l1_size + 1, sizeof(uint64_t));
        size_t since_gap = 0;
        for (uint64_t g = 0; g < guest_clusters && g < s->n_content; g++) {
                uint16_t c = s->content[g];
                if (c == 0)
                        continue;
                uint64_t l1i = g / l2_entries;
                if (!l2_of[l1i]) {
                        l2_of[l1i] = next++;
                        put64(b.data + l1_start * cs + l1i * 8,
                              (l2_of[l1i] * cs) | QCOW_OFLAG_COPIED);
                }
                uint8_t *l2 = b.data + l2_of[l1i] * cs;
                uint64_t entry;
                if (c == C_ZFLAG)
                        entry = QCOW_OFLAG_ZERO;
                else {
                        uint64_t host = next++;
                        if (c != C_ZEROS && c != C_ZALLOC)
                                memset(b.data + host * cs, (int) c, cs);
                        entry = (host * cs) | QCOW_OFLAG_COPIED |
                                (c == C_ZALLOC ? QCOW_OFLAG_ZERO : 0);
                        if (s->free_gap_every && ++since_gap % s->free_gap_every == 0)
                                next++;
                }
                put64(l2 + (g % l2_entries) * 8, entry);
        }
        free(l2_of);

        /* Refcounts: every cluster in use up to `next`, except the gaps (never referenced). */
        b.len = next * cs;
        uint64_t *used = calloc(next, sizeof(uint64_t));
        for (uint64_t c = 0; c < l1_start + l1_clusters; c++)
                used[c] = 1;
        for (uint64_t i = 0; i < l1_size; i++) {
                uint64_t l2off = rd64(b.data + l1_start * cs + i * 8) & L1E_OFFSET_MASK;
                if (!l2off)
                        continue;
                used[l2off / cs] = 1;
                for (uint64_t j = 0; j < l2_entries; j++) {
                        uint64_t off = rd64(b.data + l2off + j * 8) & L2E_OFFSET_MASK;
                        if (off)
                                used[off / cs] = 1;
                }
        }
        for (uint64_t c = 0; c < next; c++)
                set_rc(s, b.data, (2 + c / rb_entries) * cs, c % rb_entries, used[c]);
        free(used);
        return b;
}

/* Independent guest reader: the content of guest cluster g. */
static void guest_read(const uint8_t *img, size_t len, uint64_t g, uint8_t *out) {
        unsigned cb = rd32(img + 20);
        uint64_t cs = 1ULL << cb, l2e = cs / 8;
        uint64_t l1off = rd64(img + 40);
        uint32_t l1_size = rd32(img + 36);
        memset(out, 0, cs);
        if (g / l2e >= l1_size)
                return;
        uint64_t l2off = rd64(img + l1off + (g / l2e) * 8) & L1E_OFFSET_MASK;
        if (!l2off)
                return;
        assert_true(l2off + cs <= len);
        uint64_t e = rd64(img + l2off + (g % l2e) * 8);
        if (rd32(img + 4) >= 3 && (e & QCOW_OFLAG_ZERO))
                return;
        uint64_t off = e & L2E_OFFSET_MASK;
        if (!off)
                return;
        assert_true(off + cs <= len);
        memcpy(out, img + off, cs);
}

typedef struct Opened {
        IoBackend *io;
        Qcow2Image *img;
} Opened;

static int open_mem(const Built *b, unsigned flags, Opened *o, Qcow2Diag *diag) {
        int r = io_memory_new(b->data, b->len, &o->io);
        assert_int_equal(r, 0);
        o->img = NULL;
        return qcow2_open(o->io, flags, &o->img, diag);
}

static void close_mem(Opened *o) {
        o->img = qcow2_close(o->img);
        o->io = io_free(o->io);
}

/* ---- tests ---- */

static void test_refblock_widths(void **state) {
        for (unsigned order = 0; order <= 6; order++) {
                Qcow2Image fake = { .refcount_order = order, .refcount_bits = 1U << order };
                uint64_t max = order == 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
                uint8_t block[512];
                uint64_t n = sizeof(block) * 8 / fake.refcount_bits;

                memset(block, 0, sizeof(block));
                for (uint64_t i = 0; i < n; i++)
                        qcow2_refblock_set(&fake, block, i, (i * 7 + 3) & max);
                for (uint64_t i = 0; i < n; i++)
                        assert_int_equal(qcow2_refblock_get(&fake, block, i), (i * 7 + 3) & max);
                /* Setting one entry leaves its neighbours alone. */
                qcow2_refblock_set(&fake, block, 5, max);
                assert_int_equal(qcow2_refblock_get(&fake, block, 4), (4 * 7 + 3) & max);
                assert_int_equal(qcow2_refblock_get(&fake, block, 5), max);
                assert_int_equal(qcow2_refblock_get(&fake, block, 6), (6 * 7 + 3) & max);
        }
        /* Sub-byte widths are LSB first (spec). */
        Qcow2Image one = { .refcount_order = 0, .refcount_bits = 1 };
        uint8_t b = 0;
        qcow2_refblock_set(&one, &b, 0, 1);
        assert_int_equal(b, 0x01);
        qcow2_refblock_set(&one, &b, 7, 1);
        assert_int_equal(b, 0x81);
}

static void test_buffer_is_zero(void **state) {
        uint8_t buf[4096] = { 0 };
        assert_true(qcow2_buffer_is_zero(buf, 0));
        assert_true(qcow2_buffer_is_zero(buf, 1));
        assert_true(qcow2_buffer_is_zero(buf, sizeof(buf)));
        for (size_t pos = 0; pos < sizeof(buf); pos += 509) {
                buf[pos] = 1;
                assert_false(qcow2_buffer_is_zero(buf, sizeof(buf)));
                buf[pos] = 0;
        }
        buf[4095] = 0x80;
        assert_false(qcow2_buffer_is_zero(buf, sizeof(buf)));
        assert_true(qcow2_buffer_is_zero(buf, 4095));
}

typedef struct HeaderCase {
        const char *name;
        size_t off; /* field to patch */
        int width;  /* 4 or 8 bytes, 0 = truncate file to `value` bytes */
        uint64_t value;
        unsigned flags;
        int expect;
} HeaderCase;

static void test_header_validation(void **state) {
        static const uint16_t content[] = { 1, 2, C_ZEROS, 3 };
        static const HeaderCase cases[] = {
                { "valid", 0, 4, QCOW2_MAGIC, QCOW2_OPEN_WRITE, 0 },
                { "bad magic", 0, 4, 0x12345678, 0, -EMEDIUMTYPE },
                { "version 1", 4, 4, 1, 0, -EMEDIUMTYPE },
                { "version 4", 4, 4, 4, 0, -EMEDIUMTYPE },
                { "cluster_bits 8", 20, 4, 8, 0, -EMEDIUMTYPE },
                { "cluster_bits 22", 20, 4, 22, 0, -EMEDIUMTYPE },
                { "refcount_order 7", 96, 4, 7, 0, -EMEDIUMTYPE },
                { "header_length 100", 100, 4, 100, 0, -EMEDIUMTYPE },
                { "header_length odd", 100, 4, 108 + 1, 0, -EMEDIUMTYPE },
                { "unknown incompatible bit", 72, 8, 1ULL << 10, 0, -EOPNOTSUPP },
                { "dirty (read-only open is fine)", 72, 8, QCOW2_INCOMPAT_DIRTY, 0, 0 },
                { "dirty", 72, 8, QCOW2_INCOMPAT_DIRTY, QCOW2_OPEN_WRITE, -EUCLEAN },
                { "corrupt", 72, 8, QCOW2_INCOMPAT_CORRUPT, QCOW2_OPEN_WRITE, -EUCLEAN },
                { "external data file",
                  72,
                  8,
                  QCOW2_INCOMPAT_DATA_FILE,
                  QCOW2_OPEN_WRITE,
                  -EOPNOTSUPP },
                { "encrypted", 32, 4, 2, QCOW2_OPEN_WRITE, -EOPNOTSUPP },
                { "extended L2 with 4 KiB clusters", 72, 8, QCOW2_INCOMPAT_EXTL2, 0, -EMEDIUMTYPE },
                { "l1 too small", 36, 4, 0, 0, -EUCLEAN },
                { "l1 huge", 36, 4, 0x10000000, 0, -EMEDIUMTYPE },
                { "l1 unaligned", 40, 8, 3 * 4096 + 8, 0, -EUCLEAN },
                { "l1 past EOF", 40, 8, 1ULL << 40, 0, -EUCLEAN },
                { "reftable unaligned", 48, 8, 4096 + 512, 0, -EUCLEAN },
                { "reftable zero clusters", 56, 4, 0, 0, -EUCLEAN },
                { "reftable too large", 56, 4, 1u << 20, 0, -EUCLEAN },
                { "snapshots unaligned", 64, 8, 12, 0, -EUCLEAN },
                { "backing name too long", 16, 4, 2000, 0, -EMEDIUMTYPE },
                { "truncated to 50 bytes", 0, 0, 50, 0, -EMEDIUMTYPE },
                { "truncated to 100 bytes", 0, 0, 100, 0, -EMEDIUMTYPE },
                { "truncated inside the header cluster", 0, 0, 3000, 0, -EMEDIUMTYPE },
                { "truncated inside the L1", 0, 0, 3 * 4096 + 4, 0, -EUCLEAN },
        };
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 64 << 10,
                   .content = content,
                   .n_content = ELEMENTSOF(content) };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const HeaderCase *c = &cases[i];
                Built b = build_image(&s);
                Qcow2Diag diag = { { 0 } };
                Opened o;

                if (c->width == 4)
                        wr32(b.data + c->off, (uint32_t) c->value);
                else if (c->width == 8)
                        wr64(b.data + c->off, c->value);
                else
                        b.len = c->value;
                if (strcmp(c->name, "snapshots unaligned") == 0)
                        wr32(b.data + 60, 1);
                if (strcmp(c->name, "backing name too long") == 0)
                        wr64(b.data + 8, 512);
                int r = open_mem(&b, c->flags, &o, &diag);
                if (r != c->expect)
                        fail_msg(
                                "%s: got %d (%s), expected %d",
                                c->name,
                                r,
                                diag.message,
                                c->expect);
                if (r < 0)
                        assert_true(diag.message[0] != 0); /* every refusal says why */
                close_mem(&o);
                free(b.data);
        }
}

/* Builds, compacts in memory, and checks guest data, refcounts and minimal size. */
static void compact_and_verify(const Spec *s, uint64_t expect_used_clusters) {
        Built b = build_image(s);
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        Opened o;
        uint64_t cs = 1ULL << s->cluster_bits;
        uint8_t *before = malloc(cs), *after = malloc(cs);
        size_t len;

        assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
        int r = qcow2_compact(o.img, &(Qcow2CompactOptions){ .batch_bytes = 3 * cs }, &st, &diag);
        if (r < 0)
                fail_msg(
                        "compact (cb=%u ro=%u v%u): %s",
                        s->cluster_bits,
                        s->refcount_order,
                        s->version,
                        diag.message);
        const uint8_t *d = io_memory_data(o.io, &len);
        assert_int_equal(len, st.file_size_after);
        for (uint64_t g = 0; g < DIV_ROUND_UP(s->virtual_size, cs); g++) {
                guest_read(b.data, b.len, g, before);
                guest_read(d, len, g, after);
                if (memcmp(before, after, cs) != 0)
                        fail_msg(
                                "guest cluster %" PRIu64 " changed (cb=%u ro=%u)",
                                g,
                                s->cluster_bits,
                                s->refcount_order);
        }
        if (expect_used_clusters)
                assert_int_equal(len, expect_used_clusters * cs);

        /* A fresh walk of the result finds no corruption and no leak. */
        Opened v;
        Built copy = { .data = malloc(len), .len = len };
        memcpy(copy.data, d, len);
        assert_int_equal(open_mem(&copy, 0, &v, &diag), 0);
        assert_int_equal(qcow2_walk(v.img, &diag), 0);
        assert_int_equal(v.img->leaked_clusters, 0);
        assert_int_equal(v.img->leaks_past_eof, 0);
        close_mem(&v);
        free(copy.data);
        close_mem(&o);
        free(b.data);
        free(before);
        free(after);
}

static void test_compact_every_width_and_size(void **state) {
        static const unsigned cbs[] = { 9, 12, 16 };
        uint16_t content[96];

        for (size_t i = 0; i < ELEMENTSOF(content); i++)
                content[i] = i % 3 == 0 ? (uint16_t) (i % 250 + 1) : i % 3 == 1 ? C_ZEROS : 0;
        for (size_t k = 0; k < ELEMENTSOF(cbs); k++)
                for (unsigned order = 0; order <= 6; order++) {
                        uint64_t cs = 1ULL << cbs[k];
                        Spec s = { .cluster_bits = cbs[k],
                                   .refcount_order = order,
                                   .version = 3,
                                   .virtual_size = cs * ELEMENTSOF(content),
                                   .content = content,
                                   .n_content = ELEMENTSOF(content),
                                   .free_gap_every = 2 };
                        uint64_t l2e = cs / 8, l1 = DIV_ROUND_UP(ELEMENTSOF(content), l2e);
                        /* header + reftable + L1 + L2 tables + 32 live clusters, + refblocks */
                        uint64_t nonrb = 2 + MAX(DIV_ROUND_UP(l1 * 8, cs), (uint64_t) 1) + l1 + 32;
                        uint64_t expect = min_clusters(nonrb, cs * 8 / (1U << order));
                        compact_and_verify(&s, expect);
                }
}

static void test_compact_v2_and_backing(void **state) {
        uint16_t content[64];
        /* The last guest cluster stays unallocated, or the image would look preallocated. */
        for (size_t i = 0; i < ELEMENTSOF(content); i++)
                content[i] = i == 63 ? 0 : i % 2 ? C_ZEROS : (uint16_t) (i + 1);
        /* v2 without backing: zeros become unallocated */
        Spec v2 = { .cluster_bits = 12,
                    .refcount_order = 4,
                    .version = 2,
                    .virtual_size = 64 * 4096,
                    .content = content,
                    .n_content = 64 };
        compact_and_verify(&v2, 3 + 1 + 1 + 32);
        /* v2 with backing: zeros must stay (no zero flag in v2) */
        v2.backing = true;
        compact_and_verify(&v2, 3 + 1 + 1 + 63);
        /* v3 with backing: zero flag, the cluster goes */
        Spec v3 = v2;
        v3.version = 3;
        compact_and_verify(&v3, 3 + 1 + 1 + 32);
}

static void test_zero_alloc_and_empty_l2(void **state) {
        /* 4 KiB clusters: 512 entries per L2 table; the second table only holds zeros. */
        uint16_t content[1024];
        for (size_t i = 0; i < ELEMENTSOF(content); i++)
                content[i] = i < 512 ? (i % 4 == 0 ? (uint16_t) 9 : C_ZALLOC) :
                                       (i % 2 ? C_ZEROS : C_ZFLAG);
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 1024 * 4096,
                   .content = content,
                   .n_content = 1024 };
        Built b = build_image(&s);
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        Opened o;

        assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
        assert_int_equal(qcow2_compact(o.img, NULL, &st, &diag), 0);
        assert_int_equal(st.clusters_zeroed, 384 + 256);
        assert_int_equal(st.l2_tables_freed, 1);
        assert_int_equal(st.file_size_after, (3 + 1 + 1 + 128) * 4096);
        close_mem(&o);
        free(b.data);
}

typedef struct CorruptCase {
        const char *name;
        void (*patch)(Built *b);
        int expect;
        const char *needle; /* in the message */
} CorruptCase;

static uint64_t l2_of_first(Built *b) {
        return rd64(b->data + 3 * 4096) & L1E_OFFSET_MASK;
}
static void patch_refcount_low(Built *b) {
        /* data cluster of guest 0 gets refcount 0 */
        uint64_t off = rd64(b->data + l2_of_first(b)) & L2E_OFFSET_MASK;
        uint16_t z = 0;
        memcpy(b->data + 2 * 4096 + (off / 4096) * 2, &z, 2);
}
static void patch_overlap(Built *b) {
        /* guest 1 points at the L2 table itself */
        wr64(b->data + l2_of_first(b) + 8, l2_of_first(b) | QCOW_OFLAG_COPIED);
}
static void patch_reserved(Built *b) {
        wr64(b->data + l2_of_first(b), rd64(b->data + l2_of_first(b)) | 0x2);
}
static void patch_copied(Built *b) {
        wr64(b->data + l2_of_first(b), rd64(b->data + l2_of_first(b)) & ~QCOW_OFLAG_COPIED);
}
static void patch_past_eof(Built *b) {
        wr64(b->data + l2_of_first(b), (1ULL << 30) | QCOW_OFLAG_COPIED);
}
static void patch_unaligned(Built *b) {
        wr64(b->data + l2_of_first(b), (rd64(b->data + l2_of_first(b)) + 512));
}
static void patch_refblock_past_eof(Built *b) {
        wr64(b->data + 4096 + 8, 1ULL << 30);
}
static void patch_leak(Built *b) {
        /* A referenced-nowhere cluster with refcount 1 inside the file: a leak, not corruption. */
        uint16_t one = htobe16(1);
        uint8_t *p = realloc(b->data, b->len + 4096);
        b->data = p;
        memset(b->data + b->len, 0, 4096);
        memcpy(b->data + 2 * 4096 + (b->len / 4096) * 2, &one, 2);
        b->len += 4096;
}

static void test_corruption_refused(void **state) {
        static const CorruptCase cases[] = {
                { "refcount below references", patch_refcount_low, -EUCLEAN, "refcount=0" },
                { "overlap", patch_overlap, -EUCLEAN, "used both" },
                { "reserved bits", patch_reserved, -EUCLEAN, "reserved" },
                { "COPIED mismatch", patch_copied, -EUCLEAN, "COPIED" },
                { "data past EOF", patch_past_eof, -EUCLEAN, "past the end" },
                { "unaligned data", patch_unaligned, -EUCLEAN, "aligned" },
                { "refcount block outside", patch_refblock_past_eof, -EUCLEAN, "outside" },
        };
        static const uint16_t content[] = { 1, 2, 3, C_ZEROS };
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 16 * 4096,
                   .content = content,
                   .n_content = ELEMENTSOF(content) };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Built b = build_image(&s);
                Qcow2Diag diag = { { 0 } };
                Qcow2CompactStats st;
                Opened o;

                cases[i].patch(&b);
                uint8_t *copy = malloc(b.len);
                memcpy(copy, b.data, b.len);
                assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
                int r = qcow2_compact(o.img, NULL, &st, &diag);
                if (r != cases[i].expect || !strstr(diag.message, cases[i].needle))
                        fail_msg("%s: got %d '%s'", cases[i].name, r, diag.message);
                /* Refused means untouched. */
                size_t len;
                const uint8_t *d = io_memory_data(o.io, &len);
                assert_int_equal(len, b.len);
                assert_memory_equal(d, copy, len);
                free(copy);
                close_mem(&o);
                free(b.data);
        }
}

static void test_leaks_repaired(void **state) {
        static const uint16_t content[] = { 1, 2, 3, C_ZEROS };
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 16 * 4096,
                   .content = content,
                   .n_content = ELEMENTSOF(content) };
        Built b = build_image(&s);
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        Qcow2Info info;
        Opened o;

        patch_leak(&b);
        assert_int_equal(open_mem(&b, 0, &o, &diag), 0);
        assert_int_equal(
                qcow2_inspect(o.img, &(Qcow2InspectOptions){ .scan = true }, &info, &diag), 0);
        assert_int_equal(info.leaked_clusters, 1);
        assert_true(info.compactable);
        close_mem(&o);

        assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
        assert_int_equal(qcow2_compact(o.img, NULL, &st, &diag), 0);
        assert_int_equal(st.leaks_repaired, 1);
        assert_int_equal(st.file_size_after, (3 + 1 + 1 + 3) * 4096);
        close_mem(&o);
        free(b.data);
}

static void test_inspect_and_dry_run_agree(void **state) {
        uint16_t content[200];
        for (size_t i = 0; i < ELEMENTSOF(content); i++)
                content[i] = i % 5 == 0 ? (uint16_t) 7 :
                        i % 5 == 1      ? C_ZEROS :
                        i % 5 == 2      ? C_ZALLOC :
                                          0;
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 200 * 4096,
                   .content = content,
                   .n_content = 200,
                   .free_gap_every = 3 };
        Built b = build_image(&s);
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats dry, real;
        Qcow2Info info;
        Opened o;

        assert_int_equal(open_mem(&b, 0, &o, &diag), 0);
        assert_int_equal(
                qcow2_inspect(o.img, &(Qcow2InspectOptions){ .scan = true }, &info, &diag), 0);
        assert_int_equal(info.data_clusters, 120);
        assert_int_equal(info.zero_data_clusters, 80);
        assert_int_equal(
                qcow2_compact(o.img, &(Qcow2CompactOptions){ .dry_run = true }, &dry, &diag), 0);
        size_t len;
        const uint8_t *d = io_memory_data(o.io, &len);
        assert_int_equal(len, b.len);
        assert_memory_equal(d, b.data, len); /* dry run wrote nothing */
        close_mem(&o);

        assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
        assert_int_equal(qcow2_compact(o.img, NULL, &real, &diag), 0);
        assert_int_equal(dry.file_size_after, real.file_size_after);
        assert_int_equal(info.compacted_size_estimate, real.file_size_after);
        assert_int_equal(dry.clusters_zeroed, real.clusters_zeroed);
        assert_int_equal(real.file_size_after, (3 + 1 + 1 + 40) * 4096);
        close_mem(&o);
        free(b.data);
}

/* Raw deflate (QEMU's window of 4 KiB) of len bytes of in into out; returns the stream's size. */
static size_t deflate_raw(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
        z_stream z = { 0 };
        assert_int_equal(
                deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY),
                Z_OK);
        z.next_in = (Bytef *) (uintptr_t) in;
        z.avail_in = (uInt) len;
        z.next_out = out;
        z.avail_out = (uInt) cap;
        assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
        size_t n = z.total_out;
        (void) deflateEnd(&z);
        return n;
}

/* The exact length of a compressed stream, followed by other bytes (the next stream). */
static void test_stream_length(void **state) {
        enum { CS = 4096 };
        Qcow2Image img = { .cluster_size = CS };
        uint8_t data[CS], half[CS], buf[3 * CS], out[CS];
        size_t n, got = 0;

        for (size_t i = 0; i < CS; i++) {
                data[i] = (uint8_t) (i % 7 + 'a');
                half[i] = i < CS / 2 ? (uint8_t) (i * 2654435761u >> 13) : 'x';
        }
        for (int t = 0; t < 2; t++) {
                const uint8_t *src = t ? half : data;
                /* deflate */
                img.compression_type = 0;
                memset(buf, 0x5a, sizeof(buf));
                n = deflate_raw(src, CS, buf, sizeof(buf));
                assert_true(n > 0 && n < CS);
                assert_int_equal(qcow2_stream_length(&img, buf, n + 700, out, &got), 0);
                assert_int_equal(got, n);
                assert_memory_equal(out, src, CS);
                assert_int_equal(qcow2_stream_length(&img, buf, n, out, &got), 0);
                assert_int_equal(got, n);
                got = 1;
                assert_int_equal(qcow2_stream_length(&img, buf, n - 1, out, &got), -EBADMSG);
                assert_int_equal(got, 1); /* untouched on failure */
                /* zstd: one frame */
                img.compression_type = 1;
                memset(buf, 0xa5, sizeof(buf));
                n = ZSTD_compress(buf, sizeof(buf), src, CS, 3);
                assert_false(ZSTD_isError(n));
                assert_int_equal(qcow2_stream_length(&img, buf, n + 511, out, &got), 0);
                assert_int_equal(got, n);
                assert_memory_equal(out, src, CS);
                assert_int_equal(qcow2_stream_length(&img, buf, n - 1, out, &got), -EBADMSG);
        }
        /* a stream that decodes to less than one cluster has no known length */
        img.compression_type = 0;
        n = deflate_raw(data, CS / 2, buf, sizeof(buf));
        assert_int_equal(qcow2_stream_length(&img, buf, n + 100, out, &got), -EBADMSG);
        img.compression_type = 1;
        n = ZSTD_compress(buf, sizeof(buf), data, CS / 2, 3);
        assert_int_equal(qcow2_stream_length(&img, buf, n + 100, out, &got), -EBADMSG);
        /* garbage */
        memset(buf, 0xff, sizeof(buf));
        assert_int_equal(qcow2_stream_length(&img, buf, 600, out, &got), -EBADMSG);
        img.compression_type = 0;
        assert_int_equal(qcow2_stream_length(&img, buf, 600, out, &got), -EBADMSG);
        (void) state;
}

static void test_preallocated_skipped(void **state) {
        uint16_t content[64];
        for (size_t i = 0; i < ELEMENTSOF(content); i++)
                content[i] = C_ZEROS; /* every cluster allocated, in guest order */
        Spec s = { .cluster_bits = 12,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = 64 * 4096,
                   .content = content,
                   .n_content = 64 };
        Built b = build_image(&s);
        Qcow2Diag diag = { { 0 } };
        Qcow2CompactStats st;
        Opened o;

        assert_int_equal(open_mem(&b, QCOW2_OPEN_WRITE, &o, &diag), 0);
        assert_int_equal(qcow2_compact(o.img, NULL, &st, &diag), 0);
        assert_true(st.skipped_preallocated);
        assert_int_equal(st.file_size_after, b.len);
        assert_int_equal(
                qcow2_compact(o.img, &(Qcow2CompactOptions){ .force = true }, &st, &diag), 0);
        assert_false(st.skipped_preallocated);
        assert_int_equal(st.file_size_after, (3 + 1) * 4096); /* every table freed */
        close_mem(&o);
        free(b.data);
}

/* ---- the zero scan's read-ahead announcements ---- */

typedef struct Recorded {
        size_t prefetches;
        uint64_t prefetch_bytes, max_prefetch;
        uint64_t read_bytes;
        uint64_t hole_lo; /* the layer reports [hole_lo, EOF) as a hole (0: no holes) */
} Recorded;

static int rec_next_hole(IoBackend *io, uint64_t off, uint64_t *ret) {
        Recorded *r = io->userdata;
        uint64_t size;
        int k = io_size(io->next, &size);
        if (k < 0)
                return k;
        *ret = r->hole_lo ? MAX(off, r->hole_lo) : size;
        return 0;
}

static int rec_next_data(IoBackend *io, uint64_t off, uint64_t *ret) {
        Recorded *r = io->userdata;
        uint64_t size;
        int k = io_size(io->next, &size);
        if (k < 0)
                return k;
        *ret = r->hole_lo && off >= r->hole_lo ? size : off;
        return 0;
}

static int rec_pread(IoBackend *io, void *buf, size_t len, uint64_t off) {
        ((Recorded *) io->userdata)->read_bytes += len;
        return io_next_pread(io, buf, len, off);
}

static int rec_prefetch(IoBackend *io, uint64_t off, uint64_t len) {
        Recorded *r = io->userdata;
        r->prefetches++;
        r->prefetch_bytes += len;
        r->max_prefetch = MAX(r->max_prefetch, len);
        return 0;
}

static void rec_close(IoBackend *io) {
}

static const IoOps rec_ops = {
        .name = "record",
        .pread = rec_pread,
        .prefetch = rec_prefetch,
        .next_data = rec_next_data,
        .next_hole = rec_next_hole,
        .close = rec_close,
};

/*
 * Scans (simulated zero pass) an image of n_data 64 KiB data clusters, every zero_mod-th all zeros,
 * with a free cluster after every gap_every-th one (0: one contiguous run), and records what
 * the scan announced and read. The last hole_tail clusters of the file are reported as a
 * hole (they then read as zeros, whatever the memory holds).
 */
static void
scan_recorded(size_t n_data, size_t zero_mod, size_t gap_every, size_t hole_tail, Recorded *rec) {
        uint16_t *content = calloc(n_data + 1, sizeof(uint16_t));
        assert_non_null(content);
        for (size_t i = 0; i < n_data; i++)
                content[i] = i % zero_mod == zero_mod - 1 ? C_ZEROS : (uint16_t) (1 + i % 200);
        Spec s = { .cluster_bits = 16,
                   .refcount_order = 4,
                   .version = 3,
                   .virtual_size = (n_data + 1) * 65536, /* the last one unallocated */
                   .content = content,
                   .n_content = n_data,
                   .free_gap_every = gap_every };
        Built b = build_image(&s);
        Qcow2Diag diag = { { 0 } };
        ZeroPassResult z;
        Opened o;

        *rec = (Recorded){ .hole_lo = hole_tail ? b.len - hole_tail * 65536 : 0 };
        assert_int_equal(io_memory_new(b.data, b.len, &o.io), 0);
        IoBackend *top = io_backend_new(&rec_ops, rec, o.io);
        assert_non_null(top);
        o.io = top;
        assert_int_equal(qcow2_open(o.io, 0, &o.img, &diag), 0);
        assert_int_equal(qcow2_walk(o.img, &diag), 0);
        rec->read_bytes = 0; /* count the scan only */
        assert_int_equal(qcow2_zero_pass(o.img, true, &z), 0);
        size_t live = n_data - hole_tail; /* the hole is at the end: data clusters only */
        assert_int_equal(z.zero_data_clusters, live / zero_mod + hole_tail);
        close_mem(&o);
        free(b.data);
        free(content);
}

static void test_scan_short_runs_probed(void **state) {
        Recorded rec;

        /*
         * One contiguous 8 MiB run: read once, never announced (WILLNEED would read it into
         * 4 KiB pages; the sequential reads get the kernel's large-folio read-ahead).
         */
        scan_recorded(128, 4, 0, 0, &rec);
        assert_int_equal(rec.prefetches, 0);
        assert_int_equal(rec.read_bytes, 128 * 65536 + 65536); /* + the L2 table */

        /*
         * Runs of two clusters between free ones (a trimmed guest). Data cluster i lies at
         * metadata + i + i / 2 (a free cluster after every second one), and metadata + 128
         * clusters are in use: those with i + i / 2 < 128 may stay, the rest must move.
         */
        size_t stay = 0;
        while (stay + stay / 2 < 128)
                stay++;
        assert_int_equal(stay % 2, 0); /* the boundary falls between two runs */
        size_t stay_zeros = stay / 4;  /* i % 4 == 3 */

        /*
         * Those that may stay: each cluster's first 4 KiB is announced and read (the probe), and
         * only the all-zero ones are read further. Those that move are announced and read
         * whole, as a run, so that the copies find them in the page cache.
         */
        scan_recorded(128, 4, 2, 0, &rec);
        assert_int_equal(rec.prefetches, stay + (128 - stay) / 2);
        assert_int_equal(rec.prefetch_bytes, stay * 4096 + (128 - stay) * 65536);
        assert_int_equal(rec.max_prefetch, 2 * 65536);
        assert_int_equal(
                rec.read_bytes,
                stay * 4096 + stay_zeros * (65536 - 4096) + (128 - stay) * 65536 + 65536);

        /*
         * Half of them zeros: after 64 probes (32 found zeros, each read twice) the rest of the
         * scan reads the short runs whole again.
         */
        scan_recorded(128, 2, 2, 0, &rec);
        assert_int_equal(rec.prefetch_bytes, stay * 4096 + (128 - stay) * 65536); /* ahead */
        assert_int_equal(rec.read_bytes, 64 * 4096 + 32 * (65536 - 4096) + 64 * 65536 + 65536);

        /* The last 64 data clusters lie in a hole: zeros, and never read. */
        scan_recorded(128, 4, 0, 64, &rec);
        assert_int_equal(rec.read_bytes, 64 * 65536 + 65536);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_refblock_widths),
                cmocka_unit_test(test_buffer_is_zero),
                cmocka_unit_test(test_header_validation),
                cmocka_unit_test(test_compact_every_width_and_size),
                cmocka_unit_test(test_compact_v2_and_backing),
                cmocka_unit_test(test_zero_alloc_and_empty_l2),
                cmocka_unit_test(test_corruption_refused),
                cmocka_unit_test(test_leaks_repaired),
                cmocka_unit_test(test_inspect_and_dry_run_agree),
                cmocka_unit_test(test_preallocated_skipped),
                cmocka_unit_test(test_scan_short_runs_probed),
                cmocka_unit_test(test_stream_length),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
