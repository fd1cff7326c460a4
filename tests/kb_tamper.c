/* kb_tamper: a test tool that edits a node's LMDB store behind its back, as
 * an operator with a hex editor or a flipped bit would: it rewrites the text
 * of one document's stored record in place, touching nothing else (not the
 * digest kept with the documents). The node may be running (LMDB allows
 * another process in). For the anti-entropy tests only.
 * With --and-digest it also rewrites the kept digest to match the edited
 * documents, as a bug in kbsync itself would: then only a comparison with
 * the leader can tell.
 * usage: kb_tamper [--and-digest] DIR ID NEW-TEXT */
#include "idx_store.h"
#include "kbsync.pb-c.h"

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what, int rc)
{
    fprintf(stderr, "kb_tamper: %s: %s\n", what, mdb_strerror(rc));
    return 1;
}

int main(int argc, char **argv)
{
    int and_digest = argc > 1 && !strcmp(argv[1], "--and-digest");
    argc -= and_digest;
    argv += and_digest;
    if (argc != 4) {
        fprintf(stderr, "usage: kb_tamper [--and-digest] DIR ID NEW-TEXT\n");
        return 2;
    }
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi ids, log, meta;
    int rc = mdb_env_create(&env);
    if (!rc)
        rc = mdb_env_set_maxdbs(env, 8);
    if (!rc)
        rc = mdb_env_open(env, argv[1], MDB_NOTLS, 0644);
    if (rc)
        return die("open", rc);
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = mdb_dbi_open(txn, "ids", 0, &ids)) ||
        (rc = mdb_dbi_open(txn, "log", MDB_INTEGERKEY, &log)) ||
        (rc = mdb_dbi_open(txn, "meta", 0, &meta)))
        return die("begin", rc);
    MDB_val k = {strlen(argv[2]), argv[2]}, v;
    if ((rc = mdb_get(txn, ids, &k, &v)) || v.mv_size != 8)
        return die("find the id", rc ? rc : MDB_CORRUPTED);
    uint64_t label;
    memcpy(&label, v.mv_data, 8);
    MDB_val lk = {8, &label}, lv;
    if ((rc = mdb_get(txn, log, &lk, &lv)))
        return die("find its record", rc);
    Kbsync__LogRecord *r =
        kbsync__log_record__unpack(NULL, lv.mv_size, lv.mv_data);
    if (!r || !r->doc) {
        fprintf(stderr, "kb_tamper: record %llu does not decode\n",
                (unsigned long long)label);
        return 1;
    }
    r->doc->text = argv[3];
    size_t n = kbsync__log_record__get_packed_size(r);
    uint8_t *buf = malloc(n);
    kbsync__log_record__pack(r, buf);
    MDB_val nv = {n, buf};
    uint64_t old_h = idx_store_record_hash(lv.mv_data, lv.mv_size);
    if ((rc = mdb_put(txn, log, &lk, &nv, 0)))
        return die("write", rc);
    if (and_digest) {
        MDB_val dk = {6, "digest"}, dv;
        uint64_t d;
        if ((rc = mdb_get(txn, meta, &dk, &dv)) || dv.mv_size != 8)
            return die("read the digest", rc ? rc : MDB_CORRUPTED);
        memcpy(&d, dv.mv_data, 8);
        d = d - old_h + idx_store_record_hash(buf, n);
        MDB_val nd = {8, &d};
        if ((rc = mdb_put(txn, meta, &dk, &nd, 0)))
            return die("write the digest", rc);
    }
    if ((rc = mdb_txn_commit(txn)))
        return die("commit", rc);
    printf("kb_tamper: record %llu of \"%s\" rewritten (%zu bytes)\n",
           (unsigned long long)label, argv[2], n);
    mdb_env_close(env);
    return 0;
}
