/* test_kb_wire: the ZeroMQ/protobuf boundary of common/include/kb_wire.h. In:
 * hand-packed Requests (valid, oversized, truncated, garbage, wrong
 * version) and real ROUTER/DEALER/REQ sockets on inproc endpoints. Out:
 * pass/fail on decode codes, the request_id recovered from bad bytes, and
 * on envelopes and replies making the round trip. Each test owns its own
 * ZMQ context. */
#include "kb_test.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define TIMEOUT_MS 5000

/* ----------------------------------------------------------- helpers */

/* Packs req into a malloc'd buffer; *len gets its size. */
static unsigned char *pack_request(const Kbsync__Request *req, size_t *len)
{
    *len = kbsync__request__get_packed_size(req);
    unsigned char *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(kbsync__request__pack(req, buf), *len);
    return buf;
}

/* A status request with the given version and id. */
static unsigned char *status_request(uint32_t version, uint64_t rid,
                                     size_t *len)
{
    Kbsync__StatusRequest st = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.protocol_version = version;
    r.request_id = rid;
    r.body_case = KBSYNC__REQUEST__BODY_STATUS;
    r.status = &st;
    return pack_request(&r, len);
}

/* An upsert request of one doc with a 300-byte text and 8 floats. */
static unsigned char *upsert_request(uint64_t rid, size_t *len)
{
    static float emb[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    char *text = kbt_repeat('t', 300);
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = "doc-1";
    d.text = text;
    d.n_embedding = 8;
    d.embedding = emb;
    Kbsync__Doc *dp = &d;
    Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
    up.n_docs = 1;
    up.docs = &dp;
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.protocol_version = KB_PROTOCOL_VERSION;
    r.request_id = rid;
    r.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    r.upsert = &up;
    unsigned char *buf = pack_request(&r, len);
    free(text);
    return buf;
}

/* Waits until sock has a message to read; fails the test otherwise. */
static void wait_readable(void *sock)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&it, 1, TIMEOUT_MS);
    if (rc != 1)
        fail_msg("no message within %d ms (poll returned %d)", TIMEOUT_MS, rc);
}

/* Receives one frame into a malloc'd buffer; returns its size, *more says
 * whether more frames follow. */
static size_t recv_frame(void *sock, unsigned char **data, int *more)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    int rc = zmq_msg_recv(&m, sock, 0);
    if (rc < 0) {
        int e = errno;
        zmq_msg_close(&m);
        fail_msg("zmq_msg_recv: %s", zmq_strerror(e));
    }
    size_t n = zmq_msg_size(&m);
    *data = malloc(n ? n : 1);
    assert_non_null(*data);
    memcpy(*data, zmq_msg_data(&m), n);
    *more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    return n;
}

/* Receives a one-frame Response on a DEALER/REQ socket and decodes it. */
static Kbsync__Response *recv_response(void *sock)
{
    wait_readable(sock);
    unsigned char *data;
    int more;
    size_t n = recv_frame(sock, &data, &more);
    assert_false(more);
    Kbsync__Response *r = kbsync__response__unpack(NULL, n, data);
    free(data);
    assert_non_null(r);
    return r;
}

typedef struct pair {
    void *ctx, *router, *client;
} pair_t;

/* A ROUTER bound on a fresh inproc endpoint and a client of `type`
 * connected to it, both through kb_wire_socket. */
static void pair_open(pair_t *p, int type, const char *name)
{
    char ep[128], err[256] = "";
    snprintf(ep, sizeof ep, "inproc://kb-wire-%s", name);
    p->ctx = zmq_ctx_new();
    assert_non_null(p->ctx);
    KBT_OK(
        kb_wire_socket(p->ctx, ZMQ_ROUTER, ep, 1, &p->router, err, sizeof err),
        err);
    KBT_OK(kb_wire_socket(p->ctx, type, ep, 0, &p->client, err, sizeof err),
           err);
    assert_non_null(p->router);
    assert_non_null(p->client);
    /* A reply the client drops (e.g. a REQ socket seeing a bad envelope)
     * must fail the test, not block it forever. */
    int ms = TIMEOUT_MS;
    zmq_setsockopt(p->client, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_setsockopt(p->router, ZMQ_RCVTIMEO, &ms, sizeof ms);
}

static void pair_close(pair_t *p)
{
    zmq_close(p->client);
    zmq_close(p->router);
    zmq_ctx_term(p->ctx);
}

static void send_bytes(void *sock, const void *data, size_t len, int flags)
{
    if (zmq_send(sock, data, len, flags) != (int)len)
        fail_msg("zmq_send of %zu bytes: %s", len, zmq_strerror(errno));
}

/* --------------------------------------------------------------- decode */

/* Packs an upsert of two docs (ids id0, id1, the second with text and
 * metadata) or, with del set, a delete of those ids; then every '#' in the
 * packed bytes becomes a NUL (protobuf-c packs C strings, which cannot hold
 * one). */
static unsigned char *strings_request(int del, const char *id0,
                                      const char *id1, const char *text,
                                      const char *meta, size_t *len)
{
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.protocol_version = KB_PROTOCOL_VERSION;
    r.request_id = 77;
    Kbsync__Doc d0 = KBSYNC__DOC__INIT, d1 = KBSYNC__DOC__INIT;
    Kbsync__Doc *dp[2] = {&d0, &d1};
    Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
    Kbsync__DeleteRequest dr = KBSYNC__DELETE_REQUEST__INIT;
    char *ids[2] = {(char *)id0, (char *)id1};
    if (del) {
        dr.n_ids = 2;
        dr.ids = ids;
        r.body_case = KBSYNC__REQUEST__BODY_DELETE;
        r.delete_ = &dr;
    } else {
        d0.id = (char *)id0;
        d0.text = "fine";
        d1.id = (char *)id1;
        d1.text = (char *)text;
        d1.metadata_json = (char *)meta;
        up.n_docs = 2;
        up.docs = dp;
        r.body_case = KBSYNC__REQUEST__BODY_UPSERT;
        r.upsert = &up;
    }
    unsigned char *buf = pack_request(&r, len);
    for (size_t i = 0; i < *len; i++)
        if (buf[i] == '#')
            buf[i] = 0;
    return buf;
}

/* Decodes buf and expects code with `want` in the message (code 0: OK). */
static void expect_decode(unsigned char *buf, size_t len, int code,
                          const char *want)
{
    Kbsync__Request *req = NULL;
    uint64_t rid = 0;
    char err[256] = "";
    int rc = kb_wire_decode_request(buf, len, 1 << 20, &req, &rid, err,
                                    sizeof err);
    if (rc != code)
        fail_msg("decode returned %d (%s), expected %d; %s", rc,
                 kb_strerror(rc), code, err);
    if (want && !strstr(err, want))
        fail_msg("error \"%s\" does not say \"%s\"", err, want);
    if (code) {
        assert_null(req);
        KBT_U64(rid, 77);
    } else {
        assert_non_null(req);
        kbsync__request__free_unpacked(req, NULL);
    }
    free(buf);
}

static void test_kb_wire_decode_checks_strings(void **state)
{
    (void)state;
    size_t len;
    /* NUL inside an id: protobuf-c would have cut "k#a" to "k" */
    unsigned char *b = strings_request(0, "ok", "k#a", "t", "{}", &len);
    expect_decode(b, len, KB_EBADID, "upsert.docs[1].id: a NUL byte at byte 1");
    b = strings_request(0, "ok", "k", "t\xff", "{}", &len);
    expect_decode(b, len, KB_EINVAL, "upsert.docs[1].text: invalid UTF-8 at "
                                     "byte 1");
    b = strings_request(0, "ok", "k", "t", "{\"a\":\"\xc0\xaf\"}", &len);
    expect_decode(b, len, KB_EINVAL, "upsert.docs[1].metadata_json: invalid "
                                     "UTF-8 at byte 6");
    b = strings_request(1, "fine", "nul#zzz", NULL, NULL, &len);
    expect_decode(b, len, KB_EBADID, "delete.ids[1]: a NUL byte at byte 3");
    /* surrogate half, code point above U+10FFFF, cut sequence */
    b = strings_request(0, "\xed\xa0\x80", "k", "t", "{}", &len);
    expect_decode(b, len, KB_EBADID, "upsert.docs[0].id: invalid UTF-8 at "
                                     "byte 0");
    b = strings_request(0, "ok", "k", "x\xf4\x90\x80\x80", "{}", &len);
    expect_decode(b, len, KB_EINVAL, "invalid UTF-8 at byte 1");
    b = strings_request(0, "ok", "k", "ab\xe2\x9c", "{}", &len);
    expect_decode(b, len, KB_EINVAL, "invalid UTF-8 at byte 2");
    /* valid multi-byte text of every length passes */
    b = strings_request(0, "caf\xc3\xa9", "\xe2\x9c\x93",
                        "\xf0\x9f\x98\x80 x", "{\"k\":\"\xc3\xa9\"}", &len);
    expect_decode(b, len, 0, NULL);
}

static void test_kb_utf8_check(void **state)
{
    (void)state;
    KBT_U64(kb_utf8_check("", 0), 0);
    KBT_U64(kb_utf8_check("plain", 5), 5);
    KBT_U64(kb_utf8_check("\xc3\xa9\xe2\x82\xac\xf0\x90\x8d\x88", 9), 9);
    KBT_U64(kb_utf8_check("a\x80", 2), 1);         /* lone continuation */
    KBT_U64(kb_utf8_check("ab\xe0\x80\x80", 5), 2); /* overlong 3-byte */
    KBT_U64(kb_utf8_check("\xf8\x88\x80\x80\x80", 5), 0); /* 5-byte form */
    KBT_U64(kb_utf8_check("x\xc3", 2), 1);          /* cut at the end */
    KBT_U64(kb_utf8_check("\xef\xbf\xbf", 3), 3);    /* U+FFFF is valid */
}

static void test_kb_wire_decode_valid(void **state)
{
    (void)state;
    size_t len;
    unsigned char *buf = status_request(KB_PROTOCOL_VERSION, 4711, &len);
    Kbsync__Request *req = (void *)1;
    uint64_t rid = 0;
    char err[256] = "";
    KBT_OK(kb_wire_decode_request(buf, len, len, &req, &rid, err, sizeof err),
           err);
    assert_non_null(req);
    KBT_U64(rid, 4711);
    KBT_U64(req->request_id, 4711);
    assert_int_equal(req->body_case, KBSYNC__REQUEST__BODY_STATUS);
    kbsync__request__free_unpacked(req, NULL);
    free(buf);
}

static void test_kb_wire_decode_rejects_oversized(void **state)
{
    (void)state;
    size_t len;
    unsigned char *buf = upsert_request(9001, &len);
    Kbsync__Request *req = (void *)1;
    uint64_t rid = 0;
    char err[256] = "";
    /* One byte above the limit is refused; exactly the limit is not. */
    KBT_RC(
        kb_wire_decode_request(buf, len, len - 1, &req, &rid, err, sizeof err),
        KB_ETOOBIG, err);
    assert_null(req);
    KBT_U64(rid, 9001); /* read off the first bytes */
    char want[64];
    snprintf(want, sizeof want, "%zu bytes", len);
    KBT_CONTAINS(err, want);
    snprintf(want, sizeof want, "%zu bytes", len - 1);
    KBT_CONTAINS(err, want);

    KBT_OK(kb_wire_decode_request(buf, len, len, &req, &rid, err, sizeof err),
           err);
    assert_non_null(req);
    assert_int_equal(req->body_case, KBSYNC__REQUEST__BODY_UPSERT);
    assert_int_equal(req->upsert->n_docs, 1);
    assert_string_equal(req->upsert->docs[0]->id, "doc-1");
    kbsync__request__free_unpacked(req, NULL);
    free(buf);
}

static void test_kb_wire_decode_rejects_truncated(void **state)
{
    (void)state;
    size_t len;
    unsigned char *buf = upsert_request(31337, &len);
    char err[256];
    /* Every cut inside the body (after the header fields) must fail. */
    for (size_t cut = 1; cut <= 40; cut += 13) {
        Kbsync__Request *req = (void *)1;
        uint64_t rid = 0;
        err[0] = 0;
        KBT_RC(kb_wire_decode_request(buf, len - cut, len, &req, &rid, err,
                                      sizeof err),
               KB_EBADMSG, err);
        assert_null(req);
        KBT_U64(rid, 31337);
        KBT_CONTAINS(err, "cannot be decoded");
    }
    free(buf);
}

static void test_kb_wire_decode_rejects_garbage(void **state)
{
    (void)state;
    static const unsigned char junk[] = {0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0x07, 0x00, 0x13};
    Kbsync__Request *req = (void *)1;
    uint64_t rid = 77;
    char err[256] = "";
    KBT_RC(kb_wire_decode_request(junk, sizeof junk, 1024, &req, &rid, err,
                                  sizeof err),
           KB_EBADMSG, err);
    assert_null(req);
    KBT_U64(rid, 0); /* unreadable: 0, never a stale value */
}

static void test_kb_wire_decode_rejects_empty(void **state)
{
    (void)state;
    Kbsync__Request *req = (void *)1;
    uint64_t rid = 77;
    char err[256] = "";
    KBT_RC(kb_wire_decode_request("", 0, 1024, &req, &rid, err, sizeof err),
           KB_EBADMSG, err);
    assert_null(req);
    KBT_U64(rid, 0);
    KBT_CONTAINS(err, "empty");
}

static void test_kb_wire_decode_rejects_missing_body(void **state)
{
    (void)state;
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.protocol_version = KB_PROTOCOL_VERSION;
    r.request_id = 555;
    size_t len;
    unsigned char *buf = pack_request(&r, &len);
    Kbsync__Request *req = (void *)1;
    uint64_t rid = 0;
    char err[256] = "";
    KBT_RC(kb_wire_decode_request(buf, len, 1024, &req, &rid, err, sizeof err),
           KB_EBADMSG, err);
    assert_null(req);
    KBT_U64(rid, 555);
    KBT_CONTAINS(err, "no body");
    free(buf);
}

static void test_kb_wire_decode_rejects_protocol_version(void **state)
{
    (void)state;
    static const uint32_t bad[] = {0, 2, 99};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len;
        unsigned char *buf = status_request(bad[i], 1000 + i, &len);
        Kbsync__Request *req = (void *)1;
        uint64_t rid = 0;
        char err[256] = "", want[64];
        KBT_RC(
            kb_wire_decode_request(buf, len, 1024, &req, &rid, err, sizeof err),
            KB_EPROTO, err);
        assert_null(req);
        KBT_U64(rid, 1000 + i);
        /* The message names both versions. */
        snprintf(want, sizeof want, "protocol_version %u", bad[i]);
        KBT_CONTAINS(err, want);
        snprintf(want, sizeof want, "version %u", KB_PROTOCOL_VERSION);
        KBT_CONTAINS(err, want);
        free(buf);
    }
}

/* ------------------------------------------------------------ sockets */

static void test_kb_wire_recv_nothing_is_eagain(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p, ZMQ_DEALER, "eagain");
    kb_peer_t peer;
    kb_buf_t b;
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), -EAGAIN);
    assert_null(b.priv);
    kb_buf_free(&b); /* a no-op on an empty buffer */
    kb_buf_free(NULL);
    pair_close(&p);
}

static void test_kb_wire_dealer_roundtrip(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p, ZMQ_DEALER, "dealer");

    /* DEALER -> ROUTER: one frame of payload, one frame of identity. */
    Kbsync__StatusRequest st = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request r = KBSYNC__REQUEST__INIT;
    r.protocol_version = KB_PROTOCOL_VERSION;
    r.request_id = 123456789012345ull;
    r.body_case = KBSYNC__REQUEST__BODY_STATUS;
    r.status = &st;
    assert_int_equal(kb_wire_send_msg(p.client, &r, 0), 0);

    wait_readable(p.router);
    kb_peer_t peer;
    kb_buf_t b;
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), 0);
    assert_int_equal(peer.nframes, 1);
    assert_true(peer.len[0] > 0);
    Kbsync__Request *req;
    uint64_t rid;
    char err[256] = "";
    KBT_OK(kb_wire_decode_request(b.data, b.len, 1 << 20, &req, &rid, err,
                                  sizeof err),
           err);
    KBT_U64(rid, 123456789012345ull);
    assert_int_equal(req->body_case, KBSYNC__REQUEST__BODY_STATUS);
    kbsync__request__free_unpacked(req, NULL);
    kb_buf_free(&b);
    assert_null(b.priv);

    /* ROUTER -> DEALER: the reply reaches the sender, version filled in. */
    Kbsync__NodeState ns = KBSYNC__NODE_STATE__INIT;
    ns.role = "leader";
    ns.node_id = "n1";
    ns.version = 42;
    ns.dim = 8;
    Kbsync__Response resp = KBSYNC__RESPONSE__INIT;
    resp.request_id = rid;
    resp.body_case = KBSYNC__RESPONSE__BODY_STATUS;
    resp.status = &ns;
    assert_int_equal(kb_wire_send_response(p.router, &peer, &resp), 0);
    assert_int_equal(resp.protocol_version, KB_PROTOCOL_VERSION);

    Kbsync__Response *got = recv_response(p.client);
    assert_int_equal(got->protocol_version, KB_PROTOCOL_VERSION);
    KBT_U64(got->request_id, 123456789012345ull);
    assert_null(got->error);
    assert_int_equal(got->body_case, KBSYNC__RESPONSE__BODY_STATUS);
    KBT_U64(got->status->version, 42);
    assert_string_equal(got->status->node_id, "n1");
    assert_int_equal(got->status->dim, 8);
    kbsync__response__free_unpacked(got, NULL);

    /* An error reply: code, text and request id. */
    assert_int_equal(kb_wire_send_error(p.router, &peer, 99, KB_EDIM,
                                        "embedding has 3 values"),
                     0);
    got = recv_response(p.client);
    KBT_U64(got->request_id, 99);
    assert_non_null(got->error);
    assert_int_equal(got->error->code, KB_EDIM);
    assert_string_equal(got->error->message, "embedding has 3 values");
    assert_int_equal(got->body_case, KBSYNC__RESPONSE__BODY__NOT_SET);
    kbsync__response__free_unpacked(got, NULL);
    pair_close(&p);
}

static void test_kb_wire_req_envelope_roundtrip(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p, ZMQ_REQ, "req");
    size_t len;
    unsigned char *buf = status_request(KB_PROTOCOL_VERSION, 8080, &len);
    send_bytes(p.client, buf, len, 0);
    free(buf);

    wait_readable(p.router);
    kb_peer_t peer;
    kb_buf_t b;
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), 0);
    /* REQ adds an empty delimiter behind the ROUTER's identity frame. */
    assert_int_equal(peer.nframes, 2);
    assert_true(peer.len[0] > 0);
    assert_int_equal(peer.len[1], 0);
    Kbsync__Request *req;
    uint64_t rid;
    char err[256] = "";
    KBT_OK(kb_wire_decode_request(b.data, b.len, 1 << 20, &req, &rid, err,
                                  sizeof err),
           err);
    KBT_U64(rid, 8080);
    kbsync__request__free_unpacked(req, NULL);
    kb_buf_free(&b);

    Kbsync__WriteResult w = KBSYNC__WRITE_RESULT__INIT;
    w.version = 7;
    w.written = 3;
    Kbsync__Response resp = KBSYNC__RESPONSE__INIT;
    resp.request_id = rid;
    resp.body_case = KBSYNC__RESPONSE__BODY_WRITE;
    resp.write = &w;
    assert_int_equal(kb_wire_send_response(p.router, &peer, &resp), 0);

    /* The REQ socket only delivers the reply if the envelope was echoed
     * whole (identity + delimiter). */
    Kbsync__Response *got = recv_response(p.client);
    KBT_U64(got->request_id, 8080);
    assert_int_equal(got->body_case, KBSYNC__RESPONSE__BODY_WRITE);
    KBT_U64(got->write->version, 7);
    assert_int_equal(got->write->written, 3);
    kbsync__response__free_unpacked(got, NULL);
    pair_close(&p);
}

static void test_kb_wire_envelope_limits(void **state)
{
    (void)state;
    pair_t p;
    pair_open(&p, ZMQ_DEALER, "limits");
    size_t len;
    unsigned char *buf = status_request(KB_PROTOCOL_VERSION, 5, &len);
    kb_peer_t peer;
    kb_buf_t b;

    /* identity + 3 frames = KB_MAX_ENVELOPE: accepted and echoed. */
    send_bytes(p.client, "a", 1, ZMQ_SNDMORE);
    send_bytes(p.client, "bb", 2, ZMQ_SNDMORE);
    send_bytes(p.client, "", 0, ZMQ_SNDMORE);
    send_bytes(p.client, buf, len, 0);
    wait_readable(p.router);
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), 0);
    assert_int_equal(peer.nframes, 4);
    assert_int_equal(peer.len[1], 1);
    assert_memory_equal(peer.frame[2], "bb", 2);
    assert_int_equal(peer.len[3], 0);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, buf, len);
    kb_buf_free(&b);
    assert_int_equal(kb_wire_send_error(p.router, &peer, 5, KB_EINVAL, "x"), 0);
    wait_readable(p.client);
    static const char *want[] = {"a", "bb", ""};
    for (int i = 0; i < 3; i++) {
        unsigned char *f;
        int more;
        size_t n = recv_frame(p.client, &f, &more);
        assert_true(more);
        assert_int_equal(n, strlen(want[i]));
        assert_memory_equal(f, want[i], n);
        free(f);
    }
    Kbsync__Response *got = recv_response(p.client);
    assert_int_equal(got->error->code, KB_EINVAL);
    kbsync__response__free_unpacked(got, NULL);

    /* identity + 4 frames: one too many; consumed and refused. */
    for (int i = 0; i < 4; i++)
        send_bytes(p.client, "x", 1, ZMQ_SNDMORE);
    send_bytes(p.client, buf, len, 0);
    wait_readable(p.router);
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), KB_EBADMSG);
    assert_null(b.priv);

    /* An envelope frame above 256 bytes: refused, consumed. */
    char big[300];
    memset(big, 'y', sizeof big);
    send_bytes(p.client, big, sizeof big, ZMQ_SNDMORE);
    send_bytes(p.client, buf, len, 0);
    wait_readable(p.router);
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), KB_EBADMSG);

    /* Both bad messages were drained whole: the socket is clean and the
     * next good message comes through intact. */
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), -EAGAIN);
    send_bytes(p.client, buf, len, 0);
    wait_readable(p.router);
    assert_int_equal(kb_wire_recv(p.router, &peer, &b), 0);
    assert_int_equal(peer.nframes, 1);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, buf, len);
    kb_buf_free(&b);
    free(buf);
    pair_close(&p);
}

/* kb_wire_peek_bytes finds a document's metadata inside a packed
 * LogRecord (as `list` reads it) without decoding, says when a field is
 * absent, and refuses every truncation of the record. */
static void test_kb_wire_peek_bytes(void **state)
{
    (void)state;
    float emb[3] = {1, 2, 3};
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = "doc-1";
    d.text = "some text";
    d.n_embedding = 3;
    d.embedding = emb;
    d.metadata_json = "{\"sha\":\"abc\"}";
    Kbsync__LogRecord r = KBSYNC__LOG_RECORD__INIT;
    r.lsn = 300;
    r.commit_time_us = 1700000000000000ull;
    r.op = KBSYNC__LOG_OP__LOG_OP_UPSERT;
    r.doc = &d;
    uint8_t buf[256];
    size_t n = kbsync__log_record__get_packed_size(&r);
    assert_true(n <= sizeof buf);
    kbsync__log_record__pack(&r, buf);
    const void *doc = NULL, *m = NULL;
    size_t doc_len = 0, m_len = 0;
    assert_int_equal(kb_wire_peek_bytes(buf, n, 4, &doc, &doc_len), 0);
    assert_int_equal(kb_wire_peek_bytes(doc, doc_len, 4, &m, &m_len), 0);
    assert_int_equal(m_len, strlen(d.metadata_json));
    assert_memory_equal(m, d.metadata_json, m_len);
    assert_int_equal(kb_wire_peek_bytes(doc, doc_len, 1, &m, &m_len), 0);
    assert_int_equal(m_len, 5);
    assert_memory_equal(m, "doc-1", 5);
    /* the delete's id (field 5) is not in an upsert; a varint field is not
     * length-delimited */
    assert_int_equal(kb_wire_peek_bytes(buf, n, 5, &m, &m_len), 1);
    assert_int_equal(kb_wire_peek_bytes(buf, n, 1, &m, &m_len), 1);
    /* A cut never finds the document (it is the last field): a cut at a
     * field boundary before it leaves a shorter well-formed record without
     * it; every cut inside it is malformed. */
    size_t doc_at = (size_t)((const uint8_t *)doc - buf); /* its bytes */
    for (size_t cut = 1; cut < n; cut++) {
        int rc = kb_wire_peek_bytes(buf, cut, 4, &m, &m_len);
        if (rc == 0 || (cut >= doc_at && rc != -1))
            fail_msg("a record cut at %zu of %zu bytes gave %d", cut, n, rc);
    }
    assert_int_equal(kb_wire_peek_bytes(buf, 0, 4, &doc, &doc_len), 1);
    uint8_t bad[] = {0x22, 0x05, 'a'}; /* field 4, 5 bytes, 1 there */
    assert_int_equal(kb_wire_peek_bytes(bad, sizeof bad, 4, &m, &m_len), -1);
    uint8_t group[] = {0x23, 0x24}; /* a group: never used */
    assert_int_equal(kb_wire_peek_bytes(group, 2, 4, &m, &m_len), -1);
}

static void test_kb_wire_socket_bad_endpoint(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    void *s = (void *)1;
    char err[256] = "";
    KBT_RC(kb_wire_socket(ctx, ZMQ_ROUTER, "nonsense://nowhere", 1, &s, err,
                          sizeof err),
           KB_ENET, err);
    assert_null(s);
    KBT_CONTAINS(err, "nonsense://nowhere");

    /* Two binds on one inproc name: the second is refused. */
    void *a;
    KBT_OK(kb_wire_socket(ctx, ZMQ_ROUTER, "inproc://kb-wire-dup", 1, &a, err,
                          sizeof err),
           err);
    KBT_RC(kb_wire_socket(ctx, ZMQ_ROUTER, "inproc://kb-wire-dup", 1, &s, err,
                          sizeof err),
           KB_ENET, err);
    assert_null(s);
    KBT_CONTAINS(err, "inproc://kb-wire-dup");
    zmq_close(a);
    zmq_ctx_term(ctx);
}

/* kb_arena: records decoded into it read back whole; allocations are
 * aligned and never overlap; what one round spilled into blocks of its own
 * is one block the next round (no spill, every pointer inside it); a
 * request above KB_ARENA_MAX_BLOCK spills and does not grow the block past
 * it; a truncated record is refused; free_unpacked on an arena message
 * does nothing (ASan sees the blocks freed by reset and free). */
static void test_kb_wire_arena(void **state)
{
    (void)state;
    enum { ROUND = 200, DIM = 96 };
    float emb[DIM];
    for (int i = 0; i < DIM; i++)
        emb[i] = (float)i * 0.5f;
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = "doc-arena";
    d.text = "text of the document";
    d.n_embedding = DIM;
    d.embedding = emb;
    d.metadata_json = "{\"k\":1}";
    Kbsync__LogRecord r = KBSYNC__LOG_RECORD__INIT;
    r.lsn = 77;
    r.op = KBSYNC__LOG_OP__LOG_OP_UPSERT;
    r.doc = &d;
    size_t n = kbsync__log_record__get_packed_size(&r);
    uint8_t *buf = malloc(n);
    assert_non_null(buf);
    kbsync__log_record__pack(&r, buf);

    kb_arena_t a;
    kb_arena_init(&a);
    Kbsync__LogRecord *got[ROUND];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < ROUND; i++) {
            got[i] = kbsync__log_record__unpack(&a.pc, n, buf);
            assert_non_null(got[i]);
            assert_int_equal(got[i]->lsn, 77);
            assert_string_equal(got[i]->doc->id, "doc-arena");
            assert_int_equal(got[i]->doc->n_embedding, DIM);
            assert_memory_equal(got[i]->doc->embedding, emb, sizeof emb);
            assert_int_equal((uintptr_t)got[i]->doc->embedding %
                                 _Alignof(max_align_t),
                             0);
        }
        /* nothing written since was overwritten by a later decode */
        for (int i = 0; i < ROUND; i++) {
            assert_string_equal(got[i]->doc->text, "text of the document");
            assert_memory_equal(got[i]->doc->embedding, emb, sizeof emb);
            if (i)
                assert_ptr_not_equal(got[i]->doc->embedding,
                                     got[i - 1]->doc->embedding);
        }
        if (round == 0) {
            assert_true(a.spilled > 0); /* no block yet */
        } else {
            /* one block, sized by the round before: every decode in it */
            assert_int_equal(a.spilled, 0);
            assert_null(a.own);
            for (int i = 0; i < ROUND; i++)
                assert_true((unsigned char *)got[i] >= a.buf &&
                            (unsigned char *)got[i] < a.buf + a.cap);
        }
        kbsync__log_record__free_unpacked(got[0], &a.pc); /* a no-op */
        size_t used = a.used + a.spilled;
        kb_arena_reset(&a);
        assert_int_equal(a.used, 0);
        assert_true(a.cap >= used);
    }
    /* truncated: refused, and the arena still works */
    assert_null(kbsync__log_record__unpack(&a.pc, n - 3, buf));
    assert_non_null(kbsync__log_record__unpack(&a.pc, n, buf));
    kb_arena_reset(&a);
    /* above the largest block: spilled, and the block stays at most that */
    void *big = a.pc.alloc(a.pc.allocator_data, KB_ARENA_MAX_BLOCK + 1);
    assert_non_null(big);
    memset(big, 1, KB_ARENA_MAX_BLOCK + 1);
    assert_true(a.spilled > KB_ARENA_MAX_BLOCK);
    kb_arena_reset(&a);
    assert_true(a.cap <= KB_ARENA_MAX_BLOCK);
    assert_null(a.own);
    /* an impossible size fails without touching anything */
    assert_null(a.pc.alloc(a.pc.allocator_data, SIZE_MAX - 8));
    kb_arena_free(&a);
    assert_null(a.buf);
    assert_int_equal(a.cap, 0);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kb_wire_decode_valid),
        cmocka_unit_test(test_kb_wire_decode_checks_strings),
        cmocka_unit_test(test_kb_utf8_check),
        cmocka_unit_test(test_kb_wire_decode_rejects_oversized),
        cmocka_unit_test(test_kb_wire_decode_rejects_truncated),
        cmocka_unit_test(test_kb_wire_decode_rejects_garbage),
        cmocka_unit_test(test_kb_wire_decode_rejects_empty),
        cmocka_unit_test(test_kb_wire_decode_rejects_missing_body),
        cmocka_unit_test(test_kb_wire_decode_rejects_protocol_version),
        cmocka_unit_test(test_kb_wire_recv_nothing_is_eagain),
        cmocka_unit_test(test_kb_wire_dealer_roundtrip),
        cmocka_unit_test(test_kb_wire_req_envelope_roundtrip),
        cmocka_unit_test(test_kb_wire_envelope_limits),
        cmocka_unit_test(test_kb_wire_socket_bad_endpoint),
        cmocka_unit_test(test_kb_wire_peek_bytes),
        cmocka_unit_test(test_kb_wire_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
