/* idx_ckpt: the checkpoint file of a node's vector index (see idx_ckpt.h):
 * writing it atomically, reading it back with every byte checked, and
 * catching it up with the store. The threads and locks around a write are
 * idx.c's (CHECKPOINTS there); this file only turns state into bytes and
 * back.
 *
 * FILE (DIR/index.ckpt; integers little-endian, as in memory)
 *   head   "KBCKPT\r\n", u32 format, u32 dim, u32 metric, u32 index length,
 *          the index description, u64 lsn, u64 commit_us, u64 docs,
 *          u64 written_us, u64 store_id, u32 CRC-32C of the head bytes
 *          before it
 *   body   u64 n, n labels removed at or before lsn that the FAISS index
 *          still holds live (applied at load);
 *          u64 n, n delta labels (ascending, <= lsn), n * dim floats: the
 *          vectors published at lsn that the FAISS index did not hold yet;
 *          the postings (idx_filter_save(), labels <= lsn);
 *          the vector index (idx_vec_save(): FAISS's own format + bitmaps)
 *   tail   u64 bytes before the tail, u32 CRC-32C of all of them, u32 0,
 *          "KBCKEND\n"
 * A write goes to index.ckpt.tmp, is fsynced, renamed over index.ckpt and
 * the directory fsynced, so index.ckpt is always a whole checkpoint or the
 * previous one. A reader checks the tail against the file size and the
 * head's own CRC before anything else (idx_ckpt_peek), then computes the
 * whole CRC while it parses the body, reading no further than the tail,
 * and trusts nothing it parsed until the CRC matches.
 *
 * CATCH-UP. The store is the truth: after loading, the live documents of
 * the store's snapshot (the `ids` table) are compared with the labels live
 * in the checkpoint. Labels above lsn that are live get their metadata
 * into the postings and, unless the FAISS index already holds them, their
 * vectors into the delta (the merger moves them into FAISS in the
 * background, so an HNSW graph is never grown at open); labels live in the
 * checkpoint but not in the store are removed. This needs no record of
 * which label each later write replaced, which the log does not keep. */
#include "idx_ckpt.h"

#include "kb_err.h"
#include "kb_util.h"
#include "kbsync.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char CK_MAGIC[8] = {'K', 'B', 'C', 'K', 'P', 'T', '\r', '\n'};
static const char CK_END[8] = {'K', 'B', 'C', 'K', 'E', 'N', 'D', '\n'};
#define CK_TAIL 24u
#define CK_SYNC_EVERY (64u << 20) /* start writeback every 64 MiB written */
#define CK_READ_CHUNK 1024        /* records decoded per delta append */
#define CK_PACE_CHUNK (4u << 20)  /* bytes per write() of a paced writer */

#define ck_crc kb_crc32c

/* ------------------------------------------------------- checked streams
 * A FILE* over a file descriptor that checksums every byte it passes (a
 * GNU cookie stream), so FAISS's own reader and writer go through it and
 * nothing is read or written twice. */

typedef struct ck_stream {
    int fd;
    uint32_t crc;
    uint64_t pos;    /* bytes passed so far */
    uint64_t limit;  /* reader: never pass more (the tail starts there) */
    uint64_t synced; /* writer: writeback started below this */
    idx_ckpt_stop_fn stop;
    void *stop_ctx;
    uint32_t mbps;     /* writer: at most this many MB/s (0 = no limit) */
    uint64_t start_us; /* writer: when the first byte went */
    int error; /* errno of the first failure */
    char *buf; /* the FILE's buffer (setvbuf(NULL) would keep 8 KiB) */
} ck_stream_t;

/* Sleeps until pos bytes are due at s->mbps. */
static void ck_pace(ck_stream_t *s)
{
    if (!s->mbps)
        return;
    uint64_t due = s->start_us + s->pos / s->mbps, now = kb_mono_us();
    if (due > now)
        usleep((useconds_t)(due - now));
}

static ssize_t ck_write(void *cookie, const char *buf, size_t n)
{
    ck_stream_t *s = cookie;
    if (s->stop && s->stop(s->stop_ctx)) {
        s->error = ECANCELED;
        errno = ECANCELED;
        return -1;
    }
    if (!s->start_us)
        s->start_us = kb_mono_us();
    size_t done = 0;
    while (done < n) {
        /* At most CK_PACE_CHUNK per write(): the pace stays smooth when
         * FAISS hands over its whole storage in one call. */
        size_t m = n - done < CK_PACE_CHUNK ? n - done : CK_PACE_CHUNK;
        ck_pace(s);
        ssize_t w = write(s->fd, buf + done, m);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            s->error = w < 0 ? errno : EIO;
            errno = s->error;
            return -1;
        }
        s->crc = ck_crc(s->crc, buf + done, (size_t)w);
        s->pos += (size_t)w;
        done += (size_t)w;
        /* Let the kernel write back as we go: the final fsync then waits
         * for the last chunk only, and the disk sees no burst. */
        if (s->pos - s->synced >= CK_SYNC_EVERY) {
            sync_file_range(s->fd, (off_t)s->synced,
                            (off_t)(s->pos - s->synced),
                            SYNC_FILE_RANGE_WRITE);
            s->synced = s->pos;
        }
    }
    return (ssize_t)n;
}

static ssize_t ck_read(void *cookie, char *buf, size_t n)
{
    ck_stream_t *s = cookie;
    if (n > s->limit - s->pos)
        n = (size_t)(s->limit - s->pos);
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(s->fd, buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            s->error = errno;
            return -1;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    s->crc = ck_crc(s->crc, buf, done);
    s->pos += done;
    return (ssize_t)done;
}

#define CK_BUF (1u << 20)

/* A checked stream over s->fd; ck_close_stream() closes it. */
static FILE *ck_open_stream(ck_stream_t *s, const char *mode)
{
    cookie_io_functions_t io = {.read = ck_read, .write = ck_write};
    s->buf = malloc(CK_BUF);
    FILE *f = s->buf ? fopencookie(s, mode, io) : NULL;
    if (f)
        setvbuf(f, s->buf, _IOFBF, CK_BUF);
    return f;
}

/* Closes f (flushing a writer); returns fclose's value. Frees the buffer. */
static int ck_close_stream(ck_stream_t *s, FILE *f)
{
    int rc = f ? fclose(f) : 0;
    free(s->buf);
    s->buf = NULL;
    return rc;
}

/* ------------------------------------------------------------------ head */

static void ck_path(char *buf, size_t len, const char *dir, const char *suffix)
{
    snprintf(buf, len, "%s/%s%s", dir, IDX_CKPT_FILE, suffix);
}

/* Serializes the head into buf (at least sizeof(idx_ckpt_head_t) + 64
 * bytes); returns its length, CRC included. */
static size_t head_encode(const idx_ckpt_head_t *h, unsigned char *buf)
{
    uint32_t ilen = (uint32_t)strnlen(h->index, IDX_CKPT_INDEX_MAX - 1);
    uint32_t w[4] = {h->format, h->dim, h->metric, ilen};
    uint64_t q[5] = {h->lsn, h->commit_us, h->docs, h->written_us,
                     h->store_id};
    size_t n = 0;
    memcpy(buf, CK_MAGIC, 8);
    n += 8;
    memcpy(buf + n, w, sizeof w);
    n += sizeof w;
    memcpy(buf + n, h->index, ilen);
    n += ilen;
    memcpy(buf + n, q, sizeof q);
    n += sizeof q;
    uint32_t crc = ck_crc(0, buf, n);
    memcpy(buf + n, &crc, sizeof crc);
    return n + sizeof crc;
}

/* Parses a head from f (what head_encode wrote). */
static int head_read(FILE *f, const char *path, idx_ckpt_head_t *h,
                     char *err, size_t errlen)
{
    unsigned char buf[sizeof(idx_ckpt_head_t) + 64];
    uint32_t w[4], crc;
    uint64_t q[5];
    memset(h, 0, sizeof *h);
    if (fread(buf, 1, 8 + sizeof w, f) != 8 + sizeof w ||
        memcmp(buf, CK_MAGIC, 8))
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "%s: not a kbsync checkpoint (bad magic)", path);
    memcpy(w, buf + 8, sizeof w);
    size_t n = 8 + sizeof w;
    if (w[3] >= IDX_CKPT_INDEX_MAX ||
        fread(buf + n, 1, w[3] + sizeof q + sizeof crc, f) !=
            w[3] + sizeof q + sizeof crc)
        return kb_seterr(err, errlen, KB_ECORRUPT, "%s: head truncated",
                         path);
    memcpy(h->index, buf + n, w[3]);
    n += w[3];
    memcpy(q, buf + n, sizeof q);
    n += sizeof q;
    memcpy(&crc, buf + n, sizeof crc);
    if (crc != ck_crc(0, buf, n))
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "%s: head checksum mismatch", path);
    h->format = w[0];
    h->dim = w[1];
    h->metric = w[2];
    h->lsn = q[0];
    h->commit_us = q[1];
    h->docs = q[2];
    h->written_us = q[3];
    h->store_id = q[4];
    if (h->format != IDX_CKPT_FORMAT)
        return kb_seterr(err, errlen, KB_ECORRUPT,
                         "%s: checkpoint format %u, this kbsync reads %u",
                         path, h->format, IDX_CKPT_FORMAT);
    return 0;
}

/* ----------------------------------------------------------------- write */

static int body_write(FILE *f, const idx_ckpt_src_t *src, uint32_t dim,
                      char *err, size_t errlen)
{
    uint64_t nrm = src->nrm, nx = src->nextra;
    int bad = fwrite(&nrm, sizeof nrm, 1, f) != 1 ||
              (src->nrm &&
               fwrite(src->rm, sizeof *src->rm, src->nrm, f) != src->nrm) ||
              fwrite(&nx, sizeof nx, 1, f) != 1;
    for (size_t i = 0; i < src->nextra && !bad; i++) {
        int64_t l = idx_delta_label(src->delta, src->extra[i]);
        bad = fwrite(&l, sizeof l, 1, f) != 1;
    }
    for (size_t i = 0; i < src->nextra && !bad; i++)
        bad = fwrite(idx_delta_vector(src->delta, src->extra[i]),
                     sizeof(float), dim, f) != dim;
    if (!bad)
        bad = fwrite(src->postings, 1, src->postings_len, f) !=
              src->postings_len;
    if (bad)
        return kb_seterr(err, errlen, -EIO, "write failed");
    return idx_vec_save(src->vec, f, err, errlen);
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Writes the tail after the stream's bytes, then makes the file durable. */
static int tail_write(ck_stream_t *s)
{
    unsigned char t[CK_TAIL];
    uint32_t crc_pad[2] = {s->crc, 0};
    memcpy(t, &s->pos, 8);
    memcpy(t + 8, crc_pad, 8);
    memcpy(t + 16, CK_END, 8);
    if (write(s->fd, t, sizeof t) != (ssize_t)sizeof t)
        return errno ? -errno : -EIO;
    return fsync(s->fd) ? -errno : 0;
}

int idx_ckpt_write(const char *dir, const idx_ckpt_head_t *h,
                   const idx_ckpt_src_t *src, uint32_t mbps,
                   idx_ckpt_stop_fn stop, void *stop_ctx, uint64_t *bytes,
                   char *err, size_t errlen)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    ck_path(tmp, sizeof tmp, dir, ".tmp");
    ck_path(path, sizeof path, dir, "");
    ck_stream_t s = {.stop = stop, .stop_ctx = stop_ctx, .mbps = mbps};
    s.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s.fd < 0)
        return kb_seterr(err, errlen, -errno, "%s: %s", tmp, strerror(errno));
    FILE *f = ck_open_stream(&s, "w");
    unsigned char hb[sizeof(idx_ckpt_head_t) + 64];
    size_t hn = head_encode(h, hb);
    int rc = f ? 0 : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc && fwrite(hb, 1, hn, f) != hn)
        rc = kb_seterr(err, errlen, -EIO, "write failed");
    if (!rc)
        rc = body_write(f, src, h->dim, err, errlen);
    if (ck_close_stream(&s, f) && !rc)
        rc = -EIO;
    if (s.error) /* the stream's own errno says more than stdio's */
        rc = s.error == ECANCELED
                 ? kb_seterr(err, errlen, KB_EUNAVAIL, "stopped")
                 : kb_seterr(err, errlen, -s.error, "%s: %s", tmp,
                             strerror(s.error));
    if (!rc && (rc = tail_write(&s)))
        kb_seterr(err, errlen, rc, "%s: %s", tmp, strerror(-rc));
    close(s.fd);
    if (!rc && rename(tmp, path))
        rc = kb_seterr(err, errlen, -errno, "rename %s: %s", tmp,
                       strerror(errno));
    if (!rc && (rc = fsync_dir(dir)))
        kb_seterr(err, errlen, rc, "fsync %s: %s", dir, strerror(-rc));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    if (bytes)
        *bytes = s.pos + CK_TAIL;
    return 0;
}

/* ------------------------------------------------------------------ read */

/* Opens path and checks the tail against the size: *body = bytes before
 * the tail, *crc = their recorded CRC. */
static int tail_check(const char *path, int *fdp, uint64_t *body,
                      uint32_t *crc, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kb_seterr(err, errlen, -errno, "%s: %s", path,
                         strerror(errno));
    struct stat st;
    unsigned char t[CK_TAIL];
    int rc = 0;
    if (fstat(fd, &st))
        rc = kb_seterr(err, errlen, -errno, "%s: %s", path, strerror(errno));
    else if (st.st_size < (off_t)(CK_TAIL + 8) ||
             pread(fd, t, sizeof t, st.st_size - CK_TAIL) != CK_TAIL ||
             memcmp(t + 16, CK_END, 8))
        rc = kb_seterr(err, errlen, KB_ECORRUPT,
                       "%s: truncated (%lld bytes, no end marker)", path,
                       (long long)st.st_size);
    if (!rc) {
        memcpy(body, t, 8);
        memcpy(crc, t + 8, 4);
        if (*body != (uint64_t)st.st_size - CK_TAIL)
            rc = kb_seterr(err, errlen, KB_ECORRUPT,
                           "%s: %lld bytes, its tail says %llu", path,
                           (long long)st.st_size,
                           (unsigned long long)(*body + CK_TAIL));
    }
    if (rc)
        close(fd);
    else
        *fdp = fd;
    return rc;
}

int idx_ckpt_peek(const char *dir, idx_ckpt_head_t *h, char *err,
                  size_t errlen)
{
    char path[PATH_MAX];
    ck_path(path, sizeof path, dir, "");
    if (access(path, F_OK))
        return -errno;
    ck_stream_t s = {0};
    uint32_t crc;
    int rc = tail_check(path, &s.fd, &s.limit, &crc, err, errlen);
    if (rc)
        return rc;
    FILE *f = ck_open_stream(&s, "r");
    rc = f ? head_read(f, path, h, err, errlen)
           : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    ck_close_stream(&s, f);
    close(s.fd);
    return rc;
}

void idx_ckpt_loaded_free(idx_ckpt_loaded_t *l)
{
    idx_vec_free(&l->vec);
    idx_filter_free(&l->flt);
    free(l->xlabel);
    free(l->x);
    memset(l, 0, sizeof *l);
}

/* Reads u64 n then n labels (malloc'd) from f. */
static int read_labels(FILE *f, int64_t **out, uint64_t *n)
{
    *out = NULL;
    if (fread(n, sizeof *n, 1, f) != 1 || *n > (UINT64_C(1) << 32))
        return KB_ECORRUPT;
    *out = malloc((*n ? *n : 1) * sizeof **out);
    if (!*out)
        return KB_ENOMEM;
    for (uint64_t i = 0; i < *n; i++)
        if (fread(&(*out)[i], sizeof **out, 1, f) != 1 || (*out)[i] < 0 ||
            (*out)[i] >= IDX_VEC_LABEL_LIMIT)
            return KB_ECORRUPT;
    return 0;
}

struct count_ctx {
    int64_t max;
    uint64_t n;
};

static int count_upto(void *ctx, int64_t label)
{
    struct count_ctx *c = ctx;
    if (label > c->max)
        return 1; /* ascending: nothing further counts */
    c->n++;
    return 0;
}

/* The body after the head: removals, delta entries, postings, index. */
static int body_read(FILE *f, const idx_ckpt_head_t *h, idx_ckpt_loaded_t *l,
                     char *err, size_t errlen)
{
    int64_t *rm = NULL;
    uint64_t nrm, nx;
    int rc = read_labels(f, &rm, &nrm);
    if (!rc)
        rc = read_labels(f, &l->xlabel, &nx);
    for (uint64_t i = 1; i < nx && !rc; i++)
        if (l->xlabel[i] <= l->xlabel[i - 1] || l->xlabel[i] > (int64_t)h->lsn)
            rc = KB_ECORRUPT;
    if (!rc && !(l->x = malloc((nx ? nx : 1) * h->dim * sizeof(float))))
        rc = KB_ENOMEM;
    if (!rc && fread(l->x, sizeof(float) * h->dim, nx, f) != nx)
        rc = KB_ECORRUPT;
    l->nx = rc ? 0 : nx;
    if (!rc)
        rc = idx_filter_load(f, &l->flt);
    if (rc) {
        free(rm);
        return kb_seterr(err, errlen, rc, "%s",
                         rc == KB_ENOMEM ? "out of memory"
                                         : "removals, delta or postings "
                                           "truncated or inconsistent");
    }
    rc = idx_vec_load(f, h->dim, h->index, (int)h->metric, &l->vec, err,
                      errlen);
    if (!rc)
        idx_vec_remove(l->vec, nrm, rm, err, errlen);
    free(rm);
    return rc;
}

int idx_ckpt_load(const char *dir, const idx_ckpt_head_t *want,
                  idx_ckpt_loaded_t *out, char *err, size_t errlen)
{
    char path[PATH_MAX];
    ck_path(path, sizeof path, dir, "");
    memset(out, 0, sizeof *out);
    ck_stream_t s = {0};
    uint32_t crc;
    int rc = tail_check(path, &s.fd, &s.limit, &crc, err, errlen);
    if (rc)
        return rc;
    FILE *f = ck_open_stream(&s, "r");
    idx_ckpt_head_t h;
    char why[400] = "";
    rc = f ? head_read(f, path, &h, err, errlen)
           : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc && (h.lsn != want->lsn || h.dim != want->dim ||
                h.metric != want->metric || strcmp(h.index, want->index)))
        rc = kb_seterr(err, errlen, KB_ECORRUPT, "%s: changed while opening",
                       path);
    if (!rc && (rc = body_read(f, &h, out, why, sizeof why)))
        kb_seterr(err, errlen, rc, "%s: %s", path, why);
    if (!rc && (fgetc(f) != EOF || s.pos != s.limit))
        rc = kb_seterr(err, errlen, KB_ECORRUPT,
                       "%s: %llu bytes left after the index", path,
                       (unsigned long long)(s.limit - s.pos));
    if (!rc && s.crc != crc)
        rc = kb_seterr(err, errlen, KB_ECORRUPT,
                       "%s: checksum mismatch (CRC-32C %08x, recorded %08x)",
                       path, s.crc, crc);
    ck_close_stream(&s, f);
    close(s.fd);
    if (!rc) {
        struct count_ctx c = {(int64_t)h.lsn, out->nx};
        idx_vec_foreach_live(out->vec, count_upto, &c);
        if (c.n != h.docs)
            rc = kb_seterr(err, errlen, KB_ECORRUPT,
                           "%s: holds %llu live documents at LSN %llu, its "
                           "head says %llu",
                           path, (unsigned long long)c.n,
                           (unsigned long long)h.lsn,
                           (unsigned long long)h.docs);
    }
    if (rc)
        idx_ckpt_loaded_free(out);
    return rc;
}

int idx_ckpt_remove(const char *dir)
{
    char path[PATH_MAX];
    ck_path(path, sizeof path, dir, ".tmp");
    unlink(path);
    ck_path(path, sizeof path, dir, "");
    return unlink(path) ? -errno : 0;
}

/* -------------------------------------------------------------- catch-up */

typedef struct catch_up {
    idx_rtxn_t *t;
    uint32_t dim;
    idx_ckpt_loaded_t *l;
    idx_delta_t *delta;
    float *x; /* CK_READ_CHUNK vectors waiting for the delta */
    int64_t *lab;
    size_t n;
    uint64_t added;
    char *err;
    size_t errlen;
} catch_up_t;

static int cu_flush(catch_up_t *c)
{
    int rc = c->n ? idx_delta_append(c->delta, c->n, c->x, c->lab) : 0;
    c->added += rc ? 0 : c->n;
    c->n = 0;
    return rc ? kb_seterr(c->err, c->errlen, rc, "delta: %s",
                          kb_strerror(rc))
              : 0;
}

/* A live label above the checkpoint: its metadata into the postings and,
 * unless the FAISS index holds it, its vector into the delta. */
static int cu_newer(catch_up_t *c, int64_t label)
{
    const void *b;
    size_t len;
    int rc = idx_store_doc_by_label(c->t, label, &b, &len);
    if (rc)
        return kb_seterr(c->err, c->errlen, rc == -ENOENT ? KB_ECORRUPT : rc,
                         "live document %lld has no readable log record",
                         (long long)label);
    Kbsync__LogRecord *r = kbsync__log_record__unpack(NULL, len, b);
    const Kbsync__Doc *d = r ? r->doc : NULL;
    if (!d || d->n_embedding != c->dim)
        rc = kb_seterr(c->err, c->errlen, KB_ECORRUPT,
                       "document with label %lld cannot be decoded",
                       (long long)label);
    const char *m = d && d->metadata_json ? d->metadata_json : "";
    if (!rc && idx_filter_add(c->l->flt, label, m, strlen(m)))
        rc = kb_seterr(c->err, c->errlen, KB_ECORRUPT,
                       "document with label %lld: bad metadata",
                       (long long)label);
    if (!rc && idx_vec_is_stored(c->l->vec, label) &&
        !idx_vec_is_live(c->l->vec, label))
        rc = kb_seterr(c->err, c->errlen, KB_ECORRUPT,
                       "document with label %lld is live but removed in the "
                       "checkpoint",
                       (long long)label);
    if (!rc && !idx_vec_is_stored(c->l->vec, label)) {
        memcpy(c->x + c->n * c->dim, d->embedding, sizeof(float) * c->dim);
        c->lab[c->n++] = label;
        if (c->n == CK_READ_CHUNK)
            rc = cu_flush(c);
    }
    if (r)
        kbsync__log_record__free_unpacked(r, NULL);
    return rc;
}

/* Also for the int64 labels, which are never negative (an int64 array
 * may be read through its unsigned type). */
static int in_sorted_u64(const uint64_t *v, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == x;
}

/* Labels live in the checkpoint's index but not in the store (a walk of
 * both ascending lists). */
struct gone {
    const uint64_t *live;
    size_t nlive, at;
    int64_t *out;
    size_t n, cap;
};

static int gone_visit(void *ctx, int64_t label)
{
    struct gone *g = ctx;
    while (g->at < g->nlive && g->live[g->at] < (uint64_t)label)
        g->at++;
    if (g->at < g->nlive && g->live[g->at] == (uint64_t)label)
        return 0;
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 1024;
        int64_t *o = realloc(g->out, cap * sizeof *o);
        if (!o)
            return KB_ENOMEM;
        g->out = o;
        g->cap = cap;
    }
    g->out[g->n++] = label;
    return 0;
}

/* The checkpoint's own delta entries that are still live, then every live
 * label above lsn, in label order. */
static int cu_walk(catch_up_t *c, uint64_t lsn, const uint64_t *live,
                   size_t n)
{
    idx_ckpt_loaded_t *l = c->l;
    int rc = 0;
    for (size_t i = 0; i < l->nx && !rc; i++) {
        if (!in_sorted_u64(live, n, (uint64_t)l->xlabel[i]))
            continue;
        memcpy(c->x + c->n * c->dim, l->x + i * c->dim,
               sizeof(float) * c->dim);
        c->lab[c->n++] = l->xlabel[i];
        if (c->n == CK_READ_CHUNK)
            rc = cu_flush(c);
    }
    for (size_t i = 0; i < n && !rc; i++) {
        int64_t lab = (int64_t)live[i];
        if (live[i] > lsn)
            rc = cu_newer(c, lab);
        else if (!idx_vec_is_live(l->vec, lab) &&
                 !in_sorted_u64((const uint64_t *)l->xlabel, l->nx,
                                (uint64_t)lab))
            rc = kb_seterr(c->err, c->errlen, KB_ECORRUPT,
                           "the store's live document %lld (at or below the "
                           "checkpoint's LSN %llu) is not in it",
                           (long long)lab, (unsigned long long)lsn);
    }
    return rc ? rc : cu_flush(c);
}

int idx_ckpt_catch_up(idx_rtxn_t *t, uint64_t lsn, uint32_t dim,
                      idx_ckpt_loaded_t *l, idx_delta_t *delta,
                      uint64_t *added, uint64_t *removed, char *err,
                      size_t errlen)
{
    uint64_t *live;
    size_t n;
    *added = *removed = 0;
    int rc = idx_store_live_labels(t, &live, &n, err, errlen);
    if (rc)
        return rc;
    catch_up_t c = {.t = t, .dim = dim, .l = l, .delta = delta,
                    .err = err, .errlen = errlen};
    c.x = malloc(sizeof(float) * dim * CK_READ_CHUNK);
    c.lab = malloc(sizeof(int64_t) * CK_READ_CHUNK);
    struct gone g = {.live = live, .nlive = n};
    rc = c.x && c.lab ? cu_walk(&c, lsn, live, n)
                      : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc && idx_vec_foreach_live(l->vec, gone_visit, &g))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (!rc)
        idx_vec_remove(l->vec, g.n, g.out, err, errlen);
    *added = c.added;
    *removed = g.n;
    free(g.out);
    free(c.x);
    free(c.lab);
    free(live);
    return rc;
}
