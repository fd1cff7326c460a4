"""Fixtures of the kbsync Python client tests: real kbsync nodes (the
binary in $KBSYNC, else build*/kbsync of this checkout) on free loopback
ports in a temporary directory, always stopped at the end. Nothing is
mocked: the client talks ZeroMQ to nodes that keep LMDB stores and FAISS
indexes.

Run: PYTHONPATH=BUILD/python KBSYNC=BUILD/kbsync /usr/bin/python3 -m pytest
clients/python/tests (ctest runs it as test_python_client).
"""
import ctypes
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import kbsync

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
DIM = 8
_libc = ctypes.CDLL(None, use_errno=True)


def kbsync_binary():
    b = os.environ.get("KBSYNC")
    if b:
        return b
    found = sorted(glob.glob(os.path.join(ROOT, "build*", "kbsync")),
                   key=os.path.getmtime)
    if not found:
        pytest.skip("no kbsync binary: build it or set KBSYNC")
    return found[-1]


_handed_out = set()


def port_range(default):
    """KB_TEST_PORTS=LO-HI (CMakeLists.txt gives each ctest entry that
    starts nodes on fixed ports its own range, since ctest runs them side
    by side), else default."""
    try:
        lo, hi = os.environ["KB_TEST_PORTS"].split("-")
        return int(lo), int(hi)
    except (KeyError, ValueError):
        return default


def free_port():
    """A free port below Linux's ephemeral range, so that no client
    connection takes it while a node that listens on it restarts. Never
    the same one twice in this process (a node may not have bound the
    last one yet), and from this test's range (port_range)."""
    lo, hi = port_range((20000, 23999))
    for _ in range(1000):
        port = random.randrange(lo, hi + 1)
        if port in _handed_out:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            _handed_out.add(port)
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port")


def vec(i, dim=DIM):
    """A deterministic embedding for document number i, L2-normalised (so
    that under the ip metric a document is its own nearest neighbour)."""
    r = random.Random(i)
    v = [r.uniform(-1, 1) for _ in range(dim)]
    n = sum(x * x for x in v) ** 0.5
    return [x / n for x in v]


class Node:
    """One kbsync process. It dies with the thread that started it
    (PR_SET_PDEATHSIG), so a test that is killed leaves no node behind;
    start nodes from the test's own thread."""

    def __init__(self, workdir, name, argv, env=None):
        self.name = name
        self.argv = argv
        self.env = env
        self.log = os.path.join(workdir, name + ".log")
        self.proc = None

    def start(self, env=None):
        with open(self.log, "ab") as log:
            e = dict(os.environ)
            e.update(self.env or {})
            e.update(env or {})
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, env=e,
                preexec_fn=lambda: _libc.prctl(1, signal.SIGKILL))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def cont(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self):
        if not self.alive():
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n=2000):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""


class Cluster:
    """A leader and replicas r1..rN (named in --replicas when named=True).
    ep(name) is a node's client endpoint."""

    def __init__(self, workdir, nreplicas=2, named=True, write_timeout_ms=700,
                 leader_args=(), leader_env=None, dim=DIM):
        self.bin = kbsync_binary()
        self.workdir = workdir
        self.leader_ep = "tcp://127.0.0.1:%d" % free_port()
        self.repl_ep = "tcp://127.0.0.1:%d" % free_port()
        names = ["r%d" % (i + 1) for i in range(nreplicas)]
        argv = [self.bin, "leader", "--data", os.path.join(workdir, "leader"),
                "--dim", str(dim), "--metric", "ip", "--listen",
                self.leader_ep, "--repl-listen", self.repl_ep,
                "--write-timeout-ms", str(write_timeout_ms),
                "--query-threads", "1", "--digest-check-ms", "0"]
        if named and names:
            argv += ["--replicas", ",".join(names)]
        self.leader = Node(workdir, "leader", argv + list(leader_args),
                           leader_env)
        self.replicas = {}
        self.replica_eps = {}
        for n in names:
            self.add_replica(n, self.repl_ep)

    def add_replica(self, name, leader_repl_ep, data=None):
        ep = "tcp://127.0.0.1:%d" % free_port()
        node = Node(self.workdir, name, [
            self.bin, "replica", "--data",
            data or os.path.join(self.workdir, name), "--id", name,
            "--leader", leader_repl_ep, "--listen", ep, "--query-threads",
            "1", "--digest-check-ms", "0"])
        self.replicas[name] = node
        self.replica_eps[name] = ep
        return node

    @property
    def endpoints(self):
        return [self.leader_ep] + list(self.replica_eps.values())

    def start(self):
        self.leader.start()
        for r in self.replicas.values():
            r.start()
        return self

    def client(self, **kw):
        kw.setdefault("timeout", 5.0)
        return kbsync.Client(self.endpoints, **kw)

    def wait_up(self, ep, timeout=15):
        """Until the node at ep answers status."""
        deadline = time.time() + timeout
        with kbsync.Client(ep, timeout=0.3, discover_timeout=0.3) as c:
            while time.time() < deadline:
                try:
                    return c.status(ep)
                except kbsync.TimedOutError:
                    pass
        raise AssertionError("%s never answered status" % ep)

    def wait_connected(self, n, timeout=15):
        """Until the leader reports n replicas connected."""
        deadline = time.time() + timeout
        with kbsync.Client(self.leader_ep, timeout=0.5,
                           discover_timeout=0.5) as c:
            while time.time() < deadline:
                try:
                    s = c.status(self.leader_ep)
                    if sum(r.connected for r in s.replicas) == n:
                        return s
                except kbsync.TimedOutError:
                    pass
                time.sleep(0.05)
        raise AssertionError(
            "leader never had %d replicas connected:\n%s" % (n, "\n".join(
                "== %s (%s):\n%s" % (node.name,
                                     "running" if node.alive() else
                                     "exited with %s" % node.proc.returncode,
                                     node.tail())
                for node in [self.leader] + list(self.replicas.values()))))

    def shutdown(self):
        for r in list(self.replicas.values()) + [self.leader]:
            r.terminate()


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="kbpy-")
    yield d
    if os.environ.get("KB_KEEP"):
        print("kept", d)
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """One leader and two named replicas shared by a test module."""
    d = tempfile.mkdtemp(prefix="kbpy-")
    c = Cluster(d).start()
    try:
        c.wait_up(c.leader_ep)
        c.wait_connected(2)
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_cluster(workdir):
    made = []

    def make(**kw):
        c = Cluster(workdir, **kw)
        made.append(c)
        return c
    yield make
    for c in made:
        c.shutdown()
