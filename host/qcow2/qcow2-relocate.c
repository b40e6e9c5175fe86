/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Relocation: plan the smallest end of the file, move every cluster at or past it into the
 * lowest holes, rewrite every reference, drop refcount blocks that only describe the cut-off
 * tail, and truncate.
 *
 * Plan. N = the number of clusters in use, counting only the refcount blocks that describe
 * clusters below N (a fixed point, found by iteration). Clusters >= N are "movers"; each gets a
 * hole below N that a refcount block describes. Contiguous tables (L1, refcount table) move as
 * whole runs into the lowest free run. If the holes do not fit, N grows until they do.
 *
 * Execution, per object type, each batch with the leak-only barrier order (DESIGN.md):
 *   (A) raise destination refcounts   (B) write the copies            -> flush
 *   (C) switch every parent pointer   (in-sector 8/12-byte writes)    -> flush
 *   (D) lower the source refcounts                                    -> flush
 * Order of types: data clusters (pointers in L2 tables), L2 tables (pointers in L1), the L1
 * table (header), refcount blocks (reftable), the refcount table (header); then the tail is
 * released (leftover leaks zeroed, tail-only refcount blocks unhooked then freed) and the file
 * truncated. A crash anywhere leaves, at worst, leaked clusters.
 */

#include "qcow2-internal.h"

#define COPY_CHUNK (4u << 20)

typedef struct Move {
        uint64_t src; /* cluster index */
        uint64_t dst; /* cluster index */
        bool copied;  /* (A)+(B) done */
        bool queued;  /* in the current batch's copy list */
} Move;

typedef struct Plan {
        uint64_t n;  /* new end, in clusters */
        Move *moves; /* single-cluster movers, sorted by src */
        size_t nb_moves;
        bool move_l1, move_reftable;
        uint64_t l1_dst, reftable_dst; /* first cluster of the new runs */
        uint64_t l1_clusters, reftable_clusters;
        uint8_t *dropped; /* bitmap over reftable entries: block unhooked at the end */
} Plan;

static void plan_done(Plan *p) {
        p->moves = mfree(p->moves);
        p->dropped = mfree(p->dropped);
}

static Move *plan_find(const Plan *p, uint64_t src) {
        size_t lo = 0, hi = p->nb_moves;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (p->moves[mid].src < src)
                        lo = mid + 1;
                else if (p->moves[mid].src > src)
                        hi = mid;
                else
                        return &p->moves[mid];
        }
        return NULL;
}

static uint64_t rt_index_of_block(const Qcow2Image *img, uint64_t c, bool *found) {
        for (uint64_t i = 0; i < img->reftable_entries; i++)
                if ((img->reftable[i] & REFT_OFFSET_MASK) == offset_of(img, c)) {
                        *found = true;
                        return i;
                }
        *found = false;
        return 0;
}

/* Is cluster c a refcount block that will be unhooked (it describes only clusters >= n)? */
static bool block_dropped(const Qcow2Image *img, const Plan *p, uint64_t c) {
        bool found;
        uint64_t i;

        if (img->kind[c] != CK_REFBLOCK)
                return false;
        i = rt_index_of_block(img, c, &found);
        return found && (i << img->rb_bits) >= p->n;
}

/* Try to place everything >= p->n; returns 0, or the number of clusters that did not fit. */
static int64_t plan_try(Qcow2Image *img, Plan *p) {
        uint64_t n = p->n, movers = 0, placed = 0;
        _cleanup_free_ uint8_t *taken = NULL; /* holes given out, bitmap over [0, n) */
        uint64_t hole = 1;

        p->moves = mfree(p->moves);
        p->nb_moves = 0;
        p->move_l1 = p->move_reftable = false;

        taken = calloc(DIV_ROUND_UP(n, 8) + 1, 1);
        if (!taken)
                return -ENOMEM;

#define IS_HOLE(c)                                                \
        (img->refcount[(c)] == 0 && qcow2_rc_covered(img, (c)) && \
         !(taken[(c) / 8] & (1U << ((c) % 8))))
#define TAKE(c) (taken[(c) / 8] |= (uint8_t) (1U << ((c) % 8)))

        /* Contiguous runs first: they need consecutive holes. */
        struct {
                uint64_t start, len;
                bool *flag;
                uint64_t *dst;
        } runs[2] = {
                { cluster_of(img, img->l1_offset), p->l1_clusters, &p->move_l1, &p->l1_dst },
                { cluster_of(img, img->reftable_offset),
                  p->reftable_clusters,
                  &p->move_reftable,
                  &p->reftable_dst },
        };
        for (size_t k = 0; k < ELEMENTSOF(runs); k++) {
                if (runs[k].len == 0 || runs[k].start + runs[k].len <= n)
                        continue;
                uint64_t found = 0;
                for (uint64_t c = 1, len = 0; c < n; c++) {
                        len = IS_HOLE(c) ? len + 1 : 0;
                        if (len == runs[k].len) {
                                found = c + 1 - len;
                                break;
                        }
                }
                if (!found)
                        return (int64_t) runs[k].len;
                for (uint64_t c = found; c < found + runs[k].len; c++)
                        TAKE(c);
                *runs[k].flag = true;
                *runs[k].dst = found;
        }

        /* Count single movers, then give each the lowest hole. */
        for (uint64_t c = n; c < img->nb_clusters; c++) {
                if (img->refcount[c] == 0)
                        continue;
                ClusterKind k = img->kind[c];
                if (k == CK_L1 || k == CK_REFTABLE || block_dropped(img, p, c))
                        continue;
                if (k == CK_FREE)
                        continue; /* an unreferenced leftover: released with the tail */
                movers++;
        }
        p->moves = calloc(movers + 1, sizeof(Move));
        if (!p->moves)
                return -ENOMEM;
        for (uint64_t c = n; c < img->nb_clusters; c++) {
                if (img->refcount[c] == 0)
                        continue;
                ClusterKind k = img->kind[c];
                if (k == CK_L1 || k == CK_REFTABLE || k == CK_FREE || block_dropped(img, p, c))
                        continue;
                if (k != CK_DATA && k != CK_L2 && k != CK_REFBLOCK)
                        return -EOPNOTSUPP; /* snapshot, bitmap, compressed: not movable yet */
                while (hole < n && !IS_HOLE(hole))
                        hole++;
                if (hole >= n)
                        return (int64_t) (movers - placed);
                TAKE(hole);
                p->moves[p->nb_moves++] = (Move){ .src = c, .dst = hole };
                placed++;
        }
#undef IS_HOLE
#undef TAKE
        return 0;
}

static int plan_make(Qcow2Image *img, Plan *p) {
        uint64_t used_nonrb = 0, n;
        int64_t missing;

        *p = (Plan){ 0 };
        p->l1_clusters = img->l1_size ? size_to_clusters(img, (uint64_t) img->l1_size * 8) : 0;
        p->reftable_clusters = img->reftable_clusters;
        p->dropped = calloc(DIV_ROUND_UP(img->reftable_entries, 8) + 1, 1);
        if (!p->dropped)
                return -ENOMEM;

        for (uint64_t c = 0; c < img->nb_clusters; c++)
                if (img->refcount[c] > 0 && img->kind[c] != CK_REFBLOCK && img->kind[c] != CK_FREE)
                        used_nonrb++;

        /* Fixed point: N = used + refcount blocks that describe clusters below N. */
        n = img->nb_clusters;
        for (int iter = 0; iter < 128; iter++) {
                uint64_t keep = 0;
                for (uint64_t i = 0; i < img->reftable_entries; i++)
                        if ((img->reftable[i] & REFT_OFFSET_MASK) && (i << img->rb_bits) < n)
                                keep++;
                uint64_t next = MAX(used_nonrb + keep, (uint64_t) 1);
                if (next >= n)
                        break;
                n = next;
        }
        p->n = MIN(n, img->nb_clusters);

        /* Grow N until every mover has a hole. */
        for (;;) {
                missing = plan_try(img, p);
                if (missing < 0)
                        return (int) missing;
                if (missing == 0)
                        break;
                if (p->n >= img->nb_clusters) {
                        /* Nothing can move; keep the file as it is. */
                        p->nb_moves = 0;
                        p->move_l1 = p->move_reftable = false;
                        p->n = img->nb_clusters;
                        break;
                }
                p->n = MIN(p->n + (uint64_t) missing, img->nb_clusters);
        }

        for (uint64_t i = 0; i < img->reftable_entries; i++)
                if ((img->reftable[i] & REFT_OFFSET_MASK) && (i << img->rb_bits) >= p->n)
                        p->dropped[i / 8] |= (uint8_t) (1U << (i % 8));
        return 0;
}

/* Overlap check before writing metadata or copies (QEMU's qcow2_check_metadata_overlap idea). */
static int expect_kind(Qcow2Image *img, uint64_t off, uint64_t len, ClusterKind k) {
        for (uint64_t c = cluster_of(img, off); c <= cluster_of(img, off + len - 1); c++)
                if (c >= img->nb_clusters || img->kind[c] != k)
                        return -EUCLEAN;
        return 0;
}

/* Copies clusters src..src+n-1 to dst..dst+n-1 in large chunks. */
static int
copy_clusters(Qcow2Image *img, uint64_t src, uint64_t dst, uint64_t n, IoEvent ev, uint8_t *buf) {
        uint64_t total = n * img->cluster_size, pos = 0;
        int r;

        while (pos < total) {
                uint64_t len = MIN(total - pos, (uint64_t) COPY_CHUNK);
                uint64_t soff = offset_of(img, src) + pos;
                /* The last cluster may be partly past EOF (reads as zeros). */
                uint64_t avail = soff < img->file_size ? MIN(len, img->file_size - soff) : 0;
                if (avail > 0) {
                        r = io_pread(img->io, buf, avail, soff);
                        if (r < 0)
                                return r;
                }
                memset(buf + avail, 0, len - avail);
                r = qcow2_write(img, ev, buf, len, offset_of(img, dst) + pos);
                if (r < 0)
                        return r;
                pos += len;
        }
        return 0;
}

/* (A)+(B) for a list of moves (each copied once): raise, write dirty, copy runs, flush. */
static int raise_and_copy(
        Qcow2Image *img, Move **list, size_t n, IoEvent ev, uint8_t *buf, uint64_t *bytes_moved) {
        int r;

        for (size_t k = 0; k < n; k++) {
                Move *m = list[k];
                if (img->kind[m->dst] != CK_FREE || img->refcount[m->dst] != 0)
                        return -EUCLEAN; /* the planner gave out a cluster in use */
                r = qcow2_rc_set(img, m->dst, img->refcount[m->src]);
                if (r < 0)
                        return r;
                img->kind[m->dst] = img->kind[m->src];
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        for (size_t k = 0; k < n;) {
                size_t run = 1;
                while (k + run < n && list[k + run]->src == list[k]->src + run &&
                       list[k + run]->dst == list[k]->dst + run &&
                       run * img->cluster_size < COPY_CHUNK)
                        run++;
                r = copy_clusters(img, list[k]->src, list[k]->dst, run, ev, buf);
                if (r < 0)
                        return r;
                *bytes_moved += run * img->cluster_size;
                for (size_t q = k; q < k + run; q++) {
                        list[q]->copied = true;
                        list[q]->queued = false;
                }
                k += run;
        }
        return qcow2_flush(img);
}

static int cmp_move_ptr(const void *a, const void *b) {
        const Move *x = *(Move *const *) a, *y = *(Move *const *) b;
        return x->src < y->src ? -1 : x->src > y->src;
}

typedef struct RTable {
        uint64_t offset;
        uint8_t *buf;
        uint32_t lo, hi;
} RTable;

typedef struct DataBatch {
        RTable *tables;
        size_t nt, max_tables;
        uint8_t *pool;
        Move **to_copy;
        size_t nc;
        uint64_t *released; /* src clusters whose reference was rewritten (one per ref) */
        size_t nr, max_refs;
        uint64_t bytes;
} DataBatch;

static int data_batch_flush(
        Qcow2Image *img, DataBatch *b, uint8_t *buf, RelocResult *res, uint64_t *bytes_moved) {
        int r;

        if (b->nt == 0 && b->nc == 0)
                return 0;
        /* (A)+(B) */
        qsort(b->to_copy, b->nc, sizeof(Move *), cmp_move_ptr);
        r = raise_and_copy(img, b->to_copy, b->nc, IO_EV_DATA_COPY, buf, bytes_moved);
        if (r < 0)
                return r;
        res->clusters_moved += b->nc;
        /* (C) */
        for (size_t t = 0; t < b->nt; t++) {
                RTable *tb = &b->tables[t];
                uint64_t blo = (uint64_t) tb->lo * img->l2_entry_size;
                uint64_t bhi = (uint64_t) tb->hi * img->l2_entry_size;
                r = expect_kind(img, tb->offset, img->cluster_size, CK_L2);
                if (r < 0)
                        return r;
                r = qcow2_write(img, IO_EV_L2_UPDATE, tb->buf + blo, bhi - blo, tb->offset + blo);
                if (r < 0)
                        return r;
        }
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        /* (D) */
        for (size_t k = 0; k < b->nr; k++) {
                uint64_t c = b->released[k];
                uint64_t v = img->refcount[c] - 1;
                r = qcow2_rc_set(img, c, v);
                if (r < 0)
                        return r;
                if (v == 0)
                        img->kind[c] = CK_FREE;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        b->nt = b->nc = b->nr = 0;
        b->bytes = 0;
        return 0;
}

static int move_data(
        Qcow2Image *img,
        Plan *p,
        uint64_t batch_bytes,
        uint8_t *buf,
        RelocResult *res,
        uint64_t *bytes_moved) {
        DataBatch b = { 0 };
        int r = 0;

        b.max_tables = MAX((size_t) 1, (size_t) ((8u << 20) / img->cluster_size));
        b.max_refs = b.max_tables * img->l2_entries;
        b.tables = calloc(b.max_tables, sizeof(RTable));
        b.pool = malloc(b.max_tables * img->cluster_size);
        b.to_copy = calloc(b.max_refs, sizeof(Move *));
        b.released = calloc(b.max_refs, sizeof(uint64_t));
        if (!b.tables || !b.pool || !b.to_copy || !b.released) {
                r = -ENOMEM;
                goto out;
        }

        for (uint64_t i = 0; i < img->l1_size; i++) {
                uint64_t l2off = img->l1[i] & L1E_OFFSET_MASK;
                if (!l2off)
                        continue;
                RTable *tb = &b.tables[b.nt];
                *tb = (RTable){ .offset = l2off, .buf = b.pool + b.nt * img->cluster_size };
                r = qcow2_read_l2(img, l2off, tb->buf);
                if (r < 0)
                        goto out;
                bool touched = false;
                for (uint64_t j = 0; j < img->l2_entries; j++) {
                        uint64_t e = rd64(tb->buf + j * img->l2_entry_size);
                        L2Type ty = qcow2_l2_type(img, e);
                        if (ty != L2_NORMAL && ty != L2_ZERO_ALLOC)
                                continue;
                        uint64_t c = cluster_of(img, e & L2E_OFFSET_MASK);
                        if (c < p->n)
                                continue;
                        Move *m = plan_find(p, c);
                        if (!m) {
                                r = -EUCLEAN; /* a referenced cluster past the end with no place */
                                goto out;
                        }
                        /* COPIED is kept: the destination inherits the source's refcount. */
                        wr64(tb->buf + j * img->l2_entry_size,
                             (e & ~L2E_OFFSET_MASK) | offset_of(img, m->dst));
                        if (!touched) {
                                tb->lo = (uint32_t) j;
                                touched = true;
                        }
                        tb->hi = (uint32_t) j + 1;
                        if (!m->copied && !m->queued) {
                                m->queued = true;
                                b.to_copy[b.nc++] = m;
                                b.bytes += img->cluster_size;
                        }
                        b.released[b.nr++] = c;
                }
                if (touched)
                        b.nt++;
                if (b.nt == b.max_tables || b.bytes >= batch_bytes) {
                        r = data_batch_flush(img, &b, buf, res, bytes_moved);
                        if (r < 0)
                                goto out;
                }
                if ((i & 63) == 0)
                        qcow2_progress(img, "move", i, img->l1_size);
        }
        r = data_batch_flush(img, &b, buf, res, bytes_moved);
out:
        free(b.tables);
        free(b.pool);
        free(b.to_copy);
        free(b.released);
        return r;
}

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

static int
move_l2_tables(Qcow2Image *img, Plan *p, uint8_t *buf, RelocResult *res, uint64_t *bytes_moved) {
        _cleanup_free_ Move **list = NULL;
        _cleanup_free_ uint64_t *idx = NULL;
        size_t n = 0;
        uint64_t lo = UINT64_MAX, hi = 0;
        int r;

        list = calloc(img->l1_size + 1, sizeof(Move *));
        idx = calloc(img->l1_size + 1, sizeof(uint64_t));
        if (!list || !idx)
                return -ENOMEM;
        for (uint64_t i = 0; i < img->l1_size; i++) {
                uint64_t off = img->l1[i] & L1E_OFFSET_MASK;
                if (!off || cluster_of(img, off) < p->n)
                        continue;
                Move *m = plan_find(p, cluster_of(img, off));
                if (!m)
                        return -EUCLEAN;
                list[n] = m;
                idx[n++] = i;
        }
        if (n == 0)
                return 0;

        /* (A)+(B): tables referenced twice (never in a valid active L1) are copied once. */
        _cleanup_free_ Move **uniq = calloc(n, sizeof(Move *));
        size_t nu = 0;
        if (!uniq)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
                if (list[k]->copied || list[k]->queued)
                        continue;
                list[k]->queued = true;
                uniq[nu++] = list[k];
        }
        qsort(uniq, nu, sizeof(Move *), cmp_move_ptr);
        r = raise_and_copy(img, uniq, nu, IO_EV_L2_WRITE, buf, bytes_moved);
        if (r < 0)
                return r;
        res->clusters_moved += nu;

        /* (C) */
        for (size_t k = 0; k < n; k++) {
                uint64_t i = idx[k];
                img->l1[i] = (img->l1[i] & ~L1E_OFFSET_MASK) | offset_of(img, list[k]->dst);
                lo = MIN(lo, i);
                hi = MAX(hi, i + 1);
        }
        r = expect_kind(img, img->l1_offset, (uint64_t) img->l1_size * 8, CK_L1);
        if (r < 0)
                return r;
        r = l1_write_span(img, lo, hi);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        /* (D) */
        for (size_t k = 0; k < n; k++) {
                uint64_t c = list[k]->src;
                uint64_t v = img->refcount[c] - 1;
                r = qcow2_rc_set(img, c, v);
                if (r < 0)
                        return r;
                if (v == 0)
                        img->kind[c] = CK_FREE;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        return qcow2_flush(img);
}

/* Moves a contiguous table run (L1 or refcount table) to dst, switching the header group. */
static int move_run(
        Qcow2Image *img,
        uint64_t src,
        uint64_t dst,
        uint64_t nclusters,
        ClusterKind kind,
        RelocResult *res) {
        _cleanup_free_ uint8_t *tbl = NULL;
        uint64_t bytes = nclusters * img->cluster_size;
        IoEvent ev = kind == CK_L1 ? IO_EV_L1_WRITE : IO_EV_REFTABLE_WRITE;
        int r;

        /* (A) */
        for (uint64_t k = 0; k < nclusters; k++) {
                if (img->kind[dst + k] != CK_FREE || img->refcount[dst + k] != 0)
                        return -EUCLEAN;
                r = qcow2_rc_set(img, dst + k, 1);
                if (r < 0)
                        return r;
                img->kind[dst + k] = (uint8_t) kind;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;

        /* (B) the table as it is in memory (it already holds every switched pointer) */
        tbl = calloc(1, bytes);
        if (!tbl)
                return -ENOMEM;
        if (kind == CK_L1)
                for (uint64_t i = 0; i < img->l1_size; i++)
                        wr64(tbl + i * 8, img->l1[i]);
        else
                for (uint64_t i = 0; i < img->reftable_entries; i++)
                        wr64(tbl + i * 8, img->reftable[i]);
        r = qcow2_write(img, ev, tbl, bytes, offset_of(img, dst));
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        /* (C) one 12-byte header write inside one sector */
        if (kind == CK_L1)
                r = qcow2_update_header_l1(img, offset_of(img, dst));
        else
                r = qcow2_update_header_reftable(img, offset_of(img, dst), (uint32_t) nclusters);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        /* (D) */
        for (uint64_t k = 0; k < nclusters; k++) {
                r = qcow2_rc_set(img, src + k, 0);
                if (r < 0)
                        return r;
                img->kind[src + k] = CK_FREE;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        res->clusters_moved += nclusters;
        return 0;
}

static int move_refblocks(Qcow2Image *img, Plan *p, RelocResult *res, uint64_t *bytes_moved) {
        _cleanup_free_ uint64_t *idx = NULL;
        _cleanup_free_ Move **list = NULL;
        _cleanup_free_ uint8_t *block = NULL;
        size_t n = 0;
        uint64_t lo = UINT64_MAX, hi = 0;
        int r;

        idx = calloc(img->reftable_entries + 1, sizeof(uint64_t));
        list = calloc(img->reftable_entries + 1, sizeof(Move *));
        block = malloc(img->cluster_size);
        if (!idx || !list || !block)
                return -ENOMEM;
        for (uint64_t i = 0; i < img->reftable_entries; i++) {
                uint64_t off = img->reftable[i] & REFT_OFFSET_MASK;
                if (!off || cluster_of(img, off) < p->n || (i << img->rb_bits) >= p->n)
                        continue;
                Move *m = plan_find(p, cluster_of(img, off));
                if (!m)
                        return -EUCLEAN;
                idx[n] = i;
                list[n++] = m;
        }
        if (n == 0)
                return 0;

        /* (A) raise every destination (written to the blocks where they live now) */
        for (size_t k = 0; k < n; k++) {
                if (img->kind[list[k]->dst] != CK_FREE || img->refcount[list[k]->dst] != 0)
                        return -EUCLEAN;
                r = qcow2_rc_set(img, list[k]->dst, 1);
                if (r < 0)
                        return r;
                img->kind[list[k]->dst] = CK_REFBLOCK;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        /* (B) each copy is the block as it is now on disk, rebuilt from the array */
        for (size_t k = 0; k < n; k++) {
                uint64_t first = idx[k] << img->rb_bits;
                memset(block, 0, img->cluster_size);
                for (uint64_t e = 0; e < img->rb_entries; e++) {
                        uint64_t c = first + e;
                        qcow2_refblock_set(
                                img, block, e, c < img->nb_clusters ? img->refcount[c] : 0);
                }
                r = qcow2_write(
                        img,
                        IO_EV_REFBLOCK_UPDATE,
                        block,
                        img->cluster_size,
                        offset_of(img, list[k]->dst));
                if (r < 0)
                        return r;
                *bytes_moved += img->cluster_size;
        }
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        /* (C) */
        for (size_t k = 0; k < n; k++) {
                img->reftable[idx[k]] = offset_of(img, list[k]->dst);
                lo = MIN(lo, idx[k]);
                hi = MAX(hi, idx[k] + 1);
        }
        r = qcow2_reftable_write_span(img, lo, hi);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        /* (D) */
        for (size_t k = 0; k < n; k++) {
                r = qcow2_rc_set(img, list[k]->src, 0);
                if (r < 0)
                        return r;
                img->kind[list[k]->src] = CK_FREE;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        res->clusters_moved += n;
        return 0;
}

/* Release everything >= n and truncate. */
static int release_tail(Qcow2Image *img, Plan *p, RelocResult *res) {
        _cleanup_free_ uint64_t *blocks = NULL;
        size_t nb = 0;
        uint64_t lo = UINT64_MAX, hi = 0;
        int r;

        /*
         * Everything left at or past n is unreferenced now, but for the blocks unhooked below:
         * every reference to a mover was rewritten, so what still counts there is a leak (a
         * refcount that was higher than its references). The post-check re-walks the image.
         */
        for (uint64_t c = p->n; c < img->nb_clusters; c++) {
                if (img->refcount[c] == 0 || block_dropped(img, p, c))
                        continue;
                img->kind[c] = CK_FREE;
                if (qcow2_rc_covered(img, c)) {
                        r = qcow2_rc_set(img, c, 0);
                        if (r < 0)
                                return r;
                } else
                        img->refcount[c] = 0;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        /* Unhook refcount blocks that only describe the tail: reftable first (C)... */
        blocks = calloc(img->reftable_entries + 1, sizeof(uint64_t));
        if (!blocks)
                return -ENOMEM;
        for (uint64_t i = 0; i < img->reftable_entries; i++) {
                if (!(p->dropped[i / 8] & (1U << (i % 8))))
                        continue;
                blocks[nb++] = cluster_of(img, img->reftable[i] & REFT_OFFSET_MASK);
                img->reftable[i] = 0;
                lo = MIN(lo, i);
                hi = MAX(hi, i + 1);
        }
        if (nb > 0) {
                r = qcow2_reftable_write_span(img, lo, hi);
                if (r < 0)
                        return r;
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
                /* ...then their own refcounts (D) */
                for (size_t k = 0; k < nb; k++) {
                        uint64_t c = blocks[k];
                        img->kind[c] = CK_FREE;
                        if (qcow2_rc_covered(img, c)) {
                                r = qcow2_rc_set(img, c, 0);
                                if (r < 0)
                                        return r;
                        } else
                                img->refcount[c] = 0;
                }
                r = qcow2_rc_write_dirty(img);
                if (r < 0)
                        return r;
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
                res->refblocks_dropped += nb;
        }

        /* Truncate only now: nothing at or past n is referenced or counted, on disk. */
        uint64_t new_size = offset_of(img, p->n);
        if (new_size < img->file_size) {
                r = io_event(img->io, IO_EV_TRUNCATE);
                if (r < 0)
                        return r;
                r = io_truncate(img->io, new_size);
                if (r < 0)
                        return r;
                r = qcow2_flush(img);
                if (r < 0)
                        return r;
                img->file_size = new_size;
                img->nb_clusters = p->n;
        }
        return 0;
}

int qcow2_relocate(
        Qcow2Image *img, bool simulate, uint64_t batch_bytes, RelocResult *ret, Qcow2Diag *diag) {
        _cleanup_(plan_done) Plan p = { 0 };
        _cleanup_free_ uint8_t *buf = NULL;
        RelocResult res = { 0 };
        uint64_t bytes_moved = 0;
        int r;

        if (!img->walked)
                return -EINVAL;
        r = plan_make(img, &p);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot plan the relocation: %s", strerror(-r));
        res.new_end_clusters = p.n;

        if (simulate) {
                res.clusters_moved = p.nb_moves + (p.move_l1 ? p.l1_clusters : 0) +
                        (p.move_reftable ? p.reftable_clusters : 0);
                res.bytes_moved = res.clusters_moved * img->cluster_size;
                *ret = res;
                return 0;
        }

        buf = malloc(COPY_CHUNK);
        if (!buf)
                return -ENOMEM;
        if (batch_bytes == 0)
                batch_bytes = 32u << 20;

        r = move_data(img, &p, batch_bytes, buf, &res, &bytes_moved);
        if (r < 0)
                return qcow2_diag(diag, r, "moving data clusters failed: %s", strerror(-r));
        r = move_l2_tables(img, &p, buf, &res, &bytes_moved);
        if (r < 0)
                return qcow2_diag(diag, r, "moving L2 tables failed: %s", strerror(-r));
        if (p.move_l1) {
                r = move_run(
                        img, cluster_of(img, img->l1_offset), p.l1_dst, p.l1_clusters, CK_L1, &res);
                if (r < 0)
                        return qcow2_diag(diag, r, "moving the L1 table failed: %s", strerror(-r));
                bytes_moved += p.l1_clusters * img->cluster_size;
        }
        r = move_refblocks(img, &p, &res, &bytes_moved);
        if (r < 0)
                return qcow2_diag(diag, r, "moving refcount blocks failed: %s", strerror(-r));
        if (p.move_reftable) {
                r = move_run(
                        img,
                        cluster_of(img, img->reftable_offset),
                        p.reftable_dst,
                        p.reftable_clusters,
                        CK_REFTABLE,
                        &res);
                if (r < 0)
                        return qcow2_diag(
                                diag, r, "moving the refcount table failed: %s", strerror(-r));
                bytes_moved += p.reftable_clusters * img->cluster_size;
        }
        r = release_tail(img, &p, &res);
        if (r < 0)
                return qcow2_diag(diag, r, "releasing the tail failed: %s", strerror(-r));
        qcow2_progress(img, "move", img->l1_size, img->l1_size);
        res.bytes_moved = bytes_moved;
        *ret = res;
        return 0;
}
