/* idx_scrub: the background check that a node's documents still add up to
 * the digest it keeps (anti-entropy, docs/CONSISTENCY.md). In: an open
 * store. Out: passes that recompute the digest of every live document in
 * one read transaction and compare it with the stored one, and their
 * outcome. Owns one thread. A pass costs about one read of the documents.
 * The thread looks every 250 ms and runs a pass when D x the last pass
 * (and at least every_ms) has gone by since it ended: D =
 * IDX_SCRUB_DUTY_IDLE when nothing was written for a second (at most 1/8
 * of a core, so that an edit is found within about a second on a quiet
 * node of 100k documents), IDX_SCRUB_DUTY while writes flow (at most 1/30
 * of a core, out of the writers' way); but not while the store is
 * unchanged since the last completed pass began (its stamp settled, see
 * idx_store_stamp) until IDX_SCRUB_UNCHANGED_MS after that pass (an idle
 * node does not re-read unchanged documents all the time). A
 * scheduled pass gives way to writes rather than hold its read
 * transaction long (IDX_SCRUB_HOLD_MS).
 * A commit to the store by another process (idx_store_foreign_txn: an
 * operator's tool editing the data directory) starts a pass at the next
 * look (after a pass in progress), whatever the schedule. */
#ifndef IDX_SCRUB_H
#define IDX_SCRUB_H

#include "idx_store.h"

#include <stdint.h>

#define IDX_SCRUB_DUTY 30
#define IDX_SCRUB_DUTY_IDLE 8
/* A scheduled pass gives way (idx_store_digest_check's hold_us) once its
 * read transaction has been open this long and a write committed since:
 * LMDB cannot reuse the pages freed meanwhile, and a pass at nice 10 on a
 * busy machine could hold it for seconds. A requested pass, one for a
 * commit by another process, and one when for IDX_SCRUB_INSIST_MS
 * (counted from the thread's start) none has completed nor has the store
 * been found unchanged since one did, run to the end. */
#define IDX_SCRUB_HOLD_MS 200u
#define IDX_SCRUB_INSIST_MS 60000u
/* A store unchanged since the newest completed pass began (the same LMDB
 * transaction id, data file size and times: idx_store_stamp, settled when
 * that pass began) gets no scheduled pass for this long after it: a pass
 * would read the same bytes. A write through LMDB or to the file makes
 * one due again. */
#define IDX_SCRUB_UNCHANGED_MS 300000u

typedef struct idx_scrub idx_scrub_t;

/* What the passes found (any thread reads a copy). */
typedef struct idx_scrub_state {
    uint64_t started;      /* passes begun */
    uint64_t passes;       /* completed */
    uint64_t failed;       /* ended by an error or by idx_scrub_stop */
    uint64_t yielded;      /* scheduled passes that gave way to writes
                              (IDX_SCRUB_HOLD_MS) */
    uint64_t last_ok;      /* the newest completed pass: its number among
                              those begun (started) */
    uint64_t last_stored;  /* the last completed pass: the kept digest */
    uint64_t last_scanned; /* and what the documents added up to */
    uint64_t last_ms;      /* the last pass took */
    uint64_t last_lsn;     /* the LSN the last pass covered */
    uint64_t docs;         /* documents it read */
    uint64_t mismatches;   /* passes that found a difference */
    uint64_t bad_lsn;      /* the newest mismatch: at this LSN, */
    uint64_t bad_stored;   /* the kept digest */
    uint64_t bad_scanned;  /* and what the documents add up to */
    uint64_t foreign;      /* looks that found a commit by another
                              process (each starts a pass) */
    uint64_t unchanged;    /* looks that found a pass due but the store
                              unchanged since the last completed one */
} idx_scrub_state_t;

/* every_ms for a thread that runs requested passes only (background
 * checks off): no schedule, and a commit by another process starts no
 * pass by itself. */
#define IDX_SCRUB_REQUESTS_ONLY UINT32_MAX

/* Starts the thread (every_ms >= 1, or IDX_SCRUB_REQUESTS_ONLY; hold_ms
 * 0 = IDX_SCRUB_HOLD_MS; unchanged_ms 0 = IDX_SCRUB_UNCHANGED_MS). While
 * *pause (read atomically; pause may be NULL) is non-zero, no scheduled
 * pass starts: requests and commits by another process still start one. */
int idx_scrub_start(idx_store_t *s, uint32_t every_ms, uint32_t hold_ms,
                    uint32_t unchanged_ms, const uint64_t *pause,
                    idx_scrub_t **out);
/* Stops and joins it; accepts NULL. */
void idx_scrub_stop(idx_scrub_t **sc);
void idx_scrub_get(idx_scrub_t *sc, idx_scrub_state_t *out);
/* Asks the thread for a pass as soon as possible; returns the number of
 * passes begun that includes it (its result is the newest once
 * st.passes + st.failed + st.yielded reaches that number; a requested
 * pass never gives way). */
uint64_t idx_scrub_request(idx_scrub_t *sc);
/* One pass now, on the calling thread (counted like the others). Returns
 * 0 (see c) or a negative code with err set. */
int idx_scrub_run(idx_scrub_t *sc, idx_store_digest_check_t *c, char *err,
                  size_t errlen);

#endif
