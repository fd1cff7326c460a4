/* node_metrics: Prometheus endpoint of a node (see node_metrics.h).
 *
 * METRIC NAMES
 * Prometheus conventions: the kbsync_ prefix, base units (seconds, bytes),
 * _total for counters, a _seconds histogram per write mode and read level.
 * Versions are LSNs (gauges); lags are given in operations and seconds, as
 * `status` gives them in ops and ms. docs/MONITORING.md lists every name.
 *
 * SLOW PEERS
 * At most METRICS_MAX_CONN connections; libmicrohttpd closes one idle for
 * 10 s, but a peer that sends one header line every few seconds is never
 * idle: 16 of them kept every scrape out. So each connection serves one
 * request (every answer says "Connection: close", so that peers that send
 * small requests over and over on one connection cannot keep it either)
 * and must be done within METRICS_REQUEST_MS of its start: a watchdog
 * thread shuts down (shutdown(2)) the socket of one that is not, and
 * libmicrohttpd then closes it. The table of sockets is
 * filled and emptied by libmicrohttpd's connection notices, under `mu`;
 * libmicrohttpd gives the CLOSED notice before it closes a socket, so the
 * watchdog never shuts down a descriptor that was closed and reused. */
#include "node_metrics.h"

#include "kb_err.h"
#include "kb_metrics.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <zmq.h>

#define METRICS_ENDPOINT "inproc://kbsync-metrics"
#define METRICS_WAIT_MS 5000
#define METRICS_MAX_CONN 16
#define METRICS_REQUEST_MS 10000 /* see SLOW PEERS */
#define METRICS_WATCH_MS 500

typedef struct mconn {
    int fd;            /* -1: free */
    uint64_t since_us; /* its start */
} mconn_t;

struct node_metrics {
    void *zctx;
    void *rep;   /* the loop's side */
    void *req;   /* the HTTP thread's side, created there */
    struct MHD_Daemon *d;
    unsigned port;
    pthread_mutex_t mu; /* conn, stop */
    pthread_cond_t cv;
    mconn_t conn[METRICS_MAX_CONN];
    int stop, watching;
    pthread_t watch;
    uint64_t cut; /* connections shut down by the watchdog */
    kb_loglimit_t log_cut;
};

/* ------------------------------------------------------------ rendering */

typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf_t;

static void put(buf_t *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void head(buf_t *b, const char *name, const char *type,
                 const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(buf_t *b, const char *name, const char *help, double v)
{
    head(b, name, "gauge", help);
    put(b, "%s %.17g\n", name, v);
}

static void counter(buf_t *b, const char *name, const char *help, double v)
{
    head(b, name, "counter", help);
    put(b, "%s %.17g\n", name, v);
}

/* A label value with \, " and newline escaped; bytes of a string that is
 * not UTF-8 (an unnamed replica may choose its id) become '?', since
 * Prometheus drops a whole page over one invalid label. */
static void label_value(buf_t *b, const char *s)
{
    int bad = kb_utf8_check(s, strlen(s)) != strlen(s);
    for (; *s; s++) {
        if (bad && (unsigned char)*s >= 0x80)
            put(b, "?");
        else if (*s == '\\' || *s == '"')
            put(b, "\\%c", *s);
        else if (*s == '\n')
            put(b, "\\n");
        else
            put(b, "%c", *s);
    }
}

/* One histogram series: buckets cumulative; scale divides bounds and sum
 * (1e6: microseconds rendered as seconds). */
static void hist(buf_t *b, const char *name, const char *label,
                 const char *lvalue, const kb_hist_t *h,
                 const uint64_t *bounds, size_t n, double scale)
{
    uint64_t cum = 0;
    char lab[96] = "";
    if (label)
        snprintf(lab, sizeof lab, "%s=\"%s\",", label, lvalue);
    for (size_t i = 0; i <= n; i++) {
        cum += atomic_load_explicit(&h->b[i], memory_order_relaxed);
        if (i < n)
            put(b, "%s_bucket{%sle=\"%.6g\"} %llu\n", name, lab,
                bounds[i] / scale, (unsigned long long)cum);
        else
            put(b, "%s_bucket{%sle=\"+Inf\"} %llu\n", name, lab,
                (unsigned long long)cum);
    }
    /* sum and count read after the buckets: a scrape racing an
     * observation may show count one above the +Inf bucket for an
     * instant, never below it */
    char l2[96] = "";
    if (label)
        snprintf(l2, sizeof l2, "{%s=\"%s\"}", label, lvalue);
    put(b, "%s_sum%s %.9g\n", name, l2,
        atomic_load_explicit(&h->sum, memory_order_relaxed) / scale);
    put(b, "%s_count%s %llu\n", name, l2,
        (unsigned long long)cum);
}

static const char *const MODE_NAME[5] = {"", "async", "all", "quorum",
                                         "majority"};
static const char *const LEVEL_NAME[5] = {"", "eventual", "bounded",
                                          "session", "strong"};

static void replica_series(buf_t *b, const Kbsync__NodeState *s,
                           const char *name, const char *type,
                           const char *help, int which)
{
    head(b, name, type, help);
    for (size_t i = 0; i < s->n_replicas; i++) {
        const Kbsync__ReplicaState *r = s->replicas[i];
        put(b, "%s{replica=\"", name);
        label_value(b, r->id);
        put(b, "\"");
        double v = 0;
        switch (which) {
        case 0: v = r->connected; break;
        case 1: v = (double)r->received_version; break;
        case 2: v = (double)r->durable_version; break;
        case 3: v = (double)r->version; break;
        case 4: v = (double)r->queued_bytes; break;
        case 5: v = r->snapshot; break;
        case 6: v = (double)r->digest_mismatches; break;
        }
        put(b, "} %.17g\n", v);
    }
}

static void replica_lags(buf_t *b, const Kbsync__NodeState *s, int secs)
{
    const char *name =
        secs ? "kbsync_replica_lag_seconds" : "kbsync_replica_lag_ops";
    head(b, name, "gauge",
         secs ? "How long the oldest write a replica has not reached this "
                "stage for has been committed on the leader."
              : "Leader writes a replica has not reached this stage for "
                "(received, durable, applied).");
    static const char *const stage[3] = {"received", "durable", "applied"};
    for (size_t i = 0; i < s->n_replicas; i++) {
        const Kbsync__ReplicaState *r = s->replicas[i];
        uint64_t ops[3] = {r->received_lag_ops, r->durable_lag_ops,
                           r->lag_ops};
        uint64_t ms[3] = {r->received_lag_ms, r->durable_lag_ms, r->lag_ms};
        for (int k = 0; k < 3; k++) {
            put(b, "%s{replica=\"", name);
            label_value(b, r->id);
            if (secs)
                put(b, "\",stage=\"%s\"} %.17g\n", stage[k], ms[k] / 1e3);
            else
                put(b, "\",stage=\"%s\"} %llu\n", stage[k],
                    (unsigned long long)ops[k]);
        }
    }
}

char *node_metrics_render(const Kbsync__NodeState *s, size_t *len)
{
    buf_t b = {malloc(16384), 0, 16384, 0};
    if (!b.p)
        return NULL;
    b.p[0] = 0;
    kb_metrics_t *m = kb_metrics();

    head(&b, "kbsync_node_info", "gauge",
         "Always 1; the node's identity and settings as labels.");
    put(&b, "kbsync_node_info{node_id=\"");
    label_value(&b, s->node_id ? s->node_id : "");
    put(&b, "\",role=\"%s\",index=\"", s->role ? s->role : "");
    label_value(&b, s->index ? s->index : "");
    put(&b, "\",metric=\"%s\",dim=\"%u\"} 1\n", s->metric ? s->metric : "",
        s->dim);
    gauge(&b, "kbsync_is_leader", "1 on the leader, 0 on a replica.",
          s->role && !strcmp(s->role, "leader"));
    gauge(&b, "kbsync_version",
          "LSN of the newest write applied (searchable) on this node.",
          (double)s->version);
    gauge(&b, "kbsync_durable_version",
          "LSN of the newest write durable in this node's store.",
          (double)s->durable_version);
    gauge(&b, "kbsync_leader_version",
          "Newest leader LSN this node knows of.",
          (double)s->leader_version);
    gauge(&b, "kbsync_lag_ops", "leader_version - version.",
          (double)s->lag_ops);
    gauge(&b, "kbsync_lag_seconds",
          "How long the oldest write not applied here has been committed "
          "on the leader (0 when caught up).",
          s->lag_ms / 1e3);
    if (s->role && strcmp(s->role, "leader")) {
        /* 18446744073709551 ms (UINT64_MAX / 1000) = never heard of */
        if (s->leader_contact_ms < UINT64_MAX / 1000)
            gauge(&b, "kbsync_leader_contact_seconds",
                  "Time since this replica last heard from its leader.",
                  s->leader_contact_ms / 1e3);
        counter(&b, "kbsync_digest_resyncs_total",
                "Copies started over because this replica's digest "
                "differed from the leader's.",
                (double)s->digest_resyncs);
        gauge(&b, "kbsync_snapshot_loading",
              "1 while this replica loads a snapshot's documents (it refuses "
              "queries until the log after them is loaded too).",
              s->snapshot_docs_total && s->snapshot_docs_loaded <
                                            s->snapshot_docs_total);
        gauge(&b, "kbsync_snapshot_documents_loaded",
              "Documents of the snapshot being loaded, so far.",
              (double)s->snapshot_docs_loaded);
        gauge(&b, "kbsync_snapshot_documents",
              "Documents in the snapshot being loaded.",
              (double)s->snapshot_docs_total);
    }
    gauge(&b, "kbsync_documents", "Live documents.", (double)s->docs);
    gauge(&b, "kbsync_index_vectors", "Vectors searchable.",
          (double)s->vectors);
    gauge(&b, "kbsync_index_dead_vectors",
          "Replaced or deleted vectors still in the index, hidden.",
          (double)s->dead_vectors);
    gauge(&b, "kbsync_index_unmerged_vectors",
          "Vectors written but not yet merged into the FAISS index.",
          (double)s->unmerged_vectors);
    gauge(&b, "kbsync_index_bytes", "Memory of the vector index.",
          (double)s->index_bytes);
    gauge(&b, "kbsync_store_bytes", "Size of the LMDB store on disk.",
          (double)s->store_bytes);
    gauge(&b, "kbsync_log_start_version", "Oldest LSN the log still holds.",
          (double)s->log_start);
    gauge(&b, "kbsync_index_rebuilding",
          "1 while a background index rebuild runs.", s->rebuilding);
    counter(&b, "kbsync_index_rebuilds_total",
            "Background index rebuilds completed.", (double)s->rebuilds);
    gauge(&b, "kbsync_checkpoint_version",
          "LSN the newest index checkpoint covers (0: none).",
          (double)s->checkpoint_lsn);
    gauge(&b, "kbsync_checkpoint_age_seconds",
          "Time since the newest index checkpoint was written.",
          s->checkpoint_age_ms / 1e3);
    counter(&b, "kbsync_commits_total", "Durable write transactions.",
            (double)s->commits);
    counter(&b, "kbsync_queries_total", "Queries answered.",
            (double)s->queries);
    counter(&b, "kbsync_query_batches_total",
            "FAISS searches that answered them.", (double)s->query_batches);
    gauge(&b, "kbsync_query_threads", "Reader threads.",
          (double)s->query_threads);
    /* Batch sizes of the reader pool: status gives per-bucket counts of
     * 1, 2, 3-4, 5-8, ... queries per FAISS call. */
    head(&b, "kbsync_query_batch_size", "histogram",
         "Queries answered per FAISS search.");
    {
        uint64_t cum = 0;
        for (size_t i = 0; i < s->n_query_batch_hist; i++) {
            cum += s->query_batch_hist[i];
            put(&b, "kbsync_query_batch_size_bucket{le=\"%u\"} %llu\n",
                1u << i, (unsigned long long)cum);
        }
        put(&b, "kbsync_query_batch_size_bucket{le=\"+Inf\"} %llu\n",
            (unsigned long long)cum);
        put(&b, "kbsync_query_batch_size_sum %llu\n",
            (unsigned long long)s->queries);
        put(&b, "kbsync_query_batch_size_count %llu\n",
            (unsigned long long)cum);
    }
    gauge(&b, "kbsync_client_queue_bytes",
          "Query answer bytes queued for clients, not yet written to them.",
          (double)s->client_queue_bytes);
    gauge(&b, "kbsync_clients_over_queue_limit",
          "Clients whose answers are dropped (over --max-client-queue-mb).",
          (double)s->clients_over_queue_limit);
    counter(&b, "kbsync_dropped_client_answers_total",
            "Answers dropped for clients over their queue limit.",
            (double)s->dropped_client_answers);
    counter(&b, "kbsync_dropped_client_requests_total",
            "Requests dropped from clients over their queue limit.",
            (double)s->dropped_client_requests);
    counter(&b, "kbsync_digest_checks_total",
            "Background digest checks of the documents.",
            (double)s->digest_checks);
    counter(&b, "kbsync_digest_check_mismatches_total",
            "Digest checks that found the documents changed outside kbsync.",
            (double)s->digest_check_mismatches);
    counter(&b, "kbsync_digest_check_yields_total",
            "Scheduled digest checks that stopped to let writes reuse "
            "freed pages.",
            (double)s->digest_check_yields);
    counter(&b, "kbsync_digest_check_skips_total",
            "Looks of the digest-check thread that skipped a due pass: the "
            "store was unchanged since the last completed one.",
            (double)s->digest_check_skips);

    if (s->role && !strcmp(s->role, "leader")) {
        gauge(&b, "kbsync_idempotency_entries",
              "Entries in the idempotent-write table.",
              (double)s->idempotency_entries);
        counter(&b, "kbsync_idempotent_retries_total",
                "Writes answered from the idempotent-write table.",
                (double)s->idempotent_retries);
        replica_series(&b, s, "kbsync_replica_connected", "gauge",
                       "1 when the named replica is connected.", 0);
        replica_series(&b, s, "kbsync_replica_received_version", "gauge",
                       "Newest LSN the replica acknowledged receiving.", 1);
        replica_series(&b, s, "kbsync_replica_durable_version", "gauge",
                       "Newest LSN durable in the replica's store.", 2);
        replica_series(&b, s, "kbsync_replica_applied_version", "gauge",
                       "Newest LSN searchable on the replica.", 3);
        replica_lags(&b, s, 0);
        replica_lags(&b, s, 1);
        replica_series(&b, s, "kbsync_replica_queued_bytes", "gauge",
                       "Stream bytes queued for the replica.", 4);
        replica_series(&b, s, "kbsync_replica_snapshot", "gauge",
                       "1 while the replica receives a snapshot.", 5);
        replica_series(&b, s, "kbsync_replica_digest_mismatches_total",
                       "counter",
                       "Acks whose digest differed from the leader's.", 6);
        head(&b, "kbsync_write_duration_seconds", "histogram",
             "From a write request's arrival to its answer, by write mode "
             "(successful answers only; refusals and timeouts are in "
             "kbsync_errors_total).");
        for (int i = 1; i <= 4; i++)
            hist(&b, "kbsync_write_duration_seconds", "mode", MODE_NAME[i],
                 &m->write_us[i], kb_hist_us_bounds, kb_hist_us_n, 1e6);
        head(&b, "kbsync_write_request_documents", "histogram",
             "Documents per answered write request.");
        hist(&b, "kbsync_write_request_documents", NULL, NULL, &m->write_docs,
             kb_hist_size_bounds, kb_hist_size_n, 1);
    }

    head(&b, "kbsync_query_duration_seconds", "histogram",
         "From a query's arrival to its answer (waits for freshness "
         "included), by the read level it satisfied.");
    for (int i = 1; i <= 4; i++)
        hist(&b, "kbsync_query_duration_seconds", "level", LEVEL_NAME[i],
             &m->query_us[i], kb_hist_us_bounds, kb_hist_us_n, 1e6);
    head(&b, "kbsync_errors_total", "counter",
         "Error answers sent, by code (docs/PROTOCOL.md, Errors).");
    for (int i = 1; i <= -KB_METRICS_ERR_MIN - 999; i++) {
        int code = -999 - i;
        const char *nm = kb_errname(code);
        if (!nm || strncmp(nm, "KB_", 3))
            continue; /* not a defined code */
        put(&b, "kbsync_errors_total{code=\"%s\"} %llu\n", nm,
            (unsigned long long)atomic_load_explicit(&m->errors[i],
                                                     memory_order_relaxed));
    }
    put(&b, "kbsync_errors_total{code=\"other\"} %llu\n",
        (unsigned long long)atomic_load_explicit(&m->errors[0],
                                                 memory_order_relaxed));
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

/* ------------------------------------------------------------ HTTP side */

static struct MHD_Response *text_response(const char *msg)
{
    return MHD_create_response_from_buffer(strlen(msg), (void *)msg,
                                           MHD_RESPMEM_PERSISTENT);
}

/* Asks the loop for the page (HTTP thread). NULL when it did not answer
 * in time; the REQ socket is then replaced (it would wait for that reply
 * forever). */
static char *ask_loop(node_metrics_t *m, size_t *len)
{
    if (!m->req) {
        m->req = zmq_socket(m->zctx, ZMQ_REQ);
        if (!m->req)
            return NULL;
        int zero = 0;
        zmq_setsockopt(m->req, ZMQ_LINGER, &zero, sizeof zero);
        if (zmq_connect(m->req, METRICS_ENDPOINT)) {
            zmq_close(m->req);
            m->req = NULL;
            return NULL;
        }
    }
    if (zmq_send(m->req, "", 0, 0) < 0)
        goto reset;
    zmq_pollitem_t it = {m->req, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, METRICS_WAIT_MS) != 1)
        goto reset;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, m->req, 0) < 0) {
        zmq_msg_close(&msg);
        goto reset;
    }
    *len = zmq_msg_size(&msg);
    char *out = malloc(*len + 1);
    if (out) {
        memcpy(out, zmq_msg_data(&msg), *len);
        out[*len] = 0;
    }
    zmq_msg_close(&msg);
    return out;
reset:
    zmq_close(m->req);
    m->req = NULL;
    return NULL;
}

/* libmicrohttpd's connection notices (its thread). */
static void on_connection(void *cls, struct MHD_Connection *c,
                          void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    node_metrics_t *m = cls;
    pthread_mutex_lock(&m->mu);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = NULL;
        for (int i = 0; ci && i < METRICS_MAX_CONN; i++)
            if (m->conn[i].fd < 0) {
                m->conn[i].fd = ci->connect_fd;
                m->conn[i].since_us = kb_mono_us();
                *socket_context = &m->conn[i];
                break;
            }
    } else if (*socket_context) {
        ((mconn_t *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&m->mu);
}

static void *watch_main(void *arg)
{
    node_metrics_t *m = arg;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        struct timespec ts;
        kb_abstime_in(&ts, METRICS_WATCH_MS * 1000u);
        pthread_cond_timedwait(&m->cv, &m->mu, &ts);
        uint64_t now = kb_mono_us();
        for (int i = 0; !m->stop && i < METRICS_MAX_CONN; i++) {
            mconn_t *k = &m->conn[i];
            if (k->fd < 0 || now - k->since_us < METRICS_REQUEST_MS * 1000u)
                continue;
            shutdown(k->fd, SHUT_RDWR); /* libmicrohttpd closes it */
            k->since_us = now;
            m->cut++;
            kb_log_limited(&m->log_cut, KB_LOG_WARN,
                           "metrics: closed a connection not done within %d "
                           "ms of its start (%llu so far)",
                           METRICS_REQUEST_MS, (unsigned long long)m->cut);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_len, void **con_cls)
{
    (void)version, (void)upload, (void)upload_len, (void)con_cls;
    node_metrics_t *m = cls;
    struct MHD_Response *r;
    unsigned status;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        r = text_response("only GET /metrics is served here\n");
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        if (r)
            MHD_add_response_header(r, "Allow", "GET, HEAD");
    } else if (strcmp(url, "/metrics") && strcmp(url, "/")) {
        r = text_response("not found: metrics are at /metrics\n");
        status = MHD_HTTP_NOT_FOUND;
    } else {
        size_t len = 0;
        char *page = ask_loop(m, &len);
        if (!page) {
            r = text_response("the node did not answer within 5 s\n");
            status = MHD_HTTP_SERVICE_UNAVAILABLE;
        } else {
            r = MHD_create_response_from_buffer(len, page,
                                                MHD_RESPMEM_MUST_FREE);
            if (!r)
                free(page);
            status = MHD_HTTP_OK;
            if (r)
                MHD_add_response_header(
                    r, "Content-Type",
                    "text/plain; version=0.0.4; charset=utf-8");
        }
    }
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static int parse_listen(const char *s, struct sockaddr_in *sa)
{
    const char *colon = strrchr(s, ':');
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    char host[64];
    const char *port = colon ? colon + 1 : s;
    size_t hl = colon ? (size_t)(colon - s) : 0;
    if (hl >= sizeof host)
        return -1;
    memcpy(host, s, hl);
    host[hl] = 0;
    if (!hl)
        snprintf(host, sizeof host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return -1;
    char *end;
    errno = 0;
    unsigned long p = strtoul(port, &end, 10);
    if (errno || end == port || *end || p > 65535)
        return -1;
    sa->sin_port = htons((uint16_t)p);
    return 0;
}

int node_metrics_start(void *zctx, const char *listen, node_metrics_t **out,
                       char *err, size_t errlen)
{
    *out = NULL;
    struct sockaddr_in sa;
    if (parse_listen(listen, &sa))
        return kb_seterr(err, errlen, KB_EINVAL,
                         "--metrics-listen \"%s\": expected HOST:PORT with "
                         "an IPv4 HOST (e.g. 127.0.0.1:9464)",
                         listen);
    node_metrics_t *m = calloc(1, sizeof *m);
    if (!m)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    m->zctx = zctx;
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    for (int i = 0; i < METRICS_MAX_CONN; i++)
        m->conn[i].fd = -1;
    if (pthread_create(&m->watch, NULL, watch_main, m)) {
        node_metrics_stop(&m);
        return kb_seterr(err, errlen, KB_ENOMEM,
                         "cannot start the metrics watchdog thread");
    }
    m->watching = 1;
    m->rep = zmq_socket(zctx, ZMQ_REP);
    int zero = 0;
    if (!m->rep || zmq_setsockopt(m->rep, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_bind(m->rep, METRICS_ENDPOINT)) {
        int rc = kb_seterr(err, errlen, KB_ENET, "metrics socket: %s",
                           zmq_strerror(errno));
        node_metrics_stop(&m);
        return rc;
    }
    /* One polling thread: scrapes are rare; at most 16 connections, idle
     * ones closed after 10 s, slow ones after 10 s (SLOW PEERS), so a
     * crowd of peers cannot pin it. */
    m->d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, ntohs(sa.sin_port),
        NULL, NULL, on_request, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MAX_CONN,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(METRICS_REQUEST_MS / 1000),
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, m, MHD_OPTION_END);
    if (!m->d) {
        int rc = kb_seterr(err, errlen, KB_ENET,
                           "--metrics-listen %s: cannot listen there (in "
                           "use, or not an address of this host)",
                           listen);
        node_metrics_stop(&m);
        return rc;
    }
    const union MHD_DaemonInfo *di =
        MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_BIND_PORT);
    m->port = di ? di->port : ntohs(sa.sin_port);
    char host[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host);
    kb_info("metrics on http://%s:%u/metrics", host, m->port);
    *out = m;
    return 0;
}

void *node_metrics_socket(node_metrics_t *m)
{
    return m ? m->rep : NULL;
}

unsigned node_metrics_port(const node_metrics_t *m)
{
    return m ? m->port : 0;
}

void node_metrics_stop(node_metrics_t **mp)
{
    node_metrics_t *m = mp ? *mp : NULL;
    if (!m)
        return;
    if (m->watching) {
        pthread_mutex_lock(&m->mu);
        m->stop = 1;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->watch, NULL);
        /* and the connections still open: libmicrohttpd's stop would wait
         * for their idle timeout (up to 10 s) */
        pthread_mutex_lock(&m->mu);
        for (int i = 0; i < METRICS_MAX_CONN; i++)
            if (m->conn[i].fd >= 0)
                shutdown(m->conn[i].fd, SHUT_RDWR);
        pthread_mutex_unlock(&m->mu);
    }
    if (m->d)
        MHD_stop_daemon(m->d); /* joins its thread: req is ours now */
    if (m->req)
        zmq_close(m->req);
    if (m->rep)
        zmq_close(m->rep);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
    *mp = NULL;
}
