"""upsert_many keeps `window` requests in flight: checked against a
scripted peer on a real ZeroMQ ROUTER socket that plays a leader and holds
its answers until `window` requests are waiting. (Against a real leader
the overlap cannot be observed: test_client.py and test_faults.py check
the results and the retries of the same calls there.)"""
import threading

import zmq

import kbsync
from kbsync._pb import pb


def scripted_leader(sock, stop, seen):
    """Answers status as a leader; holds upserts until 4 are waiting, then
    answers them all; records the most it ever held."""
    held, version = [], 0
    while not stop.is_set():
        if not sock.poll(50):
            continue
        ident, data = sock.recv_multipart()
        req = pb.Request.FromString(data)
        resp = pb.Response(protocol_version=1, request_id=req.request_id)
        if req.HasField("status"):
            resp.status.role = "leader"
            sock.send_multipart([ident, resp.SerializeToString()])
            continue
        held.append((ident, req, resp))
        seen["max"] = max(seen.get("max", 0), len(held))
        seen.setdefault("seqs", []).append(req.upsert.client_seq)
        if len(held) == 4 or req.upsert.docs[-1].id == "last":
            for ident, req, resp in held:
                version += len(req.upsert.docs)
                resp.write.version = version
                resp.write.written = len(req.upsert.docs)
                sock.send_multipart([ident, resp.SerializeToString()])
            held = []


def test_pipeline_keeps_window_in_flight():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    ep = "tcp://127.0.0.1:%d" % sock.bind_to_random_port("tcp://127.0.0.1")
    stop, seen = threading.Event(), {}
    t = threading.Thread(target=scripted_leader, args=(sock, stop, seen))
    t.start()
    try:
        docs = [{"id": "d%d" % i, "text": "t"} for i in range(79)]
        docs.append({"id": "last", "text": "t"})
        with kbsync.Client(ep, timeout=2.0, retries=0) as kb:
            b = kb.upsert_many(docs, batch_size=10, window=4)
        assert (b.batches, b.written, b.version) == (8, 80, 80)
        assert seen["max"] == 4, "requests were not pipelined"
        assert seen["seqs"] == list(range(1, 9))  # one client_seq per batch
    finally:
        stop.set()
        t.join()
        sock.close(0)
        ctx.term()
