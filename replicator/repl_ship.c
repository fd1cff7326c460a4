/* repl_ship: the leader's log shipping (see repl_leader.h). In: Hello and
 * Ack messages from replicas on the replication socket; new records of a
 * group commit (before its commit, for groups with an `all` write). Out:
 * the log streamed in LSN order to every replica, heartbeats, and the
 * replica table (who is connected, what each acknowledged). Owns the
 * replication ROUTER socket and the replica table.
 *
 * STREAMING
 * A replica connects a DEALER whose routing id is its replica id and sends
 * ReplHello{applied_lsn, applied_commit_us}. The leader checks that record
 * against its own log (same LSN, same commit time) and answers ReplWelcome,
 * or ReplWelcome{diverged} when the replica holds a write the leader does
 * not. Then it sends ReplRecords — consecutive serialized LogRecords, as
 * stored — from applied_lsn + 1 on, never more than REPL_WINDOW records
 * beyond what the replica acknowledged. The replica applies each batch
 * durably (LMDB commit, then FAISS) and answers ReplAck{applied_lsn}.
 * Records of a new group commit go to every replica that is caught up
 * BEFORE the leader's own commit, so the replicas' fsyncs run while the
 * leader's does; lagging replicas are fed from the committed log. A
 * replica keeps such records staged (durable, not searchable) until a
 * ReplBeat.committed_lsn covers them; the leader sends one right after its
 * commit (repl__announce_commit). Below the log start (repl_retain.c) the
 * log is the documents table: a replica that needs it gets a snapshot
 * (ReplWelcome.snapshot_lsn) and the walk skips its gaps. If the
 * leader's commit fails after records were shipped, it turns read-only (see
 * repl_commit.c): it must not give those LSNs to other writes. After its
 * restart, a replica holding such a record is told it diverged.
 *
 * HEARTBEATS
 * Every REPL_BEAT_MS each replica gets ReplBeat{head_lsn, head_commit_us,
 * leader_now_us, next_lsn, next_commit_us}: the newest write, the leader's
 * clock, and the commit time of the oldest write that replica has not
 * acknowledged. Replicas ack at the same rate; that is how both sides tell
 * a live peer from a dead one.
 *
 * QUEUED
 * The window (REPL_WINDOW records, REPL_WINDOW_BYTES bytes beyond the last
 * ack) starts again with every hello. What an earlier session left in
 * ZeroMQ's queue for that routing id is not gone, though: a peer that
 * repeated its hello without reading had 64 MiB queued per hello (2.8 GB
 * of leader memory after 40). So every message to a replica carries a
 * free function that lowers its peer_q_t count when ZeroMQ's I/O thread
 * has written it or dropped it with the connection, and the leader sends
 * no records to a replica with REPL_WINDOW_BYTES or more still queued,
 * whichever session queued them. The table entry of an unnamed replica
 * that went away stays while messages for it are still queued (without a
 * snapshot pin), so that its next hello finds them counted. */
#include "repl_leader_int.h"

#include "kb_sec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

/* ------------------------------------------------------------- helpers */

/* A routing id for a log line: bytes outside printable ASCII become '?'. */
static void printable(char *out, size_t cap, const uint8_t *b, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = b[i] >= 0x20 && b[i] < 0x7f ? (char)b[i] : '?';
    out[n] = '\0';
}

/* ------------------------------------------------------------- QUEUED */

/* Drops one reference (the loop's, or a message's from ZeroMQ's I/O
 * thread); accepts NULL. */
static void peer_q_release(peer_q_t *q)
{
    if (q && atomic_fetch_sub(&q->refs, 1) == 1)
        free(q);
}

/* The bytes ZeroMQ still holds for p. */
static uint64_t peer_queued(const peer_t *p)
{
    return p->q ? atomic_load(&p->q->bytes) : 0;
}

/* A message's data, shared by the copies sent to several replicas. */
typedef struct sent_buf {
    _Atomic unsigned refs;
    size_t len;
    unsigned char data[];
} sent_buf_t;

/* One replica's copy of a message: what its free function gives back. */
typedef struct sent_copy {
    sent_buf_t *b;
    peer_q_t *q;
    atomic_int ready; /* release/acquire: the hand-over to ZeroMQ's I/O
                         thread, visible to ThreadSanitizer */
} sent_copy_t;

static sent_buf_t *sent_buf_new(size_t len)
{
    sent_buf_t *b = malloc(sizeof *b + (len ? len : 1));
    if (b) {
        atomic_init(&b->refs, 1);
        b->len = len;
    }
    return b;
}

static void sent_buf_release(sent_buf_t *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

static void sent_copy_free(void *data, void *hint)
{
    (void)data;
    sent_copy_t *c = hint;
    (void)atomic_load_explicit(&c->ready, memory_order_acquire);
    atomic_fetch_sub(&c->q->bytes, c->b->len);
    peer_q_release(c->q);
    sent_buf_release(c->b);
    free(c);
}

/* Sends b to replica p (routing frame, then its own copy of b), counted
 * in p's queue until ZeroMQ frees it. Returns 0, -EAGAIN (its queue is
 * full: try later), -EHOSTUNREACH (gone) or KB_ENOMEM (nothing went). */
static int send_counted(repl_leader_t *l, peer_t *p, sent_buf_t *b)
{
    /* Everything allocated before the routing frame goes: once it is sent
     * with SNDMORE the body must follow, or the next message would become
     * its body. */
    if (!p->q && (p->q = malloc(sizeof *p->q))) {
        atomic_init(&p->q->bytes, 0);
        atomic_init(&p->q->refs, 1);
    }
    sent_copy_t *c = p->q ? malloc(sizeof *c) : NULL;
    zmq_msg_t m;
    if (!c || zmq_msg_init_data(&m, b->data, b->len, sent_copy_free, c)) {
        free(c);
        return KB_ENOMEM;
    }
    c->b = b;
    c->q = p->q;
    atomic_fetch_add(&b->refs, 1);
    atomic_fetch_add(&p->q->refs, 1);
    atomic_fetch_add(&p->q->bytes, b->len);
    atomic_init(&c->ready, 0);
    atomic_store_explicit(&c->ready, 1, memory_order_release);
    int rc = 0;
    if (zmq_send(l->sock, p->id, strlen(p->id), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        rc = errno == EAGAIN ? -EAGAIN : -EHOSTUNREACH;
    else if (zmq_msg_send(&m, l->sock, ZMQ_DONTWAIT) < 0)
        rc = -EHOSTUNREACH; /* the routing frame went: the peer is gone */
    if (rc)
        zmq_msg_close(&m); /* calls sent_copy_free: uncounted */
    return rc;
}

/* At the leader's end: the table lets go of its queue counts (messages
 * ZeroMQ still holds keep theirs until it frees them). */
static void peers_release(repl_leader_t *l)
{
    for (size_t i = 0; i < l->npeers; i++) {
        peer_q_release(l->peer[i].q);
        l->peer[i].q = NULL;
    }
}

static peer_t *peer_find(repl_leader_t *l, const char *id, size_t len, int add)
{
    for (size_t i = 0; i < l->npeers; i++)
        if (strlen(l->peer[i].id) == len && !memcmp(l->peer[i].id, id, len))
            return &l->peer[i];
    if (!add || len == 0 || len >= sizeof l->peer[0].id)
        return NULL;
    peer_t *p = NULL;
    if (l->npeers == REPL_MAX_PEERS) {
        /* Full: the place of an unnamed replica silent for longer than a
         * live one ever is (REPL_DEAD_MS: a passing peer that said hello
         * and left, not yet marked gone) is taken. Named replicas keep
         * theirs. */
        uint64_t now = kb_mono_us(), oldest = UINT64_MAX;
        for (size_t i = 0; i < l->npeers; i++) {
            peer_t *q = &l->peer[i];
            /* (not one with messages still queued: its count would go
             * with it, and its next hello would get a window anew) */
            if (!q->named && q->heard_us < oldest &&
                now - q->heard_us > REPL_DEAD_MS * 1000u &&
                peer_queued(q) == 0) {
                oldest = q->heard_us;
                p = q;
            }
        }
        if (!p)
            return NULL;
        char who[64];
        printable(who, sizeof who, (const uint8_t *)id, len);
        kb_log_limited(&l->log_bad, KB_LOG_INFO,
                       "replica table full: %s, silent for %llu ms, makes way "
                       "for \"%s\"",
                       p->id, (unsigned long long)((now - p->heard_us) / 1000u),
                       who);
    } else {
        p = &l->peer[l->npeers++];
    }
    peer_q_release(p->q); /* an entry making way: its messages keep it */
    memset(p, 0, sizeof *p);
    memcpy(p->id, id, len);
    p->heard_us = kb_mono_us();
    return p;
}

/* ------------------------------------------------- the byte window */

static void flight_reset(peer_t *p)
{
    p->fl_head = p->fl_n = 0;
    p->inflight = 0;
}

static void flight_push(peer_t *p, uint64_t lsn, uint64_t bytes)
{
    if (p->fl_n == REPL_FLIGHT) { /* full: the newest entry grows */
        unsigned last = (p->fl_head + p->fl_n - 1) % REPL_FLIGHT;
        p->fl_lsn[last] = lsn;
        p->fl_bytes[last] += bytes;
    } else {
        unsigned i = (p->fl_head + p->fl_n++) % REPL_FLIGHT;
        p->fl_lsn[i] = lsn;
        p->fl_bytes[i] = bytes;
    }
    p->inflight += bytes;
}

static void flight_ack(peer_t *p, uint64_t acked)
{
    while (p->fl_n && p->fl_lsn[p->fl_head] <= acked) {
        p->inflight -= p->fl_bytes[p->fl_head];
        p->fl_head = (p->fl_head + 1) % REPL_FLIGHT;
        p->fl_n--;
    }
}

/* Whether p may be sent more: records and bytes in flight in this
 * session, and bytes still queued for it from any session (QUEUED). */
static int peer_has_room(const peer_t *p)
{
    return p->sent - p->acked < REPL_WINDOW &&
           p->inflight < REPL_WINDOW_BYTES &&
           peer_queued(p) < REPL_WINDOW_BYTES;
}

static void ship_reset(shipment_t *s)
{
    s->n = 0;
    s->bytes = 0;
    s->first = s->last = 0;
}

static int ship_add(shipment_t *s, uint64_t lsn, const void *b, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        ProtobufCBinaryData *r = realloc(s->rec, cap * sizeof *r);
        if (!r)
            return KB_ENOMEM;
        s->rec = r;
        s->cap = cap;
    }
    s->rec[s->n].data = (uint8_t *)b;
    s->rec[s->n].len = len;
    if (s->n++ == 0)
        s->first = lsn;
    s->last = lsn;
    s->bytes += len;
    return 0;
}

static int ship_full(const shipment_t *s)
{
    return s->n >= REPL_BATCH_RECORDS || s->bytes >= REPL_BATCH_BYTES;
}

static void fill_beat(repl_leader_t *l, const peer_t *p, Kbsync__ReplBeat *b)
{
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    kbsync__repl_beat__init(b);
    b->head_lsn = st.version;
    b->head_commit_us = st.commit_us;
    b->leader_now_us = kb_wall_us();
    b->client_endpoint = l->client_ep;
    b->committed_lsn = st.version;
    if (p->acked < st.version) {
        b->next_lsn = p->acked + 1;
        b->next_commit_us = idx_commit_time(l->ix, p->acked + 1);
    }
}


/* With CURVE: whether the key a message came with (its ZAP user id) has
 * the role replica:<rid>. */
static int key_may_follow(void *zmsg, const uint8_t *rid, size_t len)
{
    const char *id = NULL;
    const char *uid = zmq_msg_gets((zmq_msg_t *)zmsg, "User-Id");
    return kb_sec_role(uid, &id) == KB_ROLE_REPLICA && rid &&
           strlen(id) == len && !memcmp(id, rid, len);
}

/* Sends ReplMessage{error} to a routing id that is not (or not yet) in the
 * replica table. */
static void send_error_to(repl_leader_t *l, const void *rid, size_t len,
                          int code, const char *message)
{
    Kbsync__Error e = KBSYNC__ERROR__INIT;
    e.code = code;
    e.message = (char *)message;
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.protocol_version = KB_REPL_PROTOCOL_VERSION;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_ERROR;
    m.error = &e;
    size_t n = kbsync__repl_message__get_packed_size(&m);
    uint8_t buf[512];
    if (n > sizeof buf)
        return;
    kbsync__repl_message__pack(&m, buf);
    if (zmq_send(l->sock, rid, len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return;
    zmq_send(l->sock, buf, n, ZMQ_DONTWAIT);
}

/* Lines a replication peer can cause at its own pace (hellos that
 * diverge, acks that lose it its place, digest mismatches): one a second
 * per kind, then a count (kb_log_limited). The leader's replication runs
 * on the node loop only. */
static kb_loglimit_t log_lost, log_diverged, log_digest;

static void peer_lost(peer_t *p, const char *why)
{
    if (p->online)
        kb_log_limited(&log_lost, KB_LOG_WARN,
                       "replica %s: %s; marked disconnected (applied LSN "
                       "%llu)",
                       p->id, why, (unsigned long long)p->acked);
    p->online = 0;
}

void repl__peer_restart(repl_leader_t *l, peer_t *p)
{
    if (!p->online)
        return;
    peer_lost(p, "its session must start again");
    send_error_to(l, p->id, strlen(p->id), KB_EUNAVAIL, "say hello first");
}

/* Anti-entropy: the replica's digest at an LSN against ours there. A
 * mismatch is logged and the replica told (KB_ECORRUPT): it copies its
 * knowledge base anew. */
static void check_digest(repl_leader_t *l, peer_t *p, const Kbsync__ReplAck *a)
{
    uint64_t mine;
    if (!a->digest_lsn || idx_digest_at(l->ix, a->digest_lsn, &mine))
        return; /* loading a snapshot, or out of our window */
    if (mine == a->digest) {
        if (a->digest_lsn > p->dg_match)
            p->dg_match = a->digest_lsn;
        return;
    }
    if (a->digest_lsn <= p->dg_bad)
        return; /* told already */
    p->dg_bad = a->digest_lsn;
    p->dg_bads++;
    char msg[384];
    snprintf(msg, sizeof msg,
             "digest mismatch at LSN %llu: the replica's documents add up to "
             "%016llx, the leader's to %016llx; the replica must copy its "
             "knowledge base again",
             (unsigned long long)a->digest_lsn, (unsigned long long)a->digest,
             (unsigned long long)mine);
    kb_log_limited(&log_digest, KB_LOG_ERROR, "replica %s: %s", p->id, msg);
    send_error_to(l, p->id, strlen(p->id), KB_ECORRUPT, msg);
    peer_lost(p, "digest mismatch");
}

/* Packs m and sends it to replica p, counted in its queue (QUEUED).
 * Returns as send_counted; a peer found gone is marked so. */
static int send_msg(repl_leader_t *l, peer_t *p, Kbsync__ReplMessage *m)
{
    m->protocol_version = KB_REPL_PROTOCOL_VERSION;
    /* packed straight into the buffer ZeroMQ sends (send_counted) */
    sent_buf_t *b = sent_buf_new(kbsync__repl_message__get_packed_size(m));
    if (!b)
        return KB_ENOMEM;
    kbsync__repl_message__pack(m, b->data);
    int rc = send_counted(l, p, b);
    sent_buf_release(b);
    if (rc == -EHOSTUNREACH)
        peer_lost(p, "connection gone");
    return rc;
}

/* Packs the shipment ONCE and sends it to every peer in targets (ZeroMQ
 * shares the packed buffer between them). Returns how many got it. */
static int ship_send(repl_leader_t *l, peer_t **targets, size_t nt)
{
    shipment_t *s = &l->ship;
    if (s->n == 0 || nt == 0) {
        ship_reset(s);
        return 0;
    }
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    Kbsync__ReplBeat beat = KBSYNC__REPL_BEAT__INIT;
    /* Records shipped before the leader's commit are not its head yet:
     * announce the head they will make, so lag_ops is not understated. */
    beat.head_lsn = st.version > s->last ? st.version : s->last;
    beat.head_commit_us = st.commit_us;
    beat.leader_now_us = kb_wall_us();
    beat.client_endpoint = l->client_ep;
    beat.committed_lsn = st.version; /* precommit records stay staged */
    if (nt == 1 && s->last < st.version) {
        /* Catch-up: once it applied these, the replica's oldest unapplied
         * write is the next one; its commit time keeps lag_ms exact. */
        beat.next_lsn = s->last + 1;
        beat.next_commit_us = idx_commit_time(l->ix, s->last + 1);
    }
    Kbsync__ReplRecords rr = KBSYNC__REPL_RECORDS__INIT;
    rr.records = s->rec;
    rr.n_records = s->n;
    rr.beat = &beat;
    rr.group_open = s->open;
    rr.wait_lsn = l->wait_lsn;
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.protocol_version = KB_REPL_PROTOCOL_VERSION;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_RECORDS;
    m.records = &rr;
    size_t len = kbsync__repl_message__get_packed_size(&m);
    sent_buf_t *b = sent_buf_new(len);
    int sent = 0;
    if (!b) {
        ship_reset(s);
        return 0;
    }
    kbsync__repl_message__pack(&m, b->data);
    for (size_t i = 0; i < nt; i++) {
        peer_t *p = targets[i];
        /* its own copy of the message on the shared bytes (QUEUED) */
        int rc = send_counted(l, p, b);
        if (rc == -EAGAIN || rc == KB_ENOMEM) {
            s->stalled = 1; /* try again later */
            continue;
        }
        if (rc) {
            peer_lost(p, "connection gone");
            continue;
        }
        p->sent = s->last;
        flight_push(p, s->last, s->bytes);
        sent++;
    }
    sent_buf_release(b);
    ship_reset(s);
    return sent;
}

/* ---------------------------------------------------------- lifecycle */

int repl_leader_new(idx_kb_t *ix, void *zctx, const repl_leader_config_t *cfg,
                    repl_leader_t **out, char *err, size_t errlen)
{
    *out = NULL;
    repl_leader_t *l = calloc(1, sizeof *l);
    if (!l)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    l->ix = ix;
    l->cfg = *cfg;
    const char *fault = getenv("KBSYNC_TEST_FAULT");
    if (fault && !strncmp(fault, "crash-after-ship:", 17)) {
        l->crash_after_ship = strtoull(fault + 17, NULL, 10);
        kb_warn("KBSYNC_TEST_FAULT: this leader exits after shipping its "
                "group commit #%llu that holds a write waiting for replicas "
                "(tests only)",
                (unsigned long long)l->crash_after_ship);
    }
    if (fault && !strncmp(fault, "crash-after-commit:", 19)) {
        l->crash_after_commit = strtoull(fault + 19, NULL, 10);
        kb_warn("KBSYNC_TEST_FAULT: this leader exits after its group commit "
                "#%llu that holds an idempotent write, before answering it "
                "(tests only)",
                (unsigned long long)l->crash_after_commit);
    }
    if (!l->cfg.default_mode)
        l->cfg.default_mode = REPL_ASYNC;
    if (l->cfg.default_mode == REPL_QUORUM && l->cfg.default_quorum == 0) {
        free(l);
        return kb_seterr(err, errlen, KB_EINVAL,
                         "--write-mode quorum needs K >= 1 (quorum:K)");
    }
    if (l->cfg.write_timeout_ms <= 0)
        l->cfg.write_timeout_ms = 5000;
    snprintf(l->client_ep, sizeof l->client_ep, "%s",
             cfg->client_endpoint ? cfg->client_endpoint : "");
    if (cfg->replicas && *cfg->replicas) {
        const char *s = cfg->replicas;
        while (*s) {
            size_t n = strcspn(s, ",");
            peer_t *p = n ? peer_find(l, s, n, 1) : NULL;
            if (n && !p) {
                free(l);
                return kb_seterr(err, errlen, KB_EINVAL,
                                 "--replicas: bad or too many replica ids in "
                                 "\"%s\"",
                                 cfg->replicas);
            }
            if (p)
                p->named = 1;
            s += n;
            if (*s == ',')
                s++;
        }
    }
    if (l->cfg.default_mode == REPL_QUORUM &&
        l->cfg.default_quorum > repl__named(l, NULL)) {
        uint32_t n = repl__named(l, NULL);
        free(l);
        return kb_seterr(err, errlen, KB_EINVAL,
                         "--write-mode quorum:%u but --replicas names %u "
                         "replica%s",
                         cfg->default_quorum, n, n == 1 ? "" : "s");
    }
    if (cfg->repl_listen) {
        kb_curve_t cv;
        if (cfg->curve) {
            cv = *cfg->curve;
            cv.server[0] = '\0';
            cv.domain = "kbsync-repl";
        }
        /* Set before the bind, which is when a listener takes them (set
         * after it, as until Dec 7, they never applied): a deep send queue
         * per replica, ZMTP heartbeats that close a dead connection within
         * 3 s, and no message larger than a replica ever sends (hellos and
         * acks are a few KB: a larger one closes its connection before
         * the leader buffers it). */
        kb_sockopts_t so = {.sndhwm = 100000,
                            .heartbeat_ivl_ms = 1000,
                            .heartbeat_tmo_ms = 3000,
                            .maxmsgsize = REPL_IN_MAX_BYTES};
        int rc = kb_wire_socket_opts(zctx, ZMQ_ROUTER, cfg->repl_listen, 1,
                                     cfg->curve ? &cv : NULL, &so, &l->sock,
                                     err, errlen);
        if (cfg->curve)
            explicit_bzero(&cv, sizeof cv);
        if (rc) {
            free(l);
            return rc;
        }
        int one = 1;
        zmq_setsockopt(l->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
        /* No ZMQ_ROUTER_HANDOVER: a second connection under a routing id
         * that is connected is refused by ZeroMQ, so a peer that claims a
         * running replica's id cannot take its stream over. A replica that
         * comes back while its old connection is half-open is let in once
         * ZMTP heartbeats close the dead one (within 3 s), or at once when
         * its old connection was closed (a process that exits). */
        char ep[256];
        size_t eplen = sizeof ep;
        zmq_getsockopt(l->sock, ZMQ_LAST_ENDPOINT, ep, &eplen);
        if (l->cfg.default_mode != REPL_ASYNC &&
            !(cfg->replicas && *cfg->replicas))
            kb_warn("--write-mode %s without --replicas: it waits for no "
                    "replica and is the same as `async`",
                    repl_mode_name(l->cfg.default_mode));
        uint32_t n = repl__named(l, NULL);
        kb_info("replication on %s; named replicas: %s; default mode %s "
                "(waits for %u of %u named replicas)",
                ep, cfg->replicas && *cfg->replicas ? cfg->replicas : "(none)",
                repl_mode_name(l->cfg.default_mode),
                repl_mode_need(l->cfg.default_mode, l->cfg.default_quorum, n),
                n);
    }
    repl__retain_init(l);
    *out = l;
    return 0;
}

void repl_leader_free(repl_leader_t **lp)
{
    if (!lp || !*lp)
        return;
    repl_leader_t *l = *lp;
    peers_release(l);
    repl__clear_queue(l);
    repl__retain_free(l);
    free(l->ship.rec);
    if (l->sock)
        zmq_close(l->sock);
    free(l->q);
    free(l->ops);
    free(l->lsns);
    free(l->park);
    free(l->dd);
    free(l);
    *lp = NULL;
}

void *repl_leader_socket(repl_leader_t *l)
{
    return l->sock;
}

static uint64_t first_shipped(const repl_leader_t *l)
{
    uint64_t lo = 0;
    for (size_t i = 0; i < l->npeers; i++)
        if (l->peer[i].online && l->peer[i].sent > l->peer[i].acked &&
            (!lo || l->peer[i].acked + 1 < lo))
            lo = l->peer[i].acked + 1;
    return lo;
}

/* Precommit hook (groups holding an `all` request): collect the new
 * records and send them, before the leader's own commit, to every replica
 * that is exactly caught up, so that their fsyncs overlap the leader's. */
int repl__precommit(void *ctx, uint64_t lsn, const void *bytes,
                            size_t len)
{
    repl_leader_t *l = ctx;
    if (bytes) {
        int rc = ship_add(&l->ship, lsn, bytes, len);
        if (rc || !ship_full(&l->ship))
            return rc;
    }
    if (l->ship.n == 0)
        return 0;
    /* A chunk cut before the group's end: the replica must not make it
     * searchable until the rest arrives (a write is never partly seen). */
    l->ship.open = bytes != NULL;
    peer_t *t[REPL_MAX_PEERS];
    size_t nt = 0;
    for (size_t i = 0; i < l->npeers; i++)
        if (l->peer[i].online && l->peer[i].sent == l->ship.first - 1 &&
            peer_has_room(&l->peer[i]))
            t[nt++] = &l->peer[i];
    if (ship_send(l, t, nt))
        l->shipped = 1;
    if (!bytes && l->shipped && l->crash_after_ship &&
        --l->crash_after_ship == 0) {
        /* KBSYNC_TEST_FAULT=crash-after-ship:N (tests only): die between
         * shipping a group and committing it, as a power cut would. The
         * pause lets ZeroMQ's I/O thread put the records on the wire. */
        kb_error("KBSYNC_TEST_FAULT: exiting after shipping records from "
                 "LSN %llu on, before committing them",
                 (unsigned long long)first_shipped(l));
        usleep(200000);
        _exit(70);
    }
    return 0;
}

int repl__named_acked(const repl_leader_t *l, uint64_t lsn, uint32_t need,
                      char *missing, size_t cap, int *have, int *want)
{
    *have = *want = 0;
    size_t used = 0;
    if (missing && cap)
        missing[0] = 0;
    for (size_t i = 0; i < l->npeers; i++) {
        if (!l->peer[i].named)
            continue;
        (*want)++;
        if (l->peer[i].acked >= lsn)
            (*have)++;
        else if (missing && used < cap)
            used += (size_t)snprintf(missing + used, cap - used, "%s%s",
                                     used ? ", " : "", l->peer[i].id);
    }
    return (uint32_t)*have >= need;
}

uint32_t repl__named(const repl_leader_t *l, uint32_t *online)
{
    uint32_t n = 0, on = 0;
    for (size_t i = 0; i < l->npeers; i++)
        if (l->peer[i].named) {
            n++;
            on += l->peer[i].online != 0;
        }
    if (online)
        *online = on;
    return n;
}

void repl__announce_commit(repl_leader_t *l)
{
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    uint64_t now = kb_mono_us();
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (!p->online || p->sent <= p->acked || p->sent > st.version)
            continue;
        Kbsync__ReplBeat beat;
        fill_beat(l, p, &beat);
        Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
        m.body_case = KBSYNC__REPL_MESSAGE__BODY_BEAT;
        m.beat = &beat;
        if (send_msg(l, p, &m) == 0)
            p->beat_us = now;
    }
}

void repl__ship_reset(repl_leader_t *l)
{
    ship_reset(&l->ship);
}

/* --------------------------------------------------------- replication */

/* Log walk for one replica's catch-up: send a batch whenever one is full
 * and at the end of the walk (bytes == NULL); stop when its queue is full. */
/* Whether the committed group of the shipment's last record continues
 * after it (chunks are cut by size, not at group commits): the next record
 * in the log has the same commit time. */
static int group_goes_on(repl_leader_t *l, const shipment_t *s)
{
    if (s->n == 0)
        return 0;
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    if (s->last >= st.version)
        return 0;
    const ProtobufCBinaryData *b = &s->rec[s->n - 1];
    uint64_t us = kb_wire_peek_u64(b->data, b->len, 2);
    return us && idx_commit_time(l->ix, s->last + 1) == us;
}

static int catchup_visit(void *ctx, uint64_t lsn, const void *b, size_t len)
{
    repl_leader_t *l = ctx;
    shipment_t *s = &l->ship;
    if (b) {
        /* Below log start the log is the documents table: gaps there are
         * documents that were replaced or deleted, not missing records. */
        if (s->n == 0 && lsn != s->to->sent + 1 &&
            !(lsn > s->to->sent && lsn <= idx_log_start(l->ix))) {
            kb_error("replica %s: log record %llu is missing (next is %llu)",
                     s->to->id, (unsigned long long)s->to->sent + 1,
                     (unsigned long long)lsn);
            peer_lost(s->to, "needed log record is gone");
            return 1;
        }
        /* A store upgraded from format 1 may hold, below its log start,
         * upsert records of documents deleted before the upgrade (there
         * were no undo entries to find them by): never ship those. */
        if (lsn < l->cat_start && lsn < l->cat_undo_from &&
            !idx_record_is_live(l->ix, lsn, b, len))
            return 0; /* skipped: a gap like the others below log start */
        int rc = ship_add(s, lsn, b, len);
        if (rc || !ship_full(s))
            return rc;
    }
    peer_t *t[1] = {s->to};
    s->open = group_goes_on(l, s);
    ship_send(l, t, 1);
    return s->stalled || !s->to->online || !peer_has_room(s->to) ? 1 : 0;
}

/* Feeds one replica from the committed log until it is caught up, its
 * window is full, or its queue is. */
static void stream_peer(repl_leader_t *l, peer_t *p, uint64_t head)
{
    char err[256];
    if (!p->online || p->sent >= head || !peer_has_room(p))
        return;
    size_t room = REPL_WINDOW - (size_t)(p->sent - p->acked);
    l->ship.to = p;
    l->ship.stalled = 0;
    l->cat_start = idx_log_start(l->ix);
    l->cat_undo_from = idx_undo_from(l->ix);
    ship_reset(&l->ship);
    int rc = idx_read_log(l->ix, p->sent + 1, room, catchup_visit, l, err,
                          sizeof err);
    if (rc < 0)
        kb_error("replica %s: cannot read the log from LSN %llu: %s", p->id,
                 (unsigned long long)p->sent + 1, err);
    ship_reset(&l->ship);
}

void repl__stream_all(repl_leader_t *l)
{
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    for (size_t i = 0; i < l->npeers; i++)
        stream_peer(l, &l->peer[i], st.version);
}

static void on_hello(repl_leader_t *l, peer_t *p, const Kbsync__ReplHello *h)
{
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    Kbsync__ReplWelcome w = KBSYNC__REPL_WELCOME__INIT;
    w.meta = (Kbsync__KbMeta *)idx_meta(l->ix);
    w.head_lsn = st.version;
    w.client_endpoint = l->client_ep;
    char reason[256] = "";
    const uint64_t start = idx_log_start(l->ix), have = h->applied_lsn;
    /* Behind the retained log (or new, with the log compacted): the ops it
     * misses are gone, only the documents they left are here. */
    /* A replica part way through a snapshot goes on from where it is when
     * nothing was compacted since the snapshot began (the log still starts
     * right after its end) and this leader still knows that snapshot (its
     * table entry kept it, so no sweep ran past it since): what it lacks is
     * still here, unchanged. After a leader restart, or once the entry of
     * an unnamed replica expired, it starts a new snapshot. */
    const int resume = h->loading_lsn && h->loading_lsn + 1 == start &&
                       have <= h->loading_lsn &&
                       p->snapshot_lsn == h->loading_lsn;
    int snap = have <= st.version && !resume &&
               ((have == 0 && start > 1) || (have > 0 && have + 1 < start) ||
                (have > 0 && have < start &&
                 idx_commit_time(l->ix, have) == 0));
    if (resume) {
        w.snapshot_lsn = h->loading_lsn;
        w.log_start = start;
        w.snapshot_docs = st.docs;
        kb_info("replica %s resumes loading its snapshot at LSN %llu (of "
                "%llu)",
                p->id, (unsigned long long)have,
                (unsigned long long)h->loading_lsn);
    } else if (snap) {
        w.snapshot_lsn = start - 1;
        w.log_start = start;
        w.snapshot_docs = st.docs;
        w.behind = have ? start - 1 - have : 0;
        if (have)
            kb_warn("replica %s is behind the retained log: it has LSN %llu, "
                    "the log starts at %llu (%llu LSNs compacted since); "
                    "sending it a snapshot of %llu documents at LSN %llu",
                    p->id, (unsigned long long)have, (unsigned long long)start,
                    (unsigned long long)w.behind, (unsigned long long)st.docs,
                    (unsigned long long)w.snapshot_lsn);
        else
            kb_info("replica %s is new; the log is compacted below LSN %llu: "
                    "sending it a snapshot of %llu documents at LSN %llu",
                    p->id, (unsigned long long)start,
                    (unsigned long long)st.docs,
                    (unsigned long long)w.snapshot_lsn);
    } else if (h->applied_lsn > st.version) {
        snprintf(reason, sizeof reason,
                 "replica %s has applied LSN %llu but the leader's newest is "
                 "%llu: it holds writes the leader never committed",
                 p->id, (unsigned long long)h->applied_lsn,
                 (unsigned long long)st.version);
    } else if (h->applied_lsn > 0 &&
               idx_commit_time(l->ix, h->applied_lsn) != h->applied_commit_us) {
        snprintf(reason, sizeof reason,
                 "replica %s's record at LSN %llu differs from the leader's "
                 "(commit time %llu vs %llu)",
                 p->id, (unsigned long long)h->applied_lsn,
                 (unsigned long long)h->applied_commit_us,
                 (unsigned long long)idx_commit_time(l->ix, h->applied_lsn));
    }
    if (*reason) {
        w.diverged = 1;
        w.reason = reason;
        /* The newest record both logs hold (same LSN, same commit time):
         * the replica keeps everything up to it and drops the rest. */
        size_t n = h->n_recent_lsn < h->n_recent_commit_us
                       ? h->n_recent_lsn
                       : h->n_recent_commit_us;
        if (n > REPL_RECENT_MAX) /* a replica sends about 100 */
            n = REPL_RECENT_MAX;
        for (size_t i = 0; i < n && !w.keep_lsn; i++)
            if (h->recent_lsn[i] && h->recent_lsn[i] <= st.version &&
                idx_commit_time(l->ix, h->recent_lsn[i]) ==
                    h->recent_commit_us[i])
                w.keep_lsn = h->recent_lsn[i];
        if (w.keep_lsn)
            kb_log_limited(&log_diverged, KB_LOG_ERROR,
                           "%s; telling it to drop what follows the last "
                           "record we share: it keeps its log up to LSN %llu",
                           reason, (unsigned long long)w.keep_lsn);
        else
            kb_log_limited(&log_diverged, KB_LOG_ERROR,
                           "%s; telling it to start over", reason);
        p->online = 0; /* not a follower until it says hello from scratch */
    }
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_WELCOME;
    m.welcome = &w;
    p->heard_us = kb_mono_us();
    if (send_msg(l, p, &m) || *reason)
        return;
    if (!p->online)
        kb_info(
            "replica %s connected: applied LSN %llu, leader at %llu%s", p->id,
            (unsigned long long)h->applied_lsn, (unsigned long long)st.version,
            h->applied_lsn < st.version ? "; streaming what it missed" : "");
    p->online = 1;
    p->sent = snap ? 0 : h->applied_lsn;
    flight_reset(p);
    p->durable = p->received = p->sent;
    /* Applied (searchable) only up to what the replica could search when it
     * said hello: its staged records above that become searchable when it
     * reads this welcome, and its next ack says so. 0 is "not said" (a
     * replica of an earlier release, or one with nothing searchable yet):
     * then, as before, its applied LSN counts. */
    p->acked = h->searchable_lsn && h->searchable_lsn < p->sent
                   ? h->searchable_lsn
                   : p->sent;
    p->snapshot_lsn = snap || resume ? w.snapshot_lsn : 0;
    p->warned_behind = 0;
    p->beat_us = 0;
    stream_peer(l, p, st.version);
}

void repl_leader_on_repl(repl_leader_t *l, void *router)
{
    if (!l->sock)
        return;
    for (int i = 0; i < 1024; i++) {
        kb_peer_t env;
        kb_buf_t b;
        int rc = kb_wire_recv(l->sock, &env, &b);
        if (rc == -EAGAIN || rc == -EINTR)
            break;
        if (rc) {
            kb_log_limited(&l->log_bad, KB_LOG_WARN,
                           "replication socket: dropped a malformed message "
                           "(%s)",
                           kb_strerror(rc));
            continue;
        }
        Kbsync__ReplMessage *m =
            kbsync__repl_message__unpack(NULL, b.len, b.data);
        /* Strings end up in status answers and logs: UTF-8 only, as on
         * the client socket. */
        char bad_str[160];
        int bad_utf8 = m && kb_wire_check_strings(
                                &kbsync__repl_message__descriptor, b.data,
                                b.len, bad_str, sizeof bad_str);
        /* A peer enters the table only by saying hello, in our protocol
         * version, with a routing id equal to its replica id (ZeroMQ's
         * generated ids never match). */
        int hello = env.nframes == 1 && m &&
                    m->body_case == KBSYNC__REPL_MESSAGE__BODY_HELLO;
        const char *refuse = NULL;
        char why[160];
        if (bad_utf8) {
            refuse = bad_str;
            rc = KB_EINVAL;
        } else if (hello &&
                   (m->hello->protocol_version != KB_REPL_PROTOCOL_VERSION ||
                      m->protocol_version != KB_REPL_PROTOCOL_VERSION)) {
            snprintf(why, sizeof why,
                     "hello in replication protocol %u (message %u); this "
                     "leader speaks %u",
                     m->hello->protocol_version, m->protocol_version,
                     KB_REPL_PROTOCOL_VERSION);
            refuse = why;
            rc = KB_EPROTO;
        } else if (m && l->cfg.curve &&
                   !key_may_follow(b.priv, env.nframes ? env.frame[0] : NULL,
                                   env.nframes ? env.len[0] : 0)) {
            refuse = "this key may not follow the leader under this id "
                     "(its role in the trust file is not replica:<this id>)";
            rc = KB_EACCES;
        } else if (hello && !(m->hello->replica_id &&
                              strlen(m->hello->replica_id) == env.len[0] &&
                              !memcmp(m->hello->replica_id, env.frame[0],
                                      env.len[0]))) {
            refuse = "replica_id must equal the connection's routing id";
            rc = KB_EINVAL;
        }
        peer_t *p = env.nframes == 1 && !refuse
                        ? peer_find(l, (const char *)env.frame[0], env.len[0],
                                    hello)
                        : NULL;
        if (!refuse && m && !p && env.nframes == 1) {
            /* KB_EUNAVAIL only for "say hello first": the replica says
             * hello again at once; for the others it pauses first. */
            if (!hello) {
                refuse = "say hello first";
                rc = KB_EUNAVAIL;
            } else if (env.len[0] >= sizeof l->peer[0].id) {
                refuse = "a replica id has at most 63 bytes";
                rc = KB_EINVAL;
            } else {
                refuse = "the replica table is full (64 entries, none "
                         "disconnected)";
                rc = KB_ETOOBIG;
            }
        }
        if (!m || !p) {
            char rid[64];
            printable(rid, sizeof rid,
                         env.nframes ? env.frame[0] : (const uint8_t *)"",
                         env.nframes ? env.len[0] : 0);
            kb_log_limited(&l->log_bad, KB_LOG_WARN,
                           "replication socket: %s from \"%s\" (%zu bytes)%s%s",
                           m ? "refused a message" : "undecodable message",
                           rid, b.len, refuse ? ": " : "",
                           refuse ? refuse : "");
            if (m && refuse && env.nframes == 1)
                send_error_to(l, env.frame[0], env.len[0], rc, refuse);
        } else if (m->body_case == KBSYNC__REPL_MESSAGE__BODY_HELLO) {
            on_hello(l, p, m->hello);
        } else if (m->body_case == KBSYNC__REPL_MESSAGE__BODY_READ_INDEX) {
            p->heard_us = kb_mono_us();
            if (!p->online) {
                send_error_to(l, p->id, strlen(p->id), KB_EUNAVAIL,
                              "say hello first");
            } else {
                /* The read index: our committed version now, after every
                 * write we acknowledged before reading this request. */
                Kbsync__ReplBeat beat;
                fill_beat(l, p, &beat);
                beat.read_index_seq = m->read_index->seq;
                Kbsync__ReplMessage out = KBSYNC__REPL_MESSAGE__INIT;
                out.body_case = KBSYNC__REPL_MESSAGE__BODY_BEAT;
                out.beat = &beat;
                if (send_msg(l, p, &out) == 0)
                    p->beat_us = kb_mono_us();
            }
        } else if (m->body_case == KBSYNC__REPL_MESSAGE__BODY_ACK) {
            p->heard_us = kb_mono_us();
            if (!p->online) {
                /* Ack from a replica we do not stream to (e.g. we restarted):
                 * it must say hello again. */
                send_error_to(l, p->id, strlen(p->id), KB_EUNAVAIL,
                              "say hello first");
            } else if (m->ack->applied_lsn > p->sent) {
                /* It claims records we never sent it in this session: its
                 * store is not what its hello said (or the hello was stale).
                 * Never count that for `all`: make it say hello again, which
                 * checks its newest record against our log. */
                peer_lost(p, "acknowledged an LSN it was never sent");
                send_error_to(l, p->id, strlen(p->id), KB_EUNAVAIL,
                              "say hello first");
            } else {
                if (m->ack->applied_lsn > p->acked)
                    p->acked = m->ack->applied_lsn;
                flight_ack(p, p->acked);
                /* Never beyond what it was sent: a receipt's stage is a
                 * lower bound on what the replica reached. */
                if (m->ack->durable_lsn > p->durable &&
                    m->ack->durable_lsn <= p->sent)
                    p->durable = m->ack->durable_lsn;
                if (m->ack->received_lsn > p->received &&
                    m->ack->received_lsn <= p->sent)
                    p->received = m->ack->received_lsn;
                if (p->durable > p->received)
                    p->received = p->durable;
                check_digest(l, p, m->ack);
                if (p->snapshot_lsn && p->acked >= p->snapshot_lsn) {
                    kb_info("replica %s loaded its snapshot (LSN %llu)",
                            p->id, (unsigned long long)p->snapshot_lsn);
                    p->snapshot_lsn = 0;
                }
            }
        }
        if (m)
            kbsync__repl_message__free_unpacked(m, NULL);
        kb_buf_free(&b);
    }
    repl__release_parked(l, router);
    repl__stream_all(l);
}

int repl_leader_tick(repl_leader_t *l, void *router)
{
    /* Read acks that arrived during a long group commit before judging who
     * is dead. */
    repl_leader_on_repl(l, router);
    uint64_t now = kb_mono_us();
    int next = REPL_BEAT_MS;
    for (size_t i = 0; l->sock && i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (!p->online)
            continue;
        if (now - p->heard_us > REPL_DEAD_MS * 1000u) {
            peer_lost(p, "no word for over 1000 ms");
            continue;
        }
        if (now - p->beat_us >= REPL_BEAT_MS * 1000u) {
            Kbsync__ReplBeat beat;
            fill_beat(l, p, &beat);
            Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
            m.body_case = KBSYNC__REPL_MESSAGE__BODY_BEAT;
            m.beat = &beat;
            if (send_msg(l, p, &m) == 0)
                p->beat_us = now;
        }
    }
    /* Entries of replicas not named in --replicas go when they are gone:
     * ids made up by passing peers must not fill the table. Not while
     * ZeroMQ still holds messages for one, though (QUEUED): its next hello
     * must find them counted. */
    size_t kept = 0;
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (!p->named && !p->online)
            p->snapshot_lsn = 0; /* nor pins a snapshot, nor resumes it */
        if (p->named || p->online || peer_queued(p))
            l->peer[kept++] = l->peer[i];
        else
            peer_q_release(l->peer[i].q); /* its messages keep theirs */
    }
    for (size_t i = kept; i < l->npeers; i++)
        l->peer[i].q = NULL; /* moved down, or released above */
    l->npeers = kept;
    repl__release_parked(l, router);
    if (l->sock)
        repl__stream_all(l);
    repl__retain_tick(l);
    repl__dedup_tick(l);
    for (size_t i = 0; i < l->nparked; i++) {
        int left =
            (int)((l->park[i].deadline_us > now ? l->park[i].deadline_us - now
                                                : 0) /
                  1000u);
        if (left < next)
            next = left;
    }
    return next;
}

/* LSNs behind the committed version, and ms since the oldest write not at
 * the stage yet was committed. */
static void stage_lag(repl_leader_t *l, uint64_t head, uint64_t now_us,
                      uint64_t at, uint64_t *ops, uint64_t *ms)
{
    *ops = head > at ? head - at : 0;
    *ms = 0;
    if (*ops) {
        uint64_t t = idx_commit_time(l->ix, at + 1);
        *ms = t && now_us > t ? (now_us - t) / 1000u : 0;
    }
}

void repl_leader_replicas(repl_leader_t *l, Kbsync__ReplicaState ***out,
                          size_t *n)
{
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    uint64_t now = kb_wall_us();
    size_t k = 0;
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        Kbsync__ReplicaState *r = &l->rs[k];
        kbsync__replica_state__init(r);
        r->id = p->id;
        r->connected = p->online;
        r->version = p->acked;
        r->durable_version = p->durable > p->acked ? p->durable : p->acked;
        r->snapshot = p->online && p->snapshot_lsn != 0;
        /* what the leader holds for it: in flight in this session, or
         * still queued in ZeroMQ from any (QUEUED) */
        uint64_t held = peer_queued(p);
        if (p->online && p->inflight > held)
            held = p->inflight;
        r->queued_bytes = held;
        r->received_version =
            p->received > r->durable_version ? p->received : r->durable_version;
        stage_lag(l, st.version, now, p->acked, &r->lag_ops, &r->lag_ms);
        stage_lag(l, st.version, now, r->durable_version, &r->durable_lag_ops,
                  &r->durable_lag_ms);
        stage_lag(l, st.version, now, r->received_version,
                  &r->received_lag_ops, &r->received_lag_ms);
        r->digest_match_lsn = p->dg_match;
        r->digest_mismatch_lsn = p->dg_bad;
        r->digest_mismatches = p->dg_bads;
        l->rsp[k] = r;
        k++;
    }
    *out = l->rsp;
    *n = k;
}
