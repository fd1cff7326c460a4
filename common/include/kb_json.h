/* kb_json: JSON parsing for kbsync, a C interface over simdjson (C++).
 * In: JSONL files of documents (ingest), JSON float arrays (--vector) and
 * metadata objects. Out: borrowed views of ids, texts, float embeddings.
 * State: one reader per file; no globals. Output JSON is built with cJSON
 * by the callers, not here. */
#ifndef KB_JSON_H
#define KB_JSON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One JSONL record: {"id": "...", "text": "...", "embedding": [...],
 * "metadata": {...}}. "id" is required (a string, or an integer which is
 * given back as its decimal text); the others are optional; any other key is
 * an error. All pointers are borrowed from the reader and are valid only
 * until the next kb_jsonl_next() or kb_jsonl_close() on it. Strings are not
 * NUL-terminated; use the lengths. */
typedef struct kb_jsonl_rec {
    const char *id;
    size_t id_len;
    const char *text; /* "" when absent */
    size_t text_len;
    const float *embedding; /* NULL when absent; values converted to float */
    size_t embedding_len;
    const char *metadata; /* minified JSON object text; NULL when absent/null */
    size_t metadata_len;
    uint64_t line; /* 1-based line number in the file */
} kb_jsonl_rec_t;

typedef struct kb_jsonl kb_jsonl_t;

/* Opens PATH for reading records ("-" reads standard input).
 * Returns 0 and sets *out, or a negative code (-errno for I/O errors). */
int kb_jsonl_open(const char *path, kb_jsonl_t **out);

/* As kb_jsonl_open, reading `chunk` bytes at a time (0 = the default,
 * 1 MiB, measured fastest; else KB_JSONL_CHUNK_MIN..KB_JSONL_CHUNK_MAX, or
 * KB_EINVAL). A line longer than the chunk grows the buffer. */
#define KB_JSONL_CHUNK_MIN 64u
#define KB_JSONL_CHUNK_MAX (1u << 30)
int kb_jsonl_open_chunk(const char *path, size_t chunk, kb_jsonl_t **out);

/* Reads the next record into *rec. Blank lines are skipped.
 * Returns 1 when a record was read, 0 at end of file, or KB_EBADJSON /
 * KB_ETOOBIG / -errno on error; kb_jsonl_error() then says
 * "FILE:LINE: what was wrong". After an error the reader stays at the
 * failing line: calling kb_jsonl_next() again goes on with the next line. */
int kb_jsonl_next(kb_jsonl_t *r, kb_jsonl_rec_t *rec);

/* Text of the last error of this reader; borrowed, valid until the next
 * call on the reader. "" when there was none. */
const char *kb_jsonl_error(const kb_jsonl_t *r);

/* Closes the reader; accepts NULL and sets *r to NULL. */
void kb_jsonl_close(kb_jsonl_t **r);

/* Parses a JSON array of numbers ("[0.1, 2, -3e-2]") into out[0..cap).
 * Sets *n to the count. Returns 0, KB_EBADJSON (not an array of numbers),
 * KB_ETOOBIG (more than cap elements). err (may be NULL) receives a
 * NUL-terminated reason of at most errlen bytes. */
int kb_json_parse_floats(const char *s, size_t len, float *out, size_t cap,
                         size_t *n, char *err, size_t errlen);

/* Checks that s[0..len) is one well-formed JSON object and nothing else.
 * Returns 0 or KB_EBADJSON with a reason in err (as above). */
int kb_json_check_object(const char *s, size_t len, char *err, size_t errlen);

/* Receives one filterable field of a metadata object: its key and one
 * value as text (a string unescaped; a number, true or false as minified
 * JSON). Neither is NUL-terminated; both are borrowed for the call. A
 * non-zero return stops the walk and is returned. */
typedef int (*kb_json_field_cb)(void *ctx, const char *key, size_t key_len,
                                const char *val, size_t val_len);

/* Calls cb for each top-level field of the JSON object s[0..len) whose
 * value is a string, number or boolean, and once per such element of a
 * top-level array; null, nested objects and nested arrays are skipped.
 * Returns 0, KB_EBADJSON (not an object), -ENOMEM, or cb's value. */
int kb_json_fields(const char *s, size_t len, kb_json_field_cb cb, void *ctx);

/* The value of top-level field key[0..key_len) of the JSON object
 * s[0..len), as minified JSON text (a string keeps its quotes) in a malloc'd,
 * NUL-terminated *out of *out_len bytes; the caller frees it. An absent key
 * leaves *out NULL. Returns 0, KB_EBADJSON (not an object) or -ENOMEM. */
int kb_json_value(const char *s, size_t len, const char *key, size_t key_len,
                  char **out, size_t *out_len);

#ifdef __cplusplus
}
#endif
#endif
