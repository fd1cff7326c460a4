/* kb_sec: CURVE key files, the trust file and the ZAP handler (see
 * kb_sec.h). */
#include "kb_sec.h"

#include "kb_err.h"
#include "kb_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_MAX_TRUST 4096
#define ZAP_MAX_REFUSED 256 /* keys remembered as already logged */

/* ------------------------------------------------------------ key files */

static int write_new(const char *path, mode_t mode, const char *text,
                     char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return kb_seterr(err, errlen, -errno, "cannot create %s: %s", path,
                         strerror(errno));
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    int e = errno;
    close(fd);
    if (!ok) {
        unlink(path);
        return kb_seterr(err, errlen, -e, "cannot write %s: %s", path,
                         strerror(e));
    }
    return 0;
}

int kb_sec_keygen(const char *prefix, char *err, size_t errlen)
{
    char pub[KB_Z85_KEY], sec[KB_Z85_KEY];
    if (zmq_curve_keypair(pub, sec))
        return kb_seterr(err, errlen, KB_ENET,
                         "this ZeroMQ has no CURVE support: %s",
                         zmq_strerror(errno));
    size_t pl = strlen(prefix) + 8;
    char *kpath = malloc(pl), *ppath = malloc(pl);
    if (!kpath || !ppath) {
        free(kpath);
        free(ppath);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    snprintf(kpath, pl, "%s.key", prefix);
    snprintf(ppath, pl, "%s.pub", prefix);
    char text[256];
    snprintf(text, sizeof text,
             "# kbsync CURVE key pair: keep this file secret (mode 0600)\n"
             "public-key = %s\nsecret-key = %s\n",
             pub, sec);
    int rc = write_new(kpath, 0600, text, err, errlen);
    if (!rc) {
        snprintf(text, sizeof text,
                 "# kbsync CURVE public key: give it to peers\n"
                 "public-key = %s\n",
                 pub);
        rc = write_new(ppath, 0644, text, err, errlen);
        if (rc)
            unlink(kpath);
    }
    explicit_bzero(sec, sizeof sec);
    explicit_bzero(text, sizeof text);
    free(kpath);
    free(ppath);
    return rc;
}

/* Finds "name = value" in a key file; value must be a 40-character Z85
 * key. 1 found, 0 absent, -1 malformed. */
static int key_field(const char *text, const char *name, char out[KB_Z85_KEY])
{
    size_t nl = strlen(name);
    for (const char *line = text; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        while (*line == ' ' || *line == '\t')
            line++;
        if (strncmp(line, name, nl))
            continue;
        const char *p = line + nl;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p++ != '=')
            continue;
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, " \t\r\n");
        uint8_t bin[32];
        if (n != KB_Z85_KEY - 1)
            return -1;
        memcpy(out, p, n);
        out[n] = '\0';
        return zmq_z85_decode(bin, out) ? 1 : -1;
    }
    return 0;
}

static int read_small(const char *path, char *buf, size_t cap,
                      struct stat *st, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kb_seterr(err, errlen, -errno, "cannot open %s: %s", path,
                         strerror(errno));
    if (fstat(fd, st)) {
        int e = errno;
        close(fd);
        return kb_seterr(err, errlen, -e, "cannot stat %s: %s", path,
                         strerror(e));
    }
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0)
        return kb_seterr(err, errlen, -errno, "cannot read %s: %s", path,
                         strerror(errno));
    buf[n] = '\0';
    return 0;
}

int kb_sec_load_pair(const char *path, kb_curve_t *c, char *err,
                     size_t errlen)
{
    char text[1024];
    struct stat st;
    int rc = read_small(path, text, sizeof text, &st, err, errlen);
    if (rc)
        return rc;
    if (st.st_mode & 077) {
        explicit_bzero(text, sizeof text);
        return kb_seterr(err, errlen, KB_EINVAL,
                         "%s may be read by others (mode %03o): a secret key "
                         "file must be mode 0600 (chmod 600 %s)",
                         path, (unsigned)(st.st_mode & 0777), path);
    }
    int a = key_field(text, "public-key", c->pub);
    int b = key_field(text, "secret-key", c->sec);
    explicit_bzero(text, sizeof text);
    if (a != 1 || b != 1)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "%s is not a key pair file of `kbsync keygen` "
                         "(public-key = ... and secret-key = ..., 40 "
                         "characters of Z85 each)",
                         path);
    /* The public key must belong to the secret one. */
    char derived[KB_Z85_KEY];
    if (zmq_curve_public(derived, c->sec) || strcmp(derived, c->pub))
        return kb_seterr(err, errlen, KB_EINVAL,
                         "%s: the public key does not belong to the secret "
                         "key",
                         path);
    return 0;
}

int kb_sec_load_public(const char *path, char out[KB_Z85_KEY], char *err,
                       size_t errlen)
{
    char text[1024];
    struct stat st;
    int rc = read_small(path, text, sizeof text, &st, err, errlen);
    if (rc)
        return rc;
    int a = key_field(text, "public-key", out);
    if (a != 1)
        return kb_seterr(err, errlen, KB_EINVAL,
                         "%s holds no public key (a line public-key = <40 "
                         "characters of Z85>, as `kbsync keygen` writes)",
                         path);
    return 0;
}

kb_role_t kb_sec_role(const char *uid, const char **id)
{
    if (id)
        *id = NULL;
    if (!uid || !*uid)
        return KB_ROLE_NONE;
    if (!strcmp(uid, "reader"))
        return KB_ROLE_READER;
    if (!strcmp(uid, "writer"))
        return KB_ROLE_WRITER;
    if (!strcmp(uid, "admin"))
        return KB_ROLE_ADMIN;
    if (!strncmp(uid, "replica:", 8) && uid[8]) {
        if (id)
            *id = uid + 8;
        return KB_ROLE_REPLICA;
    }
    return KB_ROLE_NONE;
}

int kb_sec_endpoint_local(const char *ep)
{
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return 1;
    if (strncmp(ep, "tcp://", 6))
        return 0;
    const char *h = ep + 6;
    /* a tcp connect endpoint may name its source first: "src;host:port" */
    const char *semi = strchr(h, ';');
    if (semi)
        h = semi + 1;
    if (!strncmp(h, "localhost:", 10))
        return 1;
    char host[64];
    const char *colon = *h == '[' ? strstr(h, "]:") : strrchr(h, ':');
    size_t n = colon ? (size_t)(colon - h) : 0;
    if (*h == '[') { /* [v6]:port */
        if (!colon || n - 1 >= sizeof host)
            return 0;
        memcpy(host, h + 1, n - 1);
        host[n - 1] = '\0';
        struct in6_addr a6;
        return inet_pton(AF_INET6, host, &a6) == 1 &&
               IN6_IS_ADDR_LOOPBACK(&a6);
    }
    if (!colon || n >= sizeof host)
        return 0;
    memcpy(host, h, n);
    host[n] = '\0';
    struct in_addr a4;
    return inet_pton(AF_INET, host, &a4) == 1 &&
           (ntohl(a4.s_addr) >> 24) == 127;
}

/* ---------------------------------------------------------- ZAP handler */

typedef struct trusted {
    uint8_t key[32];
    char role[96]; /* the ZAP user id: reader, writer, admin, replica:<id> */
} trusted_t;

struct kb_zap {
    void *ctx;
    void *sock;
    pthread_t thr;
    int stop; /* atomic */
    trusted_t *t;
    size_t n;
    uint8_t refused[ZAP_MAX_REFUSED][32];
    size_t nrefused;
    kb_loglimit_t log;
};

static int load_trust(kb_zap_t *z, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return kb_seterr(err, errlen, -errno, "cannot open trust file %s: %s",
                         path, strerror(errno));
    char line[512];
    int rc = 0;
    unsigned lineno = 0;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s:%u: line longer than %zu bytes", path, lineno,
                           sizeof line - 2);
            break;
        }
        /* '#' starts a comment only at the start of a line: Z85 keys may
         * hold '#'. */
        const char *first = line + strspn(line, " \t");
        if (*first == '#')
            continue;
        char key[64], role[96], extra[8];
        int k = sscanf(line, "%63s %95s %7s", key, role, extra);
        if (k <= 0)
            continue;
        const char *rid = NULL;
        kb_role_t r = k == 2 ? kb_sec_role(role, &rid) : KB_ROLE_NONE;
        if (k != 2 || r == KB_ROLE_NONE ||
            (rid && (strlen(rid) >= 64 || strchr(rid, ':')))) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s:%u: expected \"<public key> <role>\" with "
                           "role reader, writer, admin or replica:<id>",
                           path, lineno);
            break;
        }
        if (z->n == ZAP_MAX_TRUST) {
            rc = kb_seterr(err, errlen, KB_ETOOBIG,
                           "%s: more than %d keys", path, ZAP_MAX_TRUST);
            break;
        }
        trusted_t *t = &z->t[z->n];
        if (strlen(key) != KB_Z85_KEY - 1 || !zmq_z85_decode(t->key, key)) {
            rc = kb_seterr(err, errlen, KB_EINVAL,
                           "%s:%u: \"%s\" is not a public key (40 characters "
                           "of Z85)",
                           path, lineno, key);
            break;
        }
        snprintf(t->role, sizeof t->role, "%s", role);
        z->n++;
    }
    fclose(f);
    return rc;
}

static const trusted_t *trust_find(const kb_zap_t *z, const uint8_t *key)
{
    for (size_t i = 0; i < z->n; i++)
        if (!memcmp(z->t[i].key, key, 32))
            return &z->t[i];
    return NULL;
}

/* Logs a refused key the first time it is seen (rate-limited after). */
static void note_refused(kb_zap_t *z, const uint8_t *key, const char *domain,
                         const char *addr, const char *why)
{
    for (size_t i = 0; i < z->nrefused; i++)
        if (!memcmp(z->refused[i], key, 32))
            return;
    char text[KB_Z85_KEY] = "?";
    zmq_z85_encode(text, key, 32);
    /* remembered only once its line was printed (not held back by the
     * limit); past ZAP_MAX_REFUSED keys, only the limit applies */
    if (kb_log_limited(&z->log, KB_LOG_WARN,
                       "refused a connection to %s from %s: key %s %s",
                       domain, addr, text, why) &&
        z->nrefused < ZAP_MAX_REFUSED)
        memcpy(z->refused[z->nrefused++], key, 32);
}

static void zap_answer(kb_zap_t *z)
{
    /* version, request id, domain, address, routing id, mechanism,
     * credentials (CURVE: the client's public key, 32 bytes) */
    zmq_msg_t f[8];
    int nf = 0, more = 1;
    while (more && nf < 8) {
        zmq_msg_init(&f[nf]);
        if (zmq_msg_recv(&f[nf], z->sock, 0) < 0) {
            zmq_msg_close(&f[nf]);
            break;
        }
        more = zmq_msg_more(&f[nf]);
        nf++;
    }
    while (more) { /* more frames than the protocol has: drop them */
        zmq_msg_t x;
        zmq_msg_init(&x);
        if (zmq_msg_recv(&x, z->sock, 0) < 0)
            more = 0;
        else
            more = zmq_msg_more(&x);
        zmq_msg_close(&x);
    }
    if (nf < 2) {
        for (int i = 0; i < nf; i++)
            zmq_msg_close(&f[i]);
        return;
    }
    const char *status = "400", *text = "not allowed", *uid = "";
    char domain[64] = "?", addr[64] = "?";
    if (nf >= 3)
        snprintf(domain, sizeof domain, "%.*s", (int)zmq_msg_size(&f[2]),
                 (const char *)zmq_msg_data(&f[2]));
    if (nf >= 4)
        snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&f[3]),
                 (const char *)zmq_msg_data(&f[3]));
    if (nf == 7 && zmq_msg_size(&f[5]) == 5 &&
        !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) && zmq_msg_size(&f[6]) == 32) {
        const uint8_t *key = zmq_msg_data(&f[6]);
        const trusted_t *t = trust_find(z, key);
        if (t) {
            status = "200";
            text = "OK";
            uid = t->role;
        } else {
            note_refused(z, key, domain, addr, "is not in the trust file");
        }
    } else {
        kb_log_limited(&z->log, KB_LOG_WARN,
                       "refused a connection to %s from %s: not CURVE", domain,
                       addr);
    }
    const char *out[6] = {"1.0", NULL, status, text, uid, ""};
    zmq_send(z->sock, out[0], 3, ZMQ_SNDMORE);
    zmq_send(z->sock, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    for (int i = 2; i < 6; i++)
        zmq_send(z->sock, out[i], strlen(out[i]), i < 5 ? ZMQ_SNDMORE : 0);
    for (int i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
}

static void *zap_main(void *arg)
{
    kb_zap_t *z = arg;
    while (!__atomic_load_n(&z->stop, __ATOMIC_ACQUIRE)) {
        zmq_pollitem_t it = {z->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, 100);
        if (rc > 0)
            zap_answer(z);
        else if (rc < 0 && errno == ETERM)
            break;
    }
    return NULL;
}

int kb_zap_start(void *ctx, const char *trust_path, kb_zap_t **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    kb_zap_t *z = calloc(1, sizeof *z);
    if (!z || !(z->t = calloc(ZAP_MAX_TRUST, sizeof *z->t))) {
        free(z);
        return kb_seterr(err, errlen, KB_ENOMEM, "out of memory");
    }
    z->ctx = ctx;
    int rc = load_trust(z, trust_path, err, errlen);
    if (!rc && z->n == 0)
        rc = kb_seterr(err, errlen, KB_EINVAL,
                       "trust file %s lists no key: no one could connect",
                       trust_path);
    if (!rc) {
        z->sock = zmq_socket(ctx, ZMQ_REP);
        int zero = 0;
        if (!z->sock || zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof zero) ||
            zmq_bind(z->sock, ZAP_ENDPOINT))
            rc = kb_seterr(err, errlen, KB_ENET, "ZAP handler: %s",
                           zmq_strerror(errno));
    }
    if (!rc && pthread_create(&z->thr, NULL, zap_main, z))
        rc = kb_seterr(err, errlen, KB_ENOMEM, "cannot start the ZAP thread");
    if (rc) {
        if (z->sock)
            zmq_close(z->sock);
        free(z->t);
        free(z);
        return rc;
    }
    kb_info("CURVE: %zu trusted keys from %s", z->n, trust_path);
    *out = z;
    return 0;
}

void kb_zap_stop(kb_zap_t **zp)
{
    if (!zp || !*zp)
        return;
    kb_zap_t *z = *zp;
    __atomic_store_n(&z->stop, 1, __ATOMIC_RELEASE);
    pthread_join(z->thr, NULL);
    zmq_close(z->sock);
    memset(z->t, 0, ZAP_MAX_TRUST * sizeof *z->t);
    free(z->t);
    free(z);
    *zp = NULL;
}
