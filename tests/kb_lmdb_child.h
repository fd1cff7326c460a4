/* kb_lmdb_child: for tests that play "another process writing to a node's
 * LMDB store" (an operator's tool, kb_tamper): a forked child opens an
 * environment of its own on DIR (a forked child must not use the parent's),
 * runs edit() in one write transaction and commits; the test fails unless
 * that all worked. Header-only; the test links LMDB and cmocka. */
#ifndef KB_LMDB_CHILD_H
#define KB_LMDB_CHILD_H

#include <lmdb.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* edit: 0 or an LMDB error code. */
typedef int (*kbt_lmdb_edit_fn)(MDB_txn *txn, void *arg);

static inline void kbt_lmdb_child(const char *dir, kbt_lmdb_edit_fn edit,
                                  void *arg)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* not cmocka's: a crash ends the child */
        signal(SIGABRT, SIG_DFL);
        MDB_env *env;
        MDB_txn *txn;
        int rc = mdb_env_create(&env);
        rc = rc ? rc : mdb_env_set_maxdbs(env, 8);
        rc = rc ? rc : mdb_env_open(env, dir, MDB_NOTLS, 0644);
        rc = rc ? rc : mdb_txn_begin(env, NULL, 0, &txn);
        rc = rc ? rc : edit(txn, arg);
        rc = rc ? rc : mdb_txn_commit(txn);
        _exit(rc ? 1 : 0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

#endif
