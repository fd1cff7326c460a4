/* repl_retain: the leader's log retention (see repl_leader.h). In: the
 * replica table, the retention settings, the log. Out: compaction of the
 * log below the oldest LSN still needed, log lines with what went. Owns the
 * log samples (retain_sample_t) and the saved pins.
 *
 * RETENTION
 * The log from log start on is every operation; below it the store keeps
 * only live documents (idx_store.h, "compaction"). Every RETAIN_PASS_MS the
 * leader moves log start up to
 *     min(pin of every replica, head + 1 - --log-keep-ops)
 * (--log-keep-ops: the newest operations always kept, 10,000 by default, so
 * that a replica away for a moment, named or not, resumes from the log)
 * where a connected replica's pin is the newest LSN it acknowledged (its
 * record is kept, so its hello can be checked against our log), and a named
 * replica that is away keeps the pin last saved for it (meta "pin:<id>",
 * saved every RETAIN_PINS_MS while it moves). A replica being sent a
 * snapshot pins at its progress, so nothing it still needs is compacted
 * under it. What a lagging replica keeps is bounded: log start never stays
 * below the oldest LSN within --log-retain-mb of record bytes and
 * --log-retain-hours of commit time from the head; a replica that needs
 * more is told at its next hello that it is behind the retained log, and
 * by how much, and gets a snapshot. Each pass compacts at most
 * RETAIN_STEP_RECORDS operations (one LMDB transaction), so a write waits
 * at most one step; steps repeat every RETAIN_STEP_GAP_MS until caught up. What went is
 * logged with numbers, at most every RETAIN_LOG_MS. */
#include "repl_leader_int.h"

#include "kb_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETAIN_PASS_MS 1000
#define RETAIN_PINS_MS 5000
#define RETAIN_LOG_MS 10000
#define RETAIN_STEP_RECORDS 8192
#define RETAIN_STEP_GAP_MS 10 /* between steps while behind */
#define RETAIN_EARLY_OPS 4096 /* a pass as soon as this many came */
#define RETAIN_SAMPLE_BYTES (64u << 10)
#define RETAIN_DEFAULT_MB 1024
#define RETAIN_DEFAULT_HOURS 24
#define RETAIN_DEFAULT_KEEP_OPS 10000

static void pin_key(const peer_t *p, char *key, size_t cap)
{
    snprintf(key, cap, "pin:%s", p->id);
}

void repl__retain_init(repl_leader_t *l)
{
    char key[80];
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (!p->named)
            continue;
        pin_key(p, key, sizeof key);
        p->pin = idx_get_u64(l->ix, key);
    }
    l->rsamp_lsn = idx_log_start(l->ix) - 1;
}

void repl__retain_free(repl_leader_t *l)
{
    free(l->rsamp);
    l->rsamp = NULL;
    l->rsamp_n = l->rsamp_cap = 0;
}

static int sample_visit(void *ctx, uint64_t lsn, const void *b, size_t len)
{
    repl_leader_t *l = ctx;
    if (!b)
        return 0;
    uint64_t before = l->rsamp_bytes / RETAIN_SAMPLE_BYTES;
    l->rsamp_bytes += len;
    l->rsamp_lsn = lsn;
    if (l->rsamp_n && l->rsamp_bytes / RETAIN_SAMPLE_BYTES == before)
        return 0;
    if (l->rsamp_n == l->rsamp_cap) {
        size_t cap = l->rsamp_cap ? l->rsamp_cap * 2 : 256;
        retain_sample_t *m = realloc(l->rsamp, cap * sizeof *m);
        if (!m)
            return 0; /* fewer samples: bounds are judged more coarsely */
        l->rsamp = m;
        l->rsamp_cap = cap;
    }
    l->rsamp[l->rsamp_n++] = (retain_sample_t){
        lsn, l->rsamp_bytes - len, kb_wire_peek_u64(b, len, 2)};
    return 0;
}

/* Brings the samples up to the head (only the records since the last
 * pass are read) and drops those below log start. */
static void samples_update(repl_leader_t *l, uint64_t head)
{
    uint64_t start = idx_log_start(l->ix);
    if (l->rsamp_lsn + 1 < start)
        l->rsamp_lsn = start - 1;
    char err[256];
    while (l->rsamp_lsn < head) {
        uint64_t at = l->rsamp_lsn;
        if (idx_read_log(l->ix, at + 1, 65536, sample_visit, l, err,
                         sizeof err) < 0 ||
            l->rsamp_lsn == at)
            break;
    }
    size_t drop = 0;
    while (drop < l->rsamp_n && l->rsamp[drop].lsn < start)
        drop++;
    if (drop) {
        memmove(l->rsamp, l->rsamp + drop,
                (l->rsamp_n - drop) * sizeof *l->rsamp);
        l->rsamp_n -= drop;
    }
}

/* The lowest LSN the bounds let the log keep from. */
static uint64_t bound_start(repl_leader_t *l, uint64_t head)
{
    uint64_t mb = l->cfg.log_retain_mb ? l->cfg.log_retain_mb
                                       : RETAIN_DEFAULT_MB;
    uint64_t hours = l->cfg.log_retain_hours ? l->cfg.log_retain_hours
                                             : RETAIN_DEFAULT_HOURS;
    uint64_t max_bytes = mb << 20, now = kb_wall_us();
    uint64_t oldest_us = now > hours * 3600000000u
                             ? now - hours * 3600000000u
                             : 0;
    /* Samples ascend; records below the first one (less than a sample's
     * worth) are judged with it. */
    for (size_t i = 0; i < l->rsamp_n; i++) {
        const retain_sample_t *s = &l->rsamp[i];
        if (l->rsamp_bytes - s->bytes <= max_bytes && s->commit_us >= oldest_us)
            return i == 0 ? idx_log_start(l->ix) : s->lsn;
    }
    return l->rsamp_n ? head + 1 : idx_log_start(l->ix);
}

static void save_pins(repl_leader_t *l)
{
    char key[80], err[256];
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (!p->named || !p->online || p->snapshot_lsn || p->acked == p->pin)
            continue;
        pin_key(p, key, sizeof key);
        if (idx_set_u64(l->ix, key, p->acked ? p->acked : 0, err, sizeof err))
            kb_warn("cannot save the retention pin of replica %s: %s", p->id,
                    err);
        else
            p->pin = p->acked;
    }
}

void repl__retain_tick(repl_leader_t *l)
{
    uint64_t now = kb_mono_us();
    /* A pass a second, or as soon as RETAIN_EARLY_OPS operations came since
     * the last one: during a re-ingest at 30k docs/s a second's wait let
     * 60 MB of replaced records pile up, and the data file grew by that
     * much. */
    idx_view_t v;
    idx_view(l->ix, &v);
    uint64_t gap_ms =
        l->retain_behind || v.version >= l->retain_version + RETAIN_EARLY_OPS
            ? RETAIN_STEP_GAP_MS
            : RETAIN_PASS_MS;
    if (l->retain_us && now - l->retain_us < gap_ms * 1000u)
        return;
    l->retain_us = now;
    l->retain_version = v.version;
    l->retain_behind = 0;
    idx_stats_t st;
    idx_stats_stream(l->ix, &st);
    const uint64_t head = st.version;
    if (now - l->pins_us >= RETAIN_PINS_MS * 1000u) {
        save_pins(l);
        l->pins_us = now;
    }
    uint64_t keep = l->cfg.log_keep_ops == UINT64_MAX ? 0
                    : l->cfg.log_keep_ops ? l->cfg.log_keep_ops
                                          : RETAIN_DEFAULT_KEEP_OPS;
    uint64_t cut = head + 1;
    if (keep < cut)
        cut -= keep;
    else
        cut = 1;
    for (size_t i = 0; i < l->npeers; i++) {
        const peer_t *p = &l->peer[i];
        uint64_t pin = p->online ? p->acked : p->named ? p->pin : UINT64_MAX;
        if (pin == UINT64_MAX)
            continue;
        if (pin < 1)
            pin = 1;
        if (pin < cut)
            cut = pin;
    }
    samples_update(l, head);
    uint64_t bound = bound_start(l, head);
    if (cut < bound && bound > idx_log_start(l->ix)) {
        for (size_t i = 0; i < l->npeers; i++) {
            peer_t *p = &l->peer[i];
            uint64_t need = p->online ? p->acked : p->named ? p->pin : 0;
            if (need >= bound || p->warned_behind || (!p->named && !p->online))
                continue;
            kb_warn("replica %s needs the log from LSN %llu, but retention "
                    "(--log-retain-mb %llu, --log-retain-hours %llu) keeps it "
                    "from %llu on: it is sent a snapshot at its next hello",
                    p->id, (unsigned long long)need + 1,
                    (unsigned long long)(l->cfg.log_retain_mb
                                             ? l->cfg.log_retain_mb
                                             : RETAIN_DEFAULT_MB),
                    (unsigned long long)(l->cfg.log_retain_hours
                                             ? l->cfg.log_retain_hours
                                             : RETAIN_DEFAULT_HOURS),
                    (unsigned long long)bound);
            p->warned_behind = 1;
        }
        cut = bound;
    }
    /* Also with nothing to compact: idx_compact sweeps what the kept
     * operations replaced, except while snapshots are streamed: a document
     * replaced after a snapshot's LSN must still be sent in it (the
     * replica's state at that LSN holds it). */
    uint64_t sweep_max = UINT64_MAX;
    for (size_t i = 0; i < l->npeers; i++)
        if (l->peer[i].snapshot_lsn &&
            l->peer[i].snapshot_lsn + 1 < sweep_max)
            sweep_max = l->peer[i].snapshot_lsn + 1;
    uint64_t removed = 0, bytes = 0;
    char err[256];
    int rc = idx_compact(l->ix, cut, sweep_max, RETAIN_STEP_RECORDS, &removed,
                         &bytes, err, sizeof err);
    if (rc) {
        kb_warn("log compaction below LSN %llu failed: %s; trying again in "
                "%d ms",
                (unsigned long long)cut, err, RETAIN_PASS_MS);
        return;
    }
    l->compacted_records += removed;
    l->compacted_bytes += bytes;
    /* Retention limits may have cut below a snapshot being streamed: the
     * operations it needs after its LSN are gone; it starts anew. */
    for (size_t i = 0; i < l->npeers; i++) {
        peer_t *p = &l->peer[i];
        if (p->snapshot_lsn && idx_log_start(l->ix) > p->snapshot_lsn + 1) {
            kb_warn("replica %s was loading a snapshot at LSN %llu, but the "
                    "log now starts at %llu (retention limits): it starts "
                    "a new snapshot",
                    p->id, (unsigned long long)p->snapshot_lsn,
                    (unsigned long long)idx_log_start(l->ix));
            p->snapshot_lsn = 0;
            repl__peer_restart(l, p);
        }
    }
    /* Another step soon while behind (or while a step found work: the
     * sweep may have more); else wait a pass. */
    l->retain_behind = idx_log_start(l->ix) < cut || removed > 0;
    if (l->compacted_records &&
        now - l->compact_log_us >= RETAIN_LOG_MS * 1000u) {
        kb_info("log compacted: %llu records (%.1f MB) of replaced or deleted "
                "documents removed; the log now starts at LSN %llu (head "
                "%llu), %llu live documents",
                (unsigned long long)l->compacted_records,
                l->compacted_bytes / 1048576.0,
                (unsigned long long)idx_log_start(l->ix),
                (unsigned long long)head, (unsigned long long)st.docs);
        l->compacted_records = l->compacted_bytes = 0;
        l->compact_log_us = now;
    }
}
