/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for proto/: frame encoding, the incremental resynchronising decoder, and
 * Envelope pack/unpack with the version check. Every malformed-input case asserts the exact
 * outcome (frames delivered, errors counted, -errno returned), and the decoder's buffer is
 * checked to stay bounded whatever arrives.
 */

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cmocka.h>

#include "macro.h"
#include "rpc-frame.h"
#include "rpc-message.h"

/* ---- helpers ---- */

typedef struct Frames {
        size_t n;
        uint8_t *payload[1024];
        size_t len[1024];
} Frames;

static void frames_clear(Frames *f) {
        for (size_t i = 0; i < f->n; i++)
                free(f->payload[i]);
        f->n = 0;
}

/* Takes every frame the decoder has ready into f (copies). */
static void drain(RpcDecoder *d, Frames *f) {
        const uint8_t *p;
        size_t len;
        int r;

        while ((r = rpc_decoder_next(d, &p, &len)) > 0) {
                assert_true(len >= 1 && len <= RPC_MAX_FRAME);
                if (f) {
                        assert_true(f->n < ELEMENTSOF(f->payload));
                        f->payload[f->n] = malloc(len);
                        assert_non_null(f->payload[f->n]);
                        memcpy(f->payload[f->n], p, len);
                        f->len[f->n] = len;
                        f->n++;
                }
        }
        assert_int_equal(r, 0);
}

/* Feeds buf in chunks of `chunk` bytes (0: all at once), draining after every feed. */
static void feed_chunked(RpcDecoder *d, const uint8_t *buf, size_t len, size_t chunk, Frames *f) {
        size_t off = 0;

        while (off < len) {
                size_t n = chunk ? MIN(chunk, len - off) : len - off;
                int r = rpc_decoder_feed(d, buf + off, n);

                assert_true(r > 0);
                off += (size_t) r;
                assert_true(rpc_decoder_capacity(d) <= RPC_DECODER_MAX_BUFFER);
                drain(d, f);
                assert_true(rpc_decoder_buffered(d) < RPC_DECODER_MAX_BUFFER);
        }
}

typedef struct Buf {
        uint8_t *data;
        size_t len, cap;
} Buf;

static void buf_append(Buf *b, const void *p, size_t n) {
        if (b->len + n > b->cap) {
                b->cap = MAX(2 * b->cap, b->len + n);
                b->data = realloc(b->data, b->cap);
                assert_non_null(b->data);
        }
        memcpy(b->data + b->len, p, n);
        b->len += n;
}

static void buf_append_frame(Buf *b, const void *payload, size_t n) {
        _cleanup_free_ uint8_t *frame = NULL;
        size_t flen;

        assert_int_equal(rpc_frame_encode(payload, n, &frame, &flen), 0);
        assert_int_equal(flen, RPC_FRAME_HEADER_SIZE + n);
        buf_append(b, frame, flen);
}

/* A raw header with arbitrary fields (for malformed cases). */
static void buf_append_header(Buf *b, uint32_t magic, uint32_t length, uint32_t crc) {
        uint8_t h[12];

        for (unsigned i = 0; i < 4; i++) {
                h[i] = (uint8_t) (magic >> (8 * i));
                h[4 + i] = (uint8_t) (length >> (8 * i));
                h[8 + i] = (uint8_t) (crc >> (8 * i));
        }
        buf_append(b, h, sizeof(h));
}

static uint32_t crc_of(const void *p, size_t n) {
        return (uint32_t) crc32(crc32(0L, Z_NULL, 0), p, (uInt) n);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) {
        /* xorshift64*: deterministic garbage */
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1du;
}

/* Random bytes that never contain the magic's first byte, so they cannot hide a frame start. */
static void buf_append_garbage(Buf *b, size_t n) {
        for (size_t i = 0; i < n; i++) {
                uint8_t c = (uint8_t) rng();

                if (c == (RPC_FRAME_MAGIC & 0xff))
                        c ^= 0x80;
                buf_append(b, &c, 1);
        }
}

static const uint8_t payload_a[] = "first payload";
static const uint8_t payload_b[] = "second";

/* ---- frame encoding ---- */

static void test_encode_args(void **state) {
        _cleanup_free_ uint8_t *big = calloc(1, RPC_MAX_FRAME + 1), *frame = NULL;
        uint8_t header[RPC_FRAME_HEADER_SIZE] = {}, zero[RPC_FRAME_HEADER_SIZE] = {};
        size_t len = 0;

        assert_non_null(big);
        assert_int_equal(rpc_frame_encode(NULL, 1, &frame, &len), -EINVAL);
        assert_int_equal(rpc_frame_encode(payload_a, 0, &frame, &len), -EINVAL);
        assert_int_equal(rpc_frame_encode(payload_a, 1, NULL, &len), -EINVAL);
        assert_int_equal(rpc_frame_encode(big, RPC_MAX_FRAME + 1, &frame, &len), -EMSGSIZE);
        assert_null(frame);
        assert_int_equal(len, 0);
        assert_int_equal(rpc_frame_header_write(big, RPC_MAX_FRAME + 1, header), -EMSGSIZE);
        assert_memory_equal(header, zero, sizeof(header)); /* untouched on failure */

        assert_int_equal(rpc_frame_encode(big, RPC_MAX_FRAME, &frame, &len), 0);
        assert_int_equal(len, RPC_FRAME_HEADER_SIZE + RPC_MAX_FRAME);
        /* the documented layout: "RCLM", LE length, LE crc32 */
        assert_memory_equal(frame, "RCLM", 4);
        assert_int_equal(
                frame[4] | frame[5] << 8 | frame[6] << 16 | (uint32_t) frame[7] << 24,
                RPC_MAX_FRAME);
        assert_int_equal(
                frame[8] | frame[9] << 8 | frame[10] << 16 | (uint32_t) frame[11] << 24,
                crc_of(big, RPC_MAX_FRAME));
        assert_int_equal(rpc_frame_header_write(big, RPC_MAX_FRAME, header), 0);
        assert_memory_equal(header, frame, sizeof(header));
}

static void test_decoder_args(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        const uint8_t *p = NULL;
        size_t len = 0;

        assert_non_null(d);
        assert_int_equal(rpc_decoder_feed(NULL, payload_a, 1), -EINVAL);
        assert_int_equal(rpc_decoder_feed(d, NULL, 1), -EINVAL);
        assert_int_equal(rpc_decoder_feed(d, NULL, 0), 0);
        assert_int_equal(rpc_decoder_next(NULL, &p, &len), -EINVAL);
        assert_int_equal(rpc_decoder_next(d, NULL, &len), -EINVAL);
        assert_int_equal(rpc_decoder_next(d, &p, NULL), -EINVAL);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 0);
        assert_null(p); /* out-params untouched when no frame */
        assert_int_equal(rpc_decoder_errors(NULL), 0);
        assert_int_equal(rpc_decoder_buffered(NULL), 0);
        assert_int_equal(rpc_decoder_capacity(NULL), 0);
        assert_int_equal(rpc_decoder_crc_bytes(NULL), 0);
        rpc_decoder_reset(NULL);
        assert_null(rpc_decoder_free(NULL));
        assert_int_equal(rpc_decoder_capacity(d), RPC_DECODER_INITIAL_BUFFER);
}

/* ---- decoder: good input ---- */

static void test_single_frame(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        Buf b = {};
        const uint8_t *p;
        size_t len;

        buf_append_frame(&b, payload_a, sizeof(payload_a));
        assert_int_equal(rpc_decoder_feed(d, b.data, b.len), (int) b.len);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 1);
        assert_int_equal(len, sizeof(payload_a));
        assert_memory_equal(p, payload_a, len);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 0);
        assert_int_equal(rpc_decoder_errors(d), 0);
        assert_int_equal(rpc_decoder_buffered(d), 0);
        free(b.data);
}

static void test_many_frames_one_feed(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        Frames f = {};
        Buf b = {};

        for (unsigned i = 0; i < 200; i++) {
                uint8_t payload[64];

                memset(payload, (int) i, sizeof(payload));
                buf_append_frame(&b, payload, 1 + i % sizeof(payload));
        }
        assert_int_equal(rpc_decoder_feed(d, b.data, b.len), (int) b.len);
        drain(d, &f);
        assert_int_equal(f.n, 200);
        for (unsigned i = 0; i < 200; i++) {
                assert_int_equal(f.len[i], 1 + i % 64);
                for (size_t k = 0; k < f.len[i]; k++)
                        assert_int_equal(f.payload[i][k], (uint8_t) i);
        }
        assert_int_equal(rpc_decoder_errors(d), 0);
        frames_clear(&f);
        free(b.data);
}

/* A stream mixing frames, garbage and every kind of bad header. */
static Buf mixed_stream(void) {
        Buf b = {};
        uint8_t big[3000];

        memset(big, 0x5a, sizeof(big));
        buf_append_garbage(&b, 37);
        buf_append_frame(&b, payload_a, sizeof(payload_a));
        buf_append(&b, "RCL", 3); /* partial magic, then not */
        buf_append_frame(&b, payload_b, sizeof(payload_b));
        buf_append_header(&b, RPC_FRAME_MAGIC, RPC_MAX_FRAME + 1, 0);
        buf_append_frame(&b, big, sizeof(big));
        buf_append_header(&b, RPC_FRAME_MAGIC, 0, 0);
        buf_append_header(&b, RPC_FRAME_MAGIC, 5, 0xdeadbeef);
        buf_append(&b, "abcde", 5);
        buf_append_frame(&b, payload_a, sizeof(payload_a));
        buf_append_frame(&b, payload_b, sizeof(payload_b));
        buf_append_garbage(&b, 5);
        return b;
}

static void check_mixed(const Frames *f, uint64_t errors) {
        assert_int_equal(f->n, 5);
        assert_int_equal(f->len[0], sizeof(payload_a));
        assert_memory_equal(f->payload[0], payload_a, sizeof(payload_a));
        assert_int_equal(f->len[1], sizeof(payload_b));
        assert_int_equal(f->len[2], 3000);
        assert_int_equal(f->len[3], sizeof(payload_a));
        assert_int_equal(f->len[4], sizeof(payload_b));
        /* leading garbage, "RCL", oversize, zero length, bad CRC, trailing garbage */
        assert_int_equal(errors, 6);
}

static void test_byte_by_byte(void **state) {
        static const size_t chunks[] = { 0, 1, 2, 3, 5, 7, 11, 12, 13, 64, 4095, 4096, 4097 };
        Buf b = mixed_stream();

        for (size_t i = 0; i < ELEMENTSOF(chunks); i++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                Frames f = {};

                feed_chunked(d, b.data, b.len, chunks[i], &f);
                check_mixed(&f, rpc_decoder_errors(d));
                assert_int_equal(rpc_decoder_buffered(d), 0);
                frames_clear(&f);
        }
        free(b.data);
}

static void test_large_frame_then_shrink(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        _cleanup_free_ uint8_t *big = malloc(RPC_MAX_FRAME);
        Frames f = {};
        Buf b = {};

        assert_non_null(big);
        for (size_t i = 0; i < RPC_MAX_FRAME; i++)
                big[i] = (uint8_t) rng();
        buf_append_frame(&b, big, RPC_MAX_FRAME);
        buf_append_frame(&b, payload_b, sizeof(payload_b));

        /* the whole maximal frame fits; the second frame is taken after a drain */
        assert_int_equal(rpc_decoder_feed(d, b.data, b.len), RPC_DECODER_MAX_BUFFER);
        assert_int_equal(rpc_decoder_capacity(d), RPC_DECODER_MAX_BUFFER);
        drain(d, &f);
        assert_int_equal(f.n, 1);
        assert_memory_equal(f.payload[0], big, RPC_MAX_FRAME);
        /* idle again: back to the small buffer */
        assert_int_equal(rpc_decoder_capacity(d), RPC_DECODER_INITIAL_BUFFER);
        assert_int_equal(
                rpc_decoder_feed(
                        d, b.data + RPC_DECODER_MAX_BUFFER, b.len - RPC_DECODER_MAX_BUFFER),
                (int) (b.len - RPC_DECODER_MAX_BUFFER));
        drain(d, &f);
        assert_int_equal(f.n, 2);
        assert_memory_equal(f.payload[1], payload_b, sizeof(payload_b));
        assert_int_equal(rpc_decoder_errors(d), 0);
        frames_clear(&f);
        free(b.data);
}

static void test_enobufs_when_not_drained(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        _cleanup_free_ uint8_t *junk = calloc(1, RPC_DECODER_MAX_BUFFER + 100);

        assert_non_null(junk);
        assert_int_equal(
                rpc_decoder_feed(d, junk, RPC_DECODER_MAX_BUFFER + 100), RPC_DECODER_MAX_BUFFER);
        assert_int_equal(rpc_decoder_feed(d, junk, 1), -ENOBUFS);
        drain(d, NULL);
        assert_int_equal(rpc_decoder_buffered(d), 0);
        assert_int_equal(rpc_decoder_errors(d), 1);
        assert_int_equal(rpc_decoder_feed(d, junk, 100), 100);
}

/* ---- decoder: malformed input ---- */

/* Feeds `bad` then a good frame, one byte at a time and all at once: returns the errors. */
static uint64_t bad_then_good(const Buf *bad, size_t expect_frames) {
        uint64_t errors = UINT64_MAX;

        for (size_t chunk = 0; chunk <= 1; chunk++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                Frames f = {};
                Buf b = {};

                buf_append(&b, bad->data, bad->len);
                buf_append_frame(&b, payload_a, sizeof(payload_a));
                feed_chunked(d, b.data, b.len, chunk, &f);
                assert_int_equal(f.n, expect_frames);
                assert_int_equal(f.len[f.n - 1], sizeof(payload_a));
                assert_memory_equal(f.payload[f.n - 1], payload_a, sizeof(payload_a));
                assert_int_equal(rpc_decoder_buffered(d), 0);
                /* never grew for a bad header: nothing here needs more than the initial buffer */
                assert_int_equal(rpc_decoder_capacity(d), RPC_DECODER_INITIAL_BUFFER);
                if (errors != UINT64_MAX)
                        assert_int_equal(rpc_decoder_errors(d), errors);
                errors = rpc_decoder_errors(d);
                frames_clear(&f);
                free(b.data);
        }
        return errors;
}

static void test_bad_magic(void **state) {
        Buf b = {};

        buf_append_header(
                &b,
                RPC_FRAME_MAGIC ^ 0x01000000,
                sizeof(payload_b),
                crc_of(payload_b, sizeof(payload_b)));
        buf_append(&b, payload_b, sizeof(payload_b));
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);
}

static void test_garbage_before_frame(void **state) {
        Buf b = {};

        buf_append_garbage(&b, 1000);
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);

        /* garbage full of magic prefixes */
        b = (Buf){};
        for (unsigned i = 0; i < 50; i++)
                buf_append(&b, i % 2 ? "RC" : "RCL", i % 2 ? 2 : 3);
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);
}

static void test_truncated_header(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        const uint8_t *p;
        size_t len;
        Buf b = {};

        buf_append_frame(&b, payload_a, sizeof(payload_a));
        for (size_t i = 0; i < RPC_FRAME_HEADER_SIZE; i++) {
                assert_int_equal(rpc_decoder_feed(d, b.data + i, 1), 1);
                assert_int_equal(rpc_decoder_next(d, &p, &len), 0);
                assert_int_equal(rpc_decoder_buffered(d), i + 1);
        }
        assert_int_equal(rpc_decoder_errors(d), 0);
        /* a truncated header followed by a new frame (reconnect): reset drops the stale bytes */
        rpc_decoder_reset(d);
        assert_int_equal(rpc_decoder_buffered(d), 0);
        assert_int_equal(rpc_decoder_feed(d, b.data, b.len), (int) b.len);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 1);
        assert_memory_equal(p, payload_a, sizeof(payload_a));
        assert_int_equal(rpc_decoder_errors(d), 0);
        free(b.data);
}

static void test_truncated_payload(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        const uint8_t *p;
        size_t len;
        Buf b = {};

        buf_append_frame(&b, payload_a, sizeof(payload_a));
        assert_int_equal(rpc_decoder_feed(d, b.data, b.len - 1), (int) b.len - 1);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 0);
        assert_int_equal(rpc_decoder_buffered(d), b.len - 1);
        assert_int_equal(rpc_decoder_feed(d, b.data + b.len - 1, 1), 1);
        assert_int_equal(rpc_decoder_next(d, &p, &len), 1);
        assert_int_equal(len, sizeof(payload_a));
        assert_int_equal(rpc_decoder_errors(d), 0);

        /*
         * A stale half frame from an old connection, then whole frames: the bogus header
         * swallows them until its claimed length is there, then fails its CRC, and the decoder
         * finds the real frames inside it.
         */
        free(b.data);
        b = (Buf){};
        buf_append_header(&b, RPC_FRAME_MAGIC, 200, crc_of(payload_a, sizeof(payload_a)));
        buf_append(&b, payload_a, 10);
        for (unsigned i = 0; i < 10; i++)
                buf_append_frame(&b, payload_b, sizeof(payload_b));
        assert_int_equal(bad_then_good(&b, 11), 1);
        free(b.data);
}

static void test_oversize_length(void **state) {
        static const uint32_t lengths[] = { RPC_MAX_FRAME + 1, 1u << 20, UINT32_MAX };

        for (size_t i = 0; i < ELEMENTSOF(lengths); i++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                const uint8_t *p;
                size_t len;
                Buf b = {};

                buf_append_header(&b, RPC_FRAME_MAGIC, lengths[i], 0);
                /* the header alone is rejected: the decoder does not wait for the payload */
                assert_int_equal(rpc_decoder_feed(d, b.data, b.len), (int) b.len);
                assert_int_equal(rpc_decoder_next(d, &p, &len), 0);
                assert_int_equal(rpc_decoder_errors(d), 1);
                assert_true(rpc_decoder_buffered(d) < RPC_FRAME_HEADER_SIZE);
                /* and no allocation was made for it */
                assert_int_equal(rpc_decoder_capacity(d), RPC_DECODER_INITIAL_BUFFER);
                assert_int_equal(bad_then_good(&b, 1), 1);
                free(b.data);
        }
}

static void test_bad_crc(void **state) {
        Buf b = {};

        buf_append_frame(&b, payload_b, sizeof(payload_b));
        b.data[RPC_FRAME_HEADER_SIZE + 2] ^= 0x10; /* payload bit flip */
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);

        b = (Buf){};
        buf_append_frame(&b, payload_b, sizeof(payload_b));
        b.data[9] ^= 0x01; /* CRC field bit flip */
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);

        /* two bad frames in a row are two errors */
        b = (Buf){};
        buf_append_header(&b, RPC_FRAME_MAGIC, 3, 1);
        buf_append(&b, "xyz", 3);
        buf_append_header(&b, RPC_FRAME_MAGIC, 3, 2);
        buf_append(&b, "xyz", 3);
        assert_int_equal(bad_then_good(&b, 1), 2);
        free(b.data);
}

static void test_zero_length(void **state) {
        Buf b = {};

        buf_append_header(&b, RPC_FRAME_MAGIC, 0, crc_of("", 0));
        assert_int_equal(bad_then_good(&b, 1), 1);
        free(b.data);
}

/*
 * The CRC work budget: bogus candidates 8 bytes apart, each claiming 60000 bytes. The first
 * five are checked (5 * 60000 CRC bytes fit in RPC_DECODER_CRC_WORK_FACTOR times the ~60 KB
 * of stream plus RPC_DECODER_CRC_WORK_SLACK), the rest are dropped unchecked; a real frame
 * after them is found.
 */
static void test_crc_work_budget(void **state) {
        static const size_t chunks[] = { 0, 1, 7, 4096 };
        _cleanup_free_ uint8_t *filler = calloc(1, 60004);
        Buf b = {};

        assert_non_null(filler);
        assert_int_equal(RPC_DECODER_CRC_WORK_FACTOR, 4);
        assert_int_equal(RPC_DECODER_CRC_WORK_SLACK, 65536);
        for (unsigned i = 0; i < 20; i++) {
                uint8_t h[8] = { 'R', 'C', 'L', 'M', 0x60, 0xea, 0, 0 }; /* 60000 */
                buf_append(&b, h, sizeof(h));
        }
        buf_append(&b, filler, 60004); /* completes the last candidate, at 152 + 12 + 60000 */
        buf_append_frame(&b, payload_a, sizeof(payload_a));

        for (size_t i = 0; i < ELEMENTSOF(chunks); i++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                Frames f = {};

                feed_chunked(d, b.data, b.len, chunks[i], &f);
                assert_int_equal(f.n, 1);
                assert_memory_equal(f.payload[0], payload_a, sizeof(payload_a));
                assert_int_equal(rpc_decoder_errors(d), 20);
                assert_int_equal(rpc_decoder_crc_bytes(d), 5 * 60000 + sizeof(payload_a));
                frames_clear(&f);
        }
        free(b.data);
}

/* A stale maximal header at the very start costs nothing of the real frames inside it. */
static void test_crc_budget_stale_start(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        Frames f = {};
        Buf b = {};
        size_t n = 0;

        buf_append_header(&b, RPC_FRAME_MAGIC, RPC_MAX_FRAME, 0);
        buf_append(&b, "stale", 5);
        while (b.len < RPC_FRAME_HEADER_SIZE + RPC_MAX_FRAME) {
                uint8_t payload[200];

                memset(payload, (int) n, sizeof(payload));
                buf_append_frame(&b, payload, sizeof(payload));
                n++;
        }
        feed_chunked(d, b.data, b.len, 1000, &f);
        assert_true(n > 200);
        assert_int_equal(f.n, n);
        assert_int_equal(rpc_decoder_errors(d), 1);
        frames_clear(&f);
        free(b.data);
}

/* Adversarial patterns never cost more than RPC_DECODER_CRC_WORK_FACTOR CRC bytes per byte. */
static void test_crc_work_bounded(void **state) {
        _cleanup_free_ uint8_t *vf = NULL;
        size_t vlen;

        assert_int_equal(rpc_frame_encode("x", 1, &vf, &vlen), 0);
        for (unsigned kind = 0; kind < 3; kind++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                Frames f = {};
                Buf b = {};

                /* 0: dense maximal headers; 1: ... with a tiny valid frame after every 7;
                 * 2: honest frames only */
                while (b.len < (1u << 20)) {
                        for (unsigned k = 0; kind < 2 && k < 7; k++) {
                                uint8_t h[8] = { 'R', 'C', 'L', 'M', 0, 0, 1, 0 }; /* 65536 */
                                buf_append(&b, h, sizeof(h));
                        }
                        if (kind > 0)
                                buf_append(&b, vf, vlen);
                }
                size_t off = 0;
                while (off < b.len) {
                        int r = rpc_decoder_feed(d, b.data + off, b.len - off);

                        assert_true(r > 0);
                        off += (size_t) r;
                        drain(d, NULL);
                }
                if (kind == 2) {
                        assert_int_equal(rpc_decoder_errors(d), 0);
                        assert_true(rpc_decoder_crc_bytes(d) <= b.len);
                } else
                        assert_true(rpc_decoder_errors(d) > 0);
                assert_true(
                        rpc_decoder_crc_bytes(d) <=
                        RPC_DECODER_CRC_WORK_FACTOR * b.len + RPC_DECODER_CRC_WORK_SLACK);
                frames_clear(&f);
                free(b.data);
        }
}

static void test_garbage_flood_bounded(void **state) {
        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
        _cleanup_free_ uint8_t *chunk = malloc(65536);
        Frames f = {};
        size_t max_cap = 0, max_buffered = 0;

        assert_non_null(chunk);
        for (unsigned round = 0; round < 96; round++) {
                size_t i = 0;

                /* random bytes, and in every other round the magic densely with big lengths */
                while (i < 65536) {
                        if (round % 2 && i + 12 <= 65536 && rng() % 4 == 0) {
                                uint32_t l = (uint32_t) (rng() % (RPC_MAX_FRAME + 16));

                                memcpy(chunk + i, "RCLM", 4);
                                memcpy(chunk + i + 4, &l, 4);
                                i += 8;
                        } else
                                chunk[i++] = (uint8_t) rng();
                }
                for (size_t off = 0; off < 65536;) {
                        int r = rpc_decoder_feed(d, chunk + off, 65536 - off);

                        assert_true(r > 0); /* a drained decoder always takes something */
                        off += (size_t) r;
                        max_cap = MAX(max_cap, rpc_decoder_capacity(d));
                        max_buffered = MAX(max_buffered, rpc_decoder_buffered(d));
                        drain(d, &f);
                }
        }
        assert_true(max_cap <= RPC_DECODER_MAX_BUFFER);
        assert_true(max_buffered <= RPC_DECODER_MAX_BUFFER);
        assert_true(
                rpc_decoder_crc_bytes(d) <=
                RPC_DECODER_CRC_WORK_FACTOR * 96ull * 65536 + RPC_DECODER_CRC_WORK_SLACK);
        assert_true(rpc_decoder_errors(d) > 0);
        frames_clear(&f); /* a random valid CRC is possible in theory; no assertion on it */

        /* and it still works afterwards */
        rpc_decoder_reset(d);
        Buf b = {};
        buf_append_frame(&b, payload_a, sizeof(payload_a));
        feed_chunked(d, b.data, b.len, 0, &f);
        assert_int_equal(f.n, 1);
        frames_clear(&f);
        free(b.data);
}

/* ---- messages ---- */

static char s_agent_version[] = "0.1.0", s_hostname[] = "vm-101",
            s_machine_id[] = "0123456789abcdef0123456789abcdef",
            s_boot_id[] = "4a1c1e9e-2f4b-4c5e-8d7a-1b2c3d4e5f60", s_mnt_root[] = "/",
            s_mnt_var[] = "/var", s_dev_vda1[] = "/dev/vda1", s_dev_vdb[] = "/dev/vdb",
            s_ext4[] = "ext4", s_xfs[] = "xfs", s_err[] = "Input/output error",
            s_host_version[] = "reclaimd 0.1.0";

typedef struct Bodies {
        Reclaim__Hello hello;
        Reclaim__Capability caps[4];
        Reclaim__Progress progress;
        Reclaim__FsReport fs[2];
        Reclaim__FsReport *fsp[2];
        Reclaim__Report report;
        Reclaim__Pong pong;
        Reclaim__Policy policy;
        Reclaim__Mode modes[2];
        Reclaim__HelloAck hello_ack;
        Reclaim__ReclaimRequest request;
        Reclaim__Cancel cancel;
        Reclaim__Ping ping;
} Bodies;

/* Fills *m with a body of kind c, every field set to a non-default value. */
static void build(Reclaim__Envelope *m, Bodies *s, Reclaim__Envelope__BodyCase c) {
        rpc_message_init(m, 42);
        m->in_reply_to = 7;
        m->body_case = c;
        switch (c) {
        case RECLAIM__ENVELOPE__BODY_HELLO:
                reclaim__hello__init(&s->hello);
                s->hello.protocol_version = RPC_PROTOCOL_VERSION;
                s->hello.agent_version = s_agent_version;
                s->hello.hostname = s_hostname;
                s->hello.machine_id = s_machine_id;
                s->hello.boot_id = s_boot_id;
                s->caps[0] = RECLAIM__CAPABILITY__CAPABILITY_TRIM;
                s->caps[1] = RECLAIM__CAPABILITY__CAPABILITY_ZERO;
                s->caps[2] = RECLAIM__CAPABILITY__CAPABILITY_PROGRESS;
                s->caps[3] = RECLAIM__CAPABILITY__CAPABILITY_CANCEL;
                s->hello.capabilities = s->caps;
                s->hello.n_capabilities = 4;
                m->hello = &s->hello;
                break;
        case RECLAIM__ENVELOPE__BODY_PROGRESS:
                reclaim__progress__init(&s->progress);
                s->progress.mount_point = s_mnt_var;
                s->progress.method = RECLAIM__METHOD__METHOD_ZERO;
                s->progress.bytes_done = 1ull << 33;
                s->progress.bytes_total = 3ull << 33;
                s->progress.filesystems_done = 1;
                s->progress.filesystems_total = 2;
                m->progress = &s->progress;
                break;
        case RECLAIM__ENVELOPE__BODY_REPORT:
                for (unsigned i = 0; i < 2; i++) {
                        reclaim__fs_report__init(&s->fs[i]);
                        s->fsp[i] = &s->fs[i];
                }
                s->fs[0].mount_point = s_mnt_root;
                s->fs[0].device = s_dev_vda1;
                s->fs[0].fstype = s_ext4;
                s->fs[0].method = RECLAIM__METHOD__METHOD_TRIM;
                s->fs[0].bytes = 123456789;
                s->fs[0].free_bytes_before = 1000000000;
                s->fs[0].free_bytes_after = 1000004096;
                s->fs[0].reserve_bytes = 1 << 30;
                s->fs[0].duration_ms = 1500;
                s->fs[0].outcome = RECLAIM__OUTCOME__OUTCOME_OK;
                s->fs[1].mount_point = s_mnt_var;
                s->fs[1].device = s_dev_vdb;
                s->fs[1].fstype = s_xfs;
                s->fs[1].method = RECLAIM__METHOD__METHOD_ZERO;
                s->fs[1].bytes = 1ull << 34;
                s->fs[1].free_bytes_before = 5ull << 32;
                s->fs[1].free_bytes_after = 5ull << 32;
                s->fs[1].reserve_bytes = 1ull << 31;
                s->fs[1].duration_ms = 60000;
                s->fs[1].outcome = RECLAIM__OUTCOME__OUTCOME_ERROR;
                s->fs[1].error = s_err;
                s->fs[1].error_errno = EIO;
                reclaim__report__init(&s->report);
                s->report.filesystems = s->fsp;
                s->report.n_filesystems = 2;
                s->report.duration_ms = 61500;
                s->report.mode = RECLAIM__MODE__MODE_AUTO;
                m->report = &s->report;
                break;
        case RECLAIM__ENVELOPE__BODY_PONG:
                reclaim__pong__init(&s->pong);
                s->pong.nonce = 0xfeedfacecafebeefull;
                s->pong.busy = true;
                m->pong = &s->pong;
                break;
        case RECLAIM__ENVELOPE__BODY_HELLO_ACK:
                reclaim__policy__init(&s->policy);
                s->policy.max_rate_bytes_per_sec = 50u << 20;
                s->policy.min_reserve_bytes = 2ull << 30;
                s->policy.min_reserve_percent = 10;
                s->modes[0] = RECLAIM__MODE__MODE_TRIM;
                s->modes[1] = RECLAIM__MODE__MODE_AUTO;
                s->policy.allowed_modes = s->modes;
                s->policy.n_allowed_modes = 2;
                reclaim__hello_ack__init(&s->hello_ack);
                s->hello_ack.protocol_version = RPC_PROTOCOL_VERSION;
                s->hello_ack.host_version = s_host_version;
                s->hello_ack.policy = &s->policy;
                m->hello_ack = &s->hello_ack;
                break;
        case RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST:
                reclaim__reclaim_request__init(&s->request);
                s->request.mode = RECLAIM__MODE__MODE_ZERO;
                s->request.rate_bytes_per_sec = 10u << 20;
                s->request.reserve_bytes = 4ull << 30;
                s->request.reserve_percent = 15;
                m->reclaim_request = &s->request;
                break;
        case RECLAIM__ENVELOPE__BODY_CANCEL:
                reclaim__cancel__init(&s->cancel);
                s->cancel.request_seq = 41;
                m->cancel = &s->cancel;
                break;
        case RECLAIM__ENVELOPE__BODY_PING:
                reclaim__ping__init(&s->ping);
                s->ping.nonce = 99;
                m->ping = &s->ping;
                break;
        default:
                fail();
        }
}

/* Compares the decoded message with what build() put in, field by field. */
static void check(const Reclaim__Envelope *m, Reclaim__Envelope__BodyCase c) {
        assert_int_equal(m->protocol_version, RPC_PROTOCOL_VERSION);
        assert_int_equal(m->seq, 42);
        assert_int_equal(m->in_reply_to, 7);
        assert_int_equal(m->body_case, c);
        switch (c) {
        case RECLAIM__ENVELOPE__BODY_HELLO:
                assert_int_equal(m->hello->protocol_version, RPC_PROTOCOL_VERSION);
                assert_string_equal(m->hello->agent_version, s_agent_version);
                assert_string_equal(m->hello->hostname, s_hostname);
                assert_string_equal(m->hello->machine_id, s_machine_id);
                assert_string_equal(m->hello->boot_id, s_boot_id);
                assert_int_equal(m->hello->n_capabilities, 4);
                assert_int_equal(m->hello->capabilities[3], RECLAIM__CAPABILITY__CAPABILITY_CANCEL);
                break;
        case RECLAIM__ENVELOPE__BODY_PROGRESS:
                assert_string_equal(m->progress->mount_point, s_mnt_var);
                assert_int_equal(m->progress->method, RECLAIM__METHOD__METHOD_ZERO);
                assert_int_equal(m->progress->bytes_done, 1ull << 33);
                assert_int_equal(m->progress->bytes_total, 3ull << 33);
                assert_int_equal(m->progress->filesystems_done, 1);
                assert_int_equal(m->progress->filesystems_total, 2);
                break;
        case RECLAIM__ENVELOPE__BODY_REPORT:
                assert_int_equal(m->report->n_filesystems, 2);
                assert_int_equal(m->report->duration_ms, 61500);
                assert_int_equal(m->report->mode, RECLAIM__MODE__MODE_AUTO);
                assert_string_equal(m->report->filesystems[0]->mount_point, s_mnt_root);
                assert_string_equal(m->report->filesystems[0]->device, s_dev_vda1);
                assert_string_equal(m->report->filesystems[0]->fstype, s_ext4);
                assert_int_equal(m->report->filesystems[0]->method, RECLAIM__METHOD__METHOD_TRIM);
                assert_int_equal(m->report->filesystems[0]->bytes, 123456789);
                assert_int_equal(m->report->filesystems[0]->free_bytes_before, 1000000000);
                assert_int_equal(m->report->filesystems[0]->free_bytes_after, 1000004096);
                assert_int_equal(m->report->filesystems[0]->reserve_bytes, 1 << 30);
                assert_int_equal(m->report->filesystems[0]->duration_ms, 1500);
                assert_int_equal(m->report->filesystems[0]->outcome, RECLAIM__OUTCOME__OUTCOME_OK);
                assert_string_equal(m->report->filesystems[0]->error, "");
                assert_int_equal(
                        m->report->filesystems[1]->outcome, RECLAIM__OUTCOME__OUTCOME_ERROR);
                assert_string_equal(m->report->filesystems[1]->error, s_err);
                assert_int_equal(m->report->filesystems[1]->error_errno, EIO);
                assert_int_equal(m->report->filesystems[1]->bytes, 1ull << 34);
                break;
        case RECLAIM__ENVELOPE__BODY_PONG:
                assert_int_equal(m->pong->nonce, 0xfeedfacecafebeefull);
                assert_true(m->pong->busy);
                break;
        case RECLAIM__ENVELOPE__BODY_HELLO_ACK:
                assert_int_equal(m->hello_ack->protocol_version, RPC_PROTOCOL_VERSION);
                assert_string_equal(m->hello_ack->host_version, s_host_version);
                assert_non_null(m->hello_ack->policy);
                assert_int_equal(m->hello_ack->policy->max_rate_bytes_per_sec, 50u << 20);
                assert_int_equal(m->hello_ack->policy->min_reserve_bytes, 2ull << 30);
                assert_int_equal(m->hello_ack->policy->min_reserve_percent, 10);
                assert_int_equal(m->hello_ack->policy->n_allowed_modes, 2);
                assert_int_equal(m->hello_ack->policy->allowed_modes[1], RECLAIM__MODE__MODE_AUTO);
                break;
        case RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST:
                assert_int_equal(m->reclaim_request->mode, RECLAIM__MODE__MODE_ZERO);
                assert_int_equal(m->reclaim_request->rate_bytes_per_sec, 10u << 20);
                assert_int_equal(m->reclaim_request->reserve_bytes, 4ull << 30);
                assert_int_equal(m->reclaim_request->reserve_percent, 15);
                break;
        case RECLAIM__ENVELOPE__BODY_CANCEL:
                assert_int_equal(m->cancel->request_seq, 41);
                break;
        case RECLAIM__ENVELOPE__BODY_PING:
                assert_int_equal(m->ping->nonce, 99);
                break;
        default:
                fail();
        }
}

static const Reclaim__Envelope__BodyCase all_bodies[] = {
        RECLAIM__ENVELOPE__BODY_HELLO,     RECLAIM__ENVELOPE__BODY_PROGRESS,
        RECLAIM__ENVELOPE__BODY_REPORT,    RECLAIM__ENVELOPE__BODY_PONG,
        RECLAIM__ENVELOPE__BODY_HELLO_ACK, RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST,
        RECLAIM__ENVELOPE__BODY_CANCEL,    RECLAIM__ENVELOPE__BODY_PING,
};

/* Every message type: pack -> frame -> decoder (whole and byte by byte) -> unpack -> same. */
static void test_round_trip_every_message(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(all_bodies); i++) {
                Reclaim__Envelope m;
                Bodies s;
                _cleanup_free_ uint8_t *frame = NULL, *frame2 = NULL;
                size_t flen, flen2;

                build(&m, &s, all_bodies[i]);
                assert_int_equal(rpc_message_pack(&m, &frame, &flen), 0);
                assert_string_not_equal(rpc_message_body_name(all_bodies[i]), "unknown");

                for (size_t chunk = 0; chunk <= 1; chunk++) {
                        _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                        Reclaim__Envelope *u = NULL;
                        Frames f = {};

                        feed_chunked(d, frame, flen, chunk, &f);
                        assert_int_equal(f.n, 1);
                        assert_int_equal(rpc_decoder_errors(d), 0);
                        assert_int_equal(rpc_message_unpack(f.payload[0], f.len[0], &u), 0);
                        check(u, all_bodies[i]);

                        /* packing what was unpacked gives the same bytes */
                        assert_int_equal(rpc_message_pack(u, &frame2, &flen2), 0);
                        assert_int_equal(flen2, flen);
                        assert_memory_equal(frame2, frame, flen);
                        frame2 = mfree(frame2);
                        reclaim__envelope__free_unpacked(u, NULL);
                        frames_clear(&f);
                }
        }
}

static void test_pack_errors(void **state) {
        _cleanup_free_ char *huge = malloc(RPC_MAX_FRAME + 1);
        uint8_t *frame = NULL;
        size_t len = 0;
        Reclaim__Envelope m;
        Bodies s;

        assert_non_null(huge);
        build(&m, &s, RECLAIM__ENVELOPE__BODY_PING);
        assert_int_equal(rpc_message_pack(NULL, &frame, &len), -EINVAL);
        assert_int_equal(rpc_message_pack(&m, NULL, &len), -EINVAL);
        assert_int_equal(rpc_message_pack(&m, &frame, NULL), -EINVAL);

        m.protocol_version = RPC_PROTOCOL_VERSION_MAKE(RPC_PROTOCOL_MAJOR + 1, 0);
        assert_int_equal(rpc_message_pack(&m, &frame, &len), -EINVAL);
        m.protocol_version = RPC_PROTOCOL_VERSION;

        m.ping = NULL;
        assert_int_equal(rpc_message_pack(&m, &frame, &len), -EINVAL);
        m.body_case = RECLAIM__ENVELOPE__BODY__NOT_SET;
        assert_int_equal(rpc_message_pack(&m, &frame, &len), -EINVAL);

        /* a NULL entry in a repeated message field is caught, not packed */
        build(&m, &s, RECLAIM__ENVELOPE__BODY_REPORT);
        s.fsp[1] = NULL;
        assert_int_equal(rpc_message_pack(&m, &frame, &len), -EINVAL);

        build(&m, &s, RECLAIM__ENVELOPE__BODY_HELLO);
        memset(huge, 'x', RPC_MAX_FRAME);
        huge[RPC_MAX_FRAME] = 0;
        s.hello.hostname = huge;
        assert_int_equal(rpc_message_pack(&m, &frame, &len), -EMSGSIZE);
        assert_null(frame);
        assert_int_equal(len, 0);
}

/* Packs a raw protobuf payload (no version check) for the malformed cases. */
static size_t raw_pack(const Reclaim__Envelope *m, uint8_t *out, size_t size) {
        size_t n = reclaim__envelope__get_packed_size(m);

        assert_true(n <= size);
        return reclaim__envelope__pack(m, out);
}

static void test_unpack_invalid_protobuf(void **state) {
        /* each with a valid frame CRC: only the protobuf layer can refuse them */
        static const struct {
                const char *name;
                uint8_t bytes[16];
                size_t len;
        } cases[] = {
                { "truncated varint", { 0x08, 0x80 }, 2 },
                { "length past end", { 0x08, 0x80, 0x80, 0x04, 0x52, 0x05, 0x0a }, 7 },
                { "wire type 7", { 0x0f, 0x01 }, 2 },
                { "field number 0", { 0x00, 0x01 }, 2 },
                { "overlong varint", { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }, 8 },
                { "only garbage", { 0xff, 0xff, 0xff }, 3 },
                /*
                 * Fuzzer find: a field number 0 in a non-minimal varint key, which protobuf-c
                 * accepts as an unknown field, once made unpack and peek disagree.
                 */
                { "field 0 (non-minimal)",
                  { 0x08,
                    0x80,
                    0x80,
                    0x04,
                    0x80,
                    0x80,
                    0x00,
                    0xf0,
                    0x04,
                    0x6a,
                    0x04,
                    0x08,
                    0x63,
                    0x10,
                    0x01 },
                  15 },
                { "field 0 (non-minimal), major 0",
                  { 0x08, 0x27, 0x80, 0x80, 0x00, 0xf0, 0x04, 0x6a, 0x04, 0x08, 0x63, 0x10, 0x01 },
                  13 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_(rpc_decoder_freep) RpcDecoder *d = rpc_decoder_new();
                Reclaim__Envelope *u = NULL;
                Frames f = {};
                Buf b = {};

                buf_append_frame(&b, cases[i].bytes, cases[i].len);
                feed_chunked(d, b.data, b.len, 0, &f);
                assert_int_equal(f.n, 1);
                if (rpc_message_unpack(f.payload[0], f.len[0], &u) != -EBADMSG)
                        fail_msg("%s: not -EBADMSG", cases[i].name);
                assert_null(u);
                /* the wire walk refuses it too: the two never disagree */
                uint32_t v;
                if (rpc_message_peek_version(f.payload[0], f.len[0], &v) != -EBADMSG)
                        fail_msg("%s: peek not -EBADMSG", cases[i].name);
                frames_clear(&f);
                free(b.data);
        }
}

static void test_unpack_args(void **state) {
        Reclaim__Envelope *u = NULL;
        uint8_t b = 0x08;

        assert_int_equal(rpc_message_unpack(NULL, 1, &u), -EINVAL);
        assert_int_equal(rpc_message_unpack(&b, 1, NULL), -EINVAL);
        assert_int_equal(rpc_message_unpack(&b, 0, &u), -EBADMSG);
        assert_int_equal(rpc_message_unpack(&b, RPC_MAX_FRAME + 1, &u), -EBADMSG);
        assert_null(u);
}

static void test_unpack_versions(void **state) {
        static const struct {
                uint32_t version;
                int expect;
        } cases[] = {
                { RPC_PROTOCOL_VERSION, 0 },
                { RPC_PROTOCOL_VERSION_MAKE(RPC_PROTOCOL_MAJOR, 7), 0 }, /* newer minor: fine */
                { RPC_PROTOCOL_VERSION_MAKE(RPC_PROTOCOL_MAJOR + 1, 0), -EPROTONOSUPPORT },
                { RPC_PROTOCOL_VERSION_MAKE(0, 3), -EPROTONOSUPPORT },
                { UINT32_MAX, -EPROTONOSUPPORT },
                { 0, -EBADMSG }, /* no version at all */
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Reclaim__Envelope m, *u = NULL;
                Bodies s;
                uint8_t raw[256];
                size_t n;
                uint32_t v = 0;

                build(&m, &s, RECLAIM__ENVELOPE__BODY_HELLO);
                m.protocol_version = cases[i].version;
                n = raw_pack(&m, raw, sizeof(raw));
                assert_int_equal(rpc_message_unpack(raw, n, &u), cases[i].expect);
                if (cases[i].expect == 0) {
                        assert_non_null(u);
                        assert_int_equal(u->protocol_version, cases[i].version);
                        reclaim__envelope__free_unpacked(u, NULL);
                } else
                        assert_null(u);

                /* the peek names the version for the log */
                if (cases[i].version != 0) {
                        assert_int_equal(rpc_message_peek_version(raw, n, &v), 0);
                        assert_int_equal(v, cases[i].version);
                } else
                        assert_int_equal(rpc_message_peek_version(raw, n, &v), -ENOENT);
        }
}

static void test_peek_version(void **state) {
        /* field 2 varint, field 3 fixed64, field 4 bytes, field 5 fixed32, then field 1 */
        static const uint8_t ok[] = { 0x10, 0x05, 0x19, 1,    2, 3, 4, 5, 6,    7,    8,    0x22,
                                      0x02, 'h',  'i',  0x2d, 1, 2, 3, 4, 0x08, 0x80, 0x80, 0x08 };
        static const uint8_t twice[] = { 0x08, 0x01, 0x08, 0x02 };
        static const uint8_t trunc[] = { 0x22, 0x05, 'h' };
        static const uint8_t group[] = { 0x0b };
        uint32_t v = 0;

        assert_int_equal(rpc_message_peek_version(ok, sizeof(ok), &v), 0);
        assert_int_equal(v, 0x20000);
        assert_int_equal(rpc_message_peek_version(twice, sizeof(twice), &v), 0);
        assert_int_equal(v, 2);
        assert_int_equal(rpc_message_peek_version(trunc, sizeof(trunc), &v), -EBADMSG);
        assert_int_equal(rpc_message_peek_version(group, sizeof(group), &v), -EBADMSG);
        assert_int_equal(rpc_message_peek_version(ok, 0, &v), -ENOENT);
        assert_int_equal(rpc_message_peek_version(NULL, 0, &v), -EINVAL);
        assert_int_equal(rpc_message_peek_version(ok, sizeof(ok), NULL), -EINVAL);
}

static void test_unknown_fields_and_bodies(void **state) {
        Reclaim__Envelope m, *u = NULL;
        Bodies s;
        uint8_t raw[512];
        size_t n;

        /* an unknown top-level varint field and an unknown sub-message field are ignored */
        build(&m, &s, RECLAIM__ENVELOPE__BODY_PING);
        n = raw_pack(&m, raw, sizeof(raw));
        raw[n++] = 0xa0; /* field 100, varint */
        raw[n++] = 0x06;
        raw[n++] = 0x01;
        raw[n++] = 0x2a; /* field 5, length-delimited */
        raw[n++] = 0x00;
        assert_int_equal(rpc_message_unpack(raw, n, &u), 0);
        assert_int_equal(u->body_case, RECLAIM__ENVELOPE__BODY_PING);
        assert_int_equal(u->ping->nonce, 99);
        reclaim__envelope__free_unpacked(u, NULL);

        /* a body a newer minor added (field 30): no body, to be ignored */
        build(&m, &s, RECLAIM__ENVELOPE__BODY_PING);
        m.body_case = RECLAIM__ENVELOPE__BODY__NOT_SET;
        n = raw_pack(&m, raw, sizeof(raw));
        raw[n++] = 0xf2; /* field 30, length-delimited */
        raw[n++] = 0x01;
        raw[n++] = 0x02;
        raw[n++] = 0x08;
        raw[n++] = 0x01;
        assert_int_equal(rpc_message_unpack(raw, n, &u), 0);
        assert_int_equal(u->body_case, RECLAIM__ENVELOPE__BODY__NOT_SET);
        assert_string_equal(rpc_message_body_name(u->body_case), "none");
        reclaim__envelope__free_unpacked(u, NULL);

        /* an enum value this version does not know survives as a number */
        build(&m, &s, RECLAIM__ENVELOPE__BODY_REPORT);
        s.fs[1].outcome = (Reclaim__Outcome) 77;
        n = raw_pack(&m, raw, sizeof(raw));
        assert_int_equal(rpc_message_unpack(raw, n, &u), 0);
        assert_int_equal(u->report->filesystems[1]->outcome, 77);
        reclaim__envelope__free_unpacked(u, NULL);
        assert_string_equal(rpc_message_body_name((Reclaim__Envelope__BodyCase) 99), "unknown");
}

/* Unpacks a payload the way the fuzz target does and checks pack -> unpack -> pack is stable. */
static void check_repack_stable(const uint8_t *payload, size_t len) {
        _cleanup_free_ uint8_t *frame = NULL, *frame2 = NULL;
        Reclaim__Envelope *m = NULL, *u = NULL;
        size_t flen, flen2;

        assert_int_equal(rpc_message_unpack(payload, len, &m), 0);
        assert_int_equal(rpc_message_pack(m, &frame, &flen), 0);
        reclaim__envelope__free_unpacked(m, NULL);
        assert_int_equal(
                rpc_message_unpack(frame + RPC_FRAME_HEADER_SIZE, flen - RPC_FRAME_HEADER_SIZE, &u),
                0);
        assert_int_equal(rpc_message_pack(u, &frame2, &flen2), 0);
        reclaim__envelope__free_unpacked(u, NULL);
        assert_int_equal(flen2, flen);
        assert_memory_equal(frame2, frame, flen);
}

/*
 * Fuzzer find (corpus: regress-repack-nested-field0): a field number 0 in a non-minimal key
 * inside a sub-message. protobuf-c kept it as an unknown field with tag 0, pack wrote the key
 * back minimally (0x00), and protobuf-c refused its own output: a message we had accepted no
 * longer unpacked after a re-pack. It is invalid at any depth, whatever the encoding.
 */
static void test_unpack_field0_nested(void **state) {
        /* every payload starts with protocol_version 1.0 (08 80 80 04) */
        static const struct {
                const char *name;
                uint8_t bytes[32];
                size_t len;
                size_t key_at; /* where the non-minimal field 0 key starts (0: minimal key) */
        } cases[] = {
                /* the fuzzer's input: seq 5, ReclaimRequest{ mode 3, rate 0x31, field 0 = 0x19,
                 * field 73728 = 0x800, reserve_percent 15 } */
                { "reclaim_request (fuzzer)",
                  { 0x08, 0x80, 0x80, 0x04, 0x10, 0x05, 0xaa, 0x01, 0x0f, 0x08, 0x03, 0x10,
                    0x31, 0x80, 0x80, 0x00, 0x19, 0x80, 0x80, 0x24, 0x80, 0x10, 0x20, 0x0f },
                  24,
                  13 },
                /* Ping{ field 0 (length-delimited) = "x" } */
                { "ping, bytes",
                  { 0x08, 0x80, 0x80, 0x04, 0xba, 0x01, 0x05, 0x82, 0x80, 0x00, 0x01, 0x78 },
                  12,
                  7 },
                /* Ping{ field 0 (minimal key) = 1 }: protobuf-c refuses this one itself */
                { "ping, minimal key",
                  { 0x08, 0x80, 0x80, 0x04, 0xba, 0x01, 0x02, 0x00, 0x01 },
                  9,
                  0 },
                /* Report{ filesystems: [ {}, { field 0 = 1 } ] }: in a repeated sub-message */
                { "report.filesystems[1]",
                  { 0x08,
                    0x80,
                    0x80,
                    0x04,
                    0x62,
                    0x08,
                    0x0a,
                    0x00,
                    0x0a,
                    0x04,
                    0x80,
                    0x80,
                    0x00,
                    0x01 },
                  14,
                  10 },
                /* HelloAck{ policy = Policy{ field 0 (fixed32) } }: two levels down */
                { "hello_ack.policy",
                  { 0x08,
                    0x80,
                    0x80,
                    0x04,
                    0xa2,
                    0x01,
                    0x09,
                    0x1a,
                    0x07,
                    0x85,
                    0x80,
                    0x00,
                    0x01,
                    0x02,
                    0x03,
                    0x04 },
                  16,
                  9 },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Reclaim__Envelope *u = NULL;
                uint32_t v = 0;
                uint8_t ok[32];

                if (rpc_message_unpack(cases[i].bytes, cases[i].len, &u) != -EBADMSG)
                        fail_msg("%s: not -EBADMSG", cases[i].name);
                assert_null(u);
                /* the top level is well-formed: the peek still names the version */
                assert_int_equal(rpc_message_peek_version(cases[i].bytes, cases[i].len, &v), 0);
                assert_int_equal(v, RPC_PROTOCOL_VERSION);

                if (cases[i].key_at == 0)
                        continue;
                /*
                 * The same payload with field 15 in place of field 0 (the same key length) is
                 * a valid unknown field: accepted, and stable under re-packing.
                 */
                memcpy(ok, cases[i].bytes, cases[i].len);
                assert_int_equal(ok[cases[i].key_at] & 0xf8, 0x80);
                ok[cases[i].key_at] |= 15 << 3;
                check_repack_stable(ok, cases[i].len);
        }
}

/* A 64 KiB payload of empty sub-messages would unpack into megabytes: refused. */
static void test_unpack_memory_budget(void **state) {
        _cleanup_free_ uint8_t *raw = malloc(RPC_MAX_FRAME);
        Reclaim__Envelope *u = NULL;
        size_t n = 0;

        assert_non_null(raw);
        /* Envelope{ protocol_version, report = Report{ filesystems: [ {}, {}, ... ] } } */
        raw[n++] = 0x08;
        raw[n++] = 0x80;
        raw[n++] = 0x80;
        raw[n++] = 0x04;
        raw[n++] = 0x62; /* field 12, length-delimited */
        size_t inner = (RPC_MAX_FRAME - n - 3) / 2 * 2;
        raw[n++] = (uint8_t) (0x80 | (inner & 0x7f));
        raw[n++] = (uint8_t) (0x80 | ((inner >> 7) & 0x7f));
        raw[n++] = (uint8_t) (inner >> 14);
        for (size_t i = 0; i < inner / 2; i++) {
                raw[n++] = 0x0a; /* field 1, empty FsReport */
                raw[n++] = 0x00;
        }
        assert_true(n <= RPC_MAX_FRAME);
        assert_int_equal(rpc_message_unpack(raw, n, &u), -EBADMSG);
        assert_null(u);

        /* a realistic big report (200 filesystems with names) is well within the budget */
        {
                Reclaim__FsReport fs[200], *fsp[200];
                Reclaim__Report report;
                Reclaim__Envelope m;
                char names[200][24];
                _cleanup_free_ uint8_t *frame = NULL;
                size_t flen;

                for (unsigned i = 0; i < 200; i++) {
                        reclaim__fs_report__init(&fs[i]);
                        snprintf(names[i], sizeof(names[i]), "/srv/data%u", i);
                        fs[i].mount_point = names[i];
                        fs[i].device = names[i];
                        fs[i].fstype = s_ext4;
                        fs[i].outcome = RECLAIM__OUTCOME__OUTCOME_OK;
                        fs[i].bytes = i;
                        fsp[i] = &fs[i];
                }
                reclaim__report__init(&report);
                report.filesystems = fsp;
                report.n_filesystems = 200;
                rpc_message_init(&m, 1);
                m.body_case = RECLAIM__ENVELOPE__BODY_REPORT;
                m.report = &report;
                assert_int_equal(rpc_message_pack(&m, &frame, &flen), 0);
                assert_int_equal(
                        rpc_message_unpack(
                                frame + RPC_FRAME_HEADER_SIZE, flen - RPC_FRAME_HEADER_SIZE, &u),
                        0);
                assert_int_equal(u->report->n_filesystems, 200);
                assert_string_equal(u->report->filesystems[199]->mount_point, "/srv/data199");
                reclaim__envelope__free_unpacked(u, NULL);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_encode_args),
                cmocka_unit_test(test_decoder_args),
                cmocka_unit_test(test_single_frame),
                cmocka_unit_test(test_many_frames_one_feed),
                cmocka_unit_test(test_byte_by_byte),
                cmocka_unit_test(test_large_frame_then_shrink),
                cmocka_unit_test(test_enobufs_when_not_drained),
                cmocka_unit_test(test_bad_magic),
                cmocka_unit_test(test_garbage_before_frame),
                cmocka_unit_test(test_truncated_header),
                cmocka_unit_test(test_truncated_payload),
                cmocka_unit_test(test_oversize_length),
                cmocka_unit_test(test_bad_crc),
                cmocka_unit_test(test_zero_length),
                cmocka_unit_test(test_crc_work_budget),
                cmocka_unit_test(test_crc_budget_stale_start),
                cmocka_unit_test(test_crc_work_bounded),
                cmocka_unit_test(test_garbage_flood_bounded),
                cmocka_unit_test(test_round_trip_every_message),
                cmocka_unit_test(test_pack_errors),
                cmocka_unit_test(test_unpack_invalid_protobuf),
                cmocka_unit_test(test_unpack_args),
                cmocka_unit_test(test_unpack_versions),
                cmocka_unit_test(test_peek_version),
                cmocka_unit_test(test_unknown_fields_and_bodies),
                cmocka_unit_test(test_unpack_memory_budget),
                cmocka_unit_test(test_unpack_field0_nested),
        };

        return cmocka_run_group_tests(tests, NULL, NULL);
}
