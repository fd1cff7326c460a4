/* bench_query: served single-query latency vs raw FAISS in-process, on the
 * same vectors. It builds, in this process, the FAISS index a node holds
 * after ingesting bench_gen's data set (same seed, same vectors, same
 * "IDMap2,Flat" index and the node's thread/BLAS settings) and times
 * idx_vec_search; then it times the same queries sent to the node over
 * ZeroMQ (`kbsync query` API: FAISS + LMDB lookup of the hits + protobuf).
 * usage: bench_query ENDPOINT [N=100000] [queries=200] [k=10] [dim=384]
 * [seed=1] */
#include "bench_common.h"
#include "idx_vec.h"
#include "kb_util.h"
#include "qry_client.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr,
                "usage: bench_query ENDPOINT [N] [queries] [k] [dim] [seed]\n");
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int nq = argc > 3 ? atoi(argv[3]) : 200;
    int k = argc > 4 ? atoi(argv[4]) : 10;
    int dim = argc > 5 ? atoi(argv[5]) : 384;
    uint64_t seed = argc > 6 ? (uint64_t)atoll(argv[6]) : 1;
    char err[512];

    idx_vec_setup(1);
    idx_vec_t *v;
    if (idx_vec_new((uint32_t)dim, "IDMap2,Flat", 1, &v, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    float *x = malloc(sizeof(float) * (size_t)dim * 10000);
    int64_t *lab = malloc(sizeof(int64_t) * 10000);
    for (long i = 0; i < n;) {
        long m = 0;
        for (; m < 10000 && i < n; m++, i++) {
            bench_vector(seed, (uint64_t)i, dim, x + m * dim);
            lab[m] = i + 1;
        }
        idx_vec_add(v, (size_t)m, x, lab, err, sizeof err);
    }
    float *q = malloc(sizeof(float) * (size_t)dim * (size_t)nq);
    for (int i = 0; i < nq; i++) /* queries near stored docs, as RAG asks */
        bench_vector(seed + 99, (uint64_t)i, dim, q + i * dim);
    float *sc = malloc(sizeof(float) * (size_t)k);
    int64_t *lb = malloc(sizeof(int64_t) * (size_t)k);
    double *raw = malloc(sizeof(double) * (size_t)nq);
    double *served = malloc(sizeof(double) * (size_t)nq);
    for (int i = 0; i < nq; i++) {
        uint64_t t0 = kb_mono_us();
        idx_vec_search(v, 1, q + i * dim, (uint32_t)k, sc, lb, err, sizeof err);
        raw[i] = (double)(kb_mono_us() - t0) / 1000.0;
    }
    idx_vec_free(&v);

    qry_client_t *c;
    if (qry_client_open(argv[1], &c, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    for (int i = -3; i < nq; i++) {
        int qi = i < 0 ? 0 : i;
        Kbsync__QueryRequest qr = KBSYNC__QUERY_REQUEST__INIT;
        qr.k = (uint32_t)k;
        qr.vector = q + qi * dim;
        qr.n_vector = (size_t)dim;
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        req.body_case = KBSYNC__REQUEST__BODY_QUERY;
        req.query = &qr;
        Kbsync__Response *r;
        uint64_t t0 = kb_mono_us();
        if (qry_client_call(c, &req, 30000, &r, err, sizeof err) || r->error) {
            fprintf(stderr, "query failed: %s\n",
                    r && r->error ? r->error->message : err);
            return 1;
        }
        if (i >= 0)
            served[i] = (double)(kb_mono_us() - t0) / 1000.0;
        if (i == 0 && r->query && r->query->state &&
            r->query->state->docs != (uint64_t)n)
            fprintf(stderr, "warning: node holds %llu docs, expected %ld\n",
                    (unsigned long long)r->query->state->docs, n);
        kbsync__response__free_unpacked(r, NULL);
    }
    qry_client_close(&c);
    double rp50 = bench_pct(raw, (size_t)nq, 50),
           rp99 = bench_pct(raw, (size_t)nq, 99);
    double sp50 = bench_pct(served, (size_t)nq, 50),
           sp99 = bench_pct(served, (size_t)nq, 99);
    printf("single query, %ld x %d flat ip, k=%d, %d queries:\n", n, dim, k,
           nq);
    printf("  raw FAISS in-process : p50 %.3f ms  p99 %.3f ms\n", rp50, rp99);
    printf("  served by kbsync     : p50 %.3f ms  p99 %.3f ms\n", sp50, sp99);
    printf("  ratio served/raw p50 : %.3f\n", sp50 / rp50);
    return 0;
}
