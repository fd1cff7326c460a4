#!/usr/bin/python3
"""A replica never makes part of a write searchable, nor durable on its own:
the log here holds requests of 5 documents each, and the leader cuts its
catch-up messages every 2,048 records or 4 MiB, inside requests. A new
replica is killed (-9) again and again while it catches up; each time, the
version it made durable must end a request (a multiple of 5). Before
ReplRecords.group_open the replica applied each message whole: it held
1,404 or 16,384 (the fault suite saw a read at 8,192). A second test has
groups larger than one replica batch (8 MiB), which come in over several
batches and are held back whole. Real processes on 127.0.0.1.
"""
import json
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
DOCS = 30000  # 6,000 requests of 5 (chunk cuts fall inside them)


class ReplicaGroups(unittest.TestCase):
    def setUp(self):
        kbproto.load(os.environ.get("KBF_PROTO_DIR"))
        self.tmp = tempfile.mkdtemp(prefix="kbgroups-")
        self.procs = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, name, argv):
        log = open(os.path.join(self.tmp, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=log,
                             preexec_fn=cluster._die_with_parent)
        log.close()
        self.procs.append(p)
        return p

    def leader_with(self, n, prefix, ingest_args):
        """A leader keeping its whole log (this is about log catch-up, not
        snapshots: test_e2e_snapshot), holding n large documents ingested
        with ingest_args. Returns its client, replication and spare
        endpoints."""
        ep = "tcp://127.0.0.1:%d" % cluster.free_port()
        repl = "tcp://127.0.0.1:%d" % cluster.free_port()
        rep = "tcp://127.0.0.1:%d" % cluster.free_port()
        self.spawn("leader", [KBSYNC, "leader", "--data",
                              os.path.join(self.tmp, "leader"), "--dim", "384",
                              "--listen", ep, "--repl-listen", repl,
                              "--log-keep-ops", "1000000000"])
        src = os.path.join(self.tmp, prefix + ".jsonl")
        with open(src, "w") as f:
            for i in range(n):
                # Large records: a catch-up takes long enough (a few hundred
                # ms) for the status polls to land between batches.
                f.write(json.dumps({"id": "%s%d" % (prefix, i),
                                    "text": "doc %d about topic %d " %
                                    (i, i % 97) + "filler " * 200}) + "\n")
        r = subprocess.run([KBSYNC, "ingest", "--to", ep] + ingest_args +
                           [src], capture_output=True, text=True, timeout=240)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return ep, repl, rep

    def version_at_rest(self, ctx, rdir, rid, rep):
        """The version replica rid's store in rdir holds: it is started
        against no leader (so it stands still), queried, and stopped."""
        p = self.spawn(rid + "-still", [KBSYNC, "replica", "--data", rdir,
                                        "--id", rid, "--leader",
                                        "tcp://127.0.0.1:1", "--listen", rep])

        def fill(req):
            req.query.k = 1
            req.query.text = "topic 5"

        rc = kbproto.Client(ctx, rep, 5)
        resp = None
        deadline = time.time() + 30
        while time.time() < deadline:
            resp = rc.call(fill, 1)
            if resp is not None and not resp.HasField("error"):
                break
        self.assertIsNotNone(resp)
        p.kill()
        p.wait()
        rc.close()
        return resp.query.state.version

    def test_catch_up_never_shows_part_of_a_request(self):
        ep, repl, rep = self.leader_with(DOCS, "d", ["--batch", "5"])
        ctx = zmq.Context.instance()
        lc = kbproto.Client(ctx, ep, 5)
        head = lc.status().version
        self.assertEqual(head, DOCS)
        # kill -9 the replica in the middle of its catch-up, a few times,
        # and read the version it made durable (restarted against no leader,
        # so it stands still): each must end a request.
        rdir = os.path.join(self.tmp, "r1")
        durable = []
        delay, step, t_end = 0.4, 0.3, time.time() + 90
        while time.time() < t_end and \
                len([v for v in durable if 0 < v < head]) < 3:
            p = self.spawn("r1", [KBSYNC, "replica", "--data", rdir, "--id",
                                  "r1", "--leader", repl, "--listen", rep])
            time.sleep(delay)  # from its start: the node loop is busy
            p.kill()           # applying, it answers queries late
            p.wait()
            v = self.version_at_rest(ctx, rdir, "r1", rep)
            if durable and v <= durable[-1]:
                delay += step  # no progress: give the next round longer
            durable.append(v)
            if v >= head:
                if any(0 < x < head for x in durable):
                    break
                # Caught up between two kills: start again from nothing,
                # killing a little sooner.
                shutil.rmtree(rdir, ignore_errors=True)
                delay = max(0.2, delay - step)
                step /= 2
                durable.append(0)
        print("durable versions after each kill: %s" % durable)
        partial = [v for v in durable if v % 5]
        self.assertEqual(partial, [], "durable versions inside a 5-document "
                         "request: %s" % durable)
        inside = [v for v in durable if 0 < v < head]
        self.assertGreaterEqual(len(inside), 1, "no kill landed in the "
                                "catch-up to tell: %s" % durable)
        lc.close()

    def test_a_group_over_several_batches_is_held_whole(self):
        """Requests of 6,000 large documents (about 18 MB each, one group
        commit): the replica's batch is cut every 8 MiB, so each group comes
        in over several batches and must be held back until it is whole. A
        catching-up replica exits right after its first, second and third
        committed batch (KBSYNC_TEST_FAULT=crash-after-apply:N); what it
        made durable must end a request."""
        per, n = 6000, 24000
        # one request in flight: each is its own group commit (three
        # together would pass 16,384 records, which is applied in parts)
        ep, repl, rep = self.leader_with(n, "b", ["--batch", str(per),
                                                  "--window", "1"])
        ctx = zmq.Context.instance()
        lc = kbproto.Client(ctx, ep, 5)
        self.assertEqual(lc.status().version, n)
        lc.close()
        seen = []
        for crash_at in (1, 2, 3):
            rdir = os.path.join(self.tmp, "r%d" % crash_at)
            os.environ["KBSYNC_TEST_FAULT"] = "crash-after-apply:%d" % crash_at
            try:
                p = self.spawn("r%d" % crash_at,
                               [KBSYNC, "replica", "--data", rdir, "--id",
                                "r%d" % crash_at, "--leader", repl,
                                "--listen", rep])
            finally:
                del os.environ["KBSYNC_TEST_FAULT"]
            self.assertEqual(p.wait(timeout=120), 99,
                             "the replica did not exit at its fault point")
            seen.append(self.version_at_rest(ctx, rdir, "r%d" % crash_at,
                                             rep))
        print("durable versions after batch 1, 2, 3: %s" % seen)
        self.assertTrue(all(0 < v <= n for v in seen), seen)
        self.assertEqual([v for v in seen if v % per], [],
                         "durable versions inside a %d-document request: %s"
                         % (per, seen))


if __name__ == "__main__":
    unittest.main(verbosity=2)
