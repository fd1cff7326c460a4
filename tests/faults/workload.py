"""Concurrent writers and readers against a Cluster, recording every
operation into a history (see checker.py for its shape).

Documents: KEYS ids k0..k{KEYS-1}, in BUCKETS buckets (metadata "bucket");
every upsert writes a unique uid into the text and the metadata, so a read
tells exactly which write it sees. A read asks one node for the documents of
one bucket (a filtered query with k = the bucket's size), so each answer is
the state of a set of keys at the version the node reports.
"""
import json
import random
import threading
import time

import zmq

import kbproto

KEYS = 120
BUCKETS = 12


def bucket_of(key):
    return "b%d" % (int(key[1:]) % BUCKETS)


def buckets():
    out = {}
    for i in range(KEYS):
        out.setdefault(bucket_of("k%d" % i), []).append("k%d" % i)
    return out


def _result(op, resp):
    op["cmp"] = time.time()
    op["code"] = None
    if resp is None:
        op["res"] = "none"  # no answer in time: indeterminate
        op["code"] = "none"
        op["code_name"] = "no answer"
        return
    if resp.HasField("error"):
        op["code"] = resp.error.code
        op["code_name"] = kbproto.CODE_NAMES.get(resp.error.code,
                                                 str(resp.error.code))
        op["message"] = resp.error.message
        op["res"] = "err"
    else:
        op["res"] = "ok"


class Shared:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = []
        self.tokens = [0]  # versions acknowledged to writers, newest last
        self.stop = threading.Event()
        self.inflight = 0  # write requests sent and not yet answered

    def add(self, op):
        with self.lock:
            self.ops.append(op)

    def token(self, rng):
        with self.lock:
            t = self.tokens[-min(len(self.tokens), 8):]
        return rng.choice(t)

    def acked(self, version):
        with self.lock:
            self.tokens.append(version)
            if len(self.tokens) > 64:
                del self.tokens[:32]


def _read(client, node, rng, shared, dim, level, bucket=None,
          after_all=None, after_all_inv=None):
    bucket = bucket or "b%d" % rng.randrange(BUCKETS)
    op = {"t": "r", "node": node, "bucket": bucket, "level": level,
          "min_version": 0, "max_lag_ms": 0}
    if level == "min_version":
        op["min_version"] = shared.token(rng)
    elif level == "max_lag":
        op["max_lag_ms"] = rng.choice([100, 300, 1000, 3000])
    if after_all:
        op["after_all"] = after_all
        op["after_all_inv"] = after_all_inv
    size = KEYS // BUCKETS

    def fill(req):
        q = req.query
        q.k = size
        q.vector.extend(kbproto.embedding("q" + bucket, dim))
        q.min_version = op["min_version"]
        q.max_lag_ms = op["max_lag_ms"]
        q.wait_ms = 300
        q.filters.add(key="bucket", value=bucket)

    op["inv"] = time.time()
    resp = client.call(fill, 3.0)
    _result(op, resp)
    if op["res"] == "ok":
        st = resp.query.state
        op["version"] = st.version
        op["leader_version"] = st.leader_version
        op["lag_ops"] = st.lag_ops
        op["lag_ms"] = st.lag_ms
        # A list, not a dict: an id returned twice must stay visible.
        op["hits"] = [[hit.id, hit.text] for hit in resp.query.hits]
    shared.add(op)
    return op


def writer(cluster, shared, idx, seed, think_s):
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    client = kbproto.Client(ctx, cluster.client_ep, 4.0)
    readers = {n.name: kbproto.Client(ctx, n.listen, 3.0)
               for n in cluster.replicas}
    seq = 0
    while not shared.stop.is_set():
        seq += 1
        mode = rng.choice(["async", "all"])
        pbmode = kbproto.pb.WRITE_MODE_ASYNC if mode == "async" else \
            kbproto.pb.WRITE_MODE_ALL
        if rng.random() < 0.75:
            keys = rng.sample(range(KEYS), rng.choice([1, 1, 2, 3]))
            keys = ["k%d" % k for k in keys]
            uids = ["w%d.%d.%d" % (idx, seq, j) for j in range(len(keys))]
            op = {"t": "w", "kind": "upsert", "node": "leader",
                  "mode": mode, "keys": keys, "uids": uids}

            def fill(req):
                up = req.upsert
                up.mode = pbmode
                for k, u in zip(keys, uids):
                    d = up.docs.add(id=k, text=u, metadata_json=json.dumps(
                        {"bucket": bucket_of(k), "uid": u}))
                    d.embedding.extend(kbproto.embedding(u, cluster.dim))
        else:
            key = "k%d" % rng.randrange(KEYS)
            op = {"t": "w", "kind": "delete", "node": "leader",
                  "mode": mode, "keys": [key], "uids": []}

            def fill(req):
                req.delete.mode = pbmode
                req.delete.ids.append(key)
        op["inv"] = time.time()
        with shared.lock:
            shared.inflight += 1
        resp = client.call(fill)
        with shared.lock:
            shared.inflight -= 1
        _result(op, resp)
        if resp is not None and resp.HasField("write"):
            op["version"] = resp.write.version
            op["written"] = resp.write.written
            op["missing"] = resp.write.missing
        shared.add(op)
        if op["res"] == "ok":
            shared.acked(op["version"])
            if mode == "all" and op["written"] and readers and \
                    rng.random() < 0.5:
                name = rng.choice(sorted(readers))
                _read(readers[name], name, rng, shared, cluster.dim, "plain",
                      bucket_of(op["keys"][0]), op["version"], op["inv"])
        if think_s:
            time.sleep(rng.uniform(0, think_s))
    client.close()
    for c in readers.values():
        c.close()


def reader(cluster, shared, idx, seed, think_s):
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    clients = {n.name: kbproto.Client(ctx, n.listen, 3.0)
               for n in cluster.nodes}
    names = sorted(clients)
    while not shared.stop.is_set():
        node = rng.choice(names)
        level = rng.choice(["plain", "min_version", "max_lag"])
        _read(clients[node], node, rng, shared, cluster.dim, level)
        if think_s:
            time.sleep(rng.uniform(0, think_s))
    for c in clients.values():
        c.close()


def start(cluster, shared, seed, writers=3, readers=3, think_s=0.004):
    threads = []
    for i in range(writers):
        threads.append(threading.Thread(
            target=writer, args=(cluster, shared, i, seed * 1000 + i,
                                 think_s), daemon=True))
    for i in range(readers):
        threads.append(threading.Thread(
            target=reader, args=(cluster, shared, i, seed * 1000 + 500 + i,
                                 think_s), daemon=True))
    for t in threads:
        t.start()
    return threads
