/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Refcounts. After qcow2_walk(), img->refcount[] holds, for every host cluster of the file, the
 * value that is on disk (leaks included until repaired). Every change goes through
 * qcow2_rc_set(), which marks a span of the covering refcount block dirty; qcow2_rc_write_dirty()
 * then writes those spans, serialised from the array, to wherever the reftable points *now*.
 * Entries past the end of the file serialise as 0.
 *
 * Callers keep the barrier discipline (DESIGN.md): within one phase all changes go in one
 * direction (only raises, or only lowers), so any subset of the sectors written in that phase
 * is a valid state.
 */

#include "qcow2-internal.h"

/* spec: "Refcount block entries": refcount_bits wide, big-endian; sub-byte widths LSB first */
uint64_t qcow2_refblock_get(const Qcow2Image *img, const uint8_t *block, uint64_t idx) {
        switch (img->refcount_order) {
        case 0:
        case 1:
        case 2: {
                unsigned bits = img->refcount_bits;
                uint64_t bit = idx * bits;
                return (block[bit / 8] >> (bit % 8)) & ((1U << bits) - 1);
        }
        case 3:
                return block[idx];
        case 4:
                return rd16(block + idx * 2);
        case 5:
                return rd32(block + idx * 4);
        default:
                return rd64(block + idx * 8);
        }
}

void qcow2_refblock_set(const Qcow2Image *img, uint8_t *block, uint64_t idx, uint64_t value) {
        switch (img->refcount_order) {
        case 0:
        case 1:
        case 2: {
                unsigned bits = img->refcount_bits;
                uint64_t bit = idx * bits;
                uint8_t mask = (uint8_t) (((1U << bits) - 1) << (bit % 8));
                block[bit / 8] =
                        (uint8_t) ((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
                break;
        }
        case 3:
                block[idx] = (uint8_t) value;
                break;
        case 4: {
                uint16_t v = htobe16((uint16_t) value);
                memcpy(block + idx * 2, &v, 2);
                break;
        }
        case 5:
                wr32(block + idx * 4, (uint32_t) value);
                break;
        default:
                wr64(block + idx * 8, value);
                break;
        }
}

bool qcow2_rc_covered(const Qcow2Image *img, uint64_t c) {
        uint64_t i = c >> img->rb_bits;
        return i < img->reftable_entries && (img->reftable[i] & REFT_OFFSET_MASK) != 0;
}

int qcow2_rc_set(Qcow2Image *img, uint64_t c, uint64_t value) {
        uint64_t i = c >> img->rb_bits;
        uint32_t e = (uint32_t) (c & (img->rb_entries - 1));

        if (c >= img->nb_clusters || value > img->refcount_max || value > UINT32_MAX)
                return -ERANGE;
        if (!qcow2_rc_covered(img, c))
                return -EUCLEAN; /* planner bug: never target a cluster without a refcount block */
        img->refcount[c] = (uint32_t) value;
        if (img->rb_dirty_lo[i] >= img->rb_dirty_hi[i]) {
                img->rb_dirty_list[img->rb_dirty_n++] = i;
                img->rb_dirty_lo[i] = e;
                img->rb_dirty_hi[i] = e + 1;
        } else {
                img->rb_dirty_lo[i] = MIN(img->rb_dirty_lo[i], e);
                img->rb_dirty_hi[i] = MAX(img->rb_dirty_hi[i], e + 1);
        }
        return 0;
}

int qcow2_rc_write_dirty(Qcow2Image *img) {
        _cleanup_free_ uint8_t *buf = malloc(img->cluster_size);
        int r;

        if (!buf)
                return -ENOMEM;
        for (size_t k = 0; k < img->rb_dirty_n; k++) {
                uint64_t i = img->rb_dirty_list[k];
                uint64_t lo = img->rb_dirty_lo[i], hi = img->rb_dirty_hi[i];
                uint64_t first = i << img->rb_bits;
                uint64_t block_off = img->reftable[i] & REFT_OFFSET_MASK;

                /* Byte span holding entries [lo, hi); whole bytes are rebuilt from the array. */
                uint64_t blo = lo * img->refcount_bits / 8;
                uint64_t bhi = DIV_ROUND_UP(hi * img->refcount_bits, 8);
                uint64_t elo = blo * 8 / img->refcount_bits;
                uint64_t ehi = MIN(DIV_ROUND_UP(bhi * 8, img->refcount_bits), img->rb_entries);

                memset(buf, 0, img->cluster_size);
                for (uint64_t e = elo; e < ehi; e++) {
                        uint64_t c = first + e;
                        qcow2_refblock_set(
                                img, buf, e, c < img->nb_clusters ? img->refcount[c] : 0);
                }
                if (!block_off)
                        return -EUCLEAN;
                r = qcow2_write(img, IO_EV_REFBLOCK_UPDATE, buf + blo, bhi - blo, block_off + blo);
                if (r < 0)
                        return r;
                img->rb_dirty_lo[i] = img->rb_dirty_hi[i] = 0;
        }
        img->rb_dirty_n = 0;
        return 0;
}

int qcow2_reftable_write_span(Qcow2Image *img, uint64_t lo, uint64_t hi) {
        _cleanup_free_ uint8_t *buf = NULL;

        if (hi <= lo)
                return 0;
        buf = malloc((hi - lo) * 8);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = lo; i < hi; i++)
                wr64(buf + (i - lo) * 8, img->reftable[i]);
        return qcow2_write(
                img, IO_EV_REFTABLE_UPDATE, buf, (hi - lo) * 8, img->reftable_offset + lo * 8);
}

uint64_t qcow2_count_used(const Qcow2Image *img) {
        uint64_t n = 0;
        for (uint64_t c = 0; c < img->nb_clusters; c++)
                n += img->refcount[c] > 0;
        return n;
}

uint64_t qcow2_refs_of(const Qcow2Image *img, uint64_t c) {
        if (!bm_get(img->overcounted, c))
                return img->refcount[c];
        size_t lo = 0, hi = img->nb_oc;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (img->oc[mid].cluster < c)
                        lo = mid + 1;
                else if (img->oc[mid].cluster > c)
                        hi = mid;
                else
                        return img->oc[mid].refs;
        }
        return img->refcount[c];
}

int qcow2_release_refs(
        Qcow2Image *img, uint64_t c, uint64_t n, bool simulate, bool defer_compressed) {
        ClusterKind k = img->kind[c];
        uint64_t v;

        if ((k == CK_DATA || k == CK_L2 || (defer_compressed && k == CK_COMPRESSED)) &&
            (img->refcount[c] > 1 || bm_get(img->overcounted, c))) {
                if (!img->pending) {
                        img->pending = calloc(img->nb_clusters + 1, sizeof(uint32_t));
                        if (!img->pending)
                                return -ENOMEM;
                }
                img->pending[c] += (uint32_t) n;
                if (img->pending[c] < qcow2_refs_of(img, c))
                        return 0; /* still referenced elsewhere: keep the count as it is */
                v = 0;
        } else {
                if (img->refcount[c] < n)
                        return -EUCLEAN; /* would under-count: never */
                v = img->refcount[c] - n;
        }
        if (v == 0)
                img->kind[c] = CK_FREE;
        if (simulate) {
                img->refcount[c] = (uint32_t) v;
                return 0;
        }
        return qcow2_rc_set(img, c, v);
}

int qcow2_rc_commit(Qcow2Image *img) {
        int r = qcow2_rc_write_dirty(img);
        if (r < 0)
                return r;
        return qcow2_flush(img);
}
