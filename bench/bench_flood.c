/* bench_flood: a client that never reads its answers (issue #10): it sends
 * N queries (k results each, by a vector of ones) as fast as it can on one
 * DEALER socket, then keeps the connection open, unread, for HOLD seconds.
 * With large documents each answer is megabytes; the node must bound what
 * it keeps for this client (--max-client-queue-mb).
 * usage: bench_flood ENDPOINT N K DIM HOLD_SECONDS */
#include "kbsync.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zmq.h>

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: bench_flood ENDPOINT N K DIM HOLD_SECONDS\n");
        return 2;
    }
    int n = atoi(argv[2]), k = atoi(argv[3]), dim = atoi(argv[4]);
    int hold = atoi(argv[5]);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    /* A small receive queue: ZeroMQ's I/O thread stops reading the
     * connection once it holds a few unread answers, as a stalled reader
     * does (a large one would buffer every answer in this process). */
    int zero = 0, big = 10000000, few = 4, rcvbuf = 65536;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_SNDHWM, &big, sizeof big);
    zmq_setsockopt(s, ZMQ_RCVHWM, &few, sizeof few);
    zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (zmq_connect(s, argv[1])) {
        fprintf(stderr, "connect: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    float *vec = malloc(sizeof(float) * (size_t)dim);
    for (int j = 0; j < dim; j++)
        vec[j] = 1.0f / (float)dim;
    uint8_t *buf = malloc(64 + sizeof(float) * (size_t)dim);
    for (int i = 0; i < n; i++) {
        Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
        q.k = (uint32_t)k;
        q.n_vector = (size_t)dim;
        q.vector = vec;
        Kbsync__Request r = KBSYNC__REQUEST__INIT;
        r.protocol_version = 1;
        r.request_id = (uint64_t)i + 1;
        r.body_case = KBSYNC__REQUEST__BODY_QUERY;
        r.query = &q;
        size_t len = kbsync__request__pack(&r, buf);
        zmq_send(s, buf, len, 0);
    }
    printf("sent %d queries (k %d); holding the connection %d s without "
           "reading\n",
           n, k, hold);
    fflush(stdout);
    sleep((unsigned)hold);
    zmq_close(s);
    zmq_ctx_term(ctx);
    free(vec);
    free(buf);
    return 0;
}
