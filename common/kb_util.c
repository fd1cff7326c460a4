/* kb_util: clocks, stderr logging and error-text helpers (see kb_util.h). */
#include "kb_util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
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

void kb_abstime_in(struct timespec *ts, uint64_t us)
{
    clock_gettime(CLOCK_REALTIME, ts);
    uint64_t ns = (uint64_t)ts->tv_nsec + (us % 1000000u) * 1000u;
    ts->tv_sec += (time_t)(us / 1000000u + ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
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

/* CRC-32C (see kb_util.h): the SSE 4.2 instruction when the CPU has it
 * (about 8 bytes per 3 cycles), else a byte table. */

static uint32_t crc_table[256];

static void crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_soft(uint32_t crc, const unsigned char *p, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, crc_table_init);
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t kb_crc32c(uint32_t crc, const void *buf, size_t n)
{
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc_hw(crc, buf, n);
#endif
    return ~crc_soft(crc, buf, n);
}
