#!/usr/bin/python3
"""A replica never makes part of a write searchable, nor durable on its own:
the log here holds requests of 5 documents each, and the leader cuts its
catch-up messages every 2,048 records or 4 MiB, inside requests. A new
replica is killed (-9) again and again while it catches up; each time, the
version it made durable must end a request (a multiple of 5). Before
ReplRecords.group_open the replica applied each message whole: it held
1,404 or 16,384 (the fault suite saw a read at 8,192). Real processes on
127.0.0.1.
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
        kbproto.load(os.environ.get("KBF_PROTO_DIR",
                                    tempfile.mkdtemp(prefix="kbf-proto-")))
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

    def test_catch_up_never_shows_part_of_a_request(self):
        ep = "tcp://127.0.0.1:%d" % cluster.free_port()
        repl = "tcp://127.0.0.1:%d" % cluster.free_port()
        rep = "tcp://127.0.0.1:%d" % cluster.free_port()
        self.spawn("leader", [KBSYNC, "leader", "--data",
                              os.path.join(self.tmp, "leader"), "--dim", "384",
                              "--listen", ep, "--repl-listen", repl,
                              # the whole log: this is about log catch-up,
                              # not snapshots (test_e2e_snapshot)
                              "--log-keep-ops", "1000000000"])
        src = os.path.join(self.tmp, "docs.jsonl")
        with open(src, "w") as f:
            for i in range(DOCS):
                # Large records: the catch-up takes long enough (a few
                # hundred ms) for the status polls to land between batches.
                f.write(json.dumps({"id": "d%d" % i,
                                    "text": "doc %d about topic %d " %
                                    (i, i % 97) + "filler " * 200}) + "\n")
        r = subprocess.run([KBSYNC, "ingest", "--to", ep, "--batch", "5",
                            src], capture_output=True, text=True,
                           timeout=240)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        ctx = zmq.Context.instance()
        lc = kbproto.Client(ctx, ep, 5)
        head = lc.status().version
        self.assertEqual(head, DOCS)
        # kill -9 the replica in the middle of its catch-up, a few times,
        # and read the version it made durable (restarted against no leader,
        # so it stands still): each must end a request.
        rdir = os.path.join(self.tmp, "r1")
        durable = []

        def fill(req):
            req.query.k = 1
            req.query.text = "topic 5"

        delay, step, t_end = 0.4, 0.3, time.time() + 90
        while time.time() < t_end and \
                len([v for v in durable if 0 < v < head]) < 3:
            p = self.spawn("r1", [KBSYNC, "replica", "--data", rdir, "--id",
                                  "r1", "--leader", repl, "--listen", rep])
            time.sleep(delay)  # from its start: the node loop is busy
            p.kill()           # applying, it answers queries late
            p.wait()
            p = self.spawn("r1-still", [KBSYNC, "replica", "--data", rdir,
                                        "--id", "r1", "--leader",
                                        "tcp://127.0.0.1:1", "--listen", rep])
            rc = kbproto.Client(ctx, rep, 5)
            resp = None
            deadline = time.time() + 30
            while time.time() < deadline:
                resp = rc.call(fill, 1)
                if resp is not None and not resp.HasField("error"):
                    break
            self.assertIsNotNone(resp)
            v = resp.query.state.version
            if durable and v <= durable[-1]:
                delay += step  # no progress: give the next round longer
            durable.append(v)
            p.kill()
            p.wait()
            rc.close()
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


if __name__ == "__main__":
    unittest.main(verbosity=2)
