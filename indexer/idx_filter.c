/* idx_filter: metadata postings (see idx_filter.h). An open-addressing hash
 * table keyed by the bytes "<key length:4><key><value>", each slot holding
 * an ascending array of labels. Matching walks the shortest posting and
 * looks each label up in the others by binary search. */
#include "idx_filter.h"

#include "kb_err.h"
#include "kb_json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct posting {
    char *kv; /* NULL = empty slot */
    size_t kvlen;
    uint64_t hash;
    int64_t *lab;
    size_t n, cap;
} posting_t;

struct idx_filter {
    posting_t *slot;
    size_t cap, used; /* cap is a power of two */
    uint64_t bytes;
};

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* The table key of a pair, hashed without building it. */
static uint64_t pair_hash(const char *k, size_t kl, const char *v, size_t vl)
{
    uint32_t l = (uint32_t)kl;
    uint64_t h = fnv1a(&l, sizeof l, 0xcbf29ce484222325ull);
    h = fnv1a(k, kl, h);
    return fnv1a(v, vl, h);
}

static int pair_eq(const posting_t *p, const char *k, size_t kl, const char *v,
                   size_t vl)
{
    uint32_t l;
    if (p->kvlen != sizeof l + kl + vl)
        return 0;
    memcpy(&l, p->kv, sizeof l);
    return l == kl && !memcmp(p->kv + sizeof l, k, kl) &&
           !memcmp(p->kv + sizeof l + kl, v, vl);
}

static posting_t *find(const idx_filter_t *f, const char *k, size_t kl,
                       const char *v, size_t vl, uint64_t h)
{
    if (!f->cap)
        return NULL;
    for (size_t i = h & (f->cap - 1);; i = (i + 1) & (f->cap - 1)) {
        posting_t *p = &f->slot[i];
        if (!p->kv)
            return p;
        if (p->hash == h && pair_eq(p, k, kl, v, vl))
            return p;
    }
}

static int grow(idx_filter_t *f)
{
    size_t cap = f->cap ? f->cap * 2 : 256;
    posting_t *s = calloc(cap, sizeof *s);
    if (!s)
        return KB_ENOMEM;
    for (size_t i = 0; i < f->cap; i++) {
        posting_t *p = &f->slot[i];
        if (!p->kv)
            continue;
        size_t j = p->hash & (cap - 1);
        while (s[j].kv)
            j = (j + 1) & (cap - 1);
        s[j] = *p;
    }
    free(f->slot);
    f->bytes += (cap - f->cap) * sizeof *s;
    f->slot = s;
    f->cap = cap;
    return 0;
}

int idx_filter_new(idx_filter_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : KB_ENOMEM;
}

void idx_filter_free(idx_filter_t **fp)
{
    if (!fp || !*fp)
        return;
    idx_filter_t *f = *fp;
    for (size_t i = 0; i < f->cap; i++) {
        free(f->slot[i].kv);
        free(f->slot[i].lab);
    }
    free(f->slot);
    free(f);
    *fp = NULL;
}

struct add_ctx {
    idx_filter_t *f;
    int64_t label;
};

/* The posting of a pair, made (empty) when new; NULL when out of memory. */
static posting_t *posting_make(idx_filter_t *f, const char *k, size_t kl,
                               const char *v, size_t vl)
{
    if ((f->used + 1) * 4 > f->cap * 3 && grow(f))
        return NULL;
    uint64_t h = pair_hash(k, kl, v, vl);
    posting_t *p = find(f, k, kl, v, vl, h);
    if (!p->kv) {
        uint32_t l = (uint32_t)kl;
        char *kv = malloc(sizeof l + kl + vl);
        if (!kv)
            return NULL;
        memcpy(kv, &l, sizeof l);
        memcpy(kv + sizeof l, k, kl);
        memcpy(kv + sizeof l + kl, v, vl);
        p->kv = kv;
        p->kvlen = sizeof l + kl + vl;
        p->hash = h;
        f->used++;
        f->bytes += p->kvlen;
    }
    return p;
}

static int add_field(void *ctx, const char *k, size_t kl, const char *v,
                     size_t vl)
{
    struct add_ctx *a = ctx;
    idx_filter_t *f = a->f;
    posting_t *p = posting_make(f, k, kl, v, vl);
    if (!p)
        return KB_ENOMEM;
    /* An array may repeat a value: list the label once. */
    if (p->n && p->lab[p->n - 1] >= a->label)
        return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        int64_t *l = realloc(p->lab, cap * sizeof *l);
        if (!l)
            return KB_ENOMEM;
        f->bytes += (cap - p->cap) * sizeof *l;
        p->lab = l;
        p->cap = cap;
    }
    p->lab[p->n++] = a->label;
    return 0;
}

int idx_filter_add(idx_filter_t *f, int64_t label, const char *meta,
                   size_t len)
{
    if (!len)
        return 0;
    struct add_ctx a = {f, label};
    int rc = kb_json_fields(meta, len, add_field, &a);
    return rc == -12 /* -ENOMEM */ ? KB_ENOMEM : rc;
}

static const posting_t *lookup(const idx_filter_t *f,
                               const idx_filter_pair_t *q)
{
    const posting_t *p =
        find(f, q->key, q->key_len, q->value, q->value_len,
             pair_hash(q->key, q->key_len, q->value, q->value_len));
    return p && p->kv ? p : NULL;
}

static int has_label(const posting_t *p, int64_t l)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->lab[mid] < l)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < p->n && p->lab[lo] == l;
}

int idx_filter_match(const idx_filter_t *f, const idx_filter_pair_t *pairs,
                     size_t npairs, int64_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!npairs)
        return 0;
    const posting_t *shortest = NULL;
    const posting_t **ps = malloc(npairs * sizeof *ps);
    if (!ps)
        return KB_ENOMEM;
    for (size_t i = 0; i < npairs; i++) {
        const posting_t *p = lookup(f, &pairs[i]);
        if (!p) {
            free(ps);
            return 0;
        }
        ps[i] = p;
        if (!shortest || p->n < shortest->n)
            shortest = p;
    }
    int64_t *r = malloc((shortest->n ? shortest->n : 1) * sizeof *r);
    if (!r) {
        free(ps);
        return KB_ENOMEM;
    }
    size_t m = 0;
    for (size_t j = 0; j < shortest->n; j++) {
        int64_t l = shortest->lab[j];
        size_t i = 0;
        for (; i < npairs; i++)
            if (ps[i] != shortest && !has_label(ps[i], l))
                break;
        if (i == npairs)
            r[m++] = l;
    }
    free(ps);
    *out = r;
    *n = m;
    return 0;
}

size_t idx_filter_estimate(const idx_filter_t *f,
                           const idx_filter_pair_t *pairs, size_t npairs)
{
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < npairs; i++) {
        const posting_t *p = lookup(f, &pairs[i]);
        if (!p)
            return 0;
        if (p->n < best)
            best = p->n;
    }
    return npairs ? best : 0;
}

uint64_t idx_filter_bytes(const idx_filter_t *f)
{
    return sizeof *f + f->bytes;
}

/* SAVE AND LOAD. idx_filter_save() writes u64 postings, then per posting
 * u32 key bytes (the table key "<key length:4><key><value>"), the key, u64
 * labels and the labels, ascending. */

static size_t upto(const posting_t *p, int64_t max_label)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (p->lab[mid] <= max_label)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int idx_filter_save(const idx_filter_t *f, int64_t max_label, FILE *out)
{
    uint64_t n = 0;
    for (size_t i = 0; i < f->cap; i++)
        n += f->slot[i].kv && upto(&f->slot[i], max_label) > 0;
    if (fwrite(&n, sizeof n, 1, out) != 1)
        return -EIO;
    for (size_t i = 0; i < f->cap; i++) {
        const posting_t *p = &f->slot[i];
        uint64_t m = p->kv ? upto(p, max_label) : 0;
        uint32_t kvlen = (uint32_t)p->kvlen;
        if (m && (fwrite(&kvlen, sizeof kvlen, 1, out) != 1 ||
                  fwrite(p->kv, 1, p->kvlen, out) != p->kvlen ||
                  fwrite(&m, sizeof m, 1, out) != 1 ||
                  fwrite(p->lab, sizeof *p->lab, m, out) != m))
            return -EIO;
    }
    return 0;
}

/* Reads one posting of idx_filter_save()'s format into f. */
static int load_posting(idx_filter_t *f, FILE *in, char *kv)
{
    uint32_t kvlen, kl;
    uint64_t m;
    if (fread(&kvlen, sizeof kvlen, 1, in) != 1 || kvlen < sizeof kl ||
        kvlen > sizeof kl + (1u << 20) || fread(kv, 1, kvlen, in) != kvlen)
        return KB_ECORRUPT;
    memcpy(&kl, kv, sizeof kl);
    if (kl > kvlen - sizeof kl || fread(&m, sizeof m, 1, in) != 1 || !m ||
        m > (UINT64_C(1) << 40))
        return KB_ECORRUPT;
    const char *k = kv + sizeof kl;
    posting_t *p = posting_make(f, k, kl, k + kl, kvlen - sizeof kl - kl);
    if (!p)
        return KB_ENOMEM;
    if (p->n) /* the same pair twice */
        return KB_ECORRUPT;
    if (!(p->lab = malloc(m * sizeof *p->lab)))
        return KB_ENOMEM;
    p->cap = m;
    f->bytes += m * sizeof *p->lab;
    if (fread(p->lab, sizeof *p->lab, m, in) != m)
        return KB_ECORRUPT;
    for (uint64_t j = 0; j < m; j++)
        if (p->lab[j] < 0 || (j && p->lab[j] <= p->lab[j - 1]))
            return KB_ECORRUPT;
    p->n = m;
    return 0;
}

int idx_filter_load(FILE *in, idx_filter_t **out)
{
    *out = NULL;
    uint64_t n;
    if (fread(&n, sizeof n, 1, in) != 1 || n > (UINT64_C(1) << 40))
        return KB_ECORRUPT;
    idx_filter_t *f;
    char *kv = malloc(sizeof(uint32_t) + (1u << 20));
    int rc = kv ? idx_filter_new(&f) : KB_ENOMEM;
    /* Sized once, not regrown (up to 2^26 postings: n is not checked yet). */
    while (!rc && n < (1u << 26) && (n + 1) * 4 > f->cap * 3)
        rc = grow(f);
    for (uint64_t i = 0; i < n && !rc; i++)
        rc = load_posting(f, in, kv);
    free(kv);
    if (rc)
        idx_filter_free(&f);
    *out = rc ? NULL : f;
    return rc;
}
