/* cli_hcache: the chunk hash cache of `kbsync ingest` (see cli_hcache.h).
 *
 * ---------------------------------------------------------------------
 * THE FILE (all integers 64-bit, in the host's byte order, which the
 * header records: a cache is not carried between machines)
 *
 *   header  "KBHCACH2", 0x0102030405060708, key hash (2 words),
 *           files, 0, 0, 0                                   (8 words)
 *   files   dev, ino, size, mtime ns, ctime ns, kind (CLI_KIND_*),
 *           chunks n, then 2n words of chunk hashes          (each)
 *   trailer cli_hash128 of everything before it              (2 words)
 *
 * A file is looked up by (dev, ino) and used only if size, both times and
 * the kind it is read as (two hard links, a.txt and a.html) match too. Nothing in it is trusted before the trailer, the header and
 * every length have been checked against the bytes read: a torn write (it
 * is renamed into place, but not synced: a crash can leave it empty or
 * short), another program's file or a file from another version is
 * ignored, and the run hashes everything as if there were no cache.
 * --------------------------------------------------------------------- */
#include "cli_hcache.h"

#include "kb_err.h"
#include "kb_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HC_MAGIC 0x3248434143484B42ull /* "KBHCACH2" read as a word */
#define HC_ORDER 0x0102030405060708ull
#define HC_HEADER 8 /* words */
#define HC_REC 7    /* words before a file's hashes */
#define HC_NS 6     /* the word of a record that holds its chunk count */
#define HC_SEED 0x6B62686361636865ull

struct cli_hcache {
    char *path;
    const char *off; /* why the directory is not used (NULL: it is); then
                        get and put do nothing and save says why */
    uint64_t keyh[2];
    int64_t racy_before; /* files changed at or after this are not put */
    /* what was read (mapped, read-only): the words and an index of file
     * records by (dev, ino) */
    const uint64_t *rd;
    size_t nrd, nfiles;
    uint32_t *slot; /* word offset of a record + 1; 0 = empty */
    size_t nslot;   /* a power of 2 */
    /* What this run puts. As long as each put is a record read, as it was
     * (a run over an unchanged tree), only their offsets are kept in same[]
     * and nothing need be written; at the first other put, the records so
     * far are copied to wr and every put after them too. wr holds the file
     * to write: header, records (the trailer is added when written). */
    uint32_t *same;
    size_t nsame, capsame;
    int diverged;
    uint64_t *wr;
    size_t nwr, capwr, nput;
};

static uint64_t mix(uint64_t dev, uint64_t ino)
{
    uint64_t x = dev * 0x9E3779B97F4A7C15ull ^ ino;
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 29;
    return x;
}

/* Maps the whole file at c->rd if it is no bigger than the limit. Mapped,
 * not read: a read() into fresh memory costs a page fault per 4 KiB, and
 * on a virtual machine those are slow (2.6 MB for 10,000 files took 10 ms
 * to read, against 1 to map). Cache files are only ever replaced by
 * rename, never changed in place, so the mapping stays whole. */
static const char *hc_read(cli_hcache_t *c)
{
    int fd = open(c->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? "no cache file yet" : "cannot open it";
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    else if ((uint64_t)st.st_size > CLI_HCACHE_MAX_BYTES)
        why = "over the size limit";
    else if (st.st_size % 8 || (size_t)st.st_size < (HC_HEADER + 2) * 8)
        why = "truncated";
    if (!why) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ,
                       MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (m == MAP_FAILED)
            why = "cannot map it";
        else {
            c->rd = m;
            c->nrd = (size_t)st.st_size / 8;
        }
    }
    close(fd);
    return why;
}

static void hc_unmap(cli_hcache_t *c)
{
    if (c->rd)
        munmap((void *)c->rd, c->nrd * 8);
    c->rd = NULL;
    c->nrd = 0;
}

/* Checks what hc_read read and indexes its records. */
static const char *hc_index(cli_hcache_t *c)
{
    const uint64_t *w = c->rd;
    size_t n = c->nrd - 2; /* the trailer */
    uint64_t sum[2];
    cli_hash128(w, n * 8, HC_SEED, sum);
    if (sum[0] != w[n] || sum[1] != w[n + 1])
        return "its checksum does not match (torn or altered)";
    if (w[0] != HC_MAGIC || w[1] != HC_ORDER)
        return "not a cache file of this kbsync";
    if (w[2] != c->keyh[0] || w[3] != c->keyh[1])
        return "made for other settings";
    uint64_t nf = w[4];
    if (nf > n / HC_REC)
        return "its file count is impossible";
    size_t ns = 16;
    while (ns < 2 * nf)
        ns *= 2;
    if (!(c->slot = calloc(ns, sizeof *c->slot)))
        return "out of memory";
    c->nslot = ns;
    size_t at = HC_HEADER;
    for (uint64_t i = 0; i < nf; i++) {
        if (n - at < HC_REC || w[at + HC_NS] > (n - at - HC_REC) / 2 ||
            at >= UINT32_MAX)
            return "a record runs past the end";
        size_t s = mix(w[at], w[at + 1]) & (ns - 1);
        while (c->slot[s])
            s = (s + 1) & (ns - 1);
        c->slot[s] = (uint32_t)at + 1;
        at += HC_REC + 2 * (size_t)w[at + HC_NS];
    }
    if (at != n)
        return "bytes after the last record";
    c->nfiles = nf;
    return NULL;
}

/* NULL when dir is fit to hold the cache: this user's, written by no one
 * else (a cache planted by another user could make changed files look
 * unchanged), or not there yet (made 0700). */
static const char *hc_dir_bad(const char *dir)
{
    struct stat st;
    if (!*dir)
        return "no cache directory";
    if (stat(dir, &st) != 0)
        return errno == ENOENT ? NULL : "the cache directory cannot be read";
    if (!S_ISDIR(st.st_mode))
        return "the cache directory is not a directory";
    if (st.st_uid != geteuid() || (st.st_mode & 022))
        return "the cache directory is another user's or writable by "
               "others: not used";
    return NULL;
}

int cli_hcache_open(cli_hcache_t **cp, const char *dir, const char *key,
                    int64_t walk_ns, const char **why)
{
    *cp = NULL;
    cli_hcache_t *c = calloc(1, sizeof *c);
    if (!c)
        return KB_ENOMEM;
    cli_hash128(key, strlen(key), HC_SEED, c->keyh);
    c->racy_before = walk_ns - CLI_HCACHE_RACY_NS;
    if (asprintf(&c->path, "%s/ingest-%016llx%016llx.cache", dir,
                 (unsigned long long)c->keyh[0],
                 (unsigned long long)c->keyh[1]) < 0) {
        free(c);
        return KB_ENOMEM;
    }
    const char *w = c->off = hc_dir_bad(dir);
    if (!w)
        w = hc_read(c);
    if (!w)
        w = hc_index(c);
    if (w) { /* start empty */
        hc_unmap(c);
        free(c->slot);
        c->slot = NULL;
        c->nslot = c->nfiles = 0;
    }
    if (why)
        *why = w;
    *cp = c;
    return 0;
}

/* The word offset of the record read for f (same identity and times), or
 * SIZE_MAX. */
static size_t hc_find(const cli_hcache_t *c, const cli_file_t *f)
{
    if (!c || !c->nslot)
        return SIZE_MAX;
    size_t s = mix(f->dev, f->ino) & (c->nslot - 1);
    for (; c->slot[s]; s = (s + 1) & (c->nslot - 1)) {
        const uint64_t *r = c->rd + c->slot[s] - 1;
        if (r[0] == f->dev && r[1] == f->ino && r[2] == f->size &&
            (int64_t)r[3] == f->mtime_ns && (int64_t)r[4] == f->ctime_ns &&
            r[5] == (uint64_t)f->kind)
            return c->slot[s] - 1;
    }
    return SIZE_MAX;
}

const uint64_t *cli_hcache_get(const cli_hcache_t *c, const cli_file_t *f,
                               size_t *ns)
{
    size_t at = hc_find(c, f);
    if (at == SIZE_MAX)
        return NULL;
    *ns = (size_t)c->rd[at + HC_NS];
    return c->rd + at + HC_REC;
}

/* Room for `need` more words in wr (which starts with the header). */
static int wr_reserve(cli_hcache_t *c, size_t need)
{
    if (c->capwr - c->nwr >= need)
        return 0;
    size_t cap = c->capwr ? c->capwr : 4096;
    if (cap < c->nrd)
        cap = c->nrd; /* about what a run over the same tree puts */
    while (cap - c->nwr < need)
        cap *= 2;
    uint64_t *nw = realloc(c->wr, cap * sizeof *nw);
    if (!nw)
        return KB_ENOMEM;
    c->wr = nw;
    c->capwr = cap;
    if (!c->nwr)
        c->nwr = HC_HEADER;
    return 0;
}

/* Appends record r (HC_REC words, then its hashes h) to wr. */
static int wr_put(cli_hcache_t *c, const uint64_t *r, const uint64_t *h)
{
    size_t ns = (size_t)r[HC_NS];
    if (wr_reserve(c, HC_HEADER + HC_REC + 2 * ns))
        return KB_ENOMEM;
    memcpy(c->wr + c->nwr, r, HC_REC * sizeof *r);
    if (ns)
        memcpy(c->wr + c->nwr + HC_REC, h, 2 * ns * sizeof *h);
    c->nwr += HC_REC + 2 * ns;
    return 0;
}

/* The first put that is not a record read as it was: the records so far
 * go to wr. */
static int hc_diverge(cli_hcache_t *c)
{
    c->diverged = 1;
    for (size_t i = 0; i < c->nsame; i++) {
        const uint64_t *r = c->rd + c->same[i];
        if (wr_put(c, r, r + HC_REC))
            return KB_ENOMEM;
    }
    free(c->same);
    c->same = NULL;
    c->nsame = c->capsame = 0;
    return 0;
}

int cli_hcache_put(cli_hcache_t *c, const cli_file_t *f, const uint64_t *h,
                   size_t ns)
{
    /* changed too recently to be told apart from a change still to come
     * (f->ino 0: standard input or a file whose stat is not known) */
    if (!c || c->off || !f->ino || f->mtime_ns >= c->racy_before ||
        f->ctime_ns >= c->racy_before)
        return 0;
    c->nput++;
    if (!c->diverged) {
        size_t at = hc_find(c, f);
        if (at != SIZE_MAX && c->rd[at + HC_NS] == ns &&
            (!ns || !memcmp(c->rd + at + HC_REC, h, 2 * ns * sizeof *h))) {
            if (c->nsame == c->capsame) {
                size_t cap = c->capsame ? 2 * c->capsame : 1024;
                uint32_t *n = realloc(c->same, cap * sizeof *n);
                if (!n)
                    return KB_ENOMEM;
                c->same = n;
                c->capsame = cap;
            }
            c->same[c->nsame++] = (uint32_t)at;
            return 0;
        }
        if (hc_diverge(c))
            return KB_ENOMEM;
    }
    uint64_t r[HC_REC] = {f->dev,
                          f->ino,
                          f->size,
                          (uint64_t)f->mtime_ns,
                          (uint64_t)f->ctime_ns,
                          (uint64_t)f->kind,
                          ns};
    return wr_put(c, r, h);
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct old_file {
    char *name;
    struct timespec mt;
} old_file_t;

static int cmp_old(const void *a, const void *b)
{
    const old_file_t *x = a, *y = b;
    if (x->mt.tv_sec != y->mt.tv_sec)
        return x->mt.tv_sec < y->mt.tv_sec ? -1 : 1;
    return x->mt.tv_nsec < y->mt.tv_nsec ? -1 : x->mt.tv_nsec > y->mt.tv_nsec;
}

/* Removes the least recently written cache files of dir beyond the
 * newest CLI_HCACHE_KEEP (and temporary files older than a day, left by
 * runs that were killed while writing). */
static void hc_trim(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    old_file_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    time_t now = time(NULL);
    while ((e = readdir(d))) {
        int tmp = !strncmp(e->d_name, ".ingest-", 8);
        size_t l = strlen(e->d_name);
        if (!tmp && (strncmp(e->d_name, "ingest-", 7) || l < 6 ||
                     strcmp(e->d_name + l - 6, ".cache")))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        if (tmp) {
            if (st.st_mtim.tv_sec < now - 86400)
                unlinkat(dirfd(d), e->d_name, 0);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            old_file_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv)
                break;
            v = nv;
        }
        if (!(v[n].name = strdup(e->d_name)))
            break;
        v[n++].mt = st.st_mtim;
    }
    if (n > CLI_HCACHE_KEEP) {
        qsort(v, n, sizeof *v, cmp_old);
        for (size_t i = 0; i < n - CLI_HCACHE_KEEP; i++)
            unlinkat(dirfd(d), v[i].name, 0);
    }
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
    closedir(d);
}

/* mkdir -p dir (0700: the cache tells what files a user has). */
static int mkdirs(const char *dir)
{
    if (!*dir)
        return -ENOENT;
    char *p = strdup(dir);
    if (!p)
        return -ENOMEM;
    int rc = 0;
    for (char *s = p + 1; !rc; s++) {
        if (*s && *s != '/')
            continue;
        char keep = *s;
        *s = 0;
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            rc = -errno;
        *s = keep;
        if (!keep)
            break;
    }
    free(p);
    return rc;
}

int cli_hcache_save(cli_hcache_t *c, char *err, size_t errlen)
{
    if (c->off) {
        char *d = strdup(c->path), *sl = d ? strrchr(d, '/') : NULL;
        if (sl)
            *sl = 0;
        kb_seterr(err, errlen, -EIO, "%s: %s", d ? d : "?", c->off);
        free(d);
        return -EIO;
    }
    if (!c->nput && !c->nfiles) /* nothing to keep */
        return 0;
    /* the same records as the file read: nothing to write; its time tells
     * that it was used (the least recently used go first, hc_trim) */
    if (!c->diverged && c->nsame == c->nfiles) {
        utimensat(AT_FDCWD, c->path, NULL, AT_SYMLINK_NOFOLLOW);
        return 0;
    }
    if (!c->diverged && hc_diverge(c))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (wr_reserve(c, HC_HEADER + 2))
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    char *dir = strdup(c->path), *slash = dir ? strrchr(dir, '/') : NULL;
    if (!dir)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (slash)
        *slash = 0;
    char *tmp = NULL;
    int rc = mkdirs(dir);
    const char *bad = rc ? NULL : hc_dir_bad(dir);
    if (rc || bad || (c->nwr + 2) * 8 > CLI_HCACHE_MAX_BYTES) {
        if (rc)
            kb_seterr(err, errlen, -EIO, "%s: cannot make the directory: %s",
                      dir, strerror(-rc));
        else if (bad)
            kb_seterr(err, errlen, -EIO, "%s: %s", dir, bad);
        else
            kb_seterr(err, errlen, -EIO,
                      "%s: would be %zu bytes, over the %llu a cache file "
                      "may have",
                      c->path, (c->nwr + 2) * 8,
                      (unsigned long long)CLI_HCACHE_MAX_BYTES);
        free(dir);
        return -EIO;
    }
    if (asprintf(&tmp, "%s/.ingest-XXXXXX", dir) < 0) {
        free(dir);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        rc = kb_seterr(err, errlen, -EIO, "%s: cannot write in it: %s", dir,
                       strerror(errno));
        goto out;
    }
    uint64_t hdr[HC_HEADER] = {HC_MAGIC, HC_ORDER, c->keyh[0], c->keyh[1],
                               c->nput};
    memcpy(c->wr, hdr, sizeof hdr);
    cli_hash128(c->wr, c->nwr * 8, HC_SEED, c->wr + c->nwr);
    int wrc = write_all(fd, c->wr, (c->nwr + 2) * 8);
    if (close(fd) != 0 && !wrc)
        wrc = -errno;
    if (!wrc && rename(tmp, c->path) != 0)
        wrc = -errno;
    if (wrc) {
        unlink(tmp);
        rc = kb_seterr(err, errlen, -EIO, "%s: cannot write: %s", c->path,
                       strerror(-wrc));
        goto out;
    }
    hc_trim(dir);
out:
    free(tmp);
    free(dir);
    return rc;
}

size_t cli_hcache_loaded(const cli_hcache_t *c)
{
    return c ? c->nfiles : 0;
}

size_t cli_hcache_recorded(const cli_hcache_t *c)
{
    return c ? c->nput : 0;
}

const char *cli_hcache_path(const cli_hcache_t *c)
{
    return c->path;
}

void cli_hcache_free(cli_hcache_t *c)
{
    if (!c)
        return;
    free(c->path);
    hc_unmap(c);
    free(c->slot);
    free(c->same);
    free(c->wr);
    free(c);
}

char *cli_hcache_default_dir(void)
{
    const char *d = getenv("KBSYNC_CACHE_DIR");
    char *r = NULL;
    if (d && *d)
        return strdup(d);
    if ((d = getenv("XDG_CACHE_HOME")) && d[0] == '/')
        return asprintf(&r, "%s/kbsync", d) < 0 ? NULL : r;
    if ((d = getenv("HOME")) && d[0] == '/')
        return asprintf(&r, "%s/.cache/kbsync", d) < 0 ? NULL : r;
    return NULL;
}
