/* test_kb_sec: CURVE key files, trust files and the ZAP handler of
 * common/include/kb_sec.h. In: key files written by kb_sec_keygen in a temporary
 * directory, hand-written trust files, real CURVE sockets on inproc
 * endpoints. Out: pass/fail on file modes, refusals, the role a trusted
 * key's messages carry, and an untrusted key getting nothing through. */
#include "kb_test.h"

#include "kb_err.h"
#include "kb_sec.h"
#include "kb_wire.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

static char g_dir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/kb-sec-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static void test_kb_sec_keygen_files_and_modes(void **state)
{
    (void)state;
    char prefix[128], key[160], pub[160], err[512] = "";
    path_of(prefix, sizeof prefix, "a");
    KBT_OK(kb_sec_keygen(prefix, err, sizeof err), err);
    snprintf(key, sizeof key, "%s.key", prefix);
    snprintf(pub, sizeof pub, "%s.pub", prefix);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* never overwrites */
    assert_int_not_equal(kb_sec_keygen(prefix, err, sizeof err), 0);
    kb_curve_t c;
    KBT_OK(kb_sec_load_pair(key, &c, err, sizeof err), err);
    char p2[KB_Z85_KEY];
    KBT_OK(kb_sec_load_public(pub, p2, err, sizeof err), err);
    assert_string_equal(c.pub, p2);
    KBT_OK(kb_sec_load_public(key, p2, err, sizeof err), err);
    /* a secret key others may read is refused */
    chmod(key, 0644);
    assert_int_equal(kb_sec_load_pair(key, &c, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, "mode 0600"));
    chmod(key, 0600);
    /* a pair whose halves do not belong together is refused */
    char bad[160];
    path_of(bad, sizeof bad, "mixed.key");
    FILE *f = fopen(bad, "w");
    char other_pub[KB_Z85_KEY], other_sec[KB_Z85_KEY];
    assert_int_equal(zmq_curve_keypair(other_pub, other_sec), 0);
    fprintf(f, "public-key = %s\nsecret-key = %s\n", c.pub, other_sec);
    fclose(f);
    chmod(bad, 0600);
    assert_int_equal(kb_sec_load_pair(bad, &c, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, "does not belong"));
    /* not a key file */
    f = fopen(bad, "w");
    fputs("public-key = short\n", f);
    fclose(f);
    assert_int_equal(kb_sec_load_public(bad, p2, err, sizeof err), KB_EINVAL);
}

static void test_kb_sec_roles_and_endpoints(void **state)
{
    (void)state;
    const char *id;
    assert_int_equal(kb_sec_role(NULL, &id), KB_ROLE_NONE);
    assert_int_equal(kb_sec_role("", &id), KB_ROLE_NONE);
    assert_int_equal(kb_sec_role("reader", &id), KB_ROLE_READER);
    assert_int_equal(kb_sec_role("writer", &id), KB_ROLE_WRITER);
    assert_int_equal(kb_sec_role("admin", &id), KB_ROLE_ADMIN);
    assert_int_equal(kb_sec_role("replica:r7", &id), KB_ROLE_REPLICA);
    assert_string_equal(id, "r7");
    assert_int_equal(kb_sec_role("replica:", &id), KB_ROLE_NONE);
    assert_int_equal(kb_sec_role("root", &id), KB_ROLE_NONE);
    assert_true(kb_sec_endpoint_local("tcp://127.0.0.1:7400"));
    assert_true(kb_sec_endpoint_local("tcp://127.0.0.1:*"));
    assert_true(kb_sec_endpoint_local("tcp://[::1]:7400"));
    assert_true(kb_sec_endpoint_local("tcp://localhost:7400"));
    assert_true(kb_sec_endpoint_local("ipc:///tmp/x"));
    assert_false(kb_sec_endpoint_local("tcp://0.0.0.0:7400"));
    assert_false(kb_sec_endpoint_local("tcp://*:7400"));
    assert_false(kb_sec_endpoint_local("tcp://10.1.2.3:7400"));
    assert_false(kb_sec_endpoint_local("tcp://128.0.0.1:7400"));
    assert_false(kb_sec_endpoint_local("tcp://127.evil.example:7400"));
    assert_false(kb_sec_endpoint_local("tcp://[::2]:7400"));
    assert_true(kb_sec_endpoint_local("tcp://10.0.0.1;127.0.0.1:7400"));
}

static void write_trust(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_kb_sec_trust_file_errors(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    char path[160], err[512] = "";
    kb_zap_t *z = NULL;
    path_of(path, sizeof path, "trust");
    write_trust(path, "# nothing\n");
    assert_int_equal(kb_zap_start(ctx, path, &z, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, "lists no key"));
    char pub[KB_Z85_KEY], sec[KB_Z85_KEY], line[200];
    assert_int_equal(zmq_curve_keypair(pub, sec), 0);
    snprintf(line, sizeof line, "%s superuser\n", pub);
    write_trust(path, line);
    assert_int_equal(kb_zap_start(ctx, path, &z, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, ":1:"));
    write_trust(path, "tooshort reader\n");
    assert_int_equal(kb_zap_start(ctx, path, &z, err, sizeof err), KB_EINVAL);
    assert_non_null(strstr(err, "not a public key"));
    assert_null(z);
    zmq_ctx_term(ctx);
}

/* A CURVE server ROUTER, a trusted and an untrusted client: the trusted
 * one's message arrives with its role as User-Id; the other's never. */
static void test_kb_sec_zap_admits_only_trusted_keys(void **state)
{
    (void)state;
    void *ctx = zmq_ctx_new();
    kb_curve_t srv = {0}, good = {0}, evil = {0};
    assert_int_equal(zmq_curve_keypair(srv.pub, srv.sec), 0);
    assert_int_equal(zmq_curve_keypair(good.pub, good.sec), 0);
    assert_int_equal(zmq_curve_keypair(evil.pub, evil.sec), 0);
    char path[160], line[200], err[512] = "";
    path_of(path, sizeof path, "trust2");
    /* a key holding '#' must not be cut as a comment: the first line */
    snprintf(line, sizeof line, "# comment\n  %s replica:r1\n", good.pub);
    write_trust(path, line);
    kb_zap_t *z = NULL;
    KBT_OK(kb_zap_start(ctx, path, &z, err, sizeof err), err);
    srv.domain = "test";
    void *router = NULL, *c1 = NULL, *c2 = NULL;
    /* tcp: inproc connections skip the security handshake */
    KBT_OK(kb_wire_socket_curve(ctx, ZMQ_ROUTER, "tcp://127.0.0.1:*", 1, &srv,
                                &router, err, sizeof err),
           err);
    char ep[128];
    size_t eplen = sizeof ep;
    assert_int_equal(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
    memcpy(good.server, srv.pub, sizeof srv.pub);
    memcpy(evil.server, srv.pub, sizeof srv.pub);
    KBT_OK(kb_wire_socket_curve(ctx, ZMQ_DEALER, ep, 0, &good, &c1, err,
                                sizeof err),
           err);
    KBT_OK(kb_wire_socket_curve(ctx, ZMQ_DEALER, ep, 0, &evil, &c2, err,
                                sizeof err),
           err);
    zmq_send(c2, "evil", 4, ZMQ_DONTWAIT);
    zmq_send(c1, "good", 4, 0);
    int ms = 3000;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, router, 0) >= 0); /* routing id */
    zmq_msg_close(&m);
    zmq_msg_init(&m);
    assert_int_equal(zmq_msg_recv(&m, router, 0), 4);
    assert_memory_equal(zmq_msg_data(&m), "good", 4);
    const char *uid = zmq_msg_gets(&m, "User-Id");
    assert_non_null(uid);
    assert_string_equal(uid, "replica:r1");
    zmq_msg_close(&m);
    /* nothing from the untrusted key */
    ms = 700;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &ms, sizeof ms);
    zmq_msg_init(&m);
    assert_int_equal(zmq_msg_recv(&m, router, 0), -1);
    assert_int_equal(errno, EAGAIN);
    zmq_msg_close(&m);
    zmq_close(c1);
    zmq_close(c2);
    zmq_close(router);
    kb_zap_stop(&z);
    assert_null(z);
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kb_sec_keygen_files_and_modes),
        cmocka_unit_test(test_kb_sec_roles_and_endpoints),
        cmocka_unit_test(test_kb_sec_trust_file_errors),
        cmocka_unit_test(test_kb_sec_zap_admits_only_trusted_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
