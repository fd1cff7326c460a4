/* kb_wire: the ZeroMQ boundary. In: multipart messages on a node's ROUTER
 * socket. Out: decoded Requests with the sender's envelope, and Responses
 * sent back to that envelope. ZMQ errors become -errno / KB_ENET here, once.
 * Sockets are passed as void * so that no header outside this file's .c
 * needs <zmq.h>. No state of its own; also kb_arena, a caller-owned bump
 * allocator for decoding many messages at once (replicas' apply). */
#ifndef KB_WIRE_H
#define KB_WIRE_H

#include "kbsync.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define KB_MAX_ENVELOPE 4 /* ROUTER identity (+ REQ's empty delimiter) */

/* Who sent a message: the frames in front of the payload, echoed on reply. */
typedef struct kb_peer {
    size_t nframes;
    uint64_t t_us; /* kb_mono_us() when its request arrived (metrics) */
    size_t len[KB_MAX_ENVELOPE];
    unsigned char frame[KB_MAX_ENVELOPE][256];
} kb_peer_t;

/* A received payload; data is borrowed from the message until kb_buf_free. */
typedef struct kb_buf {
    const void *data;
    size_t len;
    void *priv; /* the zmq_msg_t */
} kb_buf_t;

/* Receives one multipart message from a ROUTER socket without blocking.
 * Returns 0, -EAGAIN when none is waiting, KB_EBADMSG for a message with
 * too many frames or an over-long identity (it is consumed and dropped), or
 * KB_ENET. */
int kb_wire_recv(void *router, kb_peer_t *peer, kb_buf_t *payload);
void kb_buf_free(kb_buf_t *b);

/* Decodes a Request. Refuses (with a reason in err and the code as return):
 * payloads above max_len (KB_ETOOBIG), undecodable or truncated bytes
 * (KB_EBADMSG), a missing body (KB_EBADMSG), an unsupported
 * protocol_version (KB_EPROTO). On error *req is NULL but *request_id holds
 * the request id when it could be read, so the error can be correlated. */
int kb_wire_decode_request(const void *data, size_t len, size_t max_len,
                           Kbsync__Request **req, uint64_t *request_id,
                           char *err, size_t errlen);

/* Checks every string field of a serialized message of type desc, nested
 * messages included (proto3 strings are UTF-8, and protobuf-c cuts a C
 * string at its first NUL, so "k\0a" would silently become "k"): each must
 * be valid UTF-8 without NUL. Returns 0, or KB_EBADID (a field named `id`
 * or `ids`) or KB_EINVAL with err naming the field path and the byte
 * offset, e.g. `upsert.docs[2].id: invalid UTF-8 at byte 5`. Bytes that
 * are not a well-formed message pass (the decoder refuses them). */
int kb_wire_check_strings(const ProtobufCMessageDescriptor *desc,
                          const void *data, size_t len, char *err,
                          size_t errlen);

/* The offset of the first byte of s[0..len) that is not part of valid
 * UTF-8 (overlong forms, surrogates and code points above U+10FFFF are
 * invalid), or len when all of it is valid. */
size_t kb_utf8_check(const char *s, size_t len);
/* The length (1..4) of the valid UTF-8 sequence that starts s[0..n), n >= 1,
 * or 0 when it is not one (same rules as kb_utf8_check). */
size_t kb_utf8_seq(const char *s, size_t n);

/* Sends resp to peer (protocol_version is filled in). */
int kb_wire_send_response(void *router, const kb_peer_t *peer,
                          Kbsync__Response *resp);

/* Sends an error Response {request_id, error {code, message}}. */
int kb_wire_send_error(void *router, const kb_peer_t *peer, uint64_t request_id,
                       int code, const char *message);

/* Packs any protobuf-c message and sends it as one frame on a socket.
 * flags are ZMQ send flags (e.g. ZMQ_DONTWAIT). */
int kb_wire_send_msg(void *sock, const void *protobuf_msg, int flags);

/* The value of varint field `field` of a serialized message whose fields up
 * to it are varints (a LogRecord's lsn = 1, commit_time_us = 2), or 0. */
uint64_t kb_wire_peek_u64(const void *bytes, size_t len, unsigned field);

/* The bytes of length-delimited field `field` (a string, bytes or embedded
 * message) of a serialized message, without decoding the rest: *out and
 * *out_len point into bytes (the last occurrence, as a decoder keeps).
 * Returns 0, 1 when the field is absent, or -1 when the message is not
 * well-formed up to its end. */
int kb_wire_peek_bytes(const void *bytes, size_t len, unsigned field,
                       const void **out, size_t *out_len);

/* A bump allocator for protobuf-c's unpack (kbsync__*__unpack(&a->pc,
 * ...)): each allocation comes from one reused block, freeing is a no-op,
 * and kb_arena_reset() drops everything at once. It spares the malloc and
 * free of every field of every record a batch decodes, and the page faults
 * of fresh heap when the allocator gave memory back between batches. A
 * request the block cannot hold gets a block of its own (kept in a list
 * until the reset, which then enlarges the main block to what was used, up
 * to KB_ARENA_MAX_BLOCK). Messages decoded into an arena must be dropped
 * before its reset; free_unpacked on them is allowed and does nothing. One
 * thread at a time. */
#define KB_ARENA_MAX_BLOCK ((size_t)16 << 20)
typedef struct kb_arena {
    ProtobufCAllocator pc; /* pass &a->pc to unpack */
    unsigned char *buf;
    size_t cap, used;
    size_t spilled;     /* bytes of own blocks since the last reset */
    struct kb_arena_blk *own;
} kb_arena_t;

void kb_arena_init(kb_arena_t *a);
void kb_arena_reset(kb_arena_t *a);
void kb_arena_free(kb_arena_t *a);

/* Opens a socket of ZMQ type `type` (ZMQ_ROUTER, ...) on ctx and binds
 * (bind = 1) or connects it to endpoint, with linger 0. */
int kb_wire_socket(void *ctx, int type, const char *endpoint, int bind,
                   void **out, char *err, size_t errlen);

/* The same with CURVE (kb_sec.h) when curve is non-NULL with keys: a server
 * socket (bind) when curve->server is empty, else a client of that server
 * key. */
struct kb_curve;
int kb_wire_socket_curve(void *ctx, int type, const char *endpoint, int bind,
                         const struct kb_curve *curve, void **out, char *err,
                         size_t errlen);

/* Options a connection takes when it is made: ZeroMQ copies them into a
 * listener at bind (and a connecter at connect), so setting them later
 * changes nothing for that endpoint. 0 = ZeroMQ's default. */
typedef struct kb_sockopts {
    int sndhwm;           /* messages queued per peer */
    int heartbeat_ivl_ms; /* ZMTP PINGs this often */
    int heartbeat_tmo_ms; /* connection closed without an answer this long */
    int64_t maxmsgsize;   /* larger messages close their connection */
} kb_sockopts_t;

/* kb_wire_socket_curve with opts (NULL: none) set before bind/connect. */
int kb_wire_socket_opts(void *ctx, int type, const char *endpoint, int bind,
                        const struct kb_curve *curve,
                        const kb_sockopts_t *opts, void **out, char *err,
                        size_t errlen);

#endif
