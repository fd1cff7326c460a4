/* repl_leader: group commit on the leader (see repl_leader.h).
 *
 * GROUP COMMIT
 * The node loop hands over every write request it finds waiting on the
 * socket; each is validated on arrival (a bad one is refused alone) and
 * queued. repl_leader_flush() then writes all queued requests in one LMDB
 * transaction, so one fsync covers many clients' writes, and LSNs follow
 * arrival order. Each request is still all-or-nothing: validation happened
 * before the transaction, and a transaction failure fails every request in
 * it. Only after the commit returns are clients answered; the answer's
 * `version` is the LSN of the request's last write, usable as a
 * read-your-writes token. */
#include "repl_leader.h"

#include "kb_err.h"
#include "kb_util.h"

#include <stdlib.h>
#include <string.h>

typedef struct pending {
    kb_peer_t peer;
    Kbsync__Request *req;
    size_t first_op, nops;
} pending_t;

struct repl_leader {
    idx_t *ix;
    pending_t *q;
    size_t qn, qcap;
    idx_op_t *ops;
    uint64_t *lsns;
    size_t nops, opcap;
};

int repl_leader_new(idx_t *ix, repl_leader_t **out)
{
    repl_leader_t *l = calloc(1, sizeof *l);
    if (!l)
        return KB_ENOMEM;
    l->ix = ix;
    *out = l;
    return 0;
}

static void leader_clear(repl_leader_t *l)
{
    for (size_t i = 0; i < l->qn; i++)
        kbsync__request__free_unpacked(l->q[i].req, NULL);
    l->qn = 0;
    l->nops = 0;
}

void repl_leader_free(repl_leader_t **lp)
{
    if (!lp || !*lp)
        return;
    repl_leader_t *l = *lp;
    leader_clear(l);
    free(l->q);
    free(l->ops);
    free(l->lsns);
    free(l);
    *lp = NULL;
}

size_t repl_leader_queued(const repl_leader_t *l)
{
    return l->nops;
}

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

void repl_leader_submit(repl_leader_t *l, void *router, const kb_peer_t *peer,
                        Kbsync__Request *req)
{
    char err[512];
    size_t n = req->body_case == KBSYNC__REQUEST__BODY_UPSERT
                   ? req->upsert->n_docs
                   : req->delete_->n_ids;
    if (n == 0) {
        kb_wire_send_error(router, peer, req->request_id, KB_EINVAL,
                           "write request with no documents or ids");
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    if (leader_reserve(l, n)) {
        kb_wire_send_error(router, peer, req->request_id, KB_ENOMEM,
                           "out of memory");
        kbsync__request__free_unpacked(req, NULL);
        return;
    }
    idx_op_t *ops = l->ops + l->nops;
    for (size_t i = 0; i < n; i++) {
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
    int rc = idx_validate(l->ix, ops, n, err, sizeof err);
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
    l->nops += n;
}

void repl_leader_flush(repl_leader_t *l, void *router)
{
    if (l->qn == 0)
        return;
    char err[512];
    int rc = idx_write(l->ix, l->ops, l->nops, 0, l->lsns, err, sizeof err);
    if (rc)
        kb_warn("group commit of %zu requests (%zu ops) failed: %s", l->qn,
                l->nops, err);
    idx_stats_t st;
    idx_stats(l->ix, &st);
    for (size_t i = 0; i < l->qn; i++) {
        pending_t *p = &l->q[i];
        if (rc) {
            kb_wire_send_error(router, &p->peer, p->req->request_id, rc, err);
            continue;
        }
        Kbsync__WriteResult w = KBSYNC__WRITE_RESULT__INIT;
        w.version = st.version;
        for (size_t j = 0; j < p->nops; j++) {
            uint64_t lsn = l->lsns[p->first_op + j];
            if (lsn) {
                w.written++;
                w.version = lsn; /* ascending: ends at the request's last */
            } else {
                w.missing++;
            }
        }
        if (w.written == 0) /* only missing deletes: nothing newer to see */
            w.version = st.version;
        Kbsync__Response r = KBSYNC__RESPONSE__INIT;
        r.request_id = p->req->request_id;
        r.body_case = KBSYNC__RESPONSE__BODY_WRITE;
        r.write = &w;
        kb_wire_send_response(router, &p->peer, &r);
    }
    leader_clear(l);
}
