/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The two entry points: qcow2_inspect() (read-only) and qcow2_compact() (pre-check, leak
 * repair, zero pass, relocation passes, post-check).
 */

#include "qcow2-internal.h"

#define MAX_PASSES 8
#define MAX_REPACK_STEPS 4096

/*
 * "Looks preallocated": every guest cluster has a host cluster and host offsets follow guest
 * offsets (qemu-img create -o preallocation=metadata|falloc|full lays clusters out linearly;
 * a guest filling its disk does not).
 */
static bool looks_preallocated(const Qcow2Image *img) {
        uint64_t guest_clusters = DIV_ROUND_UP(img->virtual_size, img->cluster_size);
        return guest_clusters > 0 && img->guest_allocated == guest_clusters && img->guest_monotone;
}

static void fill_header_info(const Qcow2Image *img, Qcow2Info *info) {
        info->format_version = img->version;
        info->cluster_bits = img->cluster_bits;
        info->cluster_size = img->cluster_size;
        info->refcount_bits = img->refcount_bits;
        info->virtual_size = img->virtual_size;
        info->file_size = img->file_size;
        info->snapshots = img->nb_snapshots;
        info->bitmaps = img->has_bitmaps_ext ? img->nb_bitmaps : 0;
        info->extended_l2 = img->l2_entry_size == 16;
        info->lazy_refcounts = img->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
        info->has_backing_file = img->backing_offset != 0;
        snprintf(info->backing_file, sizeof(info->backing_file), "%s", img->backing_file);
        snprintf(info->backing_format, sizeof(info->backing_format), "%s", img->backing_format);
}

int qcow2_inspect(
        Qcow2Image *img, const Qcow2InspectOptions *opts, Qcow2Info *ret, Qcow2Diag *diag) {
        Qcow2Info info = { 0 };
        Qcow2Diag walk_diag = { { 0 } };
        ZeroPassResult z = { 0 };
        RelocResult rr = { 0 };
        int r;

        if (!img || !ret)
                return -EINVAL;
        img->progress = opts ? opts->progress : NULL;
        img->progress_userdata = opts ? opts->userdata : NULL;

        img->tolerate_stale = opts && opts->live;
        r = qcow2_walk(img, &walk_diag);
        img->tolerate_stale = false;
        fill_header_info(img, &info);
        if (r < 0) {
                if (!qcow2_error_is_refusal(r))
                        return qcow2_diag(diag, r, "%s", walk_diag.message);
                /* Corrupt: report what the header says, and why compaction would refuse. */
                info.compactable = false;
                snprintf(info.refusal, sizeof(info.refusal), "%s", walk_diag.message);
                info.compacted_size_estimate = img->file_size;
                *ret = info;
                return 0;
        }

        info.allocated_bytes = qcow2_count_used(img) * img->cluster_size;
        info.data_clusters = img->data_clusters + img->zero_alloc_clusters;
        info.zero_flag_clusters = img->zero_plain_clusters;
        info.compressed_clusters = img->compressed_clusters;
        info.l2_tables = img->l2_tables;
        info.leaked_clusters = img->leaked_clusters;
        info.preallocated = looks_preallocated(img);
        info.compactable = img->refusal_code == 0;
        if (img->refusal_code)
                snprintf(info.refusal, sizeof(info.refusal), "%s", img->refusal);
        info.stale_refcounts = img->stale_refcounts;
        if (img->stale_refcounts && info.compactable) {
                info.compactable = false;
                snprintf(
                        info.refusal,
                        sizeof(info.refusal),
                        "%" PRIu64
                        " clusters have a refcount below their references "
                        "(the image is in use, or corrupt)",
                        img->stale_refcounts);
        }

        /* Estimate by simulation: the same code as a real run, with writes turned off. */
        info.zero_data_clusters = img->zero_alloc_clusters;
        if (opts && opts->scan) {
                r = qcow2_zero_pass(img, true, &z);
                if (r < 0 && r != -EOPNOTSUPP)
                        return qcow2_diag(
                                diag, r, "scanning data clusters failed: %s", strerror(-r));
                if (r >= 0) {
                        info.zero_data_clusters = z.zero_data_clusters;
                        info.scanned = true;
                }
        }
        r = qcow2_relocate(img, QCOW2_RELOC_SIMULATE, 0, &rr, NULL);
        if (r >= 0)
                info.compacted_size_estimate =
                        MIN(offset_of(img, rr.new_end_clusters), img->file_size);
        else
                info.compacted_size_estimate = img->file_size;
        info.reclaimable_bytes = img->file_size - info.compacted_size_estimate;

        img->walked = false; /* the simulation changed the in-memory map */
        *ret = info;
        return 0;
}

/* Re-reads everything from disk through a fresh image object and checks it. */
static int post_check(Qcow2Image *img, Qcow2Diag *diag) {
        _cleanup_(qcow2_closep) Qcow2Image *v = NULL;
        Qcow2Diag d = { { 0 } };
        int r;

        r = qcow2_open(img->io, 0, &v, &d);
        if (r >= 0)
                r = qcow2_walk(v, &d);
        if (r < 0)
                return qcow2_diag(
                        diag, r, "post-check failed (please report this bug): %s", d.message);
        return 0;
}

/*
 * One relocation (a pass or a re-pack step), from a fresh walk when asked, followed by the
 * post-check; adds what it moved to st.
 */
static int relocate_step(
        Qcow2Image *img,
        unsigned flags,
        bool walk,
        const Qcow2CompactOptions *opts,
        Qcow2CompactStats *st,
        RelocResult *rr,
        Qcow2Diag *diag) {
        int r;

        if (walk) {
                r = qcow2_walk(img, diag);
                if (r < 0)
                        return r;
        }
        r = qcow2_relocate(img, flags, opts->batch_bytes, rr, diag);
        if (r < 0)
                return r;
        st->clusters_moved += rr->clusters_moved;
        st->bytes_moved += rr->bytes_moved;
        /* The next step walks again: free this map before the check builds its own. */
        qcow2_walk_reset(img);
        return post_check(img, diag);
}

static int clear_unknown_autoclear(Qcow2Image *img) {
        uint8_t buf[8];
        int r;

        if (img->version < 3 || !(img->autoclear & ~QCOW2_AUTOCLEAR_KNOWN))
                return 0;
        /* spec: a writer that does not know an autoclear bit must clear it before writing */
        img->autoclear &= QCOW2_AUTOCLEAR_KNOWN;
        wr64(buf, img->autoclear);
        r = qcow2_write(img, IO_EV_HEADER_UPDATE, buf, sizeof(buf), QCOW2_HDR_AUTOCLEAR);
        if (r < 0)
                return r;
        return qcow2_flush(img);
}

static int compact_run(
        Qcow2Image *img, const Qcow2CompactOptions *opts, Qcow2CompactStats *ret, Qcow2Diag *diag) {
        static const Qcow2CompactOptions defaults = { 0 };
        Qcow2CompactStats st = { 0 };
        ZeroPassResult z = { 0 };
        RelocResult rr = { 0 };
        int r;

        if (!img || !ret)
                return -EINVAL;
        if (!opts)
                opts = &defaults;
        img->progress = opts->progress;
        img->progress_userdata = opts->userdata;
        img->bytes_written = img->flushes = 0;
        st.dry_run = opts->dry_run;
        img->slen_cache = mfree(img->slen_cache);
        img->nb_slen_cache = 0;
        st.file_size_before = st.file_size_after = img->file_size;

        if (img->refusal_code)
                return qcow2_diag(diag, img->refusal_code, "%s", img->refusal);
        if (!opts->dry_run && !(img->flags & QCOW2_OPEN_WRITE))
                return -EROFS;

        /* Pre-check: nothing is written before this passes. */
        r = qcow2_walk(img, diag);
        if (r < 0)
                return r;
        /*
         * Tables that QEMU always gives their own clusters (L1 tables, bitmap tables and
         * directory, snapshot and refcount tables) but that this image shares between two
         * owners: moving them would need every owner switched at once. QEMU never writes such
         * images; refuse them before anything is written.
         */
        for (uint64_t c = 0; c < img->nb_clusters; c++) {
                ClusterKind k = img->kind[c];
                if (img->refcount[c] > 1 && k != CK_DATA && k != CK_L2 && k != CK_COMPRESSED)
                        return qcow2_diag(
                                diag,
                                -EOPNOTSUPP,
                                "cluster %" PRIu64
                                " (%s) is shared by several owners; "
                                "QEMU never writes such images",
                                c,
                                cluster_kind_to_string(k));
        }
        if (looks_preallocated(img) && !opts->force) {
                st.skipped_preallocated = true;
                st.image_end = st.file_size_after;
                *ret = st;
                return 0;
        }

        if (opts->dry_run) {
                if (!opts->no_zero_pass) {
                        r = qcow2_zero_pass(img, true, &z);
                        if (r < 0)
                                return qcow2_diag(
                                        diag, r, "scanning data clusters failed: %s", strerror(-r));
                }
                r = qcow2_relocate(img, QCOW2_RELOC_SIMULATE, opts->batch_bytes, &rr, diag);
                if (r < 0)
                        return r;
                img->walked = false;
                st.clusters_zeroed = z.clusters_zeroed;
                st.l2_tables_freed = z.l2_tables_freed;
                st.clusters_moved = rr.clusters_moved;
                st.bytes_moved = rr.bytes_moved;
                st.file_size_after = MIN(offset_of(img, rr.new_end_clusters), img->file_size);
                st.image_end = st.file_size_after;
                *ret = st;
                return 0;
        }

        r = clear_unknown_autoclear(img);
        if (r < 0)
                return qcow2_diag(diag, r, "cannot update the header: %s", strerror(-r));
        r = qcow2_repair_leaks(img, &st.leaks_repaired);
        if (r < 0)
                return qcow2_diag(diag, r, "repairing leaked clusters failed: %s", strerror(-r));

        /* After an interrupted run: merge the two halves of every cluster caught mid-move. */
        uint64_t merged = 0;
        r = qcow2_merge_twins(img, &merged, diag);
        if (r < 0)
                return r;

        if (!opts->no_zero_pass) {
                r = qcow2_zero_pass(img, false, &z);
                if (r < 0)
                        return qcow2_diag(
                                diag, r, "releasing zero clusters failed: %s", strerror(-r));
                st.clusters_zeroed = z.clusters_zeroed;
                st.l2_tables_freed = z.l2_tables_freed;
        }

        /*
         * Relocation passes: a pass can leave a hole behind (a table run that straddled the
         * new end moves whole); the next pass fills it. Each pass starts from a fresh walk.
         *
         * With compressed data the passes keep the tail; after them, the re-pack may slide the
         * streams into one region through it (see plan_repack), then a second round of passes
         * runs, and one last pass releases the tail and truncates. So the file keeps its size
         * until that pass: a re-run after an interruption has the room the interrupted run
         * had, and ends at the same size.
         */
        bool compressed = img->nb_streams > 0;
        unsigned keep = compressed ? QCOW2_RELOC_KEEP_TAIL : 0;
        /* the planner needs the walk's exact list of streams: walk again after the zero pass */
        bool walked = !(z.clusters_zeroed > 0 || z.l2_tables_freed > 0);
        for (int round = 0; round < 2; round++) {
                uint64_t end = img->nb_clusters;
                img->scratch_end = 0;
                for (int pass = 0; pass < MAX_PASSES; pass++) {
                        uint64_t before = img->nb_clusters;
                        unsigned last = pass == MAX_PASSES - 1 ? QCOW2_RELOC_LAST_PASS : 0;
                        r = relocate_step(img, keep | last, !walked, opts, &st, &rr, diag);
                        if (r < 0)
                                return r;
                        walked = false;
                        /* Re-packing below the end frees clusters only the next pass can use. */
                        bool shrank = keep ? rr.new_end_clusters < end : img->nb_clusters < before;
                        end = MIN(end, rr.new_end_clusters);
                        /* as if this pass had truncated: no scratch past its end */
                        if (keep)
                                img->scratch_end = rr.new_end_clusters;
                        if ((rr.clusters_moved == 0 && rr.bytes_moved == 0) ||
                            (!shrank && !rr.optional_freed))
                                break;
                }
                if (!compressed || round > 0)
                        break;
                /* The re-pack, step by step, each planned from the image as it is then. */
                img->scratch_end = 0;
                int step;
                for (step = 0; step < MAX_REPACK_STEPS; step++) {
                        r = relocate_step(img, QCOW2_RELOC_REPACK, true, opts, &st, &rr, diag);
                        if (r < 0)
                                return r;
                        if (rr.clusters_moved == 0 && rr.bytes_moved == 0)
                                break;
                }
                if (step == 0)
                        break;
        }
        if (compressed) {
                r = relocate_step(img, QCOW2_RELOC_LAST_PASS, true, opts, &st, &rr, diag);
                if (r < 0)
                        return r;
        }

        img->walked = false;
        st.file_size_after = img->file_size;
        st.image_end = img->image_end ? img->image_end : img->file_size;
        st.bytes_written = img->bytes_written;
        st.flushes = img->flushes;
        *ret = st;
        return 0;
}

int qcow2_compact(
        Qcow2Image *img, const Qcow2CompactOptions *opts, Qcow2CompactStats *ret, Qcow2Diag *diag) {
        int r = compact_run(img, opts, ret, diag);

        if (img) {
                img->slen_cache = mfree(img->slen_cache);
                img->nb_slen_cache = 0;
                img->scratch_end = 0;
        }

        /*
         * A refusal means "untouched". Once something was written, a failure is an error (the
         * image is valid, at worst with leaks, and a re-run finishes the job), never a refusal.
         */
        if (r < 0 && img && img->bytes_written > 0 && qcow2_error_is_refusal(r))
                r = -ENOTRECOVERABLE;
        return r;
}
