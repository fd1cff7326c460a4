/* bench_embed: how close the pipelined embedding client (cli/cli_embed)
 * gets to the rate an embedding server allows. It starts the stand-in
 * server (tests/embed_server.py) answering every batch in --latency-ms and
 * computing at most --server-parallel batches at once, so it allows
 * server_parallel * batch / latency texts per second, and embeds --texts
 * texts the way ingest would: jobs of --job texts, --window jobs queued,
 * taken in order. One untimed pass first fills the stand-in's vector cache
 * (computing vectors in Python would otherwise be the bottleneck, not the
 * latency being modelled); then one timed pass per client --parallel.
 *
 * usage: bench_embed [--server PATH] [--texts 20000] [--dim 384]
 *   [--latency-ms 20] [--server-parallel 4] [--batch 64] [--parallel 1,4,6]
 *   [--job 1000] [--window 4] [--text-bytes 300] */
#include "bench_common.h"
#include "cli_embed.h"
#include "kb_util.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct opts {
    const char *server, *parallel;
    int texts, dim, server_parallel, batch, job, window, text_bytes;
    double latency_ms;
} opts_t;

static pid_t g_server; /* killed at exit */

/* CPU seconds (user + system) this process has used, all threads. */
static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds the stand-in server has used (from /proc). */
static double server_cpu(void)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)g_server);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
                     "%lu %lu",
                     &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void kill_server(void)
{
    if (g_server > 0) {
        kill(g_server, SIGTERM);
        waitpid(g_server, NULL, 0);
        g_server = 0;
    }
}

/* Starts the stand-in and returns its port. */
static int start_server(const opts_t *o)
{
    char dim[16], lat[32], par[16];
    snprintf(dim, sizeof dim, "%d", o->dim);
    snprintf(lat, sizeof lat, "%g", o->latency_ms);
    snprintf(par, sizeof par, "%d", o->server_parallel);
    char *argv[] = {"/usr/bin/python3",
                    (char *)o->server,
                    "--dim",
                    dim,
                    "--latency-ms",
                    lat,
                    "--max-concurrent",
                    par,
                    NULL};
    int fd[2];
    if (pipe(fd))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    g_server = pid;
    atexit(kill_server);
    char line[32] = "";
    size_t n = 0;
    struct pollfd p = {fd[0], POLLIN, 0};
    while (n < sizeof line - 1 && !strchr(line, '\n') &&
           poll(&p, 1, 15000) == 1) {
        ssize_t r = read(fd[0], line + n, sizeof line - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        line[n] = 0;
    }
    close(fd[0]);
    return atoi(line);
}

/* Embeds all texts once with `parallel` requests in flight; returns the
 * seconds it took, or a negative number on an error (printed). */
static double run(const opts_t *o, const char *url, char **texts,
                  uint32_t parallel, cli_embed_stats_t *st)
{
    cli_embed_config_t c;
    cli_embed_config_init(&c);
    c.url = url;
    c.model = "bench";
    c.batch = (uint32_t)o->batch;
    c.parallel = parallel;
    c.dim = (uint32_t)o->dim;
    cli_embed_t *e;
    char err[1024];
    if (cli_embed_open(&c, &e, err, sizeof err)) {
        fprintf(stderr, "bench_embed: %s\n", err);
        return -1;
    }
    uint64_t t0 = kb_mono_us();
    int next = 0, done = 0, rc = 0;
    while (!rc && done < o->texts) {
        while (next < o->texts && cli_embed_pending(e) < (size_t)o->window) {
            int n = o->texts - next < o->job ? o->texts - next : o->job;
            rc = cli_embed_submit(e, (const char *const *)texts + next, NULL,
                                  (size_t)n, NULL, err, sizeof err);
            if (rc)
                break;
            next += n;
        }
        cli_embed_result_t r;
        if (!rc && !(rc = cli_embed_next(e, -1, &r, err, sizeof err))) {
            done += (int)r.n;
            free(r.vectors);
        }
    }
    double secs = (double)(kb_mono_us() - t0) / 1e6;
    cli_embed_stats(e, st);
    cli_embed_close(&e);
    if (rc) {
        fprintf(stderr, "bench_embed: %s\n", err);
        return -1;
    }
    return secs;
}

static int parse_opts(int argc, char **argv, opts_t *o)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--server"))
            o->server = v;
        else if (!strcmp(k, "--parallel"))
            o->parallel = v;
        else if (!strcmp(k, "--texts"))
            o->texts = atoi(v);
        else if (!strcmp(k, "--dim"))
            o->dim = atoi(v);
        else if (!strcmp(k, "--latency-ms"))
            o->latency_ms = atof(v);
        else if (!strcmp(k, "--server-parallel"))
            o->server_parallel = atoi(v);
        else if (!strcmp(k, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(k, "--job"))
            o->job = atoi(v);
        else if (!strcmp(k, "--window"))
            o->window = atoi(v);
        else if (!strcmp(k, "--text-bytes"))
            o->text_bytes = atoi(v);
        else
            return -1;
    }
    return argc % 2 == 1 && o->texts > 0 && o->dim > 0 && o->batch > 0 &&
                   o->job > 0 && o->window > 0 && o->server_parallel > 0 &&
                   o->latency_ms > 0
               ? 0
               : -1;
}

int main(int argc, char **argv)
{
    opts_t o = {.server = "tests/embed_server.py",
                .parallel = "1,4,6",
                .texts = 20000,
                .dim = 384,
                .latency_ms = 20,
                .server_parallel = 4,
                .batch = 64,
                .job = 1000,
                .window = 4,
                .text_bytes = 300};
    if (parse_opts(argc, argv, &o)) {
        fprintf(stderr, "usage: bench_embed [--server tests/embed_server.py] "
                        "[--texts N] [--dim D] [--latency-ms MS] "
                        "[--server-parallel P] [--batch B] [--parallel "
                        "1,4,6] [--job J] [--window W] [--text-bytes N]\n");
        return 2;
    }
    if (access(o.server, R_OK)) {
        fprintf(stderr, "bench_embed: cannot read %s (give --server)\n",
                o.server);
        return 2;
    }
    kb_log_setup(KB_LOG_WARN, "bench_embed");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    char **texts = calloc((size_t)o.texts, sizeof *texts);
    for (int i = 0; i < o.texts; i++) {
        texts[i] = malloc((size_t)o.text_bytes + 32);
        int n = snprintf(texts[i], 32, "%d: ", i);
        bench_text((uint64_t)i, texts[i] + n, (size_t)o.text_bytes);
    }
    int port = start_server(&o);
    if (port <= 0) {
        fprintf(stderr, "bench_embed: the stand-in server did not start\n");
        return 1;
    }
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    cli_embed_stats_t st;
    double warm = run(&o, url, texts, (uint32_t)o.server_parallel, &st);
    if (warm < 0)
        return 1;
    double allowed = o.server_parallel * o.batch / (o.latency_ms / 1000.0);
    printf("stand-in: %d batches of %d texts at once, %g ms each: allows "
           "%.0f texts/s; dim %d, %d texts of ~%d bytes, jobs of %d, window "
           "%d (cache warm-up pass: %.2f s)\n",
           o.server_parallel, o.batch, o.latency_ms, allowed, o.dim, o.texts,
           o.text_bytes, o.job, o.window, warm);
    printf("%9s %9s %12s %12s %9s %9s %9s %11s %11s\n", "parallel", "seconds",
           "texts/s", "allowed/s", "of_allowed", "requests", "peak_fly",
           "client_cpu", "server_cpu");
    char *list = strdup(o.parallel), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        uint32_t p = (uint32_t)atoi(t);
        if (!p)
            continue;
        double c0 = self_cpu(), s0 = server_cpu();
        double secs = run(&o, url, texts, p, &st);
        if (secs < 0)
            return 1;
        double ccpu = self_cpu() - c0, scpu = server_cpu() - s0;
        double rate = o.texts / secs;
        double cap =
            (p < (uint32_t)o.server_parallel ? p
                                             : (uint32_t)o.server_parallel) *
            o.batch / (o.latency_ms / 1000.0);
        printf("%9u %9.2f %12.0f %12.0f %8.1f%% %9llu %9u %10.2fs %10.2fs\n", p,
               secs, rate, cap, 100.0 * rate / cap,
               (unsigned long long)st.attempts, st.peak_in_flight, ccpu, scpu);
        fflush(stdout);
    }
    free(list);
    for (int i = 0; i < o.texts; i++)
        free(texts[i]);
    free(texts);
    kill_server();
    curl_global_cleanup();
    return 0;
}
