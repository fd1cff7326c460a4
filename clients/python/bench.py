#!/usr/bin/python3
"""Benchmarks of the kbsync Python client (a program, not a test: it
prints figures). clients/python/bench.sh starts the nodes and runs it.

  bench.py pack                     cost of packing 1,000 x 384 floats into
                                    an UpsertRequest, four ways
  bench.py upsert EP [--docs N]     pipelined 1,000-doc upserts of 384-d
                                    vectors to the leader at EP (docs/s)
  bench.py query EP [--queries Q]   single-query latency through the client,
                                    the same queries bench/bench_query sends
                                    (bench_common.h's generator, seed + 99)

Run it with /usr/bin/python3 and the package importable (PYTHONPATH=
BUILD/python, or an installed venv).
"""
import argparse
import array
import math
import random
import statistics
import struct
import sys
import time

import kbsync
from kbsync import _args as A
from kbsync._pb import pb

M64 = (1 << 64) - 1
_f32 = struct.Struct("f")


def f32(x):
    return _f32.unpack(_f32.pack(x))[0]


class BenchRng:
    """bench/bench_common.h's bench_rng_t (splitmix64) and bench_unif."""

    def __init__(self, s):
        self.s = s & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def unif(self):
        return f32((self.next() >> 11) * (1.0 / 9007199254740992.0) * 2 - 1)


def bench_vector(seed, i, dim):
    """bench_common.h's bench_vector: vector i of a data set, the same
    floats as the C benchmarks use."""
    c = BenchRng(seed * 1000003 + (i % 64))
    n = BenchRng(seed ^ ((i * 0x9E3779B97F4A7C15) & M64) ^ 0x5555)
    six = f32(0.6)
    out = [f32(c.unif() + f32(six * n.unif())) for _ in range(dim)]
    inv = f32(1 / math.sqrt(sum(x * x for x in out)))
    return [f32(x * inv) for x in out]


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def random_vectors(n, dim, seed=7):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        v = [r.uniform(-1, 1) for _ in range(dim)]
        s = math.sqrt(sum(x * x for x in v))
        out.append([x / s for x in v])
    return out


def cmd_pack(a):
    from google.protobuf.internal import api_implementation
    print("protobuf %s, %s implementation" % (
        __import__("google.protobuf").protobuf.__version__,
        api_implementation.Type()))
    vecs = random_vectors(1000, a.dim)
    arrs = [array.array("f", v) for v in vecs]

    def extend(src):
        r = pb.Request(protocol_version=1, request_id=1)
        for i, v in enumerate(src):
            d = r.upsert.docs.add(id="doc-%d" % i, text="some text")
            d.embedding.extend(v)
        return r.SerializeToString()

    def packed(src):
        r = pb.Request(protocol_version=1, request_id=1)
        for i, v in enumerate(src):
            d = r.upsert.docs.add(id="doc-%d" % i, text="some text")
            A.merge_packed(d, A.TAG_DOC_EMBEDDING, A.vector_bytes("v", v))
        return r.SerializeToString()

    def client_path(src):
        docs = [{"id": "doc-%d" % i, "text": "some text", "embedding": v}
                for i, v in enumerate(src)]
        r = pb.Request(protocol_version=1, request_id=1)
        for i, d in enumerate(docs):
            A.fill_doc(r.upsert.docs.add(), d, i)
        return r.SerializeToString()

    assert extend(vecs) == packed(vecs) == client_path(vecs)
    print("one UpsertRequest of 1,000 docs x %d floats (best of 7):" % a.dim)
    for name, fn, src in (
            ("repeated field extend(list of float)", extend, vecs),
            ("repeated field extend(array('f'))", extend, arrs),
            ("packed bytes from list (checked)", packed, vecs),
            ("packed bytes from array('f') (checked)", packed, arrs),
            ("client path: dicts -> fill_doc (list)", client_path, vecs)):
        best = min(_timed(fn, src) for _ in range(7))
        print("  %-40s %7.2f ms  = %8.0f docs/s" % (name, best * 1e3,
                                                    1000 / best))


def _timed(fn, src):
    t0 = time.perf_counter()
    fn(src)
    return time.perf_counter() - t0


def cmd_upsert(a):
    distinct = random_vectors(min(a.docs, 2000), a.dim)
    if a.array:
        distinct = [array.array("f", v) for v in distinct]
    with kbsync.Client(a.endpoint, timeout=60) as kb:
        v0 = kb.status().version

        def docs():
            for i in range(a.docs):
                yield {"id": "bench-%d-%d" % (a.run, i),
                       "text": "chunk %d of a synthetic document" % i,
                       "embedding": distinct[i % len(distinct)]}
        t0 = time.perf_counter()
        b = kb.upsert_many(docs(), batch_size=a.batch, window=a.window,
                           mode=a.mode)
        dt = time.perf_counter() - t0
        assert b.written == a.docs and kb.status().version == v0 + a.docs
    print("upsert_many: %d docs x %d floats (%s input), batch %d, window %d,"
          " mode %s: %.3f s = %.0f docs/s" % (
              a.docs, a.dim, "array('f')" if a.array else "list of float",
              a.batch, a.window, a.mode, dt, a.docs / dt))


def cmd_query(a):
    qs = [bench_vector(a.seed + 99, i, a.dim) for i in range(a.queries)]
    inputs = {"list": qs, "array('f')": [array.array("f", q) for q in qs]}
    with kbsync.Client(a.endpoint, read_from="leader", timeout=30) as kb:
        st = kb.status()
        for name, src in inputs.items():
            for q in src[:3]:  # warm-up, as bench_query does
                kb.query(q, k=a.k)
            lat = []
            for q in src:
                t0 = time.perf_counter()
                r = kb.query(q, k=a.k)
                lat.append((time.perf_counter() - t0) * 1e3)
                assert len(r.hits) == min(a.k, st.docs)
            print("  python client (%-10s): p50 %.3f ms  p99 %.3f ms  "
                  "mean %.3f ms  (%d queries, k=%d, %d docs)" % (
                      name, pct(lat, 50), pct(lat, 99), statistics.mean(lat),
                      len(lat), a.k, st.docs))
        # The client's own work per query, without the network and the
        # node: check and encode the request, decode the answer and build
        # the QueryResult (from a real answer of the node).
        req = kb._query_request(qs[0], None, None, a.k, None, None, None)
        kb._read_level(req.query, None, None, None, None)
        c = kb._conns[a.endpoint]
        payload = req.SerializeToString()
        answer = None
        s = c.socket()
        s.send(payload)
        while answer is None:
            r = pb.Response.FromString(s.recv())
            if r.request_id == req.request_id:
                answer = r.SerializeToString()
        for name, src in inputs.items():
            n = len(src)
            t0 = time.perf_counter()
            for q in src:
                rq = kb._query_request(q, None, None, a.k, None, None, None)
                kb._read_level(rq.query, None, None, None, None)
                rq.SerializeToString()
                kbsync.QueryResult(pb.Response.FromString(answer).query,
                                   a.endpoint, False)
            dt = (time.perf_counter() - t0) / n
            print("  python client's own work per query (%-10s): %.3f ms "
                  "(encode %d floats + decode %d hits)" % (name, dt * 1e3,
                                                          a.dim, a.k))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--dim", type=int, default=384)
    p = sub.add_parser("upsert")
    p.add_argument("endpoint")
    p.add_argument("--docs", type=int, default=30000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--mode", default="async")
    p.add_argument("--array", action="store_true",
                   help="pass embeddings as array('f') instead of lists")
    p.add_argument("--run", type=int, default=0, help="id prefix")
    p = sub.add_parser("query")
    p.add_argument("endpoint")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    {"pack": cmd_pack, "upsert": cmd_upsert, "query": cmd_query}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
