"""kbsync.Client: a kbsync cluster (one leader, any number of replicas) as
one Python object. In: calls with documents, ids and queries. Out: typed
results (kbsync.results) or typed errors (kbsync.errors). Owns a ZeroMQ
context and one DEALER socket per endpoint; talks the protocol of
docs/PROTOCOL.md with the generated bindings of schemas/kbsync.proto.

ROUTING AND RETRIES (the contract this file implements)

- Discovery. The client asks every endpoint for its status and learns its
  role: writes and lists go to the node whose role is "leader", reads to a
  replica first. An endpoint that does not answer within discover_timeout
  has no role until a later probe (sent again at most every 5 s, answered
  while other calls run) finds it. The leader is looked for again after it
  did not answer, or after a node answered KB_ENOTLEADER.
- Idempotent writes. Every Client has a client_id (random unless given)
  and numbers its write requests client_seq = 1, 2, 3, ... When a write
  gets no answer within `timeout` (leader stopped, killed, restarted,
  connection cut), the request is sent again, byte for byte apart from its
  request_id, on a NEW socket (a queued copy on the old one is dropped, so
  the old connection cannot deliver it to a restarted leader later), to
  the leader found again, up to `retries` more times. The leader writes a
  (client_id, client_seq) pair once and answers a repeat from its
  idempotency table (WriteResult.retried = True), within its
  --dedup-hours/--dedup-max window. With idempotent=False nothing is
  retried and a missing answer raises TimedOutError (outcome unknown).
- Errors are not retried: an answer is the outcome. A KB_ETIMEOUT or
  KB_EUNAVAIL answer that carries a WriteResult means committed on the
  leader (exc.write, exc.committed).
- Reads. A query goes to one replica (round robin over the replicas that
  answered discovery and are not marked down), then, if that replica
  refuses with KB_ESTALE or KB_EUNAVAIL or does not answer within
  replica_timeout, to the leader (result.fallback = True). A replica that
  did not answer is marked down for 5 s. read_from="leader" reads the
  leader only; endpoint= reads that node only, without fallback.
- Freshness. The default read level is "session": min_version = the
  highest version this client's writes got (read-your-writes on any
  replica; the replica waits up to wait_ms, default 1000 ms, then refuses
  and the read falls back to the leader, which holds every acknowledged
  write). Before the first write it is an eventual read.

A Client serialises its calls with a lock: share one between threads if
you like, or give each thread its own for parallel requests.
"""
import os
import random
import stat
import threading
import time
import uuid

import zmq

from . import _args as A
from . import errors as E
from ._pb import PROTOCOL_VERSION, pb
from .results import (BulkResult, QueryResult, list_result, record,
                      write_result)

FALLBACK_CODES = (E.StaleError.code, E.UnavailableError.code)
DOWN_S = 5.0       # a replica that did not answer is skipped this long
PROBE_EVERY_S = 5.0  # an endpoint without a role is asked again this often
# Larger requests are handed to ZeroMQ without a copy (pyzmq keeps the bytes
# object alive until sent); small ones are cheaper to copy.
ZEROCOPY_BYTES = 64 * 1024


class _Conn:
    """One endpoint: its DEALER socket (opened lazily, replaced after a
    missing answer), its role as last reported, and an outstanding status
    probe."""

    __slots__ = ("ctx", "endpoint", "curve", "sock", "role", "down_until",
                 "probe_rid", "probe_sent", "state")

    def __init__(self, ctx, endpoint, curve):
        self.ctx = ctx
        self.endpoint = endpoint
        self.curve = curve
        self.sock = None
        self.role = None
        self.down_until = 0.0
        self.probe_rid = 0
        self.probe_sent = 0.0
        self.state = None

    def socket(self):
        if self.sock is None:
            s = self.ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            # Reconnect quickly to a node that restarts on the same address.
            s.setsockopt(zmq.RECONNECT_IVL, 20)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
            if self.curve:
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = \
                    self.curve
            s.connect(self.endpoint)
            self.sock = s
        return self.sock

    def reset(self):
        """Drops the socket (and whatever it still queues or may receive)."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
        self.probe_rid = 0


def _key_field(text, name, path):
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == name:
            v = v.strip()
            if len(v) != 40:
                break
            return v.encode()
    raise ValueError("%s holds no %s (a line `%s = <40 characters of Z85>`, "
                     "as `kbsync keygen` writes)" % (path, name, name))


def load_curve(key, server_key):
    """(public, secret) of the client's key pair file and the node's public
    key, both files of `kbsync keygen`. The pair file must be mode 0600."""
    st = os.stat(key)
    if st.st_mode & 0o077:
        raise ValueError("%s may be read by others (mode %03o): a secret key "
                         "file must be mode 0600" % (key,
                                                     stat.S_IMODE(st.st_mode)))
    with open(key) as f:
        text = f.read()
    pub, sec = _key_field(text, "public-key", key), \
        _key_field(text, "secret-key", key)
    if zmq.curve_public(sec) != pub:
        raise ValueError("%s: the public key does not belong to the secret "
                         "key" % key)
    with open(server_key) as f:
        srv = _key_field(f.read(), "public-key", server_key)
    return pub, sec, srv


class Client:
    """A connection to a kbsync cluster.

    Client(endpoints, *, timeout=10.0, retries=3, idempotent=True,
           client_id=None, read_from="replica", consistency="session",
           mode=None, wait_ms=None, replica_timeout=None,
           discover_timeout=1.0, key=None, server_key=None, context=None)

    endpoints         "tcp://host:port" or a list of them (leader and
                      replicas, any order; roles are discovered)
    timeout           seconds to wait for an answer from the leader; an
                      all/quorum write waits up to the leader's
                      --write-timeout-ms (5 s by default), keep it above that
    retries           resends of a write that got no answer
    idempotent        give writes client_id/client_seq (needed for retries)
    client_id         1..64 bytes; default a random UUID per Client
    read_from         "replica" (then the leader when refused) or "leader"
    consistency       default read level: "eventual", "bounded:MS",
                      "session" (this client's writes), "session:V",
                      "strong"
    mode              default write mode: "async", "all", "majority",
                      "quorum:K"; None = the leader's --write-mode
    wait_ms           default wait of session and strong reads, and of
                      bounded reads a replica checks with the leader (node
                      default 1000, at most 60000)
    replica_timeout   seconds to wait for a replica before falling back;
                      default max(2, wait + 1)
    key, server_key   CURVE: this client's key pair file and the nodes'
                      public key file (one path for all, or a dict endpoint
                      -> path); default $KBSYNC_KEY and $KBSYNC_SERVER_KEY
    """

    def __init__(self, endpoints, *, timeout=10.0, retries=3,
                 idempotent=True, client_id=None, read_from="replica",
                 consistency="session", mode=None, wait_ms=None,
                 replica_timeout=None, discover_timeout=1.0, key=None,
                 server_key=None, context=None):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        try:
            endpoints = list(endpoints)
        except TypeError:
            raise TypeError("endpoints must be a str or a list of str, not "
                            "%s" % type(endpoints).__name__) from None
        if not endpoints:
            raise ValueError("endpoints is empty")
        for i, ep in enumerate(endpoints):
            A.string("endpoints[%d]" % i, ep)
            if "://" not in ep:
                raise ValueError("endpoints[%d] %r is not a ZeroMQ endpoint "
                                 "(tcp://host:port)" % (i, ep))
        self.timeout = self._seconds("timeout", timeout)
        self.replica_timeout = None if replica_timeout is None else \
            self._seconds("replica_timeout", replica_timeout)
        self.discover_timeout = self._seconds("discover_timeout",
                                              discover_timeout)
        self.retries = A.uint("retries", retries, 0, 1000)
        if not isinstance(idempotent, bool):
            raise TypeError("idempotent must be a bool")
        self.idempotent = idempotent
        if client_id is None:
            client_id = "py-" + uuid.uuid4().hex
        A.string("client_id", client_id)
        if not 1 <= len(client_id.encode("utf-8")) <= 64 or "\0" in client_id:
            raise ValueError("client_id must be 1..64 bytes without NUL")
        self.client_id = client_id
        if read_from not in ("replica", "leader"):
            raise ValueError("read_from must be 'replica' or 'leader'")
        self.read_from = read_from
        A.read_level(consistency)
        self.consistency = consistency
        if mode is not None:
            A.write_mode(mode)
        self.mode = mode
        self.wait_ms = A.opt_uint("wait_ms", wait_ms, 0, A.MAX_WAIT_MS)
        #: The highest version this client's writes got (session reads).
        self.last_version = 0
        self._seq = 0
        self._rid = random.getrandbits(40) << 20
        self._rr = 0
        self._lock = threading.RLock()
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        curves = self._curves(endpoints, key, server_key)
        self._conns = {ep: _Conn(self._ctx, ep, curves.get(ep))
                       for ep in endpoints}
        self._endpoints = list(self._conns)
        self._leader = None
        self._last_leader = None
        self._discovered = False
        self._closed = False

    # ---------------------------------------------------------- lifetime
    def close(self):
        """Closes the sockets (and the context, if the client made it)."""
        with self._lock:
            if self._closed:
                return
            for c in self._conns.values():
                c.reset()
            if self._own_ctx:
                self._ctx.term()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def _seconds(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError("%s must be a number of seconds" % name)
        if not 0 < v < 86400:
            raise ValueError("%s must be in (0, 86400) seconds" % name)
        return float(v)

    @staticmethod
    def _curves(endpoints, key, server_key):
        key = key or os.environ.get("KBSYNC_KEY") or None
        server_key = server_key or os.environ.get("KBSYNC_SERVER_KEY") or None
        if key is None:
            if server_key is not None:
                raise ValueError("server_key needs key (this client's key "
                                 "pair file)")
            return {}
        if server_key is None:
            raise ValueError("key needs server_key: the nodes' public key "
                             "file(s)")
        out = {}
        for ep in endpoints:
            sk = server_key.get(ep) if isinstance(server_key, dict) \
                else server_key
            if sk is None:
                raise ValueError("server_key names no key for %s" % ep)
            out[ep] = load_curve(key, sk)
        return out

    # ----------------------------------------------------------- topology
    def nodes(self):
        """{endpoint: role} as discovered ("leader", "replica" or None for
        an endpoint that has not answered)."""
        with self._lock:
            self._ensure_discovered()
            return {ep: c.role for ep, c in self._conns.items()}

    @property
    def leader(self):
        """The leader's endpoint (None when no endpoint says it leads)."""
        with self._lock:
            self._ensure_discovered()
            return self._leader

    def _next_rid(self):
        self._rid += 1
        return self._rid

    def _request(self):
        return pb.Request(protocol_version=PROTOCOL_VERSION,
                          request_id=self._next_rid())

    def _send_probe(self, c):
        req = self._request()
        req.status.SetInParent()
        try:
            c.socket().send(req.SerializeToString(), zmq.NOBLOCK)
        except zmq.Again:
            c.reset()
            return
        c.probe_rid = req.request_id
        c.probe_sent = time.monotonic()

    def _probe_answer(self, c, resp):
        """A status answer to a probe: records the endpoint's role."""
        c.probe_rid = 0
        if resp.HasField("error") or not resp.HasField("status"):
            return
        c.role = resp.status.role or None
        c.state = resp.status
        c.down_until = 0.0
        if c.role == "leader":
            self._leader = self._last_leader = c.endpoint
        elif self._leader == c.endpoint:
            self._leader = None

    def _discover(self):
        """Asks every endpoint for its status and waits up to
        discover_timeout for the answers (returns early once all came)."""
        for c in self._conns.values():
            c.reset()
            c.role = None
            self._send_probe(c)
        self._leader = None
        self._discovered = True
        deadline = time.monotonic() + self.discover_timeout
        poller = zmq.Poller()
        for c in self._conns.values():
            if c.probe_rid:
                poller.register(c.sock, zmq.POLLIN)
        by_sock = {c.sock: c for c in self._conns.values() if c.probe_rid}
        while any(c.probe_rid for c in by_sock.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for s, _ in poller.poll(max(1, int(left * 1000))):
                c = by_sock[s]
                resp = self._decode(c, s.recv())
                if resp.request_id == c.probe_rid:
                    self._probe_answer(c, resp)
        now = time.monotonic()
        for c in self._conns.values():
            if c.probe_rid:  # no answer: keep the probe out, mark down
                c.down_until = now + DOWN_S

    def _ensure_discovered(self):
        if not self._discovered:
            self._discover()
        else:
            self._reprobe()

    def _reprobe(self):
        """Collects answers to outstanding probes without waiting, and
        probes again the endpoints without a role (at most every 5 s)."""
        now = time.monotonic()
        for c in self._conns.values():
            if c.probe_rid and c.sock is not None:
                while c.sock.poll(0, zmq.POLLIN):
                    resp = self._decode(c, c.sock.recv())
                    if resp.request_id == c.probe_rid:
                        self._probe_answer(c, resp)
                        break
            if c.role is None and now - c.probe_sent >= PROBE_EVERY_S:
                c.reset()
                self._send_probe(c)

    def _leader_conn(self):
        """The leader's connection, looking for it when it is not known.
        When no endpoint says it leads: the last leader seen (it may be
        restarting: a retry waits for it rather than ask a replica), else
        an endpoint that has not answered yet (it may be a slow leader; its
        status answer is taken in passing), else a replica (it will refuse
        writes with KB_ENOTLEADER)."""
        if self._leader is None:
            self._discover()
        if self._leader is not None:
            self._last_leader = self._leader
            return self._conns[self._leader]
        if self._last_leader is not None:
            return self._conns[self._last_leader]
        for c in self._conns.values():
            if c.role is None:
                return c
        return self._conns[self._endpoints[0]]

    def _forget_leader(self):
        self._discovered = False
        self._leader = None

    # -------------------------------------------------------- round trips
    def _decode(self, c, data):
        try:
            return pb.Response.FromString(data)
        except Exception as e:  # DecodeError; never trust bytes off the wire
            raise E.BadMessageError("undecodable answer (%d bytes): %s"
                                    % (len(data), e),
                                    endpoint=c.endpoint) from None

    def _roundtrip(self, c, payload, rid, timeout):
        """Sends one serialized Request and waits for the Response with
        request id rid. Returns it, or None after `timeout` seconds (the
        socket is then dropped)."""
        if self._closed:
            raise E.NetworkError("the client is closed", endpoint=c.endpoint)
        s = c.socket()
        try:
            s.send(payload, zmq.NOBLOCK, copy=len(payload) < ZEROCOPY_BYTES)
        except zmq.Again:
            c.reset()
            return None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                c.reset()
                return None
            s.rcvtimeo = max(1, int(left * 1000))
            try:
                data = s.recv()
            except zmq.Again:
                continue
            resp = self._decode(c, data)
            if resp.request_id == rid:
                return resp
            if resp.request_id == c.probe_rid and c.probe_rid:
                self._probe_answer(c, resp)

    @staticmethod
    def _raise(resp, endpoint):
        """Raises the typed error of an error Response."""
        write = state = None
        if resp.HasField("write"):
            write = write_result(resp.write, endpoint)
        if resp.HasField("status"):
            state = record(resp.status)
        elif resp.HasField("query"):
            state = record(resp.query.state)
        raise E.from_code(resp.error.code, resp.error.message,
                          endpoint=endpoint, write=write, state=state)

    def _call(self, c, req, timeout=None):
        """One request to one node, no retry: the Response, or
        TimedOutError."""
        resp = self._roundtrip(c, req.SerializeToString(), req.request_id,
                               timeout or self.timeout)
        if resp is None:
            raise E.TimedOutError("no answer within %.1f s" %
                                  (timeout or self.timeout),
                                  endpoint=c.endpoint)
        if resp.HasField("error"):
            self._raise(resp, c.endpoint)
        return resp

    # -------------------------------------------------------------- writes
    def _mode(self, mode, body):
        m = mode if mode is not None else self.mode
        if m is not None:
            body.mode, body.quorum = A.write_mode(m)

    def _name_write(self, body):
        if self.idempotent:
            self._seq += 1
            body.client_id = self.client_id
            body.client_seq = self._seq

    def _write(self, req):
        """Sends a write to the leader; resends it on a fresh socket when no
        answer comes (idempotent writes only), at most `retries` times."""
        attempt = 0
        while True:
            c = self._leader_conn()
            req.request_id = self._next_rid()
            resp = self._roundtrip(c, req.SerializeToString(),
                                   req.request_id, self.timeout)
            if resp is None:
                self._forget_leader()
                if not self.idempotent or attempt >= self.retries:
                    raise E.TimedOutError(
                        "no answer to a write within %.1f s, %d attempt(s)%s"
                        % (self.timeout, attempt + 1,
                           "" if self.idempotent else
                           "; not idempotent: it may or may not be written"),
                        endpoint=c.endpoint)
                attempt += 1
                continue
            if resp.HasField("error"):
                if resp.HasField("write"):
                    self._saw_version(resp.write.version)
                if (resp.error.code == E.NotLeaderError.code and
                        attempt < self.retries and c.role == "leader"):
                    # the node we took for the leader no longer is
                    self._forget_leader()
                    attempt += 1
                    continue
                self._raise(resp, c.endpoint)
            self._saw_version(resp.write.version)
            return write_result(resp.write, c.endpoint)

    def _saw_version(self, v):
        if v > self.last_version:
            self.last_version = v

    def _upsert_request(self, docs, mode):
        req = self._request()
        body = req.upsert
        for i, doc in enumerate(docs):
            A.fill_doc(body.docs.add(), doc, i)
        self._mode(mode, body)
        return req

    def upsert(self, docs, *, mode=None):
        """Inserts or replaces one document (a dict) or a list of them, in
        one all-or-nothing request.

        A document: {"id": str, "text": str, "embedding": [floats],
        "metadata": dict or JSON str, "if_version": int}; id and one of text
        and embedding are required (no embedding: the node embeds the text).
        if_version makes the write conditional: the version (LSN) the id
        must be at, 0 = it must not exist (else ConflictError, nothing
        written). mode: "async", "all", "majority", "quorum:K" (default:
        the client's mode, else the leader's). Returns a WriteResult.
        """
        docs = A.doc_list(docs)
        if not docs:
            raise ValueError("docs is empty")
        with self._lock:
            req = self._upsert_request(docs, mode)
            self._name_write(req.upsert)
            return self._write(req)

    def delete(self, ids, *, mode=None, if_version=None):
        """Deletes one id (a str) or a list of them, all-or-nothing. Ids
        that do not exist are counted in WriteResult.missing. if_version:
        one version per id (a list, or a dict id -> version; each >= 1):
        refused with ConflictError unless every id is at its version."""
        if isinstance(ids, str):
            ids = [ids]
        elif not isinstance(ids, (list, tuple)):
            raise TypeError("ids must be a str or a list of str, not %s"
                            % type(ids).__name__)
        if not ids:
            raise ValueError("ids is empty")
        ids = [A.doc_id("ids[%d]" % i, x) for i, x in enumerate(ids)]
        vers = None
        if if_version is not None:
            if isinstance(if_version, dict):
                if set(if_version) != set(ids):
                    raise ValueError("if_version must name every id once")
                vers = [if_version[x] for x in ids]
            elif isinstance(if_version, (list, tuple)):
                vers = list(if_version)
            else:
                raise TypeError("if_version must be a list or a dict")
            if len(vers) != len(ids):
                raise ValueError("if_version has %d entries for %d ids"
                                 % (len(vers), len(ids)))
            vers = [A.uint("if_version[%d]" % i, v, 1)
                    for i, v in enumerate(vers)]
        with self._lock:
            req = self._request()
            body = req.delete
            body.ids.extend(ids)
            if vers:
                body.if_version.extend(vers)
            self._mode(mode, body)
            self._name_write(body)
            return self._write(req)

    def upsert_many(self, docs, *, batch_size=1000, window=4, mode=None):
        """Upserts an iterable of documents in requests of batch_size,
        keeping `window` requests in flight to the leader (pipelined). Each
        request is all-or-nothing and idempotent: when answers stop coming,
        the unanswered ones are sent again on a fresh socket (the leader
        writes each once). Returns a BulkResult.

        On an error answer no further batch is sent; the ones in flight are
        waited for, then the first error (in batch order) is raised with
        exc.bulk = BulkResult of the batches that were written and
        exc.batch = the failed batch's index (it wrote nothing, unless
        exc.committed). Batches sent after the failed one, before its
        answer came, may be written too: exc.bulk.results lists every batch
        written, each WriteResult with its index in `batch`.

        The documents are checked batch by batch: a bad one in the first
        batch raises TypeError/ValueError before anything is sent; in a
        later batch, after the batches in flight were answered, with
        exc.bulk and exc.batch as above."""
        batch_size = A.uint("batch_size", batch_size, 1, 1000000)
        window = A.uint("window", window, 1, 1024)
        if isinstance(docs, (str, bytes, dict)):
            raise TypeError("docs must be an iterable of dicts")
        it = iter(docs)
        if mode is not None:
            A.write_mode(mode)
        with self._lock:
            return self._pipeline(it, batch_size, window, mode)

    def _next_batch(self, it, batch_size, mode, start):
        docs = []
        for d in it:
            docs.append(d)
            if len(docs) == batch_size:
                break
        if not docs:
            return None
        try:
            req = self._upsert_request(docs, mode)
        except (TypeError, ValueError) as e:
            # name the document in the whole stream, not in its batch
            raise type(e)(str(e).replace("docs[", "docs[%d+" % start, 1)) \
                from None
        self._name_write(req.upsert)
        return req, len(docs)

    def _pipeline(self, it, batch_size, window, mode):
        results = {}      # batch index -> WriteResult
        failed = None     # (batch index, exception)
        inflight = {}     # request id -> [batch index, Request]
        nbatch = 0
        ndocs = 0
        attempt = 0
        exhausted = False
        # The first batch is checked before anything is sent; a bad
        # document in a later one stops the stream like an error answer.
        nb = self._next_batch(it, batch_size, mode, 0)
        if nb is None:
            return self._bulk(results)
        c = self._leader_conn()
        while True:
            while not exhausted and failed is None and len(inflight) < window:
                if nb is None and nbatch:
                    try:
                        nb = self._next_batch(it, batch_size, mode, ndocs)
                    except (TypeError, ValueError) as e:
                        failed = (nbatch, e)
                        break
                if nb is None:
                    exhausted = True
                    break
                req, n = nb
                nb = None
                ndocs += n
                inflight[req.request_id] = [nbatch, req]
                nbatch += 1
                self._send_or_reset(c, req)
            if not inflight:
                break
            resp = self._recv_any(c, inflight, self.timeout)
            if resp is None:  # no answer: resend all in flight, fresh socket
                attempt += 1
                if not self.idempotent or attempt > self.retries:
                    raise E.TimedOutError(
                        "no answer to %d batch(es) within %.1f s, %d "
                        "attempt(s)" % (len(inflight), self.timeout, attempt),
                        endpoint=c.endpoint)
                c, inflight = self._resend(inflight)
                continue
            attempt = 0
            b, _ = inflight.pop(resp.request_id)
            if resp.HasField("error"):
                try:
                    if resp.HasField("write"):
                        self._saw_version(resp.write.version)
                    self._raise(resp, c.endpoint)
                except E.KbsyncError as e:
                    if failed is None or b <= failed[0]:
                        failed = (b, e)
                continue
            self._saw_version(resp.write.version)
            results[b] = write_result(resp.write, c.endpoint)
            results[b].batch = b
        bulk = self._bulk(results)
        if failed is not None:
            failed[1].bulk = bulk
            failed[1].batch = failed[0]
            raise failed[1]
        return bulk

    def _resend(self, inflight):
        """Sends the unanswered batches again, in batch order, with new
        request ids (same client_seq and content) to the leader found
        again. Returns its connection and the new in-flight table."""
        self._forget_leader()
        c = self._leader_conn()
        fresh = {}
        for ent in sorted(inflight.values(), key=lambda e: e[0]):
            ent[1].request_id = self._next_rid()
            fresh[ent[1].request_id] = ent
            self._send_or_reset(c, ent[1])
        return c, fresh

    def _send_or_reset(self, c, req):
        payload = req.SerializeToString()
        try:
            c.socket().send(payload, zmq.NOBLOCK,
                            copy=len(payload) < ZEROCOPY_BYTES)
        except zmq.Again:
            c.reset()  # the resend after the timeout will carry it

    def _recv_any(self, c, inflight, timeout):
        """The next Response to one of the requests in flight, or None when
        none came within timeout (the socket is then dropped)."""
        deadline = time.monotonic() + timeout
        s = c.sock
        while s is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.rcvtimeo = max(1, int(left * 1000))
            try:
                resp = self._decode(c, s.recv())
            except zmq.Again:
                continue
            if resp.request_id in inflight:
                return resp
        c.reset()
        return None

    @staticmethod
    def _bulk(results):
        rs = [results[b] for b in sorted(results)]
        return BulkResult(written=sum(r.written for r in rs),
                          version=max((r.version for r in rs), default=0),
                          batches=len(rs),
                          retried=sum(1 for r in rs if r.retried),
                          results=rs)

    # --------------------------------------------------------------- reads
    def _read_level(self, body, consistency, min_version, max_lag_ms,
                    wait_ms):
        level, n = A.read_level(consistency if consistency is not None
                                else self.consistency)
        if level == "eventual":
            body.consistency = pb.READ_EVENTUAL
        elif level == "strong":
            body.consistency = pb.READ_STRONG
        elif level == "bounded":
            body.consistency = pb.READ_BOUNDED
            body.max_lag_ms = n
        else:  # session: the given version, else this client's writes
            v = n if n is not None else self.last_version
            if v:
                body.consistency = pb.READ_SESSION
                body.min_version = v
        if min_version is not None:
            body.min_version = A.uint("min_version", min_version, 1)
        if max_lag_ms is not None:
            body.max_lag_ms = A.uint("max_lag_ms", max_lag_ms)
        w = wait_ms if wait_ms is not None else self.wait_ms
        if w is not None:
            body.wait_ms = A.uint("wait_ms", w, 0, A.MAX_WAIT_MS)
        return w

    def _query_request(self, query, vector, text, k, filters, ef_search,
                       nprobe):
        if query is not None:
            if vector is not None or text is not None:
                raise ValueError("give the query positionally or as "
                                 "vector=/text=, not both")
            if isinstance(query, str):
                text = query
            else:
                vector = query
        if (vector is None) == (text is None):
            raise ValueError("a query needs exactly one of text and vector")
        req = self._request()
        body = req.query
        body.k = A.uint("k", k, 1, A.MAX_K)
        if text is not None:
            A.string("text", text)
            if not text:
                raise ValueError("text is empty")
            body.text = text
        else:
            A.merge_packed(body, A.TAG_QUERY_VECTOR,
                           A.vector_bytes("vector", vector))
        for key, val in A.filters(filters):
            body.filters.add(key=key, value=val)
        if ef_search is not None:
            body.ef_search = A.uint("ef_search", ef_search, 0, 4096)
        if nprobe is not None:
            body.nprobe = A.uint("nprobe", nprobe, 0, A.U32)
        return req

    def query(self, query=None, *, vector=None, text=None, k=10,
              consistency=None, min_version=None, max_lag_ms=None,
              wait_ms=None, filters=None, ef_search=None, nprobe=None,
              endpoint=None, fallback=True):
        """Top-k search by text (embedded by the node) or by vector.

        query        a str (text) or a sequence of numbers (vector)
        k            1..1000
        consistency  "eventual", "bounded:MS", "session" (this client's
                     last write), "session:V", "strong"; default the
                     client's
        min_version, max_lag_ms  add a freshness bound to the level
        wait_ms      how long a node may wait for min_version / the read
                     index (default 1000, at most 60000)
        filters      {key: value} or [(key, value), ...]: metadata equality,
                     all must hold (at most 16)
        ef_search    HNSW candidates (0..4096); nprobe: IVF lists
        endpoint     ask this node only (no fallback)
        fallback     False: a replica's refusal is raised, not retried on
                     the leader
        Returns a QueryResult (hits with version and staleness).
        """
        req = self._query_request(query, vector, text, k, filters, ef_search,
                                  nprobe)
        w = self._read_level(req.query, consistency, min_version, max_lag_ms,
                             wait_ms)
        if endpoint is not None and endpoint not in self._conns:
            raise ValueError("endpoint %r is not one of the client's" %
                             (endpoint,))
        if not isinstance(fallback, bool):
            raise TypeError("fallback must be a bool")
        with self._lock:
            return self._read(req, w, endpoint, fallback)

    def _replica_timeout(self, w):
        if self.replica_timeout is not None:
            return self.replica_timeout
        wait_s = (w if w else 1000) / 1000.0
        return min(self.timeout, max(2.0, wait_s + 1.0))

    def _read_targets(self, endpoint, fallback):
        if endpoint is not None:
            return [self._conns[endpoint]]
        self._ensure_discovered()
        leader = self._conns[self._leader] if self._leader else None
        if self.read_from == "leader" and leader is not None:
            return [leader]
        now = time.monotonic()
        reps = [c for c in self._conns.values()
                if c.role == "replica" and c.down_until <= now]
        targets = []
        if reps:
            self._rr += 1
            targets.append(reps[self._rr % len(reps)])
        if leader is not None:
            targets.append(leader)
        elif len(reps) > 1:
            targets.append(reps[(self._rr + 1) % len(reps)])
        if not targets:  # nothing answered discovery: try the first one
            targets = [self._conns[self._endpoints[0]]]
        return targets if fallback else targets[:1]

    def _read(self, req, w, endpoint, fallback):
        targets = self._read_targets(endpoint, fallback)
        for i, c in enumerate(targets):
            last = i == len(targets) - 1
            if c.role == "replica" or c.role is None:
                timeout = self._replica_timeout(w)
            else:
                timeout = max(self.timeout, (w or 1000) / 1000.0 + 1.0)
            req.request_id = self._next_rid()
            resp = self._roundtrip(c, req.SerializeToString(),
                                   req.request_id, timeout)
            if resp is None:
                c.down_until = time.monotonic() + DOWN_S
                if last:
                    raise E.TimedOutError("no answer to a query within "
                                          "%.1f s" % timeout,
                                          endpoint=c.endpoint)
                continue
            if resp.HasField("error"):
                if not last and resp.error.code in FALLBACK_CODES:
                    continue
                self._raise(resp, c.endpoint)
            return QueryResult(resp.query, c.endpoint, i > 0)
        raise AssertionError("no read target")  # pragma: no cover

    # ------------------------------------------------- status and the rest
    def _node(self, endpoint):
        """The connection for endpoint (default: the leader)."""
        if endpoint is None:
            return self._leader_conn()
        A.string("endpoint", endpoint)
        if endpoint not in self._conns:
            raise ValueError("endpoint %r is not one of the client's" %
                             (endpoint,))
        return self._conns[endpoint]

    def status(self, endpoint=None):
        """The NodeState of one node (default the leader) as a Record:
        role, node_id, version, leader_version, lag_ops, lag_ms, docs, dim,
        ..., replicas (leader) - every field of schemas/kbsync.proto."""
        with self._lock:
            c = self._node(endpoint)
            req = self._request()
            req.status.SetInParent()
            resp = self._call(c, req)
            c.role = resp.status.role or None
            return record(resp.status)

    def rebuild(self, endpoint=None):
        """Starts a background rebuild of one node's vector index (default
        the leader); returns its NodeState (rebuilding True)."""
        with self._lock:
            c = self._node(endpoint)
            req = self._request()
            req.rebuild.SetInParent()
            return record(self._call(c, req).status)

    def verify(self, endpoint=None, *, compare_leader=False):
        """Recomputes one node's digest (default the leader) and compares
        it with the one it keeps. Returns a Record with the VerifyResult
        fields (node_id, role, lsn, docs, kept, computed) and
        documents_match_digest; with compare_leader, also leader_digest and
        matches_leader (None when the leader no longer holds its digest at
        that LSN)."""
        with self._lock:
            c = self._node(endpoint)
            req = self._request()
            req.verify.SetInParent()
            v = record(self._call(c, req, max(self.timeout, 30.0)).verify)
            v.documents_match_digest = v.kept == v.computed
            if compare_leader:
                lc = self._leader_conn()
                req = self._request()
                req.verify.at_lsn = v.lsn
                lv = self._call(lc, req, max(self.timeout, 30.0)).verify
                v.leader_digest = lv.digest_at if lv.has_at else None
                v.matches_leader = (lv.digest_at == v.kept) if lv.has_at \
                    else None
            return v

    def list(self, prefix="", *, after="", limit=None, meta_key=None):
        """One page of the leader's live documents by id (bytewise order):
        ids starting with prefix, after `after`, at most limit (1..10000,
        default 1000). meta_key: also return that top-level metadata
        value. Returns a ListResult (entries, more, version)."""
        A.string("prefix", prefix)
        A.string("after", after)
        limit = A.opt_uint("limit", limit, 1, 10000)
        if meta_key is not None:
            A.string("meta_key", meta_key)
            if not 1 <= len(meta_key.encode("utf-8")) <= 256:
                raise ValueError("meta_key must be 1..256 bytes")
        with self._lock:
            req = self._request()
            body = req.list
            body.prefix = prefix
            body.after = after
            if limit:
                body.limit = limit
            if meta_key:
                body.meta_key = meta_key
            return list_result(self._call(self._leader_conn(), req).list)

    def list_all(self, prefix="", *, meta_key=None, page=1000):
        """Every live document with the prefix (a generator of ListEntry),
        page by page. Each page is consistent at its own version."""
        after = ""
        while True:
            r = self.list(prefix, after=after, limit=page, meta_key=meta_key)
            yield from r.entries
            if not r.more or not r.entries:
                return
            after = r.entries[-1].id
