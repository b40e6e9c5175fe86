/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Zero pass: allocated data clusters that read as all zeros are released.
 *
 *   no backing file      -> entry 0 (unallocated reads as zeros), v2 and v3; an L2 table left
 *                           with nothing allocated is freed and its L1 entry cleared
 *   backing file, v3     -> zero flag (0x1): reads zeros without consulting the backing file
 *   backing file, v2     -> kept: v2 has no zero flag
 *
 * Zero-alloc entries (zero flag + host cluster) hold a cluster that is never read: released
 * without reading it. Shared clusters and shared L2 tables (refcount > 1) are left alone.
 *
 * Finding zeros is the expensive part, so: holes in the host file (SEEK_DATA) cost no I/O,
 * candidates are read in host order, and a cluster's scan stops at its first non-zero byte
 * (a small probe first, then the rest).
 *
 * Ordering per group of L2 tables (leak-only, DESIGN.md): (C) rewrite L2 entries and clear L1
 * entries of emptied tables, flush; (D) lower the refcounts of the released clusters, flush.
 */

#include "qcow2-internal.h"

#define ZERO_GROUP_BYTES (8u << 20) /* L2 tables held in memory per group */
#define ZERO_PROBE 4096u

bool qcow2_buffer_is_zero(const void *buf, size_t len) {
        const uint8_t *p = buf;

        if (len == 0)
                return true;
        /* Check 16 bytes by hand, then compare the buffer with itself shifted by 16 bytes. */
        for (size_t i = 0; i < MIN(len, (size_t) 16); i++)
                if (p[i])
                        return false;
        if (len <= 16)
                return true;
        return memcmp(p, p + 16, len - 16) == 0;
}

typedef struct ZTable {
        uint64_t l1_index;
        uint64_t offset;
        uint8_t *buf;
        uint32_t dirty_lo, dirty_hi; /* entries */
        bool freed;
} ZTable;

typedef struct ZCand {
        uint64_t host;  /* host offset of the data cluster */
        uint32_t table; /* index into the group's tables */
        uint32_t entry;
        bool zero_alloc; /* released without reading: the entry already says "zeros" */
} ZCand;

typedef struct HoleCache {
        uint64_t hole_lo, hole_hi;
        uint64_t data_lo, data_hi;
} HoleCache;

static int cmp_cand(const void *a, const void *b) {
        const ZCand *x = a, *y = b;
        return x->host < y->host ? -1 : x->host > y->host;
}

/* Does [off, off+len) lie entirely in a hole of the host file? */
static int range_is_hole(Qcow2Image *img, HoleCache *hc, uint64_t off, uint64_t len) {
        uint64_t d, h;
        int r;

        if (off >= hc->hole_lo && off + len <= hc->hole_hi)
                return 1;
        if (off >= hc->data_lo && off < hc->data_hi)
                return 0;
        r = io_next_data(img->io, off, &d);
        if (r < 0)
                return r;
        if (d > off) {
                hc->hole_lo = off;
                hc->hole_hi = d;
                if (d >= off + len)
                        return 1;
        }
        r = io_next_hole(img->io, d, &h);
        if (r < 0)
                return r;
        hc->data_lo = d;
        hc->data_hi = MAX(h, d + 1);
        return 0;
}

/* 1 if the cluster at host offset `off` reads as all zeros, 0 if not, -errno on error. */
static int cluster_is_zero(Qcow2Image *img, HoleCache *hc, uint8_t *buf, uint64_t off) {
        uint64_t len = img->cluster_size;
        int r;

        /* A cluster partly past the end of the file reads zeros there (QEMU tolerates it). */
        if (off >= img->file_size)
                return 1;
        len = MIN(len, img->file_size - off);

        r = range_is_hole(img, hc, off, len);
        if (r != 0)
                return r;

        uint64_t probe = MIN(len, (uint64_t) ZERO_PROBE);
        r = io_pread(img->io, buf, probe, off);
        if (r < 0)
                return r;
        if (!qcow2_buffer_is_zero(buf, probe))
                return 0;
        for (uint64_t pos = probe; pos < len;) {
                uint64_t n = MIN(len - pos, (uint64_t) 1 << 20);
                r = io_pread(img->io, buf, n, off + pos);
                if (r < 0)
                        return r;
                if (!qcow2_buffer_is_zero(buf, n))
                        return 0;
                pos += n;
        }
        return 1;
}

static void table_set(Qcow2Image *img, ZTable *t, uint32_t j, uint64_t value) {
        wr64(t->buf + (uint64_t) j * img->l2_entry_size, value);
        if (t->dirty_lo >= t->dirty_hi) {
                t->dirty_lo = j;
                t->dirty_hi = j + 1;
        } else {
                t->dirty_lo = MIN(t->dirty_lo, j);
                t->dirty_hi = MAX(t->dirty_hi, j + 1);
        }
}

/* Writes L1 entries [lo, hi) from memory. */
static int l1_write_span(Qcow2Image *img, uint64_t lo, uint64_t hi) {
        _cleanup_free_ uint8_t *buf = NULL;

        if (hi <= lo)
                return 0;
        buf = malloc((hi - lo) * 8);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = lo; i < hi; i++)
                wr64(buf + (i - lo) * 8, img->l1[i]);
        return qcow2_write(img, IO_EV_L1_UPDATE, buf, (hi - lo) * 8, img->l1_offset + lo * 8);
}

/* Lowers refcount of cluster c by one (in memory only when simulating). */
static int release_cluster(Qcow2Image *img, uint64_t c, bool simulate) {
        uint64_t v = img->refcount[c] ? img->refcount[c] - 1 : 0;
        if (v == 0)
                img->kind[c] = CK_FREE;
        if (simulate) {
                img->refcount[c] = (uint32_t) v;
                return 0;
        }
        return qcow2_rc_set(img, c, v);
}

static int process_group(
        Qcow2Image *img,
        ZTable *tables,
        size_t nt,
        ZCand *cands,
        size_t nc,
        uint8_t *buf,
        HoleCache *hc,
        bool simulate,
        ZeroPassResult *res) {
        bool backing = img->backing_offset != 0;
        /* v2 with a backing file has no way to express "zeros" without a host cluster. */
        bool can_release = !(img->version < 3 && backing);
        uint64_t new_entry = backing ? QCOW_OFLAG_ZERO : 0;
        uint64_t l1_lo = UINT64_MAX, l1_hi = 0;
        int r;

        /* Scan candidates in host order; release the zero ones (entry rewritten in memory). */
        qsort(cands, nc, sizeof(ZCand), cmp_cand);
        for (size_t k = 0; k < nc; k++) {
                if (cands[k].zero_alloc)
                        continue;
                r = cluster_is_zero(img, hc, buf, cands[k].host);
                if (r < 0)
                        return r;
                if (r == 0) {
                        cands[k].host = UINT64_MAX; /* keep */
                        continue;
                }
                res->zero_data_clusters++;
                if (!can_release) {
                        cands[k].host = UINT64_MAX; /* counted, but kept */
                        continue;
                }
                table_set(img, &tables[cands[k].table], cands[k].entry, new_entry);
        }

        /* Tables left with nothing allocated are freed (only without a backing file). */
        for (size_t t = 0; t < nt; t++) {
                ZTable *tb = &tables[t];
                bool empty = !backing;
                for (uint64_t j = 0; empty && j < img->l2_entries; j++) {
                        L2Type ty = qcow2_l2_type(img, rd64(tb->buf + j * img->l2_entry_size));
                        if (ty != L2_UNALLOCATED && ty != L2_ZERO_PLAIN)
                                empty = false;
                }
                if (empty) {
                        tb->freed = true;
                        img->l1[tb->l1_index] = 0;
                        l1_lo = MIN(l1_lo, tb->l1_index);
                        l1_hi = MAX(l1_hi, tb->l1_index + 1);
                        res->l2_tables_freed++;
                }
        }

        if (!simulate) {
                /* (C) remove the references */
                for (size_t t = 0; t < nt; t++) {
                        ZTable *tb = &tables[t];
                        if (tb->freed || tb->dirty_lo >= tb->dirty_hi)
                                continue;
                        uint64_t blo = (uint64_t) tb->dirty_lo * img->l2_entry_size;
                        uint64_t bhi = (uint64_t) tb->dirty_hi * img->l2_entry_size;
                        r = qcow2_write(
                                img, IO_EV_L2_UPDATE, tb->buf + blo, bhi - blo, tb->offset + blo);
                        if (r < 0)
                                return r;
                }
                if (l1_hi > 0) {
                        r = l1_write_span(img, l1_lo, l1_hi);
                        if (r < 0)
                                return r;
                }
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
        }

        /* (D) lower the refcounts */
        for (size_t t = 0; t < nt; t++) {
                ZTable *tb = &tables[t];
                if (tb->freed) {
                        r = release_cluster(img, cluster_of(img, tb->offset), simulate);
                        if (r < 0)
                                return r;
                }
        }
        for (size_t k = 0; k < nc; k++) {
                if (cands[k].host == UINT64_MAX)
                        continue;
                r = release_cluster(img, cluster_of(img, cands[k].host), simulate);
                if (r < 0)
                        return r;
                res->clusters_zeroed++;
        }
        if (!simulate) {
                r = qcow2_rc_write_dirty(img);
                if (r < 0)
                        return r;
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
        }
        return 0;
}

int qcow2_zero_pass(Qcow2Image *img, bool simulate, ZeroPassResult *ret) {
        _cleanup_free_ ZTable *tables = NULL;
        _cleanup_free_ ZCand *cands = NULL;
        _cleanup_free_ uint8_t *pool = NULL, *buf = NULL;
        ZeroPassResult res = { 0 };
        HoleCache hc = { 0 };
        bool backing = img->backing_offset != 0;
        size_t max_tables, nt = 0, nc = 0, max_cands;
        int r;

        if (!img->walked)
                return -EINVAL;
        if (img->l2_entry_size != 8)
                return -EOPNOTSUPP;

        max_tables = MAX((size_t) 1, (size_t) (ZERO_GROUP_BYTES / img->cluster_size));
        max_cands = max_tables * img->l2_entries;
        tables = calloc(max_tables, sizeof(ZTable));
        cands = calloc(max_cands, sizeof(ZCand));
        pool = malloc(max_tables * img->cluster_size);
        buf = malloc(MIN(img->cluster_size, (uint64_t) 1 << 20));
        if (!tables || !cands || !pool || !buf)
                return -ENOMEM;

        for (uint64_t i = 0; i < img->l1_size; i++) {
                uint64_t l2off = img->l1[i] & L1E_OFFSET_MASK;
                if (!l2off || img->refcount[cluster_of(img, l2off)] != 1)
                        continue;

                ZTable *tb = &tables[nt];
                *tb = (ZTable){ .l1_index = i,
                                .offset = l2off,
                                .buf = pool + nt * img->cluster_size };
                r = qcow2_read_l2(img, l2off, tb->buf);
                if (r < 0)
                        return r;
                for (uint64_t j = 0; j < img->l2_entries; j++) {
                        uint64_t e = rd64(tb->buf + j * 8);
                        L2Type ty = qcow2_l2_type(img, e);
                        uint64_t off = e & L2E_OFFSET_MASK;
                        if (ty != L2_NORMAL && ty != L2_ZERO_ALLOC)
                                continue;
                        if (img->refcount[cluster_of(img, off)] != 1)
                                continue; /* shared: not changed through one referrer */
                        if (ty == L2_ZERO_ALLOC) {
                                /* Reads as zeros already; the host cluster is never read. */
                                res.zero_data_clusters++;
                                table_set(img, tb, (uint32_t) j, backing ? QCOW_OFLAG_ZERO : 0);
                                cands[nc++] = (ZCand){ .host = off,
                                                       .table = (uint32_t) nt,
                                                       .entry = (uint32_t) j,
                                                       .zero_alloc = true };
                                continue;
                        }
                        cands[nc++] = (ZCand){ .host = off,
                                               .table = (uint32_t) nt,
                                               .entry = (uint32_t) j };
                }
                nt++;
                if (nt == max_tables) {
                        r = process_group(img, tables, nt, cands, nc, buf, &hc, simulate, &res);
                        if (r < 0)
                                return r;
                        nt = nc = 0;
                }
                if ((i & 63) == 0)
                        qcow2_progress(img, "scan", i, img->l1_size);
        }
        if (nt > 0) {
                r = process_group(img, tables, nt, cands, nc, buf, &hc, simulate, &res);
                if (r < 0)
                        return r;
        }
        qcow2_progress(img, "scan", img->l1_size, img->l1_size);
        *ret = res;
        return 0;
}
