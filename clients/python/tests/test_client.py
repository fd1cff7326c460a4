"""Every call of kbsync.Client against a real leader and two named
replicas (one cluster for the module): writes in every mode, conditional
writes, deletes, queries at every read level with their version and
staleness, filters, status, verify, rebuild, list, pipelined upserts, and
the error classes a healthy cluster can be made to answer."""
import pytest

import kbsync
from conftest import DIM, vec


@pytest.fixture(scope="module")
def kb(cluster):
    c = cluster.client(replica_timeout=3.0)
    yield c
    c.close()


def doc(i, **kw):
    d = {"id": "doc-%d" % i, "text": "document number %d about topic %d"
         % (i, i % 3), "embedding": vec(i),
         "metadata": {"n": i, "topic": "t%d" % (i % 3), "tags": ["a", "b"]}}
    d.update(kw)
    return d


def test_client_discovers_roles(kb, cluster):
    roles = kb.nodes()
    assert roles[cluster.leader_ep] == "leader"
    for ep in cluster.replica_eps.values():
        assert roles[ep] == "replica"
    assert kb.leader == cluster.leader_ep
    # listed last, the leader is still the one writes go to
    eps = list(reversed(cluster.endpoints))
    with kbsync.Client(eps, timeout=3.0) as rev:
        w = rev.upsert({"id": "rev", "text": "found the leader"})
        assert w.endpoint == cluster.leader_ep


def test_client_upsert_every_mode(kb, cluster):
    v = kb.upsert(doc(0)).version
    assert v >= 1
    w = kb.upsert([doc(1), doc(2), doc(3)], mode="async")
    assert (w.written, w.version, w.first_version) == (3, v + 3, v + 1)
    assert w.mode == "async" and not w.retried
    assert w.endpoint == cluster.leader_ep
    w = kb.upsert(doc(4), mode="all")
    assert w.mode == "all" and w.quorum == 2
    assert [r.stage for r in w.receipts] == ["searchable", "searchable"]
    assert {r.replica_id for r in w.receipts} == {"r1", "r2"}
    assert all(r.applied_lsn >= w.version for r in w.receipts)
    w = kb.upsert(doc(5), mode="quorum:1")
    assert w.mode == "quorum" and w.quorum == 1
    assert sum(r.stage == "searchable" for r in w.receipts) >= 1
    w = kb.upsert(doc(6), mode="majority")
    assert w.mode == "majority" and w.quorum == 1
    assert kb.last_version == w.version
    # the text-only document is embedded by the node
    w = kb.upsert({"id": "text-only", "text": "lexical embedder words",
                   "metadata": {"kind": "text"}})
    assert w.written == 1
    # a query on either replica sees the `all` write without a token
    for ep in cluster.replica_eps.values():
        r = kb.query(vec(4), k=1, consistency="eventual", endpoint=ep)
        assert r.version >= kb.last_version - 3


def test_client_query_by_vector_and_text(kb):
    kb.upsert([doc(i) for i in range(10, 20)])
    r = kb.query(vec(13), k=3)
    assert r.hits[0].id == "doc-13"
    assert len(r) == 3 and r[0] is r.hits[0]
    h = r.hits[0]
    assert h.metadata["n"] == 13 and h.metadata["tags"] == ["a", "b"]
    assert h.text.startswith("document number 13")
    assert h.version >= 1
    assert r.hits[0].score >= r.hits[1].score
    # dim 8: the lexical embedding of a text query only means something
    # among text-embedded documents
    r = kb.query(text="lexical embedder words", k=1, filters={"kind": "text"})
    assert r.hits[0].id == "text-only"
    assert r.hits[0].score > 0.99
    r = kb.query(vector=vec(13), k=5, filters={"topic": "t1"})
    assert r.hits and all(h.metadata["topic"] == "t1" for h in r.hits)
    r = kb.query(vec(13), k=5, filters=[("n", 13), ("tags", "a")])
    assert [h.id for h in r.hits] == ["doc-13"]
    r = kb.query(vec(13), k=2, ef_search=32, nprobe=4)
    assert len(r.hits) == 2


def test_client_read_levels_and_staleness(kb, cluster):
    w = kb.upsert(doc(30))
    # default: session, i.e. min_version = this client's last write
    r = kb.query(vec(30), k=1)
    assert r.level == "session" and r.version >= w.version
    assert r.hits[0].id == "doc-30"
    assert r.endpoint in cluster.replica_eps.values() or r.fallback
    r = kb.query(vec(30), k=1, consistency="eventual")
    assert r.level == "eventual"
    assert r.lag_ops == r.leader_version - r.version
    r = kb.query(vec(30), k=1, consistency="bounded:60000")
    assert r.level == "bounded" and r.lag_ms <= 60000
    r = kb.query(vec(30), k=1, consistency="session:%d" % w.version,
                 wait_ms=2000)
    assert r.level == "session" and r.version >= w.version
    for ep in cluster.replica_eps.values():
        r = kb.query(vec(30), k=1, consistency="strong", endpoint=ep)
        assert r.level == "strong" and r.read_index >= w.version
        assert r.version >= r.read_index and r.node_id in ("r1", "r2")
        assert not r.fallback and r.endpoint == ep
        assert r.state.role == "replica" and r.state.dim == DIM
    r = kb.query(vec(30), k=1, consistency="strong", min_version=w.version)
    assert r.level == "strong"
    with pytest.raises(kbsync.InvalidArgumentError):  # contradictory
        kb.query(vec(30), k=1, max_lag_ms=60000, consistency="eventual")
    leader_only = cluster.client(read_from="leader", consistency="eventual")
    try:
        r = leader_only.query(vec(30), k=1)
        assert r.endpoint == cluster.leader_ep and r.lag_ops == 0
        assert r.node_id and r.state.role == "leader"
    finally:
        leader_only.close()


def test_client_conditional_writes(kb):
    v1 = kb.upsert(doc(40)).version
    with pytest.raises(kbsync.ConflictError) as ei:
        kb.upsert([doc(41), doc(40, if_version=v1 + 1000)])
    assert "doc-40" in ei.value.message and not ei.value.committed
    assert kb.status().version == v1, "a refused request wrote something"
    with pytest.raises(kbsync.ConflictError):
        kb.upsert(doc(40, if_version=0))        # must not exist: it does
    v2 = kb.upsert(doc(40, if_version=v1)).version
    assert kb.upsert(doc(42, if_version=0)).written == 1
    # the version a hit reports is what if_version takes
    hit = kb.query(vec(40), k=1, consistency="strong").hits[0]
    assert (hit.id, hit.version) == ("doc-40", v2)
    with pytest.raises(kbsync.ConflictError):
        kb.delete("doc-40", if_version=[v1])
    w = kb.delete(["doc-40"], if_version={"doc-40": v2})
    assert (w.written, w.missing) == (1, 0)


def test_client_delete(kb):
    kb.upsert([doc(50), doc(51)])
    w = kb.delete(["doc-50", "doc-51", "never-was"], mode="all")
    assert (w.written, w.missing) == (2, 1)
    assert w.mode == "all"
    r = kb.query(vec(50), k=50, consistency="strong")
    assert "doc-50" not in {h.id for h in r.hits}
    w = kb.delete("never-was-either")
    assert (w.written, w.missing) == (0, 1)


def test_client_status_verify_rebuild(kb, cluster):
    s = kb.status()
    assert s.role == "leader" and s.dim == DIM and s.metric == "ip"
    assert {r.id for r in s.replicas} == {"r1", "r2"}
    assert s.version == s.leader_version and s.docs >= 1
    assert s.as_dict()["replicas"][0]["id"] in ("r1", "r2")
    ep = cluster.replica_eps["r1"]
    rs = kb.status(ep)
    assert rs.role == "replica" and rs.node_id == "r1"
    v = kb.verify()
    assert v.documents_match_digest and v.role == "leader"
    cluster.wait_connected(2)
    kb.upsert(doc(60), mode="all")
    v = kb.verify(ep, compare_leader=True)
    assert v.node_id == "r1" and v.documents_match_digest
    assert v.matches_leader is True
    s = kb.rebuild()
    assert s.role == "leader"


def test_client_list(kb, cluster):
    kb.upsert([{"id": "ls-%02d" % i, "text": "listed %d" % i,
                "embedding": vec(i), "metadata": {"k": "v%d" % i}}
               for i in range(25)])
    p = kb.list("ls-", limit=10, meta_key="k")
    assert [e.id for e in p.entries] == ["ls-%02d" % i for i in range(10)]
    assert p.more and p.version >= 1
    assert p.entries[3].meta_value == '"v3"' and p.entries[3].version >= 1
    p2 = kb.list("ls-", after=p.entries[-1].id, limit=100)
    assert p2.entries[0].id == "ls-10" and not p2.more
    assert [e.id for e in kb.list_all("ls-", page=7)] == \
        ["ls-%02d" % i for i in range(25)]
    with kbsync.Client(cluster.replica_eps["r1"], timeout=3) as rc:
        with pytest.raises(kbsync.NotLeaderError):
            rc.list("ls-")


def test_client_upsert_many_pipelined(kb):
    v0 = kb.status().version
    docs = ({"id": "bulk-%d" % i, "text": "bulk %d" % i, "embedding": vec(i)}
            for i in range(2500))
    b = kb.upsert_many(docs, batch_size=400, window=4)
    assert (b.written, b.batches, b.retried) == (2500, 7, 0)
    assert b.version == v0 + 2500 == kb.status().version
    assert [r.written for r in b.results] == [400] * 6 + [100]
    # batches are committed in the order sent: their versions increase
    vs = [r.version for r in b.results]
    assert vs == sorted(vs)
    # a batch the node refuses stops the stream: the earlier ones are in
    bad = [{"id": "bad-%d" % i, "embedding": vec(i, DIM if i != 250 else 3)}
           for i in range(400)]
    v1 = kb.status().version
    with pytest.raises(kbsync.DimensionError) as ei:
        kb.upsert_many(bad, batch_size=100, window=2)
    assert ei.value.batch == 2 and not ei.value.committed
    # batches 0 and 1 are in; 3 may be too (sent before 2's answer came)
    done = [r.batch for r in ei.value.bulk.results]
    assert done in ([0, 1], [0, 1, 3]), done
    assert ei.value.bulk.written == 100 * len(done)
    assert kb.status().version - v1 == ei.value.bulk.written


def test_client_errors_from_nodes(kb, cluster):
    """The error classes a healthy cluster answers, each provoked for real
    (stopped replicas, timeouts, retries: test_faults.py)."""
    with pytest.raises(kbsync.InvalidArgumentError):
        kb.upsert(doc(70), mode="quorum:3")     # 2 named replicas
    with pytest.raises(kbsync.InvalidArgumentError):
        kb.query("!!! ???", k=1)                # a text with no words
    with pytest.raises(kbsync.InvalidArgumentError):
        kb.query(vec(1), consistency="eventual", min_version=1,
                 endpoint=cluster.leader_ep)
    with pytest.raises(kbsync.DimensionError) as ei:
        kb.upsert(doc(71, embedding=[0.5] * (DIM + 1)))
    assert "%d" % DIM in ei.value.message
    with pytest.raises(kbsync.DimensionError):
        kb.query([1.0, 2.0])
    with pytest.raises(kbsync.NonFiniteError):   # squared norm > FLT_MAX/4
        kb.upsert(doc(72, embedding=[1e19] * DIM))
    with pytest.raises(kbsync.BadIdError):
        kb.upsert(doc(73, id="tab\there"))
    with pytest.raises(kbsync.BadJsonError):
        kb.upsert(doc(74, metadata="[1, 2]"))
    with pytest.raises(kbsync.TooBigError):
        kb.upsert(doc(75, text="x" * (1024 * 1024 + 1)))
    with pytest.raises(kbsync.StaleError) as ei:  # leader: at once
        kb.query(vec(1), min_version=10 ** 12, endpoint=cluster.leader_ep)
    assert ei.value.endpoint == cluster.leader_ep
    with kbsync.Client(list(cluster.replica_eps.values()), timeout=3) as rc:
        with pytest.raises(kbsync.NotLeaderError) as ei:
            rc.upsert(doc(76))
        assert ei.value.code == -1013 and ei.value.name == "KB_ENOTLEADER"
        # ...and a client of replicas only still reads
        assert rc.query(vec(1), k=1, consistency="eventual").hits
