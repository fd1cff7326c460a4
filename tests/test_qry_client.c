/* test_qry_client: the client side of the API (query/qry_client.c) against
 * a ROUTER socket the test plays the node with (real ZeroMQ on loopback):
 * every request carries protocol_version 1 and a fresh non-zero request_id,
 * call() returns the answer to its own request and skips stale ones, an
 * error to an unreadable request (request_id 0) ends the wait, a timeout
 * names the endpoint, and an undecodable answer is KB_EBADMSG. */
#include "kb_test.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kbsync.pb-c.h"
#include "qry_client.h"

#include <errno.h>
#include <zmq.h>

typedef struct {
    void *ctx, *router;
    char endpoint[64];
    qry_client_t *c;
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(f->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    assert_int_equal(
        zmq_getsockopt(f->router, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
    char err[256] = "";
    if (qry_client_open(f->endpoint, &f->c, err, sizeof err))
        fail_msg("qry_client_open: %s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    qry_client_close(&f->c);
    assert_null(f->c);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    free(f);
    return 0;
}

/* What the node side received: the routing id and the decoded Request. */
typedef struct {
    zmq_msg_t rid;
    Kbsync__Request *req;
} got_t;

static void node_recv(fx_t *f, got_t *g)
{
    zmq_pollitem_t it = {f->router, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    zmq_msg_init(&g->rid);
    assert_true(zmq_msg_recv(&g->rid, f->router, 0) >= 0);
    assert_true(zmq_msg_more(&g->rid)); /* one payload frame after the id */
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, f->router, 0) >= 0);
    assert_false(zmq_msg_more(&m));
    g->req = kbsync__request__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(g->req);
}

static void node_send_raw(fx_t *f, got_t *g, const void *data, size_t len)
{
    zmq_msg_t id;
    zmq_msg_init(&id);
    zmq_msg_copy(&id, &g->rid);
    assert_true(zmq_msg_send(&id, f->router, ZMQ_SNDMORE) >= 0);
    assert_int_equal(zmq_send(f->router, data, len, 0), (int)len);
}

/* Answers on g's connection with request_id rid: a status with version 42,
 * or an error with error_code when that is not 0. */
static void node_answer(fx_t *f, got_t *g, uint64_t rid, int error_code)
{
    Kbsync__Response resp = KBSYNC__RESPONSE__INIT;
    Kbsync__Error e = KBSYNC__ERROR__INIT;
    Kbsync__NodeState st = KBSYNC__NODE_STATE__INIT;
    resp.request_id = rid;
    if (error_code) {
        e.code = error_code;
        e.message = "refused by the test";
        resp.error = &e;
    } else {
        st.version = 42;
        resp.body_case = KBSYNC__RESPONSE__BODY_STATUS;
        resp.status = &st;
    }
    size_t len = kbsync__response__get_packed_size(&resp);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    kbsync__response__pack(&resp, buf);
    node_send_raw(f, g, buf, len);
    free(buf);
}

static void got_free(got_t *g)
{
    zmq_msg_close(&g->rid);
    kbsync__request__free_unpacked(g->req, NULL);
}

static void status_req(Kbsync__Request *req, Kbsync__StatusRequest *s)
{
    kbsync__request__init(req);
    kbsync__status_request__init(s);
    req->body_case = KBSYNC__REQUEST__BODY_STATUS;
    req->status = s;
}

/* The client sends a status request; the node side receives it into g.
 * Returns its request_id. */
static uint64_t send_one(fx_t *f, got_t *g)
{
    char err[256] = "";
    Kbsync__Request req;
    Kbsync__StatusRequest s;
    status_req(&req, &s);
    uint64_t rid = 0;
    if (qry_client_send(f->c, &req, &rid, err, sizeof err))
        fail_msg("qry_client_send: %s", err);
    node_recv(f, g);
    assert_int_equal(g->req->request_id, rid);
    return rid;
}

static void test_send_fills_version_and_fresh_ids(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        Kbsync__Request req;
        Kbsync__StatusRequest s;
        status_req(&req, &s);
        req.protocol_version = 77; /* overwritten */
        req.request_id = 0;
        assert_int_equal(qry_client_send(f->c, &req, &ids[i], err, sizeof err),
                         0);
        assert_int_equal(req.request_id, ids[i]);
        got_t g;
        node_recv(f, &g);
        assert_int_equal(g.req->protocol_version, KB_PROTOCOL_VERSION);
        assert_int_equal(g.req->request_id, ids[i]);
        assert_int_equal(g.req->body_case, KBSYNC__REQUEST__BODY_STATUS);
        got_free(&g);
    }
    /* Non-zero (0 means "could not be read"), and never reused. */
    assert_true(ids[0] != 0);
    assert_true(ids[1] > ids[0] && ids[2] > ids[1]);
}

static void test_call_matches_request_id(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    /* Queued at the client before it calls: the answer to an earlier
     * request, one with an id it never used, and the answer to the id its
     * call will take (ids go up by one). call() must return the third. */
    got_t g;
    uint64_t first = send_one(f, &g);
    node_answer(f, &g, first, 0);
    node_answer(f, &g, first + 1000, 0);
    node_answer(f, &g, first + 1, 0);
    got_free(&g);

    Kbsync__Request req2;
    Kbsync__StatusRequest s2;
    status_req(&req2, &s2);
    Kbsync__Response *resp = NULL;
    assert_int_equal(qry_client_call(f->c, &req2, 5000, &resp, err, sizeof err),
                     0);
    assert_non_null(resp);
    assert_int_equal(req2.request_id, first + 1);
    assert_int_equal(resp->request_id, first + 1);
    assert_int_equal(resp->body_case, KBSYNC__RESPONSE__BODY_STATUS);
    assert_int_equal(resp->status->version, 42);
    kbsync__response__free_unpacked(resp, NULL);
    /* Nothing else is left: the two stray answers were consumed. */
    assert_int_equal(qry_client_recv(f->c, 100, &resp, err, sizeof err),
                     KB_ETIMEOUT);
    node_recv(f, &g); /* req2 did go out */
    assert_int_equal(g.req->request_id, first + 1);
    got_free(&g);
}

static void test_call_returns_error_to_unreadable_request(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    got_t g;
    send_one(f, &g);
    /* The node could not read the next request: its error carries id 0,
     * which call() must take as its answer rather than wait forever. */
    node_answer(f, &g, 0, KB_EBADMSG);
    got_free(&g);
    Kbsync__Response *resp = NULL;
    Kbsync__Request req2;
    Kbsync__StatusRequest s2;
    status_req(&req2, &s2);
    assert_int_equal(qry_client_call(f->c, &req2, 5000, &resp, err, sizeof err),
                     0);
    assert_non_null(resp);
    assert_int_equal(resp->request_id, 0);
    assert_non_null(resp->error);
    assert_int_equal(resp->error->code, KB_EBADMSG);
    kbsync__response__free_unpacked(resp, NULL);
    got_t g2;
    node_recv(f, &g2);
    got_free(&g2);
}

static void test_timeout_names_endpoint(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    Kbsync__Request req;
    Kbsync__StatusRequest s;
    status_req(&req, &s);
    Kbsync__Response *resp = (Kbsync__Response *)&err; /* must be reset */
    uint64_t t0 = kb_mono_us();
    assert_int_equal(qry_client_call(f->c, &req, 200, &resp, err, sizeof err),
                     KB_ETIMEOUT);
    uint64_t took = kb_mono_us() - t0;
    assert_null(resp);
    assert_true(took >= 150000u && took < 3000000u);
    assert_non_null(strstr(err, f->endpoint));
    assert_non_null(strstr(err, "no answer from"));
    got_t g;
    node_recv(f, &g); /* the request itself went out */
    got_free(&g);
}

static void test_undecodable_answer(void **state)
{
    fx_t *f = *state;
    char err[256] = "";
    got_t g;
    send_one(f, &g);
    /* Field 1 as a length-delimited field running past the end. */
    static const uint8_t junk[] = {0x0a, 0x7f, 0x01, 0x02};
    node_send_raw(f, &g, junk, sizeof junk);
    got_free(&g);
    Kbsync__Response *resp = NULL;
    assert_int_equal(qry_client_recv(f->c, 5000, &resp, err, sizeof err),
                     KB_EBADMSG);
    assert_null(resp);
    assert_non_null(strstr(err, "4 bytes"));
    assert_non_null(strstr(err, f->endpoint));
}

static void test_open_bad_endpoint(void **state)
{
    (void)state;
    char err[256] = "";
    qry_client_t *c = (qry_client_t *)err;
    int rc = qry_client_open("nonsense://x", &c, err, sizeof err);
    assert_int_not_equal(rc, 0);
    assert_null(c);
    assert_non_null(strstr(err, "nonsense://x"));
    qry_client_close(&c); /* NULL is fine */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_send_fills_version_and_fresh_ids,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_matches_request_id, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_call_returns_error_to_unreadable_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_names_endpoint, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_undecodable_answer, setup,
                                        teardown),
        cmocka_unit_test(test_open_bad_endpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
