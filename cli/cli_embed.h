/* cli_embed: the client of the user's embedding model server, private to
 * cli/. In: texts from `kbsync ingest` and `kbsync query`, in jobs. Out: one
 * float vector per text from an OpenAI-compatible POST /v1/embeddings,
 * jobs handed back whole and in the order they were submitted. State: one
 * handle = one worker thread with up to `parallel` HTTP requests in flight
 * (libcurl multi), the job queue, the learned dimension and counters.
 *
 * Typical use (ingest): open; then loop { while pending < window: submit a
 * job of texts; next (waits for the oldest job); write its vectors; free
 * them }; close. A job of n texts is sent as ceil(n / batch) requests. */
#ifndef CLI_EMBED_H
#define CLI_EMBED_H

#include <stddef.h>
#include <stdint.h>

/* Defaults of the settings below (and of the --embed-* options). */
#define CLI_EMBED_BATCH 64         /* texts per request */
#define CLI_EMBED_PARALLEL 4       /* requests in flight */
#define CLI_EMBED_RETRIES 5        /* attempts after the first, per request */
#define CLI_EMBED_TIMEOUT_MS 60000 /* per attempt */
#define CLI_EMBED_BACKOFF_MS 250   /* delay before the first retry */
#define CLI_EMBED_BACKOFF_MAX_MS 20000
#define CLI_EMBED_RETRY_AFTER_MAX_MS 120000 /* longest Retry-After obeyed */
#define CLI_EMBED_MAX_DIM 65536u            /* longer vectors are refused */
#define CLI_EMBED_KEY_MAX 512 /* bytes of the bearer token + NUL */

typedef struct cli_embed_config {
    /* "http://host:port", ".../v1" or the full ".../v1/embeddings"
     * (borrowed; copied by cli_embed_open) */
    const char *url;
    const char *model;           /* the "model" field (borrowed; copied) */
    char key[CLI_EMBED_KEY_MAX]; /* bearer token; "" = no Authorization */
    uint32_t batch;              /* texts per request, >= 1 */
    uint32_t parallel;           /* requests in flight, >= 1 */
    uint32_t retries;            /* 0 = one attempt only */
    uint32_t timeout_ms;         /* whole attempt, connect included */
    uint32_t backoff_ms;         /* first retry delay; doubles each time */
    uint32_t backoff_max_ms;     /* cap of the doubling */
    /* Expected vector length, e.g. the knowledge base's dim from the
     * node's status; 0 = whatever the first answer has (the first request
     * then goes alone, so "first" is batch 0 and never a race). */
    uint32_t dim;
    /* where dim came from, for messages: "the knowledge base at EP"
     * (borrowed; copied by cli_embed_open) */
    const char *dim_from;
} cli_embed_config_t;

/* Fills c with the defaults above and no url, model, key or dim. */
void cli_embed_config_init(cli_embed_config_t *c);

typedef struct cli_embed cli_embed_t;

/* Checks the settings, builds the endpoint URL and starts the worker
 * thread. Sets *out. Returns 0, or KB_EINVAL (no or bad URL, no model,
 * batch/parallel 0), KB_ENOMEM, KB_ENET (libcurl or the thread could not
 * start), with the reason in err. Nothing is sent before the first
 * cli_embed_submit. Ignores SIGPIPE for the whole process from then on (a
 * server closing a connection must not kill the program). */
int cli_embed_open(const cli_embed_config_t *c, cli_embed_t **out, char *err,
                   size_t errlen);

/* Queues a job of n texts (texts[i], lens[i] bytes; lens NULL: NUL-
 * terminated). The texts are copied (as request bodies) before it returns;
 * tag is handed back by cli_embed_next and is never dereferenced. n may be
 * 0: the job then only keeps its place in the order (say, a batch of
 * documents that all carry vectors, behind batches still being embedded).
 * Returns 0, or KB_EINVAL (a text that is not valid UTF-8: named by its
 * position in the job and the byte) or KB_ENOMEM; then nothing was queued.
 * Any thread that owns the handle (one at a time). */
int cli_embed_submit(cli_embed_t *e, const char *const *texts,
                     const size_t *lens, size_t n, void *tag, char *err,
                     size_t errlen);

/* Jobs submitted and not yet taken by cli_embed_next. */
size_t cli_embed_pending(cli_embed_t *e);

typedef struct cli_embed_result {
    void *tag;    /* as given to cli_embed_submit */
    size_t n;     /* texts in the job */
    uint32_t dim; /* floats per vector */
    /* n * dim floats, text i's vector at vectors + i * dim; owned by the
     * caller, who frees it with free(). NULL when the job failed. */
    float *vectors;
    uint64_t first_text; /* position of the job's first text among all the
                            texts submitted on this handle, from 0 */
    /* When the job failed: the failed batch's texts are the job's
     * [failed_from, failed_from + failed_n) (0 and 0 otherwise). */
    size_t failed_from, failed_n;
} cli_embed_result_t;

/* Waits up to wait_ms (< 0: for ever) for the oldest job and takes it.
 * Returns 0 with *out filled (vectors NULL for a job of 0 texts); -EAGAIN when
 * it is not finished in time (nothing taken; *out untouched); KB_EINVAL when no
 * job is pending; or the job's error, which takes the job (out->tag and out->n
 * set, out->vectors NULL): err then names the batch and its texts, e.g.
 * "embedding batch 12 (texts 768..831): server returned 63 vectors for 64
 * texts". Job errors: KB_ENET (HTTP error status, or no connection after the
 * retries), KB_ETIMEOUT (every attempt timed out), KB_EACCES (401/403),
 * KB_ETOOBIG (413, or an answer over 1 GiB), KB_EBADJSON (not JSON), KB_EBADMSG
 * (JSON of the wrong shape: vector count, indexes, types), KB_EDIM (a vector
 * length other than the expected one), KB_ENONFINITE (NaN or infinity),
 * KB_ENOMEM. Later jobs are not affected by a failed one. */
int cli_embed_next(cli_embed_t *e, int wait_ms, cli_embed_result_t *out,
                   char *err, size_t errlen);

typedef struct cli_embed_stats {
    uint64_t jobs, texts; /* submitted */
    uint64_t batches_ok, batches_failed;
    uint64_t attempts; /* HTTP requests sent, retries included */
    uint64_t retries;  /* attempts after a retryable failure */
    uint64_t http_429, http_5xx, conn_errors, timeouts; /* such failures */
    uint64_t bytes_sent, bytes_received;
    uint32_t peak_in_flight; /* most requests in flight at once */
    uint32_t dim;            /* expected or learned; 0 = not yet */
} cli_embed_stats_t;

/* Copies the counters (a consistent snapshot). */
void cli_embed_stats(cli_embed_t *e, cli_embed_stats_t *out);

/* Stops the worker (requests in flight are abandoned), frees every job not
 * taken (their vectors, not their tags: the caller still owns those) and
 * the handle; accepts NULL and sets *e to NULL. */
void cli_embed_close(cli_embed_t **e);

/* One text, one vector, for `kbsync query`: opens a handle, embeds text
 * with c's settings (c->dim checked when non-zero) and closes it. Sets
 * *vec (malloc'd; caller frees) and *dim. Returns as cli_embed_next. */
int cli_embed_one(const cli_embed_config_t *c, const char *text, float **vec,
                  uint32_t *dim, char *err, size_t errlen);

/* ------------------------------------------------------ command line */

/* The --embed-* options of `kbsync query` and `kbsync ingest`. */
#define CLI_OPT_EMBED_URL 1201
#define CLI_OPT_EMBED_MODEL 1202
#define CLI_OPT_EMBED_KEY_FILE 1203
#define CLI_OPT_EMBED_BATCH 1204
#define CLI_OPT_EMBED_PARALLEL 1205
#define CLI_OPT_EMBED_RETRIES 1206
#define CLI_OPT_EMBED_TIMEOUT 1207
#define CLI_EMBED_OPTIONS                                                      \
    {"embed-url", required_argument, 0, CLI_OPT_EMBED_URL},                    \
        {"embed-model", required_argument, 0, CLI_OPT_EMBED_MODEL},            \
        {"embed-key-file", required_argument, 0, CLI_OPT_EMBED_KEY_FILE},      \
        {"embed-batch", required_argument, 0, CLI_OPT_EMBED_BATCH},            \
        {"embed-parallel", required_argument, 0, CLI_OPT_EMBED_PARALLEL},      \
        {"embed-retries", required_argument, 0, CLI_OPT_EMBED_RETRIES},        \
    {                                                                          \
        "embed-timeout-ms", required_argument, 0, CLI_OPT_EMBED_TIMEOUT        \
    }
#define CLI_EMBED_USAGE                                                        \
    "          [--embed-url URL --embed-model NAME [--embed-key-file F]\n"     \
    "           [--embed-batch 64] [--embed-parallel 4] [--embed-retries 5]\n" \
    "           [--embed-timeout-ms 60000]]\n"

/* Handles option c (with its argument) when it is one of those: returns 1,
 * or exits with status 2 and a message naming the option on a bad value.
 * Returns 0 for any other option. --embed-key-file is read here. */
int cli_embed_option(int c, const char *arg, cli_embed_config_t *cfg);

/* After the options: returns 1 when embedding is asked for (--embed-url),
 * 0 when not; exits with status 2 when --embed-url and --embed-model do not
 * come together. Without --embed-key-file, the key comes from the
 * environment variable KBSYNC_EMBED_KEY when set. */
int cli_embed_finish(cli_embed_config_t *cfg);

#endif
