/* cli_chunk: the pure parts of `kbsync ingest` for corpora of files,
 * private to cli/. In: command-line paths (walked into a sorted file list),
 * file bytes (checked as UTF-8 or decoded with iconv; HTML reduced to its
 * text with a map back to source offsets) and JSONL lines to explain.
 * Out: chunk spans cut by size with overlap, their content hashes, JSON
 * snippets for metadata, and "LINE:COLUMN: field: reason" diagnoses.
 * No I/O except cli_walk_* (stat/readdir); no network; no global state. */
#ifndef CLI_CHUNK_H
#define CLI_CHUNK_H

#include <stddef.h>
#include <stdint.h>

/* ================================================================ walking */

/* What a file is read as. */
enum {
    CLI_KIND_TEXT = 1,  /* plain text or Markdown, chunked as it is */
    CLI_KIND_HTML = 2,  /* HTML: text extracted, then chunked */
    CLI_KIND_JSONL = 3, /* documents, one JSON object a line */
};

typedef struct cli_file {
    char *path;    /* to open: the argument, or root "/" rel (owned) */
    char *rel;     /* the id path (owned): see cli_walk_arg */
    uint64_t size; /* bytes, from stat (0 for standard input) */
    int kind;      /* CLI_KIND_* */
    /* the rest of the walk's stat, which tells a changed file apart
     * (cli_hcache); all 0 for standard input */
    uint64_t dev, ino;
    int64_t mtime_ns, ctime_ns;
} cli_file_t;

typedef struct cli_walk {
    cli_file_t *files; /* in argument order; a directory's files sorted */
    size_t n, cap;
    uint64_t total_bytes; /* sum of files[].size */
} cli_walk_t;

/* Adds what the command-line argument arg names to w:
 * - "-": standard input, read as JSONL;
 * - a file: read as JSONL (.jsonl, .ndjson), HTML (.html, .htm) or plain
 *   text (anything else); rel is its base name;
 * - a directory: every file below it (recursively) named *.txt, *.text,
 *   *.md, *.markdown, *.html or *.htm (case-insensitive; JSONL files must
 *   be named on the command line); rel is the path relative to arg
 *   ("sub/a.md" for arg/sub/a.md). Names starting with "." are skipped,
 *   and so are symbolic links to directories (no loops); symbolic links to
 *   files are followed. A directory's files come in byte order of rel.
 * So a file's rel is the same whether its directory or the file itself is
 * named, and whatever the current directory is.
 * Returns 0, or -errno (arg or a directory below it cannot be read;
 * nothing of arg is added) or KB_ENOMEM, with the path in err. */
int cli_walk_arg(cli_walk_t *w, const char *arg, char *err, size_t errlen);

/* Checks that no two non-JSONL files share a rel (their chunk ids would
 * collide). Returns 0, or KB_EINVAL naming both paths in err. */
int cli_walk_check_unique(const cli_walk_t *w, char *err, size_t errlen);

/* Frees the list; w may be reused after. */
void cli_walk_free(cli_walk_t *w);

/* The kind of a file by its name; in_dir: as found in a directory walk,
 * where unknown extensions give 0 (skipped). */
int cli_kind_of(const char *name, int in_dir);

/* ================================================================== text */

/* 0 when s[0..n) is UTF-8 (RFC 3629: no overlong forms, surrogates or code
 * points above U+10FFFF) without a NUL byte. Otherwise KB_EINVAL with *bad
 * = offset of the first offending byte and *why = "invalid UTF-8" or "NUL
 * byte" (static text). */
int cli_utf8_check(const char *s, size_t n, size_t *bad, const char **why);

/* Line (from 1) and byte column (from 1) of offset off in s. */
void cli_line_col(const char *s, size_t off, uint64_t *line, uint64_t *col);

/* 0 when enc is an encoding iconv can convert to UTF-8, else KB_EINVAL. */
int cli_encoding_ok(const char *enc);

/* Decodes in[0..n) from encoding enc (an iconv name: latin1, cp1252,
 * utf-16, ...) into UTF-8: *out (malloc'd, NUL-terminated, caller frees),
 * *outn bytes. Returns 0, KB_EINVAL with *bad = offset of the first byte
 * enc cannot decode (err says so), or KB_ENOMEM. */
int cli_decode(const char *enc, const char *in, size_t n, char **out,
               size_t *outn, size_t *bad, char *err, size_t errlen);

/* Text cut from a file, and where each of its bytes came from. */
typedef struct cli_seg {
    size_t out;     /* first byte of the segment in the text */
    size_t src;     /* its first byte in the source */
    size_t src_end; /* verbatim: unused; else end of the source it stands for */
    int verbatim;   /* 1: copied byte for byte, up to the next segment */
} cli_seg_t;

typedef struct cli_text {
    char *s; /* UTF-8, NUL-terminated (owned) */
    size_t n, cap;
    cli_seg_t *seg; /* ascending out; nseg 0 = the text is the source */
    size_t nseg, segcap;
} cli_text_t;

/* Extracts the text of HTML in[0..n) (UTF-8) into *t: tags dropped,
 * script and style contents and comments dropped, character references
 * decoded (numeric, and the common named ones), whitespace runs collapsed
 * to one space, block elements (p, div, h1..h6, li, tr, table, section,
 * ...) turned into paragraph breaks ("\n\n") and <br> into "\n". The text
 * is valid UTF-8 without NUL (&#0;, surrogates and code points above
 * U+10FFFF become U+FFFD). t's segments map it back to in. Returns 0 or
 * KB_ENOMEM (t is then empty). Free with cli_text_free. */
int cli_html_extract(const char *in, size_t n, cli_text_t *t);

/* Source offsets of text range [start, end) (end > start). */
size_t cli_text_src_start(const cli_text_t *t, size_t start);
size_t cli_text_src_end(const cli_text_t *t, size_t end);

void cli_text_free(cli_text_t *t);

/* ============================================================== chunking */

#define CLI_CHUNK_DEFAULT 1000u  /* --chunk-bytes */
#define CLI_OVERLAP_DEFAULT 100u /* --overlap-bytes */
#define CLI_CHUNK_MIN 32u
#define CLI_CHUNK_MAX (1u << 20) /* a document's text limit */

/* Cuts a text into chunks of at most `chunk` bytes. Each cut is made in the
 * second half of the window, at the last paragraph break (a blank line)
 * there, else the last sentence end (. ! ? or 。！？ followed by white
 * space), else the last line end, else the last white space, else the last
 * UTF-8 character boundary. The next chunk starts up to `overlap` bytes
 * before the cut: at the first sentence start in that stretch, else its
 * first word start, else its first character boundary. Chunks are trimmed
 * of white space at both ends; white-space-only stretches give none.
 * Spans never split a UTF-8 sequence (given valid UTF-8). Requires
 * CLI_CHUNK_MIN <= chunk and 2 * overlap < chunk (so each chunk starts
 * after the previous one). The same text and settings always give the
 * same spans. */
typedef struct cli_chunker {
    const char *s;
    size_t n, pos;
    size_t chunk, overlap;
} cli_chunker_t;

void cli_chunker_init(cli_chunker_t *c, const char *s, size_t n, size_t chunk,
                      size_t overlap);

/* Sets [*start, *end) to the next chunk and returns 1; 0 when none is left. */
int cli_chunker_next(cli_chunker_t *c, size_t *start, size_t *end);

/* ================================================================ hashing */

/* kbsync's own 128-bit hash of p[0..n) with a seed: fast, the same on every
 * host and every run, good at telling changed content apart; NOT
 * cryptographic (anyone can make two texts with one hash on purpose).
 * Changing it makes every --resume rewrite everything once. */
void cli_hash128(const void *p, size_t n, uint64_t seed, uint64_t out[2]);

/* The settings a chunk's hash covers besides its text. */
typedef struct cli_chunk_params {
    size_t chunk, overlap; /* --chunk-bytes, --overlap-bytes */
    size_t start, end;     /* the chunk's source byte offsets */
    /* Anything else that changes what is stored for the same text, e.g. a
     * client-side embedding model's name; "" when none. Borrowed. */
    const char *salt;
} cli_chunk_params_t;

/* The chunk's 128-bit content hash: over its text and the params (so a
 * chunk whose text, offsets, chunking settings or salt changed gets
 * another hash). */
void cli_chunk_hash(const char *text, size_t n, const cli_chunk_params_t *p,
                    uint64_t h[2]);

/* A hash of cli_chunk_hash as stored in metadata "sha": 32 lower-case hex
 * digits (h[0] then h[1], most significant first) + NUL. */
void cli_hash_hex(const uint64_t h[2], char hex[33]);

/* cli_chunk_hash, as cli_hash_hex writes it. */
void cli_chunk_hash_hex(const char *text, size_t n, const cli_chunk_params_t *p,
                        char hex[33]);

/* ================================================================== JSON */

/* Appends s[0..n) as a JSON string (quotes included; ", \ and control
 * characters escaped) to buf[*len..cap). Returns 0, or -1 when it does not
 * fit (buf is then NUL-terminated where it stopped). */
int cli_json_str(char *buf, size_t cap, size_t *len, const char *s, size_t n);

/* What is wrong with a JSONL line, as `kbsync ingest` reads records:
 * {"id": string or integer, "text": string, "embedding": [numbers],
 * "metadata": object or null}, "id" required, no other key. */
typedef struct cli_json_diag {
    uint64_t col;   /* byte column from 1 */
    char field[80]; /* "id", "text", "embedding[3]", "metadata", "record" */
    char why[160];  /* e.g. "must be a string, not a number" */
} cli_json_diag_t;

/* Checks line[0..n) (without its newline); returns 1 and fills *d at the
 * first problem, 0 when the line is a valid record. */
int cli_jsonl_diag(const char *line, size_t n, cli_json_diag_t *d);

/* Column (from 1) of the value of top-level key in the JSON object
 * line[0..n); 0 when the key is absent or the line is not an object. */
uint64_t cli_json_value_col(const char *line, size_t n, const char *key);

#endif
