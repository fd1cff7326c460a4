#!/usr/bin/python3
"""The consistency spectrum (issue #11) against real processes on 127.0.0.1:
a leader and two named replicas, driven by a client written from
schemas/kbsync.proto. Each test fails when its feature is taken away:

- quorum and majority writes: refused with KB_ENOREPLICA (nothing written)
  when fewer than K named replicas are connected, acknowledged once K applied
  the write, with one replica stopped;
- receipts name the stage each replica reached;
- idempotent retries are applied once, also when the leader is killed
  between its commit and its answer;
- conditional writes refuse the whole request and write nothing, judged
  against the writes before them in the same group commit;
- strong reads on replicas see every write acknowledged before they were
  sent (a history check over concurrent writers and readers; the same check
  over eventual reads must find violations, or it proves nothing);
- a replica whose stored documents are edited behind its back (kb_tamper)
  is detected by its digest checks, or by the leader's digest comparison
  when the kept digest was edited too, and copies its knowledge base anew.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zmq  # noqa: E402

import cluster  # noqa: E402
import kbproto  # noqa: E402

KBSYNC = os.environ.get("KBSYNC", os.path.join(kbproto.ROOT, "build",
                                               "kbsync"))
TAMPER = os.environ.get("KB_TAMPER", os.path.join(os.path.dirname(KBSYNC),
                                                  "tests", "kb_tamper"))
DIM = 8
ASYNC, ALL, QUORUM, MAJORITY = 1, 2, 3, 4
EVENTUAL, STRONG = 1, 4
ECONFLICT = -1021
NONE, RECEIVED, DURABLE, SEARCHABLE = 0, 1, 2, 3


def violations(acked, reads):
    """Reads (sent, version, _) answered below a write acknowledged (time,
    version) before the read was sent."""
    acked = sorted(acked)
    bad = 0
    j = 0
    newest = 0
    for sent, version, _ in sorted(reads):
        while j < len(acked) and acked[j][0] < sent:
            newest = max(newest, acked[j][1])
            j += 1
        if version < newest:
            bad += 1
    return bad


class Consistency(unittest.TestCase):
    def setUp(self):
        kbproto.load(os.environ.get("KBF_PROTO_DIR"))
        self.pb = kbproto.pb
        self.tmp = tempfile.mkdtemp(prefix="kbcons-")
        self.ctx = zmq.Context()
        self.c = None

    def tearDown(self):
        if self.c:
            self.c.shutdown()
        self.ctx.destroy(0)
        if os.environ.get("KB_KEEP"):  # debugging: keep the logs
            print("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self, write_timeout_ms=2000, fault=None, extra_leader=()):
        self.c = cluster.Cluster(KBSYNC, self.tmp, nreplicas=2, dim=DIM,
                                 use_netns=False,
                                 write_timeout_ms=write_timeout_ms,
                                 extra_leader=extra_leader)
        if fault:
            os.environ["KBSYNC_TEST_FAULT"] = fault
        try:
            self.c.start()
        finally:
            os.environ.pop("KBSYNC_TEST_FAULT", None)
        self.cl = self.client(self.c.client_ep)
        self.wait_connected(2)

    def client(self, ep):
        return kbproto.Client(self.ctx, ep, timeout_s=6.0)

    def wait_connected(self, n, timeout_s=20):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            s = self.cl.status(2)
            if s and sum(r.connected for r in s.replicas) == n:
                return s
            time.sleep(0.05)
        self.fail("leader never had %d replicas connected" % n)

    def upsert(self, ids, mode=ASYNC, quorum=0, cid="", seq=0, ifv=None,
               cl=None, pad=0):
        def fill(r):
            r.upsert.mode = mode
            r.upsert.quorum = quorum
            if cid:
                r.upsert.client_id = cid
                r.upsert.client_seq = seq
            for i, d_id in enumerate(ids):
                d = r.upsert.docs.add(id=d_id, text="text of " + d_id +
                                      " " * pad,
                                      embedding=kbproto.embedding(d_id, DIM))
                if ifv is not None and ifv[i] is not None:
                    d.if_version.version = ifv[i]
        return (cl or self.cl).call(fill)

    def version(self):
        return self.cl.status().version

    def test_ingest_retries_without_duplicates(self):
        """kbsync ingest resends batches whose answer did not come in time
        (the leader stopped mid-run) with the same client_id/client_seq:
        every document is written exactly once."""
        self.start()
        n = 40000
        path = os.path.join(self.tmp, "docs.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                e = kbproto.embedding("ing-%d" % i, DIM)
                f.write('{"id": "ing-%d", "text": "doc %d", "embedding": [%s]}'
                        '\n' % (i, i, ",".join("%.6f" % x for x in e)))
        v0 = self.version()
        p = subprocess.Popen([KBSYNC, "ingest", "--to", self.c.client_ep,
                              "--batch", "50", "--timeout-ms", "400",
                              "--retries", "20", path],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(0.4)
        self.c.leader.stop()
        time.sleep(1.0)
        self.c.leader.cont()
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 0, err[-2000:])
        self.assertIn("sent again", err, "no batch was resent: the stop "
                      "came too late to test anything")
        self.assertEqual(self.version() - v0, n,
                         "documents were written twice (or lost)")

    # ------------------------------------------------------------ quorum
    def test_quorum_refusal_and_success_per_k(self):
        self.start(write_timeout_ms=1500)
        for mode, k in ((QUORUM, 1), (QUORUM, 2), (MAJORITY, 0), (ALL, 0)):
            r = self.upsert(["both-%d-%d" % (mode, k)], mode, k)
            self.assertFalse(r.HasField("error"), r)
            want = {QUORUM: k, MAJORITY: 1, ALL: 2}[mode]
            self.assertEqual(r.write.quorum, want)
            self.assertGreaterEqual(
                sum(c.stage == SEARCHABLE for c in r.write.receipts), want)
        r = self.upsert(["k3"], QUORUM, 3)
        self.assertEqual(r.error.code, kbproto.EINVAL, r)
        r = self.upsert(["k0"], QUORUM, 0)
        self.assertEqual(r.error.code, kbproto.EINVAL, r)

        r2 = self.c.replicas[1]
        r2.stop()
        try:
            # r2 is still counted as connected for up to a second: quorum:1
            # is acknowledged by r1 alone, `all` waits and times out.
            t0 = time.time()
            r = self.upsert(["q1-stopped"], QUORUM, 1)
            self.assertFalse(r.HasField("error"), r)
            self.assertLess(time.time() - t0, 1.0)
            st = {c.replica_id: c for c in r.write.receipts}
            self.assertEqual(st["r1"].stage, SEARCHABLE)
            self.assertEqual(st["r2"].stage, NONE)
            self.assertLess(st["r2"].applied_lsn, r.write.version)
            s = self.wait_connected(1)
            # one named replica connected: quorum:2 and all refused at once,
            # nothing written; quorum:1 and majority (K = 1 of 2) go on
            v0 = s.version
            for mode, k in ((QUORUM, 2), (ALL, 0)):
                t0 = time.time()
                r = self.upsert(["refused-%d" % mode], mode, k)
                self.assertEqual(r.error.code, kbproto.ENOREPLICA, r)
                self.assertLess(time.time() - t0, 1.0)
                self.assertIn("r2", r.error.message)
            self.assertEqual(self.version(), v0)
            for mode, k in ((QUORUM, 1), (MAJORITY, 0)):
                r = self.upsert(["ok-%d" % mode], mode, k)
                self.assertFalse(r.HasField("error"), r)
                self.assertEqual(r.write.quorum, 1)
        finally:
            r2.cont()
        self.wait_connected(2)
        st = self.cl.status()
        lag = {r.id: r for r in st.replicas}
        for rid in ("r1", "r2"):
            self.assertGreaterEqual(lag[rid].received_version,
                                    lag[rid].durable_version)
            self.assertGreaterEqual(lag[rid].durable_version, lag[rid].version)

    # ------------------------------------------------------- idempotency
    def test_idempotent_retry_is_applied_once(self):
        self.start()
        r1 = self.upsert(["idem-a", "idem-b"], cid="c1", seq=7)
        self.assertFalse(r1.HasField("error"), r1)
        v = self.version()
        r2 = self.upsert(["idem-a", "idem-b"], ALL, cid="c1", seq=7)
        self.assertFalse(r2.HasField("error"), r2)
        self.assertTrue(r2.write.retried)
        self.assertEqual(r2.write.version, r1.write.version)
        self.assertEqual(r2.write.first_version, r1.write.first_version)
        self.assertEqual(self.version(), v, "a retry took a new LSN")
        r3 = self.upsert(["idem-other"], cid="c1", seq=7)
        self.assertEqual(r3.error.code, kbproto.EINVAL, r3)
        r4 = self.upsert(["idem-a"], cid="c2", seq=7)  # another client
        self.assertFalse(r4.HasField("error"), r4)
        self.assertFalse(r4.write.retried)
        self.assertEqual(self.version(), v + 1)

    def test_retry_after_leader_kill_between_commit_and_answer(self):
        self.start(fault="crash-after-commit:1")
        r = self.upsert(["crash-a"], cid="c9", seq=1)
        self.assertIsNone(r, "the leader answered before its crash")
        self.c.leader.proc.wait(10)
        v_before = None
        self.c.leader.reaped = True
        self.c.leader.start()
        self.cl = self.client(self.c.client_ep)
        for _ in range(200):
            s = self.cl.status(1)
            if s:
                v_before = s.version
                break
            time.sleep(0.05)
        self.assertEqual(v_before, 1, "the commit before the crash is lost")
        r = self.upsert(["crash-a"], cid="c9", seq=1)
        self.assertFalse(r.HasField("error"), r)
        self.assertTrue(r.write.retried)
        self.assertEqual(r.write.version, 1)
        self.assertEqual(self.version(), 1, "the retry was written again")

    # -------------------------------------------------------- conditions
    def test_conditional_writes_refuse_whole_request(self):
        self.start()
        a = self.upsert(["cond-a"]).write.version
        b = self.upsert(["cond-b"]).write.version
        v = self.version()
        # one condition wrong: nothing of the request is written
        r = self.upsert(["cond-a", "cond-b", "cond-new"], ifv=[a, a, None])
        self.assertEqual(r.error.code, ECONFLICT, r)
        self.assertIn("cond-b", r.error.message)
        self.assertIn("version %d" % b, r.error.message)
        self.assertEqual(self.version(), v)
        r = self.upsert(["cond-a"], ifv=[0])
        self.assertEqual(r.error.code, ECONFLICT, r)
        r = self.upsert(["cond-a", "cond-b"], ifv=[a, b])
        self.assertFalse(r.HasField("error"), r)
        a2 = r.write.first_version
        r = self.upsert(["cond-c"], ifv=[0])
        self.assertFalse(r.HasField("error"), r)

        def delete(ids, ifv):
            def fill(q):
                q.delete.ids.extend(ids)
                q.delete.if_version.extend(ifv)
            return self.cl.call(fill)
        v = self.version()
        r = delete(["cond-a"], [a])
        self.assertEqual(r.error.code, ECONFLICT, r)
        self.assertEqual(self.version(), v)
        r = delete(["cond-a"], [a2])
        self.assertFalse(r.HasField("error"), r)
        r = delete(["cond-zzz"], [5])
        self.assertEqual(r.error.code, ECONFLICT, r)
        self.assertIn("does not exist", r.error.message)
        # pipelined: the second request's condition is judged after the
        # first, even when both go into one group commit
        for round_ in range(20):
            did = "pipe-%d" % round_
            reqs = []
            for ifv in (None, [0]):
                q = self.pb.Request(protocol_version=1,
                                    request_id=10000 + 2 * round_ +
                                    len(reqs))
                q.upsert.mode = ASYNC
                d = q.upsert.docs.add(id=did, text="x",
                                      embedding=kbproto.embedding(did, DIM))
                if ifv:
                    d.if_version.version = 0
                reqs.append(q)
            for q in reqs:
                self.cl.sock.send(q.SerializeToString())
            got = {}
            while len(got) < 2:
                self.assertTrue(self.cl.sock.poll(5000))
                resp = self.pb.Response.FromString(self.cl.sock.recv())
                got[resp.request_id] = resp
            first, second = (got[q.request_id] for q in reqs)
            self.assertFalse(first.HasField("error"), first)
            self.assertEqual(second.error.code, ECONFLICT, second)

    # ------------------------------------------------------ strong reads
    def history(self, level, seconds=3.0):
        """Writers write async on the leader, readers query the replicas
        at `level`. Returns (reads, violations): a read violates when a
        write acknowledged before the read was sent is above the version it
        answered at."""
        stop = time.time() + seconds
        acked = []  # (ack time, version)
        lock = threading.Lock()
        reads = []
        errors = []

        def write(cl, name):
            r = self.upsert([name], cl=cl)
            if r is None or r.HasField("error"):
                errors.append(r)
                return False
            with lock:
                acked.append((time.monotonic(), r.write.version))
            return True

        def fill(q):
            q.query.k = 1
            q.query.vector.extend(kbproto.embedding("q", DIM))
            q.query.consistency = level
            q.query.wait_ms = 3000

        def read(cl):
            sent = time.monotonic()
            r = cl.call(fill)
            if r is None or r.HasField("error"):
                errors.append(r)
                return
            reads.append((sent, r.query.state.version, r.query.read_index))

        def writer(w):
            cl = self.client(self.c.client_ep)
            i = 0
            while time.time() < stop:
                write(cl, "w%d-%d" % (w, i))
                i += 1
            cl.close()

        def reader(k):
            cl = self.client(self.c.replicas[k % 2].listen)
            while time.time() < stop:
                read(cl)
            cl.close()

        def chaser(k):
            # Writes, then at once reads a replica: the leader answers an
            # async write before streaming it, so an eventual read here is
            # usually stale, and a strong one must not be.
            cw = self.client(self.c.client_ep)
            cr = self.client(self.c.replicas[k % 2].listen)
            i = 0
            while time.time() < stop:
                if write(cw, "c%d-%d" % (k, i)):
                    read(cr)
                i += 1
            cw.close()
            cr.close()

        ts = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        ts += [threading.Thread(target=reader, args=(k,)) for k in range(4)]
        ts += [threading.Thread(target=chaser, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(errors, [])
        self.last_history = (acked, reads)
        return len(reads), violations(acked, reads)

    def test_strong_reads_see_every_acknowledged_write(self):
        self.start()
        n, bad = self.history(STRONG)
        self.assertGreater(n, 100)
        self.assertEqual(bad, 0, "%d of %d strong reads missed an "
                         "acknowledged write" % (bad, n))
        # The check has teeth: the same history with every read answered
        # at version 0 is caught (deterministic; whether eventual reads on
        # a replica are actually stale depends on timing: replicas that
        # apply the stream before queued queries are rarely behind, and a
        # sanitizer build found none in 191 such reads).
        acked, reads = self.last_history
        zeroed = [(sent, 0, ri) for sent, _, ri in reads]
        self.assertGreater(violations(acked, zeroed), 0,
                           "the history check catches nothing")
        n, bad = self.history(EVENTUAL)
        sys.stderr.write("eventual reads behind an acknowledged write: "
                         "%d of %d\n" % (bad, n))

    def test_strong_read_refused_without_leader(self):
        self.start()
        rc = self.client(self.c.replicas[0].listen)
        self.c.leader.stop()
        try:
            def fill(q):
                q.query.k = 1
                q.query.vector.extend(kbproto.embedding("q", DIM))
                q.query.consistency = STRONG
                q.query.wait_ms = 300
            t0 = time.time()
            r = rc.call(fill)
            self.assertEqual(r.error.code, kbproto.ESTALE, r)
            self.assertIn("leader", r.error.message)
            self.assertLess(time.time() - t0, 2.0)
        finally:
            self.c.leader.cont()
        rc.close()


    # ------------------------------------------------------- anti-entropy
    def fill_docs(self, n):
        for i in range(0, n, 100):
            r = self.upsert(["ae-%d" % j for j in range(i, min(n, i + 100))],
                            ALL)
            self.assertFalse(r.HasField("error"), r)

    def replica_status(self, k):
        rc = self.client(self.c.replicas[k].listen)
        try:
            return rc.status(2)
        finally:
            rc.close()

    def wait_same_digest(self, k, timeout_s):
        """Waits until replica k is at the leader's version with the
        leader's digest; returns the seconds it took."""
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            lead = self.cl.status(2)
            rep = self.replica_status(k)
            if (lead and rep and rep.version == lead.version and
                    rep.digest_lsn == lead.digest_lsn and
                    rep.digest == lead.digest):
                return time.time() - t0
            time.sleep(0.05)
        self.fail("replica r%d never reached the leader's digest" % (k + 1))

    def text_of(self, k, doc_id):
        rc = self.client(self.c.replicas[k].listen)

        def fill(q):
            q.query.k = 1000
            q.query.vector.extend(kbproto.embedding(doc_id, DIM))
        r = rc.call(fill)
        rc.close()
        if r is None or r.HasField("error"):
            return None
        return next((h.text for h in r.query.hits if h.id == doc_id), None)

    def test_edited_replica_is_detected_and_copied_anew(self):
        self.start()
        self.fill_docs(2000)
        self.wait_same_digest(0, 10)
        r1 = self.c.replicas[0]
        out = subprocess.run([TAMPER, r1.data, "ae-5", "edited behind its "
                              "back"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        t0 = time.time()
        detected = None
        while time.time() - t0 < 10 and detected is None:
            s = self.replica_status(0)
            if s and s.digest_resyncs >= 1:
                detected = time.time() - t0
            time.sleep(0.02)
        self.assertIsNotNone(detected, "the edit was never detected")
        self.wait_same_digest(0, 15)
        repaired = time.time() - t0
        print("\nedited replica: detected in %.2f s, same digest as the "
              "leader after %.2f s" % (detected, repaired))
        self.assertLess(detected, 3.0)
        self.assertEqual(self.text_of(0, "ae-5"), "text of ae-5")
        self.assertEqual(self.text_of(1, "ae-5"), "text of ae-5")

    def test_leader_digest_comparison_catches_a_consistent_edit(self):
        self.start()
        self.fill_docs(500)
        self.wait_same_digest(1, 10)
        r2 = self.c.replicas[1]
        r2.terminate()
        out = subprocess.run([TAMPER, "--and-digest", r2.data, "ae-7",
                              "edited with its digest"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        r2.reaped = True
        r2.start()
        self.wait_same_digest(1, 20)
        s = self.replica_status(1)
        self.assertGreaterEqual(s.digest_resyncs, 1)
        lead = {r.id: r for r in self.cl.status().replicas}
        self.assertGreaterEqual(lead["r2"].digest_mismatches, 1)
        self.assertEqual(self.text_of(1, "ae-7"), "text of ae-7")


    def test_snapshot_under_overwrites_needs_no_recopy(self):
        """A new replica loads a snapshot while the documents it has not
        been sent yet are overwritten: the leader must not sweep their old
        versions from under the snapshot (the replica's state at the
        snapshot's LSN holds them), so the replica's digest matches and it
        is never told to copy anew."""
        self.start(extra_leader=("--log-keep-ops", "100"))
        n = 40000  # x 2 KB: a snapshot that takes a while
        for i in range(0, n, 1000):
            r = self.upsert(["ae-%d" % j for j in range(i, i + 1000)], ALL,
                            pad=2000)
            self.assertFalse(r.HasField("error"), r)
        # The log compacted to (nearly) the newest --log-keep-ops, so that
        # r9's snapshot holds most of the documents the overwrites go to
        # (compaction goes in steps, slower on a busy machine).
        deadline = time.time() + 60
        while (self.cl.status().log_start < n - 1000 and
               time.time() < deadline):
            time.sleep(0.1)
        self.assertGreaterEqual(self.cl.status().log_start, n - 1000)
        ep = "tcp://127.0.0.1:%d" % cluster.free_port()
        r9 = cluster.Node(self.c, "r9", "replica",
                          os.path.join(self.tmp, "r9"), ep,
                          [KBSYNC, "replica", "--data",
                           os.path.join(self.tmp, "r9"), "--id", "r9",
                           "--leader", self.c.repl_ep, "--listen", ep,
                           "--query-threads", "1"])
        stop = threading.Event()

        def overwrite():
            cl = self.client(self.c.client_ep)
            k = 0
            while not stop.is_set():
                ids = ["ae-%d" % (n - 1 - (k * 50 + j) % 5000)
                       for j in range(50)]
                self.upsert(ids, ASYNC, cl=cl, pad=2000)
                k += 1
            cl.close()
        w = threading.Thread(target=overwrite)
        w.start()
        r9.start()
        try:
            for _ in range(50):  # slow it down: stop/cont while it loads
                time.sleep(0.03)
                r9.stop()
                time.sleep(0.03)
                r9.cont()
        finally:
            r9.cont()
            stop.set()
            w.join()
        deadline = time.time() + 30
        rc = self.client(ep)
        try:
            while time.time() < deadline:
                lead, s = self.cl.status(2), rc.status(2)
                if (lead and s and s.version == lead.version and
                        s.digest == lead.digest):
                    break
                time.sleep(0.1)
            self.assertEqual(s.version, lead.version)
            self.assertEqual(s.digest, lead.digest)
            self.assertEqual(s.digest_resyncs, 0,
                             "the replica had to copy anew")
            # Documents were first written at LSNs 1..n, then only
            # overwritten: the state at LSN L holds min(L, n) documents, also
            # the one the snapshot ended at.
            with open(r9.log_path) as f:
                done = [re.search(r"snapshot complete at LSN (\d+): (\d+) "
                                  r"documents", l) for l in f]
            done = [m for m in done if m]
            self.assertTrue(done, "r9 got no snapshot: nothing tested")
            lsn, docs = int(done[0].group(1)), int(done[0].group(2))
            self.assertGreaterEqual(lsn, n - 1001)
            self.assertEqual(docs, min(lsn, n))
            mism = {r.id: r.digest_mismatches for r in lead.replicas}
            self.assertEqual(mism.get("r9", 0), 0)
        finally:
            rc.close()
            r9.terminate()

    def test_verify_reports_an_edited_leader(self):
        self.start()
        self.fill_docs(300)
        self.wait_same_digest(0, 10)
        ok = subprocess.run([KBSYNC, "verify", "--to",
                             self.c.replicas[0].listen, "--leader",
                             self.c.client_ep], capture_output=True,
                            text=True)
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertIn("same as this node", ok.stdout)
        out = subprocess.run([TAMPER, self.c.leader.data, "ae-9", "edited"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        bad = subprocess.run([KBSYNC, "verify", "--to", self.c.client_ep],
                             capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1, bad.stdout + bad.stderr)
        self.assertIn("DIFFER", bad.stdout)
        # the leader's own background check reports it too (it cannot copy
        # anew from anyone: it says so in its status and log)
        deadline = time.time() + 5
        while time.time() < deadline:
            s = self.cl.status()
            if s.digest_check_mismatches:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(s.digest_check_mismatches, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
