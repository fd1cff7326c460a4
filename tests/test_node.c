/* test_node: the node of node/include/node.h, run for real: a node
 * thread on tcp://127.0.0.1:* (endpoint read back from its endpoint file)
 * over real LMDB + FAISS in a fresh /tmp directory, driven through
 * qry_client and, for malformed traffic, raw DEALER/REQ sockets. Out:
 * pass/fail on status, writes, queries, every refused request (code,
 * request_id, and that the node changed nothing and keeps serving), and a
 * clean stop. Threads: the test thread (client) and the node thread, which
 * alone touches the idx while it runs. */
#include "kb_test.h"

#include "idx.h"
#include "kb_err.h"
#include "kb_util.h"
#include "qry_client.h"
#include "node.h"

#include <errno.h>
#include <pthread.h>
#include <zmq.h>

#define DIM 16
#define MAX_MSG 4096
#define TIMEOUT_MS 10000

/* Under ASan, fresh malloc memory is filled with 0xbe bytes, which read as a
 * negative FAISS label and so hide the empty-index crash tested below; a
 * fill that reads as a positive label keeps that test meaningful in the
 * sanitizer build. Unused in other builds. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "malloc_fill_byte=17";
}

typedef struct node_run {
    idx_kb_t *ix;
    node_config_t cfg;
    volatile sig_atomic_t stop;
    pthread_t th;
    int started;
    int rc;
    char err[512];
    char endpoint[256];
} node_run_t;

typedef struct fx {
    char tmp[256], dir[300], epfile[300];
    node_run_t node;
    qry_client_t *c;
} fx_t;

static void *node_main(void *arg)
{
    node_run_t *n = arg;
    n->rc = node_run(n->ix, &n->cfg, &n->stop, n->err, sizeof n->err);
    return NULL;
}

/* Reads the first line of path into out; waits up to timeout_ms. */
static int read_endpoint(const char *path, char *out, size_t cap,
                         int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        FILE *f = fopen(path, "r");
        if (f) {
            char *ok = fgets(out, (int)cap, f);
            fclose(f);
            if (ok && strchr(out, '\n')) {
                out[strcspn(out, "\n")] = 0;
                return 0;
            }
        }
        kbt_sleep_ms(10);
    }
    return -1;
}

/* Starts a node thread on ix; n->endpoint receives where it listens.
 * Returns 0 or a small failure code (no cmocka asserts: also used in a
 * forked child). */
static int node_start_cfg(node_run_t *n, idx_kb_t *ix, const char *epfile,
                          const node_config_t *cfg)
{
    memset(n, 0, sizeof *n);
    n->ix = ix;
    if (cfg)
        n->cfg = *cfg;
    n->cfg.listen = "tcp://127.0.0.1:*";
    n->cfg.endpoint_file = epfile;
    if (!n->cfg.max_msg)
        n->cfg.max_msg = MAX_MSG;
    if (pthread_create(&n->th, NULL, node_main, n))
        return 1;
    n->started = 1;
    if (read_endpoint(epfile, n->endpoint, sizeof n->endpoint, TIMEOUT_MS))
        return 2;
    if (strncmp(n->endpoint, "tcp://127.0.0.1:", 16) != 0)
        return 3;
    return 0;
}

static int node_start(node_run_t *n, idx_kb_t *ix, const char *epfile)
{
    /* A leader without a replication socket: writes are async. */
    return node_start_cfg(n, ix, epfile, NULL);
}

/* Sets the stop flag and joins the node thread (5 s at most). Returns 0,
 * or -ETIMEDOUT when the node did not stop. */
static int node_stop(node_run_t *n)
{
    if (!n->started)
        return 0;
    n->stop = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 5;
    int rc = pthread_timedjoin_np(n->th, NULL, &ts);
    if (rc)
        return -rc;
    n->started = 0;
    return 0;
}

/* cmocka 1.1 skips the teardown of a failed test: the fixture it left
 * behind (with its node thread still running) is stopped and freed by the
 * next setup, or at the end of main. */
static fx_t *live;

/* Stops the node, frees everything; returns the node's exit code, or
 * -ETIMEDOUT when it did not stop (the thread and idx are then leaked). */
static int fx_free(fx_t *f)
{
    qry_client_close(&f->c);
    int rc = node_stop(&f->node);
    if (!rc) {
        rc = f->node.rc;
        idx_close(&f->node.ix);
    }
    kbt_rmrf(f->tmp);
    free(f);
    return rc;
}

static int setup(void **state)
{
    if (live)
        fx_free(live);
    fx_t *f = live = calloc(1, sizeof *f);
    kbt_tmpdir(f->tmp, sizeof f->tmp, "node");
    kbt_path(f->dir, sizeof f->dir, f->tmp, "kb");
    kbt_path(f->epfile, sizeof f->epfile, f->tmp, "endpoint");
    idx_config_t c = {
        .dir = f->dir, .dim = DIM, .node_id = "test-node", .nosync = 1};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    int rc = node_start(&f->node, ix, f->epfile);
    if (rc)
        fail_msg("node did not start (check #%d): %s", rc, f->node.err);
    KBT_OK(qry_client_open(f->node.endpoint, &f->c, err, sizeof err), err);
    *state = f;
    return 0;
}

struct cluster;
static void cluster_free(struct cluster *c);
static struct cluster *live_cluster;

static int teardown(void **state)
{
    fx_t *f = *state;
    if (live_cluster) {
        cluster_free(live_cluster);
        live_cluster = NULL;
    }
    live = NULL;
    char err[512];
    snprintf(err, sizeof err, "%s", f->node.err);
    int rc = fx_free(f);
    if (rc == -ETIMEDOUT)
        fail_msg("node thread did not stop within 5 s of the stop flag");
    KBT_OK(rc, err); /* a clean stop */
    return 0;
}

/* ------------------------------------------------------- requests */

/* Sends req and returns the answer (error or not); fails on transport. */
static Kbsync__Response *call(qry_client_t *c, Kbsync__Request *req)
{
    Kbsync__Response *r = NULL;
    char err[512] = "";
    KBT_OK(qry_client_call(c, req, TIMEOUT_MS, &r, err, sizeof err), err);
    assert_non_null(r);
    assert_int_equal(r->protocol_version, KB_PROTOCOL_VERSION);
    assert_true(r->request_id == req->request_id || r->request_id == 0);
    return r;
}

/* Fails unless r is an error with code (and message containing needle). */
static void expect_error(Kbsync__Response *r, int code, const char *needle)
{
    if (!r->error)
        fail_msg("wanted error %s, got a success (body %d)", kb_errname(code),
                 (int)r->body_case);
    if (r->error->code != code)
        fail_msg("wanted error %s, got %d %s: \"%s\"", kb_errname(code),
                 r->error->code, kb_errname(r->error->code), r->error->message);
    assert_true(strlen(r->error->message) > 0);
    if (needle)
        KBT_CONTAINS(r->error->message, needle);
    assert_int_equal(r->body_case, KBSYNC__RESPONSE__BODY__NOT_SET);
}

static void expect_ok(Kbsync__Response *r, Kbsync__Response__BodyCase body)
{
    if (r->error)
        fail_msg("request failed: %d %s: \"%s\"", r->error->code,
                 kb_errname(r->error->code), r->error->message);
    assert_int_equal(r->body_case, body);
}

typedef struct docspec {
    const char *id;
    const char *text;
    const float *emb; /* DIM floats or NULL */
    size_t nemb;      /* 0 = DIM when emb is set */
    const char *meta;
} docspec_t;

static Kbsync__Response *upsert(qry_client_t *c, const docspec_t *ds, size_t n)
{
    Kbsync__Doc docs[8], *dp[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        kbsync__doc__init(&docs[i]);
        docs[i].id = (char *)ds[i].id;
        docs[i].text = (char *)(ds[i].text ? ds[i].text : "");
        docs[i].metadata_json = (char *)(ds[i].meta ? ds[i].meta : "");
        docs[i].embedding = (float *)ds[i].emb;
        docs[i].n_embedding = ds[i].emb ? (ds[i].nemb ? ds[i].nemb : DIM) : 0;
        dp[i] = &docs[i];
    }
    Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
    up.n_docs = n;
    up.docs = dp;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &up;
    return call(c, &req);
}

static Kbsync__Response *delete_ids(qry_client_t *c, const char **ids, size_t n)
{
    Kbsync__DeleteRequest d = KBSYNC__DELETE_REQUEST__INIT;
    d.n_ids = n;
    d.ids = (char **)ids;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_DELETE;
    req.delete_ = &d;
    return call(c, &req);
}

static void query_init(Kbsync__QueryRequest *q, Kbsync__Request *req,
                       const float *v, size_t nv, const char *text, uint32_t k)
{
    kbsync__query_request__init(q);
    q->k = k;
    q->vector = (float *)v;
    q->n_vector = v ? nv : 0;
    q->text = (char *)(text ? text : "");
    kbsync__request__init(req);
    req->body_case = KBSYNC__REQUEST__BODY_QUERY;
    req->query = q;
}

static Kbsync__Response *query(qry_client_t *c, const float *v, size_t nv,
                               const char *text, uint32_t k)
{
    Kbsync__QueryRequest q;
    Kbsync__Request req;
    query_init(&q, &req, v, nv, text, k);
    return call(c, &req);
}

static Kbsync__Response *status(qry_client_t *c)
{
    Kbsync__StatusRequest s = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &s;
    return call(c, &req);
}

/* Status must answer and show version / docs. */
static void expect_state(qry_client_t *c, uint64_t version, uint64_t docs)
{
    Kbsync__Response *r = status(c);
    expect_ok(r, KBSYNC__RESPONSE__BODY_STATUS);
    KBT_U64(r->status->version, version);
    KBT_U64(r->status->docs, docs);
    kbsync__response__free_unpacked(r, NULL);
}

static void expect_write(Kbsync__Response *r, uint64_t version,
                         uint32_t written, uint32_t missing)
{
    expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
    KBT_U64(r->write->version, version);
    assert_int_equal(r->write->written, written);
    assert_int_equal(r->write->missing, missing);
    kbsync__response__free_unpacked(r, NULL);
}

static size_t count_hit(const Kbsync__Response *r, const char *id)
{
    size_t n = 0;
    for (size_t i = 0; i < r->query->n_hits; i++)
        n += strcmp(r->query->hits[i]->id, id) == 0;
    return n;
}

/* ------------------------------------------------------ raw sockets */

typedef struct raw {
    void *ctx, *sock;
} raw_t;

static void raw_open(raw_t *r, int type, const char *endpoint)
{
    r->ctx = zmq_ctx_new();
    assert_non_null(r->ctx);
    r->sock = zmq_socket(r->ctx, type);
    assert_non_null(r->sock);
    int zero = 0, ms = TIMEOUT_MS;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero);
    /* A reply the socket drops must fail the test, not block it. */
    zmq_setsockopt(r->sock, ZMQ_RCVTIMEO, &ms, sizeof ms);
    assert_int_equal(zmq_connect(r->sock, endpoint), 0);
}

static void raw_close(raw_t *r)
{
    zmq_close(r->sock);
    zmq_ctx_term(r->ctx);
}

static void raw_send(raw_t *r, const void *data, size_t len)
{
    if (zmq_send(r->sock, data, len, 0) != (int)len)
        fail_msg("zmq_send of %zu bytes: %s", len, zmq_strerror(errno));
}

/* Waits up to timeout_ms for a one-frame Response; NULL when none came. */
static Kbsync__Response *raw_recv(raw_t *r, int timeout_ms)
{
    zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) != 1)
        return NULL;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, r->sock, 0) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        fail_msg("zmq_msg_recv: %s", zmq_strerror(e));
    }
    assert_false(zmq_msg_more(&m));
    Kbsync__Response *resp =
        kbsync__response__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    zmq_msg_close(&m);
    assert_non_null(resp);
    return resp;
}

static void *pack(const Kbsync__Request *req, size_t *len)
{
    *len = kbsync__request__get_packed_size(req);
    void *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    kbsync__request__pack(req, b);
    return b;
}

/* ------------------------------------------------------------ tests */

static void test_node_status(void **state)
{
    fx_t *f = *state;
    Kbsync__Response *r = status(f->c);
    expect_ok(r, KBSYNC__RESPONSE__BODY_STATUS);
    Kbsync__NodeState *s = r->status;
    assert_string_equal(s->role, "leader");
    assert_string_equal(s->node_id, "test-node");
    KBT_U64(s->version, 0);
    KBT_U64(s->leader_version, 0);
    KBT_U64(s->lag_ops, 0);
    KBT_U64(s->lag_ms, 0);
    KBT_U64(s->docs, 0);
    assert_int_equal(s->dim, DIM);
    assert_string_equal(s->metric, "ip");
    assert_string_equal(s->index, "IDMap2,Flat");
    kbsync__response__free_unpacked(r, NULL);
    /* The endpoint file names a real port. */
    assert_string_not_equal(f->node.endpoint, "tcp://127.0.0.1:*");
}

static void test_node_upsert_and_query_vector(void **state)
{
    fx_t *f = *state;
    float v[3][DIM];
    for (int i = 0; i < 3; i++)
        kbt_rand_unit(v[i], DIM, 20 + i);
    docspec_t ds[] = {{"a", "alpha", v[0], 0, "{\"n\":1}"},
                      {"b", "beta", v[1], 0, NULL},
                      {"c", "gamma", v[2], 0, "{\"tags\":[\"x\"]}"}};
    expect_write(upsert(f->c, ds, 3), 3, 3, 0);

    for (int i = 0; i < 3; i++) {
        Kbsync__Response *r = query(f->c, v[i], DIM, NULL, 2);
        expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
        Kbsync__QueryResult *q = r->query;
        assert_int_equal(q->n_hits, 2);
        assert_string_equal(q->hits[0]->id, ds[i].id);
        assert_string_equal(q->hits[0]->text, ds[i].text);
        assert_string_equal(q->hits[0]->metadata_json,
                            ds[i].meta ? ds[i].meta : "");
        KBT_NEAR(q->hits[0]->score, 1.0, 1e-5);
        /* The runner-up's score is its inner product with the query. */
        int j = q->hits[1]->id[0] - 'a';
        assert_in_range(j, 0, 2);
        assert_int_not_equal(j, i);
        KBT_NEAR(q->hits[1]->score, kbt_dot(v[i], v[j], DIM), 1e-5);
        assert_true(q->hits[1]->score <= q->hits[0]->score);
        assert_non_null(q->state);
        KBT_U64(q->state->version, 3);
        KBT_U64(q->state->docs, 3);
        assert_string_equal(q->state->role, "leader");
        kbsync__response__free_unpacked(r, NULL);
    }
    /* k = 0 means the default (10): all three. */
    Kbsync__Response *r = query(f->c, v[0], DIM, NULL, 0);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(r->query->n_hits, 3);
    kbsync__response__free_unpacked(r, NULL);

    /* Replace "a": still one hit for it, with the new content. */
    docspec_t again = {"a", "alpha v2", v[1], 0, "{\"n\":2}"};
    expect_write(upsert(f->c, &again, 1), 4, 1, 0);
    r = query(f->c, v[1], DIM, NULL, 10);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(r->query->n_hits, 3);
    assert_int_equal(count_hit(r, "a"), 1);
    for (size_t i = 0; i < r->query->n_hits; i++)
        if (!strcmp(r->query->hits[i]->id, "a"))
            assert_string_equal(r->query->hits[i]->text, "alpha v2");
    kbsync__response__free_unpacked(r, NULL);
    expect_state(f->c, 4, 3);
}

static void test_node_query_text(void **state)
{
    fx_t *f = *state;
    docspec_t ds[] = {
        {"cat", "the cat sat on the mat", NULL, 0, NULL},
        {"lmdb", "memory mapped btree database", NULL, 0, NULL},
        {"zmq", "router dealer sockets and frames", NULL, 0, NULL}};
    expect_write(upsert(f->c, ds, 3), 3, 3, 0);
    static const char *q[][2] = {{"a cat on a mat", "cat"},
                                 {"btree database", "lmdb"},
                                 {"dealer sockets", "zmq"}};
    for (int i = 0; i < 3; i++) {
        Kbsync__Response *r = query(f->c, NULL, 0, q[i][0], 1);
        expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
        assert_int_equal(r->query->n_hits, 1);
        assert_string_equal(r->query->hits[0]->id, q[i][1]);
        kbsync__response__free_unpacked(r, NULL);
    }
}

static void test_node_delete_write_result(void **state)
{
    fx_t *f = *state;
    float v[3][DIM];
    for (int i = 0; i < 3; i++)
        kbt_rand_unit(v[i], DIM, 60 + i);
    docspec_t ds[] = {{"a", "", v[0], 0, NULL},
                      {"b", "", v[1], 0, NULL},
                      {"c", "", v[2], 0, NULL}};
    expect_write(upsert(f->c, ds, 3), 3, 3, 0);

    const char *ids1[] = {"a", "nope"};
    expect_write(delete_ids(f->c, ids1, 2), 4, 1, 1);
    /* Only missing ids: nothing written, version is the current one. */
    const char *ids2[] = {"nope", "a"};
    expect_write(delete_ids(f->c, ids2, 2), 4, 0, 2);
    /* Two present: version is the LSN of the request's last write. */
    docspec_t d = {"d", "", v[0], 0, NULL};
    expect_write(upsert(f->c, &d, 1), 5, 1, 0);
    const char *ids3[] = {"b", "zzz", "c"};
    expect_write(delete_ids(f->c, ids3, 3), 7, 2, 1);
    expect_state(f->c, 7, 1);

    Kbsync__Response *r = query(f->c, v[0], DIM, NULL, 10);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(r->query->n_hits, 1);
    assert_string_equal(r->query->hits[0]->id, "d");
    kbsync__response__free_unpacked(r, NULL);

    /* An empty delete is refused. */
    r = delete_ids(f->c, NULL, 0);
    expect_error(r, KB_EINVAL, NULL);
    kbsync__response__free_unpacked(r, NULL);
    expect_state(f->c, 7, 1);
}

/* docs/PROTOCOL.md, "Rules a client must know": an id repeated within one
 * request is applied in order. Upserts each take an LSN and the last wins;
 * a repeated delete finds the id gone and counts it in `missing`. */
static void test_node_duplicate_ids_in_one_request(void **state)
{
    fx_t *f = *state;
    float v[3][DIM];
    for (int i = 0; i < 3; i++)
        kbt_rand_unit(v[i], DIM, 80 + i);
    docspec_t ds[] = {{"a", "", v[0], 0, "{\"copy\":1}"},
                      {"a", "", v[1], 0, "{\"copy\":2}"},
                      {"b", "", v[2], 0, NULL}};
    Kbsync__Response *r = upsert(f->c, ds, 3);
    expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
    KBT_U64(r->write->first_version, 1);
    KBT_U64(r->write->version, 3);
    assert_int_equal(r->write->written, 3); /* every copy counts */
    kbsync__response__free_unpacked(r, NULL);
    expect_state(f->c, 3, 2);
    /* "a" is its second copy, written at LSN 2. */
    r = query(f->c, v[1], DIM, NULL, 3);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(count_hit(r, "a"), 1);
    assert_string_equal(r->query->hits[0]->id, "a");
    KBT_U64(r->query->hits[0]->version, 2);
    KBT_CONTAINS(r->query->hits[0]->metadata_json, "\"copy\":2");
    kbsync__response__free_unpacked(r, NULL);

    const char *ids[] = {"b", "b", "zz"};
    expect_write(delete_ids(f->c, ids, 3), 4, 1, 2);
    expect_state(f->c, 4, 1);
}

static int free_port(void);

/* A replica that never reached its leader has no knowledge base, so it
 * cannot check a vector's dimension; it still refuses at once what needs
 * none (k, both vector and text, a text without words, non-finite values)
 * instead of letting the query wait and get KB_ESTALE. A fine query waits. */
static void test_node_replica_before_contact_checks_what_it_can(void **state)
{
    fx_t *f = *state;
    node_run_t rn;
    char rdir[320], rep[320], lep[64], err[512] = "";
    snprintf(rdir, sizeof rdir, "%s/lonely", f->tmp);
    snprintf(rep, sizeof rep, "%s/lonely.ep", f->tmp);
    snprintf(lep, sizeof lep, "tcp://127.0.0.1:%d", free_port());
    node_config_t rc = {.role = NODE_REPLICA, .max_msg = 64u << 20};
    rc.replica.id = "lonely";
    rc.replica.leader = lep; /* nothing listens there */
    rc.replica.data_dir = rdir;
    rc.replica.nosync = 1;
    if (node_start_cfg(&rn, NULL, rep, &rc))
        fail_msg("replica did not start: %s", rn.err);
    qry_client_t *c = NULL;
    KBT_OK(qry_client_open(rn.endpoint, &c, err, sizeof err), err);
    float v[DIM], nan_v[DIM];
    kbt_rand_unit(v, DIM, 1);
    memcpy(nan_v, v, sizeof v);
    nan_v[2] = NAN;
    static const struct {
        int k;
        const float *vec;
        const char *text;
        int code;
        const char *needle;
    } bad[] = {
        {KB_MAX_K + 1, NULL, "words", KB_EINVAL, "1001"},
        {5, NULL, "--- !!", KB_EINVAL, "no words"},
        {5, NULL, NULL, KB_ENONFINITE, "NaN"},
        {5, NULL, "words", KB_EINVAL, "both"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Kbsync__QueryRequest q;
        Kbsync__Request req;
        const float *vec = i == 2 ? nan_v : i == 3 ? v : bad[i].vec;
        query_init(&q, &req, vec, DIM, bad[i].text, (uint32_t)bad[i].k);
        q.min_version = 1;
        q.wait_ms = 8000;
        uint64_t t0 = kb_mono_us();
        Kbsync__Response *r = call(c, &req);
        expect_error(r, bad[i].code, bad[i].needle);
        kbsync__response__free_unpacked(r, NULL);
        assert_true(kb_mono_us() - t0 < 4000000u);
    }
    /* A fine one waits, then is refused for freshness. */
    Kbsync__QueryRequest q;
    Kbsync__Request req;
    query_init(&q, &req, v, DIM, NULL, 5);
    q.min_version = 1;
    q.wait_ms = 300;
    uint64_t t0 = kb_mono_us();
    Kbsync__Response *r = call(c, &req);
    expect_error(r, KB_ESTALE, "after waiting 300 ms");
    kbsync__response__free_unpacked(r, NULL);
    assert_true(kb_mono_us() - t0 >= 250000u);
    qry_client_close(&c);
    assert_int_equal(node_stop(&rn), 0);
}

static void test_node_errors_change_nothing(void **state)
{
    fx_t *f = *state;
    float v[DIM], nan_v[DIM];
    kbt_rand_unit(v, DIM, 1);
    memcpy(nan_v, v, sizeof v);
    nan_v[4] = NAN;
    docspec_t base = {"base", "base doc", v, 0, NULL};
    expect_write(upsert(f->c, &base, 1), 1, 1, 0);
    Kbsync__Response *r;

    /* Upserts: each refused whole, naming the doc. */
    docspec_t wrong_dim[] = {{"ok1", "", v, 0, NULL},
                             {"short", "", v, DIM - 3, NULL}};
    r = upsert(f->c, wrong_dim, 2);
    expect_error(r, KB_EDIM, "\"short\"");
    KBT_CONTAINS(r->error->message, "13");
    kbsync__response__free_unpacked(r, NULL);
    expect_state(f->c, 1, 1);

    docspec_t nan_doc[] = {{"ok2", "", v, 0, NULL},
                           {"nan", "", nan_v, 0, NULL}};
    r = upsert(f->c, nan_doc, 2);
    expect_error(r, KB_ENONFINITE, "\"nan\"");
    kbsync__response__free_unpacked(r, NULL);

    docspec_t bad_json = {"meta", "", v, 0, "{broken"};
    r = upsert(f->c, &bad_json, 1);
    expect_error(r, KB_EBADJSON, "\"meta\"");
    kbsync__response__free_unpacked(r, NULL);

    docspec_t empty_id = {"", "", v, 0, NULL};
    r = upsert(f->c, &empty_id, 1);
    expect_error(r, KB_EBADID, NULL);
    kbsync__response__free_unpacked(r, NULL);

    docspec_t nothing = {"void", "", NULL, 0, NULL};
    r = upsert(f->c, &nothing, 1);
    expect_error(r, KB_EINVAL, "\"void\"");
    kbsync__response__free_unpacked(r, NULL);

    r = upsert(f->c, NULL, 0);
    expect_error(r, KB_EINVAL, NULL);
    kbsync__response__free_unpacked(r, NULL);

    /* None of the good docs of the refused requests got in. */
    expect_state(f->c, 1, 1);
    r = query(f->c, v, DIM, NULL, 10);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(r->query->n_hits, 1);
    assert_string_equal(r->query->hits[0]->id, "base");
    kbsync__response__free_unpacked(r, NULL);

    /* Queries. */
    r = query(f->c, v, DIM - 1, NULL, 5);
    expect_error(r, KB_EDIM, "15");
    kbsync__response__free_unpacked(r, NULL);
    r = query(f->c, nan_v, DIM, NULL, 5);
    expect_error(r, KB_ENONFINITE, "NaN");
    kbsync__response__free_unpacked(r, NULL);
    r = query(f->c, NULL, 0, NULL, 5);
    expect_error(r, KB_EINVAL, NULL);
    kbsync__response__free_unpacked(r, NULL);
    r = query(f->c, v, DIM, NULL, KB_MAX_K + 1);
    expect_error(r, KB_EINVAL, "1001");
    kbsync__response__free_unpacked(r, NULL);
    Kbsync__QueryRequest q;
    Kbsync__Request req;
    query_init(&q, &req, v, DIM, NULL, 5);
    q.min_version = 99;
    r = call(f->c, &req);
    expect_error(r, KB_ESTALE, "99");
    kbsync__response__free_unpacked(r, NULL);
    /* A malformed query that would wait is refused for what is wrong
     * with it, not for freshness. */
    q.k = KB_MAX_K + 1;
    r = call(f->c, &req);
    expect_error(r, KB_EINVAL, "1001");
    kbsync__response__free_unpacked(r, NULL);
    q.k = 5;
    q.min_version = 1; /* reached: fine */
    r = call(f->c, &req);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    kbsync__response__free_unpacked(r, NULL);

    expect_state(f->c, 1, 1);
}

static void test_node_bad_protocol_version(void **state)
{
    fx_t *f = *state;
    raw_t raw;
    raw_open(&raw, ZMQ_DEALER, f->node.endpoint);
    static const uint32_t versions[] = {99, 0};
    for (int i = 0; i < 2; i++) {
        Kbsync__StatusRequest st = KBSYNC__STATUS_REQUEST__INIT;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.protocol_version = versions[i];
        req.request_id = 4242 + i;
        req.body_case = KBSYNC__REQUEST__BODY_STATUS;
        req.status = &st;
        size_t len;
        void *b = pack(&req, &len);
        raw_send(&raw, b, len);
        free(b);
        Kbsync__Response *r = raw_recv(&raw, TIMEOUT_MS);
        if (!r)
            fail_msg("no answer to protocol_version %u", versions[i]);
        KBT_U64(r->request_id, 4242 + i);
        char want[32];
        snprintf(want, sizeof want, "protocol_version %u", versions[i]);
        expect_error(r, KB_EPROTO, want);
        kbsync__response__free_unpacked(r, NULL);
    }
    raw_close(&raw);
    expect_state(f->c, 0, 0);
}

static void test_node_garbage_bytes(void **state)
{
    fx_t *f = *state;
    raw_t raw;
    raw_open(&raw, ZMQ_DEALER, f->node.endpoint);
    /* Not protobuf at all. */
    static const unsigned char junk[] = {0xff, 0xfe, 0xfd, 0x07, 0x00, 0x99};
    raw_send(&raw, junk, sizeof junk);
    Kbsync__Response *r = raw_recv(&raw, TIMEOUT_MS);
    assert_non_null(r);
    expect_error(r, KB_EBADMSG, NULL);
    KBT_U64(r->request_id, 0);
    kbsync__response__free_unpacked(r, NULL);
    /* An empty frame. */
    raw_send(&raw, "", 0);
    r = raw_recv(&raw, TIMEOUT_MS);
    assert_non_null(r);
    expect_error(r, KB_EBADMSG, "empty");
    kbsync__response__free_unpacked(r, NULL);
    /* A valid header with no body: refused, correlated by request_id. */
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.protocol_version = KB_PROTOCOL_VERSION;
    req.request_id = 31337;
    size_t len;
    void *b = pack(&req, &len);
    raw_send(&raw, b, len);
    free(b);
    r = raw_recv(&raw, TIMEOUT_MS);
    assert_non_null(r);
    expect_error(r, KB_EBADMSG, NULL);
    KBT_U64(r->request_id, 31337);
    kbsync__response__free_unpacked(r, NULL);
    /* Truncated upsert: its request_id is still read off the wire. */
    float v[DIM];
    kbt_rand_unit(v, DIM, 2);
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = "t";
    d.embedding = v;
    d.n_embedding = DIM;
    Kbsync__Doc *dp = &d;
    Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
    up.n_docs = 1;
    up.docs = &dp;
    req.request_id = 777;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &up;
    b = pack(&req, &len);
    raw_send(&raw, b, len - 5);
    free(b);
    r = raw_recv(&raw, TIMEOUT_MS);
    assert_non_null(r);
    expect_error(r, KB_EBADMSG, NULL);
    KBT_U64(r->request_id, 777);
    kbsync__response__free_unpacked(r, NULL);
    raw_close(&raw);
    expect_state(f->c, 0, 0);
}

static void test_node_oversize_message(void **state)
{
    fx_t *f = *state;
    float v[DIM];
    kbt_rand_unit(v, DIM, 3);
    char *text = kbt_repeat('x', MAX_MSG + 100);
    docspec_t big = {"big", text, v, 0, NULL};
    Kbsync__Response *r = upsert(f->c, &big, 1);
    expect_error(r, KB_ETOOBIG, "4096");
    assert_true(r->request_id != 0); /* read off the wire, correlated */
    kbsync__response__free_unpacked(r, NULL);
    expect_state(f->c, 0, 0);
    /* Just under the limit is accepted. */
    text[MAX_MSG - 200] = 0;
    expect_write(upsert(f->c, &big, 1), 1, 1, 0);
    free(text);
    expect_state(f->c, 1, 1);
}

static void test_node_far_oversize_dropped(void **state)
{
    fx_t *f = *state;
    /* Above 4 x max_msg + 1 MiB ZeroMQ drops the message (and the
     * connection); the node must not answer, stall or die. */
    size_t len = (size_t)MAX_MSG * 4 + (1u << 20) + 4096;
    unsigned char *b = calloc(1, len);
    raw_t raw;
    raw_open(&raw, ZMQ_DEALER, f->node.endpoint);
    raw_send(&raw, b, len);
    free(b);
    Kbsync__Response *r = raw_recv(&raw, 500);
    assert_null(r);
    raw_close(&raw);
    expect_state(f->c, 0, 0);
    float v[DIM];
    kbt_rand_unit(v, DIM, 3);
    docspec_t d = {"after", "", v, 0, NULL};
    expect_write(upsert(f->c, &d, 1), 1, 1, 0);
}

static void test_node_req_socket(void **state)
{
    fx_t *f = *state;
    raw_t raw;
    raw_open(&raw, ZMQ_REQ, f->node.endpoint);
    Kbsync__StatusRequest st = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.protocol_version = KB_PROTOCOL_VERSION;
    req.request_id = 55;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &st;
    size_t len;
    void *b = pack(&req, &len);
    for (int i = 0; i < 2; i++) { /* REQ: strictly send, recv, send, recv */
        raw_send(&raw, b, len);
        Kbsync__Response *r = raw_recv(&raw, TIMEOUT_MS);
        assert_non_null(r);
        expect_ok(r, KBSYNC__RESPONSE__BODY_STATUS);
        KBT_U64(r->request_id, 55);
        assert_string_equal(r->status->node_id, "test-node");
        kbsync__response__free_unpacked(r, NULL);
    }
    free(b);
    raw_close(&raw);
}

/* Sends req without waiting for its answer; returns its request id. */
static uint64_t send_req(qry_client_t *c, Kbsync__Request *req)
{
    char err[512] = "";
    uint64_t rid;
    KBT_OK(qry_client_send(c, req, &rid, err, sizeof err), err);
    return rid;
}

/* Sends an upsert of one document id (vector v) without waiting. */
static uint64_t send_upsert(qry_client_t *c, const char *id, float *v)
{
    Kbsync__Doc d = KBSYNC__DOC__INIT;
    d.id = (char *)id;
    d.embedding = v;
    d.n_embedding = DIM;
    Kbsync__Doc *dp = &d;
    Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
    up.n_docs = 1;
    up.docs = &dp;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
    req.upsert = &up;
    return send_req(c, &req);
}

static void test_node_pipelined_read_your_writes(void **state)
{
    fx_t *f = *state;
    float v[DIM];
    kbt_rand_unit(v, DIM, 70);
    char err[512] = "";
    /* Five writes and a query sent back to back, without waiting. */
    uint64_t rid[6];
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i);
        rid[i] = send_upsert(f->c, id, v);
    }
    Kbsync__QueryRequest q;
    Kbsync__Request qreq;
    query_init(&q, &qreq, v, DIM, NULL, 10);
    KBT_OK(qry_client_send(f->c, &qreq, &rid[5], err, sizeof err), err);

    /* Writes answered in commit order, then the query, which sees all. */
    for (int i = 0; i < 6; i++) {
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_recv(f->c, TIMEOUT_MS, &r, err, sizeof err), err);
        KBT_U64(r->request_id, rid[i]);
        if (i < 5) {
            expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
            KBT_U64(r->write->version, i + 1);
        } else {
            expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
            assert_int_equal(r->query->n_hits, 5);
            KBT_U64(r->query->state->version, 5);
        }
        kbsync__response__free_unpacked(r, NULL);
    }
}

static uint64_t send_list(qry_client_t *c, const char *prefix)
{
    Kbsync__ListRequest lq = KBSYNC__LIST_REQUEST__INIT;
    lq.prefix = (char *)prefix;
    lq.limit = 10000;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_LIST;
    req.list = &lq;
    return send_req(c, &req);
}

/* Listings run on the reader threads: one sent behind the same client's
 * writes still sees them all (it waits for their commit, as a query
 * does); listings from two clients side by side while a third writes get
 * whole, ordered pages consistent with their version. */
static void test_node_list_on_readers(void **state)
{
    fx_t *f = *state;
    float v[DIM];
    kbt_rand_unit(v, DIM, 71);
    char err[512] = "", id[32];
    uint64_t rid[6];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "p%d", i);
        rid[i] = send_upsert(f->c, id, v);
    }
    rid[5] = send_list(f->c, "p");
    for (int i = 0; i < 6; i++) {
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_recv(f->c, TIMEOUT_MS, &r, err, sizeof err), err);
        KBT_U64(r->request_id, rid[i]);
        if (i < 5) {
            expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
        } else {
            expect_ok(r, KBSYNC__RESPONSE__BODY_LIST);
            assert_int_equal(r->list->n_entries, 5);
            KBT_U64(r->list->version, 5);
            assert_string_equal(r->list->entries[4]->id, "p4");
        }
        kbsync__response__free_unpacked(r, NULL);
    }

    qry_client_t *c2 = NULL, *w = NULL;
    KBT_OK(qry_client_open(f->node.endpoint, &c2, err, sizeof err), err);
    KBT_OK(qry_client_open(f->node.endpoint, &w, err, sizeof err), err);
    enum { ROUNDS = 20, WRITES = 10 };
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < WRITES; i++) {
            snprintf(id, sizeof id, "w%03d-%d", round, i);
            send_upsert(w, id, v);
        }
        send_list(f->c, "");
        send_list(c2, "");
        qry_client_t *lc[2] = {f->c, c2};
        for (int k = 0; k < 2; k++) {
            Kbsync__Response *r = NULL;
            KBT_OK(qry_client_recv(lc[k], TIMEOUT_MS, &r, err, sizeof err),
                   err);
            expect_ok(r, KBSYNC__RESPONSE__BODY_LIST);
            /* one read transaction: every document up to its version */
            KBT_U64(r->list->n_entries, r->list->version);
            for (size_t j = 1; j < r->list->n_entries; j++)
                assert_true(strcmp(r->list->entries[j - 1]->id,
                                   r->list->entries[j]->id) < 0);
            kbsync__response__free_unpacked(r, NULL);
        }
    }
    for (int i = 0; i < ROUNDS * WRITES; i++) {
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_recv(w, TIMEOUT_MS, &r, err, sizeof err), err);
        expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
        kbsync__response__free_unpacked(r, NULL);
    }
    qry_client_close(&c2);
    qry_client_close(&w);
}

static void test_node_two_clients_group_commit(void **state)
{
    fx_t *f = *state;
    qry_client_t *c2 = NULL;
    char err[512] = "";
    KBT_OK(qry_client_open(f->node.endpoint, &c2, err, sizeof err), err);
    float v[DIM];
    kbt_rand_unit(v, DIM, 80);
    enum { PER = 8 };
    qry_client_t *cs[2] = {f->c, c2};
    for (int i = 0; i < PER; i++)
        for (int c = 0; c < 2; c++) {
            char id[32];
            snprintf(id, sizeof id, "c%d-%d", c, i);
            send_upsert(cs[c], id, v);
        }
    /* Every write got its own LSN; each client's in increasing order. */
    int seen[2 * PER + 1] = {0};
    for (int c = 0; c < 2; c++) {
        uint64_t last = 0;
        for (int i = 0; i < PER; i++) {
            Kbsync__Response *r = NULL;
            KBT_OK(qry_client_recv(cs[c], TIMEOUT_MS, &r, err, sizeof err),
                   err);
            expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
            uint64_t ver = r->write->version;
            assert_true(ver >= 1 && ver <= 2 * PER);
            assert_true(ver > last);
            assert_int_equal(seen[ver], 0);
            seen[ver] = 1;
            last = ver;
            kbsync__response__free_unpacked(r, NULL);
        }
    }
    qry_client_close(&c2);
    assert_null(c2);
    expect_state(f->c, 2 * PER, 2 * PER);
}

static void test_node_cannot_start(void **state)
{
    fx_t *f = *state;
    char dir[300], err[512] = "";
    kbt_path(dir, sizeof dir, f->tmp, "kb2");
    idx_config_t c = {.dir = dir, .dim = DIM, .nosync = 1};
    idx_kb_t *ix = NULL;
    KBT_OK(idx_open(&c, &ix, err, sizeof err), err);
    volatile sig_atomic_t stop = 0;

    /* The endpoint is taken (by the fixture's node). */
    node_config_t cfg = {.listen = f->node.endpoint, .max_msg = MAX_MSG};
    err[0] = 0;
    KBT_RC(node_run(ix, &cfg, &stop, err, sizeof err), KB_ENET, err);
    KBT_CONTAINS(err, f->node.endpoint);
    /* The endpoint file cannot be written. */
    char ep[400];
    kbt_path(ep, sizeof ep, f->tmp, "no/such/dir/endpoint");
    cfg.listen = "tcp://127.0.0.1:*";
    cfg.endpoint_file = ep;
    err[0] = 0;
    int rc = node_run(ix, &cfg, &stop, err, sizeof err);
    KBT_RC(rc, -ENOENT, err);
    KBT_CONTAINS(err, "endpoint file");
    idx_close(&ix);
    /* The running node did not notice. */
    expect_state(f->c, 0, 0);
}

/* BUG (indexer/idx_vec.c, idx_vec_search; see test_idx_vec): the first
 * query to a node that holds no documents (a fresh node, or all deleted)
 * crashes the whole node inside FAISS. Runs in a child process with its
 * own node so that the crash fails only this test. */
static int empty_node_child(void *arg)
{
    const char *tmp = arg;
    char dir[300], ep[300], err[512];
    snprintf(dir, sizeof dir, "%s/kb-empty", tmp);
    snprintf(ep, sizeof ep, "%s/endpoint-empty", tmp);
    idx_config_t c = {.dir = dir, .dim = DIM, .nosync = 1};
    idx_kb_t *ix = NULL;
    if (idx_open(&c, &ix, err, sizeof err))
        return 1;
    static node_run_t n;
    if (node_start(&n, ix, ep))
        return 2;
    qry_client_t *cl = NULL;
    if (qry_client_open(n.endpoint, &cl, err, sizeof err))
        return 3;
    float v[DIM];
    kbt_rand_unit(v, DIM, 1);
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = 5;
    q.vector = v;
    q.n_vector = DIM;
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_QUERY;
    req.query = &q;
    Kbsync__Response *r = NULL;
    if (qry_client_call(cl, &req, TIMEOUT_MS, &r, err, sizeof err))
        return 4;
    if (r->error || r->body_case != KBSYNC__RESPONSE__BODY_QUERY ||
        r->query->n_hits != 0)
        return 5;
    kbsync__response__free_unpacked(r, NULL);
    qry_client_close(&cl);
    if (node_stop(&n) || n.rc)
        return 6;
    idx_close(&ix);
    return 0;
}

static void test_node_query_empty_kb(void **state)
{
    kbt_run_isolated("query on a node with no documents", empty_node_child,
                     *state, 60000);
}

/* Fixture of the isolated test: only a temp dir, no node and no ZMQ
 * thread in this process while it forks. */
static char *live_tmp;

static int setup_tmp(void **state)
{
    if (live)
        fx_free(live);
    live = NULL;
    if (live_tmp) {
        kbt_rmrf(live_tmp);
        free(live_tmp);
    }
    char *tmp = live_tmp = calloc(1, 256);
    kbt_tmpdir(tmp, 256, "node-empty");
    *state = tmp;
    return 0;
}

static int teardown_tmp(void **state)
{
    kbt_rmrf(*state);
    free(*state);
    live_tmp = NULL;
    return 0;
}


/* ----------------------------------------- threads, batches, replicas */

/* Sends n docs "<prefix><i>" (vectors seeded seed + i, metadata
 * {"b":i%100}) in upserts of B, mode m, and waits for every answer. */
static uint64_t bulk_upsert_b(qry_client_t *c, const char *prefix, int n,
                              uint64_t seed, Kbsync__WriteMode m, int B)
{
    static Kbsync__Doc docs[1000];
    static Kbsync__Doc *dp[1000];
    static float v[1000][DIM];
    static char ids[1000][32], meta[1000][32];
    assert_true(B <= 1000);
    uint64_t version = 0;
    char err[512] = "";
    for (int from = 0; from < n; from += B) {
        int cnt = n - from < B ? n - from : B;
        for (int i = 0; i < cnt; i++) {
            kbsync__doc__init(&docs[i]);
            snprintf(ids[i], sizeof ids[i], "%s%d", prefix, from + i);
            snprintf(meta[i], sizeof meta[i], "{\"b\":%d}", (from + i) % 100);
            kbt_rand_unit(v[i], DIM, seed + (uint64_t)(from + i));
            docs[i].id = ids[i];
            docs[i].embedding = v[i];
            docs[i].n_embedding = DIM;
            docs[i].metadata_json = meta[i];
            dp[i] = &docs[i];
        }
        Kbsync__UpsertRequest up = KBSYNC__UPSERT_REQUEST__INIT;
        up.n_docs = (size_t)cnt;
        up.docs = dp;
        up.mode = m;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
        req.upsert = &up;
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_call(c, &req, TIMEOUT_MS, &r, err, sizeof err), err);
        expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
        version = r->write->version;
        kbsync__response__free_unpacked(r, NULL);
    }
    return version;
}

/* The fixture's node takes requests of MAX_MSG bytes: 20 docs each. */
static uint64_t bulk_upsert(qry_client_t *c, const char *prefix, int n,
                            uint64_t seed, Kbsync__WriteMode m)
{
    return bulk_upsert_b(c, prefix, n, seed, m, 20);
}

static Kbsync__NodeState *status_of(qry_client_t *c, Kbsync__Response **keep)
{
    *keep = status(c);
    expect_ok(*keep, KBSYNC__RESPONSE__BODY_STATUS);
    return (*keep)->status;
}

static void test_node_concurrent_queries_batched(void **state)
{
    fx_t *f = *state;
    bulk_upsert(f->c, "d", 30000, 1, KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT);
    enum { NQ = 64 };
    static float q[NQ][DIM];
    uint64_t rid[NQ];
    char err[512] = "";
    for (int i = 0; i < NQ; i++) {
        kbt_rand_unit(q[i], DIM, 90000 + (uint64_t)i);
        Kbsync__QueryRequest qr;
        Kbsync__Request req;
        query_init(&qr, &req, q[i], DIM, NULL, 200);
        KBT_OK(qry_client_send(f->c, &req, &rid[i], err, sizeof err), err);
    }
    Kbsync__Response *got[NQ] = {0};
    for (int i = 0; i < NQ; i++) {
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_recv(f->c, TIMEOUT_MS, &r, err, sizeof err), err);
        expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
        int j = 0;
        while (j < NQ && rid[j] != r->request_id)
            j++;
        assert_true(j < NQ && !got[j]);
        got[j] = r;
    }
    /* The readers searched them together: fewer FAISS calls than queries,
     * and some batch held more than one query. */
    Kbsync__Response *sr;
    Kbsync__NodeState *st = status_of(f->c, &sr);
    KBT_U64(st->queries, NQ);
    assert_true(st->query_batches < NQ);
    assert_int_equal(st->n_query_batch_hist, 7);
    assert_true(st->query_batch_hist[0] < st->query_batches);
    assert_true(st->query_threads >= 1);
    kbsync__response__free_unpacked(sr, NULL);
    /* Each batched answer equals the same query asked alone. */
    for (int i = 0; i < NQ; i++) {
        Kbsync__Response *one = query(f->c, q[i], DIM, NULL, 200);
        expect_ok(one, KBSYNC__RESPONSE__BODY_QUERY);
        assert_int_equal(one->query->n_hits, got[i]->query->n_hits);
        for (size_t h = 0; h < one->query->n_hits; h++) {
            assert_string_equal(one->query->hits[h]->id,
                                got[i]->query->hits[h]->id);
            KBT_NEAR(one->query->hits[h]->score,
                     got[i]->query->hits[h]->score, 1e-5);
        }
        kbsync__response__free_unpacked(one, NULL);
        kbsync__response__free_unpacked(got[i], NULL);
    }
}

/* A query behind its client's own write waits for that write's commit,
 * but does not commit early: the writes of one burst share commits. */
static void test_node_query_never_forces_a_commit(void **state)
{
    fx_t *f = *state;
    Kbsync__Response *sr;
    uint64_t commits0 = status_of(f->c, &sr)->commits;
    kbsync__response__free_unpacked(sr, NULL);
    enum { W = 8 };
    float v[DIM];
    kbt_rand_unit(v, DIM, 5);
    char err[512] = "";
    uint64_t rid[2 * W];
    for (int i = 0; i < W; i++) {
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        rid[2 * i] = send_upsert(f->c, id, v);
        Kbsync__QueryRequest q;
        Kbsync__Request qreq;
        query_init(&q, &qreq, v, DIM, NULL, 50);
        KBT_OK(qry_client_send(f->c, &qreq, &rid[2 * i + 1], err, sizeof err),
               err);
    }
    uint64_t wver[W] = {0};
    for (int n = 0; n < 2 * W; n++) {
        Kbsync__Response *r = NULL;
        KBT_OK(qry_client_recv(f->c, TIMEOUT_MS, &r, err, sizeof err), err);
        int j = 0;
        while (j < 2 * W && rid[j] != r->request_id)
            j++;
        assert_true(j < 2 * W);
        if (j % 2 == 0) {
            expect_ok(r, KBSYNC__RESPONSE__BODY_WRITE);
            wver[j / 2] = r->write->version;
        } else {
            expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
            /* its own write, answered before it, is in what it read */
            assert_true(wver[j / 2] > 0);
            assert_true(r->query->state->version >= wver[j / 2]);
            assert_true(count_hit(r, "w0") == 1);
        }
        kbsync__response__free_unpacked(r, NULL);
    }
    uint64_t commits1 = status_of(f->c, &sr)->commits;
    kbsync__response__free_unpacked(sr, NULL);
    /* One per query would be W; a burst lands in one or two groups. */
    if (commits1 - commits0 > W / 2)
        fail_msg("%llu commits for %d writes sent in one burst",
                 (unsigned long long)(commits1 - commits0), W);
}

/* A leader with --replicas r1 and a replica r1, both in this process. */
typedef struct cluster {
    char dir[300], ldir[320], rdir[320], lep[320], rep[320];
    char repl[64];
    node_run_t leader, replica;
    qry_client_t *cl, *cr;
} cluster_t;

static void cluster_free(cluster_t *c)
{
    qry_client_close(&c->cl);
    qry_client_close(&c->cr);
    node_stop(&c->replica);
    if (!node_stop(&c->leader))
        idx_close(&c->leader.ix);
    free(c);
}

static int free_port(void)
{
    void *ctx = zmq_ctx_new(), *s = zmq_socket(ctx, ZMQ_ROUTER);
    char ep[64];
    size_t len = sizeof ep;
    int port = -1;
    if (!zmq_bind(s, "tcp://127.0.0.1:*") &&
        !zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, ep, &len))
        port = atoi(strrchr(ep, ':') + 1);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return port;
}

static cluster_t *cluster_start(fx_t *f)
{
    if (live_cluster)
        cluster_free(live_cluster);
    live_cluster = NULL;
    cluster_t *c = live_cluster = calloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", f->tmp);
    snprintf(c->ldir, sizeof c->ldir, "%s/leader", f->tmp);
    snprintf(c->rdir, sizeof c->rdir, "%s/r1", f->tmp);
    snprintf(c->lep, sizeof c->lep, "%s/leader.ep", f->tmp);
    snprintf(c->rep, sizeof c->rep, "%s/r1.ep", f->tmp);
    snprintf(c->repl, sizeof c->repl, "tcp://127.0.0.1:%d", free_port());
    idx_config_t ic = {.dir = c->ldir, .dim = DIM, .node_id = "L",
                       .nosync = 1};
    idx_kb_t *ix = NULL;
    char err[512] = "";
    KBT_OK(idx_open(&ic, &ix, err, sizeof err), err);
    node_config_t lc = {.role = NODE_LEADER, .max_msg = 64u << 20};
    lc.leader.repl_listen = c->repl;
    lc.leader.replicas = "r1";
    lc.leader.default_mode = REPL_ASYNC;
    lc.leader.write_timeout_ms = TIMEOUT_MS;
    if (node_start_cfg(&c->leader, ix, c->lep, &lc))
        fail_msg("leader did not start: %s", c->leader.err);
    node_config_t rc = {.role = NODE_REPLICA, .max_msg = 64u << 20};
    rc.replica.id = "r1";
    rc.replica.leader = c->repl;
    rc.replica.data_dir = c->rdir;
    rc.replica.nosync = 1;
    if (node_start_cfg(&c->replica, NULL, c->rep, &rc))
        fail_msg("replica did not start: %s", c->replica.err);
    KBT_OK(qry_client_open(c->leader.endpoint, &c->cl, err, sizeof err), err);
    KBT_OK(qry_client_open(c->replica.endpoint, &c->cr, err, sizeof err),
           err);
    for (int i = 0;; i++) { /* until the leader counts r1 as connected */
        Kbsync__Response *r = status(c->cl);
        int up = !r->error && r->status->n_replicas == 1 &&
                 r->status->replicas[0]->connected;
        kbsync__response__free_unpacked(r, NULL);
        if (up)
            break;
        if (i == 1000)
            fail_msg("replica r1 did not connect within 10 s");
        kbt_sleep_ms(10);
    }
    return c;
}

/* Waits until the replica applied version v (10 s at most). */
static void replica_reaches(cluster_t *c, uint64_t v)
{
    for (int i = 0; i < 1000; i++) {
        Kbsync__Response *r = status(c->cr);
        uint64_t have = r->error ? 0 : r->status->version;
        kbsync__response__free_unpacked(r, NULL);
        if (have >= v)
            return;
        kbt_sleep_ms(10);
    }
    fail_msg("replica did not reach version %llu", (unsigned long long)v);
}

static void test_node_replica_min_version_waits_for_stream(void **state)
{
    cluster_t *c = cluster_start(*state);
    uint64_t v1 =
        bulk_upsert(c->cl, "a", 10, 1, KBSYNC__WRITE_MODE__WRITE_MODE_ALL);
    replica_reaches(c, v1);
    /* Ask the replica for a version nobody wrote yet, then write it. */
    float q[DIM];
    kbt_rand_unit(q, DIM, 1000); /* doc b0 below */
    Kbsync__QueryRequest qr;
    Kbsync__Request req;
    query_init(&qr, &req, q, DIM, NULL, 5);
    qr.min_version = v1 + 1;
    qr.wait_ms = 8000;
    uint64_t rid;
    char err[512] = "";
    KBT_OK(qry_client_send(c->cr, &req, &rid, err, sizeof err), err);
    Kbsync__Response *r = NULL;
    /* It waits instead of answering stale or refusing. */
    KBT_RC(qry_client_recv(c->cr, 300, &r, err, sizeof err), KB_ETIMEOUT, err);
    /* The same read with a wrong dimension is refused at once (KB_EDIM),
     * not after its wait with KB_ESTALE. */
    Kbsync__QueryRequest bad;
    Kbsync__Request breq;
    query_init(&bad, &breq, q, DIM - 1, NULL, 5);
    bad.min_version = v1 + 1;
    bad.wait_ms = 8000;
    uint64_t t0 = kb_mono_us();
    Kbsync__Response *br = call(c->cr, &breq);
    expect_error(br, KB_EDIM, NULL);
    kbsync__response__free_unpacked(br, NULL);
    assert_true(kb_mono_us() - t0 < 4000000u);
    uint64_t v2 =
        bulk_upsert(c->cl, "b", 1, 1000, KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC);
    assert_true(v2 > v1);
    KBT_OK(qry_client_recv(c->cr, TIMEOUT_MS, &r, err, sizeof err), err);
    KBT_U64(r->request_id, rid);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_true(r->query->state->version >= v2);
    assert_string_equal(r->query->state->role, "replica");
    assert_int_equal(count_hit(r, "b0"), 1);
    kbsync__response__free_unpacked(r, NULL);
}

/* Searches on a replica never hold back its acks: with hundreds of
 * queries queued on the replica (each in its own FAISS call), an `all`
 * write, which needs the replica's ack of its LSN, completes while most
 * of them are still unanswered. A node that searched on the thread that
 * applies the stream answers its queue first. */
static void test_node_replica_acks_not_held_back_by_searches(void **state)
{
    cluster_t *c = cluster_start(*state);
    uint64_t v = bulk_upsert_b(c->cl, "d", 30000, 1,
                               KBSYNC__WRITE_MODE__WRITE_MODE_ALL, 1000);
    replica_reaches(c, v);
    enum { NQ = 400 };
    char err[512] = "";
    for (int i = 0; i < NQ; i++) {
        float q[DIM];
        kbt_rand_unit(q, DIM, 5000 + (uint64_t)i);
        Kbsync__QueryRequest qr;
        Kbsync__Request req;
        query_init(&qr, &req, q, DIM, NULL, 1000);
        qr.ef_search = (uint32_t)(i + 1); /* no two share a FAISS call */
        uint64_t rid;
        KBT_OK(qry_client_send(c->cr, &req, &rid, err, sizeof err), err);
    }
    Kbsync__Response *r = NULL;
    KBT_OK(qry_client_recv(c->cr, TIMEOUT_MS, &r, err, sizeof err), err);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    kbsync__response__free_unpacked(r, NULL);
    int answered = 1;
    /* The replica is busy with the queue: write, and wait for its ack. */
    uint64_t w =
        bulk_upsert(c->cl, "x", 1, 77, KBSYNC__WRITE_MODE__WRITE_MODE_ALL);
    assert_true(w > v);
    while (qry_client_recv(c->cr, 0, &r, err, sizeof err) == 0) {
        answered++;
        kbsync__response__free_unpacked(r, NULL);
    }
    if (answered > NQ / 2)
        fail_msg("the replica acknowledged LSN %llu only after answering %d "
                 "of %d queued queries",
                 (unsigned long long)w, answered, NQ);
    /* The queue is still answered in full. */
    for (; answered < NQ; answered++) {
        KBT_OK(qry_client_recv(c->cr, TIMEOUT_MS, &r, err, sizeof err), err);
        expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
        kbsync__response__free_unpacked(r, NULL);
    }
    Kbsync__Response *sr;
    Kbsync__NodeState *st = status_of(c->cl, &sr);
    assert_int_equal(st->n_replicas, 1);
    assert_true(st->replicas[0]->version >= w);
    kbsync__response__free_unpacked(sr, NULL);
}

static void test_node_filters_and_search_params(void **state)
{
    fx_t *f = *state;
    bulk_upsert(f->c, "d", 2000, 1, KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT);
    float q[DIM];
    kbt_rand_unit(q, DIM, 3);
    Kbsync__Filter fl = KBSYNC__FILTER__INIT, *flp = &fl;
    fl.key = "b";
    fl.value = "42";
    Kbsync__QueryRequest qr;
    Kbsync__Request req;
    query_init(&qr, &req, q, DIM, NULL, 10);
    qr.filters = &flp;
    qr.n_filters = 1;
    Kbsync__Response *r = call(f->c, &req);
    expect_ok(r, KBSYNC__RESPONSE__BODY_QUERY);
    assert_int_equal(r->query->n_hits, 10); /* 20 docs have b = 42 */
    for (size_t i = 0; i < r->query->n_hits; i++)
        assert_int_equal(atoi(r->query->hits[i]->id + 1) % 100, 42);
    kbsync__response__free_unpacked(r, NULL);
    fl.key = "";
    r = call(f->c, &req);
    expect_error(r, KB_EINVAL, "key");
    kbsync__response__free_unpacked(r, NULL);
    qr.n_filters = 0;
    qr.ef_search = 5000;
    r = call(f->c, &req);
    expect_error(r, KB_EINVAL, "ef_search");
    kbsync__response__free_unpacked(r, NULL);
    qr.ef_search = 0;
    qr.text = "some words";
    r = call(f->c, &req);
    expect_error(r, KB_EINVAL, "both");
    kbsync__response__free_unpacked(r, NULL);
}

int main(void)
{
    kb_log_setup(KB_LOG_ERROR, "test_node");
    idx_setup(1); /* as kbsync's main does */
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_node_status),
        T(test_node_upsert_and_query_vector),
        T(test_node_query_text),
        T(test_node_delete_write_result),
        T(test_node_duplicate_ids_in_one_request),
        T(test_node_replica_before_contact_checks_what_it_can),
        T(test_node_errors_change_nothing),
        T(test_node_bad_protocol_version),
        T(test_node_garbage_bytes),
        T(test_node_oversize_message),
        T(test_node_far_oversize_dropped),
        T(test_node_req_socket),
        T(test_node_pipelined_read_your_writes),
        T(test_node_list_on_readers),
        T(test_node_two_clients_group_commit),
        T(test_node_cannot_start),
        T(test_node_concurrent_queries_batched),
        T(test_node_query_never_forces_a_commit),
        T(test_node_replica_min_version_waits_for_stream),
        T(test_node_replica_acks_not_held_back_by_searches),
        T(test_node_filters_and_search_params),
        cmocka_unit_test_setup_teardown(test_node_query_empty_kb, setup_tmp,
                                        teardown_tmp),
    };
#undef T
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (live_cluster)
        cluster_free(live_cluster);
    if (live)
        fx_free(live);
    if (live_tmp) {
        kbt_rmrf(live_tmp);
        free(live_tmp);
    }
    return failed;
}
