/* idx_scrub: background digest checks (see idx_scrub.h). */
#include "idx_scrub.h"

#include "kb_err.h"
#include "kb_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SCRUB_WAKE_MS 250u   /* how often the thread looks whether one is due */
#define SCRUB_QUIET_MS 1000u /* no write for this long: the node is quiet */

struct idx_scrub {
    idx_store_t *s;
    const uint64_t *pause; /* non-zero: no scheduled pass (may be NULL) */
    uint32_t every_ms;
    uint32_t hold_ms;
    uint32_t unchanged_ms;
    pthread_mutex_t mu; /* guards st, want */
    pthread_cond_t cv;
    _Atomic int stop;   /* also read by a pass in progress */
    int want;           /* idx_scrub_request(): a pass as soon as possible */
    idx_scrub_state_t st;
    kb_loglimit_t log_foreign; /* scrub thread only */
    pthread_t thr;
};

static int scrub_pass(idx_scrub_t *sc, idx_store_digest_check_t *c,
                      uint64_t hold_us, char *err, size_t errlen)
{
    pthread_mutex_lock(&sc->mu);
    uint64_t seq = ++sc->st.started;
    /* A request that came after the caller looked owns this pass (its
     * number is the one idx_scrub_request returned): it runs to the end. */
    if (sc->want)
        hold_us = 0;
    sc->want = 0;
    pthread_mutex_unlock(&sc->mu);
    uint64_t t0 = kb_mono_us();
    int rc = idx_store_digest_check(sc->s, c, &sc->stop, hold_us, err, errlen);
    uint64_t ms = (kb_mono_us() - t0) / 1000u;
    pthread_mutex_lock(&sc->mu);
    if (!rc) {
        sc->st.passes++;
        sc->st.last_ok = seq;
        sc->st.last_ms = ms;
        sc->st.last_lsn = c->lsn;
        sc->st.docs = c->docs;
        sc->st.last_stored = c->stored;
        sc->st.last_scanned = c->scanned;
        if (c->stored != c->scanned) {
            sc->st.mismatches++;
            sc->st.bad_lsn = c->lsn;
            sc->st.bad_stored = c->stored;
            sc->st.bad_scanned = c->scanned;
        }
    } else if (rc == -EAGAIN) {
        sc->st.yielded++;
    } else {
        sc->st.failed++;
    }
    pthread_mutex_unlock(&sc->mu);
    return rc;
}

static void *scrub_main(void *arg)
{
    idx_scrub_t *sc = arg;
    /* Below the node's other work (nice 10, as the checkpoint writer): a
     * pass reads every document, and on a busy machine the readers and
     * writers come first; the schedule below stretches with the pass. */
    setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
    uint64_t last_end = 0, last_ms = 0, seen_head = UINT64_MAX, changed = 0;
    uint64_t last_ok = kb_mono_us(); /* a completed pass (or the start) */
    /* ... or a look that found the store as a completed pass saw it (the
     * IDX_SCRUB_INSIST_MS rule: a node idle for a minute has not gone a
     * minute unchecked) */
    uint64_t last_sure = last_ok;
    /* The store as the newest completed pass began (have_clean): while it
     * stays so, that pass's verdict stands and no scheduled pass is due
     * until unchanged_ms after it. */
    idx_store_stamp_t clean;
    int have_clean = 0;
    for (;;) {
        struct timespec ts;
        kb_abstime_in(&ts, (uint64_t)SCRUB_WAKE_MS * 1000u);
        pthread_mutex_lock(&sc->mu);
        while (!sc->stop && !sc->want &&
               pthread_cond_timedwait(&sc->cv, &sc->mu, &ts) != ETIMEDOUT)
            ;
        int stop = sc->stop, want = sc->want;
        pthread_mutex_unlock(&sc->mu);
        if (stop)
            break;
        /* Checks off: requested passes only. */
        if (!want && sc->every_ms == IDX_SCRUB_REQUESTS_ONLY)
            continue;
        /* Written by another process: a pass now, not at the next turn. */
        uint64_t foreign = idx_store_foreign_txn(sc->s);
        if (foreign) {
            kb_log_limited(&sc->log_foreign, KB_LOG_WARN,
                           "LMDB transaction %llu was committed to this "
                           "store by another process, not by this node: "
                           "checking the documents against their digest now",
                           (unsigned long long)foreign);
            pthread_mutex_lock(&sc->mu);
            sc->st.foreign++;
            pthread_mutex_unlock(&sc->mu);
            want = 1;
        }
        /* Due? D x the last pass since it ended (and every_ms since):
         * D = IDX_SCRUB_DUTY_IDLE once nothing was written for a second,
         * IDX_SCRUB_DUTY while writes flow. */
        uint64_t now = kb_mono_us(), head = idx_store_head(sc->s);
        if (head != seen_head) {
            seen_head = head;
            changed = now;
        }
        uint64_t duty = now - changed >= SCRUB_QUIET_MS * 1000u
                            ? IDX_SCRUB_DUTY_IDLE
                            : IDX_SCRUB_DUTY;
        uint64_t need_ms = duty * last_ms > sc->every_ms ? duty * last_ms
                                                         : sc->every_ms;
        if (!want && last_end && now - last_end < need_ms * 1000u)
            continue;
        /* A snapshot being loaded: its documents are checked once it is
         * complete, not every few seconds while it streams in. */
        if (!want && sc->pause && __atomic_load_n(sc->pause, __ATOMIC_ACQUIRE))
            continue;
        /* Nothing written since the last completed pass began, through
         * LMDB or to the file (its stamp was taken 3 s or more after the
         * last write before it): a pass would read the same bytes again
         * (from the page cache, as a rule). Re-checked unchanged_ms after
         * that pass all the same. */
        idx_store_stamp_t stamp;
        int stamped = !idx_store_stamp(sc->s, &stamp);
        if (!want && have_clean && stamped &&
            idx_store_stamp_equal(&stamp, &clean) &&
            now - last_ok < sc->unchanged_ms * 1000ull) {
            last_sure = now;
            pthread_mutex_lock(&sc->mu);
            sc->st.unchanged++;
            pthread_mutex_unlock(&sc->mu);
            continue;
        }
        /* A requested pass, one for a foreign commit and one after
         * IDX_SCRUB_INSIST_MS without a completed pass (nor a look that
         * found the store as one left it: last_sure) run to the end
         * whatever is written meanwhile; the others give way to writes
         * (a pass begun on a quiet node too, when writes resume). */
        uint64_t hold_us = 0;
        if (!want && now - last_sure < IDX_SCRUB_INSIST_MS * 1000ull)
            hold_us = sc->hold_ms * 1000ull;
        idx_store_digest_check_t c = {0};
        char err[256];
        uint64_t t0 = kb_mono_us();
        int rc = scrub_pass(sc, &c, hold_us, err, sizeof err);
        if (!rc)
            last_ok = last_sure = kb_mono_us();
        /* a stamp taken within a few seconds of a write is no proof that
         * nothing changed later (coarse file times): not kept */
        if (!rc && stamped && stamp.settled) {
            clean = stamp;
            have_clean = 1;
        } else if (!rc) {
            have_clean = 0;
        }
        if (rc && rc != -EAGAIN && !sc->stop)
            kb_warn("digest check: %s", err);
        else if (!rc && c.stored != c.scanned)
            kb_error("digest check: the %llu documents at LSN %llu add up to "
                     "%016llx, but the digest kept with them is %016llx: "
                     "stored data changed outside kbsync (edited, or "
                     "corrupted)",
                     (unsigned long long)c.docs, (unsigned long long)c.lsn,
                     (unsigned long long)c.scanned,
                     (unsigned long long)c.stored);
        last_end = kb_mono_us();
        last_ms = (last_end - t0) / 1000u;
    }
    return NULL;
}

int idx_scrub_start(idx_store_t *s, uint32_t every_ms, uint32_t hold_ms,
                    uint32_t unchanged_ms, const uint64_t *pause,
                    idx_scrub_t **out)
{
    idx_scrub_t *sc = calloc(1, sizeof *sc);
    if (!sc)
        return KB_ENOMEM;
    sc->s = s;
    sc->pause = pause;
    sc->every_ms = every_ms ? every_ms : 1000;
    sc->hold_ms = hold_ms ? hold_ms : IDX_SCRUB_HOLD_MS;
    sc->unchanged_ms = unchanged_ms ? unchanged_ms : IDX_SCRUB_UNCHANGED_MS;
    pthread_mutex_init(&sc->mu, NULL);
    pthread_cond_init(&sc->cv, NULL);
    if (pthread_create(&sc->thr, NULL, scrub_main, sc)) {
        pthread_cond_destroy(&sc->cv);
        pthread_mutex_destroy(&sc->mu);
        free(sc);
        return KB_ENOMEM;
    }
    pthread_setname_np(sc->thr, "kb-scrub");
    *out = sc;
    return 0;
}

void idx_scrub_stop(idx_scrub_t **scp)
{
    if (!scp || !*scp)
        return;
    idx_scrub_t *sc = *scp;
    pthread_mutex_lock(&sc->mu);
    sc->stop = 1; /* a pass in progress gives up within 1,024 documents */
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    pthread_join(sc->thr, NULL);
    pthread_cond_destroy(&sc->cv);
    pthread_mutex_destroy(&sc->mu);
    free(sc);
    *scp = NULL;
}

void idx_scrub_get(idx_scrub_t *sc, idx_scrub_state_t *out)
{
    pthread_mutex_lock(&sc->mu);
    *out = sc->st;
    pthread_mutex_unlock(&sc->mu);
}

uint64_t idx_scrub_request(idx_scrub_t *sc)
{
    pthread_mutex_lock(&sc->mu);
    uint64_t need = sc->st.started + 1;
    sc->want = 1;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    return need;
}

int idx_scrub_run(idx_scrub_t *sc, idx_store_digest_check_t *c, char *err,
                  size_t errlen)
{
    return scrub_pass(sc, c, 0, err, errlen);
}
