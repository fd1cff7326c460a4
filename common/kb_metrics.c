/* kb_metrics: process-wide counters and histograms (see kb_metrics.h). */
#include "kb_metrics.h"

const uint64_t kb_hist_us_bounds[] = {
    50,     100,    250,     500,     1000,    2500,    5000,
    10000,  25000,  50000,   100000,  250000,  500000,  1000000,
    2500000, 5000000, 10000000};
const size_t kb_hist_us_n =
    sizeof kb_hist_us_bounds / sizeof kb_hist_us_bounds[0];
const uint64_t kb_hist_size_bounds[] = {1,   2,    5,    10,   20,   50,
                                        100, 200,  500,  1000, 2000, 5000,
                                        10000};
const size_t kb_hist_size_n =
    sizeof kb_hist_size_bounds / sizeof kb_hist_size_bounds[0];

static kb_metrics_t g_metrics;

kb_metrics_t *kb_metrics(void)
{
    return &g_metrics;
}

void kb_hist_observe(kb_hist_t *h, const uint64_t *bounds, size_t n,
                     uint64_t v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->b[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
}

void kb_metrics_write(int mode, uint64_t us, uint64_t docs)
{
    if (mode < 1 || mode > 4)
        return;
    kb_hist_observe(&g_metrics.write_us[mode], kb_hist_us_bounds,
                    kb_hist_us_n, us);
    kb_hist_observe(&g_metrics.write_docs, kb_hist_size_bounds,
                    kb_hist_size_n, docs);
}

void kb_metrics_query(int level, uint64_t us)
{
    if (level < 1 || level > 4)
        return;
    kb_hist_observe(&g_metrics.query_us[level], kb_hist_us_bounds,
                    kb_hist_us_n, us);
}

void kb_metrics_error(int code)
{
    size_t i = code <= -1000 && code >= KB_METRICS_ERR_MIN
                   ? (size_t)(-999 - code)
                   : 0;
    atomic_fetch_add_explicit(&g_metrics.errors[i], 1, memory_order_relaxed);
}
