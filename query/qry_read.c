/* qry_read: min_version waits (see qry_read.h).
 *
 * READ-YOUR-WRITES
 * QueryRequest.min_version is the version a write returned. A node at or
 * above it runs the query at once. A replica below it parks the query for
 * wait_ms (0 = QRY_WAIT_DEFAULT_MS, at most QRY_WAIT_MAX_MS) and runs it as
 * soon as the stream brings the node there; past the deadline it refuses
 * with KB_ESTALE naming its version, the requested one, the wait, the
 * leader's version and the lag. A leader holds every acknowledged version,
 * so a token above its version was never handed out: refused at once. A
 * replica without a knowledge base yet parks the query too (its settings
 * and records may arrive within the wait).
 *
 * STRONG READS
 * A READ_STRONG query on a leader runs at once with min_version raised to
 * the leader's version. On a replica it is parked, the replica asks the
 * leader for its committed LSN (repl_replica_read_index_begin(), with a
 * request sent after the query arrived), and once the answer comes the
 * query waits like a min_version read for that LSN. No answer within
 * wait_ms: KB_ESTALE saying the leader did not answer.
 *
 * BOUNDED READS
 * max_lag_ms is checked by the reader that answers. On a replica caught up
 * as far as it knows, lag_ms is the age of the leader's last message (up
 * to a heartbeat, 100 ms, on a live link); when that alone is above the
 * bound and the leader was heard within QRY_BOUNDED_ASK_MS, the query is
 * parked and the replica asks the leader for a read index like a strong
 * read; the answer refreshes the contact and the query runs (not waiting
 * for that LSN: the readers measure the lag it leaves). */
#include "qry_read.h"

#include "kb_err.h"
#include "kb_util.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct parked {
    kb_peer_t peer;
    Kbsync__Request *req;
    uint64_t deadline_us;
    uint64_t ri_need; /* strong read: the read-index seq awaited (0: none) */
    int bounded;      /* a bounded read asking the leader (see admit) */
    size_t bytes;     /* its packed size, counted in qry_read.bytes */
} parked_t;

struct qry_read {
    parked_t *p;
    size_t n, cap;
    size_t bytes; /* packed size of the parked requests */
};

static uint32_t wait_ms(const Kbsync__QueryRequest *q)
{
    uint32_t ms = q->wait_ms ? q->wait_ms : QRY_WAIT_DEFAULT_MS;
    return ms > QRY_WAIT_MAX_MS ? QRY_WAIT_MAX_MS : ms;
}

int qry_read_new(qry_read_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : KB_ENOMEM;
}

void qry_read_free(qry_read_t **rp, void *router)
{
    if (!rp || !*rp)
        return;
    qry_read_t *r = *rp;
    for (size_t i = 0; i < r->n; i++) {
        if (router)
            kb_wire_send_error(router, &r->p[i].peer, r->p[i].req->request_id,
                               KB_EUNAVAIL, "node is shutting down");
        kbsync__request__free_unpacked(r->p[i].req, NULL);
    }
    free(r->p);
    free(r);
    *rp = NULL;
}

Kbsync__ReadLevel qry_read_level(const Kbsync__QueryRequest *q)
{
    if (q->consistency != KBSYNC__READ_LEVEL__READ_DEFAULT)
        return q->consistency;
    if (q->min_version)
        return KBSYNC__READ_LEVEL__READ_SESSION;
    if (q->max_lag_ms)
        return KBSYNC__READ_LEVEL__READ_BOUNDED;
    return KBSYNC__READ_LEVEL__READ_EVENTUAL;
}

/* KB_EINVAL for a level the request's other fields contradict. */
static int check_level(const Kbsync__QueryRequest *q, char *err, size_t cap)
{
    switch (q->consistency) {
    case KBSYNC__READ_LEVEL__READ_DEFAULT:
    case KBSYNC__READ_LEVEL__READ_STRONG: return 0;
    case KBSYNC__READ_LEVEL__READ_EVENTUAL:
        if (q->min_version || q->max_lag_ms)
            return kb_seterr(err, cap, KB_EINVAL,
                             "consistency eventual with min_version or "
                             "max_lag_ms: ask for session or bounded");
        return 0;
    case KBSYNC__READ_LEVEL__READ_SESSION:
        if (!q->min_version)
            return kb_seterr(err, cap, KB_EINVAL,
                             "consistency session needs min_version (the "
                             "version a write returned)");
        return 0;
    case KBSYNC__READ_LEVEL__READ_BOUNDED:
        if (q->min_version)
            return kb_seterr(err, cap, KB_EINVAL,
                             "consistency bounded with min_version: ask for "
                             "session (or leave consistency unset for both)");
        return 0;
    default:
        return kb_seterr(err, cap, KB_EINVAL, "unknown consistency level %d",
                         (int)q->consistency);
    }
}

/* Where the node stands, cheaply (see qry_read_node_t.staleness). */
static void standing(const qry_read_node_t *node, Kbsync__NodeState *s)
{
    if (node->staleness)
        node->staleness(node->ctx, s);
    else
        node->state(node->ctx, s);
}

static void refuse(void *router, const qry_read_node_t *node,
                   const kb_peer_t *peer, Kbsync__Request *req, int waited)
{
    char err[512];
    if (waited == 2 || waited == 3) {
        Kbsync__NodeState s;
        standing(node, &s);
        snprintf(err, sizeof err,
                 "%s read refused: node %s could not learn the leader's "
                 "committed version within %u ms (leader contact %llu ms "
                 "ago; node at version %llu, lag %llu ms%s)",
                 waited == 3 ? "bounded" : "strong", s.node_id,
                 wait_ms(req->query), (unsigned long long)s.leader_contact_ms,
                 (unsigned long long)s.version, (unsigned long long)s.lag_ms,
                 waited == 3 ? ", above max_lag_ms" : "");
    } else if (!waited) {
        snprintf(err, sizeof err,
                 "min_version %llu is above the leader's version %llu: no "
                 "such write was acknowledged",
                 (unsigned long long)req->query->min_version,
                 (unsigned long long)node->version);
    } else {
        Kbsync__NodeState s;
        standing(node, &s);
        snprintf(err, sizeof err,
                 "node %s is at version %llu, below the requested "
                 "min_version %llu, after waiting %u ms (leader_version "
                 "%llu, lag %llu ms)",
                 s.node_id, (unsigned long long)s.version,
                 (unsigned long long)req->query->min_version,
                 wait_ms(req->query), (unsigned long long)s.leader_version,
                 (unsigned long long)s.lag_ms);
    }
    kb_wire_send_error(router, peer, req->request_id, KB_ESTALE, err);
    kbsync__request__free_unpacked(req, NULL);
}

void qry_read_admit(qry_read_t *r, void *router, const qry_read_node_t *node,
                    const kb_peer_t *peer, Kbsync__Request *req)
{
    char err[256];
    int rc = check_level(req->query, err, sizeof err);
    if (rc) {
        kb_wire_send_error(router, peer, req->request_id, rc, err);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    int strong = req->query->consistency == KBSYNC__READ_LEVEL__READ_STRONG;
    if (strong && node->leader && node->version > req->query->min_version)
        req->query->min_version = node->version;
    uint64_t want = req->query->min_version;
    /* A bounded read on a replica that holds every write it knows of, and
     * whose lag_ms is above the bound only because the leader's last
     * message is that old (lag_ms is then the contact age: writes since
     * cannot have arrived), asks the leader for its committed version
     * first, unless the leader has been silent for longer than a live one
     * is: an idle knowledge base would otherwise refuse tight bounds
     * between heartbeats. The readers check the bound again on the answer
     * (query/qry_pool.c). */
    int ask = 0;
    if (!strong && node->ri_begin && node->has_kb &&
        (node->state || node->staleness) &&
        (req->query->max_lag_ms ||
         req->query->consistency == KBSYNC__READ_LEVEL__READ_BOUNDED)) {
        Kbsync__NodeState s;
        standing(node, &s);
        /* (within QRY_BOUNDED_SLACK_MS of the bound too: the readers
         * measure again a little later, when they answer) */
        ask = s.lag_ops == 0 &&
              s.lag_ms + QRY_BOUNDED_SLACK_MS > req->query->max_lag_ms &&
              s.leader_contact_ms <= QRY_BOUNDED_ASK_MS;
    }
    if ((!strong || node->leader) && !ask &&
        (!want || (node->has_kb && want <= node->version))) {
        node->run(node->ctx, peer, req);
        return;
    }
    if (node->check &&
        (rc = node->check(node->ctx, req->query, err, sizeof err))) {
        kb_wire_send_error(router, peer, req->request_id, rc, err);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    if (node->leader) {
        refuse(router, node, peer, req, 0);
        return;
    }
    /* Waiting reads hold their requests until answered or wait_ms ends
     * (up to a minute), and no answer is due to count against the
     * client's queue: bounded in number and bytes. */
    size_t bytes =
        protobuf_c_message_get_packed_size((const ProtobufCMessage *)req);
    if (r->n >= QRY_PARKED_MAX || r->bytes + bytes > QRY_PARKED_MAX_BYTES) {
        char err[256];
        snprintf(err, sizeof err,
                 "too many reads waiting on this node (%zu, %.1f MB; at "
                 "most %d, %d MB); ask again once some are answered",
                 r->n, (double)r->bytes / 1048576.0, QRY_PARKED_MAX,
                 QRY_PARKED_MAX_BYTES >> 20);
        kb_wire_send_error(router, peer, req->request_id, KB_EUNAVAIL, err);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        parked_t *p = realloc(r->p, cap * sizeof *p);
        if (!p) {
            kb_wire_send_error(router, peer, req->request_id, KB_ENOMEM,
                               "out of memory");
            kbsync__request__free_unpacked(req, NULL);
            return;
        }
        r->p = p;
        r->cap = cap;
    }
    r->p[r->n].peer = *peer;
    r->p[r->n].req = req;
    r->p[r->n].ri_need = (strong || ask) && node->ri_begin
                             ? node->ri_begin(node->ctx)
                             : 0;
    r->p[r->n].bounded = ask;
    r->p[r->n].bytes = bytes;
    r->bytes += bytes;
    r->p[r->n].deadline_us =
        kb_mono_us() + (uint64_t)wait_ms(req->query) * 1000u;
    r->n++;
}

void qry_read_release(qry_read_t *r, void *router, const qry_read_node_t *node)
{
    uint64_t now = kb_mono_us();
    size_t keep = 0;
    for (size_t i = 0; i < r->n; i++) {
        parked_t *w = &r->p[i];
        if (w->ri_need && node->ri_seq >= w->ri_need) {
            /* A bounded read needs the answer's fresh contact, not that
             * version: the readers measure its lag when they answer. */
            if (!w->bounded && node->ri_lsn > w->req->query->min_version)
                w->req->query->min_version = node->ri_lsn;
            w->ri_need = 0;
        }
        if (!w->ri_need && node->has_kb &&
            w->req->query->min_version <= node->version) {
            r->bytes -= w->bytes;
            node->run(node->ctx, &w->peer, w->req);
        } else if (now >= w->deadline_us) {
            r->bytes -= w->bytes;
            refuse(router, node, &w->peer, w->req,
                   !w->ri_need ? 1 : w->bounded ? 3 : 2);
        } else {
            r->p[keep++] = *w;
        }
    }
    r->n = keep;
}

int qry_read_next_ms(const qry_read_t *r, int max)
{
    uint64_t now = kb_mono_us();
    int next = max;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t d = r->p[i].deadline_us;
        int left = d > now ? (int)((d - now + 999) / 1000) : 0;
        if (left < next)
            next = left;
    }
    return next;
}
