/* kb_wire: receive/decode/send of protobuf messages over ZeroMQ (see
 * kb_wire.h). Every ZMQ call of the project's server side goes through
 * here; errno from libzmq is read right after the failing call. */
#include "kb_wire.h"

#include "kb_sec.h"

#include "kb_err.h"
#include "kb_metrics.h"
#include "kb_util.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

static int more_frames(void *sock)
{
    int more = 0;
    size_t sz = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    return more;
}

static void drain(void *sock)
{
    while (more_frames(sock)) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
    }
}

int kb_wire_recv(void *router, kb_peer_t *peer, kb_buf_t *payload)
{
    memset(payload, 0, sizeof *payload);
    peer->nframes = 0;
    peer->t_us = kb_mono_us();
    zmq_msg_t *m = malloc(sizeof *m);
    if (!m)
        return KB_ENOMEM;
    for (;;) {
        zmq_msg_init(m);
        int first = peer->nframes == 0;
        int rc = zmq_msg_recv(m, router, first ? ZMQ_DONTWAIT : 0);
        if (rc < 0) {
            int e = errno;
            zmq_msg_close(m);
            free(m);
            if (e == EAGAIN && first)
                return -EAGAIN;
            return e == EINTR ? -EINTR : KB_ENET;
        }
        if (!zmq_msg_more(m)) {
            payload->data = zmq_msg_data(m);
            payload->len = zmq_msg_size(m);
            payload->priv = m;
            return 0;
        }
        size_t n = zmq_msg_size(m);
        if (peer->nframes == KB_MAX_ENVELOPE || n > sizeof peer->frame[0]) {
            zmq_msg_close(m);
            free(m);
            drain(router);
            return KB_EBADMSG;
        }
        memcpy(peer->frame[peer->nframes], zmq_msg_data(m), n);
        peer->len[peer->nframes++] = n;
        zmq_msg_close(m);
    }
}

void kb_buf_free(kb_buf_t *b)
{
    if (!b || !b->priv)
        return;
    zmq_msg_close(b->priv);
    free(b->priv);
    memset(b, 0, sizeof *b);
}

/* Reads field 2 (request_id, varint) straight off the wire so that even an
 * undecodable request can get a correlated error. Best effort. */
static uint64_t peek_request_id(const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint64_t key = 0;
        int shift = 0;
        while (i < len && shift < 64) {
            key |= (uint64_t)(p[i] & 0x7f) << shift;
            shift += 7;
            if (!(p[i++] & 0x80))
                break;
        }
        unsigned wt = key & 7;
        uint64_t v = 0;
        shift = 0;
        if (wt == 0) {
            while (i < len && shift < 64) {
                v |= (uint64_t)(p[i] & 0x7f) << shift;
                shift += 7;
                if (!(p[i++] & 0x80))
                    break;
            }
            if ((key >> 3) == 2)
                return v;
        } else if (wt == 2) {
            while (i < len && shift < 64) {
                v |= (uint64_t)(p[i] & 0x7f) << shift;
                shift += 7;
                if (!(p[i++] & 0x80))
                    break;
            }
            if (v > len - i)
                return 0;
            i += v;
        } else if (wt == 1) {
            i += 8;
        } else if (wt == 5) {
            i += 4;
        } else {
            return 0;
        }
    }
    return 0;
}

int kb_wire_decode_request(const void *data, size_t len, size_t max_len,
                           Kbsync__Request **req, uint64_t *request_id,
                           char *err, size_t errlen)
{
    *req = NULL;
    *request_id = 0;
    if (len > max_len) {
        *request_id = peek_request_id(data, len < 64 ? len : 64);
        return kb_seterr(err, errlen, KB_ETOOBIG,
                         "request of %zu bytes exceeds the limit of %zu bytes "
                         "(send smaller batches, e.g. ingest --batch)",
                         len, max_len);
    }
    if (len == 0)
        return kb_seterr(err, errlen, KB_EBADMSG, "empty request");
    Kbsync__Request *r = kbsync__request__unpack(NULL, len, data);
    if (!r) {
        *request_id = peek_request_id(data, len);
        return kb_seterr(err, errlen, KB_EBADMSG,
                         "request of %zu bytes cannot be decoded as a "
                         "kbsync.Request (truncated or not protobuf)",
                         len);
    }
    *request_id = r->request_id;
    if (r->protocol_version == 0 || r->protocol_version > KB_PROTOCOL_VERSION) {
        int rc = kb_seterr(err, errlen, KB_EPROTO,
                           "request has protocol_version %u; this node speaks "
                           "version %u",
                           r->protocol_version, KB_PROTOCOL_VERSION);
        kbsync__request__free_unpacked(r, NULL);
        return rc;
    }
    int bad = kb_wire_check_strings(&kbsync__request__descriptor, data, len,
                                    err, errlen);
    if (bad) {
        kbsync__request__free_unpacked(r, NULL);
        return bad;
    }
    if (r->body_case == KBSYNC__REQUEST__BODY__NOT_SET) {
        kbsync__request__free_unpacked(r, NULL);
        return kb_seterr(err, errlen, KB_EBADMSG,
                         "request has no body, or a body type this node does "
                         "not know (protocol version %u)",
                         KB_PROTOCOL_VERSION);
    }
    *req = r;
    return 0;
}

/* ------------------------------------------------------------ strings */

size_t kb_utf8_seq(const char *str, size_t n)
{
    const uint8_t *s = (const uint8_t *)str;
    uint8_t c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t j = 1; j < len; j++) {
        if ((s[j] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[j] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

size_t kb_utf8_check(const char *str, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)str[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = kb_utf8_seq(str + i, len - i);
        if (!n)
            return i;
        i += n;
    }
    return len;
}

static int wire_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; *p < end && shift < 70; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

#define KB__CHECK_DEPTH 16

/* 1: a bad string (err set), 0: fine, -1: not well-formed (left to the
 * decoder). path is the field path so far (NUL-terminated in a buffer of
 * pathcap bytes). */
static int check_msg(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                     const uint8_t *end, char *path, size_t pathcap,
                     int depth, char *err, size_t errlen, int *code)
{
    if (depth > KB__CHECK_DEPTH)
        return -1;
    unsigned seen[32] = {0}; /* occurrences of fields 1..31, for [i] */
    size_t base = strlen(path);
    while (p < end) {
        uint64_t key, v;
        if (wire_varint(&p, end, &key))
            return -1;
        unsigned num = (unsigned)(key >> 3), type = (unsigned)(key & 7);
        const uint8_t *bytes = NULL;
        switch (type) {
        case 0:
            if (wire_varint(&p, end, &v))
                return -1;
            continue;
        case 1:
            if (end - p < 8)
                return -1;
            p += 8;
            continue;
        case 5:
            if (end - p < 4)
                return -1;
            p += 4;
            continue;
        case 2:
            if (wire_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return -1;
            bytes = p;
            p += v;
            break;
        default:
            return -1;
        }
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(d, num);
        if (!f || (f->type != PROTOBUF_C_TYPE_STRING &&
                   f->type != PROTOBUF_C_TYPE_MESSAGE))
            continue;
        unsigned idx = num < 32 ? seen[num]++ : 0;
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            snprintf(path + base, pathcap - base, "%s%s[%u]", base ? "." : "",
                     f->name, idx);
        else
            snprintf(path + base, pathcap - base, "%s%s", base ? "." : "",
                     f->name);
        if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            int rc = check_msg(f->descriptor, bytes, bytes + v, path, pathcap,
                               depth + 1, err, errlen, code);
            if (rc)
                return rc;
        } else {
            const uint8_t *nul = memchr(bytes, 0, v);
            size_t nul_at = nul ? (size_t)(nul - bytes) : v;
            size_t bad = kb_utf8_check((const char *)bytes, v);
            if (nul_at < v || bad < v) {
                int is_id = !strcmp(f->name, "id") || !strcmp(f->name, "ids");
                *code = is_id ? KB_EBADID : KB_EINVAL;
                kb_seterr(err, errlen, *code,
                          "%s: %s at byte %zu (strings must be UTF-8 without "
                          "NUL)",
                          path, nul_at <= bad ? "a NUL byte" : "invalid UTF-8",
                          nul_at <= bad ? nul_at : bad);
                return 1;
            }
        }
        path[base] = '\0';
    }
    return 0;
}

int kb_wire_check_strings(const ProtobufCMessageDescriptor *desc,
                          const void *data, size_t len, char *err,
                          size_t errlen)
{
    char path[256] = "";
    int code = 0;
    const uint8_t *p = data;
    return check_msg(desc, p, p + len, path, sizeof path, 0, err, errlen,
                     &code) == 1
               ? code
               : 0;
}

static void free_packed(void *data, void *hint)
{
    (void)hint;
    free(data);
}

/* Sends a packed protobuf as the last frame, taking ownership of buf. */
static int send_packed(void *sock, void *buf, size_t len, int flags)
{
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, buf, len, free_packed, NULL)) {
        free(buf);
        return KB_ENET;
    }
    if (zmq_msg_send(&m, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        return e == EAGAIN         ? -EAGAIN
               : e == EHOSTUNREACH ? -EHOSTUNREACH
                                   : KB_ENET;
    }
    return 0;
}

int kb_wire_send_msg(void *sock, const void *msg, int flags)
{
    const ProtobufCMessage *pm = msg;
    size_t len = protobuf_c_message_get_packed_size(pm);
    void *buf = malloc(len ? len : 1);
    if (!buf)
        return KB_ENOMEM;
    protobuf_c_message_pack(pm, buf);
    return send_packed(sock, buf, len, flags);
}

int kb_wire_send_response(void *router, const kb_peer_t *peer,
                          Kbsync__Response *resp)
{
    resp->protocol_version = KB_PROTOCOL_VERSION;
    if (resp->error)
        kb_metrics_error(resp->error->code);
    for (size_t i = 0; i < peer->nframes; i++) {
        /* ZMQ_DONTWAIT: a peer that went away (EHOSTUNREACH with
         * ROUTER_MANDATORY off is silent) must not block the node. */
        if (zmq_send(router, peer->frame[i], peer->len[i],
                     ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            return KB_ENET;
    }
    return kb_wire_send_msg(router, resp, ZMQ_DONTWAIT);
}

int kb_wire_send_error(void *router, const kb_peer_t *peer, uint64_t request_id,
                       int code, const char *message)
{
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    Kbsync__Error e = KBSYNC__ERROR__INIT;
    e.code = code;
    e.message = (char *)message;
    r.request_id = request_id;
    r.error = &e;
    return kb_wire_send_response(router, peer, &r);
}

int kb_wire_socket(void *ctx, int type, const char *endpoint, int bind,
                   void **out, char *err, size_t errlen)
{
    return kb_wire_socket_curve(ctx, type, endpoint, bind, NULL, out, err,
                                errlen);
}

int kb_wire_socket_curve(void *ctx, int type, const char *endpoint, int bind,
                         const struct kb_curve *curve, void **out, char *err,
                         size_t errlen)
{
    return kb_wire_socket_opts(ctx, type, endpoint, bind, curve, NULL, out,
                               err, errlen);
}

int kb_wire_socket_opts(void *ctx, int type, const char *endpoint, int bind,
                        const struct kb_curve *curve,
                        const kb_sockopts_t *opts, void **out, char *err,
                        size_t errlen)
{
    *out = NULL;
    void *s = zmq_socket(ctx, type);
    if (!s)
        return kb_seterr(err, errlen, KB_ENET, "zmq_socket: %s",
                         zmq_strerror(errno));
    int zero = 0, one = 1;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (opts && opts->sndhwm)
        zmq_setsockopt(s, ZMQ_SNDHWM, &opts->sndhwm, sizeof opts->sndhwm);
    if (opts && opts->heartbeat_ivl_ms) {
        zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &opts->heartbeat_ivl_ms,
                       sizeof opts->heartbeat_ivl_ms);
        zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &opts->heartbeat_tmo_ms,
                       sizeof opts->heartbeat_tmo_ms);
    }
    if (opts && opts->maxmsgsize)
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &opts->maxmsgsize,
                       sizeof opts->maxmsgsize);
    if (curve && curve->pub[0]) {
        /* Before bind/connect: a connection takes the settings it finds. */
        int bad = zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, curve->pub, 40) ||
                  zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, curve->sec, 40);
        if (!bad && curve->server[0])
            bad = zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, curve->server, 40);
        else if (!bad)
            bad = zmq_setsockopt(s, ZMQ_CURVE_SERVER, &one, sizeof one) ||
                  zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, curve->domain,
                                 strlen(curve->domain));
        if (bad) {
            int e = errno;
            zmq_close(s);
            return kb_seterr(err, errlen, KB_ENET, "CURVE on %s: %s",
                             endpoint, zmq_strerror(e));
        }
    }
    int rc = bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint);
    if (rc) {
        int e = errno;
        zmq_close(s);
        return kb_seterr(err, errlen, KB_ENET, "cannot %s %s: %s",
                         bind ? "listen on" : "connect to", endpoint,
                         zmq_strerror(e));
    }
    *out = s;
    return 0;
}

int kb_wire_peek_bytes(const void *bytes, size_t len, unsigned field,
                       const void **out, size_t *out_len)
{
    const uint8_t *p = bytes, *end = p + len;
    int found = 1;
    while (p < end) {
        uint64_t key, v;
        if (wire_varint(&p, end, &key) || (key >> 3) == 0)
            return -1;
        switch (key & 7) {
        case 0: /* varint */
            if (wire_varint(&p, end, &v))
                return -1;
            break;
        case 1: /* 64-bit */
        case 5: /* 32-bit */
            if (end - p < ((key & 7) == 1 ? 8 : 4))
                return -1;
            p += (key & 7) == 1 ? 8 : 4;
            break;
        case 2: /* length-delimited */
            if (wire_varint(&p, end, &v) || v > (uint64_t)(end - p))
                return -1;
            if ((key >> 3) == field) {
                *out = p;
                *out_len = (size_t)v;
                found = 0;
            }
            p += v;
            break;
        default: /* groups (3, 4) are not used; 6, 7 do not exist */
            return -1;
        }
    }
    return found;
}

uint64_t kb_wire_peek_u64(const void *bytes, size_t len, unsigned field)
{
    const uint8_t *p = bytes;
    size_t i = 0;
    while (i < len) {
        uint64_t key = 0, v = 0;
        for (unsigned shift = 0; i < len && shift < 64; shift += 7) {
            key |= (uint64_t)(p[i] & 0x7f) << shift;
            if (!(p[i++] & 0x80))
                break;
        }
        if ((key & 7) != 0) /* not a varint: the fields asked for are over */
            return 0;
        for (unsigned shift = 0; i < len && shift < 64; shift += 7) {
            v |= (uint64_t)(p[i] & 0x7f) << shift;
            if (!(p[i++] & 0x80))
                break;
        }
        if ((key >> 3) == field)
            return v;
    }
    return 0;
}

/* ------------------------------------------------------ kb_arena */

struct kb_arena_blk {
    struct kb_arena_blk *next;
    max_align_t data[];
};

#define ARENA_ALIGN (_Alignof(max_align_t))

static void *arena_alloc(void *ctx, size_t size)
{
    kb_arena_t *a = ctx;
    size_t need = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    if (need < size)
        return NULL;
    if (a->buf && need <= a->cap - a->used) {
        void *p = a->buf + a->used;
        a->used += need;
        return p;
    }
    if (need > SIZE_MAX - sizeof(struct kb_arena_blk))
        return NULL;
    struct kb_arena_blk *b = malloc(sizeof *b + need);
    if (!b)
        return NULL;
    b->next = a->own;
    a->own = b;
    a->spilled += need;
    return b->data;
}

static void arena_nofree(void *ctx, void *p)
{
    (void)ctx;
    (void)p;
}

void kb_arena_init(kb_arena_t *a)
{
    memset(a, 0, sizeof *a);
    a->pc.alloc = arena_alloc;
    a->pc.free = arena_nofree;
    a->pc.allocator_data = a;
}

void kb_arena_reset(kb_arena_t *a)
{
    size_t want = a->used + a->spilled;
    while (a->own) {
        struct kb_arena_blk *b = a->own;
        a->own = b->next;
        free(b);
    }
    if (a->spilled && a->cap < KB_ARENA_MAX_BLOCK) {
        /* next time in one block: what this round used, with room */
        want += want / 4;
        if (want > KB_ARENA_MAX_BLOCK)
            want = KB_ARENA_MAX_BLOCK;
        unsigned char *nb = malloc(want);
        if (nb) {
            free(a->buf);
            a->buf = nb;
            a->cap = want;
        }
    }
    a->used = a->spilled = 0;
}

void kb_arena_free(kb_arena_t *a)
{
    while (a->own) {
        struct kb_arena_blk *b = a->own;
        a->own = b->next;
        free(b);
    }
    free(a->buf);
    kb_arena_init(a);
}
