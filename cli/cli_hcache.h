/* cli_hcache: `kbsync ingest`'s cache of chunk hashes, private to cli/.
 * In: the files of a walk (with their stat) and the chunk hashes a run
 * computed for them. Out: for a file that has not changed since, its chunk
 * hashes without reading it. One file per set of command-line roots and
 * chunking settings, in the cache directory; written whole at the end of a
 * run (temporary file, then rename), checked whole when read.
 *
 * What it is for: `ingest --resume` compares each chunk's hash with the one
 * the leader holds. Without the cache every file is read, decoded, chunked
 * and hashed again for that; with it, a file whose identity and times are
 * the same as when it was hashed is not read at all (the quick check rsync,
 * make and git make). The leader's listing is still read and compared in
 * full: the cache never says what the leader holds, only what a file
 * holds.
 *
 * When a file counts as unchanged: same device, inode, size, mtime and
 * ctime (both to the nanosecond) as recorded. ctime cannot be set by a
 * user: any write, chmod or rename into place changes it. One gap is
 * closed by hand: a file written again within the timestamp granularity
 * of its last change could keep both times, so a file changed less than
 * CLI_HCACHE_RACY_NS before the run's walk is not recorded (it is hashed
 * again next time). What is left: clocks that jump back by more than that,
 * or a file system whose times come from a server with another clock;
 * `--no-cache` then reads every file. */
#ifndef CLI_HCACHE_H
#define CLI_HCACHE_H

#include "cli_chunk.h"

#include <stddef.h>
#include <stdint.h>

/* A file changed this close to the walk (or after it) is not recorded. */
#define CLI_HCACHE_RACY_NS 2000000000LL

/* Cache files kept in the directory: the least recently written beyond
 * this many are removed when one is written. */
#define CLI_HCACHE_KEEP 32

/* A cache file over this size is not read (and not written). */
#define CLI_HCACHE_MAX_BYTES (1ull << 30)

typedef struct cli_hcache cli_hcache_t;

/* The cache file for `key` (everything the hashes depend on besides the
 * files: settings, roots, the program) in directory dir; it is read if it
 * is there, whole and for the same key, else the cache starts empty (*why,
 * if not NULL, says why it was not used: for the log, never an error).
 * walk_ns: the wall time (ns since the epoch) at which the walk began.
 * Returns 0, or KB_ENOMEM. */
int cli_hcache_open(cli_hcache_t **c, const char *dir, const char *key,
                    int64_t walk_ns, const char **why);

/* f's chunk hashes (2 per chunk, *ns chunks) if the cache read holds
 * them for a file with f's identity and times; NULL otherwise. Valid until
 * cli_hcache_free. Reads only: threads may call it side by side. */
const uint64_t *cli_hcache_get(const cli_hcache_t *c, const cli_file_t *f,
                               size_t *ns);

/* Records f's chunk hashes for the next run (unless f changed too
 * recently, see above). Not thread-safe. Returns 0, or KB_ENOMEM. */
int cli_hcache_put(cli_hcache_t *c, const cli_file_t *f, const uint64_t *h,
                   size_t ns);

/* Writes what was put (and only that) as the cache file, then removes the
 * oldest cache files beyond CLI_HCACHE_KEEP. Returns 0 or a KB_E* code
 * with err set. */
int cli_hcache_save(cli_hcache_t *c, char *err, size_t errlen);

/* The number of files the last open read, and of files put since. */
size_t cli_hcache_loaded(const cli_hcache_t *c);
size_t cli_hcache_recorded(const cli_hcache_t *c);

/* The file this cache reads and writes. */
const char *cli_hcache_path(const cli_hcache_t *c);

void cli_hcache_free(cli_hcache_t *c);

/* The cache directory a run uses by default: $KBSYNC_CACHE_DIR, else
 * $XDG_CACHE_HOME/kbsync, else $HOME/.cache/kbsync; NULL when none of
 * these is set. The caller frees it. */
char *cli_hcache_default_dir(void);

#endif
