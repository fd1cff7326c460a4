/* kb_metrics: the counters and histograms a node exports to Prometheus
 * (node/node_metrics renders them). In: observations from any thread (the
 * node loop's write answers, the reader pool's query answers, every error
 * answer). Out: a consistent-enough copy for one scrape. Lock-free: relaxed
 * atomic adds, so an observation costs a few nanoseconds.
 *
 * One set per process (kb_metrics()): a node is one process, and the
 * observation points sit in modules that do not otherwise know the node.
 * Tests that run several nodes in one process see their sums. */
#ifndef KB_METRICS_H
#define KB_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define KB_HIST_MAX 20 /* finite buckets of one histogram */

/* A cumulative-at-render histogram: b[i] counts observations <= bound i
 * (and > bound i-1); b[n] those above the last bound. sum is in the
 * histogram's unit (microseconds for durations, plain counts for sizes). */
typedef struct kb_hist {
    _Atomic uint64_t b[KB_HIST_MAX + 1];
    _Atomic uint64_t sum, count;
} kb_hist_t;

/* Bucket bounds. Durations in microseconds (rendered as seconds): 50 µs to
 * 10 s. Sizes (documents per write request): 1 to 10,000. */
extern const uint64_t kb_hist_us_bounds[];
extern const size_t kb_hist_us_n;
extern const uint64_t kb_hist_size_bounds[];
extern const size_t kb_hist_size_n;

void kb_hist_observe(kb_hist_t *h, const uint64_t *bounds, size_t n,
                     uint64_t v);

/* Error codes counted one by one: KB_E* from -1000 down to this. */
#define KB_METRICS_ERR_MIN (-1040)

typedef struct kb_metrics {
    kb_hist_t write_us[5];  /* by Kbsync__WriteMode (1 async .. 4 majority) */
    kb_hist_t query_us[5];  /* by Kbsync__ReadLevel (1 eventual .. 4 strong) */
    kb_hist_t write_docs;   /* documents per write request */
    /* error answers by code: [0] other codes, [i] code -999 - i */
    _Atomic uint64_t errors[-KB_METRICS_ERR_MIN - 999 + 1];
} kb_metrics_t;

/* The process's metrics (zeroed at start). */
kb_metrics_t *kb_metrics(void);

/* A write answered in mode (Kbsync__WriteMode; others are ignored) us
 * microseconds after its request arrived. */
void kb_metrics_write(int mode, uint64_t us, uint64_t docs);
/* A query answered at level (Kbsync__ReadLevel) us after it arrived. */
void kb_metrics_query(int level, uint64_t us);
/* An answer carrying error code (negative). */
void kb_metrics_error(int code);

#endif
