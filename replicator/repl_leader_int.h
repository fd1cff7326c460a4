/* repl_leader_int: private to replicator/. The state of the leader role,
 * shared by its parts: repl_commit.c (client writes: validation, the
 * group commit, answers, `all` answers waiting for acks), repl_ship.c
 * (the replication socket: hellos, log shipping, heartbeats, acks, the
 * replica table) and repl_retain.c (log retention). All run on the node
 * loop only; nothing here is locked. */
#ifndef REPL_LEADER_INT_H
#define REPL_LEADER_INT_H

#include "repl_leader.h"

#include "kb_err.h"
#include "kb_util.h"

#include <stdatomic.h>

#define REPL_BEAT_MS 100
#define REPL_DEAD_MS 1000
#define REPL_MAX_PEERS 64
#define REPL_BATCH_RECORDS 2048
#define REPL_BATCH_BYTES (4u << 20)
#define REPL_WINDOW 65536 /* records sent but not acknowledged, per replica */
/* ... and their bytes: what the leader holds for one replica (queued in
 * ZeroMQ or in flight) stays bounded whatever the records' size. */
#define REPL_WINDOW_BYTES (64u << 20)
#define REPL_FLIGHT 256 /* messages tracked for the byte window */
/* The largest message a replica sends the leader (hello, ack, read index:
 * a few KB): larger ones are dropped by ZeroMQ with their connection. */
#define REPL_IN_MAX_BYTES (1 << 20)
/* Entries of a diverged hello's recent-records list looked up (a replica
 * sends about 100; each costs the loop one LMDB read). */
#define REPL_RECENT_MAX 1024
#define REPL_MAX_CLIENT_ID 64 /* bytes of an idempotent write's client_id */
#define REPL_DEDUP_KEY (REPL_MAX_CLIENT_ID + 1 + 8)
#define REPL_DEDUP_STEP 10000 /* results expired per tick at most */

/* What ZeroMQ still holds for one replica (routing id): the bytes of the
 * messages the leader handed it and that its I/O thread has neither
 * written to the connection nor dropped with it, across sessions (see
 * QUEUED in repl_ship.c). Freed when the last reference goes: the peer
 * entry's, and one per such message. */
typedef struct peer_q {
    _Atomic uint64_t bytes;
    _Atomic unsigned refs;
} peer_q_t;

typedef struct peer {
    char id[64];
    peer_q_t *q;       /* NULL until the first message to it */
    int named;         /* listed in --replicas */
    int online;        /* said Hello and heard from within REPL_DEAD_MS */
    uint64_t acked;    /* LSN the replica applied (durable, searchable) */
    uint64_t sent;     /* newest LSN sent to it */
    uint64_t heard_us; /* monotonic time of its last message */
    uint64_t beat_us;  /* monotonic time of our last beat to it */
    uint64_t durable;  /* LSN durable on it (ReplAck.durable_lsn) */
    uint64_t received; /* LSN it read off the connection (ReplAck) */
    uint64_t dg_match, dg_bad, dg_bads; /* digest compares (see on ack) */
    uint64_t pin;      /* named: newest acked LSN as last saved (meta
                          "pin:<id>"), what retention keeps for it while
                          it is away */
    uint64_t snapshot_lsn; /* being sent a snapshot up to this LSN (0: no) */
    int warned_behind; /* retention dropped log it needs: said once */
    /* Bytes sent and not acknowledged (REPL_WINDOW_BYTES bounds them):
     * per message, the LSN it ends at and its record bytes, oldest first. */
    uint64_t fl_lsn[REPL_FLIGHT], fl_bytes[REPL_FLIGHT];
    unsigned fl_head, fl_n;
    uint64_t inflight;
} peer_t;

/* Retention's samples of the log: cumulative record bytes and commit time
 * at some LSNs (one per REPL_RETAIN_SAMPLE_BYTES), to find where the
 * retained log would pass --log-retain-mb or --log-retain-hours without
 * walking it. */
typedef struct retain_sample {
    uint64_t lsn, bytes, commit_us;
} retain_sample_t;

typedef struct pending {
    kb_peer_t peer;
    Kbsync__Request *req;
    size_t first_op, nops;
    repl_mode_t mode;
    uint32_t need; /* named replicas that must apply it (0: async) */
    int dropped;
    /* Idempotent write: client id, NUL, big-endian seq (dklen 0: none). */
    unsigned char dkey[REPL_DEDUP_KEY];
    size_t dklen;
    uint64_t dhash;
} pending_t;

/* What a write answer says (WriteResult), kept while it waits for acks. */
typedef struct wresult {
    uint64_t first, lsn; /* the request's first and last LSN (0: none) */
    uint32_t written, missing;
    repl_mode_t mode;
    uint32_t need;
    int retried;
} wresult_t;

typedef struct parked { /* an all/quorum answer waiting for acks */
    kb_peer_t peer;
    uint64_t rid, deadline_us;
    wresult_t w;
} parked_t;

/* A batch of serialized log records to send. The bytes are borrowed from
 * LMDB: valid only during the log walk that found them, so a shipment is
 * packed and sent before that walk ends (see idx_read_log's end call). */
typedef struct shipment {
    ProtobufCBinaryData *rec;
    size_t n, cap;
    uint64_t first, last;
    size_t bytes;
    struct peer *to; /* catch-up: the one replica it goes to */
    int stalled;     /* catch-up: its queue was full */
    int open;        /* the last record's group commit goes on after it */
} shipment_t;

struct repl_leader {
    idx_kb_t *ix;
    kb_loglimit_t log_bad; /* bad messages on the replication socket */
    void *sock; /* replication ROUTER, or NULL */
    repl_leader_config_t cfg;
    char client_ep[256];
    peer_t peer[REPL_MAX_PEERS];
    size_t npeers;
    pending_t *q;
    size_t qn, qcap;
    idx_op_t *ops;
    uint64_t *lsns;
    size_t nops, opcap;
    parked_t *park;
    size_t nparked, parkcap;
    shipment_t ship;
    uint64_t cat_start, cat_undo_from; /* catch-up walk: log start, undo_from */
    int shipped; /* the current group commit sent records before commit */
    uint64_t wait_lsn; /* ReplRecords.wait_lsn: newest LSN a writer waits
                          on replicas for (an upper bound) */
    int closing; /* repl_leader_shutdown(): answer every parked write */
    /* A commit failed after its records were sent to replicas: those LSNs
     * must never be reused, so every later write is refused (KB_ESTORE)
     * until a restart; reads and the stream of committed records go on. */
    int readonly;
    char readonly_why[512];
    uint64_t crash_after_ship; /* KBSYNC_TEST_FAULT countdown (0 = off) */
    uint64_t crash_after_commit; /* ... after a commit with a client id */
    uint64_t commit_fails; /* failed group commits in a row */
    char commit_err[256];  /* the last failure, logged once */
    /* repl_retain.c */
    retain_sample_t *rsamp;
    size_t rsamp_n, rsamp_cap;
    uint64_t rsamp_lsn;   /* the samples cover the log up to here */
    uint64_t rsamp_bytes; /* bytes of records up to rsamp_lsn */
    uint64_t retain_us;   /* monotonic: last retention pass */
    int retain_behind;    /* the last step stopped short of its cut */
    uint64_t retain_version; /* published version at the last pass */
    uint64_t pins_us;     /* monotonic: pins last saved */
    uint64_t compacted_records, compacted_bytes; /* since the last log line */
    uint64_t compact_log_us;                     /* monotonic: that line */
    Kbsync__ReplicaState rs[REPL_MAX_PEERS];
    Kbsync__ReplicaState *rsp[REPL_MAX_PEERS];
    idx_dedup_t *dd; /* the group commit's idempotent requests */
    size_t ddcap;
    uint64_t dedup_us;   /* monotonic: last expiry pass */
    uint64_t dedup_left; /* results kept after it */
    uint64_t retries;    /* writes answered from the table since start */
    Kbsync__Receipt rc[REPL_MAX_PEERS]; /* a write answer's receipts */
    Kbsync__Receipt *rcp[REPL_MAX_PEERS];
};


/* repl_ship.c, for the commit half. */
int repl__precommit(void *ctx, uint64_t lsn, const void *bytes, size_t len);
void repl__ship_reset(repl_leader_t *l);
/* After a commit whose records were shipped before it: tell the replicas
 * that hold them (ReplBeat.committed_lsn), so they make them searchable. */
void repl__announce_commit(repl_leader_t *l);
void repl__stream_all(repl_leader_t *l);
/* 1 when at least `need` named replicas applied lsn; *have of *want
 * (named) did; missing lists the named ones that did not. */
int repl__named_acked(const repl_leader_t *l, uint64_t lsn, uint32_t need,
                      char *missing, size_t cap, int *have, int *want);
/* Named replicas, and how many of them are connected now. */
uint32_t repl__named(const repl_leader_t *l, uint32_t *online);

/* Ends an online replica's session: it must say hello again. */
void repl__peer_restart(repl_leader_t *l, peer_t *p);

/* repl_retain.c: log retention and compaction, on the leader's tick. */
void repl__retain_init(repl_leader_t *l);
void repl__retain_tick(repl_leader_t *l);
void repl__retain_free(repl_leader_t *l);

/* repl_commit.c, for the shipping half. */
void repl__release_parked(repl_leader_t *l, void *router);
void repl__dedup_tick(repl_leader_t *l);
void repl__clear_queue(repl_leader_t *l);

#endif
