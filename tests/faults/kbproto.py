"""kbsync's wire schema for the fault harness, and a small client.

The Python bindings are generated from schemas/kbsync.proto with protoc at
first use (into $KBF_PROTO_DIR, else a directory next to the run's data), so
this harness talks to the nodes exactly as a client written from the schema
would. Nothing here is hand-written protobuf.
"""
import atexit
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCHEMA = os.path.join(ROOT, "schemas", "kbsync.proto")

pb = None

# Error codes (common/include/kb_err.h, docs/PROTOCOL.md).
EINVAL, EDIM, ENONFINITE, EBADID = -1000, -1001, -1002, -1003
ETIMEOUT, ENOTLEADER, ENOREPLICA, ESTALE = -1012, -1013, -1014, -1015
EUNAVAIL = -1018
CODE_NAMES = {
    -1000: "KB_EINVAL", -1001: "KB_EDIM", -1002: "KB_ENONFINITE",
    -1003: "KB_EBADID", -1004: "KB_EBADJSON", -1005: "KB_EBADMSG",
    -1006: "KB_ETOOBIG", -1007: "KB_EPROTO", -1008: "KB_EMISMATCH",
    -1009: "KB_ESTORE", -1010: "KB_EINDEX", -1011: "KB_ENET",
    -1012: "KB_ETIMEOUT", -1013: "KB_ENOTLEADER", -1014: "KB_ENOREPLICA",
    -1015: "KB_ESTALE", -1016: "KB_ECORRUPT", -1017: "KB_EGAP",
    -1018: "KB_EUNAVAIL", -1019: "KB_ENOMEM",
}


def load(out_dir=None):
    """Generates kbsync_pb2 from the schema (when it is older than the
    schema or absent) and imports it. Without out_dir (KBF_PROTO_DIR) it
    goes to a temporary directory that is removed when the process ends."""
    global pb
    if pb is not None:
        return pb
    if not out_dir:
        out_dir = tempfile.mkdtemp(prefix="kbf-proto-")
        atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    gen = os.path.join(out_dir, "kbsync_pb2.py")
    if (not os.path.exists(gen)
            or os.path.getmtime(gen) < os.path.getmtime(SCHEMA)):
        # Generated aside and renamed: runs sharing out_dir never import a
        # half-written module.
        tmp = tempfile.mkdtemp(dir=out_dir)
        subprocess.run(["protoc", "-I", os.path.dirname(SCHEMA),
                        "--python_out=" + tmp, SCHEMA], check=True)
        os.replace(os.path.join(tmp, "kbsync_pb2.py"), gen)
        os.rmdir(tmp)
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("kbsync_pb2")
    return pb


def embedding(uid, dim):
    """A deterministic, finite embedding for a write's unique id."""
    h = hashlib.sha256(uid.encode()).digest()
    return [(h[i % len(h)] - 127.5) / 128.0 for i in range(dim)]


class Client:
    """One DEALER connection to a node. Requests carry increasing non-zero
    request ids; answers to requests that timed out are dropped."""

    def __init__(self, ctx, endpoint, timeout_s=4.0):
        self.ctx = ctx
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.next_id = 1
        self.sock = None
        self._open()

    def _open(self):
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Reconnect fast after a node restarts, so that the harness measures
        # the node's recovery and not its own back-off.
        self.sock.setsockopt(zmq.RECONNECT_IVL, 10)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 100)
        self.sock.connect(self.endpoint)

    def close(self):
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def call(self, fill, timeout_s=None):
        """Sends one Request (fill(req) sets its body) and waits for the
        matching Response. Returns the Response, or None when no answer came
        in time; the socket is then reopened so that a request queued for a
        dead peer is not delivered to its successor later."""
        req = pb.Request(protocol_version=1, request_id=self.next_id)
        self.next_id += 1
        fill(req)
        self.sock.send(req.SerializeToString())
        deadline = time.time() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.time()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                if time.time() >= deadline:
                    self._open()
                    return None
                continue
            resp = pb.Response.FromString(self.sock.recv())
            if resp.request_id == req.request_id:
                return resp

    def status(self, timeout_s=None):
        r = self.call(lambda q: q.status.SetInParent(), timeout_s)
        if r is None or r.HasField("error"):
            return None
        return r.status
