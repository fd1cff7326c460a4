/* kb_proc: process helpers for end-to-end tests. Starts real `kbsync`
 * processes on loopback with ephemeral ports (--listen tcp://127.0.0.1:*
 * and --endpoint-file), runs CLI commands and captures their output, and
 * makes sure every child dies with the test: children get PR_SET_PDEATHSIG
 * and are killed in kbp_kill_all(), which tests call from teardown and
 * atexit. Header-only; test code only. */
#ifndef KB_PROC_H
#define KB_PROC_H

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <zmq.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KBP_MAX_CHILDREN 16

static pid_t kbp_children[KBP_MAX_CHILDREN];

static inline const char *kbp_bin(void)
{
    const char *b = getenv("KBSYNC_BIN");
    return b ? b : "./kbsync";
}

static inline void kbp_forget(pid_t pid)
{
    for (int i = 0; i < KBP_MAX_CHILDREN; i++)
        if (kbp_children[i] == pid)
            kbp_children[i] = 0;
}

/* Kills (SIGKILL) and reaps every child still running. */
static inline void kbp_kill_all(void)
{
    for (int i = 0; i < KBP_MAX_CHILDREN; i++) {
        if (kbp_children[i] > 0) {
            kill(kbp_children[i], SIGKILL);
            waitpid(kbp_children[i], NULL, 0);
            kbp_children[i] = 0;
        }
    }
}

/* Starts `kbsync <argv...>` with stderr appended to logpath. */
static inline pid_t kbp_spawn(const char *logpath, char *const argv[])
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
            close(fd);
        }
        execv(kbp_bin(), argv);
        _exit(127);
    }
    for (int i = 0; pid > 0 && i < KBP_MAX_CHILDREN; i++)
        if (kbp_children[i] == 0) {
            kbp_children[i] = pid;
            break;
        }
    return pid;
}

/* Waits up to timeout_ms for path to hold a line; copies it (no newline). */
static inline int kbp_wait_file(const char *path, char *out, size_t cap,
                                int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        FILE *f = fopen(path, "r");
        if (f) {
            char *ok = fgets(out, (int)cap, f);
            fclose(f);
            if (ok && strchr(out, '\n')) {
                out[strcspn(out, "\n")] = 0;
                return 0;
            }
        }
        usleep(20000);
    }
    return -1;
}

/* Sends sig to pid and waits up to timeout_ms for it to exit. Returns its
 * wait status, or -1 if it did not exit (it is then killed). */
static inline int kbp_stop(pid_t pid, int sig, int timeout_ms)
{
    kill(pid, sig);
    int st;
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            kbp_forget(pid);
            return st;
        }
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    kbp_forget(pid);
    return -1;
}

/* Runs a shell command line, captures stdout (up to cap bytes) and returns
 * the exit status (or -1). stderr goes to the test's stderr. */
static inline int kbp_run(char *out, size_t cap, const char *fmt, ...)
{
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = out ? fread(out, 1, cap - 1, p) : 0;
    if (out)
        out[n] = 0;
    else {
        char sink[4096];
        while (fread(sink, 1, sizeof sink, p) > 0) {
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Parses the last non-empty line of out as a JSON object (caller deletes). */
static inline cJSON *kbp_last_json(const char *out)
{
    const char *end = out + strlen(out);
    while (end > out && (end[-1] == '\n' || end[-1] == ' '))
        end--;
    const char *start = end;
    while (start > out && start[-1] != '\n')
        start--;
    return cJSON_ParseWithLength(start, (size_t)(end - start));
}

static inline double kbp_num(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* A memory figure of a process from /proc/PID/status ("VmRSS", "VmHWM"),
 * in MB (-1 when unreadable). */
static inline long kbp_status_mb(pid_t pid, const char *what)
{
    char path[64], line[256], fmt[32];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    snprintf(fmt, sizeof fmt, "%s: %%ld", what);
    FILE *f = fopen(path, "r");
    long kb = -1024;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, fmt, &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb / 1024;
}

/* A DEALER that reads (almost) nothing: receive high-water mark rcvhwm,
 * a socket buffer of rcvbuf bytes, no linger; routing id rid (NULL: ZeroMQ
 * picks one); connected to ep. NULL on error. */
static inline void *kbp_non_reader(void *ctx, const char *ep, int rcvhwm,
                                   int rcvbuf, const char *rid)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    if (!s)
        return NULL;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(s, ZMQ_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (rid)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, strlen(rid));
    if (zmq_connect(s, ep)) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* Deterministic test vectors: component j of document doc, in [-1, 1]. */
static inline float kbp_vec(int doc, int j)
{
    unsigned x = (unsigned)(doc * 2654435761u) ^ (unsigned)(j * 40503u);
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    return (float)((x % 2001u) / 1000.0 - 1.0);
}

/* Writes a JSONL file of n documents big-<i>: text `word` repeated
 * `times` times, and kbp_vec's embedding of dim values. */
static inline void kbp_write_big_docs(const char *path, int n, int dim,
                                      const char *word, int times)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    for (int i = 0; i < n; i++) {
        fprintf(f, "{\"id\": \"big-%d\", \"text\": \"", i);
        for (int j = 0; j < times; j++)
            fputs(word, f);
        fprintf(f, "\", \"embedding\": [");
        for (int j = 0; j < dim; j++)
            fprintf(f, "%s%.9g", j ? "," : "", kbp_vec(i, j));
        fprintf(f, "]}\n");
    }
    fclose(f);
}

/* Writes document doc's vector as a JSON array for --vector. */
static inline char *kbp_vector_arg(int doc, int dim, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int j = 0; j < dim; j++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%.9g", j ? "," : "",
                              kbp_vec(doc, j));
    snprintf(buf + n, cap - n, "]");
    return buf;
}

#endif
