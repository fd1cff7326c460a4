/* idx_filter: the metadata postings of one node, private to indexer/. In:
 * each indexed document's label and metadata JSON. Out: the labels of the
 * documents whose metadata match every key=value pair of a filter. Owns an
 * in-memory hash of "key=value" -> ascending label list, derived from the
 * store like the vector index (built at open and by background rebuilds;
 * saved in index checkpoints, idx_filter_save). Postings only grow: a label whose document was replaced
 * or deleted stays listed until the next rebuild, so callers drop labels the
 * vector index no longer holds. Not thread-safe: idx guards it with the
 * same lock as the vector index (readers share, the writer is alone). */
#ifndef IDX_FILTER_H
#define IDX_FILTER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct idx_filter idx_filter_t;

/* One condition: the document's metadata has `key` at its top level with a
 * value whose text equals `value` (kb_json_fields() says what text is). */
typedef struct idx_filter_pair {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} idx_filter_pair_t;

int idx_filter_new(idx_filter_t **out);
/* Frees; accepts NULL and sets *f to NULL. */
void idx_filter_free(idx_filter_t **f);

/* Lists label under every filterable field of the JSON object meta[0..len)
 * (len 0 = no metadata: nothing to list). Labels must come in ascending
 * order (they are LSNs). Returns 0, KB_EBADJSON or KB_ENOMEM; on failure
 * some fields may be listed (the caller rebuilds). */
int idx_filter_add(idx_filter_t *f, int64_t label, const char *meta,
                   size_t len);

/* Labels listed under every pair, ascending, in *out (malloc'd, the caller
 * frees; NULL when none) and their count in *n. Returns 0 or KB_ENOMEM. */
int idx_filter_match(const idx_filter_t *f, const idx_filter_pair_t *pairs,
                     size_t npairs, int64_t **out, size_t *n);

/* Upper bound of idx_filter_match's count, in O(npairs) (the shortest
 * posting's length). */
size_t idx_filter_estimate(const idx_filter_t *f,
                           const idx_filter_pair_t *pairs, size_t npairs);

/* Writes the postings' labels <= max_label (postings left empty are
 * skipped) to out, borrowed. Only reads f. Returns 0 or -EIO. */
int idx_filter_save(const idx_filter_t *f, int64_t max_label, FILE *out);

/* Reads postings written by idx_filter_save() from in. Disk bytes are
 * checked (sizes, ascending labels, no pair twice). Returns 0 and sets
 * *out, or KB_ECORRUPT (truncated or inconsistent), KB_ENOMEM. */
int idx_filter_load(FILE *in, idx_filter_t **out);

/* Memory held, in bytes. */
uint64_t idx_filter_bytes(const idx_filter_t *f);

#endif
