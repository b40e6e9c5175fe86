/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Pack and unpack reclaim.Envelope (proto/reclaim.proto) to and from frames, with the version
 * check every exchange needs (docs/protocol.md, "Versioning").
 *
 * Messages returned by rpc_message_unpack() are freed with
 * reclaim__envelope__free_unpacked(m, NULL), always, on every path.
 *
 * Build messages with the generated reclaim__*__init() functions rather than the
 * RECLAIM__*__INIT macros: the macros cast away const from protobuf_c_empty_string and trip
 * -Wcast-qual.
 *
 * No logging above debug here; nothing in this file does I/O.
 */

#include <stddef.h>
#include <stdint.h>

#include "reclaim.pb-c.h"
#include "rpc-frame.h"

/* protocol_version = (major << 16) | minor. Majors are incompatible; minors are additive. */
#define RPC_PROTOCOL_MAJOR 1u
#define RPC_PROTOCOL_MINOR 0u
#define RPC_PROTOCOL_VERSION_MAKE(major, minor) \
        (((uint32_t) (major) << 16) | (0xffffu & (uint32_t) (minor)))
#define RPC_PROTOCOL_VERSION_MAJOR(v) ((uint32_t) (v) >> 16)
#define RPC_PROTOCOL_VERSION_MINOR(v) (0xffffu & (uint32_t) (v))
#define RPC_PROTOCOL_VERSION RPC_PROTOCOL_VERSION_MAKE(RPC_PROTOCOL_MAJOR, RPC_PROTOCOL_MINOR)

/*
 * The most memory one unpacked message may take (all of protobuf-c's allocations for it
 * together). A 64 KiB payload of tiny sub-messages could otherwise expand to several MiB;
 * a payload that needs more than this is treated as malformed.
 */
#define RPC_UNPACK_MAX_MEMORY (16u * RPC_MAX_FRAME)

/*
 * Initialises *m as an empty Envelope of our protocol version with sequence number seq (no
 * body yet). The caller sets body_case and the body pointer, and keeps ownership of
 * everything it links in.
 */
void rpc_message_init(Reclaim__Envelope *m, uint64_t seq);

/*
 * Packs *m into a complete frame (header + payload). On success returns 0, stores a new
 * buffer in *ret_frame (caller frees with free()) and its size in *ret_len. Errors: -EINVAL
 * (NULL argument, no body or a NULL body pointer, or a protocol major other than
 * RPC_PROTOCOL_MAJOR: a programming error), -EMSGSIZE (payload above RPC_MAX_FRAME),
 * -ENOMEM. Borrows m.
 */
int rpc_message_pack(const Reclaim__Envelope *m, uint8_t **ret_frame, size_t *ret_len);

/*
 * Unpacks one frame payload (as returned by rpc_decoder_next()) into a new Envelope. The
 * protocol version is read first with rpc_message_peek_version(), so a major we do not speak
 * is refused whatever the rest of the payload looks like. On success returns 0 and stores the
 * message in *ret (caller frees with reclaim__envelope__free_unpacked(*ret, NULL)). Errors:
 * -EINVAL (NULL argument), -EBADMSG (empty or oversized payload, invalid protobuf, including
 * a field number 0 in any encoding at any depth, which protobuf-c lets through; no or zero
 * protocol_version, or more than RPC_UNPACK_MAX_MEMORY needed), -EPROTONOSUPPORT (a protocol
 * major we do not speak; rpc_message_peek_version() names it for the log), -ENOMEM. Borrows
 * payload.
 *
 * Unknown fields are ignored. An Envelope whose body is unknown to us (added by a newer
 * minor) succeeds with body_case == RECLAIM__ENVELOPE__BODY__NOT_SET: ignore it. Enum values
 * and strings are not checked: the peer is untrusted and callers treat unknown enum values
 * as unknown and escape strings before logging them.
 */
int rpc_message_unpack(const uint8_t *payload, size_t len, Reclaim__Envelope **ret);

/*
 * Reads Envelope.protocol_version (field 1) from a payload without unpacking the rest, e.g.
 * to log the version a peer speaks after rpc_message_unpack() said -EPROTONOSUPPORT. Walks
 * the top-level wire format only. Returns 0 and stores the field (its last occurrence, as
 * protobuf does) in *ret_version; -ENOENT when the payload is well-formed but has no such
 * field; -EBADMSG when the top-level wire format is broken (including a field number 0 in
 * any encoding, which protobuf-c lets through); -EINVAL for NULL arguments. Borrows payload.
 * O(len), no allocation.
 */
int rpc_message_peek_version(const uint8_t *payload, size_t len, uint32_t *ret_version);

/* Returns the name of a body case for debug logs ("hello", "report", ..., "none", "unknown"). */
const char *rpc_message_body_name(Reclaim__Envelope__BodyCase c);
