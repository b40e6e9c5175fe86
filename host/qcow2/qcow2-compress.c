/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Inflating compressed clusters, only to learn whether they hold zeros. spec: compression
 * type 0 is raw deflate (no zlib header; QEMU uses a 4 KiB window), type 1 is zstd. The stream
 * length on disk is only an upper bound, so decoding stops once a whole cluster came out.
 */

#include <zlib.h>
#include <zstd.h>

#include "qcow2-internal.h"

/* Raw deflate (QEMU's 4 KiB window) of in into out; *ret_total_in: input bytes consumed.
 * Returns inflate()'s result, or Z_MEM_ERROR when it could not start. */
static int run_deflate(
        const uint8_t *in,
        size_t in_len,
        uint8_t *out,
        size_t out_len,
        size_t *ret_left,
        size_t *ret_total_in) {
        z_stream z = { 0 };
        int r;

        if (inflateInit2(&z, -12) != Z_OK)
                return Z_MEM_ERROR;
        z.next_in = (Bytef *) (uintptr_t) in;
        z.avail_in = (uInt) in_len;
        z.next_out = out;
        z.avail_out = (uInt) out_len;
        r = inflate(&z, Z_FINISH);
        (void) inflateEnd(&z);
        *ret_left = z.avail_out;
        *ret_total_in = z.total_in;
        return r;
}

static int inflate_deflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
        size_t left, used;
        int r = run_deflate(in, in_len, out, out_len, &left, &used);

        if (r == Z_MEM_ERROR)
                return -ENOMEM;
        /* Z_BUF_ERROR with a full output is fine: the stream went on past one cluster. */
        if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && left == 0)
                return 0;
        return -EBADMSG;
}

static int inflate_zstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
        ZSTD_DCtx *dctx = ZSTD_createDCtx();
        ZSTD_inBuffer ib = { in, in_len, 0 };
        ZSTD_outBuffer ob = { out, out_len, 0 };
        int r = -EBADMSG;

        if (!dctx)
                return -ENOMEM;
        while (ob.pos < ob.size && ib.pos < ib.size) {
                size_t z = ZSTD_decompressStream(dctx, &ob, &ib);
                if (ZSTD_isError(z))
                        break;
                if (z == 0 && ob.pos < ob.size)
                        break; /* frame ended early */
        }
        if (ob.pos == ob.size)
                r = 0;
        ZSTD_freeDCtx(dctx);
        return r;
}

int qcow2_decompress(const Qcow2Image *img, const uint8_t *in, size_t in_len, uint8_t *out) {
        if (img->compression_type == 1)
                return inflate_zstd(in, in_len, out, img->cluster_size);
        return inflate_deflate(in, in_len, out, img->cluster_size);
}

static int length_deflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
        size_t left, used;
        int r = run_deflate(in, in_len, out, out_len, &left, &used);

        if (r == Z_MEM_ERROR)
                return -ENOMEM;
        /* Only a stream that ends (final block) exactly after one cluster has a known length. */
        if (r == Z_STREAM_END && left == 0 && used > 0 && used <= in_len)
                return (int) used;
        return -EBADMSG;
}

static int length_zstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len) {
        size_t frame = ZSTD_findFrameCompressedSize(in, in_len);
        ZSTD_DCtx *dctx;
        int r = -EBADMSG;

        if (ZSTD_isError(frame) || frame == 0 || frame > in_len)
                return -EBADMSG;
        dctx = ZSTD_createDCtx();
        if (!dctx)
                return -ENOMEM;
        /* The frame alone must give exactly one cluster and end (QEMU checks the same). */
        ZSTD_inBuffer ib = { in, frame, 0 };
        ZSTD_outBuffer ob = { out, out_len, 0 };
        size_t z = 1;
        while (ib.pos < ib.size || (z != 0 && ob.pos < ob.size)) {
                size_t in_pos = ib.pos, out_pos = ob.pos;
                z = ZSTD_decompressStream(dctx, &ob, &ib);
                if (ZSTD_isError(z) || (ib.pos == in_pos && ob.pos == out_pos))
                        break;
        }
        if (!ZSTD_isError(z) && z == 0 && ob.pos == ob.size && ib.pos == frame)
                r = (int) frame;
        ZSTD_freeDCtx(dctx);
        return r;
}

int qcow2_stream_length(
        const Qcow2Image *img, const uint8_t *in, size_t in_len, uint8_t *out, size_t *ret_len) {
        int r;

        if (in_len == 0 || in_len > INT32_MAX)
                return -EBADMSG;
        if (img->compression_type == 1)
                r = length_zstd(in, in_len, out, img->cluster_size);
        else
                r = length_deflate(in, in_len, out, img->cluster_size);
        if (r < 0)
                return r;
        *ret_len = (size_t) r;
        return 0;
}
