/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Framing shared by reclaim-agent and reclaimd (docs/protocol.md, "Framing").
 *
 * Every frame is a 12-byte little-endian header followed by the payload (one packed
 * reclaim.Envelope):
 *
 *     offset 0  u32 magic   RPC_FRAME_MAGIC (bytes "RCLM" on the wire)
 *     offset 4  u32 length  payload bytes, 1..RPC_MAX_FRAME
 *     offset 8  u32 crc32   zlib crc32() of the payload
 *
 * The decoder is incremental (feed it whatever read() returned, one byte at a time works),
 * never holds more than one frame (its buffer is bounded by RPC_FRAME_HEADER_SIZE +
 * RPC_MAX_FRAME and grows only as data arrives, never because of a length field), and
 * resynchronises after garbage by scanning for the next magic. The peer is untrusted: a bad
 * length or CRC is counted as an error and skipped, never reported to the caller as a frame.
 *
 * No logging above debug here; nothing in this file does I/O.
 */

#include <stddef.h>
#include <stdint.h>

#include "macro.h"

#define RPC_FRAME_MAGIC UINT32_C(0x4d4c4352) /* "RCLM" as little-endian bytes */
#define RPC_FRAME_HEADER_SIZE 12u
#define RPC_MAX_FRAME (64u * 1024u) /* largest payload; checked before any allocation */

/* Initial (and idle) size of a decoder's buffer; it grows up to RPC_DECODER_MAX_BUFFER. */
#define RPC_DECODER_INITIAL_BUFFER 4096u
#define RPC_DECODER_MAX_BUFFER (RPC_FRAME_HEADER_SIZE + RPC_MAX_FRAME)

/*
 * CRC work budget: the payload bytes the decoder CRC-checks never exceed
 * RPC_DECODER_CRC_WORK_FACTOR times the stream bytes examined plus RPC_DECODER_CRC_WORK_SLACK.
 * A candidate frame whose check would exceed it is dropped unchecked (counted as an error,
 * like a bad CRC). Honest traffic costs at most one CRC byte per stream byte and so only adds
 * slack; the extra slack of one maximal frame lets a stale half frame at the very start of a
 * stream fail its CRC without costing the real frames inside it. Without a budget a peer
 * packing the magic densely with maximal lengths (interleaved with tiny valid frames) makes
 * every few bytes it sends cost a 64 KiB CRC.
 */
#define RPC_DECODER_CRC_WORK_FACTOR 4u
#define RPC_DECODER_CRC_WORK_SLACK RPC_MAX_FRAME

typedef struct RpcDecoder RpcDecoder;

/*
 * Writes the RPC_FRAME_HEADER_SIZE-byte header for a payload of len bytes (1..RPC_MAX_FRAME)
 * into ret_header (the caller's buffer of at least that size).
 * Returns 0, or -EINVAL (NULL argument, len 0) or -EMSGSIZE (len > RPC_MAX_FRAME); on failure
 * ret_header is untouched. Borrows payload. Costs one CRC32 over the payload.
 */
int rpc_frame_header_write(const void *payload, size_t len, uint8_t *ret_header);

/*
 * Builds a complete frame (header + copy of payload). On success returns 0 and stores a new
 * buffer in *ret_buf (caller frees with free()) and its size in *ret_len. Errors: -EINVAL
 * (NULL argument, len 0), -EMSGSIZE (len > RPC_MAX_FRAME), -ENOMEM. Borrows payload.
 */
int rpc_frame_encode(const void *payload, size_t len, uint8_t **ret_buf, size_t *ret_len);

/* Returns a new decoder with an empty buffer, or NULL when out of memory. Caller frees. */
RpcDecoder *rpc_decoder_new(void);

/* Frees the decoder and any payload returned by rpc_decoder_next(). Accepts NULL; returns NULL. */
RpcDecoder *rpc_decoder_free(RpcDecoder *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(RpcDecoder *, rpc_decoder_free);

/*
 * Appends received bytes to the decoder. Copies as many as fit (the buffer never exceeds
 * RPC_DECODER_MAX_BUFFER) and returns how many it took (0..len, fits in int); the caller
 * feeds the rest after draining rpc_decoder_next(). Returns -ENOBUFS when len > 0 and nothing
 * fits (only possible when rpc_decoder_next() was not called until it returned 0), -EINVAL
 * for a NULL decoder or a NULL buf with len > 0, -ENOMEM when growing the buffer failed (no
 * byte taken; the decoder is still usable). Borrows buf. Invalidates the payload pointer from
 * the previous rpc_decoder_next().
 */
int rpc_decoder_feed(RpcDecoder *d, const void *buf, size_t len);

/*
 * Extracts the next valid frame from the buffered bytes. Returns 1 and points *ret_payload /
 * *ret_len at the payload (borrowed: valid until the next rpc_decoder_feed(),
 * rpc_decoder_next(), rpc_decoder_reset() or rpc_decoder_free()); 0 when more bytes are
 * needed (the out-params are untouched); -EINVAL for NULL arguments. Garbage, a length of 0
 * or above RPC_MAX_FRAME, and a CRC mismatch are skipped and counted in rpc_decoder_errors();
 * they are not errors of this call. Call it until it returns 0 after every feed. Costs at
 * most one CRC32 per candidate frame, within the budget of RPC_DECODER_CRC_WORK_FACTOR; no
 * I/O, no allocation except shrinking an idle buffer.
 */
int rpc_decoder_next(RpcDecoder *d, const uint8_t **ret_payload, size_t *ret_len);

/*
 * Drops everything buffered (e.g. when the channel reconnects, so that a half frame from the
 * old connection cannot swallow the first frames of the new one). Keeps the error counter.
 * Accepts NULL.
 */
void rpc_decoder_reset(RpcDecoder *d);

/*
 * Number of resynchronisations so far: each run of garbage bytes, each bad length and each
 * bad CRC (or candidate dropped unchecked, see RPC_DECODER_CRC_WORK_FACTOR) counts once (the
 * garbage skipped while recovering from a bad length or CRC is part of that same error).
 * Independent of how the input was chunked. 0 for NULL.
 */
uint64_t rpc_decoder_errors(const RpcDecoder *d);

/* Bytes currently held (frame in progress or not yet examined). 0 for NULL. */
size_t rpc_decoder_buffered(const RpcDecoder *d);

/* Current allocation of the buffer; never above RPC_DECODER_MAX_BUFFER. 0 for NULL. */
size_t rpc_decoder_capacity(const RpcDecoder *d);

/*
 * Payload bytes CRC-checked so far; never above RPC_DECODER_CRC_WORK_FACTOR times the bytes
 * of stream examined plus RPC_DECODER_CRC_WORK_SLACK. 0 for NULL.
 */
uint64_t rpc_decoder_crc_bytes(const RpcDecoder *d);
