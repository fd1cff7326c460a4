"""kbsync.Client under faults, against real processes: reads that fall back
to the leader when a replica is stale, unavailable or silent; all-mode
writes with a stopped replica (KB_ETIMEOUT with the committed WriteResult,
then KB_ENOREPLICA); idempotent retries across a leader that exits between
its commit and its answer (KBSYNC_TEST_FAULT=crash-after-commit:N), for a
single write and for a pipelined stream; CURVE roles (KB_EACCES)."""
import os
import subprocess
import threading
import time

import pytest

import kbsync
from conftest import free_port, kbsync_binary, vec


def doc(name, i=0):
    return {"id": name, "text": "text of " + name, "embedding": vec(i)}


def wait_version(c, ep, v, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if c.status(ep).version >= v:
            return
        time.sleep(0.02)
    raise AssertionError("%s never reached version %d" % (ep, v))


def dead_endpoint():
    return "tcp://127.0.0.1:%d" % free_port()


def test_faults_reads_fall_back_to_leader(make_cluster):
    cl = make_cluster(nreplicas=1, named=False).start()
    cl.wait_up(cl.leader_ep)
    r1 = cl.replica_eps["r1"]
    kb = cl.client(timeout=3.0, replica_timeout=0.8, wait_ms=300)
    w = kb.upsert([doc("a", 1), doc("b", 2)])
    wait_version(kb, r1, w.version)
    r = kb.query(vec(1), k=1)
    assert (r.endpoint, r.fallback, r.hits[0].id) == (r1, False, "a")

    # Stale: r1 restarted toward a leader that is not there. It serves its
    # old version; a session read of a newer write is refused (KB_ESTALE)
    # and answered by the leader.
    node = cl.replicas["r1"]
    node.terminate()
    node.argv[node.argv.index("--leader") + 1] = dead_endpoint()
    node.start()
    cl.wait_up(r1)
    w2 = kb.upsert(doc("c", 3))
    r = kb.query(vec(3), k=1)
    assert r.fallback and r.endpoint == cl.leader_ep
    assert r.version >= w2.version and r.hits[0].id == "c"
    assert r.level == "session"
    with pytest.raises(kbsync.StaleError) as ei:
        kb.query(vec(3), k=1, endpoint=r1)
    assert ei.value.endpoint == r1
    with pytest.raises(kbsync.StaleError):
        kb.query(vec(3), k=1, fallback=False)
    # it still answers eventual reads, and says how stale it is
    r = kb.query(vec(3), k=1, consistency="eventual", endpoint=r1)
    assert r.version < w2.version and r.hits[0].id != "c"

    # Unavailable: a new replica that never reached its leader has no
    # knowledge base yet (KB_EUNAVAIL).
    fresh = cl.add_replica("r9", dead_endpoint()).start()
    ep9 = cl.replica_eps["r9"]
    cl.wait_up(ep9)
    with kbsync.Client([cl.leader_ep, ep9], timeout=3.0,
                       consistency="eventual") as k2:
        assert k2.nodes()[ep9] == "replica"
        r = k2.query(vec(1), k=1)
        assert r.fallback and r.endpoint == cl.leader_ep
        with pytest.raises(kbsync.UnavailableError):
            k2.query(vec(1), k=1, fallback=False)
    fresh.terminate()

    # Silent: a stopped replica is waited for replica_timeout, then the
    # leader answers; it is skipped for a while after that.
    node.stop()
    try:
        t0 = time.monotonic()
        r = kb.query(vec(3), k=1, consistency="eventual")
        assert r.fallback and r.endpoint == cl.leader_ep
        assert time.monotonic() - t0 >= 0.7
        t0 = time.monotonic()
        r = kb.query(vec(3), k=1, consistency="eventual")
        assert r.endpoint == cl.leader_ep
        assert time.monotonic() - t0 < 0.5, "the silent replica was not " \
            "skipped"
    finally:
        node.cont()
    kb.close()


def test_faults_all_write_with_stopped_replica(make_cluster):
    cl = make_cluster(nreplicas=2, write_timeout_ms=400).start()
    cl.wait_connected(2)
    kb = cl.client(timeout=5.0)
    assert kb.upsert(doc("w0"), mode="all").quorum == 2
    r2 = cl.replicas["r2"]
    r2.stop()
    try:
        # r2 still counts as connected (< 1 s): the write is committed on
        # the leader and times out waiting for it
        with pytest.raises(kbsync.TimedOutError) as ei:
            kb.upsert(doc("w1"), mode="all")
        e = ei.value
        assert e.committed and e.write.version > 0
        stages = {r.replica_id: r.stage for r in e.write.receipts}
        assert stages == {"r1": "searchable", "r2": "none"}
        assert kb.last_version == e.write.version
        # once the leader marked r2 disconnected: refused, nothing written
        v = cl.wait_connected(1).version
        with pytest.raises(kbsync.NoReplicaError) as ei:
            kb.upsert(doc("w2"), mode="all")
        assert not ei.value.committed and "r2" in ei.value.message
        with pytest.raises(kbsync.NoReplicaError):
            kb.delete("w0", mode="quorum:2")
        assert kb.status().version == v
        w = kb.upsert(doc("w3"), mode="quorum:1")
        assert w.quorum == 1
    finally:
        r2.cont()
    kb.close()


def through_leader_crash(make_cluster, n, write, down_s=0.0):
    """Starts a leader that exits after its group commit #n of idempotent
    writes, and a replica (which answers while the leader is away: the
    retries must wait for the leader, not ask it), runs write(client) in a
    thread, restarts the leader (from this thread: PR_SET_PDEATHSIG ties a
    node to the thread that started it) once it exited, and returns what
    write returned. The leader stays down down_s seconds."""
    cl = make_cluster(nreplicas=1, named=False, leader_env={
        "KBSYNC_TEST_FAULT": "crash-after-commit:%d" % n})
    cl.start()
    cl.wait_up(cl.leader_ep)
    cl.wait_up(cl.replica_eps["r1"])
    kb = cl.client(timeout=1.0, retries=8)
    out = {}

    def run():
        try:
            out["result"] = write(kb)
        except BaseException as e:  # re-raised below
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    rc = cl.leader.proc.wait(30)
    assert rc == 9, "the leader did not exit after its commit (%r)" % rc
    time.sleep(down_s)  # retries meanwhile find only the replica
    cl.leader.start(env={"KBSYNC_TEST_FAULT": ""})
    t.join(60)
    if "error" in out:
        raise out["error"]
    return kb, out["result"]


def test_faults_retry_after_leader_crash(make_cluster):
    kb, w = through_leader_crash(make_cluster, 1,
                                 lambda kb: kb.upsert(doc("crash-a")),
                                 down_s=2.5)
    assert w.retried, "answered by the first attempt: nothing was retried"
    assert w.version == 1 and w.written == 1
    s = kb.status()
    assert (s.version, s.docs) == (1, 1), "the retry was written again"
    w = kb.upsert(doc("crash-b"))
    assert (w.version, w.retried) == (2, False)
    kb.close()


def test_faults_pipelined_retry_after_leader_crash(make_cluster):
    n = 3000
    kb, b = through_leader_crash(
        make_cluster, 2, lambda kb: kb.upsert_many(
            (doc("bulk-%d" % i, i) for i in range(n)), batch_size=250,
            window=4))
    assert b.batches == 12 and b.written == n
    assert b.retried >= 1, "no batch was answered from the idempotency table"
    s = kb.status()
    assert (s.version, s.docs) == (n, n), "a batch was written twice or lost"
    kb.close()


def test_faults_curve_roles(make_cluster, workdir):
    keys = {}
    for k in ("leader", "reader", "writer"):
        p = os.path.join(workdir, k)
        subprocess.run([kbsync_binary(), "keygen", p],
                       check=True, stdout=subprocess.DEVNULL)
        with open(p + ".pub") as f:
            keys[k] = [ln.split("=", 1)[1].strip() for ln in f
                       if ln.startswith("public-key")][0]
    trust = os.path.join(workdir, "leader.trust")
    with open(trust, "w") as f:
        f.write("%s reader\n%s writer\n" % (keys["reader"], keys["writer"]))
    cl = make_cluster(nreplicas=0, leader_args=[
        "--key", os.path.join(workdir, "leader.key"), "--trust", trust])
    cl.start()
    pub = os.path.join(workdir, "leader.pub")
    with kbsync.Client(cl.leader_ep, timeout=3.0, server_key=pub,
                       key=os.path.join(workdir, "writer.key")) as wr:
        deadline = time.time() + 15
        while True:
            try:
                wr.status()
                break
            except kbsync.TimedOutError:
                assert time.time() < deadline, cl.leader.tail()
        assert wr.upsert(doc("secret")).written == 1
    with kbsync.Client(cl.leader_ep, timeout=3.0, server_key=pub,
                       key=os.path.join(workdir, "reader.key")) as rd:
        with pytest.raises(kbsync.AccessDeniedError):
            rd.upsert(doc("nope"))
        assert rd.query(vec(0), k=1).hits[0].id == "secret"
    with kbsync.Client(cl.leader_ep, timeout=0.5, retries=0,
                       discover_timeout=0.3) as anon:
        with pytest.raises(kbsync.TimedOutError):   # no key: no handshake
            anon.status()
