/* cli_chunk: the pure parts of `kbsync ingest` for corpora of files: the
 * walk of the command-line paths, UTF-8 checks and iconv decoding, the HTML
 * text extractor, the chunker, the chunk hash and the JSONL diagnosis.
 * In: paths, file bytes, lines. Out: file lists, text, spans, hashes,
 * messages. No state beyond what the caller's structs hold.
 *
 * ---------------------------------------------------------------------
 * CHUNKS, THEIR IDS AND THEIR HASHES (what `ingest --resume` relies on)
 *
 * A file is cut by cli_chunker_* into spans of its text; chunk n of the
 * file whose id path is P gets the id "P#n" (n from 0). P is the path
 * relative to the directory named on the command line, or the base name of
 * a file named there, behind --id-prefix: it does not depend on the
 * current directory nor on how the root was spelt, so a second run makes
 * the same ids. The chunker is deterministic: the same text and settings
 * give the same spans, so an unchanged file gives the same chunks.
 *
 * Each chunk's metadata carries "sha": cli_chunk_hash_hex over its text,
 * its source offsets and the chunking settings. A second run with the same
 * settings computes the same value for an unchanged chunk and another for
 * a changed one; that comparison is all --resume does per chunk.
 *
 * Why not a library for HTML: libxml2's HTML parser and gumbo (both in
 * Debian) build a tree and would add a dependency for what fits in 250
 * lines here, and neither gives byte offsets back into the source cheaply;
 * ingest needs offsets (metadata "start"/"end") and speed (tens of MB/s),
 * not a conforming DOM.
 * --------------------------------------------------------------------- */
#include "cli_chunk.h"

#include "kb_err.h"
#include "kb_wire.h"
#include "kb_util.h"

#include <ctype.h>
#include <fcntl.h>
#include <dirent.h>
#include <errno.h>
#include <iconv.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ============================================================== walking */

static int ends_with_ci(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n > m && !strcasecmp(s + n - m, suf);
}

int cli_kind_of(const char *name, int in_dir)
{
    if (ends_with_ci(name, ".jsonl") || ends_with_ci(name, ".ndjson"))
        return in_dir ? 0 : CLI_KIND_JSONL;
    if (ends_with_ci(name, ".html") || ends_with_ci(name, ".htm"))
        return CLI_KIND_HTML;
    if (!in_dir || ends_with_ci(name, ".txt") || ends_with_ci(name, ".text") ||
        ends_with_ci(name, ".md") || ends_with_ci(name, ".markdown"))
        return CLI_KIND_TEXT;
    return 0;
}

/* Takes path and rel (malloc'd) in all cases; st: the file's stat, NULL
 * for standard input. */
static int walk_push(cli_walk_t *w, char *path, char *rel,
                     const struct stat *st, int kind)
{
    if (!path || !rel)
        goto oom;
    if (w->n == w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 64;
        cli_file_t *nf = realloc(w->files, ncap * sizeof *nf);
        if (!nf)
            goto oom;
        w->files = nf;
        w->cap = ncap;
    }
    cli_file_t *f = &w->files[w->n++];
    *f = (cli_file_t){path, rel, 0, kind, 0, 0, 0, 0};
    if (st && S_ISREG(st->st_mode)) {
        f->size = (uint64_t)st->st_size;
        f->dev = (uint64_t)st->st_dev;
        f->ino = (uint64_t)st->st_ino;
        f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 +
                      st->st_mtim.tv_nsec;
        f->ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 +
                      st->st_ctim.tv_nsec;
    }
    w->total_bytes += f->size;
    return 0;
oom:
    free(path);
    free(rel);
    return KB_ENOMEM;
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int slash = la && a[la - 1] != '/';
    char *p = malloc(la + slash + lb + 1);
    if (p) {
        memcpy(p, a, la);
        if (slash)
            p[la] = '/';
        memcpy(p + la + slash, b, lb + 1);
    }
    return p;
}

/* An entry of a directory, as the walk sees it. */
typedef struct dir_ent {
    char *name;
    int what;       /* ENT_* */
    struct stat st; /* ENT_FILE: the file's (a link's target's) */
} dir_ent_t;

enum { ENT_SKIP, ENT_DIR, ENT_FILE };

static int cmp_ent(const void *a, const void *b)
{
    return strcmp(((const dir_ent_t *)a)->name, ((const dir_ent_t *)b)->name);
}

/* What entry e of the open directory d (path dir) is: a directory to walk
 * (not a link to one), a file to read (a regular file of a kind ingest
 * reads, or a link to one; its stat in e->st), or nothing to do. The stat
 * is made relative to d: no lookup of the whole path per file. The entry's
 * type from readdir spares a stat of directories and of files of other
 * kinds; where the file system does not give it (DT_UNKNOWN: some XFS,
 * NFS, FUSE mounts) the stat decides. */
static int ent_classify(DIR *d, const char *dir, const struct dirent *de,
                        dir_ent_t *e, char *err, size_t errlen)
{
    int kind = cli_kind_of(de->d_name, 1);
    e->what = ENT_SKIP;
    if (de->d_type == DT_DIR) {
        e->what = ENT_DIR;
        return 0;
    }
    if (de->d_type != DT_UNKNOWN &&
        (!kind || (de->d_type != DT_REG && de->d_type != DT_LNK)))
        return 0;
    int fd = dirfd(d);
    if (fstatat(fd, de->d_name, &e->st, AT_SYMLINK_NOFOLLOW) != 0)
        return kb_seterr(err, errlen, -errno, "%s/%s: cannot read: %s", dir,
                         de->d_name, strerror(errno));
    if (S_ISDIR(e->st.st_mode))
        e->what = ENT_DIR;
    else if (!kind)
        e->what = ENT_SKIP;
    else if (S_ISLNK(e->st.st_mode))
        /* a dangling link is not a file; a link to a directory is not
         * walked */
        e->what = fstatat(fd, de->d_name, &e->st, 0) == 0 &&
                          S_ISREG(e->st.st_mode)
                      ? ENT_FILE
                      : ENT_SKIP;
    else if (S_ISREG(e->st.st_mode))
        e->what = ENT_FILE;
    return 0;
}

/* The entries of directory dir (without "." names) that the walk goes
 * into or reads, sorted by name; *ents malloc'd, each name too. */
static int read_ents(const char *dir, dir_ent_t **ents, size_t *n, char *err,
                     size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d)
        return kb_seterr(err, errlen, -errno, "%s: cannot read: %s", dir,
                         strerror(errno));
    dir_ent_t *v = NULL;
    size_t nv = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while (!rc && (errno = 0, e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (nv == cap) {
            cap = cap ? cap * 2 : 32;
            dir_ent_t *nn = realloc(v, cap * sizeof *nn);
            if (!nn) {
                rc = KB_ENOMEM;
                break;
            }
            v = nn;
        }
        rc = ent_classify(d, dir, e, &v[nv], err, errlen);
        if (rc || v[nv].what == ENT_SKIP)
            continue;
        if (!(v[nv].name = strdup(e->d_name)))
            rc = KB_ENOMEM;
        else
            nv++;
    }
    if (!rc && errno)
        rc = kb_seterr(err, errlen, -errno, "%s: cannot read: %s", dir,
                       strerror(errno));
    closedir(d);
    if (rc == KB_ENOMEM)
        kb_seterr(err, errlen, rc, "%s: out of memory", dir);
    if (rc) {
        for (size_t i = 0; i < nv; i++)
            free(v[i].name);
        free(v);
        return rc;
    }
    qsort(v, nv, sizeof *v, cmp_ent);
    *ents = v;
    *n = nv;
    return 0;
}

/* Adds the files below dir (whose rel prefix is relp, "" or "a/b/"). */
static int walk_dir(cli_walk_t *w, const char *dir, const char *relp, char *err,
                    size_t errlen)
{
    dir_ent_t *ents = NULL;
    size_t nn = 0;
    int rc = read_ents(dir, &ents, &nn, err, errlen);
    for (size_t i = 0; !rc && i < nn; i++) {
        const char *name = ents[i].name;
        char *path = join(dir, name);
        size_t lr = strlen(relp), ln = strlen(name);
        char *rel = malloc(lr + ln + 2);
        if (!path || !rel) {
            free(path);
            free(rel);
            rc = kb_seterr(err, errlen, KB_ENOMEM, "%s: out of memory", dir);
            break;
        }
        memcpy(rel, relp, lr);
        memcpy(rel + lr, name, ln + 1);
        if (ents[i].what == ENT_DIR) {
            rel[lr + ln] = '/';
            rel[lr + ln + 1] = 0;
            rc = walk_dir(w, path, rel, err, errlen);
            free(path);
            free(rel);
        } else {
            rc = walk_push(w, path, rel, &ents[i].st, cli_kind_of(name, 1));
            if (rc)
                kb_seterr(err, errlen, rc, "%s: out of memory", dir);
        }
    }
    for (size_t i = 0; i < nn; i++)
        free(ents[i].name);
    free(ents);
    return rc;
}

static int cmp_file_rel(const void *a, const void *b)
{
    return strcmp(((const cli_file_t *)a)->rel, ((const cli_file_t *)b)->rel);
}

int cli_walk_arg(cli_walk_t *w, const char *arg, char *err, size_t errlen)
{
    if (!strcmp(arg, "-"))
        return walk_push(w, strdup("-"), strdup("-"), NULL, CLI_KIND_JSONL);
    struct stat st;
    if (stat(arg, &st) != 0)
        return kb_seterr(err, errlen, -errno, "%s: cannot read: %s", arg,
                         strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        const char *base = strrchr(arg, '/');
        base = base ? base + 1 : arg;
        int rc = walk_push(w, strdup(arg), strdup(base), &st,
                           cli_kind_of(base, 0));
        if (rc)
            kb_seterr(err, errlen, rc, "%s: out of memory", arg);
        return rc;
    }
    size_t n0 = w->n;
    uint64_t b0 = w->total_bytes;
    int rc = walk_dir(w, arg, "", err, errlen);
    if (rc) { /* nothing of arg stays */
        for (size_t i = n0; i < w->n; i++) {
            free(w->files[i].path);
            free(w->files[i].rel);
        }
        w->n = n0;
        w->total_bytes = b0;
        return rc;
    }
    qsort(w->files + n0, w->n - n0, sizeof *w->files, cmp_file_rel);
    return 0;
}

static int cmp_pfile_rel(const void *a, const void *b)
{
    return strcmp((*(cli_file_t *const *)a)->rel,
                  (*(cli_file_t *const *)b)->rel);
}

int cli_walk_check_unique(const cli_walk_t *w, char *err, size_t errlen)
{
    cli_file_t **v = malloc((w->n + 1) * sizeof *v);
    if (!v)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->files[i].kind != CLI_KIND_JSONL)
            v[k++] = &w->files[i];
    qsort(v, k, sizeof *v, cmp_pfile_rel);
    int rc = 0;
    for (size_t i = 1; i < k && !rc; i++)
        if (!strcmp(v[i - 1]->rel, v[i]->rel))
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s and %s would both make the chunk ids "
                           "\"%s#N\": ingest them in separate runs with "
                           "different --id-prefix values",
                           v[i - 1]->path, v[i]->path, v[i]->rel);
    free(v);
    return rc;
}

void cli_walk_free(cli_walk_t *w)
{
    for (size_t i = 0; i < w->n; i++) {
        free(w->files[i].path);
        free(w->files[i].rel);
    }
    free(w->files);
    memset(w, 0, sizeof *w);
}

/* ================================================================= text */

int cli_utf8_check(const char *s, size_t n, size_t *bad, const char **why)
{
    const unsigned char *p = (const unsigned char *)s;
    const uint64_t hi = 0x8080808080808080ull, lo = 0x0101010101010101ull;
    size_t i = 0;
    while (i < n) {
        /* eight ASCII bytes, none of them NUL, at a time */
        while (i + 8 <= n) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            if ((x & hi) || ((x - lo) & ~x & hi))
                break;
            i += 8;
        }
        if (i >= n)
            break;
        if (p[i] == 0) {
            *bad = i;
            *why = "NUL byte";
            return KB_EINVAL;
        }
        size_t len = kb_utf8_seq((const char *)p + i, n - i);
        if (!len) {
            *bad = i;
            *why = "invalid UTF-8";
            return KB_EINVAL;
        }
        i += len;
    }
    return 0;
}

void cli_line_col(const char *s, size_t off, uint64_t *line, uint64_t *col)
{
    uint64_t ln = 1;
    size_t start = 0;
    const char *p = s, *end = s + off, *nl;
    while (p < end && (nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        ln++;
        start = (size_t)(nl - s) + 1;
        p = nl + 1;
    }
    *line = ln;
    *col = off - start + 1;
}

int cli_encoding_ok(const char *enc)
{
    iconv_t cd = iconv_open("UTF-8", enc);
    if (cd == (iconv_t)-1)
        return KB_EINVAL;
    iconv_close(cd);
    return 0;
}

int cli_decode(const char *enc, const char *in, size_t n, char **out,
               size_t *outn, size_t *bad, char *err, size_t errlen)
{
    iconv_t cd = iconv_open("UTF-8", enc);
    if (cd == (iconv_t)-1)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "encoding \"%s\" is unknown to iconv", enc);
    size_t cap = n * 2 + 16, used = 0, il = n;
    char *buf = malloc(cap), *ip = (char *)in;
    int rc = buf ? 0 : KB_ENOMEM, done = 0;
    while (!rc && !done) {
        char *op = buf + used;
        size_t ol = cap - used - 1;
        int flushing = il == 0; /* last call: the shift state's bytes */
        size_t r = flushing ? iconv(cd, NULL, NULL, &op, &ol)
                            : iconv(cd, &ip, &il, &op, &ol);
        used = (size_t)(op - buf);
        if (r != (size_t)-1) {
            done = flushing;
        } else if (errno == E2BIG) {
            char *nb = realloc(buf, cap * 2);
            if (!nb)
                rc = KB_ENOMEM;
            else
                buf = nb, cap *= 2;
        } else { /* EILSEQ, or EINVAL: a sequence cut by the end */
            *bad = (size_t)(ip - in);
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "byte 0x%02x is not valid %s%s",
                           (unsigned char)in[*bad], enc,
                           errno == EINVAL ? " (cut off at the end)" : "");
        }
    }
    iconv_close(cd);
    if (rc == KB_ENOMEM)
        kb_seterr(err, errlen, rc, "out of memory decoding %zu bytes", n);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[used] = 0;
    *out = buf;
    *outn = used;
    return 0;
}

/* ================================================================= HTML */

/* Breaks the extractor owes before the next text, weakest first. */
enum { BRK_NONE, BRK_SPACE, BRK_LINE, BRK_PARA };

typedef struct hx {
    const char *in;
    size_t n;
    cli_text_t *t;
    int brk;                 /* pending break */
    size_t brk_src, brk_end; /* the source it stands for */
    int pre;                 /* inside <pre>: line ends are kept */
    int oom;
} hx_t;

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

static int tx_grow(cli_text_t *t, size_t more)
{
    if (t->n + more + 1 <= t->cap)
        return 0;
    size_t ncap = t->cap ? t->cap * 2 : 4096;
    while (ncap < t->n + more + 1)
        ncap *= 2;
    char *ns = realloc(t->s, ncap);
    if (!ns)
        return KB_ENOMEM;
    t->s = ns;
    t->cap = ncap;
    return 0;
}

static int tx_seg(cli_text_t *t, size_t src, size_t src_end, int verbatim)
{
    if (t->nseg == t->segcap) {
        size_t ncap = t->segcap ? t->segcap * 2 : 64;
        cli_seg_t *ns = realloc(t->seg, ncap * sizeof *ns);
        if (!ns)
            return KB_ENOMEM;
        t->seg = ns;
        t->segcap = ncap;
    }
    t->seg[t->nseg++] = (cli_seg_t){t->n, src, src_end, verbatim};
    return 0;
}

/* Appends b[0..k), which stands for source [src, src_end); verbatim: they
 * are the source's own bytes (a run continuing the last one extends it). */
static void hx_put(hx_t *h, const char *b, size_t k, size_t src, size_t src_end,
                   int verbatim)
{
    cli_text_t *t = h->t;
    if (h->oom || !k)
        return;
    if (tx_grow(t, k)) {
        h->oom = 1;
        return;
    }
    const cli_seg_t *last = t->nseg ? &t->seg[t->nseg - 1] : NULL;
    int extend = verbatim && last && last->verbatim &&
                 last->src + (t->n - last->out) == src;
    if (!extend && tx_seg(t, src, src_end, verbatim)) {
        h->oom = 1;
        return;
    }
    memcpy(t->s + t->n, b, k);
    t->n += k;
}

/* Owes a break of kind b for source [src, end): the strongest one owed
 * is paid before the next text. */
static void hx_break(hx_t *h, int b, size_t src, size_t end)
{
    if (h->brk == BRK_NONE)
        h->brk_src = src;
    if (b > h->brk)
        h->brk = b;
    h->brk_end = end;
}

/* Pays the break owed, if any (none before the first text). */
static void hx_flush(hx_t *h)
{
    int b = h->brk;
    h->brk = BRK_NONE;
    if (b == BRK_NONE || h->t->n == 0)
        return;
    if (b == BRK_SPACE && h->brk_end - h->brk_src == 1 &&
        h->in[h->brk_src] == ' ') /* a lone space stays verbatim */
        hx_put(h, " ", 1, h->brk_src, h->brk_end, 1);
    else
        hx_put(h,
               b == BRK_PARA   ? "\n\n"
               : b == BRK_LINE ? "\n"
                               : " ",
               b == BRK_PARA ? 2 : 1, h->brk_src, h->brk_end, 0);
}

static void hx_text(hx_t *h, size_t src, size_t k)
{
    hx_flush(h);
    hx_put(h, h->in + src, k, src, src + k, 1);
}

/* The break a tag makes (start or end tag alike). */
static int tag_break(const char *name)
{
    static const char *const para[] = {
        "address",    "article", "aside",  "blockquote", "body",    "caption",
        "center",     "details", "dialog", "div",        "dl",      "fieldset",
        "figcaption", "figure",  "footer", "form",       "h1",      "h2",
        "h3",         "h4",      "h5",     "h6",         "head",    "header",
        "hgroup",     "hr",      "html",   "legend",     "main",    "menu",
        "nav",        "ol",      "p",      "pre",        "section", "summary",
        "table",      "tbody",   "tfoot",  "thead",      "title",   "ul"};
    static const char *const line[] = {"br", "li", "dt", "dd", "tr", "option"};
    for (size_t i = 0; i < sizeof para / sizeof *para; i++)
        if (!strcmp(name, para[i]))
            return BRK_PARA;
    for (size_t i = 0; i < sizeof line / sizeof *line; i++)
        if (!strcmp(name, line[i]))
            return BRK_LINE;
    return !strcmp(name, "td") || !strcmp(name, "th") ? BRK_SPACE : BRK_NONE;
}

/* Index after the '>' closing a tag whose attributes start at j (quoted
 * attribute values may hold '>'); n when it never closes. */
static size_t tag_end(const char *in, size_t n, size_t j)
{
    while (j < n && in[j] != '>') {
        if (in[j] == '"' || in[j] == '\'') {
            const char *q = memchr(in + j + 1, in[j], n - j - 1);
            if (!q)
                return n;
            j = (size_t)(q - in);
        }
        j++;
    }
    return j < n ? j + 1 : n;
}

/* Index after the end tag </name> of a raw-text element (script, style)
 * whose content starts at j; n when it never ends. */
static size_t skip_raw(const char *in, size_t n, size_t j, const char *name)
{
    size_t len = strlen(name);
    const char *p;
    while (j < n && (p = memchr(in + j, '<', n - j)) != NULL) {
        j = (size_t)(p - in);
        if (j + 2 + len <= n && in[j + 1] == '/' &&
            !strncasecmp(in + j + 2, name, len))
            return tag_end(in, n, j + 2 + len);
        j++;
    }
    return n;
}

/* At '<': a tag, a comment, a declaration, or a '<' that is text. */
static size_t hx_tag(hx_t *h, size_t i)
{
    const char *in = h->in;
    size_t n = h->n, j = i + 1;
    if (n - i >= 4 && !memcmp(in + i, "<!--", 4)) {
        const char *e = memmem(in + i + 4, n - i - 4, "-->", 3);
        return e ? (size_t)(e - in) + 3 : n;
    }
    if (j < n && (in[j] == '!' || in[j] == '?')) { /* <!DOCTYPE>, <?xml?> */
        const char *e = memchr(in + j, '>', n - j);
        return e ? (size_t)(e - in) + 1 : n;
    }
    int end = j < n && in[j] == '/';
    j += end;
    if (j >= n || !isalpha((unsigned char)in[j])) {
        hx_text(h, i, 1);
        return i + 1;
    }
    char name[16];
    size_t k = 0;
    while (j < n &&
           (isalnum((unsigned char)in[j]) || in[j] == '-' || in[j] == ':')) {
        if (k < sizeof name - 1)
            name[k++] = (char)tolower((unsigned char)in[j]);
        j++;
    }
    name[k] = 0;
    size_t e = tag_end(in, n, j);
    if (!end && (!strcmp(name, "script") || !strcmp(name, "style")))
        return skip_raw(in, n, e, name);
    if (!strcmp(name, "pre"))
        h->pre = end ? (h->pre > 0 ? h->pre - 1 : 0) : h->pre + 1;
    int b = tag_break(name);
    if (b)
        hx_break(h, b, i, e);
    return e;
}

/* Named character references kbsync decodes: the common ones. */
static const struct {
    const char *name;
    uint32_t cp;
} entities[] = {
    {"amp", '&'},      {"lt", '<'},        {"gt", '>'},
    {"quot", '"'},     {"apos", '\''},     {"nbsp", 0xA0},
    {"ensp", 0x2002},  {"emsp", 0x2003},   {"thinsp", 0x2009},
    {"shy", 0xAD},     {"copy", 0xA9},     {"reg", 0xAE},
    {"trade", 0x2122}, {"hellip", 0x2026}, {"mdash", 0x2014},
    {"ndash", 0x2013}, {"lsquo", 0x2018},  {"rsquo", 0x2019},
    {"sbquo", 0x201A}, {"ldquo", 0x201C},  {"rdquo", 0x201D},
    {"bdquo", 0x201E}, {"laquo", 0xAB},    {"raquo", 0xBB},
    {"bull", 0x2022},  {"middot", 0xB7},   {"deg", 0xB0},
    {"plusmn", 0xB1},  {"times", 0xD7},    {"divide", 0xF7},
    {"frac12", 0xBD},  {"frac14", 0xBC},   {"frac34", 0xBE},
    {"euro", 0x20AC},  {"pound", 0xA3},    {"yen", 0xA5},
    {"cent", 0xA2},    {"sect", 0xA7},     {"para", 0xB6},
    {"iexcl", 0xA1},   {"iquest", 0xBF},   {"aacute", 0xE1},
    {"agrave", 0xE0},  {"acirc", 0xE2},    {"auml", 0xE4},
    {"atilde", 0xE3},  {"aring", 0xE5},    {"aelig", 0xE6},
    {"ccedil", 0xE7},  {"eacute", 0xE9},   {"egrave", 0xE8},
    {"ecirc", 0xEA},   {"euml", 0xEB},     {"iacute", 0xED},
    {"igrave", 0xEC},  {"icirc", 0xEE},    {"iuml", 0xEF},
    {"ntilde", 0xF1},  {"oacute", 0xF3},   {"ograve", 0xF2},
    {"ocirc", 0xF4},   {"ouml", 0xF6},     {"otilde", 0xF5},
    {"oslash", 0xF8},  {"uacute", 0xFA},   {"ugrave", 0xF9},
    {"ucirc", 0xFB},   {"uuml", 0xFC},     {"yuml", 0xFF},
    {"szlig", 0xDF},   {"Aacute", 0xC1},   {"Agrave", 0xC0},
    {"Auml", 0xC4},    {"Aring", 0xC5},    {"Ccedil", 0xC7},
    {"Eacute", 0xC9},  {"Egrave", 0xC8},   {"Ntilde", 0xD1},
    {"Oacute", 0xD3},  {"Ouml", 0xD6},     {"Oslash", 0xD8},
    {"Uacute", 0xDA},  {"Uuml", 0xDC},     {"larr", 0x2190},
    {"rarr", 0x2192},  {"uarr", 0x2191},   {"darr", 0x2193},
    {"harr", 0x2194},  {"rArr", 0x21D2},   {"lArr", 0x21D0},
    {"le", 0x2264},    {"ge", 0x2265},     {"ne", 0x2260},
    {"asymp", 0x2248}, {"infin", 0x221E},  {"minus", 0x2212},
    {"alpha", 0x3B1},  {"beta", 0x3B2},    {"gamma", 0x3B3},
    {"delta", 0x3B4},  {"epsilon", 0x3B5}, {"lambda", 0x3BB},
    {"mu", 0x3BC},     {"pi", 0x3C0},      {"sigma", 0x3C3},
    {"Omega", 0x3A9},  {"micro", 0xB5},    {"dagger", 0x2020},
};

static uint32_t entity_cp(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof entities / sizeof *entities; i++)
        if (strlen(entities[i].name) == len &&
            !memcmp(entities[i].name, name, len))
            return entities[i].cp;
    return 0;
}

static size_t utf8_put(uint32_t cp, char *u)
{
    if (cp < 0x80) {
        u[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (char)(0xF0 | cp >> 18);
    u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The code point of the reference at in[i] ('&'), and *end after it; 0
 * when it is not one (the '&' is then text). */
static uint32_t entity_at(const char *in, size_t n, size_t i, size_t *end)
{
    size_t j = i + 1;
    if (j < n && in[j] == '#') {
        int hex = ++j < n && (in[j] == 'x' || in[j] == 'X');
        j += hex;
        size_t d0 = j;
        uint32_t cp = 0;
        while (j < n && j - d0 < 8 &&
               (hex ? isxdigit((unsigned char)in[j])
                    : isdigit((unsigned char)in[j]))) {
            int v = isdigit((unsigned char)in[j])
                        ? in[j] - '0'
                        : tolower((unsigned char)in[j]) - 'a' + 10;
            cp = cp * (hex ? 16u : 10u) + (uint32_t)v;
            j++;
        }
        if (j == d0)
            return 0;
        *end = j + (j < n && in[j] == ';');
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            cp = 0xFFFD;
        return cp;
    }
    size_t k = j;
    while (k < n && k - j < 32 && isalnum((unsigned char)in[k]))
        k++;
    if (k == j || k >= n || in[k] != ';')
        return 0;
    *end = k + 1;
    return entity_cp(in + j, k - j);
}

/* At '&': a character reference, or a '&' that is text. */
static size_t hx_entity(hx_t *h, size_t i)
{
    size_t end;
    uint32_t cp = entity_at(h->in, h->n, i, &end);
    if (!cp) {
        hx_text(h, i, 1);
        return i + 1;
    }
    if (cp == 0xAD) /* soft hyphen: nothing */
        return end;
    if (cp == 0xA0 || cp == 0x2002 || cp == 0x2003 || cp == 0x2009 ||
        (cp < 0x80 && is_ws((unsigned char)cp))) {
        hx_break(h, BRK_SPACE, i, end);
        return end;
    }
    char u[4];
    size_t k = utf8_put(cp, u);
    hx_flush(h);
    hx_put(h, u, k, i, end, 0);
    return end;
}

int cli_html_extract(const char *in, size_t n, cli_text_t *t)
{
    memset(t, 0, sizeof *t);
    hx_t h = {in, n, t, BRK_NONE, 0, 0, 0, 0};
    size_t i = 0;
    while (i < n && !h.oom) {
        unsigned char c = (unsigned char)in[i];
        if (c == '<') {
            i = hx_tag(&h, i);
        } else if (c == '&') {
            i = hx_entity(&h, i);
        } else if (is_ws(c)) {
            size_t j = i;
            int nl = 0;
            while (j < n && is_ws((unsigned char)in[j]))
                nl |= in[j++] == '\n';
            hx_break(&h, h.pre && nl ? BRK_LINE : BRK_SPACE, i, j);
            i = j;
        } else {
            size_t j = i + 1;
            while (j < n && in[j] != '<' && in[j] != '&' &&
                   !is_ws((unsigned char)in[j]))
                j++;
            hx_text(&h, i, j - i);
            i = j;
        }
    }
    if (h.oom || tx_grow(t, 0)) {
        cli_text_free(t);
        return KB_ENOMEM;
    }
    t->s[t->n] = 0;
    return 0;
}

/* The last segment starting at or before text offset o. */
static const cli_seg_t *seg_at(const cli_text_t *t, size_t o)
{
    size_t lo = 0, hi = t->nseg;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->seg[mid].out <= o)
            lo = mid;
        else
            hi = mid;
    }
    return &t->seg[lo];
}

size_t cli_text_src_start(const cli_text_t *t, size_t start)
{
    if (!t || !t->nseg)
        return start;
    const cli_seg_t *s = seg_at(t, start);
    return s->verbatim ? s->src + (start - s->out) : s->src;
}

size_t cli_text_src_end(const cli_text_t *t, size_t end)
{
    if (!t || !t->nseg || end == 0)
        return end;
    const cli_seg_t *s = seg_at(t, end - 1);
    return s->verbatim ? s->src + (end - s->out) : s->src_end;
}

void cli_text_free(cli_text_t *t)
{
    free(t->s);
    free(t->seg);
    memset(t, 0, sizeof *t);
}

/* ============================================================= chunking */

void cli_chunker_init(cli_chunker_t *c, const char *s, size_t n, size_t chunk,
                      size_t overlap)
{
    *c = (cli_chunker_t){s, n, 0, chunk, overlap};
}

/* A blank line ends just before p (s[p - 1] is its '\n'). */
static int para_end(const char *s, size_t from, size_t p)
{
    if (s[p - 1] != '\n')
        return 0;
    size_t k = p - 1;
    while (k > from &&
           (s[k - 1] == ' ' || s[k - 1] == '\t' || s[k - 1] == '\r'))
        k--;
    return k > from && s[k - 1] == '\n';
}

/* 。！？ end just before p. */
static int cjk_end(const unsigned char *u, size_t p)
{
    return p >= 3 &&
           ((u[p - 3] == 0xE3 && u[p - 2] == 0x80 && u[p - 1] == 0x82) ||
            (u[p - 3] == 0xEF && u[p - 2] == 0xBC &&
             (u[p - 1] == 0x81 || u[p - 1] == 0x9F)));
}

/* A sentence ends just before p: . ! ? (maybe closed by a quote or a
 * parenthesis) followed by white space, or a CJK full stop. */
static int sent_end(const char *s, size_t n, size_t p)
{
    const unsigned char *u = (const unsigned char *)s;
    if (cjk_end(u, p))
        return 1;
    if (p < n && !is_ws(u[p]))
        return 0;
    size_t q = p;
    if (q > 1 && (u[q - 1] == '"' || u[q - 1] == '\'' || u[q - 1] == ')'))
        q--;
    return q >= 1 && (u[q - 1] == '.' || u[q - 1] == '!' || u[q - 1] == '?');
}

/* Where to end the chunk starting at c->pos, the window ending at lim. */
static size_t best_cut(const cli_chunker_t *c, size_t lim)
{
    const char *s = c->s;
    size_t lo = c->pos + c->chunk / 2, p;
    for (p = lim; p > lo; p--)
        if (para_end(s, c->pos, p))
            return p;
    for (p = lim; p > lo; p--)
        if (sent_end(s, c->n, p))
            return p;
    for (p = lim; p > lo; p--)
        if (s[p - 1] == '\n')
            return p;
    for (p = lim; p > lo; p--)
        if (is_ws((unsigned char)s[p]))
            return p;
    for (p = lim; p > c->pos + 1 && ((unsigned char)s[p] & 0xC0) == 0x80; p--)
        ;
    return p;
}

/* Where the chunk after a cut at `cut` starts: up to c->overlap before it,
 * at a sentence start, else a word start, else a character boundary. */
static size_t overlap_start(const cli_chunker_t *c, size_t cut)
{
    if (!c->overlap)
        return cut;
    const unsigned char *u = (const unsigned char *)c->s;
    size_t o = cut - c->overlap, q;
    for (q = o; q < cut; q++) {
        if (is_ws(u[q]))
            continue;
        if (cjk_end(u, q))
            return q;
        if (!is_ws(u[q - 1]))
            continue;
        size_t r = q - 1;
        while (r > 0 && is_ws(u[r - 1]))
            r--;
        if (sent_end(c->s, c->n, r))
            return q;
    }
    for (q = o; q < cut; q++)
        if (!is_ws(u[q]) && is_ws(u[q - 1]))
            return q;
    for (q = o; q < cut && (u[q] & 0xC0) == 0x80; q++)
        ;
    return q;
}

int cli_chunker_next(cli_chunker_t *c, size_t *start, size_t *end)
{
    const char *s = c->s;
    while (c->pos < c->n && is_ws((unsigned char)s[c->pos]))
        c->pos++;
    if (c->pos >= c->n)
        return 0;
    size_t cut = c->n;
    if (c->n - c->pos > c->chunk)
        cut = best_cut(c, c->pos + c->chunk);
    size_t e = cut;
    while (e > c->pos && is_ws((unsigned char)s[e - 1]))
        e--;
    *start = c->pos;
    *end = e;
    c->pos = cut >= c->n ? c->n : overlap_start(c, cut);
    return 1;
}

/* ============================================================== hashing */

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t ld64le(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

static inline uint64_t fin64(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7FB5D329728EA185ull;
    x ^= x >> 27;
    x *= 0x81DADEF4BC2DD44Dull;
    x ^= x >> 33;
    return x;
}

/* Two lanes over 8-byte little-endian words; each step is a bijection of
 * the lane for a given word and of the word for a given lane, so a change
 * in one word always changes both lanes; the tail and the length go in
 * last, and both lanes are mixed into each other at the end. */
void cli_hash128(const void *p, size_t n, uint64_t seed, uint64_t out[2])
{
    const unsigned char *b = p;
    const uint64_t m1 = 0x9E3779B97F4A7C15ull, m2 = 0xC6A4A7935BD1E995ull,
                   m3 = 0xFF51AFD7ED558CCDull;
    uint64_t a = seed ^ 0x243F6A8885A308D3ull;
    uint64_t d = rotl64(seed, 32) ^ 0x13198A2E03707344ull ^ (uint64_t)n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = ld64le(b + i);
        a = rotl64(a ^ (w * m1), 29) * m2 + 0x52DCE729ull;
        d = rotl64(d + (w ^ (w >> 31)) * m3, 33) * m1 + 0x38495AB5ull;
    }
    uint64_t w = 0;
    for (size_t k = 0; i + k < n; k++)
        w |= (uint64_t)b[i + k] << (8 * k);
    a ^= rotl64((w + (uint64_t)n) * m2, 23);
    d ^= rotl64((w ^ m3) * m1, 41);
    a = fin64(a + d);
    d = fin64(d ^ rotl64(a, 17));
    out[0] = a;
    out[1] = d;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

void cli_chunk_hash(const char *text, size_t n, const cli_chunk_params_t *p,
                    uint64_t h[2])
{
    unsigned char hdr[16 + 32];
    memcpy(hdr, "kbsync-chunk-v1", 16); /* with its NUL */
    put_le64(hdr + 16, p->chunk);
    put_le64(hdr + 24, p->overlap);
    put_le64(hdr + 32, p->start);
    put_le64(hdr + 40, p->end);
    const char *salt = p->salt ? p->salt : "";
    cli_hash128(salt, strlen(salt), 0x6B6273796E63ull, h);
    cli_hash128(hdr, sizeof hdr, h[0] ^ h[1], h);
    cli_hash128(text, n, h[0] ^ rotl64(h[1], 1), h);
}

void cli_hash_hex(const uint64_t h[2], char hex[33])
{
    static const char digit[] = "0123456789abcdef";
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < 16; i++)
            hex[16 * w + i] = digit[(h[w] >> (60 - 4 * i)) & 15];
    hex[32] = 0;
}

void cli_chunk_hash_hex(const char *text, size_t n, const cli_chunk_params_t *p,
                        char hex[33])
{
    uint64_t h[2];
    cli_chunk_hash(text, n, p, h);
    cli_hash_hex(h, hex);
}

/* ================================================================= JSON */

int cli_json_str(char *buf, size_t cap, size_t *len, const char *s, size_t n)
{
    size_t o = *len;
    if (o + 2 >= cap)
        goto full;
    buf[o++] = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 7 >= cap)
            goto full;
        if (c == '"' || c == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(buf + o, cap - o, "\\u%04x", c);
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o++] = '"';
    buf[o] = 0;
    *len = o;
    return 0;
full:
    if (cap)
        buf[o < cap ? o : cap - 1] = 0;
    return -1;
}

#define CLI_JSON_MAX_DEPTH 512

/* A JSONL line being diagnosed: position i in s[0..n). */
typedef struct js {
    const unsigned char *s;
    size_t n, i;
    cli_json_diag_t *d; /* NULL: locate only, no message */
    int depth;
} js_t;

static int js_fail(js_t *j, size_t at, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int js_fail(js_t *j, size_t at, const char *field, const char *fmt, ...)
{
    if (j->d) {
        j->d->col = at + 1;
        snprintf(j->d->field, sizeof j->d->field, "%s", field);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->d->why, sizeof j->d->why, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void js_ws(js_t *j)
{
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' ||
                           j->s[j->i] == '\n' || j->s[j->i] == '\r'))
        j->i++;
}

static int js_at(const js_t *j, char c)
{
    return j->i < j->n && j->s[j->i] == (unsigned char)c;
}

/* What the value at `at` looks like, for "must be X, not Y". */
static const char *js_kind(const js_t *j, size_t at)
{
    if (at >= j->n)
        return "nothing";
    switch (j->s[at]) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 't':
    case 'f': return "a boolean";
    case 'n': return "null";
    default: return "a number";
    }
}

static int js_string(js_t *j, const char *field, int *nul)
{
    size_t q = j->i++; /* the opening quote */
    while (j->i < j->n) {
        unsigned c = j->s[j->i];
        if (c == '"') {
            j->i++;
            return 0;
        }
        if (c < 0x20)
            return js_fail(j, j->i, field,
                           "control character 0x%02x in a string (write "
                           "it as \\u%04x)",
                           c, c);
        if (c == '\\') {
            unsigned e = j->i + 1 < j->n ? j->s[j->i + 1] : 0;
            if (e == 'u') {
                for (size_t k = 2; k < 6; k++)
                    if (j->i + k >= j->n || !isxdigit(j->s[j->i + k]))
                        return js_fail(j, j->i, field,
                                       "\\u needs four hex digits");
                if (nul && !memcmp(j->s + j->i + 2, "0000", 4))
                    *nul = 1;
                j->i += 6;
            } else if (e && strchr("\"\\/bfnrt", (int)e)) {
                j->i += 2;
            } else {
                return js_fail(j, j->i, field,
                               "invalid escape (backslash "
                               "then byte 0x%02x)",
                               e);
            }
            continue;
        }
        size_t len = c < 0x80 ? 1
                              : kb_utf8_seq((const char *)j->s + j->i,
                                            j->n - j->i);
        if (!len)
            return js_fail(j, j->i, field, "invalid UTF-8 in a string");
        j->i += len;
    }
    return js_fail(j, q, field, "string not closed before the end of the line");
}

/* Returns 1 for an integer, 0 for another number, -1 when invalid. */
static int js_number(js_t *j, const char *field)
{
    size_t st = j->i, n = j->n;
    const unsigned char *s = j->s;
    int integer = 1;
    if (s[j->i] == '-')
        j->i++;
    if (j->i < n && s[j->i] == '0')
        j->i++;
    else if (j->i < n && isdigit(s[j->i]))
        while (j->i < n && isdigit(s[j->i]))
            j->i++;
    else
        return js_fail(j, st, field, "invalid number");
    if (j->i < n && s[j->i] == '.') {
        integer = 0;
        if (++j->i >= n || !isdigit(s[j->i]))
            return js_fail(j, st, field, "invalid number (no digit after '.')");
        while (j->i < n && isdigit(s[j->i]))
            j->i++;
    }
    if (j->i < n && (s[j->i] == 'e' || s[j->i] == 'E')) {
        integer = 0;
        j->i++;
        if (j->i < n && (s[j->i] == '+' || s[j->i] == '-'))
            j->i++;
        if (j->i >= n || !isdigit(s[j->i]))
            return js_fail(j, st, field,
                           "invalid number (exponent without digits)");
        while (j->i < n && isdigit(s[j->i]))
            j->i++;
    }
    return integer;
}

static int js_value(js_t *j, const char *field);

static int js_container(js_t *j, const char *field)
{
    int obj = j->s[j->i] == '{';
    char close = obj ? '}' : ']';
    if (++j->depth > CLI_JSON_MAX_DEPTH)
        return js_fail(j, j->i, field, "nested deeper than %d levels",
                       CLI_JSON_MAX_DEPTH);
    j->i++;
    js_ws(j);
    if (js_at(j, close)) {
        j->i++;
        j->depth--;
        return 0;
    }
    for (;;) {
        if (obj) {
            js_ws(j);
            if (!js_at(j, '"'))
                return js_fail(j, j->i, field, "expected a key (a string)");
            if (js_string(j, field, NULL))
                return -1;
            js_ws(j);
            if (!js_at(j, ':'))
                return js_fail(j, j->i, field, "expected ':' after the key");
            j->i++;
        }
        if (js_value(j, field))
            return -1;
        js_ws(j);
        if (js_at(j, ',')) {
            j->i++;
            continue;
        }
        if (js_at(j, close)) {
            j->i++;
            j->depth--;
            return 0;
        }
        return js_fail(j, j->i, field, "expected ',' or '%c'", close);
    }
}

static int js_value(js_t *j, const char *field)
{
    js_ws(j);
    if (j->i >= j->n)
        return js_fail(j, j->i, field, "value missing at the end of the line");
    unsigned c = j->s[j->i];
    if (c == '"')
        return js_string(j, field, NULL);
    if (c == '-' || isdigit(c))
        return js_number(j, field) < 0 ? -1 : 0;
    if (c == '{' || c == '[')
        return js_container(j, field);
    static const char *const lit[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(lit[k]);
        if (j->n - j->i >= len && !memcmp(j->s + j->i, lit[k], len)) {
            j->i += len;
            return 0;
        }
    }
    return js_fail(j, j->i, field,
                   "invalid value (expected a string, number, object, "
                   "array, true, false or null)");
}

/* The value at j->i is of the wrong type: a syntax error in it first. */
static int js_type(js_t *j, const char *field, const char *want)
{
    size_t at = j->i;
    if (js_value(j, field))
        return -1;
    return js_fail(j, at, field, "must be %s, not %s", want, js_kind(j, at));
}

static int js_id(js_t *j)
{
    size_t at = j->i;
    if (js_at(j, '"'))
        return js_string(j, "id", NULL);
    if (j->i >= j->n || !(j->s[at] == '-' || isdigit(j->s[at])))
        return js_type(j, "id", "a string or an integer");
    int r = js_number(j, "id");
    if (r < 0)
        return -1;
    if (r == 0)
        return js_fail(j, at, "id",
                       "must be a string or an integer, not a number with "
                       "a fraction or an exponent");
    char num[32];
    size_t len = j->i - at;
    if (len >= sizeof num)
        return js_fail(j, at, "id", "integer beyond 64 bits");
    memcpy(num, j->s + at, len);
    num[len] = 0;
    errno = 0;
    if (num[0] == '-')
        (void)strtoll(num, NULL, 10);
    else
        (void)strtoull(num, NULL, 10);
    return errno == ERANGE ? js_fail(j, at, "id", "integer beyond 64 bits") : 0;
}

static int js_embedding(js_t *j)
{
    if (!js_at(j, '['))
        return js_type(j, "embedding", "an array of numbers");
    j->i++;
    js_ws(j);
    if (js_at(j, ']')) {
        j->i++;
        return 0;
    }
    for (size_t k = 0;; k++) {
        char f[40];
        snprintf(f, sizeof f, "embedding[%zu]", k);
        js_ws(j);
        size_t at = j->i;
        if (js_value(j, f))
            return -1;
        if (!(j->s[at] == '-' || isdigit(j->s[at])))
            return js_fail(j, at, f, "must be a number, not %s",
                           js_kind(j, at));
        js_ws(j);
        if (js_at(j, ',')) {
            j->i++;
            continue;
        }
        if (js_at(j, ']')) {
            j->i++;
            return 0;
        }
        return js_fail(j, j->i, "embedding", "expected ',' or ']'");
    }
}

static const char *const rec_keys[] = {"id", "text", "embedding", "metadata"};

static int js_field(js_t *j, int ki)
{
    switch (ki) {
    case 0: return js_id(j);
    case 1:
        return js_at(j, '"') ? js_string(j, "text", NULL)
                             : js_type(j, "text", "a string");
    case 2: return js_embedding(j);
    default:
        if (js_at(j, '{') || js_at(j, 'n'))
            return js_value(j, "metadata");
        return js_type(j, "metadata", "an object or null");
    }
}

static int key_index(const unsigned char *k, size_t len)
{
    for (int i = 0; i < 4; i++)
        if (strlen(rec_keys[i]) == len && !memcmp(rec_keys[i], k, len))
            return i;
    return -1;
}

/* One "key": value of the record; *seen collects the keys. */
static int js_member(js_t *j, unsigned *seen)
{
    js_ws(j);
    size_t kat = j->i;
    if (!js_at(j, '"'))
        return js_fail(j, j->i, "record", "expected a key (a string)");
    if (js_string(j, "record", NULL))
        return -1;
    const unsigned char *k = j->s + kat + 1;
    size_t klen = j->i - kat - 2;
    char kname[64];
    snprintf(kname, sizeof kname, "%.*s", (int)(klen < 60 ? klen : 60),
             (const char *)k);
    int ki = key_index(k, klen);
    if (ki < 0)
        return js_fail(j, kat, kname,
                       "unknown key (expected id, text, embedding, metadata)");
    if (*seen & (1u << ki))
        return js_fail(j, kat, kname, "duplicate key");
    *seen |= 1u << ki;
    js_ws(j);
    if (!js_at(j, ':'))
        return js_fail(j, j->i, kname, "expected ':' after the key");
    j->i++;
    js_ws(j);
    if (js_field(j, ki))
        return -1;
    js_ws(j);
    if (js_at(j, ',') || js_at(j, '}'))
        return 0;
    return js_fail(j, j->i, kname, "expected ',' or '}' after the value");
}

static int js_record(js_t *j)
{
    js_ws(j);
    size_t open = j->i;
    if (!js_at(j, '{'))
        return js_type(j, "record", "a JSON object");
    j->i++;
    unsigned seen = 0;
    js_ws(j);
    if (js_at(j, '}'))
        j->i++;
    else
        for (;;) {
            if (js_member(j, &seen))
                return -1;
            if (js_at(j, '}')) {
                j->i++;
                break;
            }
            j->i++; /* the ',' */
        }
    js_ws(j);
    if (j->i < j->n)
        return js_fail(j, j->i, "record", "trailing content after the object");
    if (!(seen & 1u))
        return js_fail(j, open, "id", "missing (every record needs an \"id\")");
    return 0;
}

int cli_jsonl_diag(const char *line, size_t n, cli_json_diag_t *d)
{
    memset(d, 0, sizeof *d);
    js_t j = {(const unsigned char *)line, n, 0, d, 0};
    return js_record(&j) ? 1 : 0;
}

uint64_t cli_json_value_col(const char *line, size_t n, const char *key)
{
    js_t j = {(const unsigned char *)line, n, 0, NULL, 0};
    size_t klen = strlen(key);
    js_ws(&j);
    if (!js_at(&j, '{'))
        return 0;
    j.i++;
    for (;;) {
        js_ws(&j);
        size_t kat = j.i;
        if (!js_at(&j, '"') || js_string(&j, "", NULL))
            return 0;
        int match = j.i - kat - 2 == klen && !memcmp(line + kat + 1, key, klen);
        js_ws(&j);
        if (!js_at(&j, ':'))
            return 0;
        j.i++;
        js_ws(&j);
        if (match)
            return j.i + 1;
        if (js_value(&j, ""))
            return 0;
        js_ws(&j);
        if (!js_at(&j, ','))
            return 0;
        j.i++;
    }
}
