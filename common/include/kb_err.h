/* kb_err: the one table of kbsync error codes, shared by every module and by
 * the wire protocol (Response.error.code). Codes are negative; system errors
 * are passed through as -errno, which never collide with the range below. */
#ifndef KB_ERR_H
#define KB_ERR_H

/* X(name, value, text). Values are stable: they travel on the wire. */
#define KB_ERRNO_MAP(X)                                                        \
    X(INVAL, -1000, "invalid argument")                                        \
    X(DIM, -1001, "wrong embedding dimension")                                 \
    X(NONFINITE, -1002, "embedding value is NaN or infinite")                  \
    X(BADID, -1003, "document id is empty or too long")                        \
    X(BADJSON, -1004, "malformed JSON")                                        \
    X(BADMSG, -1005, "malformed or unknown protocol message")                  \
    X(TOOBIG, -1006, "message or field exceeds its size limit")                \
    X(PROTO, -1007, "unsupported protocol version")                            \
    X(MISMATCH, -1008, "settings differ from the stored knowledge base")       \
    X(STORE, -1009, "storage (LMDB) error")                                    \
    X(INDEX, -1010, "vector index (FAISS) error")                              \
    X(NET, -1011, "network (ZeroMQ) error")                                    \
    X(TIMEOUT, -1012, "timed out")                                             \
    X(NOTLEADER, -1013, "this node does not accept writes")                    \
    X(NOREPLICA, -1014, "a required replica is not connected")                 \
    X(STALE, -1015, "node is too stale for the requested consistency")         \
    X(CORRUPT, -1016, "stored data is corrupt")                                \
    X(GAP, -1017, "replication log gap or reordering")                         \
    X(UNAVAIL, -1018, "node unavailable")                                      \
    X(NOMEM, -1019, "out of memory")                                          \
    X(ACCES, -1020, "not allowed for this key's role")                         \
    X(CONFLICT, -1021, "a conditional write found another version")

typedef enum kb_errno {
#define KB__ERR_ENUM(name, val, text) KB_E##name = (val),
    KB_ERRNO_MAP(KB__ERR_ENUM)
#undef KB__ERR_ENUM
} kb_errno_t;

/* Returns a static, never-NULL text for any code: a KB_E* code, a -errno, or 0.
 */
const char *kb_strerror(int code);

/* Returns the symbolic name ("KB_EDIM", "ENOENT", ...) of a code. Static. */
const char *kb_errname(int code);

#endif
