/* idx_embed: feature-hashing text embedder (see idx_embed.h for what it is
 * and is not). Words are maximal runs of ASCII letters/digits or non-ASCII
 * bytes, lower-cased; each word adds weight 1 to its own bucket and 0.5 to the
 * bucket of each trigram of "^word$", with a hash-chosen sign so collisions
 * cancel on average. Buckets are then damped (sign * log1p|x|) and the vector
 * is L2-normalised. */
#include "idx_embed.h"

#include "kb_err.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

#define EMBED_MAX_WORD 64 /* longer words are cut: keeps trigrams bounded */

#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

/* Damped bucket values log1p(k / 2) for k < EMBED_LOG_TABLE: every bucket
 * is a sum of +-1 and +-0.5, so it is a multiple of 0.5 and almost always
 * small. The table holds log1pf's own results (the embedding is the same
 * as computing each one) and saves most of the 384 log1pf calls a text
 * would cost. */
#define EMBED_LOG_TABLE 1024
static float embed_log1p_half[EMBED_LOG_TABLE];
static pthread_once_t embed_log_once = PTHREAD_ONCE_INIT;

static void embed_log_init(void)
{
    for (int k = 0; k < EMBED_LOG_TABLE; k++)
        embed_log1p_half[k] = log1pf((float)k / 2.0f);
}

/* splitmix64's avalanche step, after FNV-1a */
static inline uint64_t embed_mix(uint64_t h)
{
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* FNV-1a with a final avalanche step, seeded per feature kind so that a
 * word and an equal-looking trigram do not collide: seed 1 for words... */
static uint64_t embed_hash_word(const unsigned char *p, size_t n)
{
    uint64_t h = FNV_BASIS ^ 1;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return embed_mix(h);
}

/* ... and seed 2 for trigrams (the same function, unrolled) */
static inline uint64_t embed_hash_trigram(const unsigned char *p)
{
    uint64_t h = FNV_BASIS ^ 2;
    h = (h ^ p[0]) * FNV_PRIME;
    h = (h ^ p[1]) * FNV_PRIME;
    h = (h ^ p[2]) * FNV_PRIME;
    return embed_mix(h);
}

/* Adds w to the hash's bucket, negated when its top bit is set. The sign
 * is flipped on the float's bits: a branch here is a coin toss that the
 * processor mispredicts half the time (it cost a third of the embedder). */
static inline void embed_add(float *out, uint32_t dim, uint64_t h, float w)
{
    uint32_t b = (uint32_t)((h & 0xffffffffu) % dim);
    uint32_t bits;
    memcpy(&bits, &w, sizeof bits);
    bits ^= (uint32_t)(h >> 63) << 31;
    memcpy(&w, &bits, sizeof w);
    out[b] += w;
}

static int is_word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c >= 0x80;
}

int idx_embed_has_words(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (is_word_byte((unsigned char)text[i]))
            return 1;
    return 0;
}

static void embed_word(float *out, uint32_t dim, const unsigned char *w,
                       size_t n)
{
    unsigned char buf[EMBED_MAX_WORD + 2];
    if (n > EMBED_MAX_WORD)
        n = EMBED_MAX_WORD;
    buf[0] = '^';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = w[i];
        buf[i + 1] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
    }
    buf[n + 1] = '$';
    embed_add(out, dim, embed_hash_word(buf + 1, n), 1.0f);
    for (size_t i = 0; i + 3 <= n + 2; i++)
        embed_add(out, dim, embed_hash_trigram(buf + i), 0.5f);
}

int idx_embed_text(const char *text, size_t len, float *out, uint32_t dim)
{
    if (dim == 0)
        return KB_EINVAL;
    pthread_once(&embed_log_once, embed_log_init);
    memset(out, 0, sizeof(float) * dim);
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        while (i < len && !is_word_byte(p[i]))
            i++;
        size_t start = i;
        while (i < len && is_word_byte(p[i]))
            i++;
        if (i > start)
            embed_word(out, dim, p + start, i - start);
    }
    double norm = 0;
    for (uint32_t j = 0; j < dim; j++) {
        float x = out[j];
        float a = fabsf(x), k = a * 2.0f, y;
        if (k < (float)EMBED_LOG_TABLE && (float)(int)k == k)
            y = embed_log1p_half[(int)k];
        else
            y = log1pf(a);
        y = copysignf(y, x); /* buckets are never -0: no zero is added */
        out[j] = y;
        norm += (double)y * y;
    }
    if (norm > 0) {
        float inv = (float)(1.0 / sqrt(norm));
        for (uint32_t j = 0; j < dim; j++)
            out[j] *= inv;
    }
    return 0;
}
