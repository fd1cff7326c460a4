/* idx_embed: the built-in deterministic text embedder. In: UTF-8 text. Out:
 * an L2-normalised float vector of the knowledge base's dimension. It hashes
 * lower-cased words and their character trigrams into `dim` signed buckets
 * (feature hashing). It is LEXICAL, not semantic: texts score high when they
 * share words or word pieces, not when they mean the same thing. No state. */
#ifndef IDX_EMBED_H
#define IDX_EMBED_H

#include <stddef.h>
#include <stdint.h>

/* Name stored with a knowledge base; changes whenever the output changes. */
#define IDX_EMBED_NAME "kb-lexical-v1"

/* Writes dim floats to out (caller-allocated, dim >= 1). Text with no word
 * characters gives the zero vector. Returns 0, or KB_EINVAL for dim == 0. */
int idx_embed_text(const char *text, size_t len, float *out, uint32_t dim);

/* 1 when text[0..len) holds a word character (an ASCII letter or digit, or
 * any non-ASCII byte): what idx_embed_text needs to give a non-zero vector.
 * A node refuses a text without one (KB_EINVAL), and `kbsync ingest` leaves
 * out chunks without one. */
int idx_embed_has_words(const char *text, size_t len);

#endif
