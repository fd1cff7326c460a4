/* bench_write: latency of single-document durable writes, as a client sees
 * them: one upsert of one 384-float document (+ ~300 bytes of text) at a
 * time, each waiting for its acknowledgement (closed loop, one client).
 * usage: bench_write ENDPOINT [N=2000] [dim=384] [id-prefix=w]
 * [mode=default|async|all|majority|quorum:K] */
#include "bench_common.h"
#include "kb_util.h"
#include "qry_client.h"
#include "repl_leader.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_write ENDPOINT [N] [dim] [prefix]\n");
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 2000;
    int dim = argc > 3 ? atoi(argv[3]) : 384;
    const char *prefix = argc > 4 ? argv[4] : "w";
    const char *mode = argc > 5 ? argv[5] : "default";
    Kbsync__WriteMode wm = KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT;
    uint32_t quorum = 0;
    char err[512];
    repl_mode_t rm;
    if (strcmp(mode, "default")) {
        if (repl_mode_parse(mode, &rm, &quorum, err, sizeof err)) {
            fprintf(stderr, "bench_write: %s\n", err);
            return 2;
        }
        wm = rm == REPL_ALL        ? KBSYNC__WRITE_MODE__WRITE_MODE_ALL
             : rm == REPL_QUORUM   ? KBSYNC__WRITE_MODE__WRITE_MODE_QUORUM
             : rm == REPL_MAJORITY ? KBSYNC__WRITE_MODE__WRITE_MODE_MAJORITY
                                   : KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
    }
    qry_client_t *c;
    if (qry_client_open(argv[1], &c, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    float *v = malloc(sizeof(float) * (size_t)dim);
    double *lat = malloc(sizeof(double) * (size_t)n);
    char id[64], text[400];
    int warm = n / 20 + 5;
    for (int i = -warm; i < n; i++) {
        bench_vector(7, (uint64_t)(i + warm), dim, v);
        bench_text((uint64_t)(i + warm), text, 300);
        snprintf(id, sizeof id, "%s-%d", prefix, i + warm);
        Kbsync__Doc d = KBSYNC__DOC__INIT;
        Kbsync__Doc *dp = &d;
        d.id = id;
        d.text = text;
        d.embedding = v;
        d.n_embedding = (size_t)dim;
        Kbsync__UpsertRequest u = KBSYNC__UPSERT_REQUEST__INIT;
        u.docs = &dp;
        u.n_docs = 1;
        u.mode = wm;
        u.quorum = quorum;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_UPSERT;
        req.upsert = &u;
        Kbsync__Response *r;
        uint64_t t0 = kb_mono_us();
        if (qry_client_call(c, &req, 10000, &r, err, sizeof err) || r->error) {
            fprintf(stderr, "write %d failed: %s\n", i,
                    r && r->error ? r->error->message : err);
            return 1;
        }
        uint64_t t1 = kb_mono_us();
        kbsync__response__free_unpacked(r, NULL);
        if (i >= 0)
            lat[i] = (double)(t1 - t0) / 1000.0;
    }
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += lat[i];
    double mean = sum / n;
    double p50 = bench_pct(lat, (size_t)n, 50),
           p99 = bench_pct(lat, (size_t)n, 99);
    double p999 = bench_pct(lat, (size_t)n, 99.9), max = lat[n - 1];
    printf("single-doc durable write (mode %s), %d writes, dim %d: p50 %.3f ms "
           " p99 %.3f ms  "
           "p99.9 %.3f ms  max %.3f ms  mean %.3f ms\n",
           mode, n, dim, p50, p99, p999, max, mean);
    qry_client_close(&c);
    free(v);
    free(lat);
    return 0;
}
