/* repl_commit: the leader's client write path (see repl_leader.h). In:
 * decoded Upsert/Delete requests. Out: one durable group commit per batch
 * of requests and a WriteResult or error to each client, at once (`async`)
 * or once every named replica applied the write (`all`). Owns the queue of
 * requests waiting for the next group commit and the `all` answers waiting
 * for acks; log shipping is repl_ship.c's.
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
 * SYNCHRONOUS REPLICATION (`all`)
 * Before the commit: if a replica named in --replicas is not connected
 * (no Hello, or silent for REPL_DEAD_MS), an `all` request is refused at
 * once with KB_ENOREPLICA and nothing of it is written. After the commit,
 * the answer waits until every named replica acknowledged an LSN >= the
 * request's last LSN. If that does not happen within --write-timeout-ms,
 * the client gets KB_ETIMEOUT saying the write IS committed on the leader,
 * at which version, and which named replicas have not applied it (they get
 * it when they are back). `async` requests are answered right after the
 * leader's commit.
 *
 */
#include "repl_leader_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static repl_mode_t request_mode(const repl_leader_t *l,
                                const Kbsync__Request *req)
{
    Kbsync__WriteMode m = req->body_case == KBSYNC__REQUEST__BODY_UPSERT
                              ? req->upsert->mode
                              : req->delete_->mode;
    if (m == KBSYNC__WRITE_MODE__WRITE_MODE_ALL)
        return REPL_ALL;
    if (m == KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC)
        return REPL_ASYNC;
    return l->cfg.default_mode;
}

void repl_leader_submit(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        Kbsync__Request *req)
{
    char err[512];
    size_t n = ops_from_request(req, NULL);
    int rc = 0;
    Kbsync__WriteMode wm = req->body_case == KBSYNC__REQUEST__BODY_UPSERT
                               ? req->upsert->mode
                               : req->delete_->mode;
    if (n == 0)
        rc = kb_seterr(err, sizeof err, KB_EINVAL,
                       "write request with no documents or ids");
    else if (wm != KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT &&
             wm != KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC &&
             wm != KBSYNC__WRITE_MODE__WRITE_MODE_ALL)
        rc = kb_seterr(err, sizeof err, KB_EINVAL, "unknown write mode %d",
                       (int)wm);
    else if (l->readonly)
        rc = kb_seterr(err, sizeof err, KB_ESTORE, "%s", l->readonly_why);
    else if (leader_reserve(l, n))
        rc = kb_seterr(err, sizeof err, KB_ENOMEM, "out of memory");
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
    p->peer = *peer;
    p->req = req;
    p->first_op = l->nops;
    p->nops = n;
    p->mode = request_mode(l, req);
    p->dropped = 0;
    l->nops += n;
}

static void answer_write(void *router, const kb_peer_t *peer, uint64_t rid,
                         uint64_t version, uint32_t written, uint32_t missing)
{
    Kbsync__WriteResult w = KBSYNC__WRITE_RESULT__INIT;
    w.version = version;
    w.written = written;
    w.missing = missing;
    Kbsync__Response r = KBSYNC__RESPONSE__INIT;
    r.request_id = rid;
    r.body_case = KBSYNC__RESPONSE__BODY_WRITE;
    r.write = &w;
    kb_wire_send_response(router, peer, &r);
}

void repl_leader_flush(repl_leader_t *l, void *router)
{
    if (l->qn == 0)
        return;
    repl__ship_reset(l); /* never carry LMDB pointers across transactions */
    char err[512];
    /* `all` needs every named replica connected, checked before writing. */
    const char *absent = NULL;
    for (size_t i = 0; i < l->npeers && !absent; i++)
        if (l->peer[i].named && !l->peer[i].online)
            absent = l->peer[i].id;
    size_t nops = 0;
    for (size_t i = 0; i < l->qn; i++) {
        pending_t *p = &l->q[i];
        if (p->mode == REPL_ALL && absent) {
            snprintf(err, sizeof err,
                     "replica %s (named in --replicas) is not connected: "
                     "`all` write refused, nothing was written",
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
    l->nops = nops;
    l->shipped = 0;
    /* Ship before the commit only when someone waits for the replicas;
     * `async` groups are answered first and streamed right after. */
    int any_all = 0;
    for (size_t i = 0; i < l->qn; i++)
        any_all |= !l->q[i].dropped && l->q[i].mode == REPL_ALL;
    int rc = nops ? idx_write(l->ix, l->ops, l->nops, 0, l->lsns,
                              l->sock && any_all ? repl__precommit : NULL, l,
                              err, sizeof err)
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
        uint64_t version = 0;
        uint32_t written = 0, missing = 0;
        for (size_t j = 0; j < p->nops; j++) {
            uint64_t lsn = l->lsns[p->first_op + j];
            if (lsn) {
                written++;
                version = lsn; /* ascending: ends at the request's last */
            } else {
                missing++;
            }
        }
        int have, want;
        if (written == 0 || p->mode == REPL_ASYNC ||
            repl__all_named_acked(l, version, NULL, 0, &have, &want)) {
            answer_write(router, &p->peer, p->req->request_id,
                         written ? version : st.version, written, missing);
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
        k->lsn = version;
        k->written = written;
        k->missing = missing;
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
        if (repl__all_named_acked(l, k->lsn, missing, sizeof missing, &have, &want)) {
            answer_write(router, &k->peer, k->rid, k->lsn, k->written,
                         k->missing);
        } else if (now >= k->deadline_us || l->closing) {
            snprintf(err, sizeof err,
                     "write IS committed on the leader at version %llu, but "
                     "only %d of %d named replicas applied it %s (not yet: "
                     "%s); it will reach them when they are back",
                     (unsigned long long)k->lsn, have, want,
                     l->closing ? "before the leader shut down" : "in time",
                     missing);
            /* The error says the write is NOT fully acknowledged; the
             * WriteResult beside it says what is committed on the leader. */
            Kbsync__Error e = KBSYNC__ERROR__INIT;
            e.code = l->closing ? KB_EUNAVAIL : KB_ETIMEOUT;
            e.message = err;
            Kbsync__WriteResult w = KBSYNC__WRITE_RESULT__INIT;
            w.version = k->lsn;
            w.written = k->written;
            w.missing = k->missing;
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

