/* repl_commit: the leader's client write path (see repl_leader.h). In:
 * decoded Upsert/Delete requests. Out: one durable group commit per batch
 * of requests and a WriteResult (with per-replica receipts) or error to
 * each client, at once (`async`) or once K named replicas applied the write
 * (`quorum:K`, `majority`, `all`). Owns the queue of requests waiting for
 * the next group commit, the answers waiting for acks, the conditional
 * write checks and the idempotent-write lookups (their results live in the
 * store's dedup table); log shipping is repl_ship.c's.
 *
 * GROUP COMMIT
 * The node loop hands over every write request it finds waiting on the
 * client socket; each is validated on arrival (a bad one is refused alone)
 * and queued. repl_leader_flush() writes all queued requests in one LMDB
 * transaction, so one fsync covers many clients' writes, and LSNs follow
 * arrival order. Each request is still all-or-nothing: validation happened
 * before the transaction, and a failed transaction fails every request in
 * it. The answer's `version` is the LSN of the request's last write.
 * A failed commit answers every request of the group with its error
 * (KB_ESTORE naming the cause: disk full, map full, I/O error). If its
 * records had already been sent to replicas, the leader turns read-only:
 * it refuses every later write until restarted, so that no LSN is reused.
 *
 * SYNCHRONOUS REPLICATION (`quorum:K`, `majority`, `all` = K of n named)
 * Before the commit: if fewer than K replicas named in --replicas are
 * connected (no Hello, or silent for REPL_DEAD_MS), the request is refused
 * at once with KB_ENOREPLICA and nothing of it is written. After the
 * commit, the answer waits until K named replicas acknowledged an LSN >=
 * the request's last LSN. If that does not happen within --write-timeout-ms,
 * the client gets KB_ETIMEOUT saying the write IS committed on the leader,
 * at which version, and which named replicas have not applied it (they get
 * it when they are back). `async` requests are answered right after the
 * leader's commit.
 *
 * CONDITIONS AND RETRIES
 * if_version conditions are judged at flush against the store plus an
 * overlay of the requests before them in the group (the LSNs idx_write
 * will give); a failed one refuses its request alone (KB_ECONFLICT). A
 * request with client_id/client_seq already in the dedup table is answered
 * from it; new ones are recorded in the group's own transaction.
 */
#include "repl_leader_int.h"

#include "kb_metrics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void repl__clear_queue(repl_leader_t *l)
{
    for (size_t i = 0; i < l->qn; i++)
        kbsync__request__free_unpacked(l->q[i].req, NULL);
    l->qn = 0;
    l->nops = 0;
}

void repl_leader_shutdown(repl_leader_t *l, void *router)
{
    repl_leader_flush(l, router);
    l->closing = 1;
    repl__release_parked(l, router);
}

size_t repl_leader_queued(const repl_leader_t *l)
{
    return l->nops;
}

/* ------------------------------------------------------- client writes */

static int leader_reserve(repl_leader_t *l, size_t more_ops)
{
    if (l->qn == l->qcap) {
        size_t cap = l->qcap ? l->qcap * 2 : 16;
        pending_t *q = realloc(l->q, cap * sizeof *q);
        if (!q)
            return KB_ENOMEM;
        l->q = q;
        l->qcap = cap;
    }
    if (l->nops + more_ops > l->opcap) {
        size_t cap = l->opcap ? l->opcap : 1024;
        while (cap < l->nops + more_ops)
            cap *= 2;
        idx_op_t *ops = realloc(l->ops, cap * sizeof *ops);
        if (!ops)
            return KB_ENOMEM;
        l->ops = ops;
        uint64_t *lsns = realloc(l->lsns, cap * sizeof *lsns);
        if (!lsns)
            return KB_ENOMEM;
        l->lsns = lsns;
        l->opcap = cap;
    }
    return 0;
}

/* Fills ops[0..n) from an upsert or delete request. */
static size_t ops_from_request(const Kbsync__Request *req, idx_op_t *ops)
{
    size_t n = req->body_case == KBSYNC__REQUEST__BODY_UPSERT
                   ? req->upsert->n_docs
                   : req->delete_->n_ids;
    for (size_t i = 0; ops && i < n; i++) {
        memset(&ops[i], 0, sizeof ops[i]);
        if (req->body_case == KBSYNC__REQUEST__BODY_UPSERT) {
            const Kbsync__Doc *d = req->upsert->docs[i];
            ops[i].op = IDX_OP_UPSERT;
            ops[i].id = d->id;
            ops[i].text = d->text;
            ops[i].embedding = d->n_embedding ? d->embedding : NULL;
            ops[i].embedding_len = d->n_embedding;
            ops[i].metadata = d->metadata_json;
        } else {
            ops[i].op = IDX_OP_DELETE;
            ops[i].id = req->delete_->ids[i];
        }
    }
    return n;
}

int repl_mode_parse(const char *s, repl_mode_t *mode, uint32_t *k, char *err,
                    size_t errlen)
{
    *k = 0;
    if (!strcmp(s, "async"))
        *mode = REPL_ASYNC;
    else if (!strcmp(s, "all"))
        *mode = REPL_ALL;
    else if (!strcmp(s, "majority"))
        *mode = REPL_MAJORITY;
    else if (!strncmp(s, "quorum:", 7) && s[7] >= '1' && s[7] <= '9' &&
             strspn(s + 7, "0123456789") == strlen(s + 7) &&
             strlen(s + 7) <= 2) {
        *mode = REPL_QUORUM;
        *k = (uint32_t)atoi(s + 7);
    } else
        return kb_seterr(err, errlen, KB_EINVAL,
                         "write mode must be async, all, majority or "
                         "quorum:K (K = 1..%d), not \"%.64s\"",
                         REPL_MAX_PEERS, s);
    if (*k > REPL_MAX_PEERS)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "quorum:%u: at most %d replicas", *k, REPL_MAX_PEERS);
    return 0;
}

const char *repl_mode_name(repl_mode_t mode)
{
    switch (mode) {
    case REPL_ALL: return "all";
    case REPL_QUORUM: return "quorum";
    case REPL_MAJORITY: return "majority";
    default: return "async";
    }
}

uint32_t repl_mode_need(repl_mode_t mode, uint32_t k, uint32_t n)
{
    switch (mode) {
    case REPL_ALL: return n;
    case REPL_QUORUM: return k;
    case REPL_MAJORITY: return (n + 1) / 2;
    default: return 0;
    }
}

static Kbsync__WriteMode wire_mode(repl_mode_t m)
{
    switch (m) {
    case REPL_ALL: return KBSYNC__WRITE_MODE__WRITE_MODE_ALL;
    case REPL_QUORUM: return KBSYNC__WRITE_MODE__WRITE_MODE_QUORUM;
    case REPL_MAJORITY: return KBSYNC__WRITE_MODE__WRITE_MODE_MAJORITY;
    default: return KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
    }
}

/* The request's mode and the named replicas it waits for; KB_EINVAL (err
 * set) for an unknown mode or a quorum the replica list cannot give. */
static int request_mode(const repl_leader_t *l, const Kbsync__Request *req,
                        repl_mode_t *mode, uint32_t *need, char *err,
                        size_t errlen)
{
    int up = req->body_case == KBSYNC__REQUEST__BODY_UPSERT;
    Kbsync__WriteMode m = up ? req->upsert->mode : req->delete_->mode;
    uint32_t k = up ? req->upsert->quorum : req->delete_->quorum;
    uint32_t n = repl__named(l, NULL);
    switch (m) {
    case KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT:
        *mode = l->cfg.default_mode;
        k = l->cfg.default_quorum;
        break;
    case KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC: *mode = REPL_ASYNC; break;
    case KBSYNC__WRITE_MODE__WRITE_MODE_ALL: *mode = REPL_ALL; break;
    case KBSYNC__WRITE_MODE__WRITE_MODE_MAJORITY: *mode = REPL_MAJORITY; break;
    case KBSYNC__WRITE_MODE__WRITE_MODE_QUORUM:
        *mode = REPL_QUORUM;
        if (k == 0 || k > n)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "quorum:%u: K must be 1..%u, the replicas named "
                             "in the leader's --replicas",
                             k, n);
        break;
    default:
        return kb_seterr(err, errlen, KB_EINVAL, "unknown write mode %d",
                         (int)m);
    }
    *need = repl_mode_need(*mode, k, n);
    return 0;
}

/* Fills w (and the leader's receipt scratch) for a write answer. */
static void fill_result(repl_leader_t *l, const wresult_t *r,
                        Kbsync__WriteResult *w)
{
    kbsync__write_result__init(w);
    w->version = r->lsn;
    w->first_version = r->first;
    w->written = r->written;
    w->missing = r->missing;
    w->mode = wire_mode(r->mode);
    w->quorum = r->need;
    w->retried = r->retried != 0;
    size_t k = 0;
    for (size_t i = 0; i < l->npeers; i++) {
        const peer_t *p = &l->peer[i];
        if (!p->named)
            continue;
        Kbsync__Receipt *c = &l->rc[k];
        kbsync__receipt__init(c);
        c->replica_id = (char *)p->id;
        c->connected = p->online != 0;
        c->applied_lsn = p->acked;
        c->durable_lsn = p->durable > p->acked ? p->durable : p->acked;
        c->received_lsn =
            p->received > c->durable_lsn ? p->received : c->durable_lsn;
        uint64_t v = r->lsn;
        c->stage = !v                     ? KBSYNC__REPLICA_STAGE__STAGE_NONE
                   : c->applied_lsn >= v  ? KBSYNC__REPLICA_STAGE__STAGE_SEARCHABLE
                   : c->durable_lsn >= v  ? KBSYNC__REPLICA_STAGE__STAGE_DURABLE
                   : c->received_lsn >= v ? KBSYNC__REPLICA_STAGE__STAGE_RECEIVED
                                          : KBSYNC__REPLICA_STAGE__STAGE_NONE;
        l->rcp[k++] = c;
    }
    w->n_receipts = k;
    w->receipts = k ? l->rcp : NULL;
}

/* ------------------------------------------------- conditional writes */

static int has_conditions(const Kbsync__Request *req)
{
    if (req->body_case == KBSYNC__REQUEST__BODY_DELETE)
        return req->delete_->n_if_version > 0;
    for (size_t i = 0; i < req->upsert->n_docs; i++)
        if (req->upsert->docs[i]->if_version)
            return 1;
    return 0;
}

/* The ids a group commit touches before a conditional request, and the
 * LSN each will have (or -1: deleted), so that a condition is judged
 * against the state the request's own commit starts from. */
typedef struct overlay {
    const char **key;
    int64_t *val;
    size_t cap, n;
    uint64_t next; /* the next LSN idx_write will give */
} overlay_t;

static uint64_t ov_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int64_t *ov_slot(overlay_t *o, const char *id, int add)
{
    if (add && (o->n + 1) * 2 > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 256;
        const char **k = calloc(cap, sizeof *k);
        int64_t *v = calloc(cap, sizeof *v);
        if (!k || !v) {
            free(k);
            free(v);
            return NULL;
        }
        for (size_t i = 0; i < o->cap; i++) {
            if (!o->key[i])
                continue;
            size_t j = ov_hash(o->key[i]) & (cap - 1);
            while (k[j])
                j = (j + 1) & (cap - 1);
            k[j] = o->key[i];
            v[j] = o->val[i];
        }
        free(o->key);
        free(o->val);
        o->key = k;
        o->val = v;
        o->cap = cap;
    }
    if (!o->cap)
        return NULL;
    size_t j = ov_hash(id) & (o->cap - 1);
    while (o->key[j] && strcmp(o->key[j], id))
        j = (j + 1) & (o->cap - 1);
    if (!o->key[j]) {
        if (!add)
            return NULL;
        o->key[j] = id;
        o->n++;
    }
    return &o->val[j];
}

/* The version of id at this point of the group: 0 = absent. */
static int ov_current(repl_leader_t *l, overlay_t *o, const char *id,
                      uint64_t *ver, char *err, size_t errlen)
{
    int64_t *v = ov_slot(o, id, 0);
    if (v) {
        *ver = *v > 0 ? (uint64_t)*v : 0;
        return 0;
    }
    return idx_doc_versions(l->ix, &id, 1, ver, err, errlen);
}

/* Plays p's ops on the overlay as idx_write will commit them. */
static int ov_apply(repl_leader_t *l, overlay_t *o, const pending_t *p,
                    char *err, size_t errlen)
{
    for (size_t j = 0; j < p->nops; j++) {
        const idx_op_t *op = &l->ops[p->first_op + j];
        uint64_t cur = 0;
        int rc = 0;
        if (op->op == IDX_OP_DELETE)
            rc = ov_current(l, o, op->id, &cur, err, errlen);
        if (rc)
            return rc;
        int64_t *v = ov_slot(o, op->id, 1);
        if (!v)
            return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        if (op->op == IDX_OP_UPSERT) {
            *v = (int64_t)o->next++;
        } else if (cur) {
            *v = -1;
            o->next++;
        }
    }
    return 0;
}

/* KB_ECONFLICT naming the first condition of p that does not hold against
 * the state before p (every condition is judged against it). */
static int check_conditions(repl_leader_t *l, overlay_t *o, const pending_t *p,
                            char *err, size_t errlen)
{
    const Kbsync__Request *req = p->req;
    int up = req->body_case == KBSYNC__REQUEST__BODY_UPSERT;
    for (size_t j = 0; j < p->nops; j++) {
        uint64_t want;
        const char *id;
        if (up) {
            const Kbsync__Doc *d = req->upsert->docs[j];
            if (!d->if_version)
                continue;
            want = d->if_version->version;
            id = d->id;
        } else {
            want = req->delete_->if_version[j];
            id = req->delete_->ids[j];
        }
        uint64_t cur;
        int rc = ov_current(l, o, id, &cur, err, errlen);
        if (rc)
            return rc;
        if (cur == want)
            continue;
        char c[48], w[48];
        if (cur)
            snprintf(c, sizeof c, "is at version %llu", (unsigned long long)cur);
        else
            snprintf(c, sizeof c, "does not exist");
        if (want)
            snprintf(w, sizeof w, "version %llu", (unsigned long long)want);
        else
            snprintf(w, sizeof w, "that it does not exist");
        return kb_seterr(err, errlen, KB_ECONFLICT,
                         "conditional %s refused: document \"%.256s\" %s, the "
                         "request expected %s; nothing of this request was "
                         "written",
                         up ? "upsert" : "delete", id, c, w);
    }
    return 0;
}

static int check_condition_shape(const Kbsync__Request *req, char *err,
                                 size_t errlen)
{
    if (req->body_case != KBSYNC__REQUEST__BODY_DELETE ||
        req->delete_->n_if_version == 0)
        return 0;
    const Kbsync__DeleteRequest *d = req->delete_;
    if (d->n_if_version != d->n_ids)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "delete: if_version has %zu entries for %zu ids (give "
                         "one per id, or none)",
                         d->n_if_version, d->n_ids);
    for (size_t i = 0; i < d->n_ids; i++)
        if (d->if_version[i] == 0)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "delete: if_version of id #%zu (\"%.64s\") is 0; "
                             "a conditional delete names the version it "
                             "removes",
                             i, d->ids[i]);
    return 0;
}

static void answer_write(repl_leader_t *l, void *router, const kb_peer_t *peer,
                         uint64_t rid, const wresult_t *res)
{
    Kbsync__WriteResult w;
    fill_result(l, res, &w);
    kb_metrics_write(w.mode, kb_mono_us() - peer->t_us,
                     w.written + w.missing);
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_WRITE;
    r.write = &w;
    kb_wire_send_response(router, peer, &r);
}

/* -------------------------------------------------- idempotent writes */

static uint32_t crc_str(uint32_t c, const char *s)
{
    size_t n = s ? strlen(s) + 1 : 0; /* the NUL separates fields */
    return n ? kb_crc32c(c, s, n) : kb_crc32c(c, "", 1);
}

/* A hash of what the request writes (not its mode): a retry must carry the
 * same documents or ids. */
static uint64_t request_hash(const Kbsync__Request *req)
{
    uint32_t c = 0;
    uint64_t bytes = 0;
    if (req->body_case == KBSYNC__REQUEST__BODY_UPSERT) {
        c = kb_crc32c(c, "U", 1);
        for (size_t i = 0; i < req->upsert->n_docs; i++) {
            const Kbsync__Doc *d = req->upsert->docs[i];
            c = crc_str(c, d->id);
            c = crc_str(c, d->text);
            c = crc_str(c, d->metadata_json);
            c = kb_crc32c(c, d->embedding, d->n_embedding * sizeof(float));
            uint64_t iv = d->if_version ? d->if_version->version + 1 : 0;
            c = kb_crc32c(c, &iv, sizeof iv);
            bytes += d->n_embedding * sizeof(float) + 1;
        }
    } else {
        c = kb_crc32c(c, "D", 1);
        for (size_t i = 0; i < req->delete_->n_ids; i++) {
            c = crc_str(c, req->delete_->ids[i]);
            bytes++;
        }
        c = kb_crc32c(c, req->delete_->if_version,
                      req->delete_->n_if_version * sizeof(uint64_t));
    }
    return (uint64_t)c | bytes << 32;
}

/* Reads the request's client identity into p->dkey; KB_EINVAL when it is
 * malformed. No identity: dklen 0. */
static int request_identity(const Kbsync__Request *req, pending_t *p,
                            char *err, size_t errlen)
{
    int up = req->body_case == KBSYNC__REQUEST__BODY_UPSERT;
    const char *cid = up ? req->upsert->client_id : req->delete_->client_id;
    uint64_t seq = up ? req->upsert->client_seq : req->delete_->client_seq;
    size_t n = cid ? strlen(cid) : 0;
    p->dklen = 0;
    if (n == 0 && seq == 0)
        return 0;
    if (n == 0)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "client_seq %llu without a client_id",
                         (unsigned long long)seq);
    if (n > REPL_MAX_CLIENT_ID)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "client_id is %zu bytes, at most %d", n,
                         REPL_MAX_CLIENT_ID);
    if (seq == 0)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "client_id \"%s\" without a client_seq (>= 1)", cid);
    memcpy(p->dkey, cid, n);
    p->dkey[n] = 0;
    for (int i = 0; i < 8; i++)
        p->dkey[n + 1 + i] = (unsigned char)(seq >> (56 - 8 * i));
    p->dklen = n + 9;
    p->dhash = request_hash(req);
    return 0;
}

/* A write whose (client, seq) the leader already committed: answers it
 * with the original result (or parks it until its mode's replicas applied
 * that version). Returns 1 when answered or parked, 0 when the pair is
 * new, or a negative code with err set (refused). */
static int answer_retry(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        const Kbsync__Request *req, const pending_t *p,
                        char *err, size_t errlen)
{
    for (size_t i = 0; i < l->qn; i++)
        if (l->q[i].dklen == p->dklen &&
            !memcmp(l->q[i].dkey, p->dkey, p->dklen)) {
            /* the first attempt waits for the next group commit: commit
             * it now, then answer this one from the table */
            repl_leader_flush(l, router);
            break;
        }
    idx_dedup_result_t d;
    int rc = idx_dedup_get(l->ix, p->dkey, p->dklen, &d);
    if (rc == -ENOENT)
        return 0;
    size_t cl = strlen((const char *)p->dkey);
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++)
        seq = seq << 8 | p->dkey[cl + 1 + i];
    if (rc)
        return kb_seterr(err, errlen, rc,
                         "cannot read the idempotency table: %s",
                         kb_strerror(rc));
    if (d.hash != p->dhash)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "client \"%s\" already used client_seq %llu for "
                         "another write (committed at version %llu): a retry "
                         "must carry the same documents or ids",
                         (const char *)p->dkey, (unsigned long long)seq,
                         (unsigned long long)d.version);
    l->retries++;
    wresult_t w = {0};
    w.first = d.first;
    w.lsn = d.version;
    w.written = d.written;
    w.missing = d.missing;
    w.mode = p->mode;
    w.need = p->need;
    w.retried = 1;
    int have, want;
    if (!w.written || !w.need ||
        repl__named_acked(l, w.lsn, w.need, NULL, 0, &have, &want)) {
        answer_write(l, router, peer, req->request_id, &w);
        return 1;
    }
    if (l->nparked == l->parkcap) {
        size_t cap = l->parkcap ? l->parkcap * 2 : 64;
        parked_t *np = realloc(l->park, cap * sizeof *np);
        if (!np)
            return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        l->park = np;
        l->parkcap = cap;
    }
    parked_t *k = &l->park[l->nparked++];
    k->peer = *peer;
    k->rid = req->request_id;
    k->w = w;
    k->deadline_us = kb_mono_us() + (uint64_t)l->cfg.write_timeout_ms * 1000u;
    return 1;
}

void repl__dedup_tick(repl_leader_t *l)
{
    uint64_t now = kb_mono_us();
    uint64_t hours = l->cfg.dedup_hours ? l->cfg.dedup_hours : 24;
    uint64_t max = l->cfg.dedup_max ? l->cfg.dedup_max : 1000000;
    /* once a second for the time limit; at every tick while over the count
     * limit, by as many as it is over (so it never runs away) */
    int over = l->dedup_left > max;
    if (!over && now - l->dedup_us < 1000000u)
        return;
    l->dedup_us = now;
    size_t step = over ? (size_t)(l->dedup_left - max) + REPL_DEDUP_STEP
                       : REPL_DEDUP_STEP;
    uint64_t wall = kb_wall_us(), span = hours * 3600u * 1000000u;
    uint64_t removed = 0;
    char err[512];
    if (idx_dedup_expire(l->ix, wall > span ? wall - span : 0, max, step,
                         &removed, &l->dedup_left, err, sizeof err))
        kb_log_limited(&l->log_bad, KB_LOG_WARN,
                       "expiring idempotent-write results: %s", err);
    else if (removed)
        kb_debug("expired %llu idempotent-write results (%llu kept)",
                 (unsigned long long)removed,
                 (unsigned long long)l->dedup_left);
}

void repl_leader_dedup_stats(const repl_leader_t *l, uint64_t *entries,
                             uint64_t *retries)
{
    *entries = l->dedup_left;
    *retries = l->retries;
}

void repl_leader_submit(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        Kbsync__Request *req)
{
    char err[512];
    size_t n = ops_from_request(req, NULL);
    int rc = 0;
    repl_mode_t mode = REPL_ASYNC;
    uint32_t need = 0;
    if (n == 0)
        rc = kb_seterr(err, sizeof err, KB_EINVAL,
                       "write request with no documents or ids");
    else
        rc = request_mode(l, req, &mode, &need, err, sizeof err);
    if (!rc)
        rc = check_condition_shape(req, err, sizeof err);
    if (rc)
        ;
    else if (leader_reserve(l, n))
        rc = kb_seterr(err, sizeof err, KB_ENOMEM, "out of memory");
    pending_t id;
    id.mode = mode;
    id.need = need;
    if (!rc)
        rc = request_identity(req, &id, err, sizeof err);
    if (!rc && id.dklen) {
        /* a committed retry is answered even by a read-only leader */
        rc = answer_retry(l, router, peer, req, &id, err, sizeof err);
        if (rc == 1) {
            kbsync__request__free_unpacked(req, NULL);
            return;
        }
    }
    if (!rc && l->readonly) /* checked after the retry's flush: it may
                               have turned the leader read-only */
        rc = kb_seterr(err, sizeof err, KB_ESTORE, "%s", l->readonly_why);
    if (!rc) {
        ops_from_request(req, l->ops + l->nops);
        rc = idx_validate(l->ix, l->ops + l->nops, n, err, sizeof err);
    }
    if (rc) {
        kb_wire_send_error(router, peer, req->request_id, rc, err);
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    pending_t *p = &l->q[l->qn++];
    memcpy(p->dkey, id.dkey, id.dklen);
    p->dklen = id.dklen;
    p->dhash = id.dhash;
    p->peer = *peer;
    p->req = req;
    p->first_op = l->nops;
    p->nops = n;
    p->mode = mode;
    p->need = need;
    p->dropped = 0;
    l->nops += n;
}


void repl_leader_flush(repl_leader_t *l, void *router)
{
    if (l->qn == 0)
        return;
    if (l->readonly) { /* nothing may take an LSN any more */
        for (size_t i = 0; i < l->qn; i++)
            kb_wire_send_error(router, &l->q[i].peer, l->q[i].req->request_id,
                               KB_ESTORE, l->readonly_why);
        repl__clear_queue(l);
        return;
    }
    repl__ship_reset(l); /* never carry LMDB pointers across transactions */
    char err[512];
    /* A write that waits for K named replicas needs K of them connected,
     * checked before writing. */
    char absent[256];
    size_t used = 0;
    absent[0] = 0;
    for (size_t i = 0; i < l->npeers; i++)
        if (l->peer[i].named && !l->peer[i].online && used < sizeof absent)
            used += (size_t)snprintf(absent + used, sizeof absent - used,
                                     "%s%s", used ? ", " : "", l->peer[i].id);
    uint32_t online, named = repl__named(l, &online);
    /* Conditions are judged against the state each request's commit
     * starts from: the store, plus the requests before it in this group. */
    int conds = 0;
    for (size_t i = 0; i < l->qn; i++)
        conds |= has_conditions(l->q[i].req);
    overlay_t ov = {0};
    if (conds)
        idx_state(l->ix, &ov.next, NULL), ov.next++;
    size_t nops = 0;
    for (size_t i = 0; i < l->qn; i++) {
        pending_t *p = &l->q[i];
        if (p->need <= online && conds) {
            int crc = 0;
            if (has_conditions(p->req))
                crc = ov.next ? check_conditions(l, &ov, p, err, sizeof err)
                              : kb_seterr(err, sizeof err, KB_ENOMEM,
                                          "out of memory judging conditions");
            if (!crc && ov.next && ov_apply(l, &ov, p, err, sizeof err))
                ov.next = 0; /* the overlay is incomplete: later conditional
                                requests of this group are refused */
            if (crc) {
                kb_wire_send_error(router, &p->peer, p->req->request_id, crc,
                                   err);
                p->dropped = 1;
                continue;
            }
        }
        if (p->need > online) {
            if (p->mode == REPL_ALL)
                snprintf(err, sizeof err,
                         "replica %s (named in --replicas) is not connected: "
                         "`all` write refused, nothing was written",
                         absent);
            else
                snprintf(err, sizeof err,
                         "`%s` write needs %u of the %u named replicas "
                         "connected, %u are (not connected: %s): refused, "
                         "nothing was written",
                         repl_mode_name(p->mode), p->need, named, online,
                         absent);
            kb_wire_send_error(router, &p->peer, p->req->request_id,
                               KB_ENOREPLICA, err);
            p->dropped = 1;
            continue;
        }
        /* compact the accepted requests' ops to the front */
        if (p->first_op != nops)
            memmove(l->ops + nops, l->ops + p->first_op,
                    p->nops * sizeof *l->ops);
        p->first_op = nops;
        nops += p->nops;
    }
    free(ov.key);
    free(ov.val);
    l->nops = nops;
    l->shipped = 0;
    /* Ship before the commit only when someone waits for the replicas;
     * `async` groups are answered first and streamed right after. */
    int any_all = 0;
    for (size_t i = 0; i < l->qn; i++)
        any_all |= !l->q[i].dropped && l->q[i].need > 0;
    if (any_all) {
        /* Replicas flush these records in full and say so at once; the
         * group's LSNs are at most head + nops (a delete of an absent id
         * takes none). */
        uint64_t head;
        idx_state(l->ix, &head, NULL);
        l->wait_lsn = head + l->nops;
    }
    size_t ndd = 0;
    int ddfail = 0;
    for (size_t i = 0; i < l->qn && !ddfail; i++) {
        pending_t *p = &l->q[i];
        if (p->dropped || !p->dklen)
            continue;
        if (ndd == l->ddcap) {
            size_t cap = l->ddcap ? l->ddcap * 2 : 64;
            idx_dedup_t *nd = realloc(l->dd, cap * sizeof *nd);
            if (!nd) {
                ddfail = 1;
                break;
            }
            l->dd = nd;
            l->ddcap = cap;
        }
        l->dd[ndd++] = (idx_dedup_t){p->dkey, p->dklen, p->dhash, p->first_op,
                                     p->nops};
    }
    int rc = ddfail ? kb_seterr(err, sizeof err, KB_ENOMEM, "out of memory")
             : nops ? idx_write_ex(l->ix, l->ops, l->nops, 0, l->lsns,
                                 l->sock && any_all ? repl__precommit : NULL,
                                 l, l->dd, ndd, err, sizeof err)
                  : 0;
    if (rc && l->shipped) {
        /* The records are on replicas under LSNs the leader did not commit:
         * giving those LSNs to other writes would make two histories. */
        snprintf(l->readonly_why, sizeof l->readonly_why,
                 "a commit failed after its records were sent to replicas "
                 "(%.300s): the leader refuses writes until it is restarted, so "
                 "that those LSNs are never reused; reads go on",
                 err);
        l->readonly = 1;
        kb_error("%s", l->readonly_why);
        char e2[sizeof err];
        snprintf(e2, sizeof e2, "%.400s; nothing of this write was "
                 "committed; the leader is now read-only until restarted",
                 err);
        memcpy(err, e2, sizeof err);
    } else if (rc) {
        /* Once per cause, not once per group: a full disk fails them all. */
        if (l->commit_fails == 0 ||
            strncmp(err, l->commit_err, 250) != 0)
            kb_warn("group commit of %zu requests (%zu ops) failed: %s; "
                    "nothing of them was committed (logged again when the "
                    "cause changes or commits work again)",
                    l->qn, l->nops, err);
        snprintf(l->commit_err, sizeof l->commit_err, "%.250s", err);
        l->commit_fails++;
    } else if (l->shipped) {
        repl__announce_commit(l);
    }
    if (!rc)
        l->dedup_left += ndd;
    if (!rc && ndd && l->crash_after_commit && --l->crash_after_commit == 0) {
        kb_warn("KBSYNC_TEST_FAULT crash-after-commit: exiting after the "
                "commit, before its answers");
        _exit(9);
    }
    if (!rc && nops && l->commit_fails) {
        kb_info("commits work again after %llu failed group commits (last: "
                "%s)",
                (unsigned long long)l->commit_fails, l->commit_err);
        l->commit_fails = 0;
    }
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    for (size_t i = 0; i < l->qn; i++) {
        pending_t *p = &l->q[i];
        if (p->dropped)
            continue;
        if (rc) {
            kb_wire_send_error(router, &p->peer, p->req->request_id, rc, err);
            continue;
        }
        wresult_t res = {0};
        res.mode = p->mode;
        res.need = p->need;
        for (size_t j = 0; j < p->nops; j++) {
            uint64_t lsn = l->lsns[p->first_op + j];
            if (lsn) {
                res.written++;
                if (!res.first)
                    res.first = lsn;
                res.lsn = lsn; /* ascending: ends at the request's last */
            } else {
                res.missing++;
            }
        }
        int have, want;
        if (res.written == 0 || p->need == 0 ||
            repl__named_acked(l, res.lsn, p->need, NULL, 0, &have, &want)) {
            if (!res.written)
                res.lsn = st.version;
            answer_write(l, router, &p->peer, p->req->request_id, &res);
            continue;
        }
        if (l->nparked == l->parkcap) {
            size_t cap = l->parkcap ? l->parkcap * 2 : 64;
            parked_t *np = realloc(l->park, cap * sizeof *np);
            if (!np) {
                kb_wire_send_error(router, &p->peer, p->req->request_id,
                                   KB_ENOMEM, "out of memory");
                continue;
            }
            l->park = np;
            l->parkcap = cap;
        }
        parked_t *k = &l->park[l->nparked++];
        k->peer = p->peer;
        k->rid = p->req->request_id;
        k->w = res;
        k->deadline_us =
            kb_mono_us() + (uint64_t)l->cfg.write_timeout_ms * 1000u;
    }
    repl__clear_queue(l);
    if (l->sock)
        repl__stream_all(l);
}

/* Answers parked `all` writes that are now acknowledged, or timed out. */
void repl__release_parked(repl_leader_t *l, void *router)
{
    uint64_t now = kb_mono_us();
    size_t keep = 0;
    for (size_t i = 0; i < l->nparked; i++) {
        parked_t *k = &l->park[i];
        char missing[512], err[768];
        int have, want;
        if (repl__named_acked(l, k->w.lsn, k->w.need, missing, sizeof missing,
                              &have, &want)) {
            answer_write(l, router, &k->peer, k->rid, &k->w);
        } else if (now >= k->deadline_us || l->closing) {
            snprintf(err, sizeof err,
                     "write IS committed on the leader at version %llu, but "
                     "only %d of the %u named replicas it waits for (`%s`) "
                     "applied it %s (not yet: %s); it will reach them when "
                     "they are back",
                     (unsigned long long)k->w.lsn, have, k->w.need,
                     repl_mode_name(k->w.mode),
                     l->closing ? "before the leader shut down" : "in time",
                     missing);
            /* The error says the write is NOT acknowledged as asked; the
             * WriteResult beside it says what is committed on the leader
             * and where each replica stands. */
            Kbsync__Error e = KBSYNC__ERROR__INIT;
            e.code = l->closing ? KB_EUNAVAIL : KB_ETIMEOUT;
            e.message = err;
            Kbsync__WriteResult w;
            fill_result(l, &k->w, &w);
            Kbsync__Response r = KBSYNC__RESPONSE__INIT;
            r.request_id = k->rid;
            r.error = &e;
            r.body_case = KBSYNC__RESPONSE__BODY_WRITE;
            r.write = &w;
            kb_wire_send_response(router, &k->peer, &r);
        } else {
            l->park[keep++] = *k;
        }
    }
    l->nparked = keep;
}

