/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Zero pass: allocated data clusters that read as all zeros are released.
 *
 *   no backing file      -> entry 0 (unallocated reads as zeros), v2 and v3; an L2 table left
 *                           with nothing allocated is freed and every L1 entry to it cleared
 *   backing file, v3     -> zero flag (0x1), or for extended L2 the subclusters' zero bits
 *   backing file, v2     -> counted, kept: v2 has no zero flag
 *
 * Every L2 table of every L1 (active and snapshots) is visited once. A table shared by p L1
 * entries gives each of its entries p references, so rewriting one entry there removes p
 * references. Rewriting a shared table in place is fine because the change preserves what
 * every view reads. A shared data cluster gets the same decision at each referrer (the zero
 * test is cached per host cluster), so it is released everywhere or nowhere; its refcount
 * only drops once its last reference is gone (qcow2_release_refs), so a crash in between
 * leaves a leak and no COPIED flag that is still referenced changes meaning. Compressed
 * clusters counted above their references are left alone.
 *
 * Zero-alloc entries (and extended entries with a host cluster but no allocated subcluster)
 * are released without reading. Compressed clusters are inflated to test them.
 *
 * Finding zeros is the expensive part, so: holes in the host file (SEEK_DATA) cost no I/O,
 * candidates are read in host order, and a cluster's scan stops at its first non-zero byte
 * (a small probe first, then the rest).
 *
 * Ordering per group of L2 tables (leak-only, DESIGN.md): (C) rewrite L2 entries and clear the
 * L1 entries of emptied tables, flush; (D) lower the refcounts of what was released, flush.
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
        uint64_t cluster;
        uint64_t paths; /* L1 entries pointing at this table */
        uint8_t *buf;
        uint32_t lo, hi; /* dirty entries */
        bool freed;
} ZTable;

typedef enum ZKind {
        ZK_TEST,       /* standard data cluster: read and test */
        ZK_NOREAD,     /* reads as zeros already (zero-alloc, no allocated subcluster) */
        ZK_EXT,        /* extended entry: test the allocated subclusters */
        ZK_COMPRESSED, /* inflate and test */
} ZKind;

typedef struct ZCand {
        uint64_t host;   /* host offset (byte offset for compressed streams) */
        uint64_t entry;  /* first 8 bytes of the entry */
        uint64_t bitmap; /* extended L2 subcluster bitmap */
        uint32_t table;
        uint32_t j;
        uint8_t kind;
        bool zero;
} ZCand;

typedef struct HoleCache {
        uint64_t hole_lo, hole_hi;
        uint64_t data_lo, data_hi;
} HoleCache;

typedef struct ZCtx {
        Qcow2Image *img;
        bool simulate;
        bool can_release;
        bool backing;
        HoleCache hc;
        uint8_t *buf;                 /* one cluster */
        uint8_t *chunk;               /* SCAN_CHUNK bytes, at least one cluster */
        uint8_t *cbuf;                /* compressed input (two clusters) */
        uint8_t *tested, *is_zero;    /* whole-cluster test cache, bitmaps over host clusters */
        uint64_t *l1_lo, *l1_hi;      /* dirty span per L1 table */
        uint64_t probes, probe_zeros; /* clusters of short ranges tested by a probe first */
        bool probe_off;               /* too many probes found zeros: read short ranges whole */
        uint64_t stay_end;            /* host offset: data below it may stay, past it moves */
        ZeroPassResult res;
} ZCtx;

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
        /*
         * SEEK_HOLE first: a candidate run normally starts in data, and then one call gives
         * the whole data extent. Only a run that starts in a hole needs SEEK_DATA as well.
         */
        r = io_next_hole(img->io, off, &h);
        if (r < 0)
                return r;
        if (h > off) {
                hc->data_lo = off;
                hc->data_hi = h;
                return 0;
        }
        r = io_next_data(img->io, off, &d);
        if (r < 0)
                return r;
        if (d <= off)
                return 0; /* no hole after all (the file changed under us?): read it */
        hc->hole_lo = off;
        hc->hole_hi = d;
        return d >= off + len;
}

/* 1 if host bytes [off, off+len) read as zeros (past EOF counts as zeros), 0 if not. */
static int range_is_zero(ZCtx *z, uint64_t off, uint64_t len) {
        Qcow2Image *img = z->img;
        int r;

        if (off >= img->file_size)
                return 1;
        len = MIN(len, img->file_size - off);
        r = range_is_hole(img, &z->hc, off, len);
        if (r != 0)
                return r;
        uint64_t probe = MIN(len, (uint64_t) ZERO_PROBE);
        r = io_pread(img->io, z->buf, probe, off);
        if (r < 0)
                return r;
        if (!qcow2_buffer_is_zero(z->buf, probe))
                return 0;
        for (uint64_t pos = probe; pos < len;) {
                uint64_t n = MIN(len - pos, img->cluster_size);
                r = io_pread(img->io, z->buf, n, off + pos);
                if (r < 0)
                        return r;
                if (!qcow2_buffer_is_zero(z->buf, n))
                        return 0;
                pos += n;
        }
        return 1;
}

/* Whole host cluster c reads as zeros? Cached: a shared cluster is tested once. */
static int cluster_is_zero(ZCtx *z, uint64_t c) {
        if (!bm_get(z->tested, c)) {
                int r = range_is_zero(z, offset_of(z->img, c), z->img->cluster_size);
                if (r < 0)
                        return r;
                bm_set(z->tested, c);
                if (r)
                        bm_set(z->is_zero, c);
        }
        return bm_get(z->is_zero, c);
}

#define SCAN_CHUNK (4u << 20)

/*
 * Tests every untested cluster among the candidates that need reading, as runs of consecutive
 * host clusters read with large sequential reads (cands sorted by host offset). Small scattered
 * probes are latency-bound on virtual disks; one pass over each run is not, and leaves the data
 * in the page cache for the copies that follow.
 */
#define PREFETCH_AHEAD (64u << 20)

/*
 * The contiguous host range [*ret_lo, *ret_hi) of the ZK_TEST candidates from cands[k] on
 * (cands[k] is one); returns the index of the first candidate past it.
 */
static size_t test_range(
        const Qcow2Image *img,
        const ZCand *cands,
        size_t nc,
        size_t k,
        uint64_t *ret_lo,
        uint64_t *ret_hi) {
        uint64_t lo = cands[k].host, hi = lo + img->cluster_size;

        for (k++; k < nc; k++) {
                if (cands[k].kind != ZK_TEST)
                        continue;
                uint64_t o = cands[k].host;
                if (o > hi)
                        break;
                hi = MAX(hi, o + img->cluster_size); /* o == hi, or a cluster seen twice */
        }
        *ret_lo = lo;
        *ret_hi = hi;
        return k;
}

/*
 * Short ranges (shorter than SCAN_CHUNK, between holes: a guest that trims) are tested cluster
 * by cluster, by their first ZERO_PROBE bytes first, when clusters are large enough for that
 * to save much: live data almost always has a non-zero byte there, so a trimmed guest's live
 * data costs 1/16 of its size in reads (64 KiB clusters) instead of all of it. That is for the
 * data that stays where it is: past stay_end everything moves, and is read whole as before,
 * so that the copies find it in the page cache (reading it during the copies, between their
 * writes, was slower). When probes keep finding zeros (more than one in four after 64), each
 * of those clusters needs a second, unannounced read: the rest of the scan then reads short
 * ranges whole again.
 */
static bool probe_first(const ZCtx *z) {
        return !z->probe_off && z->img->cluster_size >= 4 * ZERO_PROBE;
}

static void probe_count(ZCtx *z, bool zero) {
        z->probes++;
        z->probe_zeros += zero;
        if (z->probes >= 64 && z->probe_zeros * 4 > z->probes)
                z->probe_off = true;
}

/* Probe this short range (see probe_first), or read it whole? */
static bool probe_range(const ZCtx *z, uint64_t lo) {
        return probe_first(z) && lo < z->stay_end;
}

static int scan_runs(ZCtx *z, const ZCand *cands, size_t nc, uint8_t *chunk) {
        Qcow2Image *img = z->img;
        uint64_t per = MAX((uint64_t) 1, SCAN_CHUNK / img->cluster_size);
        uint64_t announced = 0; /* bytes of candidates ahead of the reads already looked at */
        size_t ahead = 0;       /* first candidate not looked at for announcing */
        _cleanup_free_ uint8_t *in_short = NULL; /* per candidate: in a short range */
        int r;

        if (probe_first(z)) {
                in_short = calloc(nc + 1, 1);
                if (!in_short)
                        return -ENOMEM;
                for (size_t k = 0; k < nc;) {
                        if (cands[k].kind != ZK_TEST) {
                                k++;
                                continue;
                        }
                        uint64_t lo, hi;
                        size_t end = test_range(img, cands, nc, k, &lo, &hi);
                        if (hi - lo < SCAN_CHUNK)
                                memset(in_short + k, 1, end - k);
                        k = end;
                }
        }

        /*
         * Live data between holes (a guest that trims) is read as many short runs; read-ahead
         * only follows one sequential stream, so the short ranges of the next 64 MiB are
         * announced: the kernel then reads them in parallel while we test the current one.
         * Long ranges are not announced: the sequential reads over them get the kernel's own
         * read-ahead, which reads into large folios, where an announced range (WILLNEED) is
         * read into 4 KiB pages; on a 3 GiB scan that was ~40% of the CPU time, plus the cost
         * of freeing all those pages again when the tail is truncated.
         */

        for (size_t k = 0; k < nc;) {
                if (cands[k].kind != ZK_TEST || bm_get(z->tested, cluster_of(img, cands[k].host))) {
                        k++;
                        continue;
                }
                uint64_t first = cluster_of(img, cands[k].host), n = 1;
                size_t e = k + 1;
                if (ahead < k)
                        ahead = k;
                while (ahead < nc && announced < PREFETCH_AHEAD) {
                        if (cands[ahead].kind != ZK_TEST) {
                                ahead++;
                                continue;
                        }
                        uint64_t lo, hi;
                        size_t a0 = ahead; /* may be inside a long range: in_short decides */
                        ahead = test_range(img, cands, nc, ahead, &lo, &hi);
                        if (hi - lo >= SCAN_CHUNK)
                                ; /* read sequentially, with the kernel's read-ahead */
                        else if (in_short && in_short[a0] && probe_range(z, lo))
                                for (uint64_t o = lo; o < hi; o += img->cluster_size)
                                        io_prefetch(img->io, o, ZERO_PROBE);
                        else
                                io_prefetch(img->io, lo, hi - lo);
                        announced += hi - lo;
                }
                /* Extend over the following candidates while their clusters stay consecutive. */
                while (e < nc && n < per) {
                        if (cands[e].kind != ZK_TEST) {
                                e++;
                                continue;
                        }
                        uint64_t c = cluster_of(img, cands[e].host);
                        if (c == first + n - 1) { /* the same cluster referenced twice */
                                e++;
                                continue;
                        }
                        if (c != first + n)
                                break;
                        n++;
                        e++;
                }
                uint64_t off = offset_of(img, first), len = n * img->cluster_size;
                uint64_t avail = off < img->file_size ? MIN(len, img->file_size - off) : 0;
                r = avail ? range_is_hole(img, &z->hc, off, avail) : 1;
                if (r < 0)
                        return r;
                announced = announced > len ? announced - len : 0;
                if (r > 0) {
                        /*
                         * A hole (or past EOF) reads as zeros: no read, and no zero test
                         * either (a preallocated 1 TiB image is nothing but holes; filling and
                         * testing 1 TiB of buffer took ~90% of its run).
                         */
                        for (uint64_t q = 0; q < n; q++) {
                                bm_set(z->tested, first + q);
                                bm_set(z->is_zero, first + q);
                        }
                        k = e;
                        continue;
                }
                if (in_short && in_short[k] && probe_range(z, off)) {
                        for (uint64_t q = 0; q < n; q++) {
                                r = cluster_is_zero(z, first + q);
                                if (r < 0)
                                        return r;
                                probe_count(z, r > 0);
                        }
                        k = e;
                        continue;
                }
                r = io_pread(img->io, chunk, avail, off);
                if (r < 0)
                        return r;
                memset(chunk + avail, 0, len - avail);
                for (uint64_t q = 0; q < n; q++) {
                        bm_set(z->tested, first + q);
                        if (qcow2_buffer_is_zero(chunk + q * img->cluster_size, img->cluster_size))
                                bm_set(z->is_zero, first + q);
                }
                k = e;
        }
        return 0;
}

static int decide(ZCtx *z, ZCand *cd) {
        Qcow2Image *img = z->img;
        uint64_t c = cluster_of(img, cd->host);
        int r;

        switch (cd->kind) {
        case ZK_NOREAD:
                /*
                 * Reads zeros here, but a shared cluster is dropped only where every referrer
                 * can drop it: another referrer may read its data, so ask the content.
                 */
                if (qcow2_refs_of(img, c) > 1)
                        return cluster_is_zero(z, c);
                return 1;
        case ZK_TEST:
                return cluster_is_zero(z, c);
        case ZK_EXT: {
                if (bm_get(z->tested, c) && bm_get(z->is_zero, c))
                        return 1;
                /* A shared cluster needs one decision for all referrers: the whole cluster. */
                if (qcow2_refs_of(img, c) > 1)
                        return cluster_is_zero(z, c);
                uint64_t sub = img->cluster_size / 32;
                for (unsigned k = 0; k < 32; k++) {
                        if (!(cd->bitmap & (1ULL << k)))
                                continue;
                        r = range_is_zero(z, cd->host + k * sub, sub);
                        if (r <= 0)
                                return r;
                }
                return 1;
        }
        case ZK_COMPRESSED: {
                uint64_t coff, clen;
                qcow2_compressed_range(img, cd->entry, &coff, &clen);
                clen = MIN(clen, 2 * img->cluster_size);
                if (coff >= img->file_size)
                        return 0;
                clen = MIN(clen, img->file_size - coff);
                r = io_pread(img->io, z->cbuf, clen, coff);
                if (r < 0)
                        return r;
                if (qcow2_decompress(img, z->cbuf, clen, z->buf) < 0)
                        return 0; /* undecodable: not ours to judge, keep it */
                return qcow2_buffer_is_zero(z->buf, img->cluster_size);
        }
        }
        return 0;
}

static void table_set(Qcow2Image *img, ZTable *t, uint32_t j, uint64_t entry, uint64_t bitmap) {
        wr64(t->buf + (uint64_t) j * img->l2_entry_size, entry);
        if (img->l2_entry_size == 16)
                wr64(t->buf + (uint64_t) j * 16 + 8, bitmap);
        if (t->lo >= t->hi) {
                t->lo = j;
                t->hi = j + 1;
        } else {
                t->lo = MIN(t->lo, j);
                t->hi = MAX(t->hi, j + 1);
        }
}

/* n references to cluster c are gone (see qcow2_release_refs). */
static int release(ZCtx *z, uint64_t c, uint64_t n) {
        return qcow2_release_refs(z->img, c, n, z->simulate, false);
}

/* The entry that reads zeros without a host cluster, for this image. */
static void zero_entry(ZCtx *z, const ZCand *cd, uint64_t *ret_entry, uint64_t *ret_bitmap) {
        if (z->img->l2_entry_size == 16) {
                /* spec: subcluster zero bits 32..63; alloc bits 0..31 must be clear */
                uint64_t reads = cd->kind == ZK_COMPRESSED ?
                        0xffffffffULL :
                        (cd->bitmap | (cd->bitmap >> 32)) & 0xffffffffULL;
                *ret_entry = 0;
                *ret_bitmap = z->backing ? reads << 32 : 0;
                return;
        }
        *ret_entry = z->backing ? QCOW_OFLAG_ZERO : 0;
        *ret_bitmap = 0;
}

static bool table_empty(ZCtx *z, const ZTable *t) {
        Qcow2Image *img = z->img;
        if (z->backing)
                return false; /* unallocated would expose the backing file */
        for (uint64_t j = 0; j < img->l2_entries; j++) {
                uint64_t e = l2e_get(img, t->buf, j);
                L2Type ty = qcow2_l2_type(img, e);
                if (ty != L2_UNALLOCATED && ty != L2_ZERO_PLAIN)
                        return false;
        }
        return true;
}

static int process_group(ZCtx *z, ZTable *tables, size_t nt, ZCand *cands, size_t nc) {
        Qcow2Image *img = z->img;
        uint32_t nl1 = img->nb_snapshots + 1;
        int r;

        /* Decide, in host order: first read whatever must be read, run by run. */
        qsort(cands, nc, sizeof(ZCand), cmp_cand);
        r = scan_runs(z, cands, nc, z->chunk);
        if (r < 0)
                return r;
        for (size_t k = 0; k < nc; k++) {
                r = decide(z, &cands[k]);
                if (r < 0)
                        return r;
                cands[k].zero = r > 0;
                if (!cands[k].zero)
                        continue;
                z->res.zero_data_clusters++;
                if (!z->can_release)
                        continue;
                uint64_t e, bm;
                zero_entry(z, &cands[k], &e, &bm);
                table_set(img, &tables[cands[k].table], cands[k].j, e, bm);
        }
        if (!z->can_release)
                return 0;

        /* Tables left with nothing allocated are freed: every L1 entry to them is cleared. */
        for (uint32_t t = 0; t < nl1; t++)
                z->l1_lo[t] = UINT64_MAX, z->l1_hi[t] = 0;
        for (size_t t = 0; t < nt; t++) {
                ZTable *tb = &tables[t];
                if (!table_empty(z, tb))
                        continue;
                tb->freed = true;
                z->res.l2_tables_freed++;
                if (z->simulate)
                        continue; /* the in-memory L1 tables must keep matching the disk */
                size_t lo = 0, hi = img->nb_l1refs;
                while (lo < hi) { /* first reference to this table */
                        size_t mid = lo + (hi - lo) / 2;
                        if (img->l1refs[mid].l2 < tb->cluster)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                for (size_t i = lo; i < img->nb_l1refs && img->l1refs[i].l2 == tb->cluster; i++) {
                        const L1Ref *ref = &img->l1refs[i];
                        uint32_t size;
                        uint64_t off;
                        qcow2_l1_table(img, ref->table, &size, &off)[ref->index] = 0;
                        z->l1_lo[ref->table] = MIN(z->l1_lo[ref->table], (uint64_t) ref->index);
                        z->l1_hi[ref->table] = MAX(z->l1_hi[ref->table], (uint64_t) ref->index + 1);
                }
        }

        if (!z->simulate) {
                /* (C) remove the references */
                for (size_t t = 0; t < nt; t++) {
                        ZTable *tb = &tables[t];
                        if (tb->freed || tb->lo >= tb->hi)
                                continue;
                        uint64_t blo = (uint64_t) tb->lo * img->l2_entry_size;
                        uint64_t bhi = (uint64_t) tb->hi * img->l2_entry_size;
                        r = qcow2_write(
                                img,
                                IO_EV_L2_UPDATE,
                                tb->buf + blo,
                                bhi - blo,
                                offset_of(img, tb->cluster) + blo);
                        if (r < 0)
                                return r;
                }
                for (uint32_t t = 0; t < nl1; t++) {
                        r = qcow2_l1_write_span(img, t, z->l1_lo[t], z->l1_hi[t]);
                        if (r < 0)
                                return r;
                }
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
        }

        /* (D) lower the refcounts: p references per rewritten entry, one per cleared L1 entry */
        for (size_t k = 0; k < nc; k++) {
                ZCand *cd = &cands[k];
                if (!cd->zero)
                        continue;
                uint64_t p = tables[cd->table].paths;
                if (cd->kind == ZK_COMPRESSED) {
                        uint64_t coff, clen;
                        qcow2_compressed_range(img, cd->entry, &coff, &clen);
                        for (uint64_t c = cluster_of(img, coff);
                             c <= cluster_of(img, coff + clen - 1);
                             c++) {
                                r = release(z, c, p);
                                if (r < 0)
                                        return r;
                        }
                } else {
                        r = release(z, cluster_of(img, cd->host), p);
                        if (r < 0)
                                return r;
                }
                z->res.clusters_zeroed++;
        }
        for (size_t t = 0; t < nt; t++)
                if (tables[t].freed) {
                        r = release(z, tables[t].cluster, tables[t].paths);
                        if (r < 0)
                                return r;
                }
        if (!z->simulate) {
                r = qcow2_rc_commit(img);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Collects the entries of one L2 table that may be released. */
static size_t collect(ZCtx *z, ZTable *tb, uint32_t t, ZCand *out) {
        Qcow2Image *img = z->img;
        size_t n = 0;

        for (uint64_t j = 0; j < img->l2_entries; j++) {
                uint64_t e = l2e_get(img, tb->buf, j);
                uint64_t bm = l2e_bitmap(img, tb->buf, j);
                L2Type ty = qcow2_l2_type(img, e);
                uint64_t off = e & L2E_OFFSET_MASK;
                ZCand cd = { .entry = e, .bitmap = bm, .table = t, .j = (uint32_t) j };

                if (ty == L2_COMPRESSED) {
                        uint64_t coff, clen;
                        bool skip = false;
                        qcow2_compressed_range(img, e, &coff, &clen);
                        for (uint64_t c = cluster_of(img, coff);
                             c <= cluster_of(img, coff + clen - 1);
                             c++)
                                skip = skip || bm_get(img->overcounted, c);
                        if (skip)
                                continue;
                        cd.host = coff;
                        cd.kind = ZK_COMPRESSED;
                } else if (ty == L2_NORMAL || ty == L2_ZERO_ALLOC) {
                        cd.host = off;
                        if (img->l2_entry_size == 16)
                                cd.kind = (bm & 0xffffffffULL) ? ZK_EXT : ZK_NOREAD;
                        else
                                cd.kind = ty == L2_ZERO_ALLOC ? ZK_NOREAD : ZK_TEST;
                } else
                        continue;
                out[n++] = cd;
        }
        return n;
}

int qcow2_zero_pass(Qcow2Image *img, bool simulate, ZeroPassResult *ret) {
        _cleanup_free_ ZTable *tables = NULL;
        _cleanup_free_ ZCand *cands = NULL;
        _cleanup_free_ uint8_t *pool = NULL, *buf = NULL, *cbuf = NULL, *tested = NULL,
                               *is_zero = NULL, *chunk = NULL;
        _cleanup_free_ uint64_t *l1_lo = NULL, *l1_hi = NULL;
        size_t max_tables, nt = 0, nc = 0;
        uint64_t bitmap_bytes;
        int r;

        if (!img->walked)
                return -EINVAL;

        ZCtx z = {
                .img = img,
                .simulate = simulate,
                .backing = img->backing_offset != 0,
                /* v2 with a backing file has no way to say "zeros" without a host cluster */
                .can_release = !(img->version < 3 && img->backing_offset != 0),
        };
        /*
         * The relocation's new end cannot lie past the clusters in use now (the zero pass only
         * frees): data at or past that many clusters will move, so the copies will read it.
         */
        z.stay_end = offset_of(img, qcow2_count_used(img));
        max_tables = MAX((size_t) 1, (size_t) (ZERO_GROUP_BYTES / img->cluster_size));
        bitmap_bytes = DIV_ROUND_UP(img->nb_clusters, 8) + 1;
        tables = calloc(max_tables, sizeof(ZTable));
        cands = calloc(max_tables * img->l2_entries, sizeof(ZCand));
        pool = malloc(max_tables * img->cluster_size);
        buf = malloc(img->cluster_size);
        z.chunk = chunk = malloc(MAX((uint64_t) SCAN_CHUNK, img->cluster_size));
        cbuf = malloc(2 * img->cluster_size);
        tested = calloc(1, bitmap_bytes);
        is_zero = calloc(1, bitmap_bytes);
        l1_lo = calloc(img->nb_snapshots + 1, sizeof(uint64_t));
        l1_hi = calloc(img->nb_snapshots + 1, sizeof(uint64_t));
        if (!tables || !cands || !pool || !buf || !chunk || !cbuf || !tested || !is_zero ||
            !l1_lo || !l1_hi)
                return -ENOMEM;
        z.buf = buf;
        z.cbuf = cbuf;
        z.tested = tested;
        z.is_zero = is_zero;
        z.l1_lo = l1_lo;
        z.l1_hi = l1_hi;

        /* Distinct L2 tables, in host order (l1refs is sorted by table). */
        for (size_t i = 0; i < img->nb_l1refs;) {
                uint64_t c, paths;
                i = qcow2_l2_next(img, i, &c, &paths);
                ZTable *tb = &tables[nt];
                *tb = (ZTable){ .cluster = c,
                                .paths = paths,
                                .buf = pool + nt * img->cluster_size };
                r = qcow2_read_l2(img, offset_of(img, c), tb->buf);
                if (r < 0)
                        return r;
                nc += collect(&z, tb, (uint32_t) nt, cands + nc);
                nt++;
                if (nt == max_tables) {
                        r = process_group(&z, tables, nt, cands, nc);
                        if (r < 0)
                                return r;
                        nt = nc = 0;
                }
                qcow2_progress(img, "scan", i, img->nb_l1refs);
        }
        if (nt > 0) {
                r = process_group(&z, tables, nt, cands, nc);
                if (r < 0)
                        return r;
        }
        if (!simulate) {
                /* Freed tables leave the L1 index (it stays sorted). */
                size_t w = 0;
                for (size_t i = 0; i < img->nb_l1refs; i++) {
                        uint32_t size;
                        uint64_t off;
                        const L1Ref *ref = &img->l1refs[i];
                        uint64_t *l1 = qcow2_l1_table(img, ref->table, &size, &off);
                        if ((l1[ref->index] & L1E_OFFSET_MASK) == offset_of(img, ref->l2))
                                img->l1refs[w++] = *ref;
                }
                img->nb_l1refs = w;
        }
        qcow2_progress(img, "scan", img->nb_l1refs, img->nb_l1refs);
        *ret = z.res;
        return 0;
}
