/* cli: the kbsync command-line program, private to cli/. kbsync.c parses
 * the subcommand and runs leader/query/delete/status; cli_ingest.c runs
 * ingest; cli_embed.h is the client of the user's embedding server (query
 * and ingest --embed-url). Shared here: option helpers and the JSON
 * renderings of answers. */
#ifndef CLI_H
#define CLI_H

#include "kbsync.pb-c.h"

#include <stdint.h>

#define CLI_DEFAULT_ENDPOINT "tcp://127.0.0.1:7400"
#define CLI_DEFAULT_TIMEOUT_MS 30000

int cli_ingest_main(int argc, char **argv);

/* The client commands' --key FILE and --server-key FILE (CURVE): they set
 * KBSYNC_KEY and KBSYNC_SERVER_KEY, which qry_client_open reads. */
#define CLI_OPT_KEY 1101
#define CLI_OPT_SERVER_KEY 1102
#define CLI_CLIENT_KEY_OPTIONS                                                 \
    {"key", required_argument, 0, CLI_OPT_KEY},                                \
        {"server-key", required_argument, 0, CLI_OPT_SERVER_KEY}
/* Handles option c if it is one of those; 1 when it was. */
int cli_client_key_option(int c, const char *arg);

/* Parses a non-negative integer option value or exits with a message
 * naming the option. */
uint64_t cli_uint(const char *opt, const char *val, uint64_t max);

/* Parses "async", "all", "majority" or "quorum:K" into a repl_mode_t
 * (and K) or exits with a message. */
int cli_mode(const char *s, uint32_t *k);
/* repl_mode_t (0 = not given) -> Kbsync__WriteMode. */
int cli_wire_mode(int mode);

/* Prints the final summary line of a write command as one JSON object:
 * {"written":..,"failed":..,"version":..,"seconds":..}, plus "missing"
 * (delete: ids not present) and "unreplicated" (committed on the leader but
 * not confirmed by every named replica in time) when non-zero. */
void cli_print_write_summary(uint64_t written, uint64_t failed,
                             uint64_t version, double seconds, uint64_t missing,
                             uint64_t unreplicated);

#endif
