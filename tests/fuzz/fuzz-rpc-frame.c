/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz target: the RPC frame decoder and Envelope unpacking on a hostile byte stream, as the
 * host sees a guest's channel.
 *
 * Input: byte 0 picks how the stream is chunked; the rest is the stream. The stream is
 * decoded twice, once in the largest feeds the decoder takes and once in the chunks byte 0
 * asks for (0: one byte at a time). Both runs must yield the same frames, error count and
 * CRC work (decisions depend on the bytes only); the decoder's buffer must stay within
 * RPC_DECODER_MAX_BUFFER and its CRC work within its budget (RPC_DECODER_CRC_WORK_*).
 * Every frame is unpacked, and so is the stream itself as one payload (mutations rarely keep
 * a CRC valid, which would hide the protobuf layer); an accepted message must agree with
 * rpc_message_peek_version() and survive pack -> decode -> unpack -> pack unchanged.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "rpc-frame.h"
#include "rpc-message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                 \
        do {                     \
                if (!(x))        \
                        abort(); \
        } while (0)

typedef struct Result {
        uint64_t frames;
        uint64_t errors;
        uint64_t crc_bytes;
        uint32_t digest; /* crc32 over every (length, payload) in order */
} Result;

/* pack -> decode -> unpack -> pack must reproduce the same frame. */
static void check_repack(const Reclaim__Envelope *m) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = NULL;
        _cleanup_free_ uint8_t *frame = NULL, *frame2 = NULL;
        Reclaim__Envelope *u = NULL;
        const uint8_t *p;
        size_t flen, flen2, len;
        int r;

        r = rpc_message_pack(m, &frame, &flen);
        if (r == -EMSGSIZE || r == -ENOMEM)
                return;
        CHECK(r == 0);

        d = rpc_decoder_new();
        if (!d)
                return;
        CHECK(rpc_decoder_feed(d, frame, flen) == (int) flen);
        CHECK(rpc_decoder_next(d, &p, &len) == 1);
        CHECK(rpc_decoder_errors(d) == 0);
        r = rpc_message_unpack(p, len, &u);
        if (r == -ENOMEM)
                return;
        CHECK(r == 0);
        r = rpc_message_pack(u, &frame2, &flen2);
        reclaim__envelope__free_unpacked(u, NULL);
        if (r == -ENOMEM)
                return;
        CHECK(r == 0);
        CHECK(flen2 == flen && memcmp(frame, frame2, flen) == 0);
}

static void handle_frame(const uint8_t *p, size_t len) {
        Reclaim__Envelope *m = NULL;
        uint32_t v;
        int r, rv;

        CHECK(len >= 1 && len <= RPC_MAX_FRAME);

        rv = rpc_message_peek_version(p, len, &v);
        r = rpc_message_unpack(p, len, &m);
        CHECK(r == 0 || r == -EBADMSG || r == -EPROTONOSUPPORT || r == -ENOMEM);
        if (r == -EPROTONOSUPPORT)
                CHECK(rv == 0 && RPC_PROTOCOL_VERSION_MAJOR(v) != RPC_PROTOCOL_MAJOR);
        if (r < 0)
                return;

        CHECK(rv == 0 && v == m->protocol_version);
        (void) rpc_message_body_name(m->body_case);
        if (m->body_case != RECLAIM__ENVELOPE__BODY__NOT_SET)
                check_repack(m);
        reclaim__envelope__free_unpacked(m, NULL);
}

static void drain(RpcDecoder *d, Result *res, bool unpack) {
        const uint8_t *p;
        size_t len;
        int r;

        while ((r = rpc_decoder_next(d, &p, &len)) > 0) {
                uint8_t l[4] = { len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, 0 };

                res->frames++;
                res->digest = (uint32_t) crc32(res->digest, l, sizeof(l));
                res->digest = (uint32_t) crc32(res->digest, p, (uInt) len);
                if (unpack)
                        handle_frame(p, len);
        }
        CHECK(r == 0);
        CHECK(rpc_decoder_capacity(d) <= RPC_DECODER_MAX_BUFFER);
}

/* Decodes the stream in chunks chosen by mode (0xff: as much as the decoder takes). */
static bool run(const uint8_t *s, size_t n, uint8_t mode, bool unpack, Result *res) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        uint64_t rng = mode * 0x9e3779b97f4a7c15u + 1;
        size_t off = 0;

        if (!d)
                return false;
        *res = (Result){};
        while (off < n) {
                size_t want = n - off;
                int r;

                if (mode == 0)
                        want = 1;
                else if (mode != 0xff) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        want = MIN(
                                want, 1 + (size_t) (rng % ((size_t) mode * (mode & 1 ? 997 : 7))));
                }
                r = rpc_decoder_feed(d, s + off, want);
                if (r == -ENOMEM)
                        return false;
                CHECK(r > 0); /* drained after every feed: there is always room */
                CHECK(rpc_decoder_buffered(d) <= RPC_DECODER_MAX_BUFFER);
                off += (size_t) r;
                drain(d, res, unpack);
        }
        res->errors = rpc_decoder_errors(d);
        res->crc_bytes = rpc_decoder_crc_bytes(d);
        CHECK(res->crc_bytes <=
              (uint64_t) RPC_DECODER_CRC_WORK_FACTOR * n + RPC_DECODER_CRC_WORK_SLACK);
        return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        Result whole, chunked;

        if (size < 1 || size > (1u << 20))
                return 0;

        /* the stream as one payload: reaches the protobuf layer without a valid CRC */
        if (size - 1 >= 1 && size - 1 <= RPC_MAX_FRAME)
                handle_frame(data + 1, size - 1);

        if (!run(data + 1, size - 1, 0xff, true, &whole))
                return 0;
        if (!run(data + 1, size - 1, data[0], false, &chunked))
                return 0;
        CHECK(whole.frames == chunked.frames);
        CHECK(whole.errors == chunked.errors);
        CHECK(whole.crc_bytes == chunked.crc_bytes);
        CHECK(whole.digest == chunked.digest);
        return 0;
}
