/* idx: a node's knowledge base = idx_store (LMDB, the truth) + idx_vec
 * (FAISS, derived). In: validated ops (leader) or log records (replica).
 * Out: LSNs, hits, stats. The vector index is rebuilt from the store at open
 * and updated after each durable commit.
 *
 * WRITE CONTRACT
 * A write is one LMDB transaction holding, for every op, the document (or its
 * removal), the id -> label mapping and the log record, plus the node's
 * applied state (LSN, commit time). Only after mdb_txn_commit() returns 0 is
 * the vector index touched, and only then may the caller acknowledge. A crash
 * between commit and index update loses nothing: the index is rebuilt from
 * the store at the next open. A document's FAISS label is the LSN of the
 * upsert that wrote it, so labels are unique for the life of the store and
 * replacing a document is "remove old label, add new label". */
#include "idx.h"

#include "idx_embed.h"
#include "idx_store.h"
#include "idx_vec.h"
#include "kb_err.h"
#include "kb_json.h"
#include "kb_util.h"
#include "kbsync.pb-c.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define IDX_FORMAT_VERSION 1
#define IDX_REBUILD_CHUNK 8192

struct idx {
    idx_store_t *store;
    idx_vec_t *vec;
    Kbsync__KbMeta *meta; /* as stored */
    uint32_t dim;
    int metric_ip;
    double rebuild_s;
    /* Scratch for one write: vectors to add and labels to add/remove. */
    float *add_x;
    int64_t *add_label;
    size_t add_n, add_cap;
    int64_t *rm_label;
    size_t rm_n, rm_cap;
    float *qbuf; /* dim floats for embedding a text query */
};

/* ------------------------------------------------------------------ open */

static int idx_check_meta(const Kbsync__KbMeta *m, const idx_config_t *cfg,
                          const char *dir, char *err, size_t errlen)
{
    if (cfg->dim && cfg->dim != m->dim)
        return kb_seterr(
            err, errlen, KB_EMISMATCH,
            "%s holds a knowledge base of dim %u; --dim %u differs", dir,
            m->dim, cfg->dim);
    if (cfg->metric && strcmp(cfg->metric, m->metric))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s holds a knowledge base with metric %s; --metric "
                         "%s differs",
                         dir, m->metric, cfg->metric);
    if (cfg->index && strcmp(cfg->index, m->index))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s holds a knowledge base with index \"%s\"; --index "
                         "\"%s\" differs",
                         dir, m->index, cfg->index);
    if (cfg->node_id && strcmp(cfg->node_id, m->node_id))
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s belongs to node \"%s\"; --id \"%s\" differs", dir,
                         m->node_id, cfg->node_id);
    if (m->format_version != IDX_FORMAT_VERSION)
        return kb_seterr(err, errlen, KB_EMISMATCH,
                         "%s has store format %u; this kbsync reads format %u",
                         dir, m->format_version, IDX_FORMAT_VERSION);
    return 0;
}

struct rebuild {
    idx_kb_t *ix;
    float *x;
    int64_t *labels;
    size_t n;
    char *err;
    size_t errlen;
};

static int rebuild_flush(struct rebuild *r)
{
    int rc = idx_vec_add(r->ix->vec, r->n, r->x, r->labels, r->err, r->errlen);
    r->n = 0;
    return rc;
}

static int rebuild_visit(void *ctx, int64_t label, const void *bytes,
                         size_t len)
{
    struct rebuild *r = ctx;
    Kbsync__LogRecord *rec = kbsync__log_record__unpack(NULL, len, bytes);
    const Kbsync__Doc *d = rec ? rec->doc : NULL;
    if (!d || d->n_embedding != r->ix->dim) {
        int rc = kb_seterr(r->err, r->errlen, KB_ECORRUPT,
                           "document with label %lld: %s", (long long)label,
                           !rec ? "record cannot be decoded"
                           : !d ? "record holds no document"
                                : "embedding size differs from dim");
        if (rec)
            kbsync__log_record__free_unpacked(rec, NULL);
        return rc;
    }
    memcpy(r->x + r->n * r->ix->dim, d->embedding, sizeof(float) * r->ix->dim);
    r->labels[r->n++] = label;
    kbsync__log_record__free_unpacked(rec, NULL);
    return r->n == IDX_REBUILD_CHUNK ? rebuild_flush(r) : 0;
}

static int idx_rebuild(idx_kb_t *ix, char *err, size_t errlen)
{
    uint64_t t0 = kb_mono_us();
    struct rebuild r = {ix, NULL, NULL, 0, err, errlen};
    r.x = malloc(sizeof(float) * ix->dim * IDX_REBUILD_CHUNK);
    r.labels = malloc(sizeof(int64_t) * IDX_REBUILD_CHUNK);
    int rc =
        (!r.x || !r.labels)
            ? kb_seterr(err, errlen, KB_ENOMEM, "out of memory")
            : idx_store_scan_docs(ix->store, rebuild_visit, &r, err, errlen);
    if (!rc && r.n)
        rc = rebuild_flush(&r);
    free(r.x);
    free(r.labels);
    ix->rebuild_s = (double)(kb_mono_us() - t0) / 1e6;
    return rc;
}

static int idx_reserve(idx_kb_t *ix, size_t adds, size_t rms)
{
    if (adds > ix->add_cap) {
        float *x = realloc(ix->add_x, sizeof(float) * ix->dim * adds);
        if (!x)
            return KB_ENOMEM;
        ix->add_x = x;
        int64_t *l = realloc(ix->add_label, sizeof(int64_t) * adds);
        if (!l)
            return KB_ENOMEM;
        ix->add_label = l;
        ix->add_cap = adds;
    }
    if (rms > ix->rm_cap) {
        int64_t *l = realloc(ix->rm_label, sizeof(int64_t) * rms);
        if (!l)
            return KB_ENOMEM;
        ix->rm_label = l;
        ix->rm_cap = rms;
    }
    return 0;
}

int idx_open(const idx_config_t *cfg, idx_kb_t **out, char *err, size_t errlen)
{
    *out = NULL;
    idx_kb_t *ix = calloc(1, sizeof *ix);
    if (!ix)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    int rc = idx_store_open(cfg->dir, cfg->map_size, cfg->nosync, &ix->store,
                            err, errlen);
    if (!rc)
        rc = idx_store_get_meta(ix->store, &ix->meta, err, errlen);
    if (rc)
        goto fail;

    if (!ix->meta) {
        if (!cfg->dim) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s holds no knowledge base yet; give --dim to "
                           "create one",
                           cfg->dir);
            goto fail;
        }
        if (cfg->dim > KB_MAX_DIM) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "--dim %u is above the "
                           "maximum %u",
                           cfg->dim, KB_MAX_DIM);
            goto fail;
        }
        const char *metric = cfg->metric ? cfg->metric : "ip";
        if (strcmp(metric, "ip") && strcmp(metric, "l2")) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "--metric must be ip or l2, not \"%s\"", metric);
            goto fail;
        }
        Kbsync__KbMeta m = KBSYNC__KB_META__INIT;
        m.format_version = IDX_FORMAT_VERSION;
        m.dim = cfg->dim;
        m.metric = (char *)metric;
        m.index = (char *)(cfg->index ? cfg->index : "IDMap2,Flat");
        m.node_id = (char *)(cfg->node_id ? cfg->node_id : "node");
        m.embedder = (char *)IDX_EMBED_NAME;
        /* Build the index first so a bad --index leaves no store behind
         * claiming it. */
        rc = idx_vec_new(m.dim, m.index, !strcmp(metric, "ip"), &ix->vec, err,
                         errlen);
        if (!rc)
            rc = idx_store_put_meta(ix->store, &m, err, errlen);
        if (!rc)
            rc = idx_store_get_meta(ix->store, &ix->meta, err, errlen);
        if (rc)
            goto fail;
        kb_info("created knowledge base in %s: dim %u, metric %s, index \"%s\"",
                cfg->dir, m.dim, m.metric, m.index);
    } else {
        rc = idx_check_meta(ix->meta, cfg, cfg->dir, err, errlen);
        if (!rc)
            rc = idx_vec_new(ix->meta->dim, ix->meta->index,
                             !strcmp(ix->meta->metric, "ip"), &ix->vec, err,
                             errlen);
        if (rc)
            goto fail;
    }
    ix->dim = ix->meta->dim;
    ix->metric_ip = !strcmp(ix->meta->metric, "ip");
    ix->qbuf = malloc(sizeof(float) * ix->dim);
    if (!ix->qbuf) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        goto fail;
    }
    rc = idx_rebuild(ix, err, errlen);
    if (rc)
        goto fail;
    uint64_t lsn;
    idx_store_state(ix->store, &lsn, NULL);
    kb_info("opened %s: version %llu, %llu documents; FAISS index rebuilt "
            "from LMDB in %.3f s",
            cfg->dir, (unsigned long long)lsn,
            (unsigned long long)idx_vec_count(ix->vec), ix->rebuild_s);
    *out = ix;
    return 0;
fail:
    idx_close(&ix);
    return rc;
}

void idx_close(idx_kb_t **ixp)
{
    if (!ixp || !*ixp)
        return;
    idx_kb_t *ix = *ixp;
    idx_vec_free(&ix->vec);
    idx_store_close(&ix->store);
    if (ix->meta)
        kbsync__kb_meta__free_unpacked(ix->meta, NULL);
    free(ix->add_x);
    free(ix->add_label);
    free(ix->rm_label);
    free(ix->qbuf);
    free(ix);
    *ixp = NULL;
}

/* -------------------------------------------------------------- validate */

static int check_floats(const float *x, size_t n, char *what, size_t *bad)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) {
            *bad = i;
            strcpy(what, isnan(x[i]) ? "NaN" : "infinite");
            return KB_ENONFINITE;
        }
    }
    return 0;
}

int idx_validate(const idx_kb_t *ix, const idx_op_t *ops, size_t n, char *err,
                 size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        const idx_op_t *o = &ops[i];
        size_t idlen = o->id ? strlen(o->id) : 0;
        if (idlen == 0)
            return kb_seterr(err, errlen, KB_EBADID, "op #%zu: empty id", i);
        if (idlen > KB_MAX_ID_LEN)
            return kb_seterr(err, errlen, KB_EBADID,
                             "op #%zu: id of %zu bytes is longer than %u", i,
                             idlen, KB_MAX_ID_LEN);
        if (o->op == IDX_OP_DELETE)
            continue;
        if (o->op != IDX_OP_UPSERT)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "op #%zu (\"%s\"): "
                             "unknown operation %d",
                             i, o->id, (int)o->op);
        size_t tlen = o->text ? strlen(o->text) : 0;
        if (tlen > KB_MAX_TEXT_LEN)
            return kb_seterr(err, errlen, KB_ETOOBIG,
                             "doc #%zu (\"%s\"): text of %zu bytes is longer "
                             "than %u",
                             i, o->id, tlen, KB_MAX_TEXT_LEN);
        if (o->embedding) {
            if (o->embedding_len != ix->dim)
                return kb_seterr(err, errlen, KB_EDIM,
                                 "doc #%zu (\"%s\"): embedding has %zu "
                                 "values, the knowledge base has dim %u",
                                 i, o->id, o->embedding_len, ix->dim);
            char what[16];
            size_t bad;
            if (check_floats(o->embedding, o->embedding_len, what, &bad))
                return kb_seterr(err, errlen, KB_ENONFINITE,
                                 "doc #%zu (\"%s\"): embedding[%zu] is %s", i,
                                 o->id, bad, what);
        } else if (tlen == 0) {
            return kb_seterr(err, errlen, KB_EINVAL,
                             "doc #%zu (\"%s\"): neither embedding nor text "
                             "to embed",
                             i, o->id);
        }
        size_t mlen = o->metadata ? strlen(o->metadata) : 0;
        if (mlen > KB_MAX_METADATA_LEN)
            return kb_seterr(err, errlen, KB_ETOOBIG,
                             "doc #%zu (\"%s\"): metadata of %zu bytes is "
                             "longer than %u",
                             i, o->id, mlen, KB_MAX_METADATA_LEN);
        if (mlen) {
            char why[200];
            if (kb_json_check_object(o->metadata, mlen, why, sizeof why))
                return kb_seterr(err, errlen, KB_EBADJSON,
                                 "doc #%zu (\"%s\"): metadata: %s", i, o->id,
                                 why);
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- write */

/* Index bookkeeping for one committed op: label `added` (or -1) holds vector
 * x, label `removed` (or -1) leaves the index. */
static void idx_note(idx_kb_t *ix, int64_t added, const float *x, int64_t removed)
{
    if (removed >= 0)
        ix->rm_label[ix->rm_n++] = removed;
    if (added >= 0) {
        memcpy(ix->add_x + ix->add_n * ix->dim, x, sizeof(float) * ix->dim);
        ix->add_label[ix->add_n++] = added;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* After the commit: apply the noted removals and additions to FAISS. A label
 * added and removed within the same write (the same id upserted twice) never
 * reaches the index. If FAISS fails here the store is ahead of the index:
 * rebuild it from the store, which is the truth. */
static int idx_apply_vectors(idx_kb_t *ix, char *err, size_t errlen)
{
    size_t keep = 0, rm = 0;
    if (ix->rm_n) {
        qsort(ix->rm_label, ix->rm_n, sizeof(int64_t), cmp_i64);
        /* add_label is ascending (labels are LSNs). */
        for (size_t i = 0; i < ix->add_n; i++) {
            int64_t l = ix->add_label[i];
            if (bsearch(&l, ix->rm_label, ix->rm_n, sizeof l, cmp_i64))
                continue;
            if (keep != i) {
                ix->add_label[keep] = l;
                memcpy(ix->add_x + keep * ix->dim, ix->add_x + i * ix->dim,
                       sizeof(float) * ix->dim);
            }
            keep++;
        }
        int64_t first_new = ix->add_n ? ix->add_label[0] : INT64_MAX;
        for (size_t i = 0; i < ix->rm_n; i++)
            if (ix->rm_label[i] < first_new)
                ix->rm_label[rm++] = ix->rm_label[i];
    } else {
        keep = ix->add_n;
    }
    int rc = idx_vec_remove(ix->vec, rm, ix->rm_label, err, errlen);
    if (!rc)
        rc = idx_vec_add(ix->vec, keep, ix->add_x, ix->add_label, err, errlen);
    ix->add_n = ix->rm_n = 0;
    if (rc) {
        kb_error("vector index update failed after a durable commit (%s); "
                 "rebuilding it from the store",
                 err ? err : "");
        idx_vec_t *fresh = NULL;
        char why[256];
        int rc2 = idx_vec_new(ix->dim, ix->meta->index, ix->metric_ip, &fresh,
                              why, sizeof why);
        if (!rc2) {
            idx_vec_free(&ix->vec);
            ix->vec = fresh;
            rc2 = idx_rebuild(ix, why, sizeof why);
        }
        if (rc2) {
            kb_error("cannot rebuild the vector index (%s); stopping: restart "
                     "the node to rebuild it from LMDB",
                     why);
            abort();
        }
    }
    return 0;
}

/* Fills a Doc for an upsert op; vec receives the vector to index. */
static void idx_doc_from_op(idx_kb_t *ix, const idx_op_t *o, Kbsync__Doc *d,
                            const float **vec)
{
    kbsync__doc__init(d);
    d->id = (char *)o->id;
    d->text = (char *)(o->text ? o->text : "");
    d->metadata_json = (char *)(o->metadata ? o->metadata : "");
    if (o->embedding) {
        *vec = o->embedding;
    } else {
        idx_embed_text(d->text, strlen(d->text), ix->qbuf, ix->dim);
        *vec = ix->qbuf;
    }
    d->n_embedding = ix->dim;
    d->embedding = (float *)*vec;
}

int idx_write(idx_kb_t *ix, const idx_op_t *ops, size_t n, uint64_t commit_us,
              uint64_t *lsns, idx_log_cb precommit, void *ctx, char *err,
              size_t errlen)
{
    if (n == 0)
        return 0;
    if (!commit_us)
        commit_us = kb_wall_us();
    if (idx_reserve(ix, n, n))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    idx_wtxn_t *t;
    int rc = idx_store_begin(ix->store, &t, err, errlen);
    if (rc)
        return rc;
    uint64_t lsn;
    idx_store_state(ix->store, &lsn, NULL);
    const uint64_t first = lsn + 1;
    for (size_t i = 0; i < n && !rc; i++) {
        const idx_op_t *o = &ops[i];
        int64_t old = -1;
        if (o->op == IDX_OP_UPSERT) {
            Kbsync__Doc d;
            const float *vec;
            idx_doc_from_op(ix, o, &d, &vec);
            rc = idx_store_upsert(t, lsn + 1, commit_us, &d, &old, err, errlen);
            if (!rc) {
                lsns[i] = ++lsn;
                idx_note(ix, (int64_t)lsn, vec, old);
            }
        } else {
            rc = idx_store_delete(t, lsn + 1, commit_us, o->id, strlen(o->id),
                                  0, &old, err, errlen);
            if (!rc && old >= 0) {
                lsns[i] = ++lsn;
                idx_note(ix, -1, NULL, old);
            } else if (!rc) {
                lsns[i] = 0;
            }
        }
    }
    if (!rc && precommit && lsn >= first) {
        rc = idx_store_txn_log(t, first, precommit, ctx, err, errlen);
    }
    if (rc) {
        idx_store_abort(&t);
        ix->add_n = ix->rm_n = 0;
        return rc;
    }
    rc = idx_store_commit(&t, err, errlen);
    if (rc) {
        ix->add_n = ix->rm_n = 0;
        return rc;
    }
    return idx_apply_vectors(ix, err, errlen);
}

int idx_apply_log(idx_kb_t *ix, size_t n, const void *const *recs,
                  const size_t *lens, char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    if (idx_reserve(ix, n, n))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    Kbsync__LogRecord **r = calloc(n, sizeof *r);
    if (!r)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    uint64_t lsn;
    idx_store_state(ix->store, &lsn, NULL);
    int rc = 0;
    /* Decode and check everything before the transaction: a bad record
     * changes nothing. */
    for (size_t i = 0; i < n && !rc; i++) {
        r[i] = kbsync__log_record__unpack(NULL, lens[i], recs[i]);
        if (!r[i]) {
            rc = kb_seterr(err, errlen, KB_EBADMSG,
                           "log record #%zu (%zu bytes) cannot be decoded", i,
                           lens[i]);
        } else if (r[i]->lsn != lsn + 1 + i) {
            rc = kb_seterr(err, errlen, KB_EGAP,
                           "log record #%zu has LSN %llu, expected %llu (%s)",
                           i, (unsigned long long)r[i]->lsn,
                           (unsigned long long)(lsn + 1 + i),
                           r[i]->lsn <= lsn + i ? "duplicate or reordered"
                                                : "gap");
        } else if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_UPSERT) {
            Kbsync__Doc *d = r[i]->doc;
            idx_op_t o = {IDX_OP_UPSERT,          d ? d->id : NULL,
                          d ? d->text : NULL,     d ? d->embedding : NULL,
                          d ? d->n_embedding : 0, d ? d->metadata_json : NULL};
            if (!d || !d->embedding)
                rc = kb_seterr(err, errlen, KB_EBADMSG,
                               "log record LSN %llu: upsert without embedding",
                               (unsigned long long)r[i]->lsn);
            else
                rc = idx_validate(ix, &o, 1, err, errlen);
        } else if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_DELETE) {
            idx_op_t o = {IDX_OP_DELETE, r[i]->id, NULL, NULL, 0, NULL};
            rc = idx_validate(ix, &o, 1, err, errlen);
        } else {
            rc = kb_seterr(err, errlen, KB_EBADMSG,
                           "log record LSN %llu: unknown op %d",
                           (unsigned long long)r[i]->lsn, (int)r[i]->op);
        }
    }
    idx_wtxn_t *t = NULL;
    if (!rc)
        rc = idx_store_begin(ix->store, &t, err, errlen);
    for (size_t i = 0; i < n && !rc; i++) {
        int64_t old = -1;
        idx_store_next_raw(t, recs[i], lens[i]); /* keep the leader's bytes */
        if (r[i]->op == KBSYNC__LOG_OP__LOG_OP_UPSERT) {
            rc = idx_store_upsert(t, r[i]->lsn, r[i]->commit_time_us, r[i]->doc,
                                  &old, err, errlen);
            if (!rc)
                idx_note(ix, (int64_t)r[i]->lsn, r[i]->doc->embedding, old);
        } else {
            rc = idx_store_delete(t, r[i]->lsn, r[i]->commit_time_us, r[i]->id,
                                  strlen(r[i]->id), 1, &old, err, errlen);
            if (!rc)
                idx_note(ix, -1, NULL, old);
        }
    }
    if (!rc) {
        rc = idx_store_commit(&t, err, errlen);
    } else {
        idx_store_abort(&t);
    }
    for (size_t i = 0; i < n; i++)
        if (r[i])
            kbsync__log_record__free_unpacked(r[i], NULL);
    free(r);
    if (rc) {
        ix->add_n = ix->rm_n = 0;
        return rc;
    }
    return idx_apply_vectors(ix, err, errlen);
}

/* ---------------------------------------------------------------- search */

struct hits_priv {
    size_t n;
    Kbsync__LogRecord *rec[]; /* each holds the hit's Doc */
};

int idx_search(idx_kb_t *ix, const float *q, const char *text, size_t text_len,
               uint32_t k, idx_hits_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (k == 0)
        k = 10;
    if (k > KB_MAX_K)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "k = %u is above the maximum %u", k, KB_MAX_K);
    if (!q) {
        if (!text || !text_len)
            return kb_seterr(err, errlen, KB_EINVAL,
                             "query has neither a vector nor text");
        idx_embed_text(text, text_len, ix->qbuf, ix->dim);
        q = ix->qbuf;
    } else {
        char what[16];
        size_t bad;
        if (check_floats(q, ix->dim, what, &bad))
            return kb_seterr(err, errlen, KB_ENONFINITE,
                             "query vector[%zu] is %s", bad, what);
    }
    float *scores = malloc(sizeof(float) * k);
    int64_t *labels = malloc(sizeof(int64_t) * k);
    struct hits_priv *p =
        calloc(1, sizeof *p + sizeof(Kbsync__LogRecord *) * k);
    idx_hit_t *hit = calloc(k, sizeof *hit);
    int rc = 0;
    if (!scores || !labels || !p || !hit) {
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
        goto done;
    }
    rc = idx_vec_search(ix->vec, 1, q, k, scores, labels, err, errlen);
    if (rc)
        goto done;
    idx_rtxn_t *t;
    rc = idx_store_rbegin(ix->store, &t, err, errlen);
    if (rc)
        goto done;
    for (uint32_t i = 0; i < k && labels[i] >= 0; i++) {
        const void *b;
        size_t len;
        int r = idx_store_doc_by_label(t, labels[i], &b, &len);
        if (r) {
            /* The index and the store are updated together by this thread,
             * so a label without a document means corruption. */
            kb_error("search: label %lld is in the index but not in the store",
                     (long long)labels[i]);
            continue;
        }
        Kbsync__LogRecord *rec = kbsync__log_record__unpack(NULL, len, b);
        if (!rec || !rec->doc) {
            kb_error("search: document with label %lld cannot be decoded",
                     (long long)labels[i]);
            if (rec)
                kbsync__log_record__free_unpacked(rec, NULL);
            continue;
        }
        const Kbsync__Doc *d = rec->doc;
        p->rec[p->n] = rec;
        hit[p->n].id = d->id;
        hit[p->n].text = d->text;
        hit[p->n].metadata = d->metadata_json;
        hit[p->n].score = scores[i];
        p->n++;
    }
    idx_store_rend(&t);
    out->n = p->n;
    out->hit = hit;
    out->priv = p;
    hit = NULL;
    p = NULL;
done:
    free(scores);
    free(labels);
    free(hit);
    free(p);
    return rc;
}

void idx_hits_free(idx_hits_t *h)
{
    if (!h)
        return;
    struct hits_priv *p = h->priv;
    if (p) {
        for (size_t i = 0; i < p->n; i++)
            kbsync__log_record__free_unpacked(p->rec[i], NULL);
        free(p);
    }
    free(h->hit);
    memset(h, 0, sizeof *h);
}

/* ----------------------------------------------------------------- stats */

void idx_stats(idx_kb_t *ix, idx_stats_t *st)
{
    memset(st, 0, sizeof *st);
    idx_store_state(ix->store, &st->version, &st->commit_us);
    st->vectors = idx_vec_count(ix->vec);
    st->docs = idx_store_count(ix->store);
    st->dim = ix->dim;
    st->metric = ix->meta->metric;
    st->index = ix->meta->index;
    st->node_id = ix->meta->node_id;
    st->rebuild_s = ix->rebuild_s;
}

const void *idx_meta(const idx_kb_t *ix)
{
    return ix->meta;
}

static int commit_time_visit(void *ctx, uint64_t lsn, const void *b, size_t n)
{
    (void)lsn;
    if (!b)
        return 0;
    Kbsync__LogRecord *r = kbsync__log_record__unpack(NULL, n, b);
    *(uint64_t *)ctx = r ? r->commit_time_us : 0;
    if (r)
        kbsync__log_record__free_unpacked(r, NULL);
    return 1;
}

uint64_t idx_commit_time(idx_kb_t *ix, uint64_t lsn)
{
    uint64_t t = 0;
    idx_store_scan_log(ix->store, lsn, 1, commit_time_visit, &t, NULL, 0);
    return t;
}

int idx_read_log(idx_kb_t *ix, uint64_t from, size_t max, idx_log_cb cb, void *ctx,
                 char *err, size_t errlen)
{
    return idx_store_read_log(ix->store, from, max, cb, ctx, err, errlen);
}
