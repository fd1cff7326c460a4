/* idx_embed: feature-hashing text embedder (see idx_embed.h for what it is
 * and is not). Words are maximal runs of ASCII letters/digits or non-ASCII
 * bytes, lower-cased; each word adds weight 1 to its own bucket and 0.5 to the
 * bucket of each trigram of "^word$", with a hash-chosen sign so collisions
 * cancel on average. Buckets are then damped (sign * log1p|x|) and the vector
 * is L2-normalised. */
#include "idx_embed.h"

#include "kb_err.h"

#include <math.h>
#include <string.h>

#define EMBED_MAX_WORD 64 /* longer words are cut: keeps trigrams bounded */

/* FNV-1a with a final avalanche step (splitmix64's), seeded per feature kind
 * so that a word and an equal-looking trigram do not collide. */
static uint64_t embed_hash(uint64_t seed, const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static void embed_add(float *out, uint32_t dim, uint64_t h, float w)
{
    uint32_t b = (uint32_t)((h & 0xffffffffu) % dim);
    out[b] += (h >> 63) ? -w : w;
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
    embed_add(out, dim, embed_hash(1, buf + 1, n), 1.0f);
    for (size_t i = 0; i + 3 <= n + 2; i++)
        embed_add(out, dim, embed_hash(2, buf + i, 3), 0.5f);
}

int idx_embed_text(const char *text, size_t len, float *out, uint32_t dim)
{
    if (dim == 0)
        return KB_EINVAL;
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
        float y = x < 0 ? -log1pf(-x) : log1pf(x);
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
