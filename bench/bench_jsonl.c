/* bench_jsonl: how fast kb_jsonl_next() reads ingest files. Writes N records
 * shaped like Python json.dumps output (a 384-float unit vector as "%.17g",
 * ~300 bytes of text with escapes, small metadata) to a temp file, times full
 * passes over it (file in the page cache) and prints records/s and MB/s.
 * Removes the file. Usage: bench_jsonl [records=20000] [passes=3] */
#include "kb_json.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DIM 384

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* xorshift64*: deterministic values for a reproducible file. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static const char *const words[] = {
    "replica", "vector", "index",     "document",  "query",  "leader",
    "stream",  "offset", "commit",    "embedding", "search", "store",
    "the",     "of",     "knowledge", "base",      "sync",   "chunk"};

/* Writes n records to f. Returns 0 or -errno. */
static int write_records(FILE *f, long n)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
    float v[DIM];
    for (long i = 0; i < n; i++) {
        fprintf(f, "{\"id\": \"doc-%ld\", \"text\": \"", i);
        /* ~300 bytes of words, then escapes as json.dumps writes them. */
        for (int len = 0; len < 300;)
            len += fprintf(f, "%s ",
                           words[rnd(&s) % (sizeof words / sizeof *words)]);
        fputs("\\\"quoted\\\"\\n\", \"embedding\": [", f);
        /* A unit vector of float32 values widened to double, as numpy ->
         * Python gives: repr has ~17 digits, like 0.012345678901234567. */
        double norm = 0;
        for (int j = 0; j < DIM; j++) {
            v[j] = (float)((double)(rnd(&s) >> 11) / 9007199254740992.0 - 0.5);
            norm += (double)v[j] * v[j];
        }
        for (int j = 0; j < DIM; j++)
            fprintf(f, j ? ", %.17g" : "%.17g",
                    (double)(v[j] / (float)sqrt(norm)));
        fprintf(f,
                "], \"metadata\": {\"source\": \"bench/%ld.md\", "
                "\"chunk\": %ld, \"tags\": [\"a\", \"b\"]}}\n",
                i / 10, i % 10);
    }
    return ferror(f) ? -EIO : 0;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 20000;
    int passes = argc > 2 ? atoi(argv[2]) : 3;
    if (n <= 0 || passes <= 0) {
        fprintf(stderr, "usage: %s [records=20000] [passes=3]\n", argv[0]);
        return 2;
    }
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/bench_jsonl.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    FILE *f = fdopen(fd, "w");
    if (!f || write_records(f, n) != 0 || fclose(f) != 0) {
        perror("writing records");
        unlink(path);
        return 1;
    }
    struct stat st;
    stat(path, &st);
    double mb = (double)st.st_size / 1e6;
    printf("file: %ld records, %.1f MB (%.0f bytes/record)\n", n, mb,
           (double)st.st_size / (double)n);

    int status = 0;
    double best = 0;
    for (int p = 0; p < passes && status == 0; p++) {
        kb_jsonl_t *r;
        int rc = kb_jsonl_open(path, &r);
        if (rc != 0) {
            fprintf(stderr, "kb_jsonl_open: %d\n", rc);
            status = 1;
            break;
        }
        long got = 0;
        double sum = 0;
        kb_jsonl_rec_t rec;
        double t0 = now_s();
        while ((rc = kb_jsonl_next(r, &rec)) == 1) {
            got++;
            sum += rec.embedding_len ? rec.embedding[rec.embedding_len - 1] : 0;
        }
        double dt = now_s() - t0;
        if (rc != 0 || got != n) {
            fprintf(stderr, "pass %d: rc %d after %ld records: %s\n", p, rc,
                    got, kb_jsonl_error(r));
            status = 1;
        }
        kb_jsonl_close(&r);
        printf("pass %d: %.3f s, %.0f records/s, %.0f MB/s (checksum %.3f)\n",
               p + 1, dt, (double)got / dt, mb / dt, sum);
        if (dt > 0 && (double)got / dt > best)
            best = (double)got / dt;
    }
    if (status == 0)
        printf("best: %.0f records/s, %.0f MB/s\n", best,
               best * (double)st.st_size / (double)n / 1e6);
    unlink(path);
    return status;
}
