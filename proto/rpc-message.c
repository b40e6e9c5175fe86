/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Envelope <-> frame, with the protocol version check and a memory budget for unpacking
 * untrusted payloads.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "rpc-message.h"

void rpc_message_init(Reclaim__Envelope *m, uint64_t seq) {
        assert(m);
        reclaim__envelope__init(m);
        m->protocol_version = RPC_PROTOCOL_VERSION;
        m->seq = seq;
}

/* The body pointer for the selected case; NULL when none is selected or it is NULL. */
static const void *body_ptr(const Reclaim__Envelope *m) {
        switch (m->body_case) {
        case RECLAIM__ENVELOPE__BODY_HELLO:
                return m->hello;
        case RECLAIM__ENVELOPE__BODY_PROGRESS:
                return m->progress;
        case RECLAIM__ENVELOPE__BODY_REPORT:
                return m->report;
        case RECLAIM__ENVELOPE__BODY_PONG:
                return m->pong;
        case RECLAIM__ENVELOPE__BODY_HELLO_ACK:
                return m->hello_ack;
        case RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST:
                return m->reclaim_request;
        case RECLAIM__ENVELOPE__BODY_CANCEL:
                return m->cancel;
        case RECLAIM__ENVELOPE__BODY_PING:
                return m->ping;
        default:
                return NULL;
        }
}

const char *rpc_message_body_name(Reclaim__Envelope__BodyCase c) {
        switch (c) {
        case RECLAIM__ENVELOPE__BODY__NOT_SET:
                return "none";
        case RECLAIM__ENVELOPE__BODY_HELLO:
                return "hello";
        case RECLAIM__ENVELOPE__BODY_PROGRESS:
                return "progress";
        case RECLAIM__ENVELOPE__BODY_REPORT:
                return "report";
        case RECLAIM__ENVELOPE__BODY_PONG:
                return "pong";
        case RECLAIM__ENVELOPE__BODY_HELLO_ACK:
                return "hello_ack";
        case RECLAIM__ENVELOPE__BODY_RECLAIM_REQUEST:
                return "reclaim_request";
        case RECLAIM__ENVELOPE__BODY_CANCEL:
                return "cancel";
        case RECLAIM__ENVELOPE__BODY_PING:
                return "ping";
        default:
                return "unknown";
        }
}

int rpc_message_pack(const Reclaim__Envelope *m, uint8_t **ret_frame, size_t *ret_len) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t size, packed;
        int r;

        if (!m || !ret_frame || !ret_len)
                return -EINVAL;
        if (m->base.descriptor != &reclaim__envelope__descriptor)
                return -EINVAL;
        if (RPC_PROTOCOL_VERSION_MAJOR(m->protocol_version) != RPC_PROTOCOL_MAJOR)
                return -EINVAL;
        if (!body_ptr(m))
                return -EINVAL;
        /* NULL entries in repeated fields and the like would crash the packer */
        if (!protobuf_c_message_check(&m->base))
                return -EINVAL;

        size = reclaim__envelope__get_packed_size(m);
        if (size == 0) /* cannot happen: protocol_version is non-zero */
                return -EINVAL;
        if (size > RPC_MAX_FRAME)
                return -EMSGSIZE;

        buf = malloc(RPC_FRAME_HEADER_SIZE + size);
        if (!buf)
                return -ENOMEM;
        packed = reclaim__envelope__pack(m, buf + RPC_FRAME_HEADER_SIZE);
        if (packed != size)
                return -EINVAL;
        r = rpc_frame_header_write(buf + RPC_FRAME_HEADER_SIZE, size, buf);
        if (r < 0)
                return r;

        *ret_len = RPC_FRAME_HEADER_SIZE + size;
        *ret_frame = TAKE_PTR(buf);
        return 0;
}

/*
 * protobuf-c allocator with a budget: the sum of all sizes requested for one unpack is
 * capped at RPC_UNPACK_MAX_MEMORY. Backed by malloc()/free(), so the result can be freed
 * with reclaim__envelope__free_unpacked(m, NULL) like any other message.
 */
typedef struct UnpackBudget {
        size_t used;
        bool exceeded;
        bool oom;
} UnpackBudget;

static void *budget_alloc(void *data, size_t size) {
        UnpackBudget *b = data;
        size_t total;
        void *p;

        if (ADD_OVERFLOW(b->used, size, &total) || total > RPC_UNPACK_MAX_MEMORY) {
                b->exceeded = true;
                return NULL;
        }
        p = malloc(size);
        if (!p) {
                b->oom = true;
                return NULL;
        }
        b->used = total;
        return p;
}

static void budget_free(void *data, void *p) {
        free(p);
}

/*
 * True when *m or any sub-message in it kept an unknown field with field number 0.
 *
 * Field number 0 is invalid in every encoding, but protobuf-c only refuses it when the key's
 * first byte says so: a non-minimal key (0x80 0x80 0x00) gets through and is kept as an
 * unknown field with tag 0. Packing writes that key back minimally (0x00), which protobuf-c
 * then refuses, so accepting it would let a message we accepted fail to unpack after a
 * re-pack. rpc_message_peek_version() refuses such keys at the top level only; this finds
 * them at every depth. Known fields never have number 0, so unknown fields are all there is
 * to check. Recursion follows the schema's nesting, which protobuf-c's unpack has already
 * followed to build *m.
 */
static bool message_has_field0(const ProtobufCMessage *m) {
        const ProtobufCMessageDescriptor *desc = m->descriptor;
        const uint8_t *base = (const uint8_t *) m;

        for (size_t i = 0; i < m->n_unknown_fields; i++)
                if (m->unknown_fields[i].tag == 0)
                        return true;

        for (size_t i = 0; i < desc->n_fields; i++) {
                const ProtobufCFieldDescriptor *f = &desc->fields[i];
                const ProtobufCMessage *sub;

                if (f->type != PROTOBUF_C_TYPE_MESSAGE)
                        continue;

                if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                        ProtobufCMessage **subs;
                        size_t n;

                        memcpy(&n, base + f->quantifier_offset, sizeof(n));
                        memcpy(&subs, base + f->offset, sizeof(subs));
                        for (size_t j = 0; j < n; j++)
                                if (subs[j] && message_has_field0(subs[j]))
                                        return true;
                        continue;
                }

                if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                        uint32_t which;

                        memcpy(&which, base + f->quantifier_offset, sizeof(which));
                        if (which != f->id) /* another member of the oneof is set */
                                continue;
                }
                memcpy(&sub, base + f->offset, sizeof(sub));
                if (sub && message_has_field0(sub))
                        return true;
        }
        return false;
}

int rpc_message_unpack(const uint8_t *payload, size_t len, Reclaim__Envelope **ret) {
        UnpackBudget budget = {};
        ProtobufCAllocator allocator = {
                .alloc = budget_alloc,
                .free = budget_free,
                .allocator_data = &budget,
        };
        Reclaim__Envelope *m;
        uint32_t v;
        int r;

        if (!payload || !ret)
                return -EINVAL;
        if (len == 0 || len > RPC_MAX_FRAME)
                return -EBADMSG;

        /*
         * The version first, from the wire format alone: a newer major may lay the Envelope
         * out differently, and must be reported as such rather than as a parse failure. It
         * also makes this check and the peek agree on every input by construction.
         */
        r = rpc_message_peek_version(payload, len, &v);
        if (r < 0 || v == 0) /* broken, or no version at all: not an Envelope of any version */
                return -EBADMSG;
        if (RPC_PROTOCOL_VERSION_MAJOR(v) != RPC_PROTOCOL_MAJOR) {
                log_debug(
                        "rpc: peer speaks protocol %" PRIu32 ".%" PRIu32 ", we speak %u.%u",
                        RPC_PROTOCOL_VERSION_MAJOR(v),
                        RPC_PROTOCOL_VERSION_MINOR(v),
                        RPC_PROTOCOL_MAJOR,
                        RPC_PROTOCOL_MINOR);
                return -EPROTONOSUPPORT;
        }

        m = reclaim__envelope__unpack(&allocator, len, payload);
        if (!m) {
                if (budget.oom)
                        return -ENOMEM;
                if (budget.exceeded)
                        log_debug(
                                "rpc: message needs more than %u bytes unpacked, dropped",
                                RPC_UNPACK_MAX_MEMORY);
                return -EBADMSG;
        }
        if (m->protocol_version != v) {
                /* protobuf-c read the version differently from the wire walk: do not guess */
                reclaim__envelope__free_unpacked(m, NULL);
                return -EBADMSG;
        }
        if (message_has_field0(&m->base)) {
                log_debug("rpc: field number 0 in a sub-message, dropped");
                reclaim__envelope__free_unpacked(m, NULL);
                return -EBADMSG;
        }

        *ret = m;
        return 0;
}

/* Reads a base-128 varint at *p (below end); advances *p. -EBADMSG when truncated or > 64 bits. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *ret) {
        uint64_t v = 0;

        for (unsigned shift = 0; shift < 64; shift += 7) {
                uint8_t b;

                if (*p >= end)
                        return -EBADMSG;
                b = *(*p)++;
                if (shift == 63 && b > 1)
                        return -EBADMSG;
                v |= (uint64_t) (b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *ret = v;
                        return 0;
                }
        }
        return -EBADMSG;
}

int rpc_message_peek_version(const uint8_t *payload, size_t len, uint32_t *ret_version) {
        const uint8_t *p = payload, *end;
        uint32_t version = 0;
        bool found = false;
        int r;

        if (!payload || !ret_version)
                return -EINVAL;
        end = payload + len;

        /* Walks the top-level fields of the wire format (protobuf "Encoding", wire types 0-5). */
        while (p < end) {
                uint64_t key, v;

                r = read_varint(&p, end, &key);
                if (r < 0)
                        return r;
                if (key >> 3 == 0) /* field number 0 is invalid */
                        return -EBADMSG;
                switch (key & 7) {
                case 0: /* varint */
                        r = read_varint(&p, end, &v);
                        if (r < 0)
                                return r;
                        if (key >> 3 == 1) {
                                /* the last occurrence wins, as in protobuf; uint32 truncates */
                                version = (uint32_t) v;
                                found = true;
                        }
                        break;
                case 1: /* 64-bit */
                        if (end - p < 8)
                                return -EBADMSG;
                        p += 8;
                        break;
                case 2: /* length-delimited */
                        r = read_varint(&p, end, &v);
                        if (r < 0)
                                return r;
                        if (v > (uint64_t) (end - p))
                                return -EBADMSG;
                        p += v;
                        break;
                case 5: /* 32-bit */
                        if (end - p < 4)
                                return -EBADMSG;
                        p += 4;
                        break;
                default: /* groups (3, 4) are not used by proto3; 6 and 7 do not exist */
                        return -EBADMSG;
                }
        }
        if (!found)
                return -ENOENT;
        *ret_version = version;
        return 0;
}
