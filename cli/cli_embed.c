/* cli_embed: the client of the user's embedding model server (cli/). In:
 * jobs of texts from `kbsync ingest` / `kbsync query`. Out: their vectors
 * from an OpenAI-compatible POST /v1/embeddings, each job whole and in
 * submission order. State: per handle, one worker thread that owns a libcurl
 * multi handle and every request in flight, the job queue (shared, behind
 * one mutex) and the expected or learned vector dimension. */
#include "cli_embed.h"

#include "kb_err.h"
#include "kb_wire.h"
#include "kb_util.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ====================================================================
 * THE EMBEDDING PROTOCOL (what we send, what we accept, and why)
 *
 * Request: POST {url}/v1/embeddings, Content-Type: application/json,
 * Authorization: Bearer KEY when a key is given, body
 * {"model": NAME, "input": [text, ...]} with at most `batch` texts. No
 * "encoding_format": floats are the default everywhere, and some servers
 * (Ollama) do not take the field.
 *
 * Answer: HTTP 200 and {"data": [{"index": i, "embedding": [floats]}, ...]}
 * (other keys ignored). Accepted only when, for a batch of n texts: there
 * are exactly n items, their indexes are 0..n-1 once each (in any order:
 * the vector goes where its index says), every vector has the expected
 * length, and every value is a finite float. Anything else fails the batch
 * with a message naming it ("embedding batch 12 (texts 768..831): server
 * returned 63 vectors for 64 texts"), and its job hands back no vector at
 * all, so a caller writes nothing of it. Those failures are not retried:
 * a server that miscounts once will again.
 *
 * Expected length: the configured dim (the knowledge base's, from the
 * node's status), else the length in the first good answer. While it is
 * unknown only one request is in flight, so "first" is batch 0 (or the
 * next batch, if batch 0 fails), never a race between parallel answers.
 *
 * Pipelining: a job of n texts becomes ceil(n / batch) requests, numbered
 * by one counter per handle (the "batch" in messages). The worker keeps up
 * to `parallel` of them in flight over kept-alive connections; a job is
 * handed back when all of its requests are answered, and jobs leave in the
 * order they came, so a slow batch holds back later jobs but never reorders
 * them. The caller goes on submitting meanwhile; the server's latency is
 * hidden as long as the caller keeps `parallel * batch` texts queued.
 *
 * Retries: HTTP 429, 408 and 5xx, connection errors and timeouts (each
 * attempt has `timeout_ms`, connecting included) are retried up to
 * `retries` times per request, after backoff_ms * 2^(k-1) (capped at
 * backoff_max_ms), jittered down to half at random so that parallel
 * requests rejected together do not come back together; a Retry-After
 * header (seconds or an HTTP date) is obeyed when it asks for longer, up to
 * CLI_EMBED_RETRY_AFTER_MAX_MS. Other statuses (400, 401, 404, 413, ...)
 * fail at once with the server's own message. When one request of a job
 * fails for good, its job's requests not yet sent are dropped; those in
 * flight finish and are discarded.
 *
 * Threads: the caller's thread submits and takes jobs; the worker thread
 * ("kb-embed") sends, receives, parses and fills job vectors. `mu` guards
 * the job list, the incoming request list, `stop`, the counters and the
 * learned dim; a job's vectors are written by the worker only until it sets
 * `finished` under `mu`, and read by the caller only after. */

#define EMB_RESP_MAX (1ull << 30) /* largest answer body we keep */
#define EMB_MAX_DEPTH 64          /* JSON nesting we walk through */

typedef struct emb_job emb_job_t;

/* One HTTP request: `n` texts of a job, and its attempts. */
typedef struct emb_req {
    emb_job_t *job;
    struct emb_req *next; /* link in whichever list holds it */
    uint64_t batch;       /* ordinal of this request on the handle */
    uint64_t first_text;  /* ordinal of its first text on the handle */
    size_t off, n;        /* its texts are the job's [off, off + n) */
    char *body;           /* the JSON request body */
    size_t body_len;
    unsigned attempts;   /* sent so far */
    uint64_t due_us;     /* a retry is not sent before (kb_mono_us) */
    long retry_after_ms; /* of the attempt's answer; -1: none */
    int too_big;         /* the answer passed EMB_RESP_MAX */
    unsigned slot;       /* while in flight */
} emb_req_t;

struct emb_job {
    emb_job_t *next;
    void *tag;
    size_t n;
    uint64_t first_text;
    size_t reqs, reqs_done; /* worker only */
    float *vectors;         /* n * dim; see the banner for who owns it */
    uint32_t dim;
    int rc; /* the failure of the lowest failed batch */
    uint64_t rc_batch;
    size_t rc_off, rc_n; /* that batch's texts in the job */
    char err[600];
    int finished; /* under mu */
};

/* One in-flight slot: a reusable easy handle and two answer buffers. The
 * transfer writes into buf; when it completes, buf and done are swapped, so
 * the slot takes its next request before the answer in done is parsed
 * (parsing then overlaps the server's work on the next batch). */
typedef struct emb_slot {
    CURL *easy;
    emb_req_t *req; /* NULL: free */
    char *buf;      /* answer body being received, NUL-terminated */
    size_t len, cap;
    char errbuf[CURL_ERROR_SIZE];
    /* the last completed attempt, until emb_reap has judged it */
    emb_req_t *done_req;
    char *done;
    size_t done_len, done_cap;
    CURLcode done_cc;
    long done_code;
    char done_err[CURL_ERROR_SIZE];
} emb_slot_t;

struct cli_embed {
    /* settings: read-only after open */
    cli_embed_config_t cfg;
    char *url, *model;
    struct curl_slist *headers;
    CURLM *multi;
    pthread_t thread;

    /* shared with the worker, guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t done;         /* a job finished */
    emb_job_t *jobs, *jobs_tail; /* submitted, not taken, in order */
    size_t pending;
    emb_req_t *in_head, *in_tail; /* submitted, not yet seen by the worker */
    int stop;
    cli_embed_stats_t st;
    uint32_t dim;      /* expected or learned; written by the
                          worker (or open) under mu */
    char dim_why[160]; /* where dim came from, for messages */

    /* the submitting thread only */
    uint64_t next_batch, next_text;

    /* the worker only */
    emb_req_t *ready, *ready_tail; /* first attempts, in order */
    emb_req_t *wait;               /* retries, by due time */
    emb_slot_t *slots;
    unsigned in_flight;
    unsigned judging; /* answers received, not yet judged */
    uint64_t rng;
    kb_loglimit_t retry_log;
    float *tmp; /* one vector being parsed */
    size_t tmp_cap;
};

/* ------------------------------------------------------------- helpers */

static uint64_t emb_rand(cli_embed_t *e)
{
    uint64_t x = e->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    e->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* Appends s[0..n) to a growing buffer; 0 or -1 (out of memory). */
typedef struct emb_buf {
    char *p;
    size_t len, cap;
} emb_buf_t;

static int buf_put(emb_buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

/* Appends s[0..n) as a JSON string. Returns 0, -1 (out of memory), or the
 * 1-based byte offset of the first byte that is not UTF-8. */
static long buf_json_string(emb_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (buf_put(b, "\"", 1))
        return -1;
    size_t i = 0, run = 0; /* s[run..i) is copied as is */
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t l = kb_utf8_seq(s + i, n - i);
        if (!l)
            return (long)i + 1;
        if (c >= 0x20 && c != '"' && c != '\\') {
            i += l;
            continue;
        }
        if (buf_put(b, s + run, i - run))
            return -1;
        char esc[7] = {'\\', (char)c, 0};
        size_t el = 2;
        if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        if (buf_put(b, esc, el))
            return -1;
        run = ++i;
    }
    if (buf_put(b, s + run, n - run) || buf_put(b, "\"", 1))
        return -1;
    return 0;
}

/* Copies at most max bytes of an answer into out for a message, printable
 * ASCII only (anything else becomes '?'), whitespace runs squeezed. */
static void excerpt(const char *s, size_t n, char *out, size_t outlen,
                    size_t max)
{
    size_t o = 0;
    for (size_t i = 0; i < n && i < max && o + 4 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n' || c == '\r' || c == '\t')
            c = ' ';
        if (c == ' ' && o && out[o - 1] == ' ')
            continue;
        out[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    if (n > max && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = 0;
}

/* ================================================== the answer parser */

/* A strict JSON scanner over the answer (NUL-terminated), walking the one
 * shape we need and skipping every other value. It never allocates for
 * values it skips, and turns numbers straight into floats. */
typedef struct jscan {
    const char *p, *start, *end;
} jscan_t;

static void js_ws(jscan_t *s)
{
    while (s->p < s->end &&
           (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

/* At '"': sets the raw contents (escapes kept) and moves past the string. */
static int js_string(jscan_t *s, const char **str, size_t *len)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    const char *b = ++s->p;
    while (s->p < s->end && *s->p != '"') {
        unsigned char c = (unsigned char)*s->p;
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            s->p++;
            if (s->p >= s->end || !strchr("\"\\/bfnrtu", *s->p))
                return -1;
            if (*s->p == 'u')
                for (int i = 0; i < 4; i++)
                    if (++s->p >= s->end ||
                        !strchr("0123456789abcdefABCDEF", *s->p))
                        return -1;
        }
        s->p++;
    }
    if (s->p >= s->end)
        return -1;
    *str = b;
    *len = (size_t)(s->p - b);
    s->p++;
    return 0;
}

/* At a number: checks the JSON number grammar and moves past it. *integer
 * is set when it has no fraction and no exponent. */
static int js_number(jscan_t *s, int *integer)
{
    const char *p = s->p, *e = s->end;
    *integer = 1;
    if (p < e && *p == '-')
        p++;
    if (p >= e || *p < '0' || *p > '9')
        return -1;
    if (*p == '0')
        p++;
    else
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    if (p < e && *p == '.') {
        *integer = 0;
        if (++p >= e || *p < '0' || *p > '9')
            return -1;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *integer = 0;
        if (++p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || *p < '0' || *p > '9')
            return -1;
        while (p < e && *p >= '0' && *p <= '9')
            p++;
    }
    s->p = p;
    return 0;
}

/* At a number: checks the JSON number grammar, moves past it and sets *out
 * to its value as a float. Up to 19 significant digits are gathered into
 * an integer and scaled by an exact power of ten in double precision (two
 * roundings of at most half a double ulp each), then rounded to float:
 * that is the correctly rounded float unless the value lies within about
 * 2^-52 (relative) of a point halfway between two floats. Numbers with an
 * exponent beyond 1e+-22 go through strtod. Several times faster than
 * strtof, which matters: an answer is thousands of numbers per text. */
static int js_float(jscan_t *s, float *out)
{
    static const double p10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const char *p = s->p, *e = s->end, *start = s->p;
    uint64_t m = 0;
    int digits = 0, neg = 0;
    long exp10 = 0;
    if (p < e && *p == '-')
        neg = 1, p++;
    if (p >= e || *p < '0' || *p > '9')
        return -1;
    if (*p == '0') {
        p++;
    } else {
        for (; p < e && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19)
                m = m * 10 + (uint64_t)(*p - '0'), digits++;
            else
                exp10++; /* digits past the 19th: only their count */
        }
    }
    if (p < e && *p == '.') {
        if (++p >= e || *p < '0' || *p > '9')
            return -1;
        for (; p < e && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                exp10--;
                if (m)
                    digits++; /* leading zeros are not significant */
            }
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        long x = 0;
        if (++p < e && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= e || *p < '0' || *p > '9')
            return -1;
        for (; p < e && *p >= '0' && *p <= '9'; p++)
            if (x < 100000)
                x = x * 10 + (*p - '0');
        exp10 += eneg ? -x : x;
    }
    s->p = p;
    double v;
    if (m == 0)
        v = 0;
    else if (exp10 >= -22 && exp10 <= 22)
        v = exp10 >= 0 ? (double)m * p10[exp10] : (double)m / p10[-exp10];
    else
        v = fabs(strtod(start, NULL)); /* grammar checked: stops at p */
    *out = (float)(neg ? -v : v);
    return 0;
}

static int js_lit(jscan_t *s, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n))
        return -1;
    s->p += n;
    return 0;
}

/* Skips any one value. */
static int js_skip(jscan_t *s, int depth)
{
    const char *str;
    size_t len;
    int integer;
    js_ws(s);
    if (s->p >= s->end)
        return -1;
    char c = *s->p;
    if (c == '"')
        return js_string(s, &str, &len);
    if (c == '-' || (c >= '0' && c <= '9'))
        return js_number(s, &integer);
    if (c == 't')
        return js_lit(s, "true");
    if (c == 'f')
        return js_lit(s, "false");
    if (c == 'n')
        return js_lit(s, "null");
    if ((c != '[' && c != '{') || depth >= EMB_MAX_DEPTH)
        return -1;
    char close = c == '[' ? ']' : '}';
    s->p++;
    js_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        if (c == '{') {
            js_ws(s);
            if (js_string(s, &str, &len))
                return -1;
            js_ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return -1;
        }
        if (js_skip(s, depth + 1))
            return -1;
        js_ws(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == close) {
            s->p++;
            return 0;
        }
        if (*s->p++ != ',')
            return -1;
    }
}

/* Finds the text of the message in an error answer: "error" (a string, or
 * an object with "message"), else a top-level "message" or "detail" string
 * (OpenAI, vLLM, TEI and FastAPI shapes). 0 and the raw string contents, or
 * -1 when there is none. */
static int js_error_message(jscan_t *s, int depth, const char **msg,
                            size_t *len)
{
    const char *k, *v;
    size_t kl, vl;
    int found = -1;
    js_ws(s);
    if (s->p >= s->end || *s->p != '{' || depth > 1)
        return -1;
    s->p++;
    js_ws(s);
    while (s->p < s->end && *s->p != '}') {
        if (js_string(s, &k, &kl))
            return -1;
        js_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return -1;
        js_ws(s);
        int want = (kl == 5 && !memcmp(k, "error", 5)) ||
                   (kl == 7 && !memcmp(k, "message", 7)) ||
                   (kl == 6 && !memcmp(k, "detail", 6));
        if (want && s->p < s->end && *s->p == '"') {
            if (js_string(s, &v, &vl))
                return -1;
            if (found || (kl == 5 && !memcmp(k, "error", 5)))
                *msg = v, *len = vl, found = 0;
        } else if (want && s->p < s->end && *s->p == '{' && kl == 5 &&
                   !memcmp(k, "error", 5)) {
            if (!js_error_message(s, depth + 1, msg, len))
                found = 0;
        } else if (js_skip(s, depth + 1)) {
            return -1;
        }
        js_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            js_ws(s);
        } else if (s->p >= s->end || *s->p != '}') {
            return -1;
        }
    }
    if (s->p < s->end)
        s->p++;
    return found;
}

/* What one answer held, and the first problem of each kind. */
typedef struct emb_parse {
    size_t n;            /* texts in the batch */
    uint64_t first_text; /* for messages */
    uint32_t dim;        /* expected; 0 = set by the first vector */
    int dim_from_answer; /* dim was set by this answer's first vector */
    float *out;          /* n * dim, allocated once dim is known */
    unsigned char *seen; /* n flags: index already filled */
    size_t items;        /* items in "data" */
    int has_data, has_error;
    char shape[300], dimerr[300], nonfinite[300];
    int nonfinite_set; /* tmp vector of the current item holds one */
    size_t nf_pos;
    char nf_what[24];
} emb_parse_t;

/* At '[': reads a vector of numbers into e->tmp. NaN, Infinity and
 * -Infinity (which Python's json writes, though JSON has no such thing)
 * are read too, and noted, as are numbers too large for a float. */
static int js_vector(cli_embed_t *e, jscan_t *s, emb_parse_t *ps, size_t *len)
{
    size_t n = 0;
    ps->nonfinite_set = 0;
    s->p++; /* '[' */
    js_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        *len = 0;
        return 0;
    }
    for (;;) {
        if (n == e->tmp_cap) {
            if (n >= CLI_EMBED_MAX_DIM)
                return -2;
            size_t cap = e->tmp_cap ? e->tmp_cap * 2 : 1024;
            float *t = realloc(e->tmp, cap * sizeof *t);
            if (!t)
                return -3;
            e->tmp = t;
            e->tmp_cap = cap;
        }
        js_ws(s);
        const char *tok = s->p;
        float v;
        if (!js_lit(s, "NaN"))
            v = NAN;
        else if (!js_lit(s, "Infinity"))
            v = INFINITY;
        else if (!js_lit(s, "-Infinity"))
            v = -INFINITY;
        else if (js_float(s, &v))
            return -1;
        if (!isfinite(v) && !ps->nonfinite_set) {
            ps->nonfinite_set = 1;
            ps->nf_pos = n;
            excerpt(tok, (size_t)(s->p - tok), ps->nf_what, sizeof ps->nf_what,
                    16);
        }
        e->tmp[n++] = v;
        js_ws(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == ']') {
            s->p++;
            *len = n;
            return 0;
        }
        if (*s->p++ != ',')
            return -1;
    }
}

/* Files the vector in e->tmp[0..len) under index idx of the batch. */
static int emb_place(cli_embed_t *e, emb_parse_t *ps, size_t item,
                     long long idx, size_t len)
{
    if (idx < 0 || (size_t)idx >= ps->n) {
        if (!ps->shape[0])
            snprintf(ps->shape, sizeof ps->shape,
                     "item %zu has index %lld, outside 0..%zu", item, idx,
                     ps->n - 1);
        return 0;
    }
    if (ps->seen[idx]) {
        if (!ps->shape[0])
            snprintf(ps->shape, sizeof ps->shape,
                     "item %zu repeats index %lld, so another text has no "
                     "vector",
                     item, idx);
        return 0;
    }
    ps->seen[idx] = 1;
    if (!ps->dim) {
        if (len == 0) {
            snprintf(ps->dimerr, sizeof ps->dimerr,
                     "the vector for text %llu is empty",
                     (unsigned long long)(ps->first_text + (size_t)idx));
            return 0;
        }
        ps->dim = (uint32_t)len;
        ps->dim_from_answer = 1;
    }
    if (!ps->out) {
        ps->out = malloc(ps->n * ps->dim * sizeof(float));
        if (!ps->out)
            return KB_ENOMEM;
    }
    if (len != ps->dim) {
        if (!ps->dimerr[0]) {
            if (ps->dim_from_answer)
                snprintf(ps->dimerr, sizeof ps->dimerr,
                         "vectors of different lengths in one answer: %u "
                         "and %zu (text %llu)",
                         ps->dim, len,
                         (unsigned long long)(ps->first_text + (size_t)idx));
            else
                snprintf(ps->dimerr, sizeof ps->dimerr,
                         "the vector for text %llu has %zu dimensions, "
                         "expected %u (%s)",
                         (unsigned long long)(ps->first_text + (size_t)idx),
                         len, ps->dim, e->dim_why);
        }
        return 0;
    }
    if (ps->nonfinite_set && !ps->nonfinite[0])
        snprintf(ps->nonfinite, sizeof ps->nonfinite,
                 "the vector for text %llu holds %s at position %zu, not a "
                 "finite float",
                 (unsigned long long)(ps->first_text + (size_t)idx),
                 ps->nf_what, ps->nf_pos);
    memcpy(ps->out + (size_t)idx * ps->dim, e->tmp, len * sizeof(float));
    return 0;
}

/* One item of "data": {"index": i, "embedding": [...], ...}. */
static int js_item(cli_embed_t *e, jscan_t *s, emb_parse_t *ps)
{
    size_t item = ps->items++, len = 0;
    long long idx = -1;
    int has_vec = 0, has_idx = 0, rc;
    const char *k;
    size_t kl;
    js_ws(s);
    if (s->p >= s->end || *s->p != '{') {
        if (js_skip(s, 2))
            return -1;
        if (!ps->shape[0])
            snprintf(ps->shape, sizeof ps->shape,
                     "item %zu of \"data\" is not an object", item);
        return 0;
    }
    s->p++;
    js_ws(s);
    while (s->p < s->end && *s->p != '}') {
        if (js_string(s, &k, &kl))
            return -1;
        js_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return -1;
        js_ws(s);
        if (kl == 5 && !memcmp(k, "index", 5) && s->p < s->end &&
            (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))) {
            const char *num = s->p;
            int integer;
            if (js_number(s, &integer))
                return -1;
            idx = integer && s->p - num < 18 ? strtoll(num, NULL, 10) : -2;
            has_idx = 1;
        } else if (kl == 9 && !memcmp(k, "embedding", 9) && s->p < s->end &&
                   *s->p == '[') {
            if ((rc = js_vector(e, s, ps, &len)) != 0)
                return rc;
            has_vec = 1;
        } else {
            if (kl == 9 && !memcmp(k, "embedding", 9) && !ps->shape[0])
                snprintf(ps->shape, sizeof ps->shape,
                         "item %zu: \"embedding\" is not an array of "
                         "numbers%s",
                         item, *s->p == '"' ? " (base64?)" : "");
            if (kl == 5 && !memcmp(k, "index", 5) && !ps->shape[0])
                snprintf(ps->shape, sizeof ps->shape,
                         "item %zu: \"index\" is not a number", item);
            if (js_skip(s, 3))
                return -1;
        }
        js_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            js_ws(s);
        } else if (s->p >= s->end || *s->p != '}')
            return -1;
    }
    if (s->p >= s->end)
        return -1;
    s->p++;
    if (!has_idx || !has_vec || idx == -2) {
        if (!ps->shape[0])
            snprintf(ps->shape, sizeof ps->shape, "item %zu has %s", item,
                     !has_idx   ? "no \"index\""
                     : !has_vec ? "no \"embedding\" array"
                                : "an \"index\" that is not a whole number");
        return 0;
    }
    return emb_place(e, ps, item, idx, len);
}

/* The whole answer: {"data": [items], ...}. */
static int js_answer(cli_embed_t *e, jscan_t *s, emb_parse_t *ps)
{
    const char *k;
    size_t kl;
    int rc;
    js_ws(s);
    if (s->p >= s->end || *s->p != '{')
        return -1;
    s->p++;
    js_ws(s);
    while (s->p < s->end && *s->p != '}') {
        if (js_string(s, &k, &kl))
            return -1;
        js_ws(s);
        if (s->p >= s->end || *s->p++ != ':')
            return -1;
        js_ws(s);
        if (kl == 4 && !memcmp(k, "data", 4) && s->p < s->end && *s->p == '[' &&
            !ps->has_data) {
            ps->has_data = 1;
            s->p++;
            js_ws(s);
            while (s->p < s->end && *s->p != ']') {
                if ((rc = js_item(e, s, ps)) != 0)
                    return rc;
                js_ws(s);
                if (s->p < s->end && *s->p == ',')
                    s->p++;
                else if (s->p >= s->end || *s->p != ']')
                    return -1;
            }
            if (s->p >= s->end)
                return -1;
            s->p++;
        } else {
            if (kl == 5 && !memcmp(k, "error", 5))
                ps->has_error = 1;
            if (js_skip(s, 1))
                return -1;
        }
        js_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            js_ws(s);
        } else if (s->p >= s->end || *s->p != '}')
            return -1;
    }
    if (s->p >= s->end)
        return -1;
    s->p++;
    js_ws(s);
    return s->p == s->end ? 0 : -1;
}

/* The verdict on an answer from js_answer's code rc (at is where the
 * scan stopped): 0, or the error code with the reason in why, in the order
 * a reader needs it: not JSON, then the vector count, then the shape, the
 * lengths, the values. */
static int emb_verdict(const emb_parse_t *ps, int rc, const char *at,
                       const char *body, size_t len, char *why, size_t whylen)
{
    if (rc == -1 || rc == -2) {
        char ex[80];
        size_t off = (size_t)(at - body);
        excerpt(at, len - off, ex, sizeof ex, 40);
        rc = rc == -2   ? kb_seterr(why, whylen, KB_ETOOBIG,
                                    "a vector longer than %u values",
                                    CLI_EMBED_MAX_DIM)
             : len == 0 ? kb_seterr(why, whylen, KB_EBADJSON,
                                    "server answered HTTP 200 with an empty "
                                    "body, not JSON")
                        : kb_seterr(why, whylen, KB_EBADJSON,
                                    "server answer is not valid JSON at byte "
                                    "%zu of %zu (\"%s\")",
                                    off, len, ex);
    } else if (rc == -3 || rc == KB_ENOMEM) {
        rc = kb_seterr(why, whylen, KB_ENOMEM, "out of memory");
    } else if (!ps->has_data) {
        char ex[200];
        excerpt(body, len, ex, sizeof ex, 160);
        rc = kb_seterr(why, whylen, KB_EBADMSG,
                       "server answer has no \"data\" array%s: %s",
                       ps->has_error ? " but an \"error\"" : "", ex);
    } else if (ps->items != ps->n) {
        rc = kb_seterr(why, whylen, KB_EBADMSG,
                       "server returned %zu vectors for %zu texts", ps->items,
                       ps->n);
    } else if (ps->shape[0]) {
        rc = kb_seterr(why, whylen, KB_EBADMSG, "%s", ps->shape);
    } else if (ps->dimerr[0]) {
        rc = kb_seterr(why, whylen, KB_EDIM, "%s", ps->dimerr);
    } else if (ps->nonfinite[0]) {
        rc = kb_seterr(why, whylen, KB_ENONFINITE, "%s", ps->nonfinite);
    } else {
        rc = 0;
    }
    return rc;
}

/* Checks the answer of request r (body[0..len), NUL-terminated) and on
 * success copies its vectors into the job. Returns 0 or a KB_E* code with
 * the reason in why. */
static int emb_parse(cli_embed_t *e, emb_req_t *r, const char *body, size_t len,
                     char *why, size_t whylen)
{
    emb_parse_t ps = {.n = r->n, .first_text = r->first_text, .dim = e->dim};
    jscan_t s = {body, body, body + len};
    int rc = KB_ENOMEM;
    ps.seen = calloc(r->n, 1);
    if (!ps.seen)
        return kb_seterr(why, whylen, rc, "out of memory");
    rc = js_answer(e, &s, &ps); /* then s.p is where it stopped */
    rc = emb_verdict(&ps, rc, s.p, body, len, why, whylen);
    if (!rc) {
        emb_job_t *j = r->job;
        if (!e->dim) {
            pthread_mutex_lock(&e->mu);
            e->dim = ps.dim;
            e->st.dim = ps.dim;
            snprintf(e->dim_why, sizeof e->dim_why,
                     "the length in batch %llu's answer",
                     (unsigned long long)r->batch);
            pthread_mutex_unlock(&e->mu);
        }
        if (!j->vectors) {
            j->dim = e->dim;
            j->vectors = malloc(j->n * j->dim * sizeof(float));
        }
        if (j->vectors)
            memcpy(j->vectors + r->off * j->dim, ps.out,
                   r->n * j->dim * sizeof(float));
        else
            rc = kb_seterr(why, whylen, KB_ENOMEM, "out of memory");
    }
    free(ps.out);
    free(ps.seen);
    return rc;
}

/* ================================================= requests and jobs */

static void req_free(emb_req_t *r)
{
    if (r) {
        free(r->body);
        free(r);
    }
}

/* Request r is settled (answered, failed for good, or dropped): when it
 * was its job's last, the job is finished and handed to the caller. */
static void emb_settle(cli_embed_t *e, emb_req_t *r, int ok)
{
    emb_job_t *j = r->job;
    j->reqs_done++;
    int last = j->reqs_done == j->reqs;
    if (last && j->rc) {
        free(j->vectors);
        j->vectors = NULL;
    }
    pthread_mutex_lock(&e->mu);
    if (ok)
        e->st.batches_ok++;
    if (last) {
        j->finished = 1;
        pthread_cond_broadcast(&e->done);
    }
    pthread_mutex_unlock(&e->mu);
    req_free(r);
}

/* Request r failed for good: the job fails with the lowest batch's error. */
static void emb_fail(cli_embed_t *e, emb_req_t *r, int rc, const char *why)
{
    emb_job_t *j = r->job;
    if (!j->rc || r->batch < j->rc_batch) {
        j->rc = rc;
        j->rc_batch = r->batch;
        j->rc_off = r->off;
        j->rc_n = r->n;
        snprintf(j->err, sizeof j->err,
                 "embedding batch %llu (texts %llu..%llu): %s",
                 (unsigned long long)r->batch,
                 (unsigned long long)r->first_text,
                 (unsigned long long)(r->first_text + r->n - 1), why);
    }
    pthread_mutex_lock(&e->mu);
    e->st.batches_failed++;
    pthread_mutex_unlock(&e->mu);
    emb_settle(e, r, 0);
}

/* Puts r on the retry list at its due time (the list is sorted). */
static void emb_wait(cli_embed_t *e, emb_req_t *r)
{
    emb_req_t **pp = &e->wait;
    while (*pp && (*pp)->due_us <= r->due_us)
        pp = &(*pp)->next;
    r->next = *pp;
    *pp = r;
}

/* The delay before retry k (1-based) of a request, in ms. */
static uint64_t emb_backoff_ms(cli_embed_t *e, unsigned k, long retry_after)
{
    uint64_t d = e->cfg.backoff_ms;
    for (unsigned i = 1; i < k && d < e->cfg.backoff_max_ms; i++)
        d *= 2;
    if (d > e->cfg.backoff_max_ms)
        d = e->cfg.backoff_max_ms;
    d = d / 2 + (d ? emb_rand(e) % (d / 2 + 1) : 0); /* jitter: [d/2, d] */
    if (retry_after >= 0) {
        uint64_t ra = (uint64_t)retry_after;
        if (ra > CLI_EMBED_RETRY_AFTER_MAX_MS)
            ra = CLI_EMBED_RETRY_AFTER_MAX_MS;
        ra += ra / 10 ? emb_rand(e) % (ra / 10) : 0; /* spread, never less */
        if (ra > d)
            d = ra;
    }
    return d;
}

/* ============================================================ libcurl */

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    emb_slot_t *sl = arg;
    size_t n = size * nmemb;
    if (sl->len + n + 1 > sl->cap) {
        if (sl->len + n + 1 > EMB_RESP_MAX) {
            sl->req->too_big = 1;
            return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
        }
        size_t cap = sl->cap ? sl->cap : 1 << 16;
        while (cap < sl->len + n + 1)
            cap *= 2;
        char *p = realloc(sl->buf, cap);
        if (!p)
            return 0;
        sl->buf = p;
        sl->cap = cap;
    }
    memcpy(sl->buf + sl->len, data, n);
    sl->len += n;
    sl->buf[sl->len] = 0;
    return n;
}

/* Retry-After: delay-seconds or an HTTP date. */
static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    emb_slot_t *sl = arg;
    size_t n = size * nmemb;
    if (n > 12 && !strncasecmp(data, "Retry-After:", 12)) {
        char v[128];
        size_t l = n - 12 < sizeof v - 1 ? n - 12 : sizeof v - 1;
        memcpy(v, data + 12, l);
        v[l] = 0;
        char *p = v, *end;
        while (*p == ' ' || *p == '\t')
            p++;
        p[strcspn(p, "\r\n")] = 0;
        long secs = strtol(p, &end, 10);
        if (end != p && !*end && secs >= 0) {
            sl->req->retry_after_ms = secs > 86400 ? 86400000 : secs * 1000;
        } else {
            time_t t = curl_getdate(p, NULL);
            time_t now = time(NULL);
            if (t != (time_t)-1)
                sl->req->retry_after_ms = t > now ? (long)(t - now) * 1000 : 0;
        }
    }
    return n;
}

static int emb_slot_init(cli_embed_t *e, emb_slot_t *sl)
{
    CURL *h = curl_easy_init();
    if (!h)
        return -1;
    sl->easy = h;
    curl_easy_setopt(h, CURLOPT_URL, e->url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, e->headers);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)e->cfg.timeout_ms);
    curl_easy_setopt(
        h, CURLOPT_CONNECTTIMEOUT_MS,
        (long)(e->cfg.timeout_ms < 10000 ? e->cfg.timeout_ms : 10000));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, sl);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, sl);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, sl->errbuf);
    curl_easy_setopt(h, CURLOPT_PRIVATE, (char *)sl);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "kbsync");
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    return 0;
}

/* Sends request r on a free slot. */
static void emb_send(cli_embed_t *e, emb_req_t *r)
{
    emb_slot_t *sl = NULL;
    for (unsigned i = 0; i < e->cfg.parallel && !sl; i++)
        if (!e->slots[i].req)
            sl = &e->slots[i], r->slot = i;
    sl->req = r;
    sl->len = 0;
    sl->errbuf[0] = 0;
    r->retry_after_ms = -1;
    r->too_big = 0;
    r->attempts++;
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)r->body_len);
    curl_multi_add_handle(e->multi, sl->easy);
    e->in_flight++;
    pthread_mutex_lock(&e->mu);
    e->st.attempts++;
    e->st.bytes_sent += r->body_len;
    if (e->in_flight > e->st.peak_in_flight)
        e->st.peak_in_flight = e->in_flight;
    pthread_mutex_unlock(&e->mu);
}

/* Starts what may start: due retries first, then new requests, while a
 * slot is free. While the dim is unknown, one request at a time. */
static void emb_start(cli_embed_t *e)
{
    uint64_t now = kb_mono_us();
    while (e->in_flight < e->cfg.parallel) {
        emb_req_t *r;
        if (e->wait && e->wait->due_us <= now) {
            r = e->wait;
            e->wait = r->next;
        } else if (e->ready &&
                   (e->dim || (!e->in_flight && !e->wait && !e->judging))) {
            r = e->ready;
            e->ready = r->next;
        } else {
            break;
        }
        if (r->job->rc) /* its job failed already: not worth sending */
            emb_settle(e, r, 0);
        else
            emb_send(e, r);
    }
}

static int curl_retryable(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR: return 1;
    default: return 0;
    }
}

/* Classifies a finished attempt: 0 (answered and accepted), or an error
 * code with the reason in why and *retry set when it is worth another. */
static int emb_judge(cli_embed_t *e, emb_slot_t *sl, int *retry, char *why,
                     size_t whylen)
{
    emb_req_t *r = sl->done_req;
    CURLcode cc = sl->done_cc;
    long code = sl->done_code;
    const char *body = sl->done ? sl->done : "";
    *retry = 0;
    if (cc != CURLE_OK) {
        const char *d = sl->done_err[0] ? sl->done_err : curl_easy_strerror(cc);
        if (r->too_big)
            return kb_seterr(why, whylen, KB_ETOOBIG,
                             "answer larger than %llu bytes",
                             (unsigned long long)EMB_RESP_MAX);
        if (cc == CURLE_OPERATION_TIMEDOUT) {
            *retry = 1;
            return kb_seterr(why, whylen, KB_ETIMEOUT,
                             "no answer within %u ms (--embed-timeout-ms): %s",
                             e->cfg.timeout_ms, d);
        }
        *retry = curl_retryable(cc);
        return kb_seterr(why, whylen, KB_ENET, "cannot reach %s: %s", e->url,
                         d);
    }
    if (code == 200)
        return emb_parse(e, r, body, sl->done_len, why, whylen);
    char ex[260];
    const char *msg;
    size_t mlen;
    jscan_t js = {body, body, body + sl->done_len};
    if (!js_error_message(&js, 0, &msg, &mlen))
        excerpt(msg, mlen, ex, sizeof ex, 200);
    else
        excerpt(body, sl->done_len, ex, sizeof ex, 200);
    *retry = code == 429 || code == 408 || code >= 500;
    const char *hint =
        code == 401 || code == 403
            ? " (give the key with KBSYNC_EMBED_KEY or --embed-key-file)"
        : code == 404 ? " (is --embed-url right, and --embed-model a model "
                        "the server has?)"
        : code == 413 ? " (too many texts in one request: lower "
                        "--embed-batch)"
                      : "";
    return kb_seterr(why, whylen,
                     code == 401 || code == 403 ? KB_EACCES
                     : code == 413              ? KB_ETOOBIG
                                                : KB_ENET,
                     "server answered HTTP %ld%s: %s", code, hint,
                     ex[0] ? ex : "(no body)");
}

/* Attempt done on slot sl: its answer moves to sl->done, and the slot is
 * free for the next request. */
static void emb_slot_done(cli_embed_t *e, emb_slot_t *sl, CURLcode cc,
                          long code)
{
    char *b = sl->done;
    size_t c = sl->done_cap;
    sl->done = sl->buf;
    sl->done_len = sl->len;
    sl->done_cap = sl->cap;
    sl->buf = b;
    sl->cap = c;
    sl->len = 0;
    if (sl->buf)
        sl->buf[0] = 0;
    sl->done_req = sl->req;
    sl->done_cc = cc;
    sl->done_code = code;
    memcpy(sl->done_err, sl->errbuf, sizeof sl->done_err);
    sl->req = NULL;
    e->in_flight--;
    e->judging++;
    pthread_mutex_lock(&e->mu);
    e->st.bytes_received += sl->done_len;
    e->st.http_429 += code == 429;
    e->st.http_5xx += code >= 500;
    e->st.timeouts += cc == CURLE_OPERATION_TIMEDOUT;
    e->st.conn_errors += cc != CURLE_OK && curl_retryable(cc);
    pthread_mutex_unlock(&e->mu);
}

/* Judges the attempt in sl->done: settles its request, schedules its
 * retry, or fails it (and its job). */
static void emb_outcome(cli_embed_t *e, emb_slot_t *sl)
{
    emb_req_t *r = sl->done_req;
    char why[400];
    int retry = 0;
    int rc = r->job->rc ? 0 : emb_judge(e, sl, &retry, why, sizeof why);
    sl->done_req = NULL;
    e->judging--;
    if (r->job->rc || !rc) {
        emb_settle(e, r, !r->job->rc);
    } else if (retry && r->attempts <= e->cfg.retries) {
        uint64_t ms = emb_backoff_ms(e, r->attempts, r->retry_after_ms);
        r->due_us = kb_mono_us() + ms * 1000;
        kb_log_limited(&e->retry_log, KB_LOG_WARN,
                       "embedding batch %llu (texts %llu..%llu): %s; "
                       "retrying in %.2f s (attempt %u of %u)",
                       (unsigned long long)r->batch,
                       (unsigned long long)r->first_text,
                       (unsigned long long)(r->first_text + r->n - 1), why,
                       ms / 1000.0, r->attempts + 1, e->cfg.retries + 1);
        pthread_mutex_lock(&e->mu);
        e->st.retries++;
        pthread_mutex_unlock(&e->mu);
        emb_wait(e, r);
    } else {
        if (retry && r->attempts > 1) {
            size_t l = strlen(why);
            snprintf(why + l, sizeof why - l, " (%u attempts)", r->attempts);
        }
        emb_fail(e, r, rc, why);
    }
}

/* Takes every finished transfer off the multi handle, refills the freed
 * slots (so the server works on the next batches), then judges the
 * answers. Returns how many finished. */
static int emb_reap(cli_embed_t *e)
{
    CURLMsg *m;
    int left, n = 0, running;
    while ((m = curl_multi_info_read(e->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *h = m->easy_handle;
        CURLcode cc = m->data.result;
        char *p = NULL;
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_PRIVATE, &p);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(e->multi, h);
        emb_slot_done(e, (emb_slot_t *)p, cc, code);
        n++;
    }
    if (!n)
        return 0;
    emb_start(e);
    curl_multi_perform(e->multi, &running); /* the new requests go out */
    for (unsigned i = 0; i < e->cfg.parallel; i++)
        if (e->slots[i].done_req)
            emb_outcome(e, &e->slots[i]);
    return n;
}

/* How long the worker may sleep in curl_multi_poll. */
static int emb_poll_ms(cli_embed_t *e)
{
    if (!e->wait)
        return 1000;
    uint64_t now = kb_mono_us();
    if (e->wait->due_us <= now)
        return 0;
    uint64_t ms = (e->wait->due_us - now + 999) / 1000;
    return ms > 1000 ? 1000 : (int)ms;
}

static void *emb_worker(void *arg)
{
    cli_embed_t *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->mu);
        int stop = e->stop;
        emb_req_t *in = e->in_head, *in_tail = e->in_tail;
        e->in_head = e->in_tail = NULL;
        pthread_mutex_unlock(&e->mu);
        if (stop)
            break;
        if (in) {
            if (e->ready)
                e->ready_tail->next = in;
            else
                e->ready = in;
            e->ready_tail = in_tail;
        }
        emb_start(e);
        int running;
        curl_multi_perform(e->multi, &running);
        if (emb_reap(e))
            continue; /* slots came free: fill them before sleeping */
        curl_multi_poll(e->multi, NULL, 0, emb_poll_ms(e), NULL);
    }
    return NULL;
}

/* ============================================================ the API */

void cli_embed_config_init(cli_embed_config_t *c)
{
    memset(c, 0, sizeof *c);
    c->batch = CLI_EMBED_BATCH;
    c->parallel = CLI_EMBED_PARALLEL;
    c->retries = CLI_EMBED_RETRIES;
    c->timeout_ms = CLI_EMBED_TIMEOUT_MS;
    c->backoff_ms = CLI_EMBED_BACKOFF_MS;
    c->backoff_max_ms = CLI_EMBED_BACKOFF_MAX_MS;
}

/* *out = {url}/v1/embeddings from a base URL, a .../v1 URL or the full
 * one (malloc'd). Returns 0, KB_EINVAL or KB_ENOMEM. */
static int emb_endpoint(const char *url, char **out, char *err, size_t errlen)
{
    size_t n = strlen(url);
    if (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))
        return kb_seterr(err, errlen, KB_EINVAL,
                         "--embed-url must start with http:// or https://, "
                         "not \"%.200s\"",
                         url);
    while (n > 8 && url[n - 1] == '/')
        n--;
    const char *tail = "/v1/embeddings";
    if (n >= 11 && !memcmp(url + n - 11, "/embeddings", 11))
        tail = "";
    else if (n >= 3 && !memcmp(url + n - 3, "/v1", 3))
        tail = "/embeddings";
    char *s = malloc(n + strlen(tail) + 1);
    if (!s)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    memcpy(s, url, n);
    strcpy(s + n, tail);
    *out = s;
    return 0;
}

static void emb_free(cli_embed_t *e)
{
    if (e->multi) {
        for (unsigned i = 0; e->slots && i < e->cfg.parallel; i++) {
            if (e->slots[i].req) {
                curl_multi_remove_handle(e->multi, e->slots[i].easy);
                req_free(e->slots[i].req);
            }
        }
    }
    for (unsigned i = 0; e->slots && i < e->cfg.parallel; i++) {
        if (e->slots[i].easy)
            curl_easy_cleanup(e->slots[i].easy);
        free(e->slots[i].buf);
        free(e->slots[i].done);
    }
    if (e->multi)
        curl_multi_cleanup(e->multi);
    emb_req_t *lists[] = {e->ready, e->wait, e->in_head};
    for (size_t i = 0; i < 3; i++)
        while (lists[i]) {
            emb_req_t *r = lists[i];
            lists[i] = r->next;
            req_free(r);
        }
    while (e->jobs) {
        emb_job_t *j = e->jobs;
        e->jobs = j->next;
        free(j->vectors);
        free(j);
    }
    curl_slist_free_all(e->headers);
    explicit_bzero(e->cfg.key, sizeof e->cfg.key);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->done);
    free(e->slots);
    free(e->tmp);
    free(e->url);
    free(e->model);
    free(e);
    curl_global_cleanup();
}

static int emb_headers(cli_embed_t *e)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: "
                                                   "application/json");
    if (h)
        h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip */
    if (h && e->cfg.key[0]) {
        char a[CLI_EMBED_KEY_MAX + 32];
        snprintf(a, sizeof a, "Authorization: Bearer %s", e->cfg.key);
        struct curl_slist *t = curl_slist_append(h, a);
        explicit_bzero(a, sizeof a);
        if (!t)
            curl_slist_free_all(h);
        h = t;
    }
    e->headers = h;
    return h ? 0 : -1;
}

int cli_embed_open(const cli_embed_config_t *c, cli_embed_t **out, char *err,
                   size_t errlen)
{
    *out = NULL;
    if (!c->url || !*c->url)
        return kb_seterr(err, errlen, KB_EINVAL, "no --embed-url given");
    if (!c->model || !*c->model)
        return kb_seterr(err, errlen, KB_EINVAL, "no --embed-model given");
    if (!c->batch || !c->parallel || !c->timeout_ms)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "--embed-batch, --embed-parallel and "
                         "--embed-timeout-ms must be at least 1");
    if (curl_global_init(CURL_GLOBAL_DEFAULT))
        return kb_seterr(err, errlen, KB_ENET, "libcurl failed to start");
    /* A server closing a connection must not kill the program: libcurl
     * asks for SIGPIPE to be ignored when signals are off (NOSIGNAL). */
    signal(SIGPIPE, SIG_IGN);
    cli_embed_t *e = calloc(1, sizeof *e);
    if (!e) {
        curl_global_cleanup();
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    e->cfg = *c;
    e->cfg.url = e->cfg.model = e->cfg.dim_from = NULL;
    e->dim = c->dim;
    e->st.dim = c->dim;
    snprintf(e->dim_why, sizeof e->dim_why, "%s",
             c->dim_from ? c->dim_from : "as configured");
    e->rng =
        (kb_mono_us() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)e) |
        1;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->done, &ca);
    pthread_condattr_destroy(&ca);
    int rc = emb_endpoint(c->url, &e->url, err, errlen);
    e->model = strdup(c->model);
    e->slots = calloc(c->parallel, sizeof *e->slots);
    if (!rc && (!e->model || !e->slots || emb_headers(e)))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    if (rc) {
        emb_free(e);
        return rc;
    }
    e->multi = curl_multi_init();
    for (unsigned i = 0; e->multi && i < c->parallel; i++)
        if (emb_slot_init(e, &e->slots[i]))
            break;
    if (!e->multi || !e->slots[c->parallel - 1].easy ||
        pthread_create(&e->thread, NULL, emb_worker, e)) {
        emb_free(e);
        return kb_seterr(err, errlen, KB_ENET,
                         "cannot start the embedding client (libcurl or "
                         "thread)");
    }
    pthread_setname_np(e->thread, "kb-embed");
    curl_multi_setopt(e->multi, CURLMOPT_MAXCONNECTS, (long)c->parallel + 2);
    *out = e;
    return 0;
}

/* The body of one request: {"model":...,"input":[texts]}. On a text that
 * is not UTF-8, *bad is set to its position in texts (and 1-based byte). */
static int emb_body(cli_embed_t *e, const char *const *texts,
                    const size_t *lens, size_t from, size_t n, emb_buf_t *b,
                    size_t *bad, long *badbyte)
{
    if (buf_put(b, "{\"model\":", 9) ||
        buf_json_string(b, e->model, strlen(e->model)) ||
        buf_put(b, ",\"input\":[", 10))
        return -1;
    for (size_t i = from; i < from + n; i++) {
        long r =
            buf_json_string(b, texts[i], lens ? lens[i] : strlen(texts[i]));
        if (r > 0) {
            *bad = i;
            *badbyte = r;
            return 1;
        }
        if (r < 0 || (i + 1 < from + n && buf_put(b, ",", 1)))
            return -1;
    }
    return buf_put(b, "]}", 2);
}

/* The nreq requests of job j, linked from *head (*last the last one).
 * Returns 0, or KB_EINVAL / KB_ENOMEM with nothing left allocated. */
static int emb_reqs(cli_embed_t *e, emb_job_t *j, const char *const *texts,
                    const size_t *lens, size_t n, size_t nreq, emb_req_t **head,
                    emb_req_t **last, char *err, size_t errlen)
{
    emb_req_t **tail = head;
    int rc = 0;
    *head = *last = NULL;
    for (size_t k = 0; !rc && k < nreq; k++) {
        emb_req_t *r = calloc(1, sizeof *r);
        emb_buf_t b = {0};
        size_t bad = 0;
        long badbyte = 0;
        if (!r) {
            rc = -1;
            break;
        }
        *tail = *last = r;
        tail = &r->next;
        r->job = j;
        r->off = k * e->cfg.batch;
        r->n = n - r->off < e->cfg.batch ? n - r->off : e->cfg.batch;
        r->batch = e->next_batch + k;
        r->first_text = e->next_text + r->off;
        rc = emb_body(e, texts, lens, r->off, r->n, &b, &bad, &badbyte);
        r->body = b.p;
        r->body_len = b.len;
        if (rc == 1)
            kb_seterr(err, errlen, KB_EINVAL,
                      "text %zu of the job (text %llu): byte %ld is not "
                      "valid UTF-8; nothing of the job was sent",
                      bad, (unsigned long long)(e->next_text + bad), badbyte);
    }
    if (!rc)
        return 0;
    while (*head) {
        emb_req_t *r = *head;
        *head = r->next;
        req_free(r);
    }
    return rc == 1 ? KB_EINVAL
                   : kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
}

int cli_embed_submit(cli_embed_t *e, const char *const *texts,
                     const size_t *lens, size_t n, void *tag, char *err,
                     size_t errlen)
{
    size_t nreq = (n + e->cfg.batch - 1) / e->cfg.batch;
    emb_job_t *j = calloc(1, sizeof *j);
    emb_req_t *head, *last;
    if (!j)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    int rc = emb_reqs(e, j, texts, lens, n, nreq, &head, &last, err, errlen);
    if (rc) {
        free(j);
        return rc;
    }
    j->tag = tag;
    j->n = n;
    j->first_text = e->next_text;
    j->reqs = nreq;
    j->finished = nreq == 0; /* no text: only its place in the order */
    e->next_batch += nreq;
    e->next_text += n;
    pthread_mutex_lock(&e->mu);
    if (e->jobs_tail)
        e->jobs_tail->next = j;
    else
        e->jobs = j;
    e->jobs_tail = j;
    e->pending++;
    if (head) {
        if (e->in_tail)
            e->in_tail->next = head;
        else
            e->in_head = head;
        e->in_tail = last;
    }
    e->st.jobs++;
    e->st.texts += n;
    pthread_mutex_unlock(&e->mu);
    if (head)
        curl_multi_wakeup(e->multi);
    return 0;
}

size_t cli_embed_pending(cli_embed_t *e)
{
    pthread_mutex_lock(&e->mu);
    size_t n = e->pending;
    pthread_mutex_unlock(&e->mu);
    return n;
}

int cli_embed_next(cli_embed_t *e, int wait_ms, cli_embed_result_t *out,
                   char *err, size_t errlen)
{
    struct timespec dl;
    if (wait_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += wait_ms / 1000;
        dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&e->mu);
    if (!e->jobs) {
        pthread_mutex_unlock(&e->mu);
        return kb_seterr(err, errlen, KB_EINVAL, "no embedding job is pending");
    }
    while (!e->jobs->finished) {
        if (wait_ms == 0 ||
            (wait_ms > 0 &&
             pthread_cond_timedwait(&e->done, &e->mu, &dl) == ETIMEDOUT &&
             !e->jobs->finished)) {
            pthread_mutex_unlock(&e->mu);
            return -EAGAIN;
        }
        if (wait_ms < 0)
            pthread_cond_wait(&e->done, &e->mu);
    }
    emb_job_t *j = e->jobs;
    e->jobs = j->next;
    if (!e->jobs)
        e->jobs_tail = NULL;
    e->pending--;
    pthread_mutex_unlock(&e->mu);
    int rc = j->rc;
    out->tag = j->tag;
    out->n = j->n;
    out->dim = j->dim;
    out->vectors = rc ? NULL : j->vectors;
    out->first_text = j->first_text;
    out->failed_from = rc ? j->rc_off : 0;
    out->failed_n = rc ? j->rc_n : 0;
    if (rc)
        kb_seterr(err, errlen, rc, "%s", j->err);
    free(j);
    return rc;
}

void cli_embed_stats(cli_embed_t *e, cli_embed_stats_t *out)
{
    pthread_mutex_lock(&e->mu);
    *out = e->st;
    pthread_mutex_unlock(&e->mu);
}

void cli_embed_close(cli_embed_t **ep)
{
    cli_embed_t *e = ep ? *ep : NULL;
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = 1;
    pthread_mutex_unlock(&e->mu);
    curl_multi_wakeup(e->multi);
    pthread_join(e->thread, NULL);
    emb_free(e);
    *ep = NULL;
}

int cli_embed_one(const cli_embed_config_t *c, const char *text, float **vec,
                  uint32_t *dim, char *err, size_t errlen)
{
    cli_embed_config_t one = *c;
    cli_embed_t *e;
    cli_embed_result_t r;
    one.parallel = 1;
    *vec = NULL;
    int rc = cli_embed_open(&one, &e, err, errlen);
    if (!rc)
        rc = cli_embed_submit(e, &text, NULL, 1, NULL, err, errlen);
    if (!rc)
        rc = cli_embed_next(e, -1, &r, err, errlen);
    if (!rc) {
        *vec = r.vectors;
        *dim = r.dim;
    }
    cli_embed_close(&e);
    return rc;
}

/* ======================================================= command line */

static uint32_t opt_uint(const char *opt, const char *val, uint32_t min,
                         uint32_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-' || v < min || v > max) {
        fprintf(stderr,
                "kbsync: %s needs a whole number from %u to %u, not \"%s\"\n",
                opt, min, max, val);
        exit(2);
    }
    return (uint32_t)v;
}

/* Checks and stores a bearer token; exits with a message naming where it
 * came from when it is empty, too long or holds control characters. */
static void set_key(cli_embed_config_t *cfg, const char *k, size_t n,
                    const char *from)
{
    while (n && (k[n - 1] == '\n' || k[n - 1] == '\r' || k[n - 1] == ' ' ||
                 k[n - 1] == '\t'))
        n--;
    const char *bad = NULL;
    if (n == 0)
        bad = "is empty";
    else if (n >= sizeof cfg->key)
        bad = "is longer than 511 bytes";
    for (size_t i = 0; !bad && i < n; i++)
        if ((unsigned char)k[i] < 0x20 || k[i] == 0x7f)
            bad = "holds a control character (line break?)";
    if (bad) {
        fprintf(stderr, "kbsync: the embedding key from %s %s\n", from, bad);
        exit(2);
    }
    memcpy(cfg->key, k, n);
    cfg->key[n] = 0;
}

static void read_key_file(cli_embed_config_t *cfg, const char *path)
{
    char buf[CLI_EMBED_KEY_MAX + 2], from[300];
    snprintf(from, sizeof from, "--embed-key-file %.250s", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "kbsync: cannot read %s: %s\n", from, strerror(errno));
        exit(2);
    }
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *nl = memchr(buf, '\n', n); /* the first line is the key */
    if (nl)
        n = (size_t)(nl - buf);
    set_key(cfg, buf, n, from);
    explicit_bzero(buf, sizeof buf);
}

int cli_embed_option(int c, const char *arg, cli_embed_config_t *cfg)
{
    switch (c) {
    case CLI_OPT_EMBED_URL: cfg->url = arg; return 1;
    case CLI_OPT_EMBED_MODEL: cfg->model = arg; return 1;
    case CLI_OPT_EMBED_KEY_FILE: read_key_file(cfg, arg); return 1;
    case CLI_OPT_EMBED_BATCH:
        cfg->batch = opt_uint("--embed-batch", arg, 1, 100000);
        return 1;
    case CLI_OPT_EMBED_PARALLEL:
        cfg->parallel = opt_uint("--embed-parallel", arg, 1, 256);
        return 1;
    case CLI_OPT_EMBED_RETRIES:
        cfg->retries = opt_uint("--embed-retries", arg, 0, 1000);
        return 1;
    case CLI_OPT_EMBED_TIMEOUT:
        cfg->timeout_ms = opt_uint("--embed-timeout-ms", arg, 1, 86400000);
        return 1;
    default: return 0;
    }
}

int cli_embed_finish(cli_embed_config_t *cfg)
{
    if (!cfg->url && !cfg->model)
        return 0;
    if (!cfg->url || !cfg->model || !*cfg->url || !*cfg->model) {
        fprintf(stderr, "kbsync: --embed-url and --embed-model go together "
                        "(the server, and the model it should use)\n");
        exit(2);
    }
    if (strncmp(cfg->url, "http://", 7) && strncmp(cfg->url, "https://", 8)) {
        fprintf(stderr,
                "kbsync: --embed-url must start with http:// or https://, "
                "not \"%s\"\n",
                cfg->url);
        exit(2);
    }
    const char *k = getenv("KBSYNC_EMBED_KEY");
    if (!cfg->key[0] && k && *k)
        set_key(cfg, k, strlen(k), "KBSYNC_EMBED_KEY");
    return 1;
}
