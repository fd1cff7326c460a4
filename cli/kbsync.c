/* kbsync: the program. `kbsync leader` opens a knowledge base (indexer/) and
 * serves it (query/, replicator/); `ingest`, `query`, `delete` and `status`
 * are clients that speak the protobuf API (schemas/) over ZeroMQ and print
 * answers for people, or with --json as the documented JSON contract. */
#include "cli.h"
#include "cli_embed.h"

#include "idx.h"
#include "kb_err.h"
#include "kb_json.h"
#include "kb_sec.h"
#include "kb_util.h"
#include "qry_client.h"
#include "node.h"

#include <cjson/cJSON.h>
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char USAGE[] =
    "usage: kbsync <command> [options]\n"
    "\n"
    "commands:\n"
    "  leader  --data DIR [--dim N] [--listen EP] [--index DESC] [--metric "
    "ip|l2|cosine]\n"
    "          (DESC: Flat, exact, the default; HNSW<M>; IVF<n>,Flat;\n"
    "          IVF<n>,PQ<m>. --metric defaults to ip, --listen to\n"
    "          " CLI_DEFAULT_ENDPOINT "; --replicas needs --repl-listen)\n"
    "          [--id NAME] [--map-size-gb N] [--no-sync] [--threads N]\n"
    "          [--query-threads N]\n"
    "          [--max-msg-mb N] [--endpoint-file FILE] [--log-level LEVEL]\n"
    "          [--repl-listen EP] [--replicas r1,r2] [--write-mode async|all|majority|quorum:K]\n"
    "          [--write-timeout-ms N] [--log-retain-mb N] [--log-retain-hours "
    "N]\n"
    "          [--log-keep-ops N] [--checkpoint-ops N] [--checkpoint-secs S]\n"
    "          [--dedup-hours H] [--dedup-max N]\n"
    "          [--no-checkpoint]\n"
    "          start a node that owns the knowledge base in DIR (created on\n"
    "          first start, which needs --dim), serves writes and queries, "
    "and\n"
    "          streams its log to replicas\n"
    "  replica --data DIR --id NAME --leader REPL_EP [--listen EP] [...]\n"
    "          start a query node that follows the leader's replication\n"
    "          endpoint and answers queries with its staleness\n"
    "  checkpoints (both): the vector index is saved to DIR/index.ckpt when\n"
    "          --checkpoint-ops writes (default 10000; 0 = only at shutdown)\n"
    "          and --checkpoint-secs (default 30) passed since the last one,\n"
    "          and at shutdown; a start loads it instead of rebuilding\n"
    "  digests (both): --digest-check-ms N, the shortest gap between\n"
    "          background checks of the documents against their digest\n"
    "          (default 1000; 0 = none; an unchanged store is checked\n"
    "          again after 5 minutes; docs/CONSISTENCY.md, Digests)\n"
    "  security (both): --key FILE --trust FILE turn CURVE on for the\n"
    "          node's sockets (a replica also needs --leader-key FILE);\n"
    "          without keys, endpoints other than loopback are refused\n"
    "          unless --insecure; --max-client-queue-mb N (default 64)\n"
    "          bounds a client's unread query answers\n"
    "  metrics (both): --metrics-listen HOST:PORT serves Prometheus text\n"
    "          at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464)\n"
    "  keygen  PREFIX\n"
    "          write a CURVE key pair: PREFIX.key (mode 0600), PREFIX.pub\n"
    "  ingest  --to EP [--mode async|all|majority|quorum:K] [--batch N] [--window N] "
    "[--keep-going]\n"
    "          [--max-errors N] [--dry-run] [--timeout-ms N] [--retries N]\n"
    "          [--chunk-bytes 1000] [--overlap-bytes 100] [--resume]\n"
    "          [--sync-deletes] [--id-prefix P] [--encoding E] PATH...\n"
    "          upsert documents from JSONL files (id, text, embedding,\n"
    "          metadata), or overlapping chunks PATH#N of text, Markdown\n"
    "          and HTML files and directories of them; --resume sends only\n"
    "          changed chunks (`kbsync ingest --help` for the rest)\n"
    "  query   --to EP [-k N] (--vector JSON | --text TEXT | TEXT) "
    "[--min-version V]\n"
    "          [--wait-ms N] [--max-lag-ms N] [--ef-search N] [--nprobe N]\n"
    "          [--filter KEY=VALUE]... [--json]\n"
    "          [--consistency eventual|bounded:MS|session:VERSION|strong]\n"
    /* the --embed-* options (cli_embed.h) */ CLI_EMBED_USAGE
    "          with --embed-url, TEXT is embedded by your model server\n"
    "          (OpenAI-compatible /v1/embeddings; key: KBSYNC_EMBED_KEY)\n"
    "  delete  --to EP [--mode async|all|majority|quorum:K] ID...\n"
    "  status  --to EP [--json]\n"
    "  rebuild --to EP [--json]\n"
    "          rebuild the node's vector index in the background (drops\n"
    "          replaced/deleted vectors; retrains an IVF index)\n"
    "  verify  --to EP [--leader EP] [--json]\n"
    "          recompute the node's document digest now; with --leader,\n"
    "          compare it with the leader's at the same LSN (exit 1: differ)\n"
    "  list    --to EP [--prefix P] [--after ID] [--limit N] [--meta-key K]\n"
    "          the leader's documents in id order, one JSON line each:\n"
    "          {\"id\",\"version\"[,\"meta\"]}; every page unless --limit\n"
    "\n"
    "EP is a ZeroMQ endpoint; default " CLI_DEFAULT_ENDPOINT ". Client\n"
    "commands take --key FILE --server-key FILE (or KBSYNC_KEY and\n"
    "KBSYNC_SERVER_KEY) for a node with CURVE.\n"
    "See README.md and docs/ for the JSON output contract.\n";

static volatile sig_atomic_t g_stop; /* set by SIGINT/SIGTERM only */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "kbsync: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n\n%s", USAGE);
    exit(2);
}

uint64_t cli_uint(const char *opt, const char *val, uint64_t max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(val, &end, 10);
    if (errno || end == val || *end || val[0] == '-' || v > max) {
        fprintf(stderr,
                "kbsync: %s needs a whole number from 0 to %llu, not "
                "\"%s\"\n",
                opt, (unsigned long long)max, val);
        exit(2);
    }
    return v;
}

void cli_print_write_summary(uint64_t written, uint64_t failed,
                             uint64_t version, double seconds, uint64_t missing,
                             uint64_t unreplicated)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "written", (double)written);
    cJSON_AddNumberToObject(o, "failed", (double)failed);
    cJSON_AddNumberToObject(o, "version", (double)version);
    cJSON_AddNumberToObject(o, "seconds", seconds);
    if (missing)
        cJSON_AddNumberToObject(o, "missing", (double)missing);
    if (unreplicated)
        cJSON_AddNumberToObject(o, "unreplicated", (double)unreplicated);
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    fflush(stdout);
    cJSON_free(s);
    cJSON_Delete(o);
}

int cli_wire_mode(int mode)
{
    switch (mode) {
    case REPL_ALL: return KBSYNC__WRITE_MODE__WRITE_MODE_ALL;
    case REPL_ASYNC: return KBSYNC__WRITE_MODE__WRITE_MODE_ASYNC;
    case REPL_QUORUM: return KBSYNC__WRITE_MODE__WRITE_MODE_QUORUM;
    case REPL_MAJORITY: return KBSYNC__WRITE_MODE__WRITE_MODE_MAJORITY;
    default: return KBSYNC__WRITE_MODE__WRITE_MODE_DEFAULT;
    }
}

int cli_mode(const char *s, uint32_t *k)
{
    repl_mode_t m;
    char err[256];
    if (repl_mode_parse(s, &m, k, err, sizeof err)) {
        fprintf(stderr, "kbsync: --mode: %s\n", err);
        exit(2);
    }
    return (int)m;
}

static int parse_level(const char *s)
{
    if (!strcmp(s, "debug"))
        return KB_LOG_DEBUG;
    if (!strcmp(s, "info"))
        return KB_LOG_INFO;
    if (!strcmp(s, "warn"))
        return KB_LOG_WARN;
    if (!strcmp(s, "error"))
        return KB_LOG_ERROR;
    die_usage("--log-level must be debug, info, warn or error, not \"%s\"", s);
    return 0;
}

static void install_signals(void)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ---------------------------------------------------------------- leader */

/* The checkpoint options of leader and replica (getopt values below). */
#define OPT_CKPT_OPS 1001
#define OPT_CKPT_SECS 1002
#define OPT_CKPT_OFF 1003
#define OPT_DIGEST_MS 1016
#define CKPT_OPTIONS                                                           \
    {"checkpoint-ops", required_argument, 0, OPT_CKPT_OPS},                    \
        {"checkpoint-secs", required_argument, 0, OPT_CKPT_SECS},              \
        {"no-checkpoint", no_argument, 0, OPT_CKPT_OFF},                       \
        {"digest-check-ms", required_argument, 0, OPT_DIGEST_MS}

/* CURVE options of leader and replica (docs/PROTOCOL.md, "Security"). */
#define OPT_KEY 1011
#define OPT_TRUST 1012
#define OPT_LEADER_KEY 1013
#define OPT_INSECURE 1014
#define OPT_CLIENT_QUEUE 1015
#define OPT_METRICS 1017
/* (--metrics-listen rides along: leader and replica both take it.) */
#define SEC_OPTIONS                                                            \
    {"metrics-listen", required_argument, 0, OPT_METRICS},                     \
        {"key", required_argument, 0, OPT_KEY},                                \
        {"trust", required_argument, 0, OPT_TRUST},                            \
        {"insecure", no_argument, 0, OPT_INSECURE},                            \
        {"max-client-queue-mb", required_argument, 0, OPT_CLIENT_QUEUE}

typedef struct sec_opts {
    const char *key, *trust, *leader_key;
    int insecure;
    uint64_t client_queue_mb; /* --max-client-queue-mb; 0: the default */
    int client_queue_set;
    const char *metrics; /* --metrics-listen HOST:PORT */
    kb_curve_t curve, leader_curve;
} sec_opts_t;

static int sec_option(int c, const char *arg, sec_opts_t *o)
{
    switch (c) {
    case OPT_KEY: o->key = arg; return 1;
    case OPT_TRUST: o->trust = arg; return 1;
    case OPT_LEADER_KEY: o->leader_key = arg; return 1;
    case OPT_INSECURE: o->insecure = 1; return 1;
    case OPT_METRICS: o->metrics = arg; return 1;
    case OPT_CLIENT_QUEUE:
        o->client_queue_mb = cli_uint("--max-client-queue-mb", arg, 1u << 20);
        o->client_queue_set = 1;
        return 1;
    default: return 0;
    }
}

/* Loads the keys and checks the combination; exits with a message when it
 * is wrong. Plain TCP is allowed only on local endpoints (eps, NULLs
 * skipped) unless --insecure. */
static void sec_finish(sec_opts_t *o, node_config_t *nc, int replica,
                       const char *const *eps, size_t neps)
{
    char err[512];
    /* 0 on the command line: no limit */
    nc->max_client_queue = !o->client_queue_set ? NODE_CLIENT_QUEUE_DEFAULT
                           : o->client_queue_mb ? o->client_queue_mb << 20
                                                : UINT64_MAX;
    nc->metrics_listen = o->metrics;
    if (o->metrics && strncmp(o->metrics, "127.", 4) &&
        o->metrics[0] != ':')
        kb_warn("--metrics-listen %s: the metrics page has no "
                "authentication; anyone who reaches it sees the node's "
                "counters and replica names",
                o->metrics);
    if (!o->key != !o->trust)
        die_usage("--key and --trust go together (the node's key pair, and "
                  "the keys it lets in)%s", "");
    if (replica && !o->key != !o->leader_key)
        die_usage("a replica's --key needs --leader-key (the leader's public "
                  "key file), and the other way round%s", "");
    if (o->key) {
        if (kb_sec_load_pair(o->key, &o->curve, err, sizeof err))
            die_usage("%s", err);
        nc->curve = &o->curve;
        nc->trust_file = o->trust;
        if (replica) {
            o->leader_curve = o->curve;
            if (kb_sec_load_public(o->leader_key, o->leader_curve.server, err,
                                   sizeof err))
                die_usage("%s", err);
            nc->replica.curve = &o->leader_curve;
        } else {
            nc->leader.curve = &o->curve;
        }
        return;
    }
    for (size_t i = 0; i < neps; i++) {
        if (!eps[i] || kb_sec_endpoint_local(eps[i]))
            continue;
        if (!o->insecure)
            die_usage("%s is not a loopback address and no --key is given: "
                      "anyone who reaches it could read and write (and "
                      "follow as a replica). Give --key and --trust (see "
                      "`kbsync keygen`), or --insecure to run without "
                      "authentication anyway", eps[i]);
    }
    if (o->insecure) {
        nc->insecure = 1;
        kb_warn("--insecure: no CURVE keys; anyone who reaches this node's "
                "endpoints can read, write and follow it as a replica");
    }
}

/* Applies checkpoint option c to the settings; 0 when c is not one. */
/* --digest-check-ms N: the shortest gap between background digest checks
 * (docs/CONSISTENCY.md, "Digests"); 0 = no background checks. */
static int digest_option(int c, const char *arg, uint32_t *ms)
{
    if (c != OPT_DIGEST_MS)
        return 0;
    uint64_t v = cli_uint("--digest-check-ms", arg, 86400000);
    *ms = v ? (uint32_t)v : IDX_SCRUB_OFF;
    return 1;
}

static int ckpt_option(int c, const char *arg, uint64_t *ops, uint32_t *secs,
                       int *off)
{
    if (c == OPT_CKPT_OPS) {
        *ops = cli_uint("--checkpoint-ops", arg, UINT32_MAX);
        if (!*ops)
            *ops = IDX_CKPT_NEVER;
    } else if (c == OPT_CKPT_SECS) {
        *secs = (uint32_t)cli_uint("--checkpoint-secs", arg, 86400);
        if (!*secs)
            die_usage("--checkpoint-secs must be at least 1%s", "");
    } else if (c == OPT_CKPT_OFF) {
        *off = 1;
    } else {
        return 0;
    }
    return 1;
}

static int cmd_leader(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},
        {"dim", required_argument, 0, 'n'},
        {"listen", required_argument, 0, 'l'},
        {"index", required_argument, 0, 'i'},
        {"metric", required_argument, 0, 'm'},
        {"id", required_argument, 0, 'I'},
        {"map-size-gb", required_argument, 0, 'M'},
        {"no-sync", no_argument, 0, 'S'},
        {"threads", required_argument, 0, 't'},
        {"max-msg-mb", required_argument, 0, 'x'},
        {"endpoint-file", required_argument, 0, 'e'},
        {"log-level", required_argument, 0, 'L'},
        {"repl-listen", required_argument, 0, 'r'},
        {"replicas", required_argument, 0, 'R'},
        {"write-mode", required_argument, 0, 'w'},
        {"write-timeout-ms", required_argument, 0, 'W'},
        {"query-threads", required_argument, 0, 'Q'},
        {"log-retain-mb", required_argument, 0, 'B'},
        {"log-retain-hours", required_argument, 0, 'H'},
        {"log-keep-ops", required_argument, 0, 'K'},
        {"dedup-hours", required_argument, 0, 'D'},
        {"dedup-max", required_argument, 0, 'X'},
        CKPT_OPTIONS,
        SEC_OPTIONS,
        {0, 0, 0, 0}};
    static sec_opts_t sec;
    idx_config_t ic = {0};
    node_config_t nc = {.listen = CLI_DEFAULT_ENDPOINT,
                            .max_msg = KB_DEFAULT_MAX_MSG,
                            .role = NODE_LEADER};
    nc.leader.default_mode = REPL_ASYNC;
    nc.leader.write_timeout_ms = 5000;
    int threads = 1, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ckpt_option(c, optarg, &ic.ckpt_ops, &ic.ckpt_secs, &ic.ckpt_off) ||
            digest_option(c, optarg, &ic.scrub_ms) ||
            sec_option(c, optarg, &sec))
            continue;
        switch (c) {
        case 'd': ic.dir = optarg; break;
        case 'n':
            ic.dim = (uint32_t)cli_uint("--dim", optarg, KB_MAX_DIM);
            break;
        case 'l': nc.listen = optarg; break;
        case 'i': ic.index = optarg; break;
        case 'm': ic.metric = optarg; break;
        case 'I': ic.node_id = optarg; break;
        case 'M':
            ic.map_size = cli_uint("--map-size-gb", optarg, 1u << 20) << 30;
            break;
        case 'S': ic.nosync = 1; break;
        case 't': threads = (int)cli_uint("--threads", optarg, 64); break;
        case 'Q':
            nc.query_threads = (int)cli_uint("--query-threads", optarg, 256);
            if (!nc.query_threads)
                die_usage("--query-threads must be at least 1%s", "");
            break;
        case 'x':
            nc.max_msg = (size_t)cli_uint("--max-msg-mb", optarg, 1024) << 20;
            break;
        case 'e': nc.endpoint_file = optarg; break;
        case 'L': kb_log_setup(parse_level(optarg), NULL); break;
        case 'r': nc.leader.repl_listen = optarg; break;
        case 'R': nc.leader.replicas = optarg; break;
        case 'w':
            nc.leader.default_mode =
                (repl_mode_t)cli_mode(optarg, &nc.leader.default_quorum);
            break;
        case 'W':
            nc.leader.write_timeout_ms =
                (int)cli_uint("--write-timeout-ms", optarg, 3600000);
            break;
        case 'B':
            nc.leader.log_retain_mb = cli_uint("--log-retain-mb", optarg,
                                               1u << 24);
            if (!nc.leader.log_retain_mb)
                die_usage("--log-retain-mb must be at least 1%s", "");
            break;
        case 'H':
            nc.leader.log_retain_hours = cli_uint("--log-retain-hours",
                                                  optarg, 24u * 365);
            if (!nc.leader.log_retain_hours)
                die_usage("--log-retain-hours must be at least 1%s", "");
            break;
        case 'K':
            nc.leader.log_keep_ops = cli_uint("--log-keep-ops", optarg,
                                              UINT64_C(1) << 40);
            if (!nc.leader.log_keep_ops) /* 0 in the config means default */
                nc.leader.log_keep_ops = UINT64_MAX;
            break;
        case 'D':
            nc.leader.dedup_hours = cli_uint("--dedup-hours", optarg,
                                             24u * 365);
            if (!nc.leader.dedup_hours)
                die_usage("--dedup-hours must be at least 1%s", "");
            break;
        case 'X':
            nc.leader.dedup_max = cli_uint("--dedup-max", optarg,
                                           UINT64_C(1) << 32);
            if (!nc.leader.dedup_max)
                die_usage("--dedup-max must be at least 1%s", "");
            break;
        default: die_usage("bad option for leader%s", ""); /* fallthrough */
        }
    }
    if (nc.leader.replicas && !nc.leader.repl_listen)
        die_usage("--replicas needs --repl-listen%s", "");
    if (!ic.dir)
        die_usage("leader needs --data DIR%s", "");
    if (ic.metric && strcmp(ic.metric, "ip") && strcmp(ic.metric, "l2") &&
        strcmp(ic.metric, "cosine"))
        die_usage("--metric must be ip, l2 or cosine, not \"%s\"", ic.metric);
    if (nc.max_msg == 0)
        die_usage("--max-msg-mb must be at least 1%s", "");
    const char *eps[] = {nc.listen, nc.leader.repl_listen};
    sec_finish(&sec, &nc, 0, eps, 2);

    install_signals();
    idx_setup(threads);
    char err[512];
    idx_kb_t *ix = NULL;
    int rc = idx_open(&ic, &ix, err, sizeof err);
    if (rc) {
        kb_error("cannot open knowledge base: %s", err);
        return 1;
    }
    rc = node_run(ix, &nc, &g_stop, err, sizeof err);
    idx_close(&ix);
    if (rc) {
        kb_error("%s", err);
        return 1;
    }
    return 0;
}

/* --------------------------------------------------------------- replica */

static int cmd_replica(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'},
        {"id", required_argument, 0, 'I'},
        {"leader", required_argument, 0, 'l'},
        {"listen", required_argument, 0, 'L'},
        {"map-size-gb", required_argument, 0, 'M'},
        {"no-sync", no_argument, 0, 'S'},
        {"threads", required_argument, 0, 't'},
        {"max-msg-mb", required_argument, 0, 'x'},
        {"endpoint-file", required_argument, 0, 'e'},
        {"log-level", required_argument, 0, 'g'},
        {"query-threads", required_argument, 0, 'Q'},
        CKPT_OPTIONS,
        SEC_OPTIONS,
        {"leader-key", required_argument, 0, OPT_LEADER_KEY},
        {0, 0, 0, 0}};
    static sec_opts_t sec;
    node_config_t nc = {.listen = "tcp://127.0.0.1:7410",
                            .max_msg = KB_DEFAULT_MAX_MSG,
                            .role = NODE_REPLICA};
    int threads = 1, c, level = KB_LOG_INFO;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ckpt_option(c, optarg, &nc.replica.ckpt_ops,
                        &nc.replica.ckpt_secs, &nc.replica.ckpt_off) ||
            digest_option(c, optarg, &nc.replica.scrub_ms) ||
            sec_option(c, optarg, &sec))
            continue;
        switch (c) {
        case 'd': nc.replica.data_dir = optarg; break;
        case 'I': nc.replica.id = optarg; break;
        case 'l': nc.replica.leader = optarg; break;
        case 'L': nc.listen = optarg; break;
        case 'M':
            nc.replica.map_size = cli_uint("--map-size-gb", optarg, 1u << 20)
                                  << 30;
            break;
        case 'S': nc.replica.nosync = 1; break;
        case 't': threads = (int)cli_uint("--threads", optarg, 64); break;
        case 'Q':
            nc.query_threads = (int)cli_uint("--query-threads", optarg, 256);
            if (!nc.query_threads)
                die_usage("--query-threads must be at least 1%s", "");
            break;
        case 'x':
            nc.max_msg = (size_t)cli_uint("--max-msg-mb", optarg, 1024) << 20;
            break;
        case 'e': nc.endpoint_file = optarg; break;
        case 'g': level = parse_level(optarg); break;
        default: die_usage("bad option for replica%s", "");
        }
    }
    if (!nc.replica.data_dir || !nc.replica.id || !nc.replica.leader)
        die_usage("replica needs --data DIR, --id NAME and --leader EP%s", "");
    if (nc.max_msg == 0)
        die_usage("--max-msg-mb must be at least 1%s", "");
    kb_log_setup(level, nc.replica.id);
    const char *eps[] = {nc.listen, nc.replica.leader};
    sec_finish(&sec, &nc, 1, eps, 2);
    install_signals();
    idx_setup(threads);
    char err[512];
    if (node_run(NULL, &nc, &g_stop, err, sizeof err)) {
        kb_error("%s", err);
        return 1;
    }
    return 0;
}

/* --------------------------------------------------------------- clients */

int cli_client_key_option(int c, const char *arg)
{
    if (c == CLI_OPT_KEY)
        setenv("KBSYNC_KEY", arg, 1);
    else if (c == CLI_OPT_SERVER_KEY)
        setenv("KBSYNC_SERVER_KEY", arg, 1);
    else
        return 0;
    return 1;
}

static int cmd_keygen(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: kbsync keygen PREFIX   (writes PREFIX.key, "
                        "mode 0600, and PREFIX.pub)\n");
        return 2;
    }
    char err[512];
    if (kb_sec_keygen(argv[1], err, sizeof err)) {
        fprintf(stderr, "kbsync keygen: %s\n", err);
        return 1;
    }
    char pub[KB_Z85_KEY], path[4096];
    snprintf(path, sizeof path, "%s.pub", argv[1]);
    if (kb_sec_load_public(path, pub, err, sizeof err)) {
        fprintf(stderr, "kbsync keygen: %s\n", err);
        return 1;
    }
    printf("%s.key (secret, mode 0600) and %s.pub written; public key:\n%s\n",
           argv[1], argv[1], pub);
    return 0;
}

static qry_client_t *connect_or_die(const char *ep)
{
    char err[512];
    qry_client_t *c;
    if (qry_client_open(ep, &c, err, sizeof err)) {
        fprintf(stderr, "kbsync: %s\n", err);
        exit(1);
    }
    return c;
}

/* Sends req, waits, and exits with a message on a transport error or an
 * error answer. Returns the Response (caller frees). */
static Kbsync__Response *call_or_die(qry_client_t *c, Kbsync__Request *req,
                                     int timeout_ms)
{
    char err[512];
    Kbsync__Response *r;
    if (qry_client_call(c, req, timeout_ms, &r, err, sizeof err)) {
        fprintf(stderr, "kbsync: %s\n", err);
        exit(1);
    }
    if (r->error) {
        fprintf(stderr, "kbsync: error %s (%d): %s\n",
                kb_errname(r->error->code), r->error->code, r->error->message);
        exit(1);
    }
    return r;
}

static void add_state(cJSON *o, const Kbsync__NodeState *s)
{
    cJSON_AddStringToObject(o, "node_id", s->node_id);
    cJSON_AddNumberToObject(o, "version", (double)s->version);
    cJSON_AddNumberToObject(o, "leader_version", (double)s->leader_version);
    cJSON_AddNumberToObject(o, "lag_ops", (double)s->lag_ops);
    cJSON_AddNumberToObject(o, "lag_ms", (double)s->lag_ms);
}

static void print_json(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    printf("%s\n", s);
    cJSON_free(s);
    cJSON_Delete(o);
}

static Kbsync__Response *verify_call(const char *ep, uint64_t at_lsn,
                                     int timeout)
{
    qry_client_t *cl = connect_or_die(ep);
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    Kbsync__VerifyRequest vr = KBSYNC__VERIFY_REQUEST__INIT;
    vr.at_lsn = at_lsn;
    req.body_case = KBSYNC__REQUEST__BODY_VERIFY;
    req.verify = &vr;
    Kbsync__Response *r = call_or_die(cl, &req, timeout);
    qry_client_close(&cl);
    if (!r->verify) {
        fprintf(stderr, "kbsync: verify answer without a result\n");
        exit(1);
    }
    return r;
}

/* kbsync verify: the node's documents against its kept digest, and with
 * --leader, its digest against the leader's at the same LSN. */
static int cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"leader", required_argument, 0, 'l'},
        {"json", no_argument, 0, 'j'},
        {"timeout-ms", required_argument, 0, 'T'},
        CLI_CLIENT_KEY_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT, *leader = NULL;
    int json = 0, timeout = 60000, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'l': leader = optarg; break;
        case 'j': json = 1; break;
        case 'T':
            timeout = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        default: die_usage("bad option for verify%s", "");
        }
    }
    Kbsync__Response *r = verify_call(ep, 0, timeout);
    const Kbsync__VerifyResult *v = r->verify;
    int self_ok = v->kept == v->computed, cmp = -1; /* -1: not compared */
    Kbsync__Response *lr = NULL;
    if (leader) {
        lr = verify_call(leader, v->lsn, timeout);
        if (lr->verify->has_at)
            cmp = lr->verify->digest_at == v->kept;
    }
    if (json) {
        cJSON *o = cJSON_CreateObject();
        char h[24];
        cJSON_AddStringToObject(o, "node_id", v->node_id);
        cJSON_AddStringToObject(o, "role", v->role);
        cJSON_AddNumberToObject(o, "lsn", (double)v->lsn);
        cJSON_AddNumberToObject(o, "docs", (double)v->docs);
        snprintf(h, sizeof h, "%016llx", (unsigned long long)v->kept);
        cJSON_AddStringToObject(o, "kept", h);
        snprintf(h, sizeof h, "%016llx", (unsigned long long)v->computed);
        cJSON_AddStringToObject(o, "computed", h);
        cJSON_AddBoolToObject(o, "documents_match_digest", self_ok);
        if (lr && lr->verify->has_at) {
            snprintf(h, sizeof h, "%016llx",
                     (unsigned long long)lr->verify->digest_at);
            cJSON_AddStringToObject(o, "leader_digest", h);
            cJSON_AddBoolToObject(o, "matches_leader", cmp == 1);
        } else if (lr) {
            cJSON_AddNullToObject(o, "matches_leader");
        }
        print_json(o);
    } else {
        printf("%s %s at LSN %llu: %llu documents add up to %016llx; kept "
               "digest %016llx: %s\n",
               v->role, v->node_id, (unsigned long long)v->lsn,
               (unsigned long long)v->docs, (unsigned long long)v->computed,
               (unsigned long long)v->kept,
               self_ok ? "match"
                       : "DIFFER (its stored documents changed outside "
                         "kbsync)");
        if (lr && cmp >= 0)
            printf("leader %s at LSN %llu: digest %016llx: %s\n",
                   lr->verify->node_id, (unsigned long long)v->lsn,
                   (unsigned long long)lr->verify->digest_at,
                   cmp ? "same as this node"
                       : "DIFFERENT: this node's documents are not the "
                         "leader's at the same LSN");
        else if (lr)
            printf("leader %s no longer holds its digest at LSN %llu (it "
                   "keeps the last 65,536 LSNs it wrote): not compared\n",
                   lr->verify->node_id, (unsigned long long)v->lsn);
    }
    kbsync__response__free_unpacked(r, NULL);
    if (lr)
        kbsync__response__free_unpacked(lr, NULL);
    return self_ok && cmp != 0 ? 0 : 1;
}

/* kbsync list: pages through ListRequests and prints one JSON line per
 * document; with --limit, that many at most. */
static int cmd_list(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"prefix", required_argument, 0, 'p'},
        {"after", required_argument, 0, 'a'},
        {"limit", required_argument, 0, 'n'},
        {"meta-key", required_argument, 0, 'm'},
        {"timeout-ms", required_argument, 0, 'T'},
        CLI_CLIENT_KEY_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT;
    char *after = strdup("");
    Kbsync__ListRequest lq = KBSYNC__LIST_REQUEST__INIT;
    uint64_t limit = UINT64_MAX;
    int timeout = CLI_DEFAULT_TIMEOUT_MS, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'p': lq.prefix = optarg; break;
        case 'a':
            free(after);
            after = strdup(optarg);
            break;
        case 'n':
            limit = cli_uint("--limit", optarg, UINT64_MAX);
            if (!limit)
                die_usage("--limit must be at least 1%s", "");
            break;
        case 'm': lq.meta_key = optarg; break;
        case 'T':
            timeout = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        default: die_usage("bad option for list%s", "");
        }
    }
    if (optind < argc)
        die_usage("list takes no arguments (\"%s\")", argv[optind]);
    qry_client_t *cl = connect_or_die(ep);
    uint64_t printed = 0;
    for (;;) {
        Kbsync__Request req = KBSYNC__REQUEST__INIT;
        lq.after = after;
        uint64_t left = limit - printed;
        lq.limit = left < 10000 ? (uint32_t)left : 10000;
        req.body_case = KBSYNC__REQUEST__BODY_LIST;
        req.list = &lq;
        Kbsync__Response *r = call_or_die(cl, &req, timeout);
        if (!r->list) {
            fprintf(stderr, "kbsync: list answer without a result\n");
            exit(1);
        }
        for (size_t i = 0; i < r->list->n_entries; i++) {
            const Kbsync__ListEntry *e = r->list->entries[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", e->id);
            cJSON_AddNumberToObject(o, "version", (double)e->version);
            if (lq.meta_key && *lq.meta_key)
                cJSON_AddItemToObject(o, "meta",
                                      *e->meta_value
                                          ? cJSON_CreateRaw(e->meta_value)
                                          : cJSON_CreateNull());
            char *line = cJSON_PrintUnformatted(o);
            puts(line);
            cJSON_free(line);
            cJSON_Delete(o);
        }
        printed += r->list->n_entries;
        int more = r->list->more && r->list->n_entries && printed < limit;
        if (more) {
            free(after);
            after = strdup(r->list->entries[r->list->n_entries - 1]->id);
        }
        kbsync__response__free_unpacked(r, NULL);
        if (!more)
            break;
    }
    free(after);
    qry_client_close(&cl);
    return 0;
}

static int cmd_status_or_rebuild(int argc, char **argv, int rebuild)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"timeout-ms", required_argument, 0, 'T'},
        CLI_CLIENT_KEY_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT;
    int json = 0, timeout = 5000, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'j': json = 1; break;
        case 'T':
            timeout = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        default: die_usage("bad option for status%s", "");
        }
    }
    qry_client_t *cl = connect_or_die(ep);
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
    Kbsync__RebuildRequest rr = KBSYNC__REBUILD_REQUEST__INIT;
    if (rebuild) {
        req.body_case = KBSYNC__REQUEST__BODY_REBUILD;
        req.rebuild = &rr;
    } else {
        req.body_case = KBSYNC__REQUEST__BODY_STATUS;
        req.status = &sr;
    }
    Kbsync__Response *r = call_or_die(cl, &req, timeout);
    const Kbsync__NodeState *s = r->status;
    if (!s) {
        fprintf(stderr, "kbsync: status answer without node state\n");
        return 1;
    }
    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", s->role);
        add_state(o, s);
        cJSON_AddNumberToObject(o, "docs", (double)s->docs);
        cJSON_AddNumberToObject(o, "dim", s->dim);
        cJSON_AddStringToObject(o, "metric", s->metric);
        cJSON_AddStringToObject(o, "index", s->index);
        cJSON_AddNumberToObject(o, "vectors", (double)s->vectors);
        cJSON_AddNumberToObject(o, "dead_vectors", (double)s->dead_vectors);
        cJSON_AddNumberToObject(o, "unmerged_vectors",
                                (double)s->unmerged_vectors);
        cJSON_AddNumberToObject(o, "index_bytes", (double)s->index_bytes);
        cJSON_AddNumberToObject(o, "store_bytes", (double)s->store_bytes);
        cJSON_AddBoolToObject(o, "index_trained", s->index_trained);
        cJSON_AddBoolToObject(o, "rebuilding", s->rebuilding);
        cJSON_AddNumberToObject(o, "rebuilds", (double)s->rebuilds);
        cJSON_AddNumberToObject(o, "commits", (double)s->commits);
        cJSON_AddNumberToObject(o, "synced_commits",
                                (double)s->synced_commits);
        cJSON_AddNumberToObject(o, "lazy_commits", (double)s->lazy_commits);
        cJSON_AddNumberToObject(o, "store_syncs", (double)s->store_syncs);
        cJSON_AddNumberToObject(o, "log_start", (double)s->log_start);
        cJSON_AddNumberToObject(o, "durable_version",
                                (double)s->durable_version);
        if (s->snapshot_lsn) {
            cJSON *sn = cJSON_AddObjectToObject(o, "snapshot");
            cJSON_AddNumberToObject(sn, "lsn", (double)s->snapshot_lsn);
            cJSON_AddNumberToObject(sn, "docs_total",
                                    (double)s->snapshot_docs_total);
            cJSON_AddNumberToObject(sn, "docs_loaded",
                                    (double)s->snapshot_docs_loaded);
            cJSON_AddNumberToObject(sn, "bytes_loaded",
                                    (double)s->snapshot_bytes_loaded);
            cJSON_AddNumberToObject(sn, "eta_ms", (double)s->snapshot_eta_ms);
        }
        cJSON_AddNumberToObject(o, "checkpoint_lsn", (double)s->checkpoint_lsn);
        cJSON_AddNumberToObject(o, "checkpoint_age_ms",
                                (double)s->checkpoint_age_ms);
        cJSON_AddNumberToObject(o, "checkpoint_write_ms",
                                (double)s->checkpoint_write_ms);
        cJSON_AddBoolToObject(o, "checkpointing", s->checkpointing);
        cJSON_AddBoolToObject(o, "index_from_checkpoint",
                              s->index_from_checkpoint);
        cJSON_AddNumberToObject(o, "index_open_ms", (double)s->index_open_ms);
        cJSON_AddNumberToObject(o, "query_threads", s->query_threads);
        cJSON_AddNumberToObject(o, "queries", (double)s->queries);
        cJSON_AddNumberToObject(o, "query_batches", (double)s->query_batches);
        cJSON_AddNumberToObject(o, "client_queue_bytes",
                                (double)s->client_queue_bytes);
        cJSON_AddBoolToObject(o, "insecure", s->insecure);
        char hex[24];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)s->digest);
        cJSON_AddStringToObject(o, "digest", hex);
        cJSON_AddNumberToObject(o, "digest_lsn", (double)s->digest_lsn);
        cJSON_AddNumberToObject(o, "digest_checks", (double)s->digest_checks);
        cJSON_AddNumberToObject(o, "digest_check_ms",
                                (double)s->digest_check_ms);
        cJSON_AddNumberToObject(o, "digest_check_mismatches",
                                (double)s->digest_check_mismatches);
        cJSON_AddNumberToObject(o, "digest_check_yields",
                                (double)s->digest_check_yields);
        cJSON_AddNumberToObject(o, "digest_check_skips",
                                (double)s->digest_check_skips);
        cJSON_AddNumberToObject(o, "digest_resyncs", (double)s->digest_resyncs);
        if (!strcmp(s->role, "leader")) {
            cJSON_AddNumberToObject(o, "idempotency_entries",
                                    (double)s->idempotency_entries);
            cJSON_AddNumberToObject(o, "idempotent_retries",
                                    (double)s->idempotent_retries);
        }
        cJSON *cqa = cJSON_AddArrayToObject(o, "client_queues");
        for (size_t i = 0; i < s->n_client_queues; i++) {
            cJSON *co = cJSON_CreateObject();
            cJSON_AddStringToObject(co, "client", s->client_queues[i]->client);
            cJSON_AddNumberToObject(co, "bytes",
                                    (double)s->client_queues[i]->bytes);
            cJSON_AddBoolToObject(co, "over_limit",
                                  s->client_queues[i]->over_limit);
            cJSON_AddItemToArray(cqa, co);
        }
        cJSON_AddNumberToObject(o, "clients_over_queue_limit",
                                (double)s->clients_over_queue_limit);
        cJSON_AddNumberToObject(o, "dropped_client_answers",
                                (double)s->dropped_client_answers);
        cJSON_AddNumberToObject(o, "dropped_client_requests",
                                (double)s->dropped_client_requests);
        cJSON *hist = cJSON_AddArrayToObject(o, "query_batch_hist");
        for (size_t i = 0; i < s->n_query_batch_hist; i++)
            cJSON_AddItemToArray(
                hist, cJSON_CreateNumber((double)s->query_batch_hist[i]));
        if (!strcmp(s->role, "replica"))
            cJSON_AddNumberToObject(o, "leader_contact_ms",
                                    (double)s->leader_contact_ms);
        else {
            cJSON *ra = cJSON_AddArrayToObject(o, "replicas");
            for (size_t i = 0; i < s->n_replicas; i++) {
                const Kbsync__ReplicaState *p = s->replicas[i];
                cJSON *po = cJSON_CreateObject();
                cJSON_AddStringToObject(po, "id", p->id);
                cJSON_AddBoolToObject(po, "connected", p->connected);
                cJSON_AddNumberToObject(po, "version", (double)p->version);
                cJSON_AddNumberToObject(po, "lag_ops", (double)p->lag_ops);
                cJSON_AddNumberToObject(po, "lag_ms", (double)p->lag_ms);
                cJSON_AddNumberToObject(po, "durable_version",
                                        (double)p->durable_version);
                cJSON_AddNumberToObject(po, "durable_lag_ops",
                                        (double)p->durable_lag_ops);
                cJSON_AddNumberToObject(po, "durable_lag_ms",
                                        (double)p->durable_lag_ms);
                cJSON_AddNumberToObject(po, "received_version",
                                        (double)p->received_version);
                cJSON_AddNumberToObject(po, "received_lag_ops",
                                        (double)p->received_lag_ops);
                cJSON_AddNumberToObject(po, "received_lag_ms",
                                        (double)p->received_lag_ms);
                cJSON_AddNumberToObject(po, "digest_match_lsn",
                                        (double)p->digest_match_lsn);
                cJSON_AddNumberToObject(po, "digest_mismatch_lsn",
                                        (double)p->digest_mismatch_lsn);
                cJSON_AddNumberToObject(po, "digest_mismatches",
                                        (double)p->digest_mismatches);
                cJSON_AddBoolToObject(po, "snapshot", p->snapshot);
                cJSON_AddNumberToObject(po, "queued_bytes",
                                        (double)p->queued_bytes);
                cJSON_AddItemToArray(ra, po);
            }
        }
        print_json(o);
    } else {
        printf("%s %s: version %llu (leader %llu), lag %llu ops / %llu ms, "
               "%llu docs, dim %u, metric %s, index %s\n",
               s->role, s->node_id, (unsigned long long)s->version,
               (unsigned long long)s->leader_version,
               (unsigned long long)s->lag_ops, (unsigned long long)s->lag_ms,
               (unsigned long long)s->docs, s->dim, s->metric, s->index);
        printf("  index: %llu vectors (%llu dead, %llu not merged yet), %.1f "
               "MB%s%s; store %.1f MB; %llu commits\n",
               (unsigned long long)s->vectors,
               (unsigned long long)s->dead_vectors,
               (unsigned long long)s->unmerged_vectors, s->index_bytes / 1e6,
               s->index_trained ? "" : ", not trained yet (exact search)",
               s->rebuilding ? ", rebuilding" : "", s->store_bytes / 1e6,
               (unsigned long long)s->commits);
        printf("  queries: %llu in %llu batches on %u threads; batch sizes "
               "1/2/3-4/5-8/9-16/17-32/33-64:",
               (unsigned long long)s->queries,
               (unsigned long long)s->query_batches, s->query_threads);
        for (size_t i = 0; i < s->n_query_batch_hist; i++)
            printf(" %llu", (unsigned long long)s->query_batch_hist[i]);
        printf("\n");
        if (!strcmp(s->role, "replica"))
            printf("  last heard from the leader %llu ms ago\n",
                   (unsigned long long)s->leader_contact_ms);
        printf("  log from LSN %llu (below it: live documents only); "
               "durable LSN %llu\n",
               (unsigned long long)s->log_start,
               (unsigned long long)(s->durable_version ? s->durable_version
                                                       : s->version));
        printf("  digest %016llx at LSN %llu; %llu background checks (last "
               "%llu ms; %llu gave way to writes; %llu skipped, the store "
               "unchanged), %llu mismatches%s\n",
               (unsigned long long)s->digest,
               (unsigned long long)s->digest_lsn,
               (unsigned long long)s->digest_checks,
               (unsigned long long)s->digest_check_ms,
               (unsigned long long)s->digest_check_yields,
               (unsigned long long)s->digest_check_skips,
               (unsigned long long)s->digest_check_mismatches,
               s->digest_resyncs ? " (copied anew from the leader)" : "");
        if (s->snapshot_lsn)
            printf("  LOADING A SNAPSHOT up to LSN %llu: %llu of %llu "
                   "documents, %.1f MB, about %llu ms left (queries refused "
                   "until complete)\n",
                   (unsigned long long)s->snapshot_lsn,
                   (unsigned long long)s->snapshot_docs_loaded,
                   (unsigned long long)s->snapshot_docs_total,
                   s->snapshot_bytes_loaded / 1e6,
                   (unsigned long long)s->snapshot_eta_ms);
        for (size_t i = 0; i < s->n_replicas; i++) {
            const Kbsync__ReplicaState *p = s->replicas[i];
            printf("  replica %s: %s, received %llu / durable %llu / "
                   "searchable %llu, lag %llu ops / %llu ms%s%s\n",
                   p->id, p->connected ? "connected" : "NOT connected",
                   (unsigned long long)p->received_version,
                   (unsigned long long)p->durable_version,
                   (unsigned long long)p->version,
                   (unsigned long long)p->lag_ops,
                   (unsigned long long)p->lag_ms,
                   p->snapshot ? ", being sent a snapshot" : "",
                   p->digest_mismatches ? ", DIGEST MISMATCH seen" : "");
        }
    }
    kbsync__response__free_unpacked(r, NULL);
    qry_client_close(&cl);
    return 0;
}

static const char *level_name(Kbsync__ReadLevel l)
{
    switch (l) {
    case KBSYNC__READ_LEVEL__READ_EVENTUAL: return "eventual";
    case KBSYNC__READ_LEVEL__READ_BOUNDED: return "bounded";
    case KBSYNC__READ_LEVEL__READ_SESSION: return "session";
    case KBSYNC__READ_LEVEL__READ_STRONG: return "strong";
    default: return "default";
    }
}

/* --consistency eventual | bounded:MS | session:VERSION | strong */
static void parse_consistency(const char *s, Kbsync__QueryRequest *q)
{
    if (!strcmp(s, "eventual")) {
        q->consistency = KBSYNC__READ_LEVEL__READ_EVENTUAL;
    } else if (!strcmp(s, "strong")) {
        q->consistency = KBSYNC__READ_LEVEL__READ_STRONG;
    } else if (!strncmp(s, "bounded:", 8)) {
        q->consistency = KBSYNC__READ_LEVEL__READ_BOUNDED;
        q->max_lag_ms = cli_uint("--consistency bounded:MS", s + 8, 86400000);
    } else if (!strncmp(s, "session:", 8)) {
        q->consistency = KBSYNC__READ_LEVEL__READ_SESSION;
        q->min_version = cli_uint("--consistency session:VERSION", s + 8,
                                  UINT64_MAX);
    } else {
        die_usage("--consistency must be eventual, bounded:MS, "
                  "session:VERSION or strong, not \"%s\"", s);
    }
}

/* --embed-url: the query text becomes a vector from the user's model
 * server, checked against the node's dim (from its status) before it is
 * sent. Exits with a message when it cannot be had. Returns the vector. */
static float *query_embed(qry_client_t *cl, const char *ep, int timeout,
                          cli_embed_config_t *emb, const char *text,
                          Kbsync__QueryRequest *q)
{
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    Kbsync__StatusRequest sr = KBSYNC__STATUS_REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_STATUS;
    req.status = &sr;
    Kbsync__Response *r = call_or_die(cl, &req, timeout);
    uint32_t kb_dim = r->status ? r->status->dim : 0, dim = 0;
    kbsync__response__free_unpacked(r, NULL);
    float *v = NULL;
    char err[700];
    if (cli_embed_one(emb, text, &v, &dim, err, sizeof err)) {
        fprintf(stderr, "kbsync: --embed-url: %s\n", err);
        exit(1);
    }
    if (kb_dim && dim != kb_dim) {
        fprintf(stderr,
                "kbsync: model \"%s\" at %s gives %u-dimensional vectors, "
                "but the knowledge base at %s has dim %u: query with the "
                "model its documents were embedded with\n",
                emb->model, emb->url, dim, ep, kb_dim);
        exit(1);
    }
    q->vector = v;
    q->n_vector = dim;
    return v;
}

static int cmd_query(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"vector", required_argument, 0, 'v'},
        {"text", required_argument, 0, 'x'},
        {"min-version", required_argument, 0, 'm'},
        {"max-lag-ms", required_argument, 0, 'g'},
        {"wait-ms", required_argument, 0, 'W'},
        {"timeout-ms", required_argument, 0, 'T'},
        {"ef-search", required_argument, 0, 'E'},
        {"nprobe", required_argument, 0, 'P'},
        {"filter", required_argument, 0, 'F'},
        {"consistency", required_argument, 0, 'C'},
        CLI_CLIENT_KEY_OPTIONS,
        CLI_EMBED_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT, *vec = NULL, *text = NULL;
    cli_embed_config_t emb;
    cli_embed_config_init(&emb);
    Kbsync__Filter filt[IDX_MAX_FILTERS + 1];
    Kbsync__Filter *filtp[IDX_MAX_FILTERS + 1];
    char *fbuf[IDX_MAX_FILTERS + 1];
    size_t nf = 0;
    int json = 0, timeout = CLI_DEFAULT_TIMEOUT_MS, c;
    Kbsync__QueryRequest q = KBSYNC__QUERY_REQUEST__INIT;
    q.k = 10;
    while ((c = getopt_long(argc, argv, "k:", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg) ||
            cli_embed_option(c, optarg, &emb))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'j': json = 1; break;
        case 'k': q.k = (uint32_t)cli_uint("-k", optarg, KB_MAX_K); break;
        case 'v': vec = optarg; break;
        case 'x': text = optarg; break;
        case 'm':
            q.min_version = cli_uint("--min-version", optarg, UINT64_MAX);
            break;
        case 'g':
            q.max_lag_ms = cli_uint("--max-lag-ms", optarg, UINT64_MAX);
            break;
        case 'W':
            q.wait_ms = (uint32_t)cli_uint("--wait-ms", optarg, 60000);
            break;
        case 'T':
            timeout = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        case 'E':
            q.ef_search = (uint32_t)cli_uint("--ef-search", optarg,
                                             IDX_MAX_EF_SEARCH);
            if (!q.ef_search)
                die_usage("--ef-search must be at least 1%s", "");
            break;
        case 'P':
            q.nprobe = (uint32_t)cli_uint("--nprobe", optarg, 1u << 20);
            if (!q.nprobe)
                die_usage("--nprobe must be at least 1%s", "");
            break;
        case 'F': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg)
                die_usage("--filter needs KEY=VALUE, not \"%s\"", optarg);
            if (nf > IDX_MAX_FILTERS)
                die_usage("at most 16 --filter options%s", "");
            fbuf[nf] = strdup(optarg);
            fbuf[nf][eq - optarg] = 0;
            kbsync__filter__init(&filt[nf]);
            filt[nf].key = fbuf[nf];
            filt[nf].value = fbuf[nf] + (eq - optarg) + 1;
            filtp[nf] = &filt[nf];
            nf++;
            break;
        }
        case 'C': parse_consistency(optarg, &q); break;
        default: die_usage("bad option for query%s", "");
        }
    }
    if (optind < argc && (text || optind + 1 < argc))
        die_usage("query takes one TEXT (or --text), not also \"%s\"",
                  argv[argc - 1]);
    if (optind < argc)
        text = argv[optind];
    int embed = cli_embed_finish(&emb);
    if (embed && !text)
        die_usage("--embed-url embeds a query text: give --text TEXT%s", "");
    if (!vec == !text)
        die_usage("query needs exactly one of --vector or --text%s", "");
    if (q.k == 0)
        die_usage("-k must be at least 1%s", "");
    float *v = NULL;
    if (vec) {
        char err[256];
        size_t n;
        v = malloc(sizeof(float) * KB_MAX_DIM);
        if (!v || kb_json_parse_floats(vec, strlen(vec), v, KB_MAX_DIM, &n, err,
                                       sizeof err)) {
            fprintf(stderr, "kbsync: --vector: %s\n",
                    v ? err : "out of memory");
            return 2;
        }
        q.vector = v;
        q.n_vector = n;
    } else if (!embed) {
        q.text = (char *)text;
    }
    q.filters = filtp;
    q.n_filters = nf;
    qry_client_t *cl = connect_or_die(ep);
    if (embed)
        v = query_embed(cl, ep, timeout, &emb, text, &q);
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    req.body_case = KBSYNC__REQUEST__BODY_QUERY;
    req.query = &q;
    Kbsync__Response *r = call_or_die(cl, &req, timeout);
    const Kbsync__QueryResult *qr = r->query;
    if (!qr || !qr->state) {
        fprintf(stderr, "kbsync: query answer without result\n");
        return 1;
    }
    if (json) {
        cJSON *o = cJSON_CreateObject();
        add_state(o, qr->state);
        cJSON_AddStringToObject(o, "consistency", level_name(qr->level));
        if (qr->read_index)
            cJSON_AddNumberToObject(o, "read_index", (double)qr->read_index);
        cJSON *hits = cJSON_AddArrayToObject(o, "hits");
        for (size_t i = 0; i < qr->n_hits; i++) {
            const Kbsync__Hit *h = qr->hits[i];
            cJSON *ho = cJSON_CreateObject();
            cJSON_AddStringToObject(ho, "id", h->id);
            cJSON_AddNumberToObject(ho, "version", (double)h->version);
            cJSON_AddNumberToObject(ho, "score", h->score);
            cJSON_AddStringToObject(ho, "text", h->text);
            /* Stored metadata was checked to be a JSON object on ingest. */
            if (h->metadata_json && *h->metadata_json)
                cJSON_AddRawToObject(ho, "metadata", h->metadata_json);
            else
                cJSON_AddItemToObject(ho, "metadata", cJSON_CreateObject());
            cJSON_AddItemToArray(hits, ho);
        }
        print_json(o);
    } else {
        const Kbsync__NodeState *s = qr->state;
        printf("%s %s: version %llu (leader %llu), lag %llu ops / %llu ms, "
               "%s read, %zu hits\n",
               s->role, s->node_id, (unsigned long long)s->version,
               (unsigned long long)s->leader_version,
               (unsigned long long)s->lag_ops, (unsigned long long)s->lag_ms,
               level_name(qr->level), qr->n_hits);
        for (size_t i = 0; i < qr->n_hits; i++) {
            const Kbsync__Hit *h = qr->hits[i];
            int tl = (int)strlen(h->text);
            printf("%3zu. %8.4f  %s  %.*s%s\n", i + 1, h->score, h->id,
                   tl > 100 ? 100 : tl, h->text, tl > 100 ? "..." : "");
        }
    }
    kbsync__response__free_unpacked(r, NULL);
    qry_client_close(&cl);
    free(v);
    for (size_t i = 0; i < nf; i++)
        free(fbuf[i]);
    return 0;
}

static int cmd_delete(int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"mode", required_argument, 0, 'm'},
        {"timeout-ms", required_argument, 0, 'T'},
        CLI_CLIENT_KEY_OPTIONS,
        {0, 0, 0, 0}};
    const char *ep = CLI_DEFAULT_ENDPOINT;
    int timeout = CLI_DEFAULT_TIMEOUT_MS, c, mode = 0;
    uint32_t quorum = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (cli_client_key_option(c, optarg))
            continue;
        switch (c) {
        case 't': ep = optarg; break;
        case 'm': mode = cli_mode(optarg, &quorum); break;
        case 'j': break; /* the summary line is always JSON */
        case 'T':
            timeout = (int)cli_uint("--timeout-ms", optarg, 86400000);
            break;
        default: die_usage("bad option for delete%s", "");
        }
    }
    size_t n = (size_t)(argc - optind);
    if (n == 0)
        die_usage("delete needs at least one ID%s", "");
    uint64_t t0 = kb_mono_us();
    qry_client_t *cl = connect_or_die(ep);
    Kbsync__Request req = KBSYNC__REQUEST__INIT;
    Kbsync__DeleteRequest d = KBSYNC__DELETE_REQUEST__INIT;
    d.n_ids = n;
    d.ids = argv + optind;
    d.mode = cli_wire_mode(mode);
    d.quorum = quorum;
    req.body_case = KBSYNC__REQUEST__BODY_DELETE;
    req.delete_ = &d;
    char err[512];
    Kbsync__Response *r;
    int rc = qry_client_call(cl, &req, timeout, &r, err, sizeof err);
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    if (rc || !r->write) {
        fprintf(stderr, "kbsync: delete failed: %s\n",
                rc         ? err
                : r->error ? r->error->message
                           : "no write result");
        cli_print_write_summary(0, n, 0, secs, 0, 0);
        return 1;
    }
    if (r->error) /* `all` timed out: committed on the leader only */
        fprintf(stderr, "kbsync: delete: %s\n", r->error->message);
    if (r->write->missing)
        fprintf(stderr, "kbsync: %u of %zu ids were not present\n",
                r->write->missing, n);
    cli_print_write_summary(r->write->written, 0, r->write->version, secs,
                            r->write->missing,
                            r->error ? r->write->written : 0);
    if (r->error) {
        kbsync__response__free_unpacked(r, NULL);
        qry_client_close(&cl);
        return 1;
    }
    kbsync__response__free_unpacked(r, NULL);
    qry_client_close(&cl);
    return 0;
}

/* Node processes run with glibc's malloc backing large allocations by
 * transparent huge pages (the tunable glibc.malloc.hugetlb=1, read only at
 * process start, hence the exec of ourselves: same pid, same arguments).
 * The FAISS index grows by reallocating its vectors; on 4 KiB pages each
 * growth faults every page in again, which cost a leader ingesting 100k
 * 384-d documents about 45% of its CPU (docs/BENCHMARKS.md, "Write path").
 * Only when the kernel gives huge pages on request ("[madvise]"; with
 * "[always]" there is nothing to do); KBSYNC_HUGE_PAGES=0 turns it off. */
static void huge_pages_reexec(char **argv)
{
    const char *off = getenv("KBSYNC_HUGE_PAGES");
    const char *tun = getenv("GLIBC_TUNABLES");
    const char *pre = getenv("LD_PRELOAD");
    if ((off && !strcmp(off, "0")) ||
        (tun && strstr(tun, "glibc.malloc.hugetlb")))
        return;
    /* Under valgrind an exec would leave it (children are not traced by
     * default), and its own malloc ignores the tunable anyway. */
    if (pre && (strstr(pre, "vgpreload") || strstr(pre, "valgrind")))
        return;
    char mode[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (f) {
        if (!fgets(mode, sizeof mode, f))
            mode[0] = 0;
        fclose(f);
    }
    if (!strstr(mode, "[madvise]"))
        return;
    /* Exec this binary by its path, so that the process keeps its name
     * (exec'ing /proc/self/exe would rename it "exe"); not when started
     * through the dynamic loader, or when the file was replaced. */
    char self[4096];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return;
    self[len] = 0;
    const char *base = strrchr(self, '/');
    base = base ? base + 1 : self;
    if (!strncmp(base, "ld-", 3) || strstr(self, " (deleted)"))
        return;
    char val[1024];
    int n = snprintf(val, sizeof val, "%s%sglibc.malloc.hugetlb=1",
                     tun ? tun : "", tun && *tun ? ":" : "");
    if (n < 0 || (size_t)n >= sizeof val || setenv("GLIBC_TUNABLES", val, 1))
        return;
    execv(self, argv);
    /* no exec (no /proc?): run on as we are, without the setting */
    if (tun)
        setenv("GLIBC_TUNABLES", tun, 1);
    else
        unsetenv("GLIBC_TUNABLES");
}

/* `kbsync ingest` never calls BLAS (FAISS links it), yet OpenBLAS starts a
 * thread per further core when it is loaded, and that thread spins on
 * sched_yield for its first ~0.1 s, on a core the nodes being fed need (a
 * third of a dry run's system time). OpenBLAS's own shutdown call (exported
 * for its fork handling; a later BLAS call would start the threads again)
 * ends them at once. With another BLAS library there is nothing to do. */
static void blas_threads_stop(void)
{
    int (*shutdown)(void) =
        (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
    if (shutdown)
        shutdown();
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
        !strcmp(argv[1], "help")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    /* `kbsync COMMAND --help`: the usage, on stdout, exit 0 (ingest has a
     * longer text of its own). */
    if (strcmp(cmd, "ingest"))
        for (int i = 2; i < argc && strcmp(argv[i], "--"); i++)
            if (!strcmp(argv[i], "--help") ||
                (argc == 3 && !strcmp(argv[i], "-h"))) {
                fputs(USAGE, stdout);
                return 0;
            }
    if (!strcmp(cmd, "leader") || !strcmp(cmd, "replica"))
        huge_pages_reexec(argv);
    if (!strcmp(cmd, "ingest"))
        blas_threads_stop();
    kb_log_setup(KB_LOG_INFO, cmd);
    argc--;
    argv++;
    if (!strcmp(cmd, "leader"))
        return cmd_leader(argc, argv);
    if (!strcmp(cmd, "keygen"))
        return cmd_keygen(argc, argv);
    if (!strcmp(cmd, "replica"))
        return cmd_replica(argc, argv);
    if (!strcmp(cmd, "ingest"))
        return cli_ingest_main(argc, argv);
    if (!strcmp(cmd, "query"))
        return cmd_query(argc, argv);
    if (!strcmp(cmd, "delete"))
        return cmd_delete(argc, argv);
    if (!strcmp(cmd, "status"))
        return cmd_status_or_rebuild(argc, argv, 0);
    if (!strcmp(cmd, "rebuild"))
        return cmd_status_or_rebuild(argc, argv, 1);
    if (!strcmp(cmd, "verify"))
        return cmd_verify(argc, argv);
    if (!strcmp(cmd, "list"))
        return cmd_list(argc, argv);
    die_usage("unknown command \"%s\"", cmd);
    return 2;
}
