#!/usr/bin/python3
"""embed_server: a local stand-in for a user's embedding model server, for
tests and benchmarks of cli/cli_embed.c. In: POST /v1/embeddings with
{"model": NAME, "input": [texts...]} (OpenAI-compatible). Out:
{"object": "list", "data": [{"object": "embedding", "index": i,
"embedding": [floats]}...], "model": NAME, "usage": {...}}; GET /stats gives
its counters as JSON. State: counters behind one lock; nothing on disk.

Embeddings are deterministic and need no model: text -> FNV-1a 64 of its
UTF-8 bytes -> xorshift64* stream -> dim values in [-1, 1) -> divided by
their Euclidean norm (tests/test_cli_embed.c computes the same in C).

Faults and limits (command line) make it misbehave the way real servers do:
--fail-429 N / --fail-500 N / --drop N answer the first N requests with 429
(with Retry-After when --retry-after S), then the next N with 500, then close
the next N connections without an answer; --wrong-count, --wrong-dim, --nan,
--inf, --dup-index, --malformed corrupt the answer (only batches holding a
text that starts with --fault-text MARK, when given); --max-batch N refuses
larger batches with 413; --max-concurrent N lets N batches be computed at
once (others wait); --key K answers 401 unless "Authorization: Bearer K";
--shuffle lists the items last to first (indexes still right); a text
"sleep:MS:..." adds MS ms to its batch.

Prints the port it listens on (127.0.0.1, --port 0 = any free port) on
stdout once it is ready. Python standard library only (Debian python3).
"""
import argparse
import json
import math
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MASK = (1 << 64) - 1


def embed(text, dim):
    """The deterministic unit vector of text (a list of dim floats)."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    s = h or 1
    v = []
    for _ in range(dim):
        s ^= s >> 12
        s ^= (s << 25) & MASK
        s ^= s >> 27
        r = (s * 0x2545F4914F6CDD1D) & MASK
        v.append((r >> 11) / float(1 << 53) * 2.0 - 1.0)
    norm = 0.0
    for x in v:
        norm += x * x
    norm = math.sqrt(norm)
    return [x / norm for x in v]


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.sem = (threading.BoundedSemaphore(args.max_concurrent)
                    if args.max_concurrent else None)
        self.cache = {}  # (text, dim) -> JSON text of the vector
        self.requests = 0  # POSTs to the embeddings path
        self.texts = 0
        self.inflight = 0
        self.peak_inflight = 0
        self.computing = 0
        self.peak_computing = 0
        self.answered_429 = 0
        self.answered_500 = 0
        self.dropped = 0
        self.batch_sizes = []

    def vector_json(self, text, dim):
        """The vector of text as JSON bytes (cached: computing it in Python
        costs more than the latency a benchmark models)."""
        key = (text, dim)
        s = self.cache.get(key)
        if s is None:
            s = ("[" + ",".join(repr(x) for x in embed(text, dim)) +
                 "]").encode()
            if len(self.cache) > 200000:
                self.cache.clear()
            self.cache[key] = s
        return s


SLEEP_RE = re.compile(r"^sleep:(\d+):")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    server_version = "embed_server"

    def setup(self):
        super().setup()
        # As real servers do: headers and body go out in separate writes,
        # and Nagle's algorithm would hold the body for the client's
        # delayed ACK (40 ms), more than the latency being modelled.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # quiet: tests read stdout only
        pass

    def answer(self, code, body, headers=()):
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, message, kind, headers=()):
        body = json.dumps({"error": {"message": message, "type": kind,
                                     "code": code}})
        self.answer(code, body, headers)

    def do_GET(self):
        st = self.server.state
        if self.path != "/stats":
            return self.error(404, "no such path: " + self.path, "not_found")
        with st.lock:
            body = json.dumps({
                "requests": st.requests, "texts": st.texts,
                "peak_inflight": st.peak_inflight,
                "peak_computing": st.peak_computing,
                "answered_429": st.answered_429,
                "answered_500": st.answered_500, "dropped": st.dropped,
                "batch_sizes": st.batch_sizes[-1000:]})
        self.answer(200, body)

    def do_POST(self):
        st = self.server.state
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.path.rstrip("/") != st.args.path:
            return self.error(404, "no such path: " + self.path, "not_found")
        with st.lock:
            ordinal = st.requests
            st.requests += 1
            st.inflight += 1
            st.peak_inflight = max(st.peak_inflight, st.inflight)
        try:
            self.embeddings(st, ordinal, raw)
        finally:
            with st.lock:
                st.inflight -= 1

    def embeddings(self, st, ordinal, raw):
        a = st.args
        if a.key and self.headers.get("Authorization") != "Bearer " + a.key:
            return self.error(401, "invalid API key", "authentication_error")
        if ordinal < a.fail_429:
            with st.lock:
                st.answered_429 += 1
            hdr = [("Retry-After", str(a.retry_after))] if a.retry_after else []
            return self.error(429, "too many requests", "rate_limit", hdr)
        if ordinal < a.fail_429 + a.fail_500:
            with st.lock:
                st.answered_500 += 1
            return self.error(500, "model crashed", "server_error")
        if ordinal < a.fail_429 + a.fail_500 + a.drop:
            with st.lock:
                st.dropped += 1
            self.close_connection = True
            return  # no answer at all: the client sees the socket close
        try:
            req = json.loads(raw)
            texts = req["input"]
            model = req["model"]
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(model, str) or not isinstance(texts, list) or \
                    not all(isinstance(t, str) for t in texts):
                raise ValueError("model must be a string, input strings")
        except (ValueError, KeyError, TypeError) as e:
            return self.error(400, "bad request: %s" % e, "invalid_request")
        if a.max_batch and len(texts) > a.max_batch:
            return self.error(413, "batch size %d > maximum allowed batch "
                              "size %d" % (len(texts), a.max_batch),
                              "validation")
        with st.lock:
            st.texts += len(texts)
            st.batch_sizes.append(len(texts))
        extra = 0
        for t in texts:
            m = SLEEP_RE.match(t)
            if m:
                extra = max(extra, int(m.group(1)))
        if st.sem:
            st.sem.acquire()
        with st.lock:
            st.computing += 1
            st.peak_computing = max(st.peak_computing, st.computing)
        try:
            time.sleep((a.latency_ms + extra) / 1000.0)
            body = self.build(st, model, texts)
        finally:
            with st.lock:
                st.computing -= 1
            if st.sem:
                st.sem.release()
        self.answer(200, body)

    def build(self, st, model, texts):
        a = st.args
        faulty = not a.fault_text or any(t.startswith(a.fault_text)
                                         for t in texts)
        dim = a.dim + 1 if faulty and a.wrong_dim else a.dim
        items = []
        for i, t in enumerate(texts):
            vec = st.vector_json(t, dim)
            if faulty and i == 0 and a.nan:
                vec = b"[NaN" + vec[vec.index(b","):]
            if faulty and i == 0 and a.inf:
                vec = b"[1e999" + vec[vec.index(b","):]
            index = 0 if faulty and a.dup_index and i == 1 else i
            items.append(b'{"object":"embedding","index":%d,"embedding":%s}'
                         % (index, vec))
        if faulty and a.wrong_count:
            items.pop()
        if a.shuffle:
            items.reverse()
        tail = ('],"model":%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}'
                % (json.dumps(model), len(texts), len(texts))).encode()
        body = b"".join([b'{"object":"list","data":[', b",".join(items), tail])
        if faulty and a.malformed:
            body = body[:len(body) // 2]
        return body


def main():
    # Each answer is a fresh buffer of up to a few MB. glibc serves those
    # with mmap and gives them back at free(), so every answer page-faults
    # its whole buffer again, which costs milliseconds in some VMs. Keep
    # them in the heap instead (re-executing, since malloc reads these
    # once, at start).
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="33554432",
                   MALLOC_TRIM_THRESHOLD_="1073741824")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--path", default="/v1/embeddings")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--fail-429", type=int, default=0)
    p.add_argument("--retry-after", type=int, default=0)
    p.add_argument("--fail-500", type=int, default=0)
    p.add_argument("--drop", type=int, default=0)
    p.add_argument("--wrong-count", action="store_true")
    p.add_argument("--wrong-dim", action="store_true")
    p.add_argument("--nan", action="store_true")
    p.add_argument("--inf", action="store_true")
    p.add_argument("--dup-index", action="store_true")
    p.add_argument("--malformed", action="store_true")
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--fault-text", default="")
    p.add_argument("--max-batch", type=int, default=0)
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--key", default="")
    args = p.parse_args()
    args.path = args.path.rstrip("/")
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    srv.request_queue_size = 128
    srv.state = State(args)
    print(srv.server_address[1], flush=True)
    # Nothing more goes to stdout: the reader may close its end now.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
