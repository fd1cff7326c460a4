/* kb_sec: CURVE security for kbsync's sockets. In: key files written by
 * `kbsync keygen`, a trust file of allowed public keys with their roles.
 * Out: key pairs for sockets (kb_curve_t, used by kb_wire_socket_curve), a
 * ZAP handler thread that admits trusted keys and tags their messages with
 * the key's role (ZeroMQ's "User-Id" message property), and role checks.
 * State owned: the ZAP handler (kb_zap_t: its thread, its socket, the
 * trust table). See docs/PROTOCOL.md, "Security". */
#ifndef KB_SEC_H
#define KB_SEC_H

#include <stddef.h>

#define KB_Z85_KEY 41 /* a CURVE key in Z85: 40 characters and a NUL */

/* CURVE settings of one socket. A server socket needs pub, sec and a ZAP
 * domain; a client socket pub, sec and the server's public key. */
typedef struct kb_curve {
    char pub[KB_Z85_KEY], sec[KB_Z85_KEY];
    char server[KB_Z85_KEY]; /* client sockets: the server's public key */
    const char *domain;      /* server sockets: ZAP domain */
} kb_curve_t;

/* Roles a trusted key may have (the ZAP user id of its messages). */
typedef enum kb_role {
    KB_ROLE_NONE = 0, /* plain TCP: no key, no role checks */
    KB_ROLE_READER,   /* query, status */
    KB_ROLE_WRITER,   /* also upsert, delete, rebuild */
    KB_ROLE_ADMIN,    /* all of that, and status with replica details */
    KB_ROLE_REPLICA,  /* follow the leader under one id; nothing else */
} kb_role_t;

/* Writes a new key pair: PREFIX.key (both keys, mode 0600) and PREFIX.pub
 * (the public key). Refuses to overwrite an existing file. 0 or an error. */
int kb_sec_keygen(const char *prefix, char *err, size_t errlen);

/* Reads a key pair file; refuses one that group or others may read (the
 * secret key would not be secret). 0 or an error naming the file. */
int kb_sec_load_pair(const char *path, kb_curve_t *c, char *err,
                     size_t errlen);

/* Reads a public key from a .pub or .key file into out. 0 or an error. */
int kb_sec_load_public(const char *path, char out[KB_Z85_KEY], char *err,
                       size_t errlen);

/* The role of a message from its ZAP user id (zmq_msg_gets "User-Id"); for
 * KB_ROLE_REPLICA *id points at the replica id. NULL or "": KB_ROLE_NONE. */
kb_role_t kb_sec_role(const char *user_id, const char **id);

/* The ZAP handler: admits the keys of a trust file, one per line,
 * "<public key in Z85> <role>" with role reader, writer, admin or
 * replica:<id> (a line whose first character is '#' is a comment; Z85
 * keys may hold '#'). Refused keys are logged once per key
 * (rate-limited past that). Runs in its own thread on ctx's inproc ZAP
 * endpoint until kb_zap_stop. */
typedef struct kb_zap kb_zap_t;
int kb_zap_start(void *ctx, const char *trust_path, kb_zap_t **out, char *err,
                 size_t errlen);
void kb_zap_stop(kb_zap_t **zp);

/* Whether an endpoint is on this machine only (tcp on 127.0.0.0/8, ::1 or
 * localhost; ipc; inproc). */
int kb_sec_endpoint_local(const char *endpoint);

#endif
