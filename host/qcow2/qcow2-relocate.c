/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Relocation: plan the smallest end of the file, move every cluster at or past it into the
 * lowest holes, rewrite every reference, drop refcount blocks that only describe the cut-off
 * tail, and truncate.
 *
 * Plan. N = the number of clusters in use, counting only the refcount blocks that describe
 * clusters below N (a fixed point, found by iteration). Clusters >= N are "movers"; each gets a
 * hole below N that a refcount block describes. Contiguous objects move as whole runs into the
 * lowest free run: the L1 tables (active and snapshots), the refcount table, the snapshot table,
 * the bitmap directory and bitmap tables. Compressed data counts as its streams packed end to
 * end: streams that touch a cluster >= N are re-packed one by one, copied byte for byte into
 * the dead tails of kept compressed clusters and the lowest holes, their descriptors re-encoded
 * (offset, sectors); runs with dead bytes below N are re-packed when that frees clusters for a
 * next pass (consolidation). If the holes do not fit, N grows until they do.
 *
 * Execution, per object type, each batch with the leak-only barrier order (DESIGN.md):
 *   (A) raise destination refcounts   (B) write the copies            -> flush
 *   (C) switch every parent pointer   (in-sector 8/12-byte writes)    -> flush
 *   (D) lower the source refcounts                                    -> flush
 * A reference from an L2 table shared by p L1 entries counts p times: rewriting it removes p.
 * Order of types: data and compressed clusters (L2 entries of every tree), bitmap data
 * (bitmap tables), L2 tables (every L1), bitmap tables (directory), the active L1 (header),
 * snapshot L1s (snapshot table), the snapshot table (header), the bitmap directory (header
 * extension), refcount blocks (reftable), the refcount table (header); then the tail is
 * released and the file truncated. A crash anywhere leaves, at worst, leaked clusters.
 */

#include "qcow2-internal.h"

#define COPY_CHUNK (4u << 20)
/* The re-pack runs when it copies at most this much, or this many bytes per byte it frees. */
#define REPACK_BUDGET (64ULL << 20)
#define REPACK_RATIO 64
#define COPY_AHEAD (32u << 20)

/* A cluster or a run of compressed clusters moving from src to dst. */
typedef struct Move {
        uint64_t src; /* first cluster */
        uint64_t dst;
        uint64_t n;  /* clusters */
        bool copied; /* (A)+(B) done */
        bool queued; /* in the current batch's copy list */
} Move;

typedef enum RunKind {
        RUN_BITMAP_TABLE,
        RUN_L1,
        RUN_SNAP_L1,
        RUN_SNAP_TABLE,
        RUN_BITMAP_DIR,
        RUN_REFTABLE,
} RunKind;

/* A table that lives in consecutive clusters and is pointed at from one place. */
typedef struct Run {
        RunKind kind;
        uint32_t id; /* snapshot or bitmap index */
        uint64_t src, n, dst;
        bool move;
} Run;

/* Clusters that compressed streams tie together (a stream touches every cluster of its range). */
typedef struct CRun {
        uint64_t first, n; /* clusters */
        size_t s0, s1;     /* its streams: img->streams[s0..s1) */
        uint64_t bytes;    /* what re-packing copies: exact lengths, or whole ranges */
} CRun;

typedef struct Plan {
        uint64_t n;  /* new end, in clusters */
        Move *moves; /* sorted by src */
        size_t nb_moves;
        Run *runs;
        size_t nb_runs;
        uint8_t *dropped; /* bitmap over reftable entries: block unhooked at the end */

        /* Compressed streams re-packed one by one; arrays parallel to img->streams. */
        CRun *cruns;
        size_t nb_cruns;
        uint32_t *xlen;   /* exact stream length, 0 when unknown (the whole range is copied) */
        uint64_t *sdst;   /* new byte offset, or UINT64_MAX: the stream stays */
        uint32_t *sdlen;  /* range of the new descriptor (its sector count) */
        uint8_t *scopied; /* bitmap: (A)+(B) done, or a merge into an existing twin */
        uint8_t *squeued; /* bitmap: in the current batch */
        uint8_t *pdst;    /* bitmap over clusters: planned destination of streams */
        uint8_t *started; /* bitmap over clusters: destination raised and zeroed */
        uint8_t *ptail;   /* bitmap over clusters: a kept cluster whose dead tail takes streams */
        uint64_t optional_freed;  /* clusters of runs below n re-packed to be freed */
        uint64_t lower_bound;     /* the smallest end the planner can hope for */
        bool no_optional;         /* last pass: no re-packing below the end */
        bool consolidate;         /* re-pack every run with dead bytes into the whole file */
        bool streams_first;       /* place re-packed streams before the table runs */
        uint64_t stream_clusters; /* destination clusters of re-packed streams */
        /*
         * A step of the re-pack (see plan_repack): the movers are the clusters in [n, mend)
         * (the file's end otherwise), no destination lies in [xlo, xhi), no refcount block is
         * dropped and nothing is truncated; streams move only as plan_repack places them.
         */
        bool repack;
        uint64_t mend, xlo, xhi;
        uint64_t fend; /* the file's end for scratch space (see Qcow2Image.scratch_end) */
} Plan;

/* Must cluster c leave in this pass (it is at or past the end, or in the re-pack zone)? */
static bool must_move(const Plan *p, uint64_t c) {
        return c >= p->n && c < p->mend;
}

static void plan_done(Plan *p) {
        p->moves = mfree(p->moves);
        p->runs = mfree(p->runs);
        p->dropped = mfree(p->dropped);
        p->cruns = mfree(p->cruns);
        p->xlen = mfree(p->xlen);
        p->sdst = mfree(p->sdst);
        p->sdlen = mfree(p->sdlen);
        p->scopied = mfree(p->scopied);
        p->squeued = mfree(p->squeued);
        p->pdst = mfree(p->pdst);
        p->started = mfree(p->started);
        p->ptail = mfree(p->ptail);
}

/* Index of the stream with descriptor range [off, off + len) in a (sorted by range), or SIZE_MAX.
 */
static size_t stream_search(const Stream *a, size_t n, uint64_t off, uint64_t len) {
        const Stream key = { .off = off, .len = (uint32_t) len };
        const Stream *s;

        if (n == 0 || len > UINT32_MAX)
                return SIZE_MAX;
        s = bsearch(&key, a, n, sizeof(Stream), qcow2_stream_cmp);
        return s ? (size_t) (s - a) : SIZE_MAX;
}

/* Index of the stream with descriptor range [off, off + len) in img->streams, or SIZE_MAX. */
static size_t stream_find(const Qcow2Image *img, uint64_t off, uint64_t len) {
        return stream_search(img->streams, img->nb_streams, off, len);
}

static uint64_t stream_last_cluster(const Qcow2Image *img, const Stream *s) {
        return cluster_of(img, s->off + s->len - 1);
}

/* Bytes a re-packed stream takes: its exact length, or its whole range when unknown. */
static uint64_t stream_bytes(const Qcow2Image *img, const Plan *p, size_t i) {
        return p->xlen[i] ? p->xlen[i] : img->streams[i].len;
}

/* The move whose source range holds cluster c, or NULL. */
static Move *plan_find(const Plan *p, uint64_t c) {
        size_t lo = 0, hi = p->nb_moves;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (p->moves[mid].src + p->moves[mid].n <= c)
                        lo = mid + 1;
                else if (p->moves[mid].src > c)
                        hi = mid;
                else
                        return &p->moves[mid];
        }
        return NULL;
}

static uint64_t move_dst(const Move *m, uint64_t c) {
        return m->dst + (c - m->src);
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
static bool block_dropped(const Qcow2Image *img, uint64_t n, uint64_t c) {
        bool found;
        uint64_t i;

        if (img->kind[c] != CK_REFBLOCK)
                return false;
        i = rt_index_of_block(img, c, &found);
        return found && (i << img->rb_bits) >= n;
}

static int add_run(Plan *p, size_t *cap, RunKind kind, uint32_t id, uint64_t src, uint64_t n) {
        if (n == 0)
                return 0;
        if (p->nb_runs == *cap) {
                size_t c = MAX(*cap * 2, (size_t) 8);
                Run *r = realloc(p->runs, c * sizeof(Run));
                if (!r)
                        return -ENOMEM;
                p->runs = r;
                *cap = c;
        }
        p->runs[p->nb_runs++] = (Run){ .kind = kind, .id = id, .src = src, .n = n };
        return 0;
}

static int collect_runs(Qcow2Image *img, Plan *p) {
        size_t cap = 0;
        int r;

#define CL(bytes) size_to_clusters(img, (bytes))
        r =
                add_run(p,
                        &cap,
                        RUN_L1,
                        0,
                        cluster_of(img, img->l1_offset),
                        CL((uint64_t) img->l1_size * 8));
        if (r >= 0)
                r =
                        add_run(p,
                                &cap,
                                RUN_REFTABLE,
                                0,
                                cluster_of(img, img->reftable_offset),
                                img->reftable_clusters);
        for (uint32_t i = 0; r >= 0 && i < img->nb_snapshots; i++)
                r =
                        add_run(p,
                                &cap,
                                RUN_SNAP_L1,
                                i,
                                cluster_of(img, img->snapshots[i].l1_offset),
                                CL((uint64_t) img->snapshots[i].l1_size * 8));
        if (r >= 0 && img->nb_snapshots > 0)
                r =
                        add_run(p,
                                &cap,
                                RUN_SNAP_TABLE,
                                0,
                                cluster_of(img, img->snapshots_offset),
                                CL(img->snapshots_size));
        if (r >= 0 && img->bitmaps) {
                r =
                        add_run(p,
                                &cap,
                                RUN_BITMAP_DIR,
                                0,
                                cluster_of(img, img->bitmap_dir_offset),
                                CL(img->bitmap_dir_size));
                for (uint32_t i = 0; r >= 0 && i < img->nb_bitmaps; i++)
                        r =
                                add_run(p,
                                        &cap,
                                        RUN_BITMAP_TABLE,
                                        i,
                                        cluster_of(img, img->bitmaps[i].table_offset),
                                        CL((uint64_t) img->bitmaps[i].table_size * 8));
        }
#undef CL
        return r;
}

static const Stream *slen_cache_find(const Qcow2Image *img, uint64_t off, uint64_t len) {
        size_t i = stream_search(img->slen_cache, img->nb_slen_cache, off, len);
        return i == SIZE_MAX ? NULL : &img->slen_cache[i];
}

/*
 * After a real pass: remember every stream's exact length under the range its descriptor has
 * now, so that the next pass of this compaction reads and decodes only streams it has not seen
 * (the bytes under a range change only by this engine's own moves).
 */
static int slen_cache_update(Qcow2Image *img, const Plan *p) {
        Stream *c;
        size_t n = 0;

        if (!p->xlen || img->nb_streams == 0)
                return 0;
        c = calloc(img->nb_streams, sizeof(Stream));
        if (!c)
                return -ENOMEM;
        for (size_t i = 0; i < img->nb_streams; i++) {
                const Stream *s = &img->streams[i];
                bool moved = p->sdst[i] != UINT64_MAX && bm_get(p->scopied, i);
                c[n++] = (Stream){ .off = moved ? p->sdst[i] : s->off,
                                   .len = moved ? p->sdlen[i] : s->len,
                                   .refs = p->xlen[i] ? p->xlen[i] : UINT32_MAX };
        }
        qsort(c, n, sizeof(Stream), qcow2_stream_cmp);
        free(img->slen_cache);
        img->slen_cache = c;
        img->nb_slen_cache = n;
        return 0;
}

/*
 * Compressed streams: groups them into runs (clusters that streams tie together: a run is
 * either kept or vacated whole) and learns each stream's exact length by decoding it, in
 * large sequential reads. A stream that does not decode to one whole cluster and end keeps
 * its whole range (and its offset within a sector, so its sector count stays valid).
 */
static int plan_streams_init(Qcow2Image *img, Plan *p) {
        _cleanup_free_ uint8_t *win = NULL, *out = NULL;
        size_t ns = img->nb_streams, cap = 0;
        uint64_t wlo = 0, whi = 0;
        size_t wcap = MAX((size_t) COPY_CHUNK, (size_t) (2 * img->cluster_size + 512));
        int r;

        if (ns == 0)
                return 0;
        p->xlen = calloc(ns, sizeof(uint32_t));
        p->sdst = malloc(ns * sizeof(uint64_t));
        p->sdlen = calloc(ns, sizeof(uint32_t));
        p->scopied = calloc(DIV_ROUND_UP(ns, 8) + 1, 1);
        p->squeued = calloc(DIV_ROUND_UP(ns, 8) + 1, 1);
        p->pdst = calloc(DIV_ROUND_UP(img->nb_clusters, 8) + 1, 1);
        p->started = calloc(DIV_ROUND_UP(img->nb_clusters, 8) + 1, 1);
        p->ptail = calloc(DIV_ROUND_UP(img->nb_clusters, 8) + 1, 1);
        win = malloc(wcap);
        out = malloc(img->cluster_size);
        if (!p->xlen || !p->sdst || !p->sdlen || !p->scopied || !p->squeued || !p->pdst ||
            !p->started || !p->ptail || !win || !out)
                return -ENOMEM;

        for (size_t i = 0; i < ns; i++) {
                const Stream *s = &img->streams[i];
                uint64_t first = cluster_of(img, s->off), last = stream_last_cluster(img, s);
                bool live = last < img->nb_clusters;

                p->sdst[i] = UINT64_MAX;
                /* A simulated zero pass may have dropped it: then its clusters may be free. */
                for (uint64_t c = first; live && c <= last; c++)
                        live = img->refcount[c] > 0 && img->kind[c] == CK_COMPRESSED;
                if (!live) {
                        bm_set(p->scopied, i); /* never placed */
                        continue;
                }

                const Stream *cached = slen_cache_find(img, s->off, s->len);
                if (cached) {
                        p->xlen[i] = cached->refs == UINT32_MAX ? 0 : cached->refs;
                        goto run;
                }
                if (s->off < wlo || s->off + s->len > whi) {
                        wlo = s->off;
                        whi = wlo + wcap;
                        uint64_t avail = wlo < img->file_size ? MIN(wcap, img->file_size - wlo) : 0;
                        if (avail > 0) {
                                r = io_pread(img->io, win, avail, wlo);
                                if (r < 0)
                                        return r;
                        }
                        memset(win + avail, 0, wcap - avail);
                }
                size_t xl = 0;
                if (qcow2_stream_length(img, win + (s->off - wlo), s->len, out, &xl) >= 0 &&
                    xl > 0 && xl <= s->len)
                        p->xlen[i] = (uint32_t) xl;
run:
                if (p->nb_cruns > 0 &&
                    first <= p->cruns[p->nb_cruns - 1].first + p->cruns[p->nb_cruns - 1].n - 1) {
                        CRun *cr = &p->cruns[p->nb_cruns - 1];
                        cr->n = MAX(cr->n, last + 1 - cr->first);
                        cr->s1 = i + 1;
                        cr->bytes += stream_bytes(img, p, i);
                        continue;
                }
                if (p->nb_cruns == cap) {
                        size_t c = MAX(cap * 2, (size_t) 16);
                        CRun *q = realloc(p->cruns, c * sizeof(CRun));
                        if (!q)
                                return -ENOMEM;
                        p->cruns = q;
                        cap = c;
                }
                p->cruns[p->nb_cruns++] = (CRun){ .first = first,
                                                  .n = last + 1 - first,
                                                  .s0 = i,
                                                  .s1 = i + 1,
                                                  .bytes = stream_bytes(img, p, i) };
        }
        return 0;
}

/* Packs re-packed streams into holes, densely: a stream may run on into the next hole. */
typedef struct Packer {
        uint8_t *taken;
        uint64_t n;
        uint64_t pc;     /* last destination cluster written into, UINT64_MAX: none */
        uint64_t pc_sum; /* references counted on it so far */
        uint64_t cur;    /* next free byte */
        uint64_t scan;   /* where the search for fresh holes goes on */
        uint64_t *log;   /* destination clusters taken, in order (for rolling back) */
        size_t nlog, caplog;
        /*
         * Dead tails of kept compressed clusters (after the last range that touches them,
         * sector aligned): new streams go there first, as QEMU packs them. Nothing refers to
         * those bytes, on disk.
         */
        struct {
                uint64_t cluster, start;
        } * slots;
        size_t nslots, sscan;
        bool use_tails;
} Packer;

static bool pk_hole(const Qcow2Image *img, const Packer *k, uint64_t c) {
        return c > 0 && c < k->n && img->refcount[c] == 0 && img->kind[c] == CK_FREE &&
                qcow2_rc_covered(img, c) && !bm_get(k->taken, c);
}

/* spec: the descriptor holds (sectors - 1); the range ends at the end of the last sector. */
static uint64_t range_from(uint64_t pos, uint64_t bytes) {
        return ALIGN_UP((pos & 511) + bytes, (uint64_t) 512) - (pos & 511);
}

/* Places stream i at byte pos if every cluster it touches is the current one or a free hole. */
static int pk_try(Qcow2Image *img, Plan *p, Packer *k, size_t i, uint64_t pos) {
        const Stream *s = &img->streams[i];
        bool known = p->xlen[i] != 0;
        uint64_t bytes = stream_bytes(img, p, i);
        uint64_t dl = known ? range_from(pos, bytes) : s->len;
        uint64_t fc = cluster_of(img, pos), lc = cluster_of(img, pos + dl - 1);

        if (!known && (pos & 511) != (s->off & 511))
                return 0;
        if ((pos & 511) + dl > (img->csize_mask + 1) * 512 || pos + dl > (1ULL << img->csize_shift))
                return 0; /* the sector count or the offset would not fit the descriptor */
        for (uint64_t c = fc; c <= lc; c++) {
                if (c == k->pc && c == fc) {
                        if (k->pc_sum + s->refs > img->refcount_max)
                                return 0;
                } else if (!pk_hole(img, k, c) || s->refs > img->refcount_max)
                        return 0;
        }
        for (uint64_t c = fc; c <= lc; c++) {
                if (c == k->pc)
                        continue;
                if (k->nlog == k->caplog) {
                        size_t cap = MAX(k->caplog * 2, (size_t) 64);
                        uint64_t *q = realloc(k->log, cap * sizeof(uint64_t));
                        if (!q)
                                return -ENOMEM;
                        k->log = q;
                        k->caplog = cap;
                }
                k->log[k->nlog++] = c;
                bm_set(k->taken, c);
                bm_set(p->pdst, c);
        }
        k->pc_sum = lc == k->pc ? k->pc_sum + s->refs : s->refs;
        k->pc = lc;
        k->cur = pos + (known ? bytes : dl);
        p->sdst[i] = pos;
        p->sdlen[i] = (uint32_t) dl;
        return 1;
}

/* Places stream i: right after the previous one if it fits there, else at the next free holes. */
static int pk_place(Qcow2Image *img, Plan *p, Packer *k, size_t i) {
        const Stream *s = &img->streams[i];
        uint64_t a = s->off & 511;
        int r;

        if (k->pc != UINT64_MAX) {
                uint64_t pos = k->cur;
                if (p->xlen[i]) {
                        r = pk_try(img, p, k, i, pos);
                        if (r != 0)
                                return r;
                }
                /* keep the sector phase: the sector count cannot grow then */
                pos = (pos & ~(uint64_t) 511) + a;
                if (pos < k->cur)
                        pos += 512;
                r = pk_try(img, p, k, i, pos);
                if (r != 0)
                        return r;
        }
        /* the dead tail of a kept cluster, lowest first; a slot left behind is not reused */
        for (size_t q = k->sscan; k->use_tails && q < k->nslots && q < k->sscan + 64; q++) {
                uint64_t pc = k->pc, pc_sum = k->pc_sum, cur = k->cur;
                uint64_t c = k->slots[q].cluster, pos = k->slots[q].start;
                if (c >= k->n)
                        break;
                k->pc = c;
                k->pc_sum = img->refcount[c];
                k->cur = pos;
                r = pk_try(img, p, k, i, p->xlen[i] ? pos : pos + a);
                if (r < 0)
                        return r;
                if (r > 0) {
                        bm_set(p->ptail, c);
                        k->sscan = q + 1;
                        return r;
                }
                k->pc = pc;
                k->pc_sum = pc_sum;
                k->cur = cur;
        }
        uint64_t off0 = p->xlen[i] ? 0 : a;
        uint64_t need = DIV_ROUND_UP(off0 + s->len, img->cluster_size);
        for (uint64_t c = MAX(k->scan, (uint64_t) 1), run = 0; c < k->n; c++) {
                run = pk_hole(img, k, c) ? run + 1 : 0;
                if (run < need)
                        continue;
                uint64_t h = c + 1 - need;
                k->scan = h;
                r = pk_try(img, p, k, i, offset_of(img, h) + off0);
                if (r != 0)
                        return r;
                run = 0;
        }
        return 0;
}

static void pk_rollback(
        Plan *p,
        Packer *k,
        size_t nlog,
        uint64_t pc,
        uint64_t pc_sum,
        uint64_t cur,
        uint64_t scan) {
        while (k->nlog > nlog) {
                uint64_t c = k->log[--k->nlog];
                k->taken[c / 8] &= (uint8_t) ~(1U << (c % 8));
                p->pdst[c / 8] &= (uint8_t) ~(1U << (c % 8));
        }
        k->pc = pc;
        k->pc_sum = pc_sum;
        k->cur = cur;
        k->scan = scan;
}

/*
 * Places every stream of run cr that touches a cluster >= from, or none (the state is rolled
 * back). 1 placed, 0 not, -errno.
 */
static int pk_run(Qcow2Image *img, Plan *p, Packer *k, const CRun *cr, uint64_t from) {
        size_t nlog = k->nlog;
        uint64_t pc = k->pc, pc_sum = k->pc_sum, cur = k->cur, scan = k->scan;

        for (size_t i = cr->s0; i < cr->s1; i++) {
                if (bm_get(p->scopied, i))
                        continue; /* dropped by a simulated zero pass */
                if (stream_last_cluster(img, &img->streams[i]) < from)
                        continue; /* stays */
                int r = pk_place(img, p, k, i);
                if (r < 0)
                        return r;
                if (r == 0) {
                        for (size_t q = cr->s0; q < cr->s1; q++)
                                p->sdst[q] = UINT64_MAX;
                        pk_rollback(p, k, nlog, pc, pc_sum, cur, scan);
                        return 0;
                }
        }
        return 1;
}

static int cmp_crun_waste(const void *a, const void *b, void *arg) {
        const Qcow2Image *img = arg;
        const CRun *x = *(CRun *const *) a, *y = *(CRun *const *) b;
        uint64_t wx = x->n * img->cluster_size - MIN(x->bytes, x->n * img->cluster_size);
        uint64_t wy = y->n * img->cluster_size - MIN(y->bytes, y->n * img->cluster_size);
        if (wx != wy)
                return wx > wy ? -1 : 1;
        return x->first < y->first ? -1 : x->first > y->first;
}

static int cmp_move(const void *a, const void *b) {
        const Move *x = a, *y = b;
        return x->src < y->src ? -1 : x->src > y->src;
}

/* Lowest run of `len` free, covered, untaken holes below n; 0 if none. */
static uint64_t find_holes(const Qcow2Image *img, const uint8_t *taken, uint64_t n, uint64_t len) {
        for (uint64_t c = 1, run = 0; c < n; c++) {
                bool hole = img->refcount[c] == 0 && qcow2_rc_covered(img, c) && !bm_get(taken, c);
                run = hole ? run + 1 : 0;
                if (run == len)
                        return c + 1 - len;
        }
        return 0;
}

/* Try to place everything >= p->n; returns 0, the number of clusters that did not fit, or -errno.
 */
static void packer_done(Packer *k) {
        free(k->log);
        free(k->slots);
}

/* The dead tails of the last clusters of runs that lie wholly below the packer's end. */
static int plan_slots(Qcow2Image *img, Plan *p, Packer *k) {
        k->nslots = k->sscan = 0;
        if (p->nb_cruns == 0)
                return 0;
        free(k->slots);
        k->slots = calloc(p->nb_cruns, sizeof(*k->slots));
        if (!k->slots)
                return -ENOMEM;
        for (size_t q = 0; q < p->nb_cruns; q++) {
                const CRun *cr = &p->cruns[q];
                uint64_t last = cr->first + cr->n - 1, end = offset_of(img, last + 1), tail = 0;
                if (last >= k->n)
                        continue;
                for (size_t i = cr->s0; i < cr->s1; i++) {
                        const Stream *s = &img->streams[i];
                        if (bm_get(p->scopied, i) || stream_last_cluster(img, s) < last)
                                continue;
                        tail = MAX(tail, MIN(s->off + s->len, end));
                }
                if (tail > 0 && tail + 512 <= end)
                        k->slots[k->nslots++] = (typeof(*k->slots)){ last, tail };
        }
        return 0;
}

/*
 * Runs wholly below n that hold dead bytes (streams freed with a snapshot, or dropped by the zero
 * pass) are re-packed too when that saves at least one cluster: the ones with the most dead bytes
 * first, each whole or not at all, into what the holes below n still offer. The clusters they
 * leave are free for the next pass.
 */
static int optional_round(
        Qcow2Image *img,
        Plan *p,
        Packer *k,
        CRun **cand,
        size_t nc,
        uint64_t min_gain,
        uint64_t *ret_freed) {
        size_t nlog0 = k->nlog;
        uint64_t pc0 = k->pc, sum0 = k->pc_sum, cur0 = k->cur, scan0 = k->scan, freed = 0;

        for (size_t q = 0; q < nc; q++) {
                int r = pk_run(img, p, k, cand[q], 0);
                if (r < 0)
                        return r;
                if (r > 0)
                        freed += cand[q]->n;
        }
        if (freed == 0 || freed < (k->nlog - nlog0) + min_gain) {
                /* no gain: undo */
                for (size_t q = 0; q < nc; q++)
                        for (size_t i = cand[q]->s0; i < cand[q]->s1; i++)
                                p->sdst[i] = UINT64_MAX;
                pk_rollback(p, k, nlog0, pc0, sum0, cur0, scan0);
                freed = 0;
        }
        *ret_freed = freed;
        return 0;
}

/*
 * Runs wholly below n that hold dead bytes (streams freed with a snapshot, or dropped by the zero
 * pass) are re-packed too when that saves at least one cluster: the ones with the most dead bytes
 * first, each whole or not at all. The clusters they leave are free for the next pass. When the
 * holes below n are too few, free clusters past n (inside the file) serve as scratch space: the
 * file then ends after them in this pass, and the next pass brings them down into the clusters
 * this one freed. Not when that would keep a refcount block that n would drop.
 */
static int plan_optional(Qcow2Image *img, Plan *p, Packer *k) {
        _cleanup_free_ CRun **cand = NULL;
        size_t nc = 0;
        uint64_t n = k->n, freed = 0, top = n;
        int r;

        if (p->nb_cruns == 0 || p->no_optional)
                return 0;
        cand = calloc(p->nb_cruns, sizeof(CRun *));
        if (!cand)
                return -ENOMEM;
        for (size_t q = 0; q < p->nb_cruns; q++) {
                CRun *cr = &p->cruns[q];
                if (cr->first + cr->n <= n && cr->bytes < cr->n * img->cluster_size &&
                    !bm_get(p->ptail, cr->first + cr->n - 1))
                        cand[nc++] = cr;
        }
        if (nc == 0)
                return 0;
        qsort_r(cand, nc, sizeof(CRun *), cmp_crun_waste, img);

        size_t nlog0 = k->nlog;
        uint64_t pc0 = k->pc, sum0 = k->pc_sum, cur0 = k->cur, scan0 = k->scan;
        /*
         * Re-packing without a gain in clusters still pays when the end stays above what the
         * planner hopes for: the run moves out of the way (into scratch), the next pass brings
         * it down into the clusters it left, next to the others.
         */
        uint64_t min_gain = n > p->lower_bound && !p->consolidate ? 0 : 1;
        k->n = p->fend;
        if (p->consolidate) {
                /*
                 * One contiguous region if the file has one that holds them all: streams only
                 * leave dead bytes behind where free clusters are not adjacent.
                 */
                uint64_t bytes = 0;
                for (size_t q = 0; q < nc; q++)
                        bytes += cand[q]->bytes;
                uint64_t need = DIV_ROUND_UP(bytes, img->cluster_size) + 1;
                for (uint64_t c = MAX(k->scan, (uint64_t) 1), run = 0; c < k->n; c++) {
                        run = pk_hole(img, k, c) ? run + 1 : 0;
                        if (run == need) {
                                k->scan = c + 1 - need;
                                break;
                        }
                }
        }
        r = optional_round(img, p, k, cand, nc, min_gain, &freed);
        k->n = n;
        if (r < 0)
                return r;
        for (size_t q = nlog0; q < k->nlog; q++)
                top = MAX(top, k->log[q] + 1);
        bool blocks_change = false;
        for (uint64_t i = 0; i < img->reftable_entries && top > n; i++)
                if ((img->reftable[i] & REFT_OFFSET_MASK) && (i << img->rb_bits) >= n &&
                    (i << img->rb_bits) < top)
                        blocks_change = true;
        if (blocks_change) {
                for (size_t q = 0; q < nc; q++)
                        for (size_t i = cand[q]->s0; i < cand[q]->s1; i++)
                                p->sdst[i] = UINT64_MAX;
                pk_rollback(p, k, nlog0, pc0, sum0, cur0, scan0);
                r = optional_round(img, p, k, cand, nc, min_gain, &freed);
                if (r < 0)
                        return r;
        }
        p->optional_freed = freed;
        return 0;
}

/* Table runs that reach to or past n, the largest first, each into the lowest free run. */
static int64_t plan_tables(Qcow2Image *img, Plan *p, uint8_t *taken, uint64_t n, uint64_t hn) {
        for (size_t k = 0; k < p->nb_runs; k++)
                p->runs[k].move = false;
        for (;;) {
                Run *best = NULL;
                for (size_t k = 0; k < p->nb_runs; k++) {
                        Run *run = &p->runs[k];
                        if (run->move || run->src + run->n <= n || run->src >= p->mend)
                                continue;
                        if (!best || run->n > best->n)
                                best = run;
                }
                if (!best)
                        break;
                uint64_t at = find_holes(img, taken, hn, best->n);
                if (!at)
                        return (int64_t) best->n;
                for (uint64_t c = at; c < at + best->n; c++)
                        bm_set(taken, c);
                best->dst = at;
                best->move = true;
        }
        return 0;
}

/*
 * Streams that touch a cluster >= n are re-packed one by one, densely, into the lowest holes
 * (see pk_place); the others stay.
 */
static int64_t
plan_stream_moves(Qcow2Image *img, Plan *p, Packer *pk, uint8_t *taken, uint64_t n, uint64_t hn) {
        int r0;

        pk->n = hn;
        pk->taken = taken;
        r0 = plan_slots(img, p, pk);
        if (r0 < 0)
                return r0;
        pk->use_tails = !p->repack; /* a re-pack vacates every compressed cluster */
        for (size_t r = 0; r < p->nb_cruns; r++) {
                CRun *cr = &p->cruns[r];
                if (cr->first + cr->n <= n)
                        continue;
                int q = pk_run(img, p, pk, cr, n);
                if (q < 0)
                        return q;
                if (q == 0) {
                        uint64_t left = 0;
                        for (size_t t = r; t < p->nb_cruns; t++)
                                if (p->cruns[t].first + p->cruns[t].n > n)
                                        left += DIV_ROUND_UP(p->cruns[t].bytes, img->cluster_size);
                        return (int64_t) MAX(left, (uint64_t) 1);
                }
        }
        return 0;
}

static int64_t plan_try(Qcow2Image *img, Plan *p) {
        _cleanup_free_ uint8_t *taken = NULL;
        _cleanup_(packer_done) Packer pks = { .pc = UINT64_MAX };
        Packer *pk = &pks;
        uint64_t n = p->n, hole = 1, cap = 0;
        uint64_t hn = p->repack ? img->nb_clusters : n; /* holes lie below hn */
        int64_t rr;

        p->moves = mfree(p->moves);
        p->nb_moves = 0;
        p->optional_freed = p->stream_clusters = 0;
        for (size_t i = 0; p->sdst && i < img->nb_streams; i++)
                p->sdst[i] = UINT64_MAX;
        if (p->pdst)
                memset(p->pdst, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
        if (p->ptail)
                memset(p->ptail, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
        for (size_t k = 0; k < p->nb_runs; k++)
                p->runs[k].move = false;
        taken = calloc(DIV_ROUND_UP(MAX(n, img->nb_clusters), 8) + 1, 1);
        if (!taken)
                return -ENOMEM;
        for (uint64_t c = p->xlo; c < p->xhi && c < img->nb_clusters; c++)
                bm_set(taken, c); /* not a destination in this plan */

        /*
         * Tables first: they need consecutive holes. When that does not fit, streams first:
         * a table can take the free cluster after a dead tail that a stream would have run
         * on into (see plan_fit).
         */
        for (int step = 0; step < (p->repack ? 1 : 2); step++) {
                rr = (step == 0) == !p->streams_first ? plan_tables(img, p, taken, n, hn) :
                                                        plan_stream_moves(img, p, pk, taken, n, hn);
                if (rr != 0)
                        return rr;
        }
        /* Then single clusters >= n. */
        p->moves = calloc(img->nb_clusters - MIN(n, img->nb_clusters) + 1, sizeof(Move));
        if (!p->moves)
                return -ENOMEM;
        cap = img->nb_clusters - MIN(n, img->nb_clusters);
        for (uint64_t c = n; c < MIN(p->mend, img->nb_clusters); c++) {
                ClusterKind k = img->kind[c];
                if (img->refcount[c] == 0 || k == CK_FREE)
                        continue; /* free, or an unreferenced leftover released with the tail */
                if (k != CK_DATA && k != CK_L2 && k != CK_REFBLOCK && k != CK_BITMAP_DATA)
                        continue; /* tables and compressed runs are placed above */
                if (!p->repack && block_dropped(img, n, c))
                        continue;
                while (hole < hn &&
                       (img->refcount[hole] != 0 || !qcow2_rc_covered(img, hole) ||
                        bm_get(taken, hole)))
                        hole++;
                if (hole >= hn) {
                        uint64_t left = 0;
                        for (uint64_t q = c; q < MIN(p->mend, img->nb_clusters); q++)
                                left += img->refcount[q] > 0 && img->kind[q] != CK_FREE;
                        return (int64_t) MAX(left, (uint64_t) 1);
                }
                bm_set(taken, hole);
                p->moves[p->nb_moves++] = (Move){ .src = c, .dst = hole, .n = 1 };
        }
        /*
         * Clusters below n whose refcount is above their references (leaks QEMU left behind on a
         * referenced cluster) cannot be lowered in place when an active entry still needs its
         * COPIED flag changed; moving them repairs them: the copy gets the exact count and the
         * rewritten entries the matching flag. They need room of their own: the hole each
         * leaves behind is filled by the next pass.
         */
        for (size_t i = 0; !p->repack && i < img->nb_oc; i++) {
                uint64_t c = img->oc[i].cluster;
                if (c >= n || img->oc[i].refs == 0 ||
                    (img->kind[c] != CK_DATA && img->kind[c] != CK_L2))
                        continue;
                while (hole < n &&
                       (img->refcount[hole] != 0 || !qcow2_rc_covered(img, hole) ||
                        bm_get(taken, hole)))
                        hole++;
                if (hole >= n) {
                        uint64_t left = 0;
                        for (size_t k = i; k < img->nb_oc; k++)
                                left += img->oc[k].cluster < n && img->oc[k].refs > 0 &&
                                        (img->kind[img->oc[k].cluster] == CK_DATA ||
                                         img->kind[img->oc[k].cluster] == CK_L2);
                        return (int64_t) MAX(left, (uint64_t) 1);
                }
                if (p->nb_moves >= cap) {
                        Move *q = realloc(p->moves, (cap * 2 + 16) * sizeof(Move));
                        if (!q)
                                return -ENOMEM;
                        p->moves = q;
                        cap = cap * 2 + 16;
                }
                bm_set(taken, hole);
                p->moves[p->nb_moves++] = (Move){ .src = c, .dst = hole, .n = 1 };
        }
        pk->use_tails = false; /* a run re-packed below n may be the one with the tail */
        rr = plan_optional(img, p, pk);
        if (rr < 0)
                return rr;
        p->stream_clusters = pk->nlog;
        qsort(p->moves, p->nb_moves, sizeof(Move), cmp_move);
        return 0;
}

/*
 * Fill: when a pass has nothing else to do, the compressed data may still hold more dead bytes
 * than one cluster (gaps between streams, run tails). Free compressed clusters one by one, the
 * highest first: every stream that touches the cluster is copied into dead bytes lower in the
 * file (in other live compressed clusters: a dead span may cross from one into the next), the
 * largest first, each into the lowest span that holds it; the cluster is freed when all fit,
 * else nothing of it moves. Destinations are bytes that no range refers to, on disk, before
 * the pass (never the source of a stream that moves), and a cluster that receives streams is
 * not freed in the same pass. Streams only move down, so passes of fills end.
 */
typedef struct Gap {
        uint64_t lo, hi; /* dead bytes [lo, hi) */
} Gap;

typedef struct Fill {
        Gap *gaps;
        size_t ng;
        uint64_t *tree; /* max gap length per node (segment tree over gaps) */
        size_t leaves;
        uint32_t *add; /* references added per cluster by this fill */
} Fill;

static void fill_done(Fill *f) {
        free(f->gaps);
        free(f->tree);
        free(f->add);
}

static void fill_update(Fill *f, size_t g) {
        size_t x = f->leaves + g;
        f->tree[x] = f->gaps[g].hi - f->gaps[g].lo;
        for (x /= 2; x > 0; x /= 2)
                f->tree[x] = MAX(f->tree[2 * x], f->tree[2 * x + 1]);
}

/* Lowest gap index >= from whose length is at least need, or SIZE_MAX. */
static size_t fill_find(const Fill *f, size_t from, uint64_t need) {
        size_t x = f->leaves + from;
        if (from >= f->ng)
                return SIZE_MAX;
        if (f->tree[x] >= need)
                return from;
        /* climb until a right sibling holds one, then descend to its lowest such leaf */
        for (;;) {
                if (x == 1)
                        return SIZE_MAX;
                if (x % 2 == 0 && f->tree[x + 1] >= need) {
                        x++;
                        break;
                }
                x /= 2;
        }
        while (x < f->leaves)
                x = f->tree[2 * x] >= need ? 2 * x : 2 * x + 1;
        return x - f->leaves < f->ng ? x - f->leaves : SIZE_MAX;
}

static int fill_add_gap(Fill *f, size_t *cap, uint64_t lo, uint64_t hi) {
        if (hi <= lo)
                return 0;
        if (f->ng > 0 && f->gaps[f->ng - 1].hi == lo) {
                f->gaps[f->ng - 1].hi = hi;
                return 0;
        }
        if (f->ng == *cap) {
                size_t c = MAX(*cap * 2, (size_t) 64);
                Gap *q = realloc(f->gaps, c * sizeof(Gap));
                if (!q)
                        return -ENOMEM;
                f->gaps = q;
                *cap = c;
        }
        f->gaps[f->ng++] = (Gap){ lo, hi };
        return 0;
}

/* The dead bytes of live compressed clusters below lim, as maximal spans. */
static int fill_gaps(Qcow2Image *img, const Plan *p, Fill *f, uint64_t lim) {
        size_t cap = 0;
        uint64_t end = 0; /* end of the ranges seen so far */
        int r;

        for (size_t i = 0; i <= img->nb_streams; i++) {
                uint64_t next = i < img->nb_streams ?
                        MIN(img->streams[i].off, offset_of(img, lim)) :
                        offset_of(img, lim);
                for (uint64_t c = cluster_of(img, end); end < next && c < lim; c++) {
                        uint64_t lo = MAX(end, offset_of(img, c)),
                                 hi = MIN(next, offset_of(img, c + 1));
                        bool live = img->kind[c] == CK_COMPRESSED && img->refcount[c] > 0;
                        bool hole = c > 0 && img->kind[c] == CK_FREE && img->refcount[c] == 0 &&
                                qcow2_rc_covered(img, c);
                        if (live || hole) {
                                r = fill_add_gap(f, &cap, lo, hi);
                                if (r < 0)
                                        return r;
                        }
                        if (hi >= next)
                                break;
                }
                if (i < img->nb_streams)
                        end = MAX(end, img->streams[i].off + stream_bytes(img, p, i));
        }
        for (f->leaves = 1; f->leaves < MAX(f->ng, (size_t) 1); f->leaves *= 2)
                ;
        f->tree = calloc(2 * f->leaves, sizeof(uint64_t));
        if (!f->tree)
                return -ENOMEM;
        for (size_t g = 0; g < f->ng; g++)
                f->tree[f->leaves + g] = f->gaps[g].hi - f->gaps[g].lo;
        for (size_t x = f->leaves - 1; x > 0; x--)
                f->tree[x] = MAX(f->tree[2 * x], f->tree[2 * x + 1]);
        return 0;
}

/* Where stream i would start inside gap g (below limit), or UINT64_MAX. */
static uint64_t
fill_fit(const Qcow2Image *img, const Plan *p, const Fill *f, size_t i, size_t g, uint64_t limit) {
        const Stream *s = &img->streams[i];
        uint64_t bytes = stream_bytes(img, p, i), hi = MIN(f->gaps[g].hi, limit);
        uint64_t pos = f->gaps[g].lo;

        for (int t = 0; t < 2; t++) {
                if (!p->xlen[i] || t > 0) /* keep the sector phase: the sector count stays */
                        pos = ALIGN_DOWN(pos, (uint64_t) 512) + (s->off & 511) +
                                ((pos & 511) > (s->off & 511) ? 512 : 0);
                uint64_t dl = p->xlen[i] ? range_from(pos, bytes) : s->len;
                if (pos + bytes > hi)
                        return UINT64_MAX;
                if ((pos & 511) + dl <= (img->csize_mask + 1) * 512 &&
                    pos + dl <= (1ULL << img->csize_shift)) {
                        bool ok = true;
                        for (uint64_t c = cluster_of(img, pos);
                             ok && c <= cluster_of(img, pos + dl - 1);
                             c++)
                                ok = img->refcount[c] + f->add[c] + s->refs <= img->refcount_max;
                        if (ok)
                                return pos;
                }
                if (!p->xlen[i])
                        return UINT64_MAX;
        }
        return UINT64_MAX;
}

typedef enum FillUndoKind {
        UNDO_GAP,     /* gaps[idx].lo was lo */
        UNDO_STREAM,  /* stream idx was placed */
        UNDO_CLUSTER, /* free cluster idx was taken */
} FillUndoKind;

typedef struct FillUndo {
        FillUndoKind kind;
        size_t idx;
        uint64_t lo;
} FillUndo;

static int fill_log(FillUndo **undo, size_t *n, size_t *cap, FillUndo u) {
        if (*n == *cap) {
                size_t c = MAX(*cap * 2, (size_t) 32);
                FillUndo *q = realloc(*undo, c * sizeof(FillUndo));
                if (!q)
                        return -ENOMEM;
                *undo = q;
                *cap = c;
        }
        (*undo)[(*n)++] = u;
        return 0;
}

static int cmp_stream_bytes_desc(const void *a, const void *b, void *arg) {
        const Plan *p = ((void **) arg)[0];
        const Qcow2Image *img = ((void **) arg)[1];
        size_t x = *(const size_t *) a, y = *(const size_t *) b;
        uint64_t bx = stream_bytes(img, p, x), by = stream_bytes(img, p, y);
        if (bx != by)
                return bx > by ? -1 : 1;
        return x < y ? -1 : x > y;
}

/* Places stream i in the lowest gap below limit that holds it; 1 placed, 0 not, -errno. */
static int fill_place(
        Qcow2Image *img,
        Plan *p,
        Fill *f,
        size_t i,
        uint64_t limit,
        bool fresh_ok,
        FillUndo **undo,
        size_t *nundo,
        size_t *capundo) {
        uint64_t bytes = stream_bytes(img, p, i), pos = UINT64_MAX;
        size_t g = 0;
        int r;

        for (;; g++) {
                g = fill_find(f, g, bytes);
                if (g == SIZE_MAX || f->gaps[g].lo >= limit)
                        return 0;
                pos = fill_fit(img, p, f, i, g, limit);
                if (pos == UINT64_MAX)
                        continue;
                uint64_t dl = p->xlen[i] ? range_from(pos, bytes) : img->streams[i].len;
                bool fresh = false;
                for (uint64_t d = cluster_of(img, pos); d <= cluster_of(img, pos + dl - 1); d++)
                        fresh = fresh || img->kind[d] == CK_FREE;
                if (!fresh || fresh_ok)
                        break;
        }
        uint64_t dl = p->xlen[i] ? range_from(pos, bytes) : img->streams[i].len;
        r = fill_log(undo, nundo, capundo, (FillUndo){ UNDO_GAP, g, f->gaps[g].lo });
        if (r >= 0)
                r = fill_log(undo, nundo, capundo, (FillUndo){ UNDO_STREAM, i, 0 });
        if (r < 0)
                return r;
        p->sdst[i] = pos;
        p->sdlen[i] = (uint32_t) dl;
        for (uint64_t d = cluster_of(img, pos); d <= cluster_of(img, pos + dl - 1); d++) {
                f->add[d] += img->streams[i].refs;
                if (img->kind[d] == CK_FREE && !bm_get(p->pdst, d)) {
                        r = fill_log(undo, nundo, capundo, (FillUndo){ UNDO_CLUSTER, d, 0 });
                        if (r < 0)
                                return r;
                        bm_set(p->pdst, d);
                }
        }
        f->gaps[g].lo = pos + bytes;
        fill_update(f, g);
        return 1;
}

static void fill_rollback(Qcow2Image *img, Plan *p, Fill *f, FillUndo *undo, size_t n) {
        while (n > 0) {
                FillUndo *u = &undo[--n];
                switch (u->kind) {
                case UNDO_GAP:
                        f->gaps[u->idx].lo = u->lo;
                        fill_update(f, u->idx);
                        break;
                case UNDO_CLUSTER:
                        p->pdst[u->idx / 8] &= (uint8_t) ~(1U << (u->idx % 8));
                        break;
                case UNDO_STREAM: {
                        size_t i = u->idx;
                        uint64_t pos = p->sdst[i], dl = p->sdlen[i];
                        for (uint64_t d = cluster_of(img, pos); d <= cluster_of(img, pos + dl - 1);
                             d++)
                                f->add[d] -= img->streams[i].refs;
                        p->sdst[i] = UINT64_MAX;
                        break;
                }
                }
        }
}

static int plan_fill(Qcow2Image *img, Plan *p) {
        _cleanup_(fill_done) Fill f = { 0 };
        _cleanup_free_ uint8_t *freed = NULL;
        _cleanup_free_ size_t *set = NULL;
        _cleanup_free_ FillUndo *undo = NULL;
        uint64_t lim = p->n, maxlen = 0, nfreed = 0;
        size_t capset = 0, nundo = 0, capundo = 0;
        bool at_top = true;
        int r;

        if (!p->xlen || img->nb_streams == 0)
                return 0;
        f.add = calloc(lim + 1, sizeof(uint32_t));
        freed = calloc(DIV_ROUND_UP(lim, 8) + 1, 1);
        if (!f.add || !freed)
                return -ENOMEM;
        r = fill_gaps(img, p, &f, lim);
        if (r < 0)
                return r;
        if (f.ng == 0)
                return 0;
        for (size_t i = 0; i < img->nb_streams; i++)
                maxlen = MAX(maxlen, (uint64_t) img->streams[i].len);

        for (uint64_t c = lim; c-- > 1;) {
                if (img->refcount[c] == 0 || img->kind[c] == CK_FREE)
                        continue;
                if (img->kind[c] != CK_COMPRESSED || bm_get(p->ptail, c) || bm_get(p->pdst, c)) {
                        at_top = false;
                        continue;
                }
                uint64_t lo = offset_of(img, c), hi = offset_of(img, c + 1), refs = 0;
                /* the streams that touch c: they start at most maxlen bytes before it */
                size_t a = 0, b = img->nb_streams, ns = 0;
                while (a < b) {
                        size_t mid = a + (b - a) / 2;
                        if (img->streams[mid].off + maxlen <= lo)
                                a = mid + 1;
                        else
                                b = mid;
                }
                bool ok = true;
                for (size_t i = a; ok && i < img->nb_streams && img->streams[i].off < hi; i++) {
                        const Stream *s = &img->streams[i];
                        if (s->off + s->len <= lo)
                                continue;
                        refs += s->refs;
                        if (p->sdst[i] != UINT64_MAX)
                                continue; /* already leaves (it touched a cluster freed above) */
                        if (bm_get(p->scopied, i))
                                ok = false;
                        if (ns == capset) {
                                size_t cp = MAX(capset * 2, (size_t) 16);
                                size_t *q = realloc(set, cp * sizeof(size_t));
                                if (!q)
                                        return -ENOMEM;
                                set = q;
                                capset = cp;
                        }
                        set[ns++] = i;
                }
                /* only a cluster whose count is exactly its streams' references is freed */
                if (!ok || refs != img->refcount[c]) {
                        at_top = false;
                        continue;
                }
                qsort_r(set, ns, sizeof(size_t), cmp_stream_bytes_desc, (void *[]){ p, img });
                nundo = 0;
                for (size_t k = 0; ok && k < ns; k++) {
                        r = fill_place(img, p, &f, set[k], lo, at_top, &undo, &nundo, &capundo);
                        if (r < 0)
                                return r;
                        ok = r > 0;
                }
                if (!ok) {
                        fill_rollback(img, p, &f, undo, nundo);
                        at_top = false;
                        continue;
                }
                for (size_t k = 0; k < nundo; k++) {
                        if (undo[k].kind != UNDO_STREAM)
                                continue;
                        size_t i = undo[k].idx;
                        for (uint64_t d = cluster_of(img, p->sdst[i]);
                             d <= cluster_of(img, p->sdst[i] + p->sdlen[i] - 1);
                             d++)
                                if (img->kind[d] == CK_COMPRESSED)
                                        bm_set(p->ptail, d);
                }
                bm_set(freed, c);
                nfreed++;
        }
        if (nfreed == 0)
                return 0;
        /* the file ends after the last cluster that keeps or receives something */
        uint64_t end = 1, taken = 0;
        for (uint64_t c = 0; c < lim; c++) {
                if (bm_get(p->pdst, c))
                        taken++;
                if ((img->refcount[c] > 0 && img->kind[c] != CK_FREE && !bm_get(freed, c)) ||
                    bm_get(p->pdst, c))
                        end = c + 1;
        }
        p->n = end;
        p->stream_clusters = taken;
        p->optional_freed = nfreed > taken + (lim - end) ? nfreed - taken - (lim - end) : 0;
        return 0;
}

/*
 * plan_try with the table runs placed first and, if that does not fit, with the re-packed
 * streams placed first (only when streams move). Deterministic: the same layout gives the same
 * plan.
 */
static int64_t plan_fit(Qcow2Image *img, Plan *p) {
        p->streams_first = false;
        int64_t missing = plan_try(img, p);
        if (missing <= 0 || p->nb_cruns == 0)
                return missing;
        p->streams_first = true;
        int64_t m2 = plan_try(img, p);
        p->streams_first = m2 == 0;
        return m2 <= 0 ? m2 : missing;
}

/* Does a mover or a table go between the first and the last cluster of the vacated runs? */
static bool vacated_span_taken(const Plan *p) {
        uint64_t lo = UINT64_MAX, hi = 0;

        for (size_t q = 0; q < p->nb_cruns; q++) {
                const CRun *cr = &p->cruns[q];
                bool all = cr->first + cr->n <= p->n;
                for (size_t i = cr->s0; all && i < cr->s1; i++)
                        all = bm_get(p->scopied, i) || p->sdst[i] != UINT64_MAX;
                if (all) {
                        lo = MIN(lo, cr->first);
                        hi = MAX(hi, cr->first + cr->n);
                }
        }
        for (size_t k = 0; k < p->nb_moves; k++)
                if (p->moves[k].dst >= lo && p->moves[k].dst < hi)
                        return true;
        for (size_t k = 0; k < p->nb_runs; k++)
                if (p->runs[k].move && p->runs[k].dst + p->runs[k].n > lo && p->runs[k].dst < hi)
                        return true;
        return false;
}

/*
 * The smallest end the planner can hope for: the clusters in use, with compressed data counted
 * as its streams packed densely, plus the refcount blocks that describe clusters below that end
 * (a fixed point).
 */
static uint64_t plan_lower_bound(const Qcow2Image *img, const Plan *p) {
        uint64_t packed = 0, used_nonrb = 0, n = img->nb_clusters;

        for (size_t k = 0; k < p->nb_cruns; k++)
                packed += p->cruns[k].bytes;
        for (uint64_t c = 0; c < img->nb_clusters; c++)
                if (img->refcount[c] > 0 && img->kind[c] != CK_REFBLOCK &&
                    img->kind[c] != CK_FREE && img->kind[c] != CK_COMPRESSED)
                        used_nonrb++;
        used_nonrb += DIV_ROUND_UP(packed, img->cluster_size);
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
        return MIN(n, img->nb_clusters);
}

/* What every plan starts from: the table runs and the compressed streams with their lengths. */
static int plan_init(Qcow2Image *img, Plan *p) {
        int r;

        p->dropped = calloc(DIV_ROUND_UP(img->reftable_entries, 8) + 1, 1);
        if (!p->dropped)
                return -ENOMEM;
        r = collect_runs(img, p);
        if (r < 0)
                return r;
        for (size_t k = 0; k < p->nb_runs; k++)
                if (p->runs[k].src + p->runs[k].n > img->nb_clusters)
                        return -EUCLEAN;
        return plan_streams_init(img, p);
}

static int plan_make(Qcow2Image *img, Plan *p, bool last_pass) {
        int64_t missing;
        int r;

        *p = (Plan){ .no_optional = last_pass, .mend = UINT64_MAX };
        p->fend = img->scratch_end ? MIN(img->scratch_end, img->nb_clusters) : img->nb_clusters;
        r = plan_init(img, p);
        if (r < 0)
                return r;

        /* Compressed data counts as its streams packed densely (a lower bound). */
        uint64_t packed = 0;
        for (size_t k = 0; k < p->nb_cruns; k++)
                packed += p->cruns[k].bytes;
        p->n = plan_lower_bound(img, p);
        p->lower_bound = p->n;

        /*
         * Compressed runs holding at least a cluster of dead bytes in all are consolidated
         * first, in a pass of their own, while the file still has its free clusters: every
         * run with dead bytes is re-packed, densely, into the lowest free clusters of the whole
         * file. Later passes then find the compressed data dense, whatever order the streams
         * came in (a re-run after a crash and an uninterrupted run end alike).
         */
        uint64_t comp = 0;
        for (size_t k = 0; k < p->nb_cruns; k++)
                comp += p->cruns[k].n;
        if (!last_pass && p->nb_cruns > 0 && comp > DIV_ROUND_UP(packed, img->cluster_size)) {
                p->n = p->fend;
                p->consolidate = true;
                missing = plan_try(img, p);
                p->consolidate = false;
                if (missing < 0)
                        return (int) missing;
                if (missing == 0 && p->optional_freed > 0) {
                        p->nb_moves = 0;
                        for (size_t k = 0; k < p->nb_runs; k++)
                                p->runs[k].move = false;
                        goto cut;
                }
                p->n = p->lower_bound;
        }

        /*
         * If not everything fits, find the smallest end that works: a larger end has fewer
         * movers and more holes, so feasibility only grows with it; search between the lower
         * bound and the current size (which always works: nothing moves).
         */
        missing = plan_fit(img, p);
        if (missing < 0)
                return (int) missing;
        if (missing > 0) {
                uint64_t lo = p->n, hi = MAX(p->fend, lo + 1); /* lo fails, hi works */
                while (hi - lo > 1) {
                        p->n = lo + (hi - lo) / 2;
                        missing = plan_fit(img, p);
                        if (missing < 0)
                                return (int) missing;
                        if (missing == 0)
                                hi = p->n;
                        else
                                lo = p->n;
                }
                p->n = hi;
                if (hi >= p->fend) {
                        /*
                         * Nothing past the end can move; keep the file as it is, but re-pack
                         * runs with dead bytes below it if that frees clusters for a next pass.
                         */
                        p->streams_first = false;
                        missing = plan_try(img, p);
                        if (missing < 0)
                                return (int) missing;
                        p->nb_moves = 0;
                        for (size_t k = 0; k < p->nb_runs; k++)
                                p->runs[k].move = false;
                        if (missing > 0 || !p->optional_freed) {
                                for (size_t i = 0; p->sdst && i < img->nb_streams; i++)
                                        p->sdst[i] = UINT64_MAX;
                                if (p->pdst)
                                        memset(p->pdst, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
                                p->optional_freed = p->stream_clusters = 0;
                        }
                } else {
                        missing = plan_fit(img, p);
                        if (missing != 0)
                                return missing < 0 ? (int) missing : -EUCLEAN;
                }
        }

        /*
         * A pass that vacates compressed runs below n (re-packing them elsewhere) does not put
         * movers or tables into holes between them: that would split the free region they
         * leave, and the compressed data would end up in two regions, each with its dead
         * tail. The movers wait for the next pass, which sees that region whole.
         */
        if (!p->no_optional && p->optional_freed > 0 && vacated_span_taken(p)) {
                p->nb_moves = 0;
                for (size_t k = 0; k < p->nb_runs; k++)
                        p->runs[k].move = false;
                p->n = p->fend;
        }

        /*
         * The file ends after the last cluster that stays or receives a mover, which may be
         * below n when runs did not fit: never leave free clusters at the end.
         */
cut:
        for (uint64_t c = p->n; p->pdst && c < img->nb_clusters; c++)
                if (bm_get(p->pdst, c))
                        p->n = c + 1; /* scratch for re-packed streams (plan_optional) */
        uint64_t end = 1;
        for (uint64_t c = 0; c < p->n; c++)
                if (img->refcount[c] > 0 && img->kind[c] != CK_FREE)
                        end = c + 1;
        for (size_t k = 0; k < p->nb_moves; k++)
                end = MAX(end, p->moves[k].dst + p->moves[k].n);
        for (size_t k = 0; k < p->nb_runs; k++)
                if (p->runs[k].move)
                        end = MAX(end, p->runs[k].dst + p->runs[k].n);
        for (uint64_t c = end; p->pdst && c < p->n; c++)
                if (bm_get(p->pdst, c))
                        end = c + 1;
        p->n = MIN(p->n, end);

        /* Nothing else to do: free compressed clusters by filling dead bytes lower down. */
        bool idle = !p->no_optional && p->nb_cruns > 0 && p->nb_moves == 0 && !p->optional_freed;
        for (size_t k = 0; idle && k < p->nb_runs; k++)
                idle = !p->runs[k].move;
        for (size_t i = 0; idle && i < img->nb_streams; i++)
                idle = p->sdst[i] == UINT64_MAX;
        if (idle) {
                r = plan_fill(img, p);
                if (r < 0)
                        return r;
        }

        for (uint64_t i = 0; i < img->reftable_entries; i++)
                if ((img->reftable[i] & REFT_OFFSET_MASK) && (i << img->rb_bits) >= p->n)
                        bm_set(p->dropped, i);
        return 0;
}

/* Plans nothing: every cluster and stream stays. */
static void plan_nothing(Qcow2Image *img, Plan *p) {
        p->nb_moves = 0;
        for (size_t k = 0; k < p->nb_runs; k++)
                p->runs[k].move = false;
        for (size_t i = 0; p->sdst && i < img->nb_streams; i++)
                p->sdst[i] = UINT64_MAX;
        if (p->pdst)
                memset(p->pdst, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
        if (p->ptail)
                memset(p->ptail, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
        p->stream_clusters = 0;
        p->n = img->nb_clusters;
        p->mend = 0;
}

/*
 * Re-pack: the last steps of a compaction with compressed data whose passes ended above the
 * lower bound (see qcow2-compact.c). The passes put streams into whatever holes they find, so
 * the compressed data can end up in several regions, each with dead bytes at its end, and
 * where they stop depends on the layout they started from (an interrupted run's differs from
 * an uninterrupted one's). The re-pack slides the streams, in file order, into one dense
 * region that starts at the first compressed cluster, so that the passes after it end at the
 * lower bound whatever came before.
 *
 * Each step is planned from the image as it is (a re-run after an interruption simply goes on):
 * the streams already in place (end to end from the first compressed cluster, or from the free
 * clusters right below it) form a prefix that ends at byte t; the others, R, will take
 * [t, t + their bytes), the region.
 *   1. Evict: clusters in the region that are not compressed (tables, data, refcount blocks)
 *      move to free clusters outside it.
 *   2. Slide: the streams of R that fit, in order, into the dead bytes between t and the
 *      cluster of the first stream of R move there (their destinations are below every source
 *      that moves with them, and nothing on disk refers to them).
 *   3. Park: when too little fits there, as many streams of R as the free clusters past the
 *      region hold are copied there; that widens the gap in front of the next stream, and the
 *      parked streams come last in file order, to slide in a later step.
 * Every step is an ordinary relocation (the same A/B/C/D barriers); each moves something or
 * the re-pack stops. Plans nothing when the file has no room (it never grows), or when the
 * copies would cost more than REPACK_BUDGET and more than REPACK_RATIO times what it frees.
 */
static int plan_repack(Qcow2Image *img, Plan *p) {
        _cleanup_free_ uint8_t *taken = NULL;
        _cleanup_(packer_done) Packer k = { .pc = UINT64_MAX };
        uint64_t end = 1, t, rest = 0, rc0, rc1, gap;
        size_t f = SIZE_MAX, first = SIZE_MAX;
        int64_t missing;
        int r;

        *p = (Plan){ .no_optional = true, .repack = true, .n = img->nb_clusters };
        r = plan_init(img, p);
        if (r < 0)
                return r;
        if (p->nb_cruns == 0)
                return 0;
        /* the end, not counting refcount blocks that describe only what lies past it */
        for (uint64_t c = 0; c < img->nb_clusters; c++)
                if (img->refcount[c] > 0 && img->kind[c] != CK_FREE && img->kind[c] != CK_REFBLOCK)
                        end = c + 1;
        uint64_t lb = plan_lower_bound(img, p);
        if (end <= lb)
                return 0;

        /* The prefix in place: streams end to end from the first compressed cluster. */
        for (size_t i = 0; i < img->nb_streams && first == SIZE_MAX; i++)
                if (!bm_get(p->scopied, i))
                        first = i;
        if (first == SIZE_MAX)
                return 0;
        /* from the first compressed cluster, or the free clusters right below it */
        uint64_t z0 = cluster_of(img, img->streams[first].off);
        while (z0 > 1 && img->refcount[z0 - 1] == 0 && img->kind[z0 - 1] == CK_FREE &&
               qcow2_rc_covered(img, z0 - 1))
                z0--;
        t = offset_of(img, z0);
        for (size_t i = first; i < img->nb_streams; i++) {
                const Stream *st = &img->streams[i];
                if (bm_get(p->scopied, i))
                        continue;
                if (f == SIZE_MAX) {
                        uint64_t pos = t;
                        if (!p->xlen[i]) { /* whole range: keep its sector phase */
                                pos = (t & ~(uint64_t) 511) + (st->off & 511);
                                if (pos < t)
                                        pos += 512;
                        }
                        if (st->off == pos) {
                                t = pos + stream_bytes(img, p, i);
                                continue;
                        }
                        f = i;
                }
                rest += stream_bytes(img, p, i);
        }
        if (f == SIZE_MAX)
                return 0; /* dense already */
        rc0 = cluster_of(img, t);
        rc1 = cluster_of(img, t + rest - 1) + 1;

        /* 1. Evict what is not compressed from the region. */
        uint64_t evict = 0;
        for (uint64_t c = rc0; c < rc1 && c < img->nb_clusters; c++)
                evict += img->refcount[c] > 0 && img->kind[c] != CK_FREE &&
                        img->kind[c] != CK_COMPRESSED;
        /*
         * Worth it? At most every byte behind the prefix is copied twice (parked, then slid).
         * Always when that is little I/O; else only when it is small against what it frees.
         * The cost only falls as the steps go on, so a re-pack that starts goes to its end.
         */
        uint64_t cost = 2 * (rest + evict * img->cluster_size);
        if (cost > REPACK_BUDGET && cost / REPACK_RATIO > (end - lb) * img->cluster_size)
                return 0;
        if (evict) {
                p->n = rc0;
                p->mend = p->xhi = rc1;
                p->xlo = rc0;
                missing = plan_try(img, p);
                if (missing < 0)
                        return (int) missing;
                if (missing > 0)
                        plan_nothing(img, p);
                return 0;
        }

        taken = calloc(DIV_ROUND_UP(img->nb_clusters, 8) + 1, 1);
        if (!taken)
                return -ENOMEM;
        k.taken = taken;
        k.n = img->nb_clusters;

        /* 2. Slide into the gap in front of R: below the cluster of its first stream. */
        uint64_t lim = offset_of(img, cluster_of(img, img->streams[f].off));
        gap = lim > t ? lim - t : 0;
        uint64_t slid = 0;
        if (gap > 0) {
                for (uint64_t c = cluster_of(img, lim); c < img->nb_clusters; c++)
                        bm_set(taken, c); /* never at or past the first source */
                if (t % img->cluster_size) {
                        k.pc = cluster_of(img, t);
                        k.pc_sum = img->refcount[k.pc];
                }
                k.cur = t;
                for (size_t i = f; i < img->nb_streams; i++) {
                        if (bm_get(p->scopied, i))
                                continue;
                        uint64_t pos = k.cur;
                        if (!p->xlen[i]) {
                                pos = (pos & ~(uint64_t) 511) + (img->streams[i].off & 511);
                                if (pos < k.cur)
                                        pos += 512;
                        }
                        r = pk_try(img, p, &k, i, pos);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                break;
                        slid += stream_bytes(img, p, i);
                }
                if (slid > 0 && t % img->cluster_size && img->refcount[cluster_of(img, t)] > 0)
                        bm_set(p->ptail, cluster_of(img, t)); /* its dead tail takes streams */
        }

        /* 3. Park, when the gap took little of what the free clusters past the region hold. */
        uint64_t room = 0;
        for (uint64_t c = rc1; c < img->nb_clusters; c++)
                room += img->refcount[c] == 0 && img->kind[c] == CK_FREE &&
                        qcow2_rc_covered(img, c);
        room *= img->cluster_size;
        if (slid > 0 && (slid >= rest || slid * 16 >= MIN(room, rest)))
                goto done;
        plan_nothing(img, p);
        memset(taken, 0, DIV_ROUND_UP(img->nb_clusters, 8) + 1);
        for (uint64_t c = 0; c < rc1 && c < img->nb_clusters; c++)
                bm_set(taken, c);
        k.pc = UINT64_MAX;
        k.pc_sum = k.cur = 0;
        k.scan = rc1;
        k.nlog = 0;
        k.use_tails = false;
        for (size_t i = f; i < img->nb_streams; i++) {
                if (bm_get(p->scopied, i))
                        continue;
                r = pk_place(img, p, &k, i);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
        }
done:
        p->stream_clusters = k.nlog;
        return 0;
}

/* Overlap check before writing metadata in place (QEMU's metadata overlap check idea). */
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

/* (A)+(B) for moves not copied yet: raise every destination, copy (coalesced), flush. */
static int
raise_and_copy(Qcow2Image *img, Move **list, size_t n, IoEvent ev, uint8_t *buf, RelocResult *res) {
        int r;

        for (size_t k = 0; k < n; k++) {
                Move *m = list[k];
                for (uint64_t q = 0; q < m->n; q++) {
                        if (img->kind[m->dst + q] != CK_FREE || img->refcount[m->dst + q] != 0)
                                return -EUCLEAN; /* the planner gave out a cluster in use */
                        r = qcow2_rc_set(img, m->dst + q, qcow2_refs_of(img, m->src + q));
                        if (r < 0)
                                return r;
                        img->kind[m->dst + q] = img->kind[m->src + q];
                }
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        size_t ahead = 0;
        uint64_t announced = 0;
        for (size_t k = 0; k < n;) {
                uint64_t src = list[k]->src, dst = list[k]->dst, len = list[k]->n;
                size_t run = 1;
                /*
                 * The sources are read one copy at a time. The zero scan reads only the first
                 * bytes of short data ranges (probe_first), so they are not in the page cache:
                 * announced COPY_AHEAD ahead, the kernel reads them while earlier ones are
                 * copied. Sources already in the cache cost the announcement nothing.
                 */
                if (ahead < k)
                        ahead = k;
                while (ahead < n && announced < COPY_AHEAD) {
                        uint64_t lo = list[ahead]->src, cnt = list[ahead]->n;
                        for (ahead++; ahead < n && list[ahead]->src == lo + cnt; ahead++)
                                cnt += list[ahead]->n;
                        io_prefetch(img->io, offset_of(img, lo), cnt * img->cluster_size);
                        announced += cnt * img->cluster_size;
                }
                while (k + run < n && list[k + run]->src == src + len &&
                       list[k + run]->dst == dst + len && len * img->cluster_size < COPY_CHUNK)
                        len += list[k + run++]->n;
                r = copy_clusters(img, src, dst, len, ev, buf);
                if (r < 0)
                        return r;
                announced -= MIN(announced, len * img->cluster_size);
                res->bytes_moved += len * img->cluster_size;
                res->clusters_moved += len;
                for (size_t q = k; q < k + run; q++) {
                        list[q]->copied = true;
                        list[q]->queued = false;
                }
                k += run;
        }
        return qcow2_flush(img);
}

static int cmp_move_ptr(const void *a, const void *b) {
        return cmp_move(*(Move *const *) a, *(Move *const *) b);
}

typedef struct Release {
        uint64_t cluster;
        uint64_t count;
} Release;

/* A batch of rewritten tables and what their rewrites release. */
typedef struct Batch {
        Move **to_copy;
        size_t nc, max_copy;
        size_t *sq; /* re-packed streams to copy (indices into img->streams) */
        size_t nsq;
        Release *rel;
        size_t nr, max_rel;
        uint64_t bytes;
} Batch;

static int batch_init(Batch *b, size_t max_copy, size_t max_rel) {
        *b = (Batch){ .max_copy = max_copy, .max_rel = max_rel };
        b->to_copy = calloc(max_copy + 1, sizeof(Move *));
        b->sq = calloc(max_copy + 1, sizeof(size_t));
        b->rel = calloc(max_rel + 1, sizeof(Release));
        return b->to_copy && b->sq && b->rel ? 0 : -ENOMEM;
}

static void batch_done(Batch *b) {
        free(b->to_copy);
        free(b->sq);
        free(b->rel);
}

static void batch_queue_stream(Qcow2Image *img, Plan *p, Batch *b, size_t i) {
        if (bm_get(p->scopied, i) || bm_get(p->squeued, i))
                return;
        bm_set(p->squeued, i);
        b->sq[b->nsq++] = i;
        b->bytes += stream_bytes(img, p, i);
}

static int cmp_sq(const void *a, const void *b, void *arg) {
        const Plan *p = arg;
        uint64_t x = p->sdst[*(const size_t *) a], y = p->sdst[*(const size_t *) b];
        return x < y ? -1 : x > y;
}

/*
 * (A)+(B) for the re-packed streams of a batch, before the batch's flush: every destination
 * cluster is raised by the references of each stream that touches it (a cluster that several
 * streams share counts them all, as QEMU counts it), a cluster used for the first time is
 * zeroed, then each stream's bytes are copied as they are (exact length, or the whole range);
 * streams adjacent at both ends are copied together.
 */
static int
stream_raise_and_copy(Qcow2Image *img, Plan *p, Batch *b, uint8_t *buf, RelocResult *res) {
        int r;

        if (b->nsq == 0)
                return 0;
        qsort_r(b->sq, b->nsq, sizeof(size_t), cmp_sq, p);
        /* (A); the clusters raised for the first time are listed (ascending) for (B) */
        _cleanup_free_ uint64_t *fresh = NULL;
        size_t nf = 0, capf = 0;
        for (size_t k = 0; k < b->nsq; k++) {
                size_t i = b->sq[k];
                uint64_t d = p->sdst[i], refs = img->streams[i].refs;
                for (uint64_t c = cluster_of(img, d); c <= cluster_of(img, d + p->sdlen[i] - 1);
                     c++) {
                        bool tail = bm_get(p->ptail, c);
                        if (c >= img->nb_clusters || (!bm_get(p->pdst, c) && !tail))
                                return -EUCLEAN; /* not a destination the planner gave out */
                        if (!bm_get(p->started, c) && !tail) {
                                if (img->kind[c] != CK_FREE || img->refcount[c] != 0)
                                        return -EUCLEAN;
                                if (nf == capf) {
                                        capf = MAX(capf * 2, (size_t) 64);
                                        uint64_t *q = realloc(fresh, capf * sizeof(uint64_t));
                                        if (!q)
                                                return -ENOMEM;
                                        fresh = q;
                                }
                                fresh[nf++] = c;
                                bm_set(p->started, c);
                                r = qcow2_rc_set(img, c, refs);
                        } else {
                                if (img->kind[c] != CK_COMPRESSED ||
                                    img->refcount[c] + refs > img->refcount_max)
                                        return -EUCLEAN;
                                r = qcow2_rc_set(img, c, img->refcount[c] + refs);
                        }
                        if (r < 0)
                                return r;
                        img->kind[c] = CK_COMPRESSED;
                }
        }
        /* (B) zero the clusters used for the first time (nothing refers to them yet), copy */
        memset(buf, 0, COPY_CHUNK);
        for (size_t k = 0; k < nf;) {
                size_t run = 1;
                while (k + run < nf && fresh[k + run] == fresh[k] + run &&
                       (run + 1) * img->cluster_size <= COPY_CHUNK)
                        run++;
                r = qcow2_write(
                        img,
                        IO_EV_DATA_COPY,
                        buf,
                        run * img->cluster_size,
                        offset_of(img, fresh[k]));
                if (r < 0)
                        return r;
                res->clusters_moved += run;
                k += run;
        }
        for (size_t k = 0; k < b->nsq;) {
                size_t i = b->sq[k], run = 1;
                uint64_t src = img->streams[i].off, dst = p->sdst[i];
                uint64_t len = stream_bytes(img, p, i);
                while (k + run < b->nsq) {
                        size_t j = b->sq[k + run];
                        if (img->streams[j].off != src + len || p->sdst[j] != dst + len ||
                            len + stream_bytes(img, p, j) > COPY_CHUNK)
                                break;
                        len += stream_bytes(img, p, j);
                        run++;
                }
                uint64_t avail = src < img->file_size ? MIN(len, img->file_size - src) : 0;
                if (avail > 0) {
                        r = io_pread(img->io, buf, avail, src);
                        if (r < 0)
                                return r;
                }
                memset(buf + avail, 0, len - avail);
                r = qcow2_write(img, IO_EV_DATA_COPY, buf, len, dst);
                if (r < 0)
                        return r;
                res->bytes_moved += len;
                for (size_t q = k; q < k + run; q++) {
                        bm_set(p->scopied, b->sq[q]);
                        p->squeued[b->sq[q] / 8] &= (uint8_t) ~(1U << (b->sq[q] % 8));
                }
                k += run;
        }
        return 0;
}

static void batch_queue(Qcow2Image *img, Batch *b, Move *m) {
        if (m->copied || m->queued)
                return;
        m->queued = true;
        b->to_copy[b->nc++] = m;
        b->bytes += m->n * img->cluster_size;
}

static void batch_release(Batch *b, uint64_t c, uint64_t count) {
        b->rel[b->nr++] = (Release){ .cluster = c, .count = count };
}

/* (A)+(B) of a batch; the caller then switches its pointers (C) and calls batch_lower. */
static int
batch_copy(Qcow2Image *img, Plan *p, Batch *b, IoEvent ev, uint8_t *buf, RelocResult *res) {
        int r = stream_raise_and_copy(img, p, b, buf, res);
        if (r < 0)
                return r;
        /* one flush for both: raise_and_copy writes the raised refcounts, copies, flushes */
        qsort(b->to_copy, b->nc, sizeof(Move *), cmp_move_ptr);
        return raise_and_copy(img, b->to_copy, b->nc, ev, buf, res);
}

/* (D) of a batch. */
static int batch_lower(Qcow2Image *img, Batch *b) {
        int r;

        for (size_t k = 0; k < b->nr; k++) {
                r = qcow2_release_refs(img, b->rel[k].cluster, b->rel[k].count, false, false);
                if (r < 0)
                        return r;
        }
        r = qcow2_rc_commit(img);
        if (r < 0)
                return r;
        b->nc = b->nr = b->nsq = 0;
        b->bytes = 0;
        return 0;
}

typedef struct RTable {
        uint64_t cluster;
        uint64_t paths;
        uint8_t *buf;
        uint32_t lo, hi;
} RTable;

static void rtable_touch(RTable *t, uint32_t j) {
        if (t->lo >= t->hi) {
                t->lo = j;
                t->hi = j + 1;
        } else {
                t->lo = MIN(t->lo, j);
                t->hi = MAX(t->hi, j + 1);
        }
}

/* Rewrites the entries of one L2 table that point at movers; returns whether it changed. */
/*
 * Rewrites the entries [*j, end) of one L2 table that point at movers, stopping early once the
 * batch holds budget bytes of copies (*j then says where to go on). Returns whether it changed.
 */
static bool rewrite_l2(
        Qcow2Image *img, Plan *p, RTable *tb, Batch *b, uint64_t *pj, uint64_t budget, int *err) {
        bool touched = false;
        uint64_t j = *pj;

        for (; j < img->l2_entries && b->bytes < budget; j++) {
                uint64_t e = l2e_get(img, tb->buf, j);
                L2Type ty = qcow2_l2_type(img, e);
                Move *m;

                if (ty == L2_COMPRESSED) {
                        uint64_t coff, clen;
                        qcow2_compressed_range(img, e, &coff, &clen);
                        size_t si = stream_find(img, coff, clen);
                        if (si == SIZE_MAX || !p->sdst || p->sdst[si] == UINT64_MAX) {
                                if (!p->repack && cluster_of(img, coff + clen - 1) >= p->n) {
                                        /* a stream past the end with no place */
                                        *err = -EUCLEAN;
                                        *pj = j;
                                        return touched;
                                }
                                continue;
                        }
                        /*
                         * spec: "Compressed Clusters Descriptor": offset in bits 0..x-1, the
                         * number of 512-byte sectors minus one above; never COPIED.
                         */
                        uint64_t d = p->sdst[si];
                        uint64_t nsec = ((d & 511) + p->sdlen[si]) / 512;
                        wr64(tb->buf + j * img->l2_entry_size,
                             QCOW_OFLAG_COMPRESSED | ((nsec - 1) << img->csize_shift) | d);
                        for (uint64_t c = cluster_of(img, coff);
                             c <= cluster_of(img, coff + clen - 1);
                             c++)
                                batch_release(b, c, tb->paths);
                        batch_queue_stream(img, p, b, si);
                        rtable_touch(tb, (uint32_t) j);
                        touched = true;
                        continue;
                } else if (ty == L2_NORMAL || ty == L2_ZERO_ALLOC) {
                        uint64_t c = cluster_of(img, e & L2E_OFFSET_MASK);
                        m = plan_find(p, c);
                        if (!m) {
                                if (must_move(p, c)) {
                                        /* a referenced cluster past the end with no place */
                                        *err = -EUCLEAN;
                                        *pj = j;
                                        return touched;
                                }
                                continue;
                        }
                        /* spec: COPIED iff the refcount is 1 (what the destination has or gets) */
                        uint64_t d = move_dst(m, c);
                        uint64_t rc = m->copied ? img->refcount[d] : qcow2_refs_of(img, c);
                        wr64(tb->buf + j * img->l2_entry_size,
                             (e & ~(L2E_OFFSET_MASK | QCOW_OFLAG_COPIED)) | offset_of(img, d) |
                                     (rc == 1 ? QCOW_OFLAG_COPIED : 0));
                        batch_release(b, c, tb->paths);
                } else
                        continue;
                batch_queue(img, b, m);
                rtable_touch(tb, (uint32_t) j);
                touched = true;
        }
        *pj = j;
        return touched;
}

/* One batch of data moves: (A)+(B), (C) the touched tables, (D). */
static int data_batch_flush(
        Qcow2Image *img,
        Plan *p,
        RTable *tables,
        size_t nt,
        Batch *b,
        uint8_t *buf,
        RelocResult *res) {
        int r;

        r = batch_copy(img, p, b, IO_EV_DATA_COPY, buf, res);
        if (r < 0)
                return r;
        for (size_t t = 0; t < nt; t++) {
                RTable *tb = &tables[t];
                uint64_t blo = (uint64_t) tb->lo * img->l2_entry_size;
                uint64_t bhi = (uint64_t) tb->hi * img->l2_entry_size;
                r = expect_kind(img, offset_of(img, tb->cluster), img->cluster_size, CK_L2);
                if (r < 0)
                        return r;
                r = qcow2_write(
                        img,
                        IO_EV_L2_UPDATE,
                        tb->buf + blo,
                        bhi - blo,
                        offset_of(img, tb->cluster) + blo);
                if (r < 0)
                        return r;
                tb->lo = tb->hi = 0;
        }
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        return batch_lower(img, b);
}

/*
 * Data and compressed clusters: every distinct L2 table of every tree, in batches of at most
 * batch_bytes of copies (a table may span several batches) and 8 MiB of tables.
 */
static int
move_data(Qcow2Image *img, Plan *p, uint64_t batch_bytes, uint8_t *buf, RelocResult *res) {
        _cleanup_free_ RTable *tables = NULL;
        _cleanup_free_ uint8_t *pool = NULL;
        _cleanup_(batch_done) Batch b = { 0 };
        size_t max_tables = MAX((size_t) 1, (size_t) ((8u << 20) / img->cluster_size)), nt = 0;
        int r = 0;

        tables = calloc(max_tables, sizeof(RTable));
        pool = malloc(max_tables * img->cluster_size);
        if (!tables || !pool)
                return -ENOMEM;
        /* A compressed stream may touch three clusters (it can start late in one). */
        r = batch_init(&b, max_tables * img->l2_entries, max_tables * img->l2_entries * 3);
        if (r < 0)
                return r;

        for (size_t i = 0; i < img->nb_l1refs;) {
                uint64_t c, paths, j = 0;
                i = qcow2_l2_next(img, i, &c, &paths);
                RTable *tb = &tables[nt];
                *tb = (RTable){ .cluster = c,
                                .paths = paths,
                                .buf = pool + nt * img->cluster_size };
                r = qcow2_read_l2(img, offset_of(img, c), tb->buf);
                if (r < 0)
                        return r;
                bool counted = false;
                while (j < img->l2_entries) {
                        if (rewrite_l2(img, p, tb, &b, &j, batch_bytes, &r) && !counted) {
                                nt++;
                                counted = true;
                        }
                        if (r < 0)
                                return r;
                        if (j >= img->l2_entries && nt < max_tables && b.bytes < batch_bytes)
                                break;
                        /* The batch is full (or the table pool is): flush it. */
                        if (nt > 0) {
                                r = data_batch_flush(img, p, tables, nt, &b, buf, res);
                                if (r < 0)
                                        return r;
                        }
                        /* A table split across batches goes on from slot 0. */
                        if (j < img->l2_entries && tb != &tables[0]) {
                                memcpy(tables[0].buf, tb->buf, img->cluster_size);
                                tables[0].cluster = tb->cluster;
                                tables[0].paths = tb->paths;
                                tb = &tables[0];
                        }
                        tb->lo = tb->hi = 0;
                        nt = 0;
                        counted = false;
                }
                qcow2_progress(img, "move", i, img->nb_l1refs);
        }
        if (nt > 0)
                return data_batch_flush(img, p, tables, nt, &b, buf, res);
        return 0;
}

/* Writes entries [lo, hi) of bitmap table i from memory. */
static int bitmap_table_write_span(Qcow2Image *img, uint32_t i, uint64_t lo, uint64_t hi) {
        Bitmap *bm = &img->bitmaps[i];
        _cleanup_free_ uint8_t *tmp = malloc((hi - lo) * 8 + 1);
        if (!tmp)
                return -ENOMEM;
        for (uint64_t k = lo; k < hi; k++)
                wr64(tmp + (k - lo) * 8, bm->table[k]);
        return qcow2_write(img, IO_EV_BITMAP_UPDATE, tmp, (hi - lo) * 8, bm->table_offset + lo * 8);
}

static int move_bitmap_data(Qcow2Image *img, Plan *p, uint8_t *buf, RelocResult *res) {
        _cleanup_(batch_done) Batch b = { 0 };
        _cleanup_free_ uint64_t *lo = NULL, *hi = NULL;
        size_t total = 0;
        int r;

        if (!img->bitmaps)
                return 0;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++)
                total += img->bitmaps[i].table_size;
        lo = calloc(img->nb_bitmaps, sizeof(uint64_t));
        hi = calloc(img->nb_bitmaps, sizeof(uint64_t));
        if (!lo || !hi)
                return -ENOMEM;
        r = batch_init(&b, total, total);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
                Bitmap *bm = &img->bitmaps[i];
                lo[i] = UINT64_MAX;
                for (uint64_t k = 0; bm->table && k < bm->table_size; k++) {
                        uint64_t c = cluster_of(img, bm->table[k] & BME_OFFSET_MASK);
                        if (!(bm->table[k] & BME_OFFSET_MASK) || !must_move(p, c))
                                continue;
                        Move *m = plan_find(p, c);
                        if (!m)
                                return -EUCLEAN;
                        bm->table[k] =
                                (bm->table[k] & ~BME_OFFSET_MASK) | offset_of(img, move_dst(m, c));
                        batch_queue(img, &b, m);
                        batch_release(&b, c, 1);
                        lo[i] = MIN(lo[i], k);
                        hi[i] = MAX(hi[i], k + 1);
                }
        }
        if (b.nr == 0)
                return 0;
        r = batch_copy(img, p, &b, IO_EV_DATA_COPY, buf, res);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
                if (hi[i] == 0)
                        continue;
                r = bitmap_table_write_span(img, i, lo[i], hi[i]);
                if (r < 0)
                        return r;
        }
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        return batch_lower(img, &b);
}

static int move_l2_tables(Qcow2Image *img, Plan *p, uint8_t *buf, RelocResult *res) {
        _cleanup_(batch_done) Batch b = { 0 };
        _cleanup_free_ uint64_t *lo = NULL, *hi = NULL;
        uint32_t nl1 = img->nb_snapshots + 1;
        int r;

        lo = calloc(nl1, sizeof(uint64_t));
        hi = calloc(nl1, sizeof(uint64_t));
        if (!lo || !hi)
                return -ENOMEM;
        r = batch_init(&b, img->nb_l1refs, img->nb_l1refs);
        if (r < 0)
                return r;
        for (uint32_t t = 0; t < nl1; t++)
                lo[t] = UINT64_MAX;
        for (size_t i = 0; i < img->nb_l1refs; i++) {
                L1Ref *ref = &img->l1refs[i];
                Move *m = plan_find(p, ref->l2);
                if (!m) {
                        if (must_move(p, ref->l2))
                                return -EUCLEAN;
                        continue;
                }
                uint32_t size;
                uint64_t off;
                uint64_t *l1 = qcow2_l1_table(img, ref->table, &size, &off);
                uint64_t d = move_dst(m, ref->l2);
                uint64_t rc = m->copied ? img->refcount[d] : qcow2_refs_of(img, ref->l2);
                l1[ref->index] = (l1[ref->index] & ~(L1E_OFFSET_MASK | QCOW_OFLAG_COPIED)) |
                        offset_of(img, d) | (rc == 1 ? QCOW_OFLAG_COPIED : 0);
                batch_queue(img, &b, m);
                batch_release(&b, ref->l2, 1);
                lo[ref->table] = MIN(lo[ref->table], (uint64_t) ref->index);
                hi[ref->table] = MAX(hi[ref->table], (uint64_t) ref->index + 1);
                ref->l2 = move_dst(m, ref->l2);
        }
        if (b.nr == 0)
                return 0;
        /* (A)+(B): tables referenced from several L1s are copied once */
        r = batch_copy(img, p, &b, IO_EV_L2_WRITE, buf, res);
        if (r < 0)
                return r;
        /* (C) */
        for (uint32_t t = 0; t < nl1; t++) {
                r = qcow2_l1_write_span(img, t, lo[t], hi[t]);
                if (r < 0)
                        return r;
        }
        r = qcow2_flush(img);
        if (r < 0)
                return r;
        /* (D) */
        return batch_lower(img, &b);
}

/* The bytes of a table run as they must be written at its new place. */
static uint8_t *run_content(Qcow2Image *img, const Run *run) {
        uint64_t bytes = run->n * img->cluster_size;
        uint8_t *t = calloc(1, bytes);
        if (!t)
                return NULL;
        switch (run->kind) {
        case RUN_L1:
                for (uint64_t i = 0; i < img->l1_size; i++)
                        wr64(t + i * 8, img->l1[i]);
                break;
        case RUN_SNAP_L1: {
                Snapshot *s = &img->snapshots[run->id];
                for (uint64_t i = 0; i < s->l1_size; i++)
                        wr64(t + i * 8, s->l1[i]);
                break;
        }
        case RUN_SNAP_TABLE:
                memcpy(t, img->snap_raw, img->snapshots_size);
                break;
        case RUN_BITMAP_DIR:
                memcpy(t, img->bitmap_dir_raw, img->bitmap_dir_size);
                break;
        case RUN_BITMAP_TABLE: {
                Bitmap *b = &img->bitmaps[run->id];
                for (uint64_t i = 0; i < b->table_size; i++)
                        wr64(t + i * 8, b->table[i]);
                break;
        }
        case RUN_REFTABLE:
                for (uint64_t i = 0; i < img->reftable_entries; i++)
                        wr64(t + i * 8, img->reftable[i]);
                break;
        }
        return t;
}

/* (C) for a table run: the one pointer to it, one aligned write inside one sector. */
static int run_switch(Qcow2Image *img, const Run *run, uint64_t new_off) {
        uint8_t b8[8], b12[12];
        int r;

        switch (run->kind) {
        case RUN_L1:
                return qcow2_update_header_l1(img, new_off);
        case RUN_REFTABLE:
                return qcow2_update_header_reftable(img, new_off, (uint32_t) run->n);
        case RUN_SNAP_L1: {
                Snapshot *s = &img->snapshots[run->id];
                wr64(b8, new_off); /* spec: snapshot table entry, l1_table_offset at +0 */
                r = qcow2_write(
                        img, IO_EV_SNAPSHOT_UPDATE, b8, 8, img->snapshots_offset + s->entry_off);
                if (r < 0)
                        return r;
                memcpy(img->snap_raw + s->entry_off, b8, 8);
                s->l1_offset = new_off;
                return 0;
        }
        case RUN_SNAP_TABLE:
                wr32(b12, img->nb_snapshots); /* header: nb_snapshots + snapshots_offset, at 60 */
                wr64(b12 + 4, new_off);
                r = qcow2_write(img, IO_EV_HEADER_UPDATE, b12, 12, QCOW2_HDR_SNAPSHOTS);
                if (r < 0)
                        return r;
                img->snapshots_offset = new_off;
                return 0;
        case RUN_BITMAP_DIR:
                wr64(b8, new_off); /* bitmaps extension: bitmap_directory_offset at +16 */
                r = qcow2_write(img, IO_EV_HEADER_UPDATE, b8, 8, img->bitmaps_ext_pos + 16);
                if (r < 0)
                        return r;
                img->bitmap_dir_offset = new_off;
                return 0;
        case RUN_BITMAP_TABLE: {
                Bitmap *b = &img->bitmaps[run->id];
                wr64(b8, new_off); /* bitmap directory entry: bitmap_table_offset at +0 */
                r = qcow2_write(
                        img, IO_EV_BITMAP_UPDATE, b8, 8, img->bitmap_dir_offset + b->entry_off);
                if (r < 0)
                        return r;
                memcpy(img->bitmap_dir_raw + b->entry_off, b8, 8);
                b->table_offset = new_off;
                return 0;
        }
        }
        return -EINVAL;
}

static IoEvent run_event(RunKind k) {
        switch (k) {
        case RUN_L1:
                return IO_EV_L1_WRITE;
        case RUN_REFTABLE:
                return IO_EV_REFTABLE_WRITE;
        case RUN_SNAP_L1:
        case RUN_SNAP_TABLE:
                return IO_EV_SNAPSHOT_UPDATE;
        default:
                return IO_EV_BITMAP_UPDATE;
        }
}

/* Moves one table run: (A) raise, (B) write from memory, flush, (C) switch, flush, (D) lower,
 * flush. */
static int move_run(Qcow2Image *img, Run *run, RelocResult *res) {
        _cleanup_free_ uint8_t *tbl = NULL;
        ClusterKind kind = img->kind[run->src];
        int r;

        for (uint64_t k = 0; k < run->n; k++) {
                if (img->kind[run->dst + k] != CK_FREE || img->refcount[run->dst + k] != 0)
                        return -EUCLEAN;
                r = qcow2_rc_set(img, run->dst + k, 1);
                if (r < 0)
                        return r;
                img->kind[run->dst + k] = (uint8_t) kind;
        }
        r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        tbl = run_content(img, run);
        if (!tbl)
                return -ENOMEM;
        r = qcow2_write(
                img,
                run_event(run->kind),
                tbl,
                run->n * img->cluster_size,
                offset_of(img, run->dst));
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        r = run_switch(img, run, offset_of(img, run->dst));
        if (r < 0)
                return r;
        r = qcow2_flush(img);
        if (r < 0)
                return r;

        for (uint64_t k = 0; k < run->n; k++) {
                r = qcow2_rc_set(img, run->src + k, 0);
                if (r < 0)
                        return r;
                img->kind[run->src + k] = CK_FREE;
        }
        r = qcow2_rc_commit(img);
        if (r < 0)
                return r;
        res->clusters_moved += run->n;
        res->bytes_moved += run->n * img->cluster_size;
        run->src = run->dst;
        return 0;
}

static int move_runs_of(Qcow2Image *img, Plan *p, RunKind kind, RelocResult *res) {
        for (size_t k = 0; k < p->nb_runs; k++) {
                if (!p->runs[k].move || p->runs[k].kind != kind)
                        continue;
                int r = move_run(img, &p->runs[k], res);
                if (r < 0)
                        return r;
                p->runs[k].move = false;
        }
        return 0;
}

static int move_refblocks(Qcow2Image *img, Plan *p, RelocResult *res) {
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
                if (!off || !must_move(p, cluster_of(img, off)) ||
                    (!p->repack && (i << img->rb_bits) >= p->n))
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
                res->bytes_moved += img->cluster_size;
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
        r = qcow2_rc_commit(img);
        if (r < 0)
                return r;
        res->clusters_moved += n;
        return 0;
}

/* Sets cluster c's count to 0: in its refcount block if one describes it, else in memory only. */
static int drop_count(Qcow2Image *img, uint64_t c) {
        img->kind[c] = CK_FREE;
        if (qcow2_rc_covered(img, c))
                return qcow2_rc_set(img, c, 0);
        img->refcount[c] = 0;
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
                if (img->refcount[c] == 0 || block_dropped(img, p->n, c))
                        continue;
                r = drop_count(img, c);
                if (r < 0)
                        return r;
        }
        r = qcow2_rc_commit(img);
        if (r < 0)
                return r;

        /* Unhook refcount blocks that only describe the tail: reftable first (C)... */
        blocks = calloc(img->reftable_entries + 1, sizeof(uint64_t));
        if (!blocks)
                return -ENOMEM;
        for (uint64_t i = 0; i < img->reftable_entries; i++) {
                if (!bm_get(p->dropped, i))
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
                        r = drop_count(img, blocks[k]);
                        if (r < 0)
                                return r;
                }
                r = qcow2_rc_commit(img);
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
                if (r == -EINVAL) {
                        /*
                         * A block device (an LV) cannot be truncated: the image now ends at
                         * new_size inside it, and whoever owns the device may shrink it.
                         */
                        img->image_end = new_size;
                        return 0;
                }
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
        Qcow2Image *img, unsigned flags, uint64_t batch_bytes, RelocResult *ret, Qcow2Diag *diag) {
        _cleanup_(plan_done) Plan p = { 0 };
        _cleanup_free_ uint8_t *buf = NULL;
        RelocResult res = { 0 };
        bool simulate = flags & QCOW2_RELOC_SIMULATE;
        int r;

        if (!img->walked)
                return -EINVAL;
        /* a simulation (dry run, inspect) estimates a plain pass: no re-packing below its end */
        if (flags & QCOW2_RELOC_REPACK)
                r = plan_repack(img, &p);
        else
                r = plan_make(img, &p, (flags & QCOW2_RELOC_LAST_PASS) || simulate);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot plan the relocation: %s", strerror(-r));
        res.new_end_clusters = p.repack ? img->nb_clusters : p.n;
        res.optional_freed = p.optional_freed;

        if (simulate) {
                for (size_t k = 0; k < p.nb_moves; k++)
                        res.clusters_moved += p.moves[k].n;
                for (size_t k = 0; k < p.nb_runs; k++)
                        if (p.runs[k].move)
                                res.clusters_moved += p.runs[k].n;
                res.clusters_moved += p.stream_clusters;
                res.bytes_moved = res.clusters_moved * img->cluster_size;
                res.optional_freed = p.optional_freed;
                *ret = res;
                return 0;
        }

        buf = malloc(COPY_CHUNK);
        if (!buf)
                return -ENOMEM;
        if (batch_bytes == 0)
                batch_bytes = 1u << 30; /* barriers per batch; safety does not depend on its size */

#define STEP(call, what)                                                                        \
        do {                                                                                    \
                r = (call);                                                                     \
                if (r < 0)                                                                      \
                        return qcow2_diag(diag, r, "moving %s failed: %s", what, strerror(-r)); \
        } while (0)
        STEP(move_data(img, &p, batch_bytes, buf, &res), "data clusters");
        STEP(move_bitmap_data(img, &p, buf, &res), "bitmap data");
        STEP(move_l2_tables(img, &p, buf, &res), "L2 tables");
        STEP(move_runs_of(img, &p, RUN_BITMAP_TABLE, &res), "bitmap tables");
        STEP(move_runs_of(img, &p, RUN_L1, &res), "the L1 table");
        STEP(move_runs_of(img, &p, RUN_SNAP_L1, &res), "snapshot L1 tables");
        STEP(move_runs_of(img, &p, RUN_SNAP_TABLE, &res), "the snapshot table");
        STEP(move_runs_of(img, &p, RUN_BITMAP_DIR, &res), "the bitmap directory");
        STEP(move_refblocks(img, &p, &res), "refcount blocks");
        STEP(move_runs_of(img, &p, RUN_REFTABLE, &res), "the refcount table");
        if (!p.repack && !(flags & QCOW2_RELOC_KEEP_TAIL))
                STEP(release_tail(img, &p, &res), "the tail");
        STEP(slen_cache_update(img, &p), "the tail");
#undef STEP
        qcow2_progress(img, "move", 1, 1);
        *ret = res;
        return 0;
}

/* ---- merging the halves of an interrupted move ---- */

typedef struct Unit {
        uint64_t start, n;
        uint8_t kind;
        uint64_t hash;
} Unit;

static int cmp_unit(const void *a, const void *b) {
        const Unit *x = a, *y = b;
        if (x->kind != y->kind)
                return x->kind < y->kind ? -1 : 1;
        if (x->n != y->n)
                return x->n < y->n ? -1 : 1;
        if (x->hash != y->hash)
                return x->hash < y->hash ? -1 : 1;
        return x->start < y->start ? -1 : x->start > y->start;
}

static int read_unit(Qcow2Image *img, const Unit *u, uint8_t *buf) {
        uint64_t off = offset_of(img, u->start), len = u->n * img->cluster_size;
        uint64_t avail = off < img->file_size ? MIN(len, img->file_size - off) : 0;
        memset(buf, 0, len);
        return avail ? io_pread(img->io, buf, avail, off) : 0;
}

/* A 64-bit hash for grouping candidates (FNV-1a's prime, eight bytes at a time). */
static uint64_t hash_bytes(const uint8_t *p, size_t n) {
        uint64_t h = 0xcbf29ce484222325ULL ^ n;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                h = (h ^ w) * 0x100000001b3ULL;
                h ^= h >> 29;
        }
        for (; i < n; i++)
                h = (h ^ p[i]) * 0x100000001b3ULL;
        return h;
}

typedef struct SUnit {
        size_t i;     /* stream */
        uint64_t len; /* bytes compared: exact length, or the whole range */
        uint64_t hash;
} SUnit;

static int cmp_sunit(const void *a, const void *b) {
        const SUnit *x = a, *y = b;
        if (x->len != y->len)
                return x->len < y->len ? -1 : 1;
        if (x->hash != y->hash)
                return x->hash < y->hash ? -1 : 1;
        return x->i < y->i ? -1 : x->i > y->i;
}

/* Reads stream i's range (zeros past the end of the file) into buf. */
static int read_stream(Qcow2Image *img, size_t i, uint8_t *buf) {
        const Stream *s = &img->streams[i];
        uint64_t avail =
                s->off < img->file_size ? MIN((uint64_t) s->len, img->file_size - s->off) : 0;
        memset(buf, 0, s->len);
        return avail ? io_pread(img->io, buf, avail, s->off) : 0;
}

/*
 * Streams that hold the same bytes are merged: from the highest down, each into the lowest
 * identical one (its L2 entries get that one's descriptor), so every content is stored once.
 * That joins the halves of an interrupted re-pack (a stream counted exactly with the
 * references not switched yet, and its copy counted in full with the others), and it makes
 * the result independent of where an interruption left copies: an uninterrupted run and any
 * re-run keep the same streams. A target whose clusters lack room for the merged references
 * is raised first (raise[], applied by the caller before the switch); never past the refcount
 * width. Fills p's stream arrays (merges need no copy).
 */
static int merge_stream_twins(Qcow2Image *img, Plan *p, uint64_t *gain, size_t *ret_merged) {
        _cleanup_free_ SUnit *u = NULL;
        _cleanup_free_ uint8_t *a = NULL, *b = NULL, *out = NULL, *win = NULL;
        size_t nu = 0, ns = img->nb_streams, merged = 0;
        size_t wcap = MAX((size_t) COPY_CHUNK, (size_t) (2 * img->cluster_size + 512));
        uint64_t wlo = 0, whi = 0;
        int r;

        *ret_merged = 0;
        if (ns == 0)
                return 0;
        p->sdst = malloc(ns * sizeof(uint64_t));
        p->sdlen = calloc(ns, sizeof(uint32_t));
        p->scopied = calloc(DIV_ROUND_UP(ns, 8) + 1, 1);
        p->squeued = calloc(DIV_ROUND_UP(ns, 8) + 1, 1);
        p->xlen = calloc(ns, sizeof(uint32_t));
        u = calloc(ns, sizeof(SUnit));
        a = malloc(2 * img->cluster_size + 512);
        b = malloc(2 * img->cluster_size + 512);
        out = malloc(img->cluster_size);
        win = malloc(wcap);
        if (!p->sdst || !p->sdlen || !p->scopied || !p->squeued || !p->xlen || !u || !a || !b ||
            !out || !win)
                return -ENOMEM;
        /*
         * Hash every stream, in large sequential reads (the streams are sorted by offset), and
         * remember the exact lengths for the first pass's planner (see slen_cache_update).
         */
        _cleanup_free_ Stream *cache = calloc(ns, sizeof(Stream));
        if (!cache)
                return -ENOMEM;
        for (size_t i = 0; i < ns; i++) {
                const Stream *s = &img->streams[i];
                p->sdst[i] = UINT64_MAX;
                if (s->off < wlo || s->off + s->len > whi) {
                        wlo = s->off;
                        whi = wlo + wcap;
                        uint64_t avail = wlo < img->file_size ? MIN(wcap, img->file_size - wlo) : 0;
                        if (avail > 0) {
                                r = io_pread(img->io, win, avail, wlo);
                                if (r < 0)
                                        return r;
                        }
                        memset(win + avail, 0, wcap - avail);
                }
                const uint8_t *sb = win + (s->off - wlo);
                size_t xl = 0;
                const Stream *known = slen_cache_find(img, s->off, s->len);
                if (known)
                        xl = known->refs == UINT32_MAX ? 0 : known->refs;
                else if (qcow2_stream_length(img, sb, s->len, out, &xl) < 0 || xl > s->len)
                        xl = 0;
                cache[i] = (Stream){ .off = s->off, .len = s->len, .refs = xl ? xl : UINT32_MAX };
                if (xl == 0)
                        xl = s->len;
                u[nu++] = (SUnit){ .i = i, .len = xl, .hash = hash_bytes(sb, xl) };
        }
        free(img->slen_cache); /* sorted like the streams */
        img->slen_cache = TAKE_PTR(cache);
        img->nb_slen_cache = ns;
        if (nu < 2)
                return 0;
        qsort(u, nu, sizeof(SUnit), cmp_sunit);
        for (size_t g = 0; g < nu;) {
                size_t e = g + 1;
                while (e < nu && u[e].len == u[g].len && u[e].hash == u[g].hash)
                        e++;
                for (size_t x = e; x-- > g;) {
                        const Stream *xs = &img->streams[u[x].i];
                        bool xread = false;
                        if (bm_get(p->squeued, u[x].i))
                                continue; /* others were merged into it: it stays */
                        /*
                         * The lowest twin with room first; a higher one too: an interrupted
                         * re-pack may have put the copy above the original (scratch).
                         */
                        for (size_t t = g; t < e; t++) {
                                const Stream *ts = &img->streams[u[t].i];
                                bool fits = t != x && p->sdst[u[t].i] == UINT64_MAX;
                                for (uint64_t c = cluster_of(img, ts->off);
                                     fits && c <= stream_last_cluster(img, ts);
                                     c++)
                                        fits = c < img->nb_clusters &&
                                                qcow2_refs_of(img, c) + gain[c] + xs->refs <=
                                                        img->refcount_max;
                                if (!fits)
                                        continue;
                                if (!xread) {
                                        r = read_stream(img, u[x].i, b);
                                        if (r < 0)
                                                return r;
                                        xread = true;
                                }
                                r = read_stream(img, u[t].i, a);
                                if (r < 0)
                                        return r;
                                if (memcmp(a, b, u[x].len) != 0)
                                        continue;
                                for (uint64_t c = cluster_of(img, ts->off);
                                     c <= stream_last_cluster(img, ts);
                                     c++)
                                        gain[c] += xs->refs;
                                p->sdst[u[x].i] = ts->off;
                                p->sdlen[u[x].i] = ts->len;
                                bm_set(p->scopied, u[x].i);
                                bm_set(p->squeued, u[t].i); /* a target: never merged away */
                                merged++;
                                break;
                        }
                }
                g = e;
        }
        memset(p->squeued, 0, DIV_ROUND_UP(ns, 8) + 1);
        *ret_merged = merged;
        return 0;
}

int qcow2_merge_twins(Qcow2Image *img, uint64_t *ret_merged, Qcow2Diag *diag) {
        _cleanup_(plan_done) Plan p = { 0 };
        _cleanup_free_ Unit *units = NULL;
        _cleanup_free_ uint8_t *a = NULL, *b = NULL, *buf = NULL;
        _cleanup_free_ uint64_t *gain = NULL; /* references a target will have after merging */
        RelocResult res = { 0 };
        size_t nu = 0, max_run = 1;
        uint64_t lowered = 0;
        int r;

        *ret_merged = 0;
        if (img->nb_oc == 0 && img->nb_streams == 0)
                return 0;
        units = calloc(img->nb_oc + 1, sizeof(Unit));
        if (!units)
                return -ENOMEM;
        /* Units: over-counted data clusters and L2 tables (streams: merge_stream_twins). */
        for (size_t i = 0; i < img->nb_oc; i++) {
                uint64_t c = img->oc[i].cluster;
                ClusterKind k = img->kind[c];
                if (k == CK_DATA || k == CK_L2)
                        units[nu++] = (Unit){ .start = c, .n = 1, .kind = (uint8_t) k };
        }
        a = malloc(max_run * img->cluster_size);
        b = malloc(max_run * img->cluster_size);
        gain = calloc(img->nb_clusters + 1, sizeof(uint64_t));
        p.moves = calloc(nu + 1, sizeof(Move));
        p.dropped = calloc(DIV_ROUND_UP(img->reftable_entries, 8) + 1, 1);
        buf = malloc(COPY_CHUNK);
        if (!a || !b || !gain || !p.moves || !p.dropped || !buf)
                return -ENOMEM;
        for (size_t i = 0; i < nu; i++) {
                r = read_unit(img, &units[i], a);
                if (r < 0)
                        return r;
                units[i].hash = hash_bytes(a, units[i].n * img->cluster_size);
        }
        qsort(units, nu, sizeof(Unit), cmp_unit);

        /*
         * Within a group of equal hashes, from the highest unit down: merge each into the lowest
         * unit below it that has room for its references (refcount minus references) and holds
         * the same bytes. An interrupted move left a source counted in full with some of its
         * references, and a destination counted in full with the others: the source finds a
         * destination (any identical one will do: merging identical bytes changes no view).
         */
        _cleanup_free_ bool *merged = calloc(nu + 1, sizeof(bool));
        if (!merged)
                return -ENOMEM;
        for (size_t g = 0; g < nu;) {
                size_t e = g + 1;
                while (e < nu && units[e].kind == units[g].kind && units[e].n == units[g].n &&
                       units[e].hash == units[g].hash)
                        e++;
                for (size_t x = e; x-- > g + 1;) {
                        Unit *xu = &units[x];
                        bool xread = false, any = false;
                        for (uint64_t q = 0; q < xu->n; q++)
                                any = any || qcow2_refs_of(img, xu->start + q) > 0;
                        if (!any)
                                continue; /* nothing refers to it: a plain leak */
                        for (size_t t = g; t < x; t++) {
                                Unit *tu = &units[t];
                                bool fits = !merged[t];
                                for (uint64_t q = 0; q < tu->n && fits; q++)
                                        fits = img->refcount[tu->start + q] >=
                                                qcow2_refs_of(img, tu->start + q) +
                                                        gain[tu->start + q] +
                                                        qcow2_refs_of(img, xu->start + q);
                                if (!fits)
                                        continue;
                                if (!xread) {
                                        r = read_unit(img, xu, b);
                                        if (r < 0)
                                                return r;
                                        xread = true;
                                }
                                r = read_unit(img, tu, a);
                                if (r < 0)
                                        return r;
                                if (memcmp(a, b, tu->n * img->cluster_size) != 0)
                                        continue;
                                for (uint64_t q = 0; q < tu->n; q++)
                                        gain[tu->start + q] += qcow2_refs_of(img, xu->start + q);
                                merged[x] = true;
                                p.moves[p.nb_moves++] = (Move){ .src = xu->start,
                                                                .dst = tu->start,
                                                                .n = tu->n,
                                                                .copied = true };
                                break;
                        }
                }
                g = e;
        }

        size_t smerged = 0;
        r = merge_stream_twins(img, &p, gain, &smerged);
        if (r < 0)
                return r;
        if (p.nb_moves > 0 || smerged > 0) {
                /*
                 * (A) merged streams' targets that lack room for the references they get
                 * (identical streams that were not the halves of one move)
                 */
                bool raised = false;
                for (uint64_t c = 0; smerged > 0 && c < img->nb_clusters; c++) {
                        uint64_t want = qcow2_refs_of(img, c) + gain[c];
                        if (gain[c] == 0 || img->kind[c] != CK_COMPRESSED ||
                            img->refcount[c] >= want)
                                continue;
                        r = qcow2_rc_set(img, c, want);
                        if (r < 0)
                                return qcow2_diag(
                                        diag,
                                        r,
                                        "merging identical streams failed: %s",
                                        strerror(-r));
                        raised = true;
                }
                if (raised) {
                        r = qcow2_rc_write_dirty(img);
                        if (r >= 0)
                                r = qcow2_flush(img);
                        if (r < 0)
                                return qcow2_diag(
                                        diag,
                                        r,
                                        "merging identical streams failed: %s",
                                        strerror(-r));
                }
                if (p.nb_moves > 0)
                        qsort(p.moves, p.nb_moves, sizeof(Move), cmp_move);
                p.n = img->nb_clusters; /* nothing is past the end here */
                p.mend = UINT64_MAX;
                r = move_data(img, &p, 32u << 20, buf, &res);
                if (r >= 0)
                        r = move_l2_tables(img, &p, buf, &res);
                if (r < 0)
                        return qcow2_diag(
                                diag, r, "merging identical copies failed: %s", strerror(-r));
                *ret_merged = p.nb_moves + smerged;
                r = qcow2_walk(img, diag);
                if (r < 0)
                        return r;
        }

        /* What is still counted too high and carries no COPIED flag can simply be lowered. */
        for (size_t i = 0; i < img->nb_oc; i++) {
                uint64_t c = img->oc[i].cluster;
                if (img->kind[c] == CK_DATA || img->kind[c] == CK_L2)
                        continue;
                r = qcow2_rc_set(img, c, img->oc[i].refs);
                if (r < 0)
                        return r;
                lowered++;
        }
        if (lowered > 0) {
                r = qcow2_rc_write_dirty(img);
                if (r >= 0)
                        r = qcow2_flush(img);
                if (r < 0)
                        return qcow2_diag(
                                diag, r, "lowering over-counted clusters failed: %s", strerror(-r));
                r = qcow2_walk(img, diag);
                if (r < 0)
                        return r;
        }
        return 0;
}
