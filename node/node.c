/* node: the event loop of a kbsync node and the threads around it (see
 * node.h for who owns what).
 *
 * THE LOOP
 * One thread polls the client ROUTER, the readers' answer socket and the
 * role's replication socket. Each wake-up: replication first (applied
 * records can release parked reads), then up to NODE_DRAIN_MAX client
 * messages: writes are validated and queued for ONE group commit, queries
 * go to the reader pool, status is answered here; then the group commit
 * (repl_leader_flush), then heartbeats and timeouts. Answers the readers
 * pushed are forwarded to the clients whenever they are waiting.
 *
 * READ YOUR OWN WRITES, WITHOUT EXTRA COMMITS
 * A query (or status) from a client whose write is queued in the current
 * group is held until that group is committed, then handed to the readers:
 * a client always reads its own acknowledged and pipelined writes from the
 * node it wrote to, and a query never makes the leader commit early.
 *
 * STALENESS
 * Every query and status answer carries NodeState: version (LSN applied
 * here), leader_version (newest leader LSN known here), lag_ops =
 * leader_version - version, lag_ms (how long the oldest write not applied
 * here has been committed on the leader; rules in repl_replica.c) and
 * leader_contact_ms. On the leader the two versions are equal by definition
 * and both lags are 0. A query answer's version is the version its search
 * ran against.
 *
 * READ CONSISTENCY
 * min_version waits are query/qry_read.c's (the loop parks and releases the
 * queries); max_lag_ms is checked by the reader that answers
 * (query/qry_pool.c). A replica that has not yet received the leader's
 * settings answers KB_EUNAVAIL. */
#include "node.h"
#include "node_metrics.h"

#include "kb_sec.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"
#include "qry_pool.h"
#include "qry_read.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define NODE_DRAIN_MAX 256    /* client messages handled per wake-up */
#define NODE_FORWARD_MAX 4096 /* answers forwarded per wake-up */
#define NODE_GROUP_MAX 100000 /* ops in one group commit */

typedef struct waiting { /* a request held in the loop */
    kb_peer_t peer;
    Kbsync__Request *req;
    int role; /* kb_role_t of the key it came with */
} waiting_t;

typedef struct wlist {
    waiting_t *w;
    size_t n, cap;
} wlist_t;

#define NODE_TOP_CLIENTS 32

/* The status answer's list of client queues (built by the node loop). */
typedef struct top_clients {
    char hex[NODE_TOP_CLIENTS][512];
    uint64_t bytes[NODE_TOP_CLIENTS];
    int over[NODE_TOP_CLIENTS];
    Kbsync__ClientQueue cq[NODE_TOP_CLIENTS];
    Kbsync__ClientQueue *cqp[NODE_TOP_CLIENTS];
} top_clients_t;

#define NODE_VERIFY_MAX 16 /* verify requests waiting at once */

typedef struct node {
    idx_kb_t *ix; /* leader: borrowed; replica: repl_replica's */
    const node_config_t *cfg;
    void *ctx, *router, *answers;
    repl_leader_t *leader;
    repl_replica_t *replica;
    pthread_rwlock_t ix_lock; /* see node.h */
    qry_pool_t *pool;
    int threads;
    qry_read_t *reads; /* queries waiting for min_version */
    /* kbsync verify requests waiting for a digest-check pass of ix */
    struct verify_wait {
        kb_peer_t peer;
        uint64_t rid, at_lsn, need;
        idx_kb_t *ix;
    } vw[NODE_VERIFY_MAX];
    size_t nvw;
    wlist_t held;      /* requests waiting for their client's queued write */
    kb_peer_t *writers; /* clients with a write in the current group */
    size_t nwriters, wcap;
    kb_loglimit_t log_bad_req, log_bad_env, log_queue; /* kb_log_limited */
    kb_zap_t *zap;      /* CURVE: the ZAP handler (cfg->trust_file) */
    kb_role_t req_role; /* role of the request being dispatched */
    qry_outq_t *outq;   /* unread answers per client */
    top_clients_t top;  /* status: clients with unread answers */
    node_metrics_t *metrics; /* --metrics-listen: its loop-side socket */
    int stats_nowait; /* node_state for a scrape: idx_stats_try */
} node_t;

/* ----------------------------------------------------------- helpers */

static int wlist_push(wlist_t *l, const kb_peer_t *peer, Kbsync__Request *req,
                      int role)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        waiting_t *w = realloc(l->w, cap * sizeof *w);
        if (!w)
            return KB_ENOMEM;
        l->w = w;
        l->cap = cap;
    }
    l->w[l->n].peer = *peer;
    l->w[l->n].req = req;
    l->w[l->n].role = role;
    l->n++;
    return 0;
}

static int same_client(const kb_peer_t *a, const kb_peer_t *b)
{
    /* The ROUTER's routing id (first frame) names the connection. */
    return a->nframes && b->nframes && a->len[0] == b->len[0] &&
           !memcmp(a->frame[0], b->frame[0], a->len[0]);
}

static int has_queued_write(const node_t *n, const kb_peer_t *peer)
{
    for (size_t i = 0; i < n->nwriters; i++)
        if (same_client(&n->writers[i], peer))
            return 1;
    return 0;
}

static void note_writer(node_t *n, const kb_peer_t *peer)
{
    if (has_queued_write(n, peer))
        return;
    if (n->nwriters == n->wcap) {
        size_t cap = n->wcap ? n->wcap * 2 : 16;
        kb_peer_t *w = realloc(n->writers, cap * sizeof *w);
        if (!w)
            return; /* its reads then run at once: still after it arrived */
        n->writers = w;
        n->wcap = cap;
    }
    n->writers[n->nwriters++] = *peer;
}

static idx_kb_t *node_idx(node_t *n)
{
    return n->replica ? repl_replica_idx(n->replica) : n->ix;
}

/* ------------------------------------------------- the readers' source */

static idx_kb_t *src_acquire(void *ctx)
{
    node_t *n = ctx;
    pthread_rwlock_rdlock(&n->ix_lock);
    idx_kb_t *ix = node_idx(n);
    if (!ix)
        pthread_rwlock_unlock(&n->ix_lock);
    return ix;
}

static void src_release(void *ctx)
{
    node_t *n = ctx;
    pthread_rwlock_unlock(&n->ix_lock);
}

static void src_state(void *ctx, idx_kb_t *ix, const idx_view_t *v,
                      Kbsync__NodeState *s)
{
    node_t *n = ctx;
    kbsync__node_state__init(s);
    const Kbsync__KbMeta *m = idx_meta(ix); /* immutable after open */
    s->node_id = m->node_id;
    s->dim = m->dim;
    s->metric = m->metric;
    s->index = m->index;
    s->version = v->version;
    s->docs = v->docs;
    if (n->replica) {
        s->role = "replica";
        repl_replica_staleness(n->replica, v, s);
    } else {
        s->role = "leader";
        s->leader_version = s->version;
    }
}

/* ------------------------------------------------------------- status */

/* NodeState for status answers and refusals, on the loop thread. hist (7
 * entries) backs query_batch_hist. */
static void node_state(node_t *n, Kbsync__NodeState *s, uint64_t *hist,
                       int with_replicas)
{
    kbsync__node_state__init(s);
    idx_kb_t *ix = node_idx(n);
    if (ix) {
        idx_stats_t st;
        if (n->stats_nowait)
            idx_stats_try(ix, &st);
        else
            idx_stats(ix, &st);
        s->node_id = (char *)st.node_id;
        s->version = st.version;
        s->docs = st.docs;
        s->dim = st.dim;
        s->metric = (char *)st.metric;
        s->index = (char *)st.index;
        s->index_bytes = st.index_bytes;
        s->store_bytes = st.store_bytes;
        s->vectors = st.vectors;
        s->dead_vectors = st.dead;
        s->unmerged_vectors = st.unmerged;
        s->index_trained = st.trained;
        s->rebuilding = st.rebuilding;
        s->rebuilds = st.rebuilds;
        s->commits = st.commits;
        s->synced_commits = st.synced_commits;
        s->lazy_commits = st.lazy_commits;
        s->store_syncs = st.store_syncs;
        s->log_start = idx_log_start(ix);
        s->durable_version = st.durable;
        repl_snapshot_t sp;
        if (n->replica && repl_replica_snapshot(n->replica, &sp)) {
            s->snapshot_lsn = sp.lsn;
            s->snapshot_docs_total = sp.docs_total;
            s->snapshot_docs_loaded = sp.docs_loaded;
            s->snapshot_bytes_loaded = sp.bytes_loaded;
            s->snapshot_eta_ms = sp.eta_ms;
        }
        uint64_t now = kb_wall_us();
        s->checkpoint_lsn = st.ckpt_lsn;
        s->checkpoint_age_ms =
            st.ckpt_us && now > st.ckpt_us ? (now - st.ckpt_us) / 1000 : 0;
        s->checkpoint_write_ms = (uint64_t)(st.ckpt_s * 1000);
        s->checkpointing = st.checkpointing;
        s->index_from_checkpoint = st.ckpt_loaded;
        s->index_open_ms = (uint64_t)(st.rebuild_s * 1000);
        if (hist) { /* status answers: the node loop */
            idx_digest(ix, &s->digest_lsn, &s->digest);
            idx_check_t ck;
            idx_check_state(ix, &ck);
            s->digest_checks = ck.passes;
            s->digest_check_ms = ck.last_ms;
            s->digest_check_mismatches = ck.mismatches;
            s->digest_check_yields = ck.yielded;
            s->digest_check_skips = ck.unchanged;
        }
    } else {
        s->node_id = (char *)n->cfg->replica.id;
    }
    s->query_threads = (uint32_t)n->threads;
    s->insecure = n->cfg->insecure != 0;
    if (n->pool && hist) {
        qry_pool_stats_t ps;
        qry_pool_stats(n->pool, &ps);
        s->queries = ps.queries;
        s->query_batches = ps.batches;
        qry_outq_stats_t qs;
        qry_outq_stats(n->outq, &qs);
        s->client_queue_bytes = qs.bytes;
        s->clients_over_queue_limit = qs.clients_over;
        s->dropped_client_answers = qs.dropped_answers;
        s->dropped_client_requests = qs.dropped_requests;
        size_t nt = qry_outq_top(n->outq, NODE_TOP_CLIENTS, n->top.hex,
                                 n->top.bytes, n->top.over);
        for (size_t i = 0; i < nt; i++) {
            kbsync__client_queue__init(&n->top.cq[i]);
            n->top.cq[i].client = n->top.hex[i];
            n->top.cq[i].bytes = n->top.bytes[i];
            n->top.cq[i].over_limit = n->top.over[i];
            n->top.cqp[i] = &n->top.cq[i];
        }
        s->client_queues = n->top.cqp;
        s->n_client_queues = nt;
        memcpy(hist, ps.hist, sizeof ps.hist);
        s->query_batch_hist = hist;
        s->n_query_batch_hist = QRY_HIST_BUCKETS;
    }
    if (n->replica) {
        s->role = "replica";
        repl_replica_staleness(n->replica, NULL, s);
        s->digest_resyncs = repl_replica_resyncs(n->replica);
    } else {
        s->role = "leader";
        s->leader_version = s->version;
        /* With CURVE, replica details are for admin keys only. */
        if (with_replicas && (!n->cfg->curve || n->req_role == KB_ROLE_ADMIN))
            repl_leader_replicas(n->leader, &s->replicas, &s->n_replicas);
        if (with_replicas)
            repl_leader_dedup_stats(n->leader, &s->idempotency_entries,
                                    &s->idempotent_retries);
    }
}

/* A scrape of --metrics-listen: the page from this moment's state, with
 * the replica details status gives admin keys. */
static void node_metrics_answer(node_t *n)
{
    zmq_msg_t req;
    zmq_msg_init(&req);
    int got = zmq_msg_recv(&req, node_metrics_socket(n->metrics),
                           ZMQ_DONTWAIT);
    zmq_msg_close(&req);
    if (got < 0)
        return;
    Kbsync__NodeState s;
    uint64_t hist[QRY_HIST_BUCKETS];
    kb_role_t role = n->req_role;
    n->req_role = KB_ROLE_ADMIN;
    n->stats_nowait = 1; /* a scrape never waits for a merge step */
    node_state(n, &s, hist, 1);
    n->stats_nowait = 0;
    n->req_role = role;
    size_t len = 0;
    char *page = node_metrics_render(&s, &len);
    static const char oom[] = "# out of memory rendering the metrics\n";
    zmq_send(node_metrics_socket(n->metrics), page ? page : oom,
             page ? len : sizeof oom - 1, 0);
    free(page);
}

static void node_status(node_t *n, const kb_peer_t *peer, uint64_t rid)
{
    Kbsync__NodeState s;
    uint64_t hist[QRY_HIST_BUCKETS];
    node_state(n, &s, hist, 1);
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_STATUS;
    r.status = &s;
    kb_wire_send_response(n->router, peer, &r);
}

/* ------------------------------------------------------------ queries */

/* Read consistency (min_version) is query/qry_read's; this is how it sees
 * the node. */
static void read_run(void *ctx, const kb_peer_t *peer, Kbsync__Request *req)
{
    node_t *n = ctx;
    qry_pool_submit(n->pool, peer, req);
}

static void read_state(void *ctx, Kbsync__NodeState *s)
{
    node_state(ctx, s, NULL, 0);
}

/* qry_read's cheap view of where the node stands: no index lock (a
 * bounded read's admission runs on the loop, which must never wait behind
 * a merge step or a search). */
static void read_staleness(void *ctx, Kbsync__NodeState *s)
{
    node_t *n = ctx;
    kbsync__node_state__init(s);
    idx_kb_t *ix = node_idx(n);
    if (n->replica) {
        s->node_id = (char *)n->cfg->replica.id;
        repl_replica_staleness(n->replica, NULL, s);
    } else if (ix) {
        idx_view_t v;
        idx_view(ix, &v);
        s->node_id = ((const Kbsync__KbMeta *)idx_meta(ix))->node_id;
        s->version = s->leader_version = v.version;
    }
}

static uint64_t read_index_begin(void *ctx)
{
    node_t *n = ctx;
    return repl_replica_read_index_begin(n->replica);
}

static int read_check(void *ctx, const Kbsync__QueryRequest *q, char *err,
                      size_t errlen)
{
    return qry_pool_check(node_idx(ctx), q, err, errlen);
}

static qry_read_node_t read_node(node_t *n)
{
    qry_read_node_t r = {.ctx = n,
                         .leader = !n->replica,
                         .run = read_run,
                         .state = read_state,
                         .staleness = read_staleness,
                         .check = read_check};
    if (n->replica) {
        r.ri_begin = read_index_begin;
        repl_replica_read_index(n->replica, &r.ri_seq, &r.ri_lsn);
    }
    idx_kb_t *ix = node_idx(n);
    if (ix) {
        idx_view_t v;
        idx_view(ix, &v);
        r.has_kb = 1;
        /* A snapshot being loaded is not a state of the knowledge base at
         * any version: min_version reads wait for it to complete. */
        r.version = idx_loading(ix) ? 0 : v.version;
    }
    return r;
}

static void node_query(node_t *n, const kb_peer_t *peer, Kbsync__Request *req)
{
    repl_snapshot_t sp;
    if (n->replica && repl_replica_snapshot(n->replica, &sp)) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "replica is loading a snapshot from its leader: %llu of "
                 "%llu documents (%.1f MB), LSN %llu of %llu, about %llu ms "
                 "left; it answers once the snapshot is complete",
                 (unsigned long long)sp.docs_loaded,
                 (unsigned long long)sp.docs_total,
                 sp.bytes_loaded / 1048576.0, (unsigned long long)sp.version,
                 (unsigned long long)sp.lsn, (unsigned long long)sp.eta_ms);
        kb_wire_send_error(n->router, peer, req->request_id, KB_EUNAVAIL,
                           msg);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    qry_read_node_t rn = read_node(n);
    qry_read_admit(n->reads, n->router, &rn, peer, req);
}

static void node_unpark(node_t *n)
{
    qry_read_node_t rn = read_node(n);
    qry_read_release(n->reads, n->router, &rn);
}

/* ListRequest: the leader's live documents by id (idx_list), read by a
 * reader thread (qry_pool: LISTINGS); takes req. Replicas refuse it: their
 * stores may hold records the leader has not confirmed yet, which a
 * listing must not show. */
static void node_list(node_t *n, const kb_peer_t *peer, Kbsync__Request *req)
{
    if (n->replica) {
        char err[512];
        const char *ep = repl_replica_leader_endpoint(n->replica);
        snprintf(err, sizeof err,
                 "this node is replica %s; list documents on the leader at %s",
                 n->cfg->replica.id, *ep ? ep : n->cfg->replica.leader);
        kb_wire_send_error(n->router, peer, req->request_id, KB_ENOTLEADER,
                           err);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    qry_pool_submit(n->pool, peer, req);
}

/* ------------------------------------------------------------ requests */

static void node_dispatch(node_t *n, const kb_peer_t *peer,
                          Kbsync__Request *req);

/* Commits the queued group, then lets the requests held behind it run. */
static void node_flush(node_t *n)
{
    if (n->leader)
        repl_leader_flush(n->leader, n->router);
    n->nwriters = 0;
    wlist_t held = n->held;
    n->held = (wlist_t){0};
    for (size_t i = 0; i < held.n; i++) {
        n->req_role = (kb_role_t)held.w[i].role;
        node_dispatch(n, &held.w[i].peer, held.w[i].req);
    }
    free(held.w);
}

static void node_rebuild(node_t *n, const kb_peer_t *peer, uint64_t rid)
{
    idx_kb_t *ix = node_idx(n);
    if (!ix) {
        kb_wire_send_error(n->router, peer, rid, KB_EUNAVAIL,
                           QRY_NO_KB_MSG);
        return;
    }
    idx_rebuild_start(ix);
    node_status(n, peer, rid);
}

/* kbsync verify (see VerifyRequest): the answer to a finished check. */
static void verify_answer(node_t *n, const kb_peer_t *peer, uint64_t rid,
                          idx_kb_t *ix, uint64_t at_lsn, uint64_t lsn,
                          uint64_t kept, uint64_t computed, uint64_t docs)
{
    Kbsync__VerifyResult v = KBSYNC__VERIFY_RESULT__INIT;
    v.lsn = lsn;
    v.kept = kept;
    v.computed = computed;
    v.docs = docs;
    if (at_lsn)
        v.has_at = idx_digest_at(ix, at_lsn, &v.digest_at) == 0;
    idx_stats_t st;
    idx_stats_stream(ix, &st);
    v.node_id = (char *)(n->replica ? n->cfg->replica.id : st.node_id);
    v.role = n->replica ? "replica" : "leader";
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_VERIFY;
    r.verify = &v;
    kb_wire_send_response(n->router, peer, &r);
}

/* kbsync verify: asks the digest-check thread for a pass now and answers
 * when it has ended (node_verify_release); the loop goes on meanwhile.
 * The thread runs with the background checks off too (requested passes
 * only), so verifies never run on the loop and at most NODE_VERIFY_MAX
 * wait either way; without a thread (none here today) the check would
 * run on the loop. */
static void node_verify(node_t *n, const kb_peer_t *peer, uint64_t rid,
                        uint64_t at_lsn)
{
    idx_kb_t *ix = node_idx(n);
    char err[512];
    if (!ix || (n->replica && idx_loading(ix))) {
        kb_wire_send_error(n->router, peer, rid, KB_EUNAVAIL,
                           ix ? "loading a snapshot: its documents are not a "
                                "state of the knowledge base yet"
                              : "no knowledge base yet");
        return;
    }
    if (n->nvw == NODE_VERIFY_MAX) {
        kb_wire_send_error(n->router, peer, rid, KB_EUNAVAIL,
                           "too many verify requests waiting; ask again "
                           "once they are answered");
        return;
    }
    uint64_t need = idx_check_request(ix);
    if (need) {
        struct verify_wait *w = &n->vw[n->nvw++];
        w->peer = *peer;
        w->rid = rid;
        w->at_lsn = at_lsn;
        w->need = need;
        w->ix = ix;
        return;
    }
    uint64_t lsn, kept, computed, docs;
    int rc = idx_check_now(ix, &lsn, &kept, &computed, &docs, err, sizeof err);
    if (rc)
        kb_wire_send_error(n->router, peer, rid, rc, err);
    else
        verify_answer(n, peer, rid, ix, at_lsn, lsn, kept, computed, docs);
}

/* Answers the verify requests whose check has ended. */
static void node_verify_release(node_t *n, int closing)
{
    idx_kb_t *ix = node_idx(n);
    size_t keep = 0;
    for (size_t i = 0; i < n->nvw; i++) {
        struct verify_wait *w = &n->vw[i];
        idx_check_t ck = {0};
        if (w->ix == ix && ix)
            idx_check_state(ix, &ck);
        if (w->ix != ix || closing) {
            kb_wire_send_error(n->router, &w->peer, w->rid, KB_EUNAVAIL,
                               closing ? "node is shutting down"
                                       : "the knowledge base was replaced "
                                         "during the check; ask again");
        } else if (ck.ended >= w->need) {
            if (ck.last_ok >= w->need)
                verify_answer(n, &w->peer, w->rid, ix, w->at_lsn, ck.last_lsn,
                              ck.last_stored, ck.last_scanned, ck.docs);
            else
                kb_wire_send_error(n->router, &w->peer, w->rid, KB_ESTORE,
                                   "the digest check failed (see the node's "
                                   "log)");
        } else {
            n->vw[keep++] = *w;
        }
    }
    n->nvw = keep;
}

/* Runs a decoded request; takes ownership of req. */
static void node_dispatch(node_t *n, const kb_peer_t *peer,
                          Kbsync__Request *req)
{
    char err[512];
    uint64_t rid = req->request_id;
    switch (req->body_case) {
    case KBSYNC__REQUEST__BODY_UPSERT:
    case KBSYNC__REQUEST__BODY_DELETE:
        if (n->replica) {
            const char *ep = repl_replica_leader_endpoint(n->replica);
            snprintf(err, sizeof err,
                     "this node is replica %s and does not accept writes; "
                     "send them to the leader at %s",
                     n->cfg->replica.id, *ep ? ep : n->cfg->replica.leader);
            kb_wire_send_error(n->router, peer, rid, KB_ENOTLEADER, err);
            break;
        }
        note_writer(n, peer);
        repl_leader_submit(n->leader, n->router, peer, req); /* takes req */
        if (repl_leader_queued(n->leader) >= NODE_GROUP_MAX)
            node_flush(n);
        return;
    case KBSYNC__REQUEST__BODY_QUERY:
    case KBSYNC__REQUEST__BODY_STATUS:
    case KBSYNC__REQUEST__BODY_REBUILD:
    case KBSYNC__REQUEST__BODY_LIST:
        if (has_queued_write(n, peer)) {
            if (wlist_push(&n->held, peer, req, (int)n->req_role)) {
                kb_wire_send_error(n->router, peer, rid, KB_ENOMEM,
                                   "out of memory");
                break;
            }
            return;
        }
        if (req->body_case == KBSYNC__REQUEST__BODY_QUERY) {
            node_query(n, peer, req); /* takes req */
            return;
        }
        if (req->body_case == KBSYNC__REQUEST__BODY_LIST) {
            node_list(n, peer, req); /* takes req */
            return;
        }
        if (req->body_case == KBSYNC__REQUEST__BODY_STATUS)
            node_status(n, peer, rid);
        else
            node_rebuild(n, peer, rid);
        break;
    case KBSYNC__REQUEST__BODY_VERIFY:
        node_verify(n, peer, rid, req->verify->at_lsn);
        break;
    default:
        kb_wire_send_error(n->router, peer, rid, KB_EBADMSG,
                           "unknown request body");
        break;
    }
    kbsync__request__free_unpacked(req, NULL);
}

static void node_handle(node_t *n, const kb_peer_t *peer, const kb_buf_t *b)
{
    char err[512];
    if (peer->nframes &&
        qry_outq_over(n->outq, peer->frame[0], peer->len[0])) {
        /* It does not read its answers: no more work for it until it does
         * (an error answer would only join the queue). */
        qry_outq_count_dropped_request(n->outq);
        kb_log_limited(&n->log_queue, KB_LOG_WARN,
                       "dropped a request from a client with more than %llu "
                       "MB of answers unread (--max-client-queue-mb); its "
                       "requests and answers are dropped until it reads them",
                       (unsigned long long)(n->cfg->max_client_queue
                                                ? n->cfg->max_client_queue >> 20
                                                : NODE_CLIENT_QUEUE_DEFAULT >>
                                                      20));
        return;
    }
    Kbsync__Request *req;
    uint64_t rid;
    int rc = kb_wire_decode_request(b->data, b->len, n->cfg->max_msg, &req,
                                    &rid, err, sizeof err);
    if (!rc && n->cfg->curve) {
        /* With CURVE every peer has a trusted key and its role. */
        kb_role_t role = kb_sec_role(zmq_msg_gets(b->priv, "User-Id"), NULL);
        int write = req->body_case == KBSYNC__REQUEST__BODY_UPSERT ||
                    req->body_case == KBSYNC__REQUEST__BODY_DELETE ||
                    req->body_case == KBSYNC__REQUEST__BODY_REBUILD ||
                    req->body_case == KBSYNC__REQUEST__BODY_VERIFY;
        int ok = write ? role == KB_ROLE_WRITER || role == KB_ROLE_ADMIN
                       : role == KB_ROLE_READER || role == KB_ROLE_WRITER ||
                             role == KB_ROLE_ADMIN;
        if (!ok) {
            rc = kb_seterr(err, sizeof err, KB_EACCES,
                           "this key's role (%s) may not %s",
                           role == KB_ROLE_REPLICA ? "replica"
                           : role == KB_ROLE_READER ? "reader"
                                                    : "none",
                           write ? "write (upsert, delete, rebuild and "
                                   "verify need writer or admin)"
                                 : "use the client API (reader, writer or "
                                   "admin may)");
            kbsync__request__free_unpacked(req, NULL);
            kb_log_limited(&n->log_bad_req, KB_LOG_WARN, "refused a request: %s",
                           err);
            kb_wire_send_error(n->router, peer, rid, rc, err);
            return;
        }
        n->req_role = role;
    }
    if (rc) {
        kb_log_limited(&n->log_bad_req, KB_LOG_WARN, "refused a request: %s",
                       err);
        kb_wire_send_error(n->router, peer, rid, rc, err);
        return;
    }
    node_dispatch(n, peer, req);
}

static void node_forward(node_t *n)
{
    for (int i = 0; i < NODE_FORWARD_MAX; i++)
        if (qry_pool_forward(n->answers, n->router, n->outq, n->pool))
            break;
}

/* ------------------------------------------------------------- set-up */

static int node_open(node_t *n, char *err, size_t errlen)
{
    n->ctx = zmq_ctx_new();
    if (!n->ctx)
        return kb_seterr(err, errlen, KB_ENET, "zmq_ctx_new failed");
    n->router = zmq_socket(n->ctx, ZMQ_ROUTER);
    n->answers = zmq_socket(n->ctx, ZMQ_PULL);
    if (!n->router || !n->answers)
        return kb_seterr(err, errlen, KB_ENET, "zmq_socket: %s",
                         zmq_strerror(errno));
    int zero = 0;
    /* A message far above max_msg is dropped by ZeroMQ itself (the sender's
     * connection is closed); between max_msg and this, the sender gets a
     * clear KB_ETOOBIG answer. */
    int64_t hard = (int64_t)n->cfg->max_msg * 4 + (1 << 20);
    zmq_setsockopt(n->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(n->router, ZMQ_MAXMSGSIZE, &hard, sizeof hard);
    /* ROUTER drops answers silently past its send queue limit (1000 by
     * default): let pipelining clients have many requests in flight. */
    int hwm = 100000;
    zmq_setsockopt(n->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(n->answers, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(n->answers, ZMQ_RCVHWM, &zero, sizeof zero);
    char aep[64];
    snprintf(aep, sizeof aep, "inproc://kb-answers-%p", (void *)n);
    if (zmq_bind(n->answers, aep))
        return kb_seterr(err, errlen, KB_ENET, "cannot bind %s: %s", aep,
                         zmq_strerror(errno));
    uint64_t lim = n->cfg->max_client_queue ? n->cfg->max_client_queue
                                            : NODE_CLIENT_QUEUE_DEFAULT;
    if (qry_outq_new(lim == UINT64_MAX ? 0 : lim, &n->outq))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (n->cfg->curve) {
        /* The ZAP handler first: CURVE handshakes ask it at once. */
        int zrc = kb_zap_start(n->ctx, n->cfg->trust_file, &n->zap, err,
                               errlen);
        if (zrc)
            return zrc;
        const kb_curve_t *cv = n->cfg->curve;
        int one = 1;
        if (zmq_setsockopt(n->router, ZMQ_CURVE_PUBLICKEY, cv->pub, 40) ||
            zmq_setsockopt(n->router, ZMQ_CURVE_SECRETKEY, cv->sec, 40) ||
            zmq_setsockopt(n->router, ZMQ_CURVE_SERVER, &one, sizeof one) ||
            zmq_setsockopt(n->router, ZMQ_ZAP_DOMAIN, "kbsync-client", 13))
            return kb_seterr(err, errlen, KB_ENET, "CURVE: %s",
                             zmq_strerror(errno));
    }
    if (zmq_bind(n->router, n->cfg->listen))
        return kb_seterr(err, errlen, KB_ENET, "cannot listen on %s: %s",
                         n->cfg->listen, zmq_strerror(errno));
    char ep[256];
    size_t eplen = sizeof ep;
    zmq_getsockopt(n->router, ZMQ_LAST_ENDPOINT, ep, &eplen);
    int rc;
    if (n->cfg->role == NODE_REPLICA) {
        repl_replica_config_t rc2 = n->cfg->replica;
        rc2.ix_lock = &n->ix_lock;
        rc = repl_replica_new(n->ctx, &rc2, &n->replica, err, errlen);
    } else {
        repl_leader_config_t lc = n->cfg->leader;
        lc.client_endpoint = ep;
        rc = repl_leader_new(n->ix, n->ctx, &lc, &n->leader, err, errlen);
    }
    if (rc)
        return rc;
    n->threads = n->cfg->query_threads;
    if (n->threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n->threads = cores > 0 ? (int)cores : 1;
    }
    qry_pool_config_t pc = {.threads = n->threads,
                            .zctx = n->ctx,
                            .answer_ep = aep,
                            .src = {n, src_acquire, src_release, src_state},
                            .outq = n->outq,
                            /* the message limit, both ways (at least
                             * 1 MiB: tests take requests of a few KB) */
                            .max_answer = n->cfg->max_msg > (1u << 20)
                                              ? n->cfg->max_msg
                                              : (1u << 20)};
    rc = qry_pool_new(&pc, &n->pool, err, errlen);
    if (!rc && qry_read_new(&n->reads))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (rc)
        return rc;
    if (n->cfg->metrics_listen &&
        (rc = node_metrics_start(n->ctx, n->cfg->metrics_listen, &n->metrics,
                                 err, errlen)))
        return rc;
    kb_info("%s serving clients on %s with %d query threads",
            n->cfg->role == NODE_REPLICA ? "replica" : "leader", ep,
            n->threads);
    if (n->cfg->endpoint_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", n->cfg->endpoint_file);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", ep) < 0 || fclose(f) ||
            rename(tmp, n->cfg->endpoint_file))
            return kb_seterr(err, errlen, -errno,
                             "cannot write endpoint file %s: %s",
                             n->cfg->endpoint_file, strerror(errno));
    }
    return 0;
}

static void refuse_all(node_t *n, wlist_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        kb_wire_send_error(n->router, &l->w[i].peer, l->w[i].req->request_id,
                           KB_EUNAVAIL, "node is shutting down");
        kbsync__request__free_unpacked(l->w[i].req, NULL);
    }
    free(l->w);
    *l = (wlist_t){0};
}

int node_run(idx_kb_t *ix, const node_config_t *cfg,
             volatile sig_atomic_t *stop, char *err, size_t errlen)
{
    node_t n = {.ix = ix, .cfg = cfg};
    /* Writers preferred: readers hold it for whole batches, and a replica
     * that must replace its knowledge base must not wait behind a stream
     * of them. */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&n.ix_lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    int rc = node_open(&n, err, errlen);
    int timeout = 0;
    while (!rc && !*stop) {
        zmq_pollitem_t items[4] = {{n.router, 0, ZMQ_POLLIN, 0},
                                   {n.answers, 0, ZMQ_POLLIN, 0},
                                   {NULL, 0, ZMQ_POLLIN, 0},
                                   {NULL, 0, ZMQ_POLLIN, 0}};
        int nitems = 2;
        if (n.metrics)
            items[nitems++].socket = node_metrics_socket(n.metrics);
        void *rs = n.leader ? repl_leader_socket(n.leader)
                            : repl_replica_socket(n.replica);
        if (rs)
            items[nitems++].socket = rs;
        if (n.reads)
            timeout = qry_read_next_ms(n.reads, timeout);
        int pr = zmq_poll(items, nitems, timeout);
        if (pr < 0) {
            if (errno == EINTR)
                continue;
            rc = kb_seterr(err, errlen, KB_ENET, "zmq_poll: %s",
                           zmq_strerror(errno));
            break;
        }
        /* Replication first: applied records can release parked reads. */
        if (n.replica) {
            if (repl_replica_on_msg(n.replica))
                node_unpark(&n);
        } else {
            repl_leader_on_repl(n.leader, n.router);
        }
        node_forward(&n);
        for (int i = 0; i < NODE_DRAIN_MAX; i++) {
            kb_peer_t peer;
            kb_buf_t b;
            int r = kb_wire_recv(n.router, &peer, &b);
            if (r == -EAGAIN || r == -EINTR)
                break;
            if (r) {
                kb_log_limited(&n.log_bad_env, KB_LOG_WARN,
                               "dropped a malformed message envelope (%s)",
                               kb_strerror(r));
                continue;
            }
            node_handle(&n, &peer, &b);
            kb_buf_free(&b);
        }
        node_flush(&n);
        if (n.metrics)
            node_metrics_answer(&n);
        timeout = n.leader ? repl_leader_tick(n.leader, n.router)
                           : repl_replica_tick(n.replica);
        {
            idx_kb_t *kb = node_idx(&n);
            if (kb)
                idx_maintain(kb); /* rebuild due after the last writes? */
        }
        node_unpark(&n);
        node_verify_release(&n, 0);
        node_forward(&n);
    }
    if (n.leader) {
        node_flush(&n);
        repl_leader_shutdown(n.leader, n.router);
    }
    qry_pool_free(&n.pool, n.router); /* joins the readers */
    if (n.answers && n.router)
        node_forward(&n);
    node_verify_release(&n, 1);
    qry_read_free(&n.reads, n.router);
    refuse_all(&n, &n.held);
    free(n.writers);
    repl_leader_free(&n.leader);
    repl_replica_free(&n.replica);
    if (n.answers)
        zmq_close(n.answers);
    if (n.router)
        zmq_close(n.router);
    node_metrics_stop(&n.metrics); /* joins its HTTP thread */
    kb_zap_stop(&n.zap); /* its socket must close before the context */
    if (n.ctx)
        zmq_ctx_term(n.ctx);
    qry_outq_free(&n.outq); /* no answer is in flight any more */
    pthread_rwlock_destroy(&n.ix_lock);
    if (!rc)
        kb_info("stopped cleanly");
    return rc;
}
