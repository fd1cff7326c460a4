/* kb_util: what every kbsync module shares: clocks, logging to stderr, and
 * the error-text buffer convention. No state beyond the process-wide log
 * level, which is set once at start-up by main(). */
#ifndef KB_UTIL_H
#define KB_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Limits that the wire protocol, the store and the CLI all enforce. */
#define KB_PROTOCOL_VERSION 1u /* client API (Request/Response) */
/* Replication (ReplMessage). 2: records above ReplBeat.committed_lsn are
 * staged, not searchable; ReplAck.durable_lsn. A leader ignores a hello of
 * another version. */
#define KB_REPL_PROTOCOL_VERSION 2u
#define KB_MAX_ID_LEN 256u              /* bytes; LMDB keys stay < 511 */
#define KB_MAX_TEXT_LEN (1u << 20)      /* 1 MiB per document text */
#define KB_MAX_METADATA_LEN (64u << 10) /* 64 KiB of JSON per document */
#define KB_MAX_DIM 4096u
#define KB_MAX_K 1000u
#define KB_DEFAULT_MAX_MSG (64u << 20) /* bytes in one request */

/* An error-text buffer: functions that can fail with a reason take
 * (char *err, size_t errlen) and write a NUL-terminated text there; err may
 * be NULL. kb_seterr returns code so callers can write
 * `return kb_seterr(err, errlen, KB_EDIM, "...", ...)`. */
int kb_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* CRC-32C (Castagnoli, reflected, as iSCSI and ext4 use it). Streaming:
 * crc = kb_crc32c(crc, buf, n), starting at 0. Any thread. */
uint32_t kb_crc32c(uint32_t crc, const void *buf, size_t n);

/* Microseconds: monotonic (for durations) and wall clock (for timestamps
 * that cross machines, e.g. a leader's commit time). */
uint64_t kb_mono_us(void);
uint64_t kb_wall_us(void);

struct timespec;
/* The CLOCK_REALTIME time us microseconds from now, for
 * pthread_cond_timedwait. */
void kb_abstime_in(struct timespec *ts, uint64_t us);

enum { KB_LOG_DEBUG = 0, KB_LOG_INFO = 1, KB_LOG_WARN = 2, KB_LOG_ERROR = 3 };

/* Sets the minimum level printed (default KB_LOG_INFO) and the name printed
 * in front of each line (borrowed; must outlive all logging). */
void kb_log_setup(int level, const char *who);

/* Prints "2026-11-21T11:22:33.456Z who LEVEL: message" to stderr. */
void kb_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* For lines a peer can cause at its own pace (malformed messages, unknown
 * senders): one limiter per kind of line, used from one thread. At most one
 * line per KB_LOG_LIMIT_MS; the next line printed says how many were left
 * out. */
#define KB_LOG_LIMIT_MS 1000
typedef struct kb_loglimit {
    uint64_t last_us;
    uint64_t suppressed;
} kb_loglimit_t;
/* Returns 1 when the line was printed, 0 when it was left out. */
int kb_log_limited(kb_loglimit_t *l, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define kb_debug(...) kb_log(KB_LOG_DEBUG, __VA_ARGS__)
#define kb_info(...) kb_log(KB_LOG_INFO, __VA_ARGS__)
#define kb_warn(...) kb_log(KB_LOG_WARN, __VA_ARGS__)
#define kb_error(...) kb_log(KB_LOG_ERROR, __VA_ARGS__)

#endif
