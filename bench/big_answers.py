"""Large answers nobody reads: a lone leader holds N documents of ~24 KB of
text (dim 16, random embeddings); one client pipelines Q queries with
k = 1000 (answers of ~24 MB each) and reads none. Prints the leader's peak
resident memory (VmHWM, reset just before the burst) and its client-queue
counters 8 s later.

usage: /usr/bin/python3 bench/big_answers.py BUILD_DIR [N=2000] [Q=130]
(needs python3-zmq and python3-protobuf, and BUILD_DIR/python)"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
Q = int(sys.argv[3]) if len(sys.argv) > 3 else 130
sys.path.insert(0, os.path.join(BUILD, "python"))
import zmq  # noqa: E402
from kbsync import kbsync_pb2 as pb  # noqa: E402

DIM = 16
W = tempfile.mkdtemp(prefix="kbsync-bigans-")
kb = os.path.join(BUILD, "kbsync")
lead = None
try:
    rnd = random.Random(1)
    with open(os.path.join(W, "docs.jsonl"), "w") as f:
        for i in range(N):
            f.write(json.dumps({"id": "d%d" % i, "text": ("w%d " % i) * 6000,
                                "embedding": [rnd.random() for _ in range(DIM)]})
                    + "\n")
    epf = os.path.join(W, "ep")
    lead = subprocess.Popen([kb, "leader", "--data", os.path.join(W, "L"),
                             "--dim", str(DIM), "--listen", "tcp://127.0.0.1:*",
                             "--endpoint-file", epf],
                            stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(W, "log"), "w"))
    for _ in range(400):
        if os.path.exists(epf) and open(epf).read().strip():
            break
        time.sleep(0.05)
    ep = open(epf).read().strip()
    subprocess.run([kb, "ingest", "--to", ep, "--batch", "200",
                    os.path.join(W, "docs.jsonl")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def peak_mb():
        with open("/proc/%d/status" % lead.pid) as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) // 1024
        return -1

    with open("/proc/%d/clear_refs" % lead.pid, "w") as f:
        f.write("5")
    before = peak_mb()
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 4)
    s.setsockopt(zmq.RCVBUF, 65536)
    s.connect(ep)
    for i in range(Q):
        r = pb.Request(protocol_version=1, request_id=i + 1)
        r.query.k = 1000
        r.query.vector.extend([1.0] * DIM)
        s.send(r.SerializeToString())
    time.sleep(8)
    out = subprocess.run([kb, "status", "--to", ep, "--json"],
                         capture_output=True, text=True).stdout
    st = json.loads(out.strip().splitlines()[-1])
    print("N=%d docs of ~24 KB, %d pipelined k=1000 queries, none read: "
          "leader peak resident %d -> %d MB; dropped answers %s, dropped "
          "requests %s, queued %s bytes"
          % (N, Q, before, peak_mb(), st.get("dropped_client_answers"),
             st.get("dropped_client_requests"), st.get("client_queue_bytes")))
    s.close()
    ctx.term()
finally:
    if lead:
        lead.terminate()
        lead.wait()
    shutil.rmtree(W, ignore_errors=True)
