"""Bad arguments raise TypeError/ValueError before anything is sent: the
client points at a ZeroMQ ROUTER socket of the test's own (a trap) that
must receive nothing. Also: one exception class per code of the error
table in docs/PROTOCOL.md."""
import array
import math
import os
import re

import pytest
import zmq

import kbsync
from conftest import ROOT


@pytest.fixture
def trap():
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    ep = "tcp://127.0.0.1:%d" % port
    c = kbsync.Client(ep, timeout=0.3, discover_timeout=0.2, retries=0)
    yield c, s
    c.close()
    s.close(0)
    ctx.term()


def assert_nothing_sent(trap):
    """No socket was even opened, and the trap got nothing."""
    c, sock = trap
    assert all(conn.sock is None for conn in c._conns.values())
    assert not sock.poll(20), "a request was sent: %r" % (
        sock.recv_multipart(),)


DOC = {"id": "a", "text": "x", "embedding": [0.5] * 8}


def with_(**kw):
    d = dict(DOC)
    d.update(kw)
    return d


BAD_UPSERTS = [
    (TypeError, with_(id=5)),
    (TypeError, with_(id=None)),
    (ValueError, with_(id="")),
    (ValueError, with_(id="x" * 257)),
    (ValueError, with_(id="a\0b")),
    (ValueError, with_(id="\ud800")),               # lone surrogate
    (TypeError, with_(embedding="0.5,0.5")),        # a string
    (TypeError, with_(embedding={"a": 1.0})),       # a mapping
    (TypeError, with_(embedding=[0.5, "x"])),       # not a number
    (TypeError, with_(embedding=[[0.5, 0.5]])),     # nested
    (ValueError, with_(embedding=[])),
    (ValueError, with_(embedding=[0.5, float("nan")])),
    (ValueError, with_(embedding=[math.inf, 0.5])),
    (ValueError, with_(embedding=[1e39, 0.5])),     # beyond float32
    (ValueError, with_(embedding=array.array("d", [0.1, math.nan]))),
    (TypeError, with_(text=7)),
    (ValueError, {"id": "a"}),                      # no text, no embedding
    (ValueError, {"text": "no id"}),
    (ValueError, with_(colour="red")),              # unknown key
    (TypeError, with_(metadata=["a", "list"])),
    (ValueError, with_(metadata={"x": math.nan})),
    (TypeError, with_(metadata={"x": object()})),
    (TypeError, with_(if_version="3")),
    (ValueError, with_(if_version=-1)),
    (TypeError, with_(if_version=1.0)),
    (TypeError, "just a string"),
    (TypeError, 42),
    (TypeError, [DOC, "not a dict"]),
    (ValueError, []),
]


@pytest.mark.parametrize("exc,docs", BAD_UPSERTS)
def test_validation_upsert_refused_before_sending(trap, exc, docs):
    c, sock = trap
    with pytest.raises(exc):
        c.upsert(docs)
    assert_nothing_sent(trap)


@pytest.mark.parametrize("exc,kw", [
    (ValueError, {"mode": "fast"}),
    (TypeError, {"mode": 2}),
    (ValueError, {"mode": "quorum:0"}),
    (ValueError, {"mode": "quorum:x"}),
    (ValueError, {"mode": "quorum"}),
])
def test_validation_write_mode(trap, exc, kw):
    c, sock = trap
    with pytest.raises(exc):
        c.upsert(DOC, **kw)
    with pytest.raises(exc):
        c.delete("a", **kw)
    with pytest.raises(exc):
        c.upsert_many([DOC], **kw)
    assert_nothing_sent(trap)


@pytest.mark.parametrize("exc,args,kw", [
    (ValueError, (), {}),                               # neither
    (ValueError, ("text",), {"vector": [1.0]}),         # both
    (ValueError, (), {"text": "a", "vector": [1.0]}),
    (ValueError, ("",), {}),
    (TypeError, (), {"text": 5}),
    (TypeError, (b"bytes",), {}),
    (ValueError, ([1.0, math.nan],), {}),
    (TypeError, ([1.0, None],), {}),
    (ValueError, ("q",), {"k": 0}),
    (ValueError, ("q",), {"k": 1001}),
    (TypeError, ("q",), {"k": "5"}),
    (TypeError, ("q",), {"k": True}),
    (TypeError, ("q",), {"k": 2.0}),
    (ValueError, ("q",), {"consistency": "linearizable"}),
    (ValueError, ("q",), {"consistency": "bounded:"}),
    (ValueError, ("q",), {"consistency": "bounded:-5"}),
    (ValueError, ("q",), {"consistency": "session:0"}),
    (TypeError, ("q",), {"consistency": 4}),
    (ValueError, ("q",), {"min_version": 0}),
    (TypeError, ("q",), {"max_lag_ms": "100"}),
    (ValueError, ("q",), {"wait_ms": 60001}),
    (ValueError, ("q",), {"ef_search": 5000}),
    (ValueError, ("q",), {"nprobe": -1}),
    (ValueError, ("q",), {"filters": {"k%d" % i: i for i in range(17)}}),
    (TypeError, ("q",), {"filters": {"k": [1, 2]}}),
    (TypeError, ("q",), {"filters": {5: "v"}}),
    (ValueError, ("q",), {"filters": {"": "v"}}),
    (ValueError, ("q",), {"filters": {"k": "v" * 1025}}),
    (TypeError, ("q",), {"filters": "k=v"}),
    (ValueError, ("q",), {"endpoint": "tcp://127.0.0.1:1"}),
    (TypeError, ("q",), {"fallback": "no"}),
])
def test_validation_query_refused_before_sending(trap, exc, args, kw):
    c, sock = trap
    with pytest.raises(exc):
        c.query(*args, **kw)
    assert_nothing_sent(trap)


@pytest.mark.parametrize("exc,args,kw", [
    (TypeError, (5,), {}),
    (TypeError, ({"a"},), {}),
    (ValueError, ([],), {}),
    (ValueError, ([""],), {}),
    (TypeError, (["a", 3],), {}),
    (ValueError, (["a", "b"],), {"if_version": [3]}),
    (ValueError, (["a"],), {"if_version": [0]}),
    (TypeError, (["a"],), {"if_version": 3}),
    (ValueError, (["a"],), {"if_version": {"b": 3}}),
])
def test_validation_delete_refused_before_sending(trap, exc, args, kw):
    c, sock = trap
    with pytest.raises(exc):
        c.delete(*args, **kw)
    assert_nothing_sent(trap)


def test_validation_other_calls(trap):
    c, sock = trap
    with pytest.raises(ValueError):
        c.upsert_many([DOC], batch_size=0)
    with pytest.raises(TypeError):
        c.upsert_many({"id": "a"})
    with pytest.raises(ValueError):          # in the first batch
        c.upsert_many([DOC, DOC, with_(embedding=[math.nan])], batch_size=5)
    with pytest.raises(ValueError):
        c.list(limit=0)
    with pytest.raises(TypeError):
        c.list(prefix=3)
    with pytest.raises(ValueError):
        c.list(meta_key="")
    with pytest.raises(ValueError):
        c.status("tcp://127.0.0.1:1")
    with pytest.raises(TypeError):
        kbsync.Retriever(c, k=1).invoke(["not", "a", "str"])
    with pytest.raises(ValueError):
        kbsync.Retriever(c, k=0)
    with pytest.raises(TypeError):
        kbsync.Retriever(c, embed="not callable")
    assert_nothing_sent(trap)


@pytest.mark.parametrize("exc,args,kw", [
    (TypeError, (5,), {}),
    (ValueError, ([],), {}),
    (ValueError, ("localhost:7400",), {}),
    (TypeError, ("tcp://127.0.0.1:1",), {"timeout": "1"}),
    (ValueError, ("tcp://127.0.0.1:1",), {"timeout": 0}),
    (ValueError, ("tcp://127.0.0.1:1",), {"read_from": "nearest"}),
    (ValueError, ("tcp://127.0.0.1:1",), {"consistency": "always"}),
    (ValueError, ("tcp://127.0.0.1:1",), {"mode": "sync"}),
    (ValueError, ("tcp://127.0.0.1:1",), {"client_id": "x" * 65}),
    (TypeError, ("tcp://127.0.0.1:1",), {"retries": 1.5}),
    (ValueError, ("tcp://127.0.0.1:1",), {"server_key": "/nonexistent"}),
])
def test_validation_client_arguments(exc, args, kw):
    with pytest.raises(exc):
        kbsync.Client(*args, **kw)


def test_validation_vector_inputs_accepted(trap):
    """Lists, tuples, array('f'), array('d'), generators and 1-d buffers
    all pack to the same float32 bytes."""
    from kbsync import _args as A
    want = A.vector_bytes("v", [0.25, -1.5, 3.0])
    for v in ((0.25, -1.5, 3.0), array.array("f", [0.25, -1.5, 3.0]),
              array.array("d", [0.25, -1.5, 3.0]),
              (x for x in [0.25, -1.5, 3.0]),
              memoryview(array.array("f", [0.25, -1.5, 3.0])),
              [0.25, -1.5, 3]):
        assert A.vector_bytes("v", v) == want


def test_errors_one_class_per_documented_code():
    """Every row of the error table in docs/PROTOCOL.md has a class, with
    that code and name, derived from KbsyncError; and no class more."""
    with open(os.path.join(ROOT, "docs", "PROTOCOL.md")) as f:
        rows = re.findall(r"^\| (-\d+) \| (KB_E[A-Z]+) \|", f.read(), re.M)
    assert len(rows) >= 22
    documented = {int(code): name for code, name in rows}
    assert set(kbsync.ERRORS) == set(documented)
    for code, name in documented.items():
        cls = kbsync.ERRORS[code]
        assert cls.code == code and cls.name == name
        assert issubclass(cls, kbsync.KbsyncError)
        e = kbsync.errors.from_code(code, "why", endpoint="tcp://x:1")
        assert type(e) is cls and e.message == "why" and not e.committed
        assert name in str(e) and "why" in str(e)
    assert issubclass(kbsync.TimedOutError, TimeoutError)
    e = kbsync.errors.from_code(-1999, "new code")
    assert type(e) is kbsync.KbsyncError and e.code == -1999
