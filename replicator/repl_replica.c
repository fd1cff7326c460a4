/* repl_replica: following the leader (see repl_replica.h; the leader's side
 * of the protocol is described in repl_leader.c).
 *
 * CATCH-UP HANDSHAKE
 * Until it is streaming, the replica sends ReplHello{applied_lsn,
 * applied_commit_us} every REPLICA_HELLO_MS. The leader answers ReplWelcome
 * with its settings (the replica's store is created from them on first
 * contact, and must match them later) and streams from applied_lsn + 1: a
 * replica that was down resumes from its own applied LSN and receives only
 * what it missed. ReplWelcome{diverged} means this replica holds a write the
 * leader never committed (the leader crashed after shipping it): the replica
 * drops its records after ReplWelcome.keep_lsn, the newest record both logs
 * share (found from the list of newest records in its hello), reopens and
 * says hello from there. Only when no record is shared, or the store cannot
 * be read, does it move its data directory aside (DIR.diverged-<time>, kept
 * for inspection) and start over from an empty knowledge base.
 *
 * APPLY
 * The ReplRecords waiting on the socket are applied in batches of up to
 * REPLICA_MAX_BATCH records or REPLICA_MAX_BATCH_BYTES, one LMDB
 * transaction each (idx_apply_log_staged: fsync, then FAISS), then
 * ReplAck{applied_lsn, durable_lsn} goes back. A group commit that goes on
 * past a batch (ReplRecords.group_open) is held back whole into the next
 * one (hold_n), so that no part of it becomes searchable alone, up to
 * REPLICA_MAX_GROUP_BYTES. Records above the leader's committed_lsn stay
 * staged (durable, not searchable) until a later message confirms them
 * (replica_publish). A snapshot welcome empties the directory and loads the
 * leader's documents first; no query is served until it is complete.
 * Records at or below the applied LSN (re-sent after a reconnect) are
 * dropped and counted; a record that does not continue the applied LSN (a
 * gap or reordering) is never applied: the batch is dropped and the replica
 * says hello again, resuming from what it has.
 *
 * STALENESS
 * Every message from the leader updates the leader's head (newest LSN and
 * its commit time) and the clock offset (leader_now_us - local wall clock),
 * so lag_ms is measured on the leader's clock. lag_ops = head - applied.
 * lag_ms = leader_now - commit time of the oldest unapplied write (LSN
 * applied + 1): exact when the last heartbeat or records message named that
 * LSN (next_lsn), otherwise measured from our newest write's commit time (an
 * upper bound; unknown when we hold none). With lag_ops 0 it is the age of
 * the leader's last message (leader_contact_ms): a write committed after
 * that message cannot have arrived, so no smaller figure is safe; it stays
 * under REPL_BEAT_MS + delivery on a live link, and grows while the leader
 * is silent. Behind (lag_ops > 0) and silent for more than
 * REPLICA_SILENT_MS, lag_ms is at least the silence as well, so a cut-off
 * replica shows its lag growing instead of freezing. lag_ms is therefore
 * never below the true lag; a bounded read that the contact age alone
 * exceeds asks the leader first (query/qry_read.c). */
#include "repl_replica.h"

#include "kb_sec.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define REPLICA_HELLO_MS 250
#define REPLICA_HELLO_RETRY_MS 20 /* a hello not sent: no connection yet */
/* Applying failed (disk full, map full, I/O error): ask again after a delay
 * that doubles from the first to the last, and log once per state change. */
#define REPLICA_APPLY_RETRY_FIRST_MS 50
#define REPLICA_APPLY_RETRY_MAX_MS 5000
#define REPLICA_ACK_MS 100
/* Records no writer waits for are committed lazily (one flush, see
 * idx_set_lazy): flushed in full once the stream pauses this long, and
 * acknowledged at most this often while it flows (an ack wakes the
 * leader; a waited-for record is acknowledged at once). */
#define REPLICA_LAZY_SYNC_MS 2
#define REPLICA_LAZY_ACK_MS 5
/* A read-index request unanswered this long is sent again (same seq). */
#define REPLICA_RI_RESEND_MS 200
#define REPLICA_SILENT_MS 300
#define REPLICA_DEAD_MS 1000
/* While the leader is silent, a fresh connection every this often: a TCP
 * connection whose packets were dropped (a partition) recovers only at the
 * kernel's retransmission back-off, seconds after the network heals. */
#define REPLICA_RECONNECT_MS 1000
#define REPLICA_RECENT 96 /* records named in a hello (64 + powers of 2) */
#define REPLICA_MAX_BATCH 16384 /* records applied in one transaction */
/* ... and bytes: a transaction of large records must not keep the replica
 * from acknowledging for so long that the leader thinks it is gone. */
#define REPLICA_MAX_BATCH_BYTES (8u << 20)
/* A group commit is held back whole until it is complete (no part of it
 * searchable alone) unless it grows past REPLICA_MAX_BATCH records or
 * this many bytes; then it is applied in parts. Half the leader's send
 * window (REPL_WINDOW_BYTES, 64 MiB, repl_leader_int.h): the leader counts
 * records in flight until they are acknowledged, and a held group is not,
 * so a limit at the window could stop the leader sending the rest of the
 * group the replica waits for. */
#define REPLICA_MAX_GROUP_BYTES ((size_t)32 << 20)
#define REPLICA_STUCK_MS 1000   /* behind, yet no records: ask again */
#define REPLICA_OFFSET_KEEP_US 10000000u /* clock-offset sample lifetime */
#define REPLICA_COMPACT_MS 1000   /* a compaction pass this often */
#define REPLICA_SNAP_LOG_MS 5000  /* snapshot progress in the log */
#define REPLICA_COMPACT_STEP 8192 /* operations per compaction step */
#define REPLICA_COMPACT_EARLY 4096 /* ... a pass as soon as this many came */

struct repl_replica {
    repl_replica_config_t cfg;
    void *zctx, *sock;
    idx_kb_t *ix; /* changed only under *cfg.ix_lock held exclusively */
    int streaming;
    uint64_t hello_us, ack_us, heard_us; /* monotonic */
    uint64_t received; /* newest LSN read off the connection this session */
    /* Read index (strong reads, and bounded reads that ask, see
     * query/qry_read.c): one ReplReadIndex in flight at a time;
     * reads that arrive meanwhile wait for the next one. */
    uint64_t ri_sent;    /* seq of the newest request sent */
    uint64_t ri_sent_us; /* monotonic: when (re)sent */
    uint64_t ri_want;    /* newest seq some read waits for */
    uint64_t ri_done;    /* newest seq answered */
    uint64_t ri_lsn;     /* the leader's committed LSN in that answer */
    uint64_t resyncs;    /* copies started over for a digest mismatch */
    uint64_t conn_us;                    /* monotonic: socket (re)created */
    int hello_unsent; /* the last hello found no connection to go out on */
    uint64_t apply_fails;    /* failed applies in a row */
    uint64_t apply_retry_us; /* monotonic: no hello before this */
    unsigned apply_delay_ms; /* the current back-off */
    char apply_err[256];     /* the last failure, logged once */
    int dropped_tail;        /* reopening after dropping a diverged tail */
    /* The hello's list of newest records, for the applied LSN recent_at. */
    uint64_t recent_lsn[REPLICA_RECENT], recent_us[REPLICA_RECENT];
    size_t recent_n;
    uint64_t recent_at;
    /* smu guards what readers use to compute staleness: head_lsn through
     * next_commit_us. The node loop writes them; reader threads read them. */
    pthread_mutex_t smu;
    uint64_t head_lsn, head_commit_us;
    int64_t offset_us;       /* leader wall clock - local wall clock */
    uint64_t offset_mono;    /* when offset_us was sampled (0 = never) */
    uint64_t leader_sent_us; /* newest leader_now_us received */
    uint64_t records_us;     /* monotonic time records last arrived */
    uint64_t next_lsn, next_commit_us;
    /* Newest LSN the leader said it committed (ReplBeat.committed_lsn, or
     * its head at a welcome that found our log a prefix of its own): our
     * records up to it may be searchable; later ones stay staged. */
    uint64_t leader_committed;
    /* Snapshot being loaded (see SNAPSHOT): what the leader's welcome said
     * and when loading started. */
    uint64_t compact_us, compact_log_us, compacted;
    uint64_t compact_version; /* published version at the last pass */
    int compact_behind;
    uint64_t snap_docs_total;
    uint64_t snap_start_us;   /* monotonic */
    uint64_t snap_start_docs; /* documents held when this session started */
    uint64_t snap_log_us;     /* monotonic: the last progress line */
    char leader_ep[256];
    uint64_t dup_records;
    kb_loglimit_t log_refused, log_sync;
    /* ReplRecords.wait_lsn: records up to it are flushed in full and
     * acknowledged at once; later ones are committed lazily. lazy_us: when
     * the newest lazy commit was made (flushed REPLICA_LAZY_SYNC_MS on). */
    uint64_t wait_lsn, lazy_us;
    unsigned refuse_delay_ms; /* pause after a refused hello; reset at a
                                 welcome */
    /* records of the batch being applied: bytes borrowed from messages, or
     * owned (own[i]) when held back from an earlier batch */
    const void **rec;
    size_t *len;
    uint8_t *own;
    Kbsync__ReplMessage **msgs;
    size_t nrec, nmsgs;
    size_t batch_bytes; /* bytes of rec[0..nrec) */
    /* rec[0..hold_n) are a group commit (commit time hold_us) held back
     * from the last batch, hold_bytes long: a large group arriving in many
     * messages is looked at once per record, not once per message. */
    size_t hold_n, hold_bytes;
    uint64_t hold_us;
    int group_open; /* the last message's group commit goes on after it */
    uint64_t crash_after_apply; /* KBSYNC_TEST_FAULT countdown (0 = off) */
};

static void batch_release(repl_replica_t *r);

/* Replaces the knowledge base (NULL closes it) while no reader uses it. */
static void replica_set_ix(repl_replica_t *r, idx_kb_t *ix)
{
    idx_kb_t *old = r->ix;
    if (r->cfg.ix_lock)
        pthread_rwlock_wrlock(r->cfg.ix_lock);
    r->ix = ix;
    if (r->cfg.ix_lock)
        pthread_rwlock_unlock(r->cfg.ix_lock);
    idx_close(&old);
}

/* Closes the knowledge base that is about to be moved aside, emptied or
 * cut back: no checkpoint of it at close (it would be discarded). */
static void replica_discard_ix(repl_replica_t *r)
{
    if (r->ix)
        idx_skip_close_checkpoint(r->ix);
    replica_set_ix(r, NULL);
}

static int replica_connect(repl_replica_t *r, char *err, size_t errlen)
{
    if (r->sock)
        zmq_close(r->sock);
    r->sock = zmq_socket(r->zctx, ZMQ_DEALER);
    if (!r->sock)
        return kb_seterr(err, errlen, KB_ENET, "zmq_socket: %s",
                         zmq_strerror(errno));
    int zero = 0, hwm = 100000;
    zmq_setsockopt(r->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(r->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(r->sock, ZMQ_ROUTING_ID, r->cfg.id, strlen(r->cfg.id));
    /* Do not queue hellos/acks while the leader is unreachable: a restarted
     * leader would get every one of them at once. */
    int one = 1, ivl = 1000, tmo = 3000;
    int conn_tmo = 250, re_ivl = 50, re_max = 1000;
    zmq_setsockopt(r->sock, ZMQ_IMMEDIATE, &one, sizeof one);
    zmq_setsockopt(r->sock, ZMQ_CONNECT_TIMEOUT, &conn_tmo, sizeof conn_tmo);
    zmq_setsockopt(r->sock, ZMQ_RECONNECT_IVL, &re_ivl, sizeof re_ivl);
    zmq_setsockopt(r->sock, ZMQ_RECONNECT_IVL_MAX, &re_max, sizeof re_max);
    zmq_setsockopt(r->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(r->sock, ZMQ_HEARTBEAT_TIMEOUT, &tmo, sizeof tmo);
    const kb_curve_t *cv = r->cfg.curve;
    if (cv && (zmq_setsockopt(r->sock, ZMQ_CURVE_PUBLICKEY, cv->pub, 40) ||
               zmq_setsockopt(r->sock, ZMQ_CURVE_SECRETKEY, cv->sec, 40) ||
               zmq_setsockopt(r->sock, ZMQ_CURVE_SERVERKEY, cv->server, 40)))
        return kb_seterr(err, errlen, KB_ENET, "CURVE: %s",
                         zmq_strerror(errno));
    r->conn_us = kb_mono_us();
    if (zmq_connect(r->sock, r->cfg.leader))
        return kb_seterr(err, errlen, KB_ENET,
                         "cannot connect to leader %s: %s", r->cfg.leader,
                         zmq_strerror(errno));
    return 0;
}

int repl_replica_new(void *zctx, const repl_replica_config_t *cfg,
                     repl_replica_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->id || !*cfg->id || strlen(cfg->id) >= 64)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "replica id must be 1 to 63 bytes");
    /* The leader refuses a hello whose strings are not UTF-8. */
    if (kb_utf8_check(cfg->id, strlen(cfg->id)) != strlen(cfg->id))
        return kb_seterr(err, errlen, KB_EINVAL,
                         "replica id \"%s\" is not valid UTF-8", cfg->id);
    repl_replica_t *r = calloc(1, sizeof *r);
    if (!r)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    r->cfg = *cfg;
    r->zctx = zctx;
    const char *fault = getenv("KBSYNC_TEST_FAULT");
    if (fault && !strncmp(fault, "crash-after-apply:", 18)) {
        r->crash_after_apply = strtoull(fault + 18, NULL, 10);
        kb_warn("KBSYNC_TEST_FAULT: this replica exits after applying its "
                "batch #%llu of records from the leader (tests only)",
                (unsigned long long)r->crash_after_apply);
    }
    pthread_mutex_init(&r->smu, NULL);
    r->rec = malloc(REPLICA_MAX_BATCH * sizeof *r->rec);
    r->len = malloc(REPLICA_MAX_BATCH * sizeof *r->len);
    r->msgs = malloc(REPLICA_MAX_BATCH * sizeof *r->msgs);
    r->own = calloc(REPLICA_MAX_BATCH, sizeof *r->own);
    if (!r->rec || !r->len || !r->msgs || !r->own) {
        repl_replica_free(&r);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    /* An existing knowledge base is served (stale) until the leader is
     * reachable; a new directory waits for the leader's settings. */
    idx_config_t ic = {.dir = cfg->data_dir,
                       .node_id = cfg->id,
                       .map_size = cfg->map_size,
                       .nosync = cfg->nosync,
                       .replica = 1,
                       .ckpt_ops = cfg->ckpt_ops,
                       .ckpt_secs = cfg->ckpt_secs,
                       .scrub_ms = cfg->scrub_ms,
                       .ckpt_off = cfg->ckpt_off};
    char why[512];
    int rc = idx_open(&ic, &r->ix, why, sizeof why);
    if (rc && rc != KB_EINVAL) {
        repl_replica_free(&r);
        return kb_seterr(err, errlen, rc, "%s", why);
    }
    if (rc)
        kb_info("%s holds no knowledge base yet: it is created from the "
                "leader's settings on first contact",
                cfg->data_dir);
    rc = replica_connect(r, err, errlen);
    if (rc) {
        repl_replica_free(&r);
        return rc;
    }
    *out = r;
    return 0;
}

void repl_replica_free(repl_replica_t **rp)
{
    if (!rp || !*rp)
        return;
    repl_replica_t *r = *rp;
    if (r->sock)
        zmq_close(r->sock);
    idx_close(&r->ix);
    batch_release(r);
    free(r->rec);
    free(r->len);
    free(r->own);
    free(r->msgs);
    pthread_mutex_destroy(&r->smu);
    free(r);
    *rp = NULL;
}

void *repl_replica_socket(repl_replica_t *r)
{
    return r->sock;
}

idx_kb_t *repl_replica_idx(repl_replica_t *r)
{
    return r->ix;
}

const char *repl_replica_leader_endpoint(const repl_replica_t *r)
{
    return r->leader_ep;
}

static int replica_send(repl_replica_t *r, Kbsync__ReplMessage *m)
{
    m->protocol_version = KB_REPL_PROTOCOL_VERSION;
    return kb_wire_send_msg(r->sock, m, ZMQ_DONTWAIT);
}

static void replica_hello(repl_replica_t *r)
{
    Kbsync__ReplHello h = KBSYNC__REPL_HELLO__INIT;
    h.protocol_version = KB_REPL_PROTOCOL_VERSION;
    h.replica_id = (char *)r->cfg.id;
    if (r->ix) {
        /* The leader counts the hello's searchable LSN as applied here (an
         * `all` or quorum write may be answered on it): it must be on
         * disk. */
        char err[512];
        if (idx_sync(r->ix, err, sizeof err)) {
            kb_log_limited(&r->log_sync, KB_LOG_WARN,
                           "no hello: cannot flush applied records to "
                           "disk: %s", err);
            r->hello_us = kb_mono_us();
            return;
        }
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        h.applied_lsn = st.version;
        h.applied_commit_us = st.commit_us;
        /* Staged records are durable but not searchable until the welcome
         * confirms them: the leader must not count them as applied. */
        idx_view_t v;
        idx_view(r->ix, &v);
        h.searchable_lsn = v.version < st.version ? v.version : st.version;
        /* So that a diverged replica loses only its tail (ReplWelcome).
         * Read again only when the applied LSN moved: hellos repeat every
         * 20 ms while the leader is away. */
        if (!r->recent_n || r->recent_at != st.version) {
            r->recent_n = idx_recent(r->ix, REPLICA_RECENT, r->recent_lsn,
                                     r->recent_us);
            r->recent_at = st.version;
        }
        h.loading_lsn = idx_loading(r->ix);
        h.n_recent_lsn = h.n_recent_commit_us = r->recent_n;
        h.recent_lsn = r->recent_lsn;
        h.recent_commit_us = r->recent_us;
    }
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_HELLO;
    m.hello = &h;
    r->hello_unsent = replica_send(r, &m) != 0;
    r->hello_us = kb_mono_us();
}

static void replica_ack(repl_replica_t *r)
{
    if (!r->ix)
        return;
    idx_view_t v;
    idx_view(r->ix, &v);
    Kbsync__ReplAck a = KBSYNC__REPL_ACK__INIT;
    /* durable: on disk; applied: searchable AND on disk (a lazy commit is
     * searchable a moment before its meta page is flushed) */
    uint64_t committed;
    idx_state(r->ix, &committed, NULL);
    a.durable_lsn = idx_synced(r->ix);
    a.applied_lsn = v.version < a.durable_lsn ? v.version : a.durable_lsn;
    if (committed > r->received)
        r->received = committed;
    a.received_lsn = r->received;
    if (!idx_loading(r->ix))
        idx_digest(r->ix, &a.digest_lsn, &a.digest);
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_ACK;
    m.ack = &a;
    replica_send(r, &m);
    r->ack_us = kb_mono_us();
}

static void ri_send(repl_replica_t *r)
{
    Kbsync__ReplReadIndex q = KBSYNC__REPL_READ_INDEX__INIT;
    q.seq = r->ri_sent;
    Kbsync__ReplMessage m = KBSYNC__REPL_MESSAGE__INIT;
    m.body_case = KBSYNC__REPL_MESSAGE__BODY_READ_INDEX;
    m.read_index = &q;
    replica_send(r, &m);
    r->ri_sent_us = kb_mono_us();
}

/* Sends the next read-index request when a read waits for one and none is
 * in flight (or the one in flight went unanswered for REPLICA_RI_RESEND_MS:
 * sent again, same seq). */
static void ri_pump(repl_replica_t *r)
{
    if (!r->streaming || r->ri_want <= r->ri_done)
        return;
    if (r->ri_sent == r->ri_done) {
        r->ri_sent++;
        ri_send(r);
    } else if (kb_mono_us() - r->ri_sent_us >= REPLICA_RI_RESEND_MS * 1000u) {
        ri_send(r);
    }
}

uint64_t repl_replica_read_index_begin(repl_replica_t *r)
{
    /* A request sent from now on: the one after any in flight. */
    r->ri_want = r->ri_sent + 1;
    ri_pump(r);
    return r->ri_want;
}

void repl_replica_read_index(const repl_replica_t *r, uint64_t *seq,
                             uint64_t *lsn)
{
    *seq = r->ri_done;
    *lsn = r->ri_lsn;
}

static void replica_beat(repl_replica_t *r, const Kbsync__ReplBeat *b)
{
    if (!b)
        return;
    if (b->read_index_seq && b->read_index_seq > r->ri_done &&
        b->read_index_seq <= r->ri_sent) {
        r->ri_done = b->read_index_seq;
        r->ri_lsn = b->committed_lsn;
        ri_pump(r); /* reads that came meanwhile wait for the next one */
    }
    pthread_mutex_lock(&r->smu);
    if (b->head_lsn >= r->head_lsn) {
        r->head_lsn = b->head_lsn;
        r->head_commit_us = b->head_commit_us;
    }
    if (b->leader_now_us) {
        /* A message read late (it waited in our queue while we were busy or
         * stopped) gives a sample that is too small by its wait: keep the
         * largest recent sample, and measure contact on the leader's clock
         * (when the leader sent it), not on when we read it. */
        int64_t sample = (int64_t)b->leader_now_us - (int64_t)kb_wall_us();
        uint64_t mono = kb_mono_us();
        if (!r->offset_mono || sample >= r->offset_us ||
            mono - r->offset_mono > REPLICA_OFFSET_KEEP_US) {
            r->offset_us = sample;
            r->offset_mono = mono;
        }
        if (b->leader_now_us > r->leader_sent_us)
            r->leader_sent_us = b->leader_now_us;
    }
    r->next_lsn = b->next_lsn;
    r->next_commit_us = b->next_commit_us;
    pthread_mutex_unlock(&r->smu);
    if (b->committed_lsn > r->leader_committed)
        r->leader_committed = b->committed_lsn;
    if (b->client_endpoint && *b->client_endpoint)
        snprintf(r->leader_ep, sizeof r->leader_ep, "%s", b->client_endpoint);
}

/* Makes the staged records the leader has committed searchable, and says
 * so at once (an `all` write waits for it). Returns 1 when it published. */
static int replica_publish(repl_replica_t *r)
{
    if (!r->ix || !r->streaming)
        return 0;
    idx_view_t v;
    uint64_t durable;
    idx_view(r->ix, &v);
    idx_state(r->ix, &durable, NULL);
    uint64_t upto = durable < r->leader_committed ? durable
                                                  : r->leader_committed;
    if (upto <= v.version)
        return 0;
    char err[512];
    if (idx_publish(r->ix, upto, err, sizeof err)) {
        kb_warn("cannot make records up to LSN %llu searchable: %s; saying "
                "hello again",
                (unsigned long long)upto, err);
        r->streaming = 0;
        r->hello_us = 0;
        return 0;
    }
    replica_ack(r);
    return 1;
}

/* Compacts the log below the published version: a replica serves no
 * catch-up, and records above it may still be dropped as unconfirmed.
 * At most REPLICA_COMPACT_STEP operations a step: every 10 ms while
 * behind, else a pass a second or as soon as REPLICA_COMPACT_EARLY
 * operations came since the last one (during a re-ingest at 30k docs/s a
 * second's wait let 60 MB of replaced records pile up, and the data file
 * grew by that much). */
static void replica_compact(repl_replica_t *r, uint64_t now)
{
    if (!r->ix)
        return;
    idx_view_t v;
    idx_view(r->ix, &v);
    uint64_t gap_ms =
        r->compact_behind || v.version >= r->compact_version +
                                               REPLICA_COMPACT_EARLY
            ? 10
            : REPLICA_COMPACT_MS;
    if (now - r->compact_us < gap_ms * 1000u)
        return;
    r->compact_us = now;
    r->compact_version = v.version;
    uint64_t removed = 0, bytes = 0;
    char err[256];
    if (idx_compact(r->ix, v.version, UINT64_MAX, REPLICA_COMPACT_STEP, &removed, &bytes,
                    err, sizeof err))
        kb_warn("log compaction failed: %s", err);
    /* Steps every 10 ms only while a step's worth or more is left: chasing
     * the head of a flowing stream every 10 ms would add a small commit
     * (two flushes) a hundred times a second; a pass a second keeps the
     * log within a second of writes. */
    r->compact_behind = idx_log_start(r->ix) + REPLICA_COMPACT_STEP <= v.version ||
                        removed >= REPLICA_COMPACT_STEP;
    r->compacted += removed;
    if (r->compacted && now - r->compact_log_us >= 10000000u) {
        kb_info("log compacted: %llu records of replaced or deleted "
                "documents removed; the log now starts at LSN %llu",
                (unsigned long long)r->compacted,
                (unsigned long long)idx_log_start(r->ix));
        r->compacted = 0;
        r->compact_log_us = now;
    }
}

/* Starts over after divergence: the old directory is kept, renamed. */
static void replica_start_over(repl_replica_t *r, const char *reason)
{
    char aside[4096];
    snprintf(aside, sizeof aside, "%s.diverged-%llu", r->cfg.data_dir,
             (unsigned long long)(kb_wall_us() / 1000000u));
    kb_error("this replica's copy cannot go on (%s); moving %s to %s and "
             "starting over from an empty knowledge base",
             reason, r->cfg.data_dir, aside);
    replica_discard_ix(r);
    r->recent_n = 0;
    if (rename(r->cfg.data_dir, aside) == 0)
        return;
    /* DIR may be a mount point (EBUSY) or end in '/' (EINVAL): move the
     * LMDB files instead. Never go on with the diverged store in place. */
    kb_error("cannot move %s aside (%s); moving its LMDB files instead",
             r->cfg.data_dir, strerror(errno));
    char from[4096], to[4096], lock[4096];
    snprintf(from, sizeof from, "%s/data.mdb", r->cfg.data_dir);
    snprintf(to, sizeof to, "%s/data.mdb.diverged-%llu", r->cfg.data_dir,
             (unsigned long long)(kb_wall_us() / 1000000u));
    snprintf(lock, sizeof lock, "%s/lock.mdb", r->cfg.data_dir);
    idx_remove_derived(r->cfg.data_dir); /* derived from the old store */
    if (rename(from, to)) {
        kb_error("cannot move %s aside either (%s): stopping, the diverged "
                 "store must not be served",
                 from, strerror(errno));
        abort();
    }
    unlink(lock);
}

static int rm_visit(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) ? -1 : 0;
}

/* Empties the data directory for a snapshot: the old store is useless (the
 * log it would need is gone from the leader). Returns 0, or -1 with errno. */
static int replica_wipe(repl_replica_t *r)
{
    replica_discard_ix(r);
    r->leader_committed = 0;
    r->recent_n = 0;
    char aside[4096];
    snprintf(aside, sizeof aside, "%s.old-%llu", r->cfg.data_dir,
             (unsigned long long)kb_mono_us());
    if (rename(r->cfg.data_dir, aside) == 0)
        return nftw(aside, rm_visit, 16, FTW_DEPTH | FTW_PHYS) ? -1 : 0;
    /* DIR may be a mount point: remove what is inside instead. */
    idx_remove_derived(r->cfg.data_dir);
    const char *files[] = {"data.mdb", "lock.mdb", "confirmed"};
    for (size_t i = 0; i < 3; i++) {
        char f[4096];
        snprintf(f, sizeof f, "%s/%s", r->cfg.data_dir, files[i]);
        if (unlink(f) && errno != ENOENT)
            return -1;
    }
    return 0;
}

/* No hello before the back-off (doubling, capped) has passed. */
static void replica_back_off(repl_replica_t *r)
{
    r->apply_delay_ms = r->apply_delay_ms ? r->apply_delay_ms * 2
                                          : REPLICA_APPLY_RETRY_FIRST_MS;
    if (r->apply_delay_ms > REPLICA_APPLY_RETRY_MAX_MS)
        r->apply_delay_ms = REPLICA_APPLY_RETRY_MAX_MS;
    r->apply_retry_us = kb_mono_us() + r->apply_delay_ms * 1000u;
}

/* Drops the records after keep (the newest the leader shares); the store
 * is reopened from what remains at the next welcome. Returns 0 when done. */
static int replica_drop_tail(repl_replica_t *r, const char *reason,
                             uint64_t keep)
{
    uint64_t applied = 0;
    if (r->ix) {
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        applied = st.version;
    }
    replica_discard_ix(r);
    r->recent_n = 0;
    char why[512];
    uint64_t dropped = 0;
    int rc = idx_truncate_dir(r->cfg.data_dir, r->cfg.map_size,
                              r->cfg.nosync, keep, &dropped, why, sizeof why);
    if (rc) {
        kb_error("cannot drop the records after LSN %llu (%s)%s",
                 (unsigned long long)keep, why,
                 rc == KB_ECORRUPT ? "" : "; trying again after a back-off");
        return rc;
    }
    kb_error("leader says this replica diverged (%s); dropped its %llu "
             "records after LSN %llu (it was at %llu) and starting over from "
             "there",
             reason, (unsigned long long)dropped, (unsigned long long)keep,
             (unsigned long long)applied);
    return 0;
}

static void on_welcome(repl_replica_t *r, const Kbsync__ReplWelcome *w)
{
    if (w->diverged) {
        const char *why = w->reason ? w->reason : "no reason given";
        r->streaming = 0;
        r->leader_committed = 0;
        r->hello_us = 0; /* say hello again at once */
        if (r->ix && w->keep_lsn) {
            idx_stats_t st;
            idx_stats_stream(r->ix, &st);
            if (st.version <= w->keep_lsn)
                return; /* an answer to a hello sent before the drop */
        }
        int rc = w->keep_lsn && w->meta
                     ? replica_drop_tail(r, why, w->keep_lsn)
                     : KB_ECORRUPT;
        if (rc == KB_ECORRUPT) {
            replica_start_over(r, why);
            return;
        }
        if (rc) /* e.g. a full disk: the apply back-off, then again */
            replica_back_off(r);
        /* Reopen below (also after a failed drop: the store is intact),
         * which says hello again from what it holds. */
        r->dropped_tail = 1;
    }
    const Kbsync__KbMeta *m = w->meta;
    if (!m) {
        kb_error("leader's welcome has no settings; ignored");
        return;
    }
    if (w->snapshot_lsn && r->ix) {
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        /* Resuming the snapshot it was loading: keep what it has. */
        if ((st.version || idx_loading(r->ix)) &&
            idx_loading(r->ix) != w->snapshot_lsn) {
            kb_warn("leader's log starts at LSN %llu and this replica is at "
                    "%llu (%llu LSNs behind the retained log): dropping the "
                    "local copy and loading a snapshot of %llu documents",
                    (unsigned long long)w->log_start,
                    (unsigned long long)st.version,
                    (unsigned long long)w->behind,
                    (unsigned long long)w->snapshot_docs);
            if (replica_wipe(r)) {
                kb_error("cannot empty %s for a snapshot: %s; trying again "
                         "after a back-off",
                         r->cfg.data_dir, strerror(errno));
                replica_back_off(r);
                r->streaming = 0;
                r->hello_us = 0;
                return;
            }
        }
    }
    /* Loading a snapshot, past its LSN, and the leader's head is now below
     * the one the copy must reach (its data directory was replaced, or a
     * leader that lost writes): this partial copy can never become its
     * state. A new snapshot. */
    if (r->ix && !w->snapshot_lsn && idx_loading(r->ix) &&
        w->head_lsn < idx_loading_ready(r->ix)) {
        kb_warn("this replica was loading a snapshot to be complete at LSN "
                "%llu, but the leader is at %llu: dropping the partial copy "
                "and asking for a new snapshot",
                (unsigned long long)idx_loading_ready(r->ix),
                (unsigned long long)w->head_lsn);
        if (replica_wipe(r))
            kb_error("cannot empty %s for a snapshot: %s", r->cfg.data_dir,
                     strerror(errno));
        replica_back_off(r);
        r->streaming = 0;
        r->hello_us = 0;
        return;
    }
    if (!r->ix) {
        idx_config_t ic = {.dir = r->cfg.data_dir,
                           .dim = m->dim,
                           .metric = m->metric,
                           .index = m->index,
                           .node_id = r->cfg.id,
                           .map_size = r->cfg.map_size,
                           .nosync = r->cfg.nosync,
                           .replica = 1,
                           .ckpt_ops = r->cfg.ckpt_ops,
                           .ckpt_secs = r->cfg.ckpt_secs,
                           .scrub_ms = r->cfg.scrub_ms,
                           .ckpt_off = r->cfg.ckpt_off};
        char why[512];
        idx_kb_t *ix;
        if (idx_open(&ic, &ix, why, sizeof why)) {
            kb_error("cannot create the replica's knowledge base: %s", why);
            return;
        }
        /* Loading is recorded before readers can see the new store. */
        if (w->snapshot_lsn &&
            idx_set_loading(ix, w->snapshot_lsn, w->head_lsn, why,
                            sizeof why)) {
            kb_error("cannot start loading a snapshot: %s", why);
            idx_close(&ix);
            replica_back_off(r);
            return;
        }
        replica_set_ix(r, ix);
        idx_stats_t st0;
        idx_stats_stream(r->ix, &st0);
        if (st0.version && !w->snapshot_lsn) {
            /* Our hello said "empty", but DIR holds a store (or we just
             * dropped a diverged tail): say hello again with what it really
             * holds, so the leader can check it. */
            if (!r->dropped_tail)
                kb_warn("%s already holds LSN %llu; saying hello again",
                        r->cfg.data_dir, (unsigned long long)st0.version);
            r->dropped_tail = 0;
            r->hello_us = 0;
            return;
        }
    } else {
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        if (st.dim != m->dim || strcmp(st.metric, m->metric) ||
            strcmp(st.index, m->index)) {
            kb_error("this replica's knowledge base (dim %u, %s, %s) differs "
                     "from the leader's (dim %u, %s, %s): not following it",
                     st.dim, st.metric, st.index, m->dim, m->metric, m->index);
            return;
        }
    }
    if (w->snapshot_lsn) {
        char why[512];
        if (idx_set_loading(r->ix, w->snapshot_lsn, w->head_lsn, why,
                            sizeof why)) {
            kb_error("cannot start loading a snapshot: %s", why);
            replica_back_off(r);
            return;
        }
        r->snap_docs_total = w->snapshot_docs;
        kb_info("loading a snapshot from the leader: %llu documents up to "
                "LSN %llu, then its log; queries are refused (KB_EUNAVAIL) "
                "until it is complete",
                (unsigned long long)w->snapshot_docs,
                (unsigned long long)w->snapshot_lsn);
    }
    if (idx_loading(r->ix)) {
        r->snap_start_us = kb_mono_us();
        r->snap_start_docs = idx_store_docs(r->ix);
        if (!r->snap_docs_total)
            r->snap_docs_total = w->snapshot_docs;
    }
    if (w->client_endpoint && *w->client_endpoint)
        snprintf(r->leader_ep, sizeof r->leader_ep, "%s", w->client_endpoint);
    /* A new session: the leader's head is what it says now (it may be lower
     * than a head announced before a leader crash). Its commit time is not
     * known yet: 0 makes lag_ms fall back to an upper bound. */
    pthread_mutex_lock(&r->smu);
    r->head_lsn = w->head_lsn;
    r->head_commit_us = 0;
    r->next_lsn = r->next_commit_us = 0;
    pthread_mutex_unlock(&r->smu);
    r->records_us = kb_mono_us();
    idx_stats_t st;
    idx_stats_stream(r->ix, &st);
    kb_info("following leader %s: applied LSN %llu, leader at %llu",
            r->cfg.leader, (unsigned long long)st.version,
            (unsigned long long)w->head_lsn);
    r->streaming = 1;
    r->refuse_delay_ms = 0;
    /* The leader checked our newest record against its log: everything we
     * hold is in its committed history (staged records included). */
    r->leader_committed = w->head_lsn; /* this leader's, this session */
    replica_publish(r);
}

/* The LSN of a serialized LogRecord: field 1, a varint, packed first. */
static uint64_t peek_lsn(const uint8_t *p, size_t len)
{
    if (len < 2 || p[0] != 0x08)
        return 0;
    uint64_t v = 0;
    for (size_t i = 1, shift = 0; i < len && shift < 64; i++, shift += 7) {
        v |= (uint64_t)(p[i] & 0x7f) << shift;
        if (!(p[i] & 0x80))
            return v;
    }
    return 0;
}

/* Drops the whole batch, held-back records included. */
static void batch_release(repl_replica_t *r)
{
    if (!r->rec)
        return;
    for (size_t i = 0; i < r->nrec; i++)
        if (r->own[i]) {
            free((void *)r->rec[i]);
            r->own[i] = 0;
        }
    for (size_t i = 0; i < r->nmsgs; i++)
        kbsync__repl_message__free_unpacked(r->msgs[i], NULL);
    r->nmsgs = r->nrec = 0;
    r->batch_bytes = 0;
    r->hold_n = r->hold_bytes = 0;
}

/* Keeps records [m, nrec) (copied, so that their messages can go) as the
 * start of the next batch, and frees the rest. 0, or -1 out of memory.
 * Records below hold_n are owned already (held back before), those from
 * hold_n on borrow their messages' bytes; m is 0 or at least hold_n. */
static int batch_hold_tail(repl_replica_t *r, size_t m, uint64_t us)
{
    size_t keep = r->nrec - m;
    for (size_t i = m > r->hold_n ? m : r->hold_n; i < r->nrec; i++) {
        void *c = malloc(r->len[i]);
        if (!c)
            return -1;
        memcpy(c, r->rec[i], r->len[i]);
        r->rec[i] = c;
        r->own[i] = 1;
    }
    size_t gone = 0;
    if (m) {
        for (size_t i = 0; i < m; i++) {
            gone += r->len[i];
            if (r->own[i]) {
                free((void *)r->rec[i]);
                r->own[i] = 0;
            }
        }
        memmove(r->rec, r->rec + m, keep * sizeof *r->rec);
        memmove(r->len, r->len + m, keep * sizeof *r->len);
        memmove(r->own, r->own + m, keep * sizeof *r->own);
        memset(r->own + keep, 0, m * sizeof *r->own);
    }
    for (size_t i = 0; i < r->nmsgs; i++)
        kbsync__repl_message__free_unpacked(r->msgs[i], NULL);
    r->nmsgs = 0;
    r->nrec = keep;
    r->batch_bytes -= gone;
    r->hold_n = keep;
    r->hold_bytes = r->batch_bytes;
    r->hold_us = us;
    return 0;
}

/* Applies the collected records, except a trailing group commit that may
 * not be complete yet (the leader said its group goes on, or `more` records
 * of this message are still to come): those are held back, so that no part
 * of a group becomes searchable alone. Returns how many were applied. */
static size_t batch_apply(repl_replica_t *r, int more)
{
    size_t n = r->nrec;
    if (n == 0 || !r->ix) {
        batch_release(r);
        return 0;
    }
    size_t m = n;
    uint64_t us = 0;
    if (more || r->group_open) {
        us = kb_wire_peek_u64(r->rec[n - 1], r->len[n - 1], 2);
        /* the records held back last time are all of one group: when the
         * new ones continue it, they need not be looked at again */
        size_t floor = r->hold_n && r->hold_us == us ? r->hold_n : 0;
        while (m > floor &&
               kb_wire_peek_u64(r->rec[m - 1], r->len[m - 1], 2) == us)
            m--;
        if (m == floor)
            m = 0;
        if (m == 0 && (n == REPLICA_MAX_BATCH ||
                       r->batch_bytes >= REPLICA_MAX_GROUP_BYTES))
            m = n; /* a group this large cannot be held whole */
    }
    char err[512];
    /* Nobody waits for any of these records: one flush (lazy commit). */
    int lazy = m && r->wait_lsn < kb_wire_peek_u64(r->rec[0], r->len[0], 1);
    if (m)
        idx_set_lazy(r->ix, lazy);
    int rc = m ? idx_apply_log_staged(r->ix, m, r->rec, r->len,
                                      r->leader_committed, err, sizeof err)
               : 0;
    /* KBSYNC_TEST_FAULT=crash-after-apply:N (tests only): die right after
     * the Nth committed batch, so that a test can see what one batch made
     * durable (a group held back whole, not part of it). */
    if (!rc && m && r->crash_after_apply && --r->crash_after_apply == 0) {
        kb_error("KBSYNC_TEST_FAULT: exiting after applying %zu records "
                 "(tests only)", m);
        _exit(99);
    }
    if (!rc && batch_hold_tail(r, m, us))
        rc = kb_seterr(err, sizeof err, KB_ENOMEM,
                       "out of memory holding back a partial group");
    if (rc)
        batch_release(r);
    if (rc) {
        /* Log the first failure and each new cause, not every retry: a
         * full disk would otherwise log at the rate the leader resends. */
        if (r->apply_fails == 0 || strncmp(err, r->apply_err, 250) != 0)
            kb_warn("cannot apply %zu records from the leader: %s; asking "
                    "again with a back-off of up to %d ms (logged again when "
                    "the cause changes or applying works again)",
                    n, err, REPLICA_APPLY_RETRY_MAX_MS);
        snprintf(r->apply_err, sizeof r->apply_err, "%.250s", err);
        r->apply_fails++;
        replica_back_off(r);
        r->streaming = 0;
        r->hello_us = 0;
        return 0;
    }
    if (r->apply_fails) {
        kb_info("applying again after %llu failed attempts (last: %s)",
                (unsigned long long)r->apply_fails, r->apply_err);
        r->apply_fails = 0;
        r->apply_delay_ms = 0;
        r->apply_retry_us = 0;
    }
    if (m) {
        uint64_t now = kb_mono_us();
        if (lazy)
            r->lazy_us = now;
        if (!lazy || now - r->ack_us >= REPLICA_LAZY_ACK_MS * 1000u)
            replica_ack(r);
    }
    return m;
}

size_t repl_replica_on_msg(repl_replica_t *r)
{
    size_t applied = 0;
    uint64_t expect = 0;
    if (r->ix) {
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        expect = st.version + 1;
        if (r->nrec) /* held back from the last call */
            expect = kb_wire_peek_u64(r->rec[r->nrec - 1],
                                      r->len[r->nrec - 1], 1) + 1;
    }
    /* One full batch per call at most: the node loop must get back to
     * queries and status between batches (a long catch-up or snapshot
     * would otherwise hold it until the end). */
    int full = 0;
    for (int i = 0; i < 4096 && !full; i++) {
        zmq_msg_t zm;
        zmq_msg_init(&zm);
        if (zmq_msg_recv(&zm, r->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&zm);
            break;
        }
        Kbsync__ReplMessage *m = kbsync__repl_message__unpack(
            NULL, zmq_msg_size(&zm), zmq_msg_data(&zm));
        size_t mlen = zmq_msg_size(&zm);
        zmq_msg_close(&zm);
        r->heard_us = kb_mono_us();
        if (!m) {
            kb_warn("undecodable message of %zu bytes from the leader", mlen);
            continue;
        }
        int keep = 0;
        switch (m->body_case) {
        case KBSYNC__REPL_MESSAGE__BODY_WELCOME:
            applied += batch_apply(r, 0);
            batch_release(r); /* a new session sends any held group again */
            r->group_open = 0;
            r->received = 0;
            r->wait_lsn = 0; /* the new session's records say it again */
            on_welcome(r, m->welcome);
            if (r->ix) {
                idx_stats_t st;
                idx_stats_stream(r->ix, &st);
                expect = st.version + 1;
            }
            break;
        case KBSYNC__REPL_MESSAGE__BODY_BEAT: replica_beat(r, m->beat); break;
        case KBSYNC__REPL_MESSAGE__BODY_ERROR:
            r->streaming = 0;
            r->hello_us = 0;
            if (m->error->code == KB_ECORRUPT && r->ix) {
                /* the leader found our digest differs from its own */
                applied += batch_apply(r, 0);
                batch_release(r);
                r->group_open = 0;
                r->resyncs++;
                replica_start_over(r, m->error->message
                                          ? m->error->message
                                          : "digest mismatch");
                expect = 1;
            } else if (m->error->code != KB_EUNAVAIL) {
                /* refused (another protocol version, a full table, ...):
                 * ask again after a growing pause, not at once */
                kb_log_limited(&r->log_refused, KB_LOG_WARN,
                               "leader refused us: %s (%s); asking again "
                               "after a back-off",
                               m->error->message ? m->error->message : "?",
                               kb_errname(m->error->code));
                r->refuse_delay_ms = r->refuse_delay_ms
                                         ? r->refuse_delay_ms * 2
                                         : REPLICA_APPLY_RETRY_FIRST_MS;
                if (r->refuse_delay_ms > REPLICA_APPLY_RETRY_MAX_MS)
                    r->refuse_delay_ms = REPLICA_APPLY_RETRY_MAX_MS;
                uint64_t until = kb_mono_us() + r->refuse_delay_ms * 1000u;
                if (until > r->apply_retry_us)
                    r->apply_retry_us = until;
            } else {
                kb_warn("leader: %s",
                        m->error->message ? m->error->message : "?");
            }
            break;
        case KBSYNC__REPL_MESSAGE__BODY_RECORDS:
            replica_beat(r, m->records->beat);
            r->records_us = r->heard_us;
            if (m->records->wait_lsn > r->wait_lsn)
                r->wait_lsn = m->records->wait_lsn;
            if (!r->streaming || !r->ix)
                break;
            r->group_open = m->records->group_open;
            for (size_t j = 0; j < m->records->n_records; j++) {
                ProtobufCBinaryData *b = &m->records->records[j];
                uint64_t lsn = peek_lsn(b->data, b->len);
                if (lsn && lsn < expect) {
                    r->dup_records++;
                    continue;
                }
                if (r->nrec == REPLICA_MAX_BATCH ||
                    r->batch_bytes - r->hold_bytes >=
                        REPLICA_MAX_BATCH_BYTES) {
                    /* frees earlier messages; more of this one follows */
                    applied += batch_apply(r, 1);
                    full = 1;
                    if (!r->streaming)
                        break;
                }
                r->rec[r->nrec] = b->data;
                r->len[r->nrec] = b->len;
                r->batch_bytes += b->len;
                r->nrec++;
                expect = lsn + 1;
                if (lsn > r->received)
                    r->received = lsn;
                keep = 1;
            }
            break;
        default:
            kb_warn("unexpected message type %d from the leader",
                    (int)m->body_case);
            break;
        }
        if (keep)
            r->msgs[r->nmsgs++] = m; /* its bytes are in the batch */
        else
            kbsync__repl_message__free_unpacked(m, NULL);
        if (r->nmsgs == REPLICA_MAX_BATCH) {
            applied += batch_apply(r, 1);
            full = 1;
        }
    }
    applied += batch_apply(r, 0);
    replica_publish(r); /* a beat may have confirmed staged records */
    if (applied)
        r->heard_us = kb_mono_us(); /* a slow apply is not a silent leader */
    if (r->dup_records) {
        kb_info("dropped %llu re-sent records at or below the applied LSN",
                (unsigned long long)r->dup_records);
        r->dup_records = 0;
    }
    return applied;
}

int repl_replica_tick(repl_replica_t *r)
{
    uint64_t now = kb_mono_us();
    if (r->streaming && now - r->heard_us > REPLICA_DEAD_MS * 1000u) {
        kb_warn("no word from the leader %s for %d ms; reconnecting and "
                "saying hello until it answers",
                r->cfg.leader, REPLICA_DEAD_MS);
        r->streaming = 0;
        r->conn_us = 0;
    }
    if (!r->streaming && now - r->heard_us > REPLICA_DEAD_MS * 1000u &&
        now - r->conn_us >= REPLICA_RECONNECT_MS * 1000u) {
        char why[256];
        if (replica_connect(r, why, sizeof why))
            kb_warn("%s", why);
        r->hello_us = 0;
    }
    uint64_t hello_ms = r->hello_unsent ? REPLICA_HELLO_RETRY_MS
                                        : REPLICA_HELLO_MS;
    if (!r->streaming && now - r->hello_us >= hello_ms * 1000u &&
        now >= r->apply_retry_us)
        replica_hello(r);
    if (r->streaming && r->ix) {
        /* Behind the head the leader announces, yet no records for a while:
         * records were lost with a connection the leader did not see drop.
         * Say hello again so it resends from our applied LSN. */
        idx_stats_t st;
        idx_stats_stream(r->ix, &st);
        if (r->head_lsn > st.version &&
            now - r->records_us > REPLICA_STUCK_MS * 1000u) {
            kb_warn("at LSN %llu, leader at %llu, no records for %d ms: "
                    "asking the leader again",
                    (unsigned long long)st.version,
                    (unsigned long long)r->head_lsn, REPLICA_STUCK_MS);
            r->streaming = 0;
            replica_hello(r);
        }
    }
    ri_pump(r);
    if (r->ix) {
        /* our background digest check found the stored documents changed
         * under us: nothing here can be trusted, copy anew */
        idx_check_t ck;
        idx_check_state(r->ix, &ck);
        if (ck.mismatches) {
            char why[256];
            snprintf(why, sizeof why,
                     "its documents at LSN %llu add up to %016llx, not to the "
                     "digest kept with them, %016llx",
                     (unsigned long long)ck.bad_lsn,
                     (unsigned long long)ck.bad_scanned,
                     (unsigned long long)ck.bad_stored);
            batch_release(r);
            r->group_open = 0;
            r->resyncs++;
            r->streaming = 0;
            r->hello_us = 0;
            replica_start_over(r, why);
        }
    }
    int lazy_left = -1; /* ms until the lazy commits are due on disk */
    if (r->ix) {
        uint64_t committed;
        idx_state(r->ix, &committed, NULL);
        if (idx_synced(r->ix) < committed) {
            uint64_t due = r->lazy_us + REPLICA_LAZY_SYNC_MS * 1000u;
            char err[512];
            if (now < due) {
                lazy_left = (int)((due - now + 999) / 1000u);
            } else if (idx_sync(r->ix, err, sizeof err)) {
                kb_log_limited(&r->log_sync, KB_LOG_WARN,
                               "cannot flush applied records to disk: %s; "
                               "they are not acknowledged as durable", err);
                lazy_left = REPLICA_APPLY_RETRY_FIRST_MS;
                r->lazy_us = now + (REPLICA_APPLY_RETRY_FIRST_MS -
                                    REPLICA_LAZY_SYNC_MS) * 1000u;
            } else if (r->streaming) {
                replica_ack(r);
            }
        }
    }
    if (r->streaming && now - r->ack_us >= REPLICA_ACK_MS * 1000u)
        replica_ack(r);
    replica_compact(r, now);
    repl_snapshot_t sp;
    if (now - r->snap_log_us >= REPLICA_SNAP_LOG_MS * 1000u &&
        repl_replica_snapshot(r, &sp)) {
        if (r->snap_log_us)
            kb_info("loading the snapshot: %llu of %llu documents (%.1f MB), "
                    "LSN %llu of %llu, about %llu ms left",
                    (unsigned long long)sp.docs_loaded,
                    (unsigned long long)sp.docs_total,
                    sp.bytes_loaded / 1048576.0,
                    (unsigned long long)sp.version,
                    (unsigned long long)sp.lsn,
                    (unsigned long long)sp.eta_ms);
        r->snap_log_us = now;
    }
    if (lazy_left >= 0 && lazy_left < REPLICA_ACK_MS)
        return lazy_left;
    if (r->streaming)
        return REPLICA_ACK_MS;
    if (now < r->apply_retry_us)
        return (int)((r->apply_retry_us - now) / 1000u) + 1;
    return r->hello_unsent ? REPLICA_HELLO_RETRY_MS : REPLICA_HELLO_MS;
}

void repl_replica_staleness(repl_replica_t *r, const idx_view_t *view,
                            Kbsync__NodeState *s)
{
    uint64_t version = 0, commit_us = 0;
    if (view) {
        version = view->version;
        commit_us = view->commit_us;
    } else if (r->ix) {
        idx_view_t v;
        idx_view(r->ix, &v);
        version = v.version;
        commit_us = v.commit_us;
    }
    const uint64_t unknown = UINT64_MAX / 1000u;
    pthread_mutex_lock(&r->smu);
    uint64_t head_lsn = r->head_lsn;
    int64_t offset_us = r->offset_us;
    uint64_t leader_sent_us = r->leader_sent_us;
    uint64_t next_lsn = r->next_lsn, next_commit_us = r->next_commit_us;
    pthread_mutex_unlock(&r->smu);
    uint64_t leader_now = (uint64_t)((int64_t)kb_wall_us() + offset_us);
    s->version = version;
    s->leader_version = head_lsn > version ? head_lsn : version;
    s->lag_ops = s->leader_version - version;
    /* Contact age on the leader's clock: a message that waited in our queue
     * does not make the leader look recently heard. */
    s->leader_contact_ms = leader_sent_us
                               ? (leader_now > leader_sent_us
                                      ? (leader_now - leader_sent_us) / 1000u
                                      : 0)
                               : unknown;
    uint64_t lag_ms = 0;
    if (!leader_sent_us) {
        /* Never heard from the leader since we started: we know nothing of
         * what it committed. The only safe figure is an upper bound: the age
         * of our newest write (or unknown when we hold none). */
        lag_ms = commit_us && leader_now > commit_us
                     ? (leader_now - commit_us) / 1000u
                     : unknown;
    } else if (s->lag_ops) {
        /* Exact when the leader named our oldest unapplied write; else the
         * commit time of our own newest write, which is no later than it:
         * an upper bound. (The newest commit time we know of would be a
         * lower bound, and a max_lag_ms read must never be answered from
         * an understated lag: the fault suite caught a catching-up replica
         * reporting 31 ms two minutes behind.) */
        uint64_t oldest = next_lsn == version + 1 && next_commit_us
                              ? next_commit_us
                              : commit_us;
        lag_ms = !oldest               ? unknown
                 : leader_now > oldest ? (leader_now - oldest) / 1000u
                                       : 0;
    }
    /* Writes committed after the leader sent its last message cannot have
     * reached us: caught up as far as we know (lag_ops 0), the oldest write
     * we may lack is no older than that message, so the contact age is the
     * upper bound (an idle leader sends one every REPL_BEAT_MS). Behind,
     * a long silence raises the figure the same way. */
    if (leader_sent_us && s->leader_contact_ms > lag_ms &&
        (!s->lag_ops || s->leader_contact_ms > REPLICA_SILENT_MS))
        lag_ms = s->leader_contact_ms;
    s->lag_ms = lag_ms;
}

int repl_replica_snapshot(repl_replica_t *r, repl_snapshot_t *p)
{
    memset(p, 0, sizeof *p);
    if (!r->ix || !(p->lsn = idx_loading(r->ix)))
        return 0;
    p->docs_total = r->snap_docs_total;
    p->docs_loaded = idx_store_docs(r->ix);
    idx_stats_t st;
    idx_stats_stream(r->ix, &st);
    p->version = st.version;
    p->bytes_loaded = idx_store_size(r->ix);
    uint64_t now = kb_mono_us();
    uint64_t done = p->docs_loaded > r->snap_start_docs
                        ? p->docs_loaded - r->snap_start_docs
                        : 0;
    if (r->snap_start_us && done && p->docs_total > p->docs_loaded)
        p->eta_ms = (now - r->snap_start_us) / 1000u *
                    (p->docs_total - p->docs_loaded) / done;
    return 1;
}

uint64_t repl_replica_resyncs(const repl_replica_t *r)
{
    return r->resyncs;
}
