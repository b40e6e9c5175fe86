/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * On-disk format constants (docs/interop/qcow2.rst in QEMU) and the engine's private state.
 * All on-disk integers are big-endian.
 */

#include <endian.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "qcow2.h"

#define QCOW2_MAGIC 0x514649fbU
#define QCOW2_V2_HEADER_SIZE 72
#define QCOW2_V3_HEADER_MIN 104
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
/* qcow2_open reads this much first, then the rest of the header cluster */
#define QCOW2_HEADER_PROBE 4096
#define QCOW2_MAX_L1_BYTES (32u << 20)      /* QEMU's QCOW_MAX_L1_SIZE */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20) /* QEMU's QCOW_MAX_REFTABLE_SIZE */
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_HOST_OFFSET (1ULL << 56)
#define QCOW2_MAX_BACKING_NAME 1023

/* spec: "Header", byte offsets of the field groups we rewrite with one write */
#define QCOW2_HDR_L1 36        /* l1_size u32 + l1_table_offset u64 */
#define QCOW2_HDR_REFTABLE 48  /* refcount_table_offset u64 + refcount_table_clusters u32 */
#define QCOW2_HDR_SNAPSHOTS 60 /* nb_snapshots u32 + snapshots_offset u64 */
#define QCOW2_HDR_AUTOCLEAR 88

/* spec: "incompatible_features" */
#define QCOW2_INCOMPAT_DIRTY (1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT (1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2 (1ULL << 4)
#define QCOW2_INCOMPAT_KNOWN 0x1fULL
#define QCOW2_COMPAT_LAZY_REFCOUNTS (1ULL << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ULL << 1)
#define QCOW2_AUTOCLEAR_KNOWN 0x3ULL

/* spec: "Header extensions" */
#define QCOW2_EXT_END 0x00000000U
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857U
#define QCOW2_EXT_BITMAPS 0x23852875U
#define QCOW2_EXT_CRYPTO 0x0537be77U
#define QCOW2_EXT_DATA_FILE 0x44415441U

/* spec: "L1 table entry", "Standard Cluster Descriptor" */
#define L1E_OFFSET_MASK 0x00fffffffffffe00ULL
#define L1E_RESERVED_MASK 0x7f000000000001ffULL
#define L2E_OFFSET_MASK 0x00fffffffffffe00ULL
#define L2E_STD_RESERVED_MASK 0x3f000000000001feULL
#define QCOW_OFLAG_COPIED (1ULL << 63)
#define QCOW_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW_OFLAG_ZERO (1ULL << 0)
#define REFT_OFFSET_MASK 0xfffffffffffffe00ULL
#define REFT_RESERVED_MASK 0x1ffULL

/* spec: "Bitmap table" entries */
#define BME_OFFSET_MASK 0x00fffffffffffe00ULL
#define BME_RESERVED_MASK 0xff000000000001feULL
#define BME_FLAG_IN_USE (1U << 0)

/* What owns a host cluster (QCOW2-NOTES §1.10). One owner kind per cluster, or corruption. */
typedef enum ClusterKind {
        CK_FREE = 0,
        CK_HEADER,
        CK_L1,
        CK_L2,
        CK_DATA,
        CK_COMPRESSED,
        CK_REFTABLE,
        CK_REFBLOCK,
        CK_SNAPSHOT_TABLE,
        CK_SNAPSHOT_L1,
        CK_BITMAP_DIR,
        CK_BITMAP_TABLE,
        CK_BITMAP_DATA,
        CK_CRYPTO,
        _CK_MAX,
} ClusterKind;

const char *cluster_kind_to_string(ClusterKind k);

typedef enum L2Type {
        L2_UNALLOCATED,
        L2_ZERO_PLAIN,
        L2_ZERO_ALLOC,
        L2_NORMAL,
        L2_COMPRESSED,
} L2Type;

typedef struct Snapshot {
        uint64_t l1_offset;
        uint32_t l1_size;
        char *id;
        char *name;
        uint64_t entry_off; /* byte offset of this entry in the snapshot table */
        uint64_t *l1;       /* host endian, loaded by the walk */
} Snapshot;

typedef struct Bitmap {
        uint64_t table_offset;
        uint32_t table_size;
        uint32_t flags;
        uint8_t granularity_bits;
        char *name;
        uint64_t entry_off; /* byte offset of this entry in the bitmap directory */
        uint64_t *table;    /* host endian, loaded by the walk */
} Bitmap;

/*
 * One compressed stream: the byte range a compressed descriptor's sector count covers, and how
 * many L2 entry paths point at it (an entry in an L2 table shared by p L1 entries counts p).
 */
typedef struct Stream {
        uint64_t off; /* spec: "Compressed Clusters Descriptor", host byte offset */
        uint32_t len; /* (sectors) * 512 - (off & 511) */
        uint32_t refs;
} Stream;

/* One L1 entry pointing at an L2 table; table 0 is the active L1, i+1 snapshot i's. */
typedef struct L1Ref {
        uint64_t l2; /* cluster index of the L2 table */
        uint32_t table;
        uint32_t index;
} L1Ref;

struct Qcow2Image {
        IoBackend *io;
        unsigned flags;
        uint64_t file_size;

        /* header (host endian) */
        uint32_t version;
        uint32_t cluster_bits;
        uint64_t cluster_size;
        uint64_t virtual_size;
        uint32_t crypt_method;
        uint32_t l1_size;
        uint64_t l1_offset;
        uint64_t reftable_offset;
        uint32_t reftable_clusters;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        uint64_t snapshots_size; /* bytes of the snapshot table */
        uint64_t incompat, compat, autoclear;
        uint32_t refcount_order;
        uint32_t refcount_bits;
        uint32_t header_length;
        uint8_t compression_type;
        uint64_t backing_offset;
        uint32_t backing_size;
        char backing_file[QCOW2_MAX_BACKING_NAME + 1];
        char backing_format[64];
        bool has_bitmaps_ext;
        uint32_t nb_bitmaps;
        uint64_t bitmap_dir_size;
        uint64_t bitmap_dir_offset;
        bool has_crypto_ext;
        uint64_t crypto_offset, crypto_length;
        bool has_data_file_ext;
        uint32_t unknown_ext_type; /* first unknown extension type, 0 if none */
        uint64_t bitmaps_ext_pos;  /* byte offset in cluster 0 of the bitmaps extension data */
        uint8_t *snap_raw;         /* the snapshot table as on disk (snapshots_size bytes) */
        uint8_t *bitmap_dir_raw;   /* the bitmap directory as on disk */

        /* derived */
        uint32_t l2_bits; /* log2(entries per L2 table) */
        uint64_t l2_entries;
        uint32_t l2_entry_size; /* 8, or 16 with extended L2 */
        uint32_t rb_bits;       /* log2(entries per refcount block) */
        uint64_t rb_entries;
        uint64_t refcount_max;
        uint64_t reftable_entries;
        uint32_t csize_shift; /* compressed descriptor: bits of the host offset */
        uint64_t csize_mask;
        uint64_t coffset_mask;

        /* why compaction must refuse this image (empty when it may proceed) */
        int refusal_code;
        char refusal[512];

        /* in-memory metadata (host endian) */
        uint64_t *l1;
        uint64_t *reftable;
        Snapshot *snapshots;
        Bitmap *bitmaps;

        /* reference map: built by qcow2_walk() */
        bool walked;
        /* qcow2_inspect(.live): refcounts below the references are counted, not refused */
        bool tolerate_stale;
        uint64_t stale_refcounts;
        uint64_t nb_clusters;     /* host clusters covered by the file (rounded up) */
        uint32_t *refcount;       /* per host cluster: the refcount as on disk (after repair) */
        uint8_t *kind;            /* per host cluster: ClusterKind */
        uint64_t leaked_clusters; /* refcount > references, inside the file */
        uint64_t leaks_past_eof;  /* non-zero refcounts past the end of the file */
        uint64_t partial_leaks;   /* referenced clusters whose refcount exceeds the references */
        uint64_t data_clusters, zero_alloc_clusters, zero_plain_clusters, compressed_clusters;
        uint64_t l2_tables;
        uint64_t guest_allocated; /* active-layer guest clusters with a host cluster */
        bool guest_monotone;      /* host offsets grow with guest offsets (preallocation) */
        L1Ref *l1refs;            /* every L1 entry of every L1 table, sorted by l2 */
        size_t nb_l1refs;
        uint8_t *cjoin;  /* bitmap: a compressed stream runs from cluster c into c+1 */
        Stream *streams; /* distinct compressed streams, sorted by (off, len) */
        size_t nb_streams;
        /*
         * Exact stream lengths learnt by an earlier relocation pass of this compaction, by the
         * range of the descriptor as it is now (a moved stream under its new range), sorted;
         * .refs holds the exact length, UINT32_MAX when the stream does not decode. Freed at
         * the start and the end of every compaction.
         */
        Stream *slen_cache;
        size_t nb_slen_cache;
        /*
         * Where the file would end had the last pass truncated it (passes that keep the tail,
         * see qcow2-compact.c): the planner uses no scratch space past it; 0: the file's end.
         */
        uint64_t scratch_end;
        uint8_t *overcounted; /* bitmap: refcount above the references (kept as is) */
        struct {
                uint64_t cluster;
                uint32_t refs;
        } * oc; /* over-counted clusters and their real reference counts, sorted */
        size_t nb_oc;
        uint32_t *pending; /* references removed so far, for deferred releases (lazy) */

        /* per reftable entry: dirty span of the refcount block, in entries [lo, hi) */
        uint32_t *rb_dirty_lo, *rb_dirty_hi;
        uint64_t *rb_dirty_list;
        size_t rb_dirty_n;

        uint64_t image_end; /* set when the file could not be truncated */

        /* accounting */
        uint64_t bytes_written;
        uint64_t flushes;
        Qcow2ProgressFn progress;
        void *progress_userdata;
};

/* ---- endian helpers ---- */
static inline uint16_t rd16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, sizeof(v));
        return be16toh(v);
}
static inline uint32_t rd32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        return be32toh(v);
}
static inline uint64_t rd64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        return be64toh(v);
}
static inline void wr32(uint8_t *p, uint32_t v) {
        v = htobe32(v);
        memcpy(p, &v, sizeof(v));
}
static inline void wr64(uint8_t *p, uint64_t v) {
        v = htobe64(v);
        memcpy(p, &v, sizeof(v));
}

static inline uint64_t cluster_of(const Qcow2Image *img, uint64_t off) {
        return off >> img->cluster_bits;
}
static inline uint64_t offset_of(const Qcow2Image *img, uint64_t cluster) {
        return cluster << img->cluster_bits;
}
static inline uint64_t size_to_clusters(const Qcow2Image *img, uint64_t size) {
        return (size + img->cluster_size - 1) >> img->cluster_bits;
}

/* printf into diag (if non-NULL) and return r. */
int qcow2_diag(Qcow2Diag *diag, int r, const char *fmt, ...) _printf_(3, 4);

/* ---- qcow2-image.c ---- */
int qcow2_write(Qcow2Image *img, IoEvent ev, const void *buf, size_t len, uint64_t off);
int qcow2_flush(Qcow2Image *img);
void qcow2_progress(Qcow2Image *img, const char *phase, uint64_t done, uint64_t total);
/* Decodes an L2 entry (standard or the first half of an extended one). */
L2Type qcow2_l2_type(const Qcow2Image *img, uint64_t entry);
/* Host byte range of a compressed descriptor. */
void qcow2_compressed_range(
        const Qcow2Image *img, uint64_t entry, uint64_t *ret_off, uint64_t *ret_len);
/* Writes the 12-byte header group at `field_off` (36 or 48): u32/u64 in on-disk order. */
int qcow2_update_header_l1(Qcow2Image *img, uint64_t l1_offset);
int qcow2_update_header_reftable(Qcow2Image *img, uint64_t reftable_offset, uint32_t clusters);

/* ---- qcow2-refcount.c ---- */
/* Reads entry idx of a refcount block buffer for the image's width. */
uint64_t qcow2_refblock_get(const Qcow2Image *img, const uint8_t *block, uint64_t idx);
void qcow2_refblock_set(const Qcow2Image *img, uint8_t *block, uint64_t idx, uint64_t value);
/* Sets the in-memory refcount of cluster c and marks its block dirty. */
int qcow2_rc_set(Qcow2Image *img, uint64_t c, uint64_t value);
/* Writes every dirty refcount block span to where the reftable points now. */
int qcow2_rc_write_dirty(Qcow2Image *img);
/* Writes every dirty refcount block span, then a barrier. */
int qcow2_rc_commit(Qcow2Image *img);
/* Is cluster c described by a refcount block (reftable entry present)? */
bool qcow2_rc_covered(const Qcow2Image *img, uint64_t c);
/* References to cluster c found by the walk (below the refcount when over-counted). */
uint64_t qcow2_refs_of(const Qcow2Image *img, uint64_t c);
/* Clusters with a non-zero refcount (in memory). */
uint64_t qcow2_count_used(const Qcow2Image *img);
/*
 * n references to cluster c were removed. Clusters whose references carry COPIED (data,
 * L2 tables) and that are shared or over-counted keep their refcount until every reference
 * is gone, then drop to 0: in between the count stays >= the references and no COPIED flag
 * that is still referenced changes meaning. Others drop by n. In memory only when simulating.
 * With defer_compressed, compressed clusters wait for their last reference too (relocation:
 * an interrupted move then leaves two identical over-counted runs that a re-run can merge).
 */
int qcow2_release_refs(
        Qcow2Image *img, uint64_t c, uint64_t n, bool simulate, bool defer_compressed);
/* Writes reftable entries [lo, hi) from memory at the current table location. */
int qcow2_reftable_write_span(Qcow2Image *img, uint64_t lo, uint64_t hi);

/* ---- qcow2-walk.c ---- */
/*
 * Builds the reference map, compares it with the on-disk refcounts like `qemu-img check`,
 * and fills img->refcount (leaks noted, not yet repaired). -EUCLEAN on corruption.
 */
int qcow2_walk(Qcow2Image *img, Qcow2Diag *diag);
void qcow2_walk_reset(Qcow2Image *img);
/* Lowers leaked refcounts (inside and past the file) to the references, on disk. */
int qcow2_repair_leaks(Qcow2Image *img, uint64_t *ret_repaired);
/* Orders Streams by offset, then range length (qsort/bsearch comparator). */
int qcow2_stream_cmp(const void *a, const void *b);
/* Reads an L2 table (raw, big-endian) into buf (one cluster). */
int qcow2_read_l2(Qcow2Image *img, uint64_t off, uint8_t *buf);

/* ---- the L1/L2 forest (qcow2-walk.c) ---- */
static inline bool bm_get(const uint8_t *bm, uint64_t i) {
        return bm[i / 8] & (1U << (i % 8));
}
static inline void bm_set(uint8_t *bm, uint64_t i) {
        bm[i / 8] |= (uint8_t) (1U << (i % 8));
}
/* L1 table number t (0 active, i+1 snapshot i): entries, size and on-disk offset. */
uint64_t *qcow2_l1_table(Qcow2Image *img, uint32_t t, uint32_t *ret_size, uint64_t *ret_offset);
/*
 * Distinct L2 tables in host order: from index i of the sorted L1 index, the table's cluster
 * and how many L1 entries point at it; returns the index of the next table.
 */
size_t qcow2_l2_next(const Qcow2Image *img, size_t i, uint64_t *ret_cluster, uint64_t *ret_paths);
/* Number of L1 entries (over all L1 tables) that point at L2 table cluster c. */
uint64_t qcow2_l2_paths(const Qcow2Image *img, uint64_t c);
/* Writes entries [lo, hi) of L1 table t from memory to where it lives now. */
int qcow2_l1_write_span(Qcow2Image *img, uint32_t t, uint64_t lo, uint64_t hi);
/* First 8 bytes of L2 entry j (standard or extended). */
static inline uint64_t l2e_get(const Qcow2Image *img, const uint8_t *l2, uint64_t j) {
        return rd64(l2 + j * img->l2_entry_size);
}
/* Subcluster bitmap of extended L2 entry j (0 for standard entries). */
static inline uint64_t l2e_bitmap(const Qcow2Image *img, const uint8_t *l2, uint64_t j) {
        return img->l2_entry_size == 16 ? rd64(l2 + j * 16 + 8) : 0;
}
/* Inflates a compressed cluster (deflate or zstd) into out (cluster_size bytes). */
int qcow2_decompress(const Qcow2Image *img, const uint8_t *in, size_t in_len, uint8_t *out);
/*
 * Exact length of the compressed stream at the start of in (in_len bytes, the descriptor's
 * range): the bytes the decoder consumes to produce one whole cluster and reach the end of the
 * stream (deflate: the final block; zstd: the end of the frame). -EBADMSG when the stream does
 * not decode to exactly one cluster or does not end inside in: then only the whole range is
 * known to hold it. out: scratch of cluster_size bytes.
 */
int qcow2_stream_length(
        const Qcow2Image *img, const uint8_t *in, size_t in_len, uint8_t *out, size_t *ret_len);

/* ---- qcow2-zero.c ---- */
typedef struct ZeroPassResult {
        uint64_t clusters_zeroed;    /* data clusters released (normal all-zero + zero-alloc) */
        uint64_t zero_data_clusters; /* allocated clusters reading as zeros (released or not) */
        uint64_t l2_tables_freed;
} ZeroPassResult;
/*
 * Finds all-zero data clusters and releases them. With simulate, only in-memory refcounts
 * change (for estimates and dry runs); nothing is written.
 */
int qcow2_zero_pass(Qcow2Image *img, bool simulate, ZeroPassResult *ret);
/* Fast all-zero test. */
bool qcow2_buffer_is_zero(const void *buf, size_t len);

/* ---- qcow2-relocate.c ---- */
typedef struct RelocResult {
        uint64_t new_end_clusters;
        uint64_t clusters_moved;
        uint64_t bytes_moved;
        uint64_t refblocks_dropped;
        uint64_t optional_freed; /* clusters below the end vacated by re-packing (next pass) */
} RelocResult;
enum {
        QCOW2_RELOC_SIMULATE = 1 << 0,  /* plan only (dry run, inspect): a plain pass */
        QCOW2_RELOC_LAST_PASS = 1 << 1, /* no re-packing of compressed runs below the end */
        QCOW2_RELOC_KEEP_TAIL = 1 << 2, /* release and truncate nothing: a later pass does */
        QCOW2_RELOC_REPACK = 1 << 3,    /* vacate the compressed zone (see plan_repack) */
};
/*
 * Plans the smallest end and (unless simulating) moves everything past it, then releases the
 * tail and truncates (unless QCOW2_RELOC_KEEP_TAIL). With QCOW2_RELOC_REPACK, vacates the zone
 * of compressed data into free clusters past it instead, when the file has them and the
 * compressed data is not packed as densely as it can be; nothing is released then.
 */
int qcow2_relocate(
        Qcow2Image *img, unsigned flags, uint64_t batch_bytes, RelocResult *ret, Qcow2Diag *diag);
/*
 * After an interrupted run: clusters (data, L2 tables, compressed streams) counted above their
 * references that have an identical twin are merged into the lower twin, then over-counts of
 * clusters without COPIED semantics are lowered in place. Re-walks when it changed anything.
 */
int qcow2_merge_twins(Qcow2Image *img, uint64_t *ret_merged, Qcow2Diag *diag);
