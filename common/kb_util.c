/* kb_util: clocks, stderr logging and error-text helpers (see kb_util.h). */
#include "kb_util.h"

#include <stdio.h>
#include <time.h>

/* Set once by main() before any thread starts; read-only afterwards. */
static int kb__log_level = KB_LOG_INFO;
static const char *kb__log_who = "kbsync";

int kb_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

uint64_t kb_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t kb_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void kb_log_setup(int level, const char *who)
{
    kb__log_level = level;
    if (who)
        kb__log_who = who;
}

static void log_line(int level, const char *suffix, const char *fmt,
                     va_list ap)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, kb__log_who,
                     names[level < 0   ? 0
                           : level > 3 ? 3
                                       : level]);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    /* One write per line so lines from several processes do not interleave. */
    fprintf(stderr, "%s%s\n", line, suffix);
}

void kb_log(int level, const char *fmt, ...)
{
    if (level < kb__log_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, "", fmt, ap);
    va_end(ap);
}

int kb_log_limited(kb_loglimit_t *l, int level, const char *fmt, ...)
{
    if (level < kb__log_level)
        return 0;
    uint64_t now = kb_mono_us();
    if (l->last_us && now - l->last_us < KB_LOG_LIMIT_MS * 1000u) {
        l->suppressed++;
        return 0;
    }
    char suffix[96] = "";
    if (l->suppressed)
        snprintf(suffix, sizeof suffix,
                 " (and %llu more like it since the last such line)",
                 (unsigned long long)l->suppressed);
    l->last_us = now;
    l->suppressed = 0;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, suffix, fmt, ap);
    va_end(ap);
    return 1;
}
