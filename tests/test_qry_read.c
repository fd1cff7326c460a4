/* test_qry_read: the freshness waits of query/qry_read.c, driven through
 * its interface with a real ZeroMQ ROUTER (inproc) whose refusals a DEALER
 * reads back: the read level a query asks for, which queries run at once,
 * which a leader refuses at once, how long a replica parks one (wait_ms 0
 * is 1000 ms, above 60,000 is 60,000, seen through qry_read_next_ms), that
 * a parked query runs when the node reaches its version, that a malformed
 * query is refused for itself before it would wait, and that shutting down
 * refuses what is parked. */
#include "kb_test.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"
#include "kbsync.pb-c.h"
#include "qry_read.h"

#include <zmq.h>

typedef struct {
    void *ctx, *router, *dealer;
    kb_peer_t peer; /* the DEALER's envelope, as the ROUTER saw it */
    qry_read_t *r;
    qry_read_node_t node;
    uint64_t ran[8]; /* request ids run through node.run */
    size_t nran;
    int checks;      /* calls of node.check */
    int check_rc;    /* what node.check returns */
} fx_t;

static void fx_run(void *ctx, const kb_peer_t *peer, Kbsync__Request *req)
{
    fx_t *f = ctx;
    (void)peer;
    assert_true(f->nran < 8);
    f->ran[f->nran++] = req->request_id;
    kbsync__request__free_unpacked(req, NULL);
}

static void fx_state(void *ctx, Kbsync__NodeState *s)
{
    fx_t *f = ctx;
    kbsync__node_state__init(s);
    s->node_id = "r9";
    s->version = f->node.version;
    s->leader_version = 50;
}

static int fx_check(void *ctx, const Kbsync__QueryRequest *q, char *err,
                    size_t errlen)
{
    fx_t *f = ctx;
    (void)q;
    f->checks++;
    return f->check_rc ? kb_seterr(err, errlen, f->check_rc, "bad query")
                       : 0;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    f->dealer = zmq_socket(f->ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(f->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->dealer, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_bind(f->router, "inproc://qry-read"), 0);
    assert_int_equal(zmq_connect(f->dealer, "inproc://qry-read"), 0);
    /* Learn the DEALER's envelope: one message through the ROUTER. */
    assert_int_equal(zmq_send(f->dealer, "x", 1, 0), 1);
    zmq_pollitem_t it = {f->router, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 5000), 1);
    kb_buf_t b;
    assert_int_equal(kb_wire_recv(f->router, &f->peer, &b), 0);
    kb_buf_free(&b);
    assert_int_equal(qry_read_new(&f->r), 0);
    f->node = (qry_read_node_t){.ctx = f,
                                .has_kb = 1,
                                .leader = 0,
                                .version = 10,
                                .run = fx_run,
                                .state = fx_state,
                                .check = fx_check};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    qry_read_free(&f->r, NULL);
    zmq_close(f->dealer);
    zmq_close(f->router);
    zmq_ctx_term(f->ctx);
    free(f);
    return 0;
}

/* A query request (the module takes ownership: heap-allocated as the
 * decoder would). */
static Kbsync__Request *mkreq(uint64_t rid, uint64_t min_version,
                              uint32_t wait_ms, Kbsync__ReadLevel level)
{
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = 5;
    q.min_version = min_version;
    q.wait_ms = wait_ms;
    q.consistency = level;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.protocol_version = KB_PROTOCOL_VERSION;
    req.request_id = rid;
    req.body_case = KBSYNC__REQUEST__BODY_QUERY;
    req.query = &q;
    size_t len = kbsync__request__get_packed_size(&req);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    kbsync__request__pack(&req, buf);
    Kbsync__Request *out = kbsync__request__unpack(NULL, len, buf);
    free(buf);
    assert_non_null(out);
    return out;
}

/* The next answer the DEALER got (NULL: none within ms). */
static Kbsync__Response *answer(fx_t *f, int ms)
{
    zmq_pollitem_t it = {f->dealer, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) != 1)
        return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, f->dealer, 0) >= 0);
    Kbsync__Response *r =
        kbsync__response__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(r);
    return r;
}

static void expect_refusal(fx_t *f, uint64_t rid, int code, const char *needle)
{
    Kbsync__Response *r = answer(f, 2000);
    assert_non_null(r);
    assert_int_equal(r->request_id, rid);
    assert_non_null(r->error);
    if (r->error->code != code || (needle && !strstr(r->error->message, needle)))
        fail_msg("wanted %d with \"%s\", got %d: %s", code, needle ? needle : "",
                 r->error->code, r->error->message);
    kbsync__response__free_unpacked(r, NULL);
}

/* Waiting reads are bounded in number (QRY_PARKED_MAX) and in bytes
 * (QRY_PARKED_MAX_BYTES): past either, KB_EUNAVAIL at once, nothing
 * parked; a read that left makes room again. */
static void test_parked_reads_are_bounded(void **state)
{
    fx_t *f = *state;
    for (uint64_t i = 0; i < QRY_PARKED_MAX; i++)
        qry_read_admit(f->r, f->router, &f->node, &f->peer,
                       mkreq(1000 + i, 11, 60000,
                             KBSYNC__READ_LEVEL__READ_DEFAULT));
    assert_null(answer(f, 50)); /* all parked */
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(99, 11, 60000, KBSYNC__READ_LEVEL__READ_DEFAULT));
    expect_refusal(f, 99, KB_EUNAVAIL, "too many reads waiting");
    qry_read_free(&f->r, NULL);
    assert_int_equal(qry_read_new(&f->r), 0);

    /* 12 MiB requests: 21 fit in 256 MiB, the 22nd does not */
    size_t tl = 12u << 20;
    char *text = malloc(tl + 1);
    assert_non_null(text);
    memset(text, 'a', tl);
    text[tl] = '\0';
    for (uint64_t i = 0; i < 22; i++) {
        Kbsync__Request *q =
            mkreq(2000 + i, 11, 60000, KBSYNC__READ_LEVEL__READ_DEFAULT);
        q->query->text = strdup(text);
        assert_non_null(q->query->text);
        qry_read_admit(f->r, f->router, &f->node, &f->peer, q);
    }
    expect_refusal(f, 2021, KB_EUNAVAIL, "too many reads waiting");
    assert_null(answer(f, 50));
    qry_read_free(&f->r, NULL);
    assert_int_equal(qry_read_new(&f->r), 0);
    free(text);
}

static void test_level_derived_from_fields(void **state)
{
    (void)state;
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    assert_int_equal(qry_read_level(&q), KBSYNC__READ_LEVEL__READ_EVENTUAL);
    q.max_lag_ms = 5;
    assert_int_equal(qry_read_level(&q), KBSYNC__READ_LEVEL__READ_BOUNDED);
    q.min_version = 3; /* both: session (max_lag_ms is still enforced) */
    assert_int_equal(qry_read_level(&q), KBSYNC__READ_LEVEL__READ_SESSION);
    q.consistency = KBSYNC__READ_LEVEL__READ_STRONG;
    assert_int_equal(qry_read_level(&q), KBSYNC__READ_LEVEL__READ_STRONG);
}

static void test_reached_version_runs_at_once(void **state)
{
    fx_t *f = *state;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(1, 0, 0, KBSYNC__READ_LEVEL__READ_DEFAULT));
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(2, 10, 0, KBSYNC__READ_LEVEL__READ_DEFAULT));
    assert_int_equal(f->nran, 2);
    assert_int_equal(f->ran[0], 1);
    assert_int_equal(f->ran[1], 2);
    assert_int_equal(f->checks, 0); /* the readers check what runs */
    assert_null(answer(f, 50));
}

static void test_leader_refuses_unknown_version_at_once(void **state)
{
    fx_t *f = *state;
    f->node.leader = 1;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(3, 11, 0, KBSYNC__READ_LEVEL__READ_DEFAULT));
    expect_refusal(f, 3, KB_ESTALE, "above the leader's version 10");
    assert_int_equal(f->nran, 0);
    assert_int_equal(qry_read_next_ms(f->r, 99999), 99999); /* not parked */
}

static void test_wait_ms_default_and_cap(void **state)
{
    fx_t *f = *state;
    /* wait_ms 0: the default, 1000 ms */
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(4, 11, 0, KBSYNC__READ_LEVEL__READ_DEFAULT));
    int ms = qry_read_next_ms(f->r, 999999);
    assert_true(ms > 900 && ms <= 1000);
    qry_read_free(&f->r, f->router);
    expect_refusal(f, 4, KB_EUNAVAIL, "shutting down");
    /* above 60,000: 60,000 */
    assert_int_equal(qry_read_new(&f->r), 0);
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(5, 11, 4000000000u, KBSYNC__READ_LEVEL__READ_DEFAULT));
    ms = qry_read_next_ms(f->r, 999999);
    assert_true(ms > 59000 && ms <= 60000);
    /* 1 ms: refused after its wait, naming the wait */
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(6, 11, 1, KBSYNC__READ_LEVEL__READ_DEFAULT));
    kbt_sleep_ms(20);
    qry_read_release(f->r, f->router, &f->node);
    expect_refusal(f, 6, KB_ESTALE, "after waiting 1 ms");
    assert_int_equal(f->nran, 0);
}

static void test_parked_query_runs_when_version_arrives(void **state)
{
    fx_t *f = *state;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(7, 12, 5000, KBSYNC__READ_LEVEL__READ_SESSION));
    assert_int_equal(f->checks, 1); /* checked before it waits */
    qry_read_release(f->r, f->router, &f->node);
    assert_int_equal(f->nran, 0);
    f->node.version = 12;
    qry_read_release(f->r, f->router, &f->node);
    assert_int_equal(f->nran, 1);
    assert_int_equal(f->ran[0], 7);
    assert_null(answer(f, 50));
}

static void test_malformed_query_refused_before_waiting(void **state)
{
    fx_t *f = *state;
    f->check_rc = KB_EDIM;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(8, 12, 5000, KBSYNC__READ_LEVEL__READ_DEFAULT));
    expect_refusal(f, 8, KB_EDIM, "bad query");
    assert_int_equal(qry_read_next_ms(f->r, 99999), 99999);
    /* The same on a leader, instead of KB_ESTALE for the version. */
    f->node.leader = 1;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(9, 12, 0, KBSYNC__READ_LEVEL__READ_DEFAULT));
    expect_refusal(f, 9, KB_EDIM, "bad query");
    /* Without a knowledge base (a replica before its first contact) the
     * check runs too (it checks what needs none), and a fine query waits. */
    f->node.leader = 0;
    f->node.has_kb = 0;
    int before = f->checks;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(10, 12, 5000, KBSYNC__READ_LEVEL__READ_DEFAULT));
    expect_refusal(f, 10, KB_EDIM, "bad query");
    f->check_rc = 0;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(14, 12, 5000, KBSYNC__READ_LEVEL__READ_DEFAULT));
    assert_int_equal(f->checks, before + 2);
    assert_true(qry_read_next_ms(f->r, 99999) < 99999);
}

static void test_contradicting_levels_refused(void **state)
{
    fx_t *f = *state;
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(11, 3, 0, KBSYNC__READ_LEVEL__READ_EVENTUAL));
    expect_refusal(f, 11, KB_EINVAL, "eventual with min_version");
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(12, 0, 0, KBSYNC__READ_LEVEL__READ_SESSION));
    expect_refusal(f, 12, KB_EINVAL, "session needs min_version");
    qry_read_admit(f->r, f->router, &f->node, &f->peer,
                   mkreq(13, 0, 0, (Kbsync__ReadLevel)9));
    expect_refusal(f, 13, KB_EINVAL, "unknown consistency level 9");
    assert_int_equal(f->nran, 0);
}

int main(void)
{
    kb_log_setup(KB_LOG_ERROR, "test_qry_read");
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_level_derived_from_fields),
        T(test_parked_reads_are_bounded),
        T(test_reached_version_runs_at_once),
        T(test_leader_refuses_unknown_version_at_once),
        T(test_wait_ms_default_and_cap),
        T(test_parked_query_runs_when_version_arrives),
        T(test_malformed_query_refused_before_waiting),
        T(test_contradicting_levels_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
