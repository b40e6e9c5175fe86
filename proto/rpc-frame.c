/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Frame encoder and incremental, resynchronising decoder (see rpc-frame.h for the layout).
 *
 * The decoder keeps the bytes of at most one frame in a buffer [start, end). rpc_decoder_next()
 * looks at the front of that window: garbage before the first (possibly partial) magic is
 * dropped; a complete header with a bad length, or a complete frame with a bad CRC (or one
 * over the CRC work budget), is skipped by one byte (so that a real frame hidden inside a
 * bogus one is still found); a good frame is handed out in place and dropped on the next
 * call. Every decision depends only on
 * the bytes, never on how they were chunked, so errors and frames are the same whether the
 * peer's data arrived in one read or one byte at a time.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "log.h"
#include "rpc-frame.h"

struct RpcDecoder {
        uint8_t *buf;
        size_t capacity; /* allocated bytes of buf, <= RPC_DECODER_MAX_BUFFER */
        size_t start;    /* first byte not yet consumed */
        size_t end;      /* one past the last byte received */
        size_t pending;  /* size of the frame last returned; dropped on the next call */

        uint64_t consumed; /* stream offset of buf[start] (for the CRC work budget) */
        uint64_t errors;
        bool in_garbage;    /* inside an error already counted: skipped bytes do not count again */
        uint64_t crc_bytes; /* payload bytes CRC-checked so far (RPC_DECODER_CRC_WORK_FACTOR) */
};

static const uint8_t magic_bytes[4] = {
        RPC_FRAME_MAGIC & 0xff,
        (RPC_FRAME_MAGIC >> 8) & 0xff,
        (RPC_FRAME_MAGIC >> 16) & 0xff,
        (RPC_FRAME_MAGIC >> 24) & 0xff,
};

static void put_le32(uint8_t *p, uint32_t v) {
        p[0] = v & 0xff;
        p[1] = (v >> 8) & 0xff;
        p[2] = (v >> 16) & 0xff;
        p[3] = (v >> 24) & 0xff;
}

static uint32_t get_le32(const uint8_t *p) {
        return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
                (uint32_t) p[3] << 24;
}

static uint32_t payload_crc(const void *payload, size_t len) {
        /* len <= RPC_MAX_FRAME, so it fits zlib's uInt */
        return (uint32_t) crc32(crc32(0L, Z_NULL, 0), payload, (uInt) len);
}

int rpc_frame_header_write(const void *payload, size_t len, uint8_t *ret_header) {
        if (!payload || !ret_header || len == 0)
                return -EINVAL;
        if (len > RPC_MAX_FRAME)
                return -EMSGSIZE;

        put_le32(ret_header, RPC_FRAME_MAGIC);
        put_le32(ret_header + 4, (uint32_t) len);
        put_le32(ret_header + 8, payload_crc(payload, len));
        return 0;
}

int rpc_frame_encode(const void *payload, size_t len, uint8_t **ret_buf, size_t *ret_len) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        if (!payload || !ret_buf || !ret_len || len == 0)
                return -EINVAL;
        if (len > RPC_MAX_FRAME)
                return -EMSGSIZE;

        buf = malloc(RPC_FRAME_HEADER_SIZE + len);
        if (!buf)
                return -ENOMEM;
        r = rpc_frame_header_write(payload, len, buf);
        if (r < 0)
                return r;
        memcpy(buf + RPC_FRAME_HEADER_SIZE, payload, len);

        *ret_len = RPC_FRAME_HEADER_SIZE + len;
        *ret_buf = TAKE_PTR(buf);
        return 0;
}

RpcDecoder *rpc_decoder_new(void) {
        RpcDecoder *d;

        d = calloc(1, sizeof(*d));
        if (!d)
                return NULL;
        d->buf = malloc(RPC_DECODER_INITIAL_BUFFER);
        if (!d->buf)
                return mfree(d);
        d->capacity = RPC_DECODER_INITIAL_BUFFER;
        return d;
}

RpcDecoder *rpc_decoder_free(RpcDecoder *d) {
        if (!d)
                return NULL;
        free(d->buf);
        return mfree(d);
}

/* Forgets the frame handed out by the previous rpc_decoder_next(). */
static void drop_pending(RpcDecoder *d) {
        d->start += d->pending;
        d->consumed += d->pending;
        d->pending = 0;
}

/* Moves the unconsumed bytes to the front of the buffer. */
static void compact(RpcDecoder *d) {
        size_t used = d->end - d->start;

        if (d->start == 0)
                return;
        if (used > 0)
                memmove(d->buf, d->buf + d->start, used);
        d->start = 0;
        d->end = used;
}

int rpc_decoder_feed(RpcDecoder *d, const void *buf, size_t len) {
        size_t used, n;

        if (!d || (!buf && len > 0))
                return -EINVAL;
        if (len == 0)
                return 0;

        drop_pending(d);

        used = d->end - d->start;
        if (used >= RPC_DECODER_MAX_BUFFER)
                return -ENOBUFS;
        n = MIN(len, RPC_DECODER_MAX_BUFFER - used);

        /* Compact only when the tail has no room, not on every feed. */
        if (d->end + n > d->capacity)
                compact(d);

        if (used + n > d->capacity) {
                /* Grows with the data actually received, never with a length field. */
                size_t want = MAX(d->capacity * 2, used + n);
                uint8_t *p;

                want = MIN(want, (size_t) RPC_DECODER_MAX_BUFFER);
                p = realloc(d->buf, want);
                if (!p)
                        return -ENOMEM;
                d->buf = p;
                d->capacity = want;
        }

        memcpy(d->buf + d->end, buf, n);
        d->end += n;
        return (int) n;
}

/* Drops n bytes that are not (the start of) a frame. */
static void skip_garbage(RpcDecoder *d, size_t n) {
        if (!d->in_garbage) {
                d->errors++;
                d->in_garbage = true;
        }
        d->start += n;
        d->consumed += n;
}

/*
 * Rejects the (bad) frame candidate at the front: counts one error and skips one byte only,
 * not the claimed frame, since a real frame may start inside a bogus one (a half frame from
 * an earlier connection, say). The bytes skipped after it belong to this same error.
 */
static void reject_front(RpcDecoder *d) {
        d->errors++;
        d->in_garbage = true;
        d->start++;
        d->consumed++;
}

/*
 * Returns the offset of the first position in p[0..n) where the magic (or, near the end, a
 * prefix of it) starts; n when there is none.
 */
static size_t find_magic(const uint8_t *p, size_t n) {
        size_t off = 0;

        while (off < n) {
                const uint8_t *q = memchr(p + off, magic_bytes[0], n - off);
                size_t k;

                if (!q)
                        return n;
                off = (size_t) (q - p);
                k = MIN(n - off, sizeof(magic_bytes));
                if (memcmp(q, magic_bytes, k) == 0)
                        return off;
                off++;
        }
        return n;
}

/* Returns the buffer to its initial size when the bytes held fit (idle channels stay small). */
static void maybe_shrink(RpcDecoder *d) {
        uint8_t *p;

        if (d->capacity <= RPC_DECODER_INITIAL_BUFFER ||
            d->end - d->start > RPC_DECODER_INITIAL_BUFFER)
                return;
        compact(d);
        p = realloc(d->buf, RPC_DECODER_INITIAL_BUFFER);
        if (!p)
                return; /* keeping the larger buffer is harmless */
        d->buf = p;
        d->capacity = RPC_DECODER_INITIAL_BUFFER;
}

/*
 * Whether the CRC of a complete candidate of `length` bytes at the front may be computed:
 * the total CRC work, this one included, must stay within RPC_DECODER_CRC_WORK_FACTOR times
 * the stream offset of the candidate's end, plus RPC_DECODER_CRC_WORK_SLACK. Depends only on
 * the bytes, so chunking does not change the outcome.
 */
static bool crc_budget_allows(const RpcDecoder *d, uint32_t length) {
        uint64_t frame_end = d->consumed + RPC_FRAME_HEADER_SIZE + length, allowed;

        if (MUL_OVERFLOW(frame_end, (uint64_t) RPC_DECODER_CRC_WORK_FACTOR, &allowed) ||
            ADD_OVERFLOW(allowed, (uint64_t) RPC_DECODER_CRC_WORK_SLACK, &allowed))
                return true;
        return d->crc_bytes + length <= allowed;
}

int rpc_decoder_next(RpcDecoder *d, const uint8_t **ret_payload, size_t *ret_len) {
        if (!d || !ret_payload || !ret_len)
                return -EINVAL;

        drop_pending(d);

        for (;;) {
                const uint8_t *p = d->buf + d->start;
                size_t avail = d->end - d->start, off;
                uint32_t length;

                off = find_magic(p, avail);
                if (off > 0) {
                        skip_garbage(d, off);
                        continue;
                }
                if (avail < RPC_FRAME_HEADER_SIZE)
                        break; /* empty, or a (partial) magic: wait for the rest of the header */

                length = get_le32(p + 4);
                if (length == 0 || length > RPC_MAX_FRAME) {
                        /* Rejected before anything is allocated or awaited. */
                        log_debug("rpc: bad frame length %" PRIu32 ", resynchronising", length);
                        reject_front(d);
                        continue;
                }
                if (!crc_budget_allows(d, length)) {
                        /*
                         * A flood of bogus candidates: drop this one unchecked, and at once,
                         * without waiting for its payload. Deciding on the header alone is
                         * exact (nothing else is checked before this candidate completes) and
                         * keeps the decoder from waiting for, and compacting its buffer
                         * around, candidates it would not check anyway.
                         */
                        log_debug(
                                "rpc: CRC budget exhausted, frame (length %" PRIu32 ") dropped",
                                length);
                        reject_front(d);
                        continue;
                }
                if (avail - RPC_FRAME_HEADER_SIZE < length)
                        break; /* header + length <= RPC_DECODER_MAX_BUFFER: it will fit */

                d->crc_bytes += length;
                if (payload_crc(p + RPC_FRAME_HEADER_SIZE, length) != get_le32(p + 8)) {
                        log_debug(
                                "rpc: bad frame CRC (length %" PRIu32 "), resynchronising", length);
                        reject_front(d);
                        continue;
                }

                d->in_garbage = false;
                d->pending = RPC_FRAME_HEADER_SIZE + length;
                *ret_payload = p + RPC_FRAME_HEADER_SIZE;
                *ret_len = length;
                return 1;
        }

        maybe_shrink(d);
        return 0;
}

void rpc_decoder_reset(RpcDecoder *d) {
        if (!d)
                return;
        d->consumed += d->end - d->start;
        d->start = d->end = d->pending = 0;
        d->in_garbage = false;
        maybe_shrink(d);
}

uint64_t rpc_decoder_errors(const RpcDecoder *d) {
        return d ? d->errors : 0;
}

size_t rpc_decoder_buffered(const RpcDecoder *d) {
        return d ? d->end - d->start - d->pending : 0;
}

size_t rpc_decoder_capacity(const RpcDecoder *d) {
        return d ? d->capacity : 0;
}

uint64_t rpc_decoder_crc_bytes(const RpcDecoder *d) {
        return d ? d->crc_bytes : 0;
}
