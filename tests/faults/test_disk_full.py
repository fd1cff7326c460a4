#!/usr/bin/python3
"""Full disk on the leader and on a replica (a small tmpfs that a filler
file fills up), against real kbsync processes:

- leader, `async` writes: each refused with KB_ESTORE naming the cause,
  nothing committed, reads go on, one log line per cause (not per write);
  writes work again once space is freed;
- leader, `all` writes (records sent to the replica before the commit): the
  failed write gets KB_ESTORE, the leader turns read-only (no LSN reused),
  keeps answering reads, does not abort; after a restart it takes writes
  and the replica, which holds the lost record, is told it diverged, drops
  just that record (not its whole knowledge base) and converges;
- replica: applying fails, the replica retries with back-off and logs a
  handful of lines (not one per try), keeps answering reads, and catches up
  once space is freed.

Needs root (tmpfs mounts); without it every test is skipped, saying so."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import zmq  # noqa: E402

import cluster  # noqa: E402
import kbproto  # noqa: E402

KBSYNC = os.environ.get("KBSYNC", os.path.join(kbproto.ROOT, "build",
                                               "kbsync"))
ROOT_WHY = None if os.geteuid() == 0 else "not root: cannot mount a tmpfs"


class Nodes:
    def __init__(self, full_side):
        self.tmp = tempfile.mkdtemp(prefix="kbfull-")
        self.mnt = os.path.join(self.tmp, "small")
        os.mkdir(self.mnt)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                        self.mnt], check=True)
        self.ldir = os.path.join(self.mnt if full_side == "leader"
                                 else self.tmp, "leader")
        self.rdir = os.path.join(self.mnt if full_side == "replica"
                                 else self.tmp, "r1")
        self.ep = "tcp://127.0.0.1:%d" % cluster.free_port()
        self.repl = "tcp://127.0.0.1:%d" % cluster.free_port()
        self.rep = "tcp://127.0.0.1:%d" % cluster.free_port()
        self.procs = {}
        self.ctx = zmq.Context.instance()
        self.start("leader")
        self.start("r1")
        self.lc = kbproto.Client(self.ctx, self.ep, 5)
        self.rc = kbproto.Client(self.ctx, self.rep, 5)
        self.wait_connected()

    def start(self, name):
        if name == "leader":
            argv = [KBSYNC, "leader", "--data", self.ldir, "--dim", "8",
                    "--listen", self.ep, "--repl-listen", self.repl,
                    "--replicas", "r1", "--write-timeout-ms", "500"]
        else:
            argv = [KBSYNC, "replica", "--data", self.rdir, "--id", "r1",
                    "--leader", self.repl, "--listen", self.rep]
        log = open(os.path.join(self.tmp, name + ".log"), "ab")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=log, preexec_fn=cluster._die_with_parent)
        log.close()

    def stop(self, name):
        p = self.procs.get(name)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log(self, name):
        with open(os.path.join(self.tmp, name + ".log"), errors="replace") \
                as f:
            return f.read()

    def wait_connected(self, limit_s=10):
        deadline = time.time() + limit_s
        while time.time() < deadline:
            st = self.lc.status(1)
            if st and st.replicas and st.replicas[0].connected:
                return
            time.sleep(0.05)
        raise AssertionError("replica r1 did not connect")

    def fill(self):
        subprocess.run("dd if=/dev/zero of=%s/filler bs=256k 2>/dev/null"
                       % self.mnt, shell=True)

    def free(self):
        os.unlink(os.path.join(self.mnt, "filler"))

    def write(self, i, mode):
        def fill(req):
            req.upsert.mode = mode
            d = req.upsert.docs.add(id="d%d" % i, text="t%d " % i + "x" *
                                    3000, metadata_json='{"n": %d}' % i)
            d.embedding.extend(kbproto.embedding("d%d" % i, 8))
        return self.lc.call(fill)

    def query(self, client):
        def fill(req):
            req.query.k = 5
            req.query.vector.extend([1.0] * 8)
        return client.call(fill)

    def close(self):
        for name in list(self.procs):
            self.stop(name)
        self.lc.close()
        self.rc.close()
        subprocess.run(["umount", "-l", self.mnt])
        shutil.rmtree(self.tmp, ignore_errors=True)


@unittest.skipIf(ROOT_WHY, ROOT_WHY)
class DiskFull(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        kbproto.load(os.environ.get("KBF_PROTO_DIR"))
        cls.pb = kbproto.pb

    def setUp(self):
        self.n = None

    def tearDown(self):
        if self.n:
            self.n.close()

    def fill_until_refused(self, mode, limit=2000):
        """Fills the disk and writes until a write is refused; returns the
        refusal and the number of writes acknowledged before it."""
        self.n.fill()
        for i in range(1, limit):
            r = self.n.write(i, mode)
            self.assertIsNotNone(r, "write %d got no answer" % i)
            if r.HasField("error"):
                return r, i
        self.fail("no write was refused on a full disk")

    def test_leader_full_async(self):
        self.n = Nodes("leader")
        ok = self.n.write(0, self.pb.WRITE_MODE_ASYNC)
        self.assertFalse(ok.HasField("error"))
        r, i = self.fill_until_refused(self.pb.WRITE_MODE_ASYNC)
        self.assertEqual(r.error.code, -1009)
        self.assertIn("No space left on device", r.error.message)
        v = self.n.lc.status().version
        for j in range(i + 1, i + 50):
            r = self.n.write(j, self.pb.WRITE_MODE_ASYNC)
            self.assertEqual(r.error.code, -1009)
        self.assertEqual(self.n.lc.status().version, v,
                         "a refused write changed the version")
        q = self.n.query(self.n.lc)
        self.assertFalse(q.HasField("error"), "reads stop on a full disk")
        self.assertEqual(q.query.state.version, v)
        self.n.free()
        r = self.n.write(5000, self.pb.WRITE_MODE_ASYNC)
        self.assertFalse(r.HasField("error"), r.error.message)
        self.assertEqual(r.write.version, v + 1, "an LSN was skipped")
        log = self.n.log("leader")
        self.assertLessEqual(log.count("group commit of"), 2,
                             "one log line per failed commit")
        self.assertIn("commits work again after", log)

    def test_leader_full_all_turns_read_only(self):
        self.n = Nodes("leader")
        ok = self.n.write(0, self.pb.WRITE_MODE_ALL)
        self.assertFalse(ok.HasField("error"), ok.error.message)
        r, i = self.fill_until_refused(self.pb.WRITE_MODE_ALL)
        self.assertEqual(r.error.code, -1009)
        self.assertIn("No space left on device", r.error.message)
        self.assertIn("read-only", r.error.message)
        v = self.n.lc.status().version
        self.n.free()
        r = self.n.write(9000, self.pb.WRITE_MODE_ASYNC)
        self.assertEqual(r.error.code, -1009)
        self.assertIn("restarted", r.error.message)
        self.assertIsNone(self.n.procs["leader"].poll(), "the leader died")
        q = self.n.query(self.n.lc)
        self.assertFalse(q.HasField("error"))
        self.assertEqual(q.query.state.version, v)
        # Restarted, the leader takes writes again, and the replica (which
        # may hold the record the leader never committed) converges.
        self.n.stop("leader")
        self.n.start("leader")
        deadline = time.time() + 10
        while time.time() < deadline:
            r = self.n.write(9001, self.pb.WRITE_MODE_ALL)
            if r is not None and not r.HasField("error"):
                break
            time.sleep(0.1)
        self.assertFalse(r.HasField("error"), r.error.message)
        self.assertEqual(r.write.version, v + 1, "an LSN was skipped")
        lq, rq = self.n.query(self.n.lc), None
        deadline = time.time() + 10
        while time.time() < deadline:
            rq = self.n.query(self.n.rc)
            if rq and not rq.HasField("error") and \
                    rq.query.state.version == v + 1:
                break
            time.sleep(0.1)
        self.assertEqual([(h.id, h.text) for h in rq.query.hits],
                         [(h.id, h.text) for h in lq.query.hits])
        # The replica held the record the leader never committed: it was
        # told it diverged and dropped just that tail, not its whole
        # knowledge base (no directory moved aside, no full copy).
        rlog = self.n.log("r1")
        self.assertIn("diverged", rlog)
        self.assertIn("dropped its 1 records after LSN %d" % v, rlog)
        self.assertFalse(any(p.startswith("r1.diverged-")
                             for p in os.listdir(self.n.tmp)),
                         os.listdir(self.n.tmp))
        self.assertEqual(self.n.rc.status().docs, self.n.lc.status().docs)

    def test_replica_full_backs_off(self):
        self.n = Nodes("replica")
        ok = self.n.write(0, self.pb.WRITE_MODE_ALL)
        self.assertFalse(ok.HasField("error"), ok.error.message)
        self.n.fill()
        t0 = time.time()
        i = 1
        while time.time() - t0 < 3:
            self.n.write(i, self.pb.WRITE_MODE_ASYNC)
            i += 1
        head = self.n.lc.status().version
        self.assertGreater(head, 100)
        st = self.n.rc.status()
        self.assertLess(st.version, head, "the replica's disk never filled")
        q = self.n.query(self.n.rc)
        self.assertFalse(q.HasField("error"), "replica stopped answering")
        warns = self.n.log("r1").count("cannot apply")
        self.assertGreaterEqual(warns, 1)
        self.assertLessEqual(warns, 3, "one log line per retry")
        self.assertLess(self.n.log("r1").count("\n"), 40)
        self.n.free()
        deadline = time.time() + 15
        while time.time() < deadline:
            st = self.n.rc.status()
            if st and st.version >= head:
                break
            time.sleep(0.05)
        self.assertGreaterEqual(st.version, head, "no catch-up after free")
        self.assertIn("applying again after", self.n.log("r1"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
