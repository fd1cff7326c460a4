/* qry_client: DEALER-socket client of a kbsync node (see qry_client.h). */
#include "qry_client.h"

#include "kb_err.h"
#include "kb_sec.h"
#include "kb_util.h"
#include "kb_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

struct qry_client {
    void *ctx, *sock;
    uint64_t next_id;
    char endpoint[256];
};

int qry_client_open(const char *endpoint, qry_client_t **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    qry_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    /* CURVE when KBSYNC_KEY names this client's key pair file; then
     * KBSYNC_SERVER_KEY must name the node's public key file. */
    kb_curve_t cv = {0};
    const char *key = getenv("KBSYNC_KEY"), *srv = getenv("KBSYNC_SERVER_KEY");
    int rc = 0;
    if (key && *key) {
        rc = kb_sec_load_pair(key, &cv, err, errlen);
        if (!rc && !(srv && *srv))
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "--key (KBSYNC_KEY) needs --server-key "
                           "(KBSYNC_SERVER_KEY): the node's public key");
        if (!rc)
            rc = kb_sec_load_public(srv, cv.server, err, errlen);
    }
    c->ctx = rc ? NULL : zmq_ctx_new();
    if (!rc)
        rc = c->ctx ? kb_wire_socket_curve(c->ctx, ZMQ_DEALER, endpoint, 0,
                                           cv.pub[0] ? &cv : NULL, &c->sock,
                                           err, errlen)
                    : kb_seterr(err, errlen, KB_ENET, "zmq_ctx_new failed");
    explicit_bzero(cv.sec, sizeof cv.sec);
    if (rc) {
        qry_client_close(&c);
        return rc;
    }
    /* Request ids only need to be unique per connection; start high and
     * varied so that logs from several clients are easy to tell apart. */
    c->next_id = (kb_wall_us() & 0xffffffu) << 20;
    *out = c;
    return 0;
}

void qry_client_close(qry_client_t **cp)
{
    if (!cp || !*cp)
        return;
    qry_client_t *c = *cp;
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    free(c);
    *cp = NULL;
}

int qry_client_send(qry_client_t *c, Kbsync__Request *req, uint64_t *rid,
                    char *err, size_t errlen)
{
    req->protocol_version = KB_PROTOCOL_VERSION;
    req->request_id = ++c->next_id;
    if (rid)
        *rid = req->request_id;
    int rc = kb_wire_send_msg(c->sock, req, 0);
    if (rc)
        return kb_seterr(err, errlen, rc, "cannot send to %s: %s", c->endpoint,
                         kb_strerror(rc));
    return 0;
}

int qry_client_recv(qry_client_t *c, int timeout_ms, Kbsync__Response **resp,
                    char *err, size_t errlen)
{
    *resp = NULL;
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    int pr = zmq_poll(&it, 1, timeout_ms);
    if (pr < 0)
        return kb_seterr(err, errlen, errno == EINTR ? -EINTR : KB_ENET,
                         "waiting for %s: %s", c->endpoint,
                         zmq_strerror(errno));
    if (pr == 0)
        return kb_seterr(err, errlen, KB_ETIMEOUT,
                         "no answer from %s within %d ms (is a kbsync node "
                         "listening there?)",
                         c->endpoint, timeout_ms);
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, c->sock, 0) < 0) {
        zmq_msg_close(&m);
        return kb_seterr(err, errlen, KB_ENET, "receive from %s: %s",
                         c->endpoint, zmq_strerror(errno));
    }
    *resp = kbsync__response__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
    size_t len = zmq_msg_size(&m);
    zmq_msg_close(&m);
    if (!*resp)
        return kb_seterr(err, errlen, KB_EBADMSG,
                         "answer of %zu bytes from %s cannot be decoded", len,
                         c->endpoint);
    return 0;
}

int qry_client_call(qry_client_t *c, Kbsync__Request *req, int timeout_ms,
                    Kbsync__Response **resp, char *err, size_t errlen)
{
    uint64_t rid;
    int rc = qry_client_send(c, req, &rid, err, errlen);
    if (rc)
        return rc;
    uint64_t deadline = kb_mono_us() + (uint64_t)timeout_ms * 1000u;
    for (;;) {
        int left =
            timeout_ms < 0
                ? -1
                : (int)((deadline > kb_mono_us() ? deadline - kb_mono_us()
                                                 : 0) /
                        1000u);
        rc = qry_client_recv(c, left, resp, err, errlen);
        if (rc)
            return rc;
        /* An error to a request the node could not decode carries id 0. */
        if ((*resp)->request_id == rid ||
            ((*resp)->request_id == 0 && (*resp)->error))
            return 0;
        kbsync__response__free_unpacked(*resp, NULL); /* stale answer */
        *resp = NULL;
    }
}
