/* test_qry_pool: the reader threads of query/include/qry_pool.h on a real knowledge
 * base (LMDB + FAISS in a temp dir) and real ZeroMQ inproc sockets: a
 * ROUTER standing in for the node's client socket, a DEALER client, and the
 * PULL socket the readers answer on. Out: pass/fail on answers (hits equal
 * to idx_search's, routed to the right client), refusals (both vector and
 * text, no knowledge base yet, max_lag_ms), batching of waiting queries,
 * and queries still queued at shutdown being refused. */
#include "kb_test.h"

#include "idx.h"
#include "kb_err.h"
#include "kb_util.h"
#include "qry_pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <zmq.h>

#define DIM 16

typedef struct fx {
    char tmp[256], dir[300];
    idx_kb_t *ix;
    atomic_int no_kb;          /* acquire() answers NULL */
    _Atomic uint64_t lag_ms;   /* state() reports this lag */
    void *ctx, *router, *answers, *client;
    qry_pool_t *pool;
} fx_t;

static idx_kb_t *src_acquire(void *ctx)
{
    fx_t *f = ctx;
    return atomic_load(&f->no_kb) ? NULL : f->ix;
}

static void src_release(void *ctx)
{
    (void)ctx;
}

static void src_state(void *ctx, idx_kb_t *ix, const idx_view_t *v,
                      Kbsync__NodeState *s)
{
    fx_t *f = ctx;
    kbsync__node_state__init(s);
    const Kbsync__KbMeta *m = idx_meta(ix);
    s->role = "replica";
    s->node_id = m->node_id;
    s->version = v->version;
    s->leader_version = v->version;
    s->docs = v->docs;
    s->lag_ms = atomic_load(&f->lag_ms);
}

static fx_t *live;

static void fx_free(fx_t *f)
{
    qry_pool_free(&f->pool, f->router);
    if (f->client)
        zmq_close(f->client);
    if (f->answers)
        zmq_close(f->answers);
    if (f->router)
        zmq_close(f->router);
    if (f->ctx)
        zmq_ctx_term(f->ctx);
    idx_close(&f->ix);
    kbt_rmrf(f->tmp);
    free(f);
}

static void start_pool(fx_t *f, int threads)
{
    char err[256] = "";
    qry_pool_config_t pc = {.threads = threads,
                            .zctx = f->ctx,
                            .answer_ep = "inproc://answers",
                            .src = {f, src_acquire, src_release, src_state}};
    KBT_OK(qry_pool_new(&pc, &f->pool, err, sizeof err), err);
}

static int setup(void **state)
{
    if (live)
        fx_free(live);
    fx_t *f = live = calloc(1, sizeof *f);
    kbt_tmpdir(f->tmp, sizeof f->tmp, "pool");
    kbt_path(f->dir, sizeof f->dir, f->tmp, "kb");
    idx_config_t c = {.dir = f->dir, .dim = DIM, .node_id = "p1", .nosync = 1};
    char err[512] = "";
    KBT_OK(idx_open(&c, &f->ix, err, sizeof err), err);
    enum { N = 2000 };
    static float v[N][DIM];
    static char ids[N][16];
    idx_op_t ops[N];
    uint64_t lsns[N];
    for (int i = 0; i < N; i++) {
        kbt_rand_unit(v[i], DIM, (uint64_t)i);
        snprintf(ids[i], sizeof ids[i], "d%d", i);
        ops[i] = (idx_op_t){IDX_OP_UPSERT, ids[i], "t", v[i], DIM, NULL};
    }
    KBT_OK(idx_write(f->ix, ops, N, 0, lsns, NULL, NULL, err, sizeof err),
           err);
    f->ctx = zmq_ctx_new();
    f->router = zmq_socket(f->ctx, ZMQ_ROUTER);
    f->answers = zmq_socket(f->ctx, ZMQ_PULL);
    f->client = zmq_socket(f->ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(f->client, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->client, ZMQ_ROUTING_ID, "c1", 2);
    assert_int_equal(zmq_bind(f->answers, "inproc://answers"), 0);
    assert_int_equal(zmq_bind(f->router, "inproc://clients"), 0);
    assert_int_equal(zmq_connect(f->client, "inproc://clients"), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_free(*state);
    live = NULL;
    return 0;
}

/* A query request from client "c1"; the pool takes ownership. */
static Kbsync__Request *query_req(uint64_t rid, const float *v, uint32_t k)
{
    Kbsync__Request *r = calloc(1, sizeof *r);
    Kbsync__QueryRequest *q = calloc(1, sizeof *q);
    kbsync__request__init(r);
    kbsync__query_request__init(q);
    q->k = k;
    q->n_vector = DIM;
    q->vector = malloc(sizeof(float) * DIM);
    memcpy(q->vector, v, sizeof(float) * DIM);
    q->text = strdup("");
    r->request_id = rid;
    r->body_case = KBSYNC__REQUEST__BODY_QUERY;
    r->query = q;
    return r;
}

static const kb_peer_t c1 = {.nframes = 1, .len = {2}, .frame = {"c1"}};

/* Forwards answers until one reaches the client; returns it decoded. */
static Kbsync__Response *next_answer(fx_t *f)
{
    for (int i = 0; i < 5000; i++) {
        qry_pool_forward(f->answers, f->router, NULL, NULL);
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, f->client, ZMQ_DONTWAIT) >= 0) {
            Kbsync__Response *r = kbsync__response__unpack(
                NULL, zmq_msg_size(&m), zmq_msg_data(&m));
            zmq_msg_close(&m);
            assert_non_null(r);
            return r;
        }
        zmq_msg_close(&m);
        kbt_sleep_ms(1);
    }
    fail_msg("no answer reached the client within 5 s");
    return NULL;
}

static void test_qry_pool_answers_equal_direct_search(void **state)
{
    fx_t *f = *state;
    start_pool(f, 2);
    enum { NQ = 40 };
    float q[NQ][DIM];
    for (int i = 0; i < NQ; i++) {
        kbt_rand_unit(q[i], DIM, 5000 + (uint64_t)i);
        qry_pool_submit(f->pool, &c1, query_req(100 + (uint64_t)i, q[i], 7));
    }
    for (int n = 0; n < NQ; n++) {
        Kbsync__Response *r = next_answer(f);
        assert_null(r->error);
        int i = (int)r->request_id - 100;
        assert_true(i >= 0 && i < NQ);
        KBT_U64(r->query->state->version, 2000);
        idx_hits_t h;
        char err[256] = "";
        KBT_OK(idx_search(f->ix, q[i], NULL, 0, 7, &h, err, sizeof err), err);
        assert_int_equal(r->query->n_hits, h.n);
        for (size_t j = 0; j < h.n; j++) {
            assert_string_equal(r->query->hits[j]->id, h.hit[j].id);
            KBT_NEAR(r->query->hits[j]->score, h.hit[j].score, 1e-5);
        }
        idx_hits_free(&h);
        kbsync__response__free_unpacked(r, NULL);
    }
    qry_pool_stats_t st;
    qry_pool_stats(f->pool, &st);
    KBT_U64(st.queries, NQ);
    uint64_t sum = 0;
    for (int b = 0; b < QRY_HIST_BUCKETS; b++)
        sum += st.hist[b];
    KBT_U64(sum, st.batches);
}

static void test_qry_pool_batches_waiting_queries(void **state)
{
    fx_t *f = *state;
    enum { NQ = 30 };
    float q[DIM];
    kbt_rand_unit(q, DIM, 1);
    /* One reader: while it searches the first, the others wait, and it
     * takes them together. */
    start_pool(f, 1);
    for (int i = 0; i < NQ; i++)
        qry_pool_submit(f->pool, &c1, query_req((uint64_t)i + 1, q, 3));
    for (int n = 0; n < NQ; n++) {
        Kbsync__Response *r = next_answer(f);
        assert_null(r->error);
        kbsync__response__free_unpacked(r, NULL);
    }
    qry_pool_stats_t st;
    qry_pool_stats(f->pool, &st);
    KBT_U64(st.queries, NQ);
    assert_true(st.batches < NQ);
}

static void test_qry_pool_refusals(void **state)
{
    fx_t *f = *state;
    start_pool(f, 2);
    float q[DIM];
    kbt_rand_unit(q, DIM, 2);
    Kbsync__Request *both = query_req(1, q, 3);
    free(both->query->text);
    both->query->text = strdup("words");
    qry_pool_submit(f->pool, &c1, both);
    Kbsync__Response *r = next_answer(f);
    assert_non_null(r->error);
    assert_int_equal(r->error->code, KB_EINVAL);
    KBT_CONTAINS(r->error->message, "both");
    kbsync__response__free_unpacked(r, NULL);

    Kbsync__Request *lag = query_req(2, q, 3);
    lag->query->max_lag_ms = 50;
    atomic_store(&f->lag_ms, 80);
    qry_pool_submit(f->pool, &c1, lag);
    r = next_answer(f);
    assert_non_null(r->error);
    assert_int_equal(r->error->code, KB_ESTALE);
    KBT_CONTAINS(r->error->message, "max_lag_ms 50");
    kbsync__response__free_unpacked(r, NULL);

    atomic_store(&f->no_kb, 1);
    qry_pool_submit(f->pool, &c1, query_req(3, q, 3));
    r = next_answer(f);
    assert_non_null(r->error);
    assert_int_equal(r->error->code, KB_EUNAVAIL);
    kbsync__response__free_unpacked(r, NULL);
}

static void test_qry_pool_free_refuses_queued(void **state)
{
    fx_t *f = *state;
    start_pool(f, 1);
    float q[DIM];
    kbt_rand_unit(q, DIM, 3);
    for (int i = 0; i < 200; i++)
        qry_pool_submit(f->pool, &c1, query_req((uint64_t)i + 1, q, 1000));
    qry_pool_free(&f->pool, f->router);
    assert_null(f->pool);
    /* Every query got an answer: hits, or KB_EUNAVAIL if still queued. */
    int answered = 0, refused = 0;
    while (answered < 200) {
        Kbsync__Response *r = next_answer(f);
        answered++;
        if (r->error) {
            assert_int_equal(r->error->code, KB_EUNAVAIL);
            refused++;
        }
        kbsync__response__free_unpacked(r, NULL);
    }
    assert_int_equal(answered, 200);
    (void)refused;
}

int main(void)
{
    kb_log_setup(KB_LOG_WARN, "test_qry_pool");
    idx_setup(1);
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_qry_pool_answers_equal_direct_search),
        T(test_qry_pool_batches_waiting_queries),
        T(test_qry_pool_refusals),
        T(test_qry_pool_free_refuses_queued),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (live)
        fx_free(live);
    return failed;
}
